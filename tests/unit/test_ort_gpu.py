"""ONNX Runtime's GPU providers, on a host without them: the reason names what is missing, and a session that
onnxruntime opened on the CPU instead is refused rather than served as a GPU variant."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from infaas_cli.backends import ort_gpu
from infaas_cli.errors import BackendUnavailableError


def _relu_session() -> ort.InferenceSession:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_session_that_fell_back_to_the_cpu_is_refused():
    session = _relu_session()
    with pytest.raises(BackendUnavailableError, match=r"ort-cuda-fp16: onnxruntime opened it on .*CPUExecutionProvider.*"
                                                      r"not CUDAExecutionProvider.*infaas backends"):
        ort_gpu.kept_provider(session, "CUDAExecutionProvider", "ort-cuda-fp16")
    assert ort_gpu.kept_provider(session, "CPUExecutionProvider", "x") is session


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu installed")
def test_the_reason_names_the_missing_build():
    reason = ort_gpu._gpu_reason("CUDAExecutionProvider")
    assert f"onnxruntime {ort.__version__} was built without CUDAExecutionProvider" in reason
    assert "install the 'tensorrt' extra" in reason


def test_the_probe_session_runs_where_the_provider_is_the_cpu():
    assert ort_gpu._probe_session("CPUExecutionProvider") is None


def test_preloading_without_nvidia_wheels_is_a_no_op():
    ort_gpu._preload.cache_clear()
    ort_gpu._preload()  # no nvidia-* wheels on this host, or the libraries load: no exception either way
