"""Helpers every test tier shares: a fake clock, a deadline wait, catalog builders, small ONNX models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from infaas_cli.toolkit.profiler import MeasureSettings
from infaas_cli.toolkit.zoo import load_manifest

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock the test moves: `now_s` (or calling it) reads it, `advance`/`sleep` move it forward."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    @property
    def now(self) -> float:
        return self.now_s

    @now.setter
    def now(self, value: float) -> None:
        self.now_s = value

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now_s += seconds

    sleep = advance


OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _weights(name: str, shape, seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def make_two_input_model(path: Path) -> Path:
    """a, b: float32 [N, 4] -> logits float32 [N, 3] = (a + b) @ W."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["logits"])],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [_weights("W", (4, 3), 1)])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_int_input_model(path: Path) -> Path:
    """ids: int64 [N, 5] in [0, 10) -> embedding lookup, mean, projection -> scores float32 [N, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["emb"]),
         helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["scores"])],
        "int_input",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [_weights("E", (10, 8), 2), _weights("W", (8, 3), 3)])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_fixed_batch_model(path: Path, batch: int = 4) -> Path:
    """x: float32 [4, 6] (batch fixed at 4) -> y float32 [4, 3]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "fixed_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [_weights("W", (6, 3), 4)])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)



FAST = MeasureSettings(warmup_runs=1, budget_ms=3.0, min_runs=5, max_runs=100)
ZOO = {e.name: e for e in load_manifest()}
SERVED = ("digits-logreg", "digits-mlp", "digits-cnn-s")


def wait_for(predicate, timeout_s: float = 15.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def build_catalog(path, models=SERVED):
    from infaas_cli.catalog.home import InfaasHome
    from infaas_cli.toolkit.generate import generate_variants
    from infaas_cli.toolkit.profiler import profile_models
    from infaas_cli.toolkit.register import register_model

    home = InfaasHome(path)
    for name in models:
        e = ZOO[name]
        register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
        generate_variants(home, name)
    profile_models(home, list(models), batch_sizes=[1, 8, 32], settings=FAST)
    return home


def digits_x(n: int) -> np.ndarray:
    return np.load(ZOO["digits-mlp"].validation)["x"][:n]


def original_outputs(name: str, x: np.ndarray):
    return ort.InferenceSession(str(ZOO[name].file)).run(None, {"x": x})


