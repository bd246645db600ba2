"""The ov-cpu backend's decisions, without OpenVINO: availability, which recipes apply and why not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from infaas_cli.backends import BACKENDS, BuildInput
from infaas_cli.backends import ov_cpu
from infaas_cli.backends.ov_cpu import OvCpuBackend, calibration_batches, choose_recipes
from infaas_cli.errors import InfaasError

CNN_OPS = {("ai.onnx", op) for op in ("Reshape", "Resize", "Conv", "Relu", "MaxPool", "Gemm", "Softmax", "ArgMax")}
SAPPHIRE_RAPIDS = ["BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"]
SKYLAKE = ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]


def names(recipes) -> list[str]:
    return [r.name for r in recipes]


@pytest.fixture
def no_openvino(monkeypatch):
    """`import openvino` fails as it does where the package is not installed (None in sys.modules)."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_listed_after_ort_cpu():
    order = [b.name for b in BACKENDS]
    assert order.index("ov-cpu") == order.index("ort-cpu") + 1
    assert OvCpuBackend.hardware == "cpu"


def test_unavailable_without_openvino_says_how_to_install(no_openvino):
    avail = OvCpuBackend().availability()
    assert not avail.available
    assert avail.reason == "the openvino package is not installed; pip install 'infaas[openvino]'"
    assert avail.describe("ov-cpu") == ("ov-cpu: not available on this host: the openvino package is not "
                                        "installed; pip install 'infaas[openvino]'")


def test_importing_the_backends_does_not_import_openvino():
    # openvino costs ~250 ms to import: only a host that builds or loads an ov-cpu variant pays it.
    code = "import sys, infaas_cli.backends; assert 'openvino' not in sys.modules and 'nncf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bf16_only_where_the_cpu_computes_it():
    chosen, skipped = choose_recipes("ov-cpu", CNN_OPS, SAPPHIRE_RAPIDS, calibrated=True, has_nncf=True)
    assert names(chosen) == ["fp32", "bf16", "int8"] and skipped == []
    assert [r.precision for r in chosen] == ["fp32", "bf16", "int8"]

    chosen, skipped = choose_recipes("ov-cpu", CNN_OPS, SKYLAKE, calibrated=True, has_nncf=True)
    assert names(chosen) == ["fp32", "int8"]
    [bf16] = skipped
    assert (bf16.backend, bf16.recipe) == ("ov-cpu", "bf16")
    assert "does not compute bf16" in bf16.reason and "WINOGRAD, FP32, INT8" in bf16.reason


def test_int8_needs_nncf_calibration_and_an_operator_to_quantise():
    _, skipped = choose_recipes("ov-cpu", CNN_OPS, SKYLAKE, calibrated=True, has_nncf=False)
    assert {s.recipe: s.reason for s in skipped}["int8"] == \
        "the nncf package is not installed; pip install 'infaas[openvino]'"

    _, skipped = choose_recipes("ov-cpu", CNN_OPS, SKYLAKE, calibrated=False, has_nncf=True)
    assert "register the model with --validation" in {s.recipe: s.reason for s in skipped}["int8"]

    ops = {("ai.onnx", "Add"), ("ai.onnx", "Relu")}
    chosen, skipped = choose_recipes("ov-cpu", ops, SAPPHIRE_RAPIDS, calibrated=True, has_nncf=True)
    assert names(chosen) == ["fp32", "bf16"]
    reason = {s.recipe: s.reason for s in skipped}["int8"]
    assert "no operator that NNCF quantises" in reason and "the graph has Add, Relu" in reason


def test_ml_operators_skip_every_recipe_with_the_reason():
    ops = CNN_OPS | {("ai.onnx.ml", "TreeEnsembleClassifier"), ("ai.onnx.ml", "ZipMap")}
    chosen, skipped = choose_recipes("ov-cpu", ops, SAPPHIRE_RAPIDS, calibrated=True, has_nncf=True)
    assert chosen == []
    assert [s.recipe for s in skipped] == ["fp32", "bf16", "int8"]
    assert all("ai.onnx.ml operators (TreeEnsembleClassifier, ZipMap); OpenVINO" in s.reason for s in skipped)


def _tree_like_model(path: Path) -> Path:
    """x: float32 [N, 4] -> label int64 [N] through an ai.onnx.ml operator, as scikit-learn exports."""
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                            classlabels_int64s=[0, 1], nodes_treeids=[0], nodes_nodeids=[0],
                            nodes_featureids=[0], nodes_values=[0.0], nodes_modes=["LEAF"],
                            nodes_truenodeids=[0], nodes_falsenodeids=[0], class_treeids=[0],
                            class_nodeids=[0], class_ids=[1], class_weights=[1.0])
    graph = helper.make_graph([node], "tree", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_recipes_of_a_scikit_learn_graph_are_skipped_without_importing_openvino(tmp_path, no_openvino):
    build = BuildInput(model=None, source_path=_tree_like_model(tmp_path / "tree.onnx"),  # type: ignore[arg-type]
                       calibration=None, work_dir=tmp_path)
    chosen, skipped = OvCpuBackend().recipes(build)
    assert chosen == [] and {s.recipe for s in skipped} == {"fp32", "bf16", "int8"}
    assert "TreeEnsembleClassifier" in skipped[0].reason


def test_thread_counts_match_ort_cpu():
    ort = next(b for b in BACKENDS if b.name == "ort-cpu")
    for cores in (1, 2, 6, 16):
        assert OvCpuBackend().thread_counts(cores) == ort.thread_counts(cores)


def test_calibration_batches_follow_the_batch_rules():
    data = {"x": np.arange(300 * 4, dtype=np.float32).reshape(300, 4)}
    dynamic = calibration_batches(data, "dynamic", 32)
    assert [b["x"].shape for b in dynamic] == [(16, 4)] * 8  # 128 samples at most
    assert [b["x"].shape for b in calibration_batches(data, "fixed", 4)] == [(4, 4)] * 32
    single = calibration_batches({"x": data["x"][:3]}, "none", 1)
    assert [b["x"].shape for b in single] == [(4,)] * 3


def test_a_foreign_artifact_is_refused_with_what_was_expected(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x08not a zip")
    with pytest.raises(InfaasError, match="not an ov-cpu artifact"):
        ov_cpu.unpack_ir(onnx_file)
