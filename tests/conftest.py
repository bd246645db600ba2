"""Shared fixtures: a fresh infaas home per test, and small ONNX models built here with onnx.helper."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas_cli.home import InfaasHome

OPSET = [helper.make_opsetid("", 17)]


@pytest.fixture
def home(tmp_path, monkeypatch) -> InfaasHome:
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    h = InfaasHome(tmp_path / "home")
    yield h
    h.close()


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


@pytest.fixture(scope="session")
def digits_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int64), test_size=0.2, random_state=0, stratify=y)


@pytest.fixture(scope="session")
def sklearn_models(tmp_path_factory, digits_data):
    """Digits models from scikit-learn: an MLP (quantisable), a tree (ai.onnx.ml only), a ZipMap logreg."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier

    xtr, xte, ytr, yte = digits_data
    d = tmp_path_factory.mktemp("sk")
    mlp = MLPClassifier((64,), max_iter=600, random_state=0).fit(xtr, ytr)
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(xtr, ytr)
    logreg = LogisticRegression(max_iter=500).fit(xtr, ytr)
    paths = {
        "mlp": d / "mlp.onnx", "tree": d / "tree.onnx", "zipmap": d / "zipmap.onnx",
        "val": d / "val.npz", "val_nolabels": d / "val_nolabels.npz",
    }
    opts = {"zipmap": False}
    paths["mlp"].write_bytes(to_onnx(mlp, xtr[:1], options={id(mlp): opts}, target_opset=17).SerializeToString())
    paths["tree"].write_bytes(to_onnx(tree, xtr[:1], options={id(tree): opts}, target_opset=17).SerializeToString())
    # Default skl2onnx options: the probabilities output is a sequence of maps (ZipMap).
    paths["zipmap"].write_bytes(to_onnx(logreg, xtr[:1], target_opset=17).SerializeToString())
    np.savez(paths["val"], x=xte, y=yte)
    np.savez(paths["val_nolabels"], x=xte)
    return paths


@pytest.fixture(autouse=True)
def _no_gpu_surprises(monkeypatch):
    # Tests must not depend on a developer's CUDA_VISIBLE_DEVICES or similar.
    monkeypatch.delenv("INFAAS_ZOO", raising=False)
    yield


REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYTHONHASHSEED", "0")
