"""Shared fixtures: a fresh infaas home per test, and small ONNX models built here with onnx.helper."""

from __future__ import annotations

import os

import numpy as np
import pytest

from infaas_cli.catalog.home import InfaasHome
from support import REPO, make_fixed_batch_model, make_int_input_model, make_two_input_model  # noqa: F401

@pytest.fixture
def home(tmp_path, monkeypatch) -> InfaasHome:
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    h = InfaasHome(tmp_path / "home")
    yield h
    h.close()


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


os.environ.setdefault("PYTHONHASHSEED", "0")
