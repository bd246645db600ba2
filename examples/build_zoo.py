"""Build the example model zoo (examples/zoo/*.onnx + validation sets) listed in configs/zoo.toml."""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

SEED = 0
OPSET = 17           # default ONNX domain
ML_OPSET = 3         # ai.onnx.ml domain (skl2onnx models)
BATCH = "batch"      # name of the dynamic batch dimension
REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------- data

def digits_split():
    """Digits scaled to [0, 1], stratified 80/20 split (random_state=0)."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def cancer_split():
    """Raw breast-cancer features, stratified 80/20 split (random_state=0)."""
    d = load_breast_cancer()
    x = d.data.astype(np.float32)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


# --------------------------------------------------------------------------- ONNX helpers

def name_batch_dim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give dimension 0 of every graph input and output the symbolic name `batch`."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH
    return model


def save_onnx(model: onnx.ModelProto, path: Path, doc: str) -> None:
    # Keep rebuilds byte-identical: skl2onnx names the graph with a random UUID and orders
    # opset_import by set iteration (string-hash randomised).
    model.graph.name = path.stem
    opsets = sorted(((o.domain, o.version) for o in model.opset_import))
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)


def sklearn_to_onnx(estimator, n_features: int, path: Path, doc: str) -> None:
    onx = convert_sklearn(
        estimator,
        initial_types=[("x", FloatTensorType([None, n_features]))],
        options={id(estimator): {"zipmap": False}} if not hasattr(estimator, "steps")
        else {id(estimator.steps[-1][1]): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    outputs = [o.name for o in onx.graph.output]
    assert outputs == ["label", "probabilities"], outputs
    save_onnx(name_batch_dim(onx), path, doc)


# --------------------------------------------------------------------------- torch CNNs

class DigitsCNNSmall(nn.Module):
    """8x8 -> 16x16 bilinear, conv(8) pool conv(16) pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)   # 16x16
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)      # 8x8
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)      # 4x4
        return self.fc(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor):
        z = self.logits(x)
        return torch.argmax(z, dim=1), F.softmax(z, dim=1)


class DigitsCNNLarge(nn.Module):
    """8x8 -> 32x32 bilinear, convs 32, 64, 64 @32x32, pool, 128 @16x16, pool, 128 @8x8, global avg pool, linear.

    Batch norm after every conv (folded into the convs at export)."""

    def __init__(self) -> None:
        super().__init__()
        chans = [(1, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False) for i, o in chans)
        self.norms = nn.ModuleList(nn.BatchNorm2d(o) for _, o in chans)
        self.fc = nn.Linear(128, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        x = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)   # 32x32
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i in (2, 3):
                x = F.max_pool2d(x, 2)                  # 32 -> 16 -> 8
        x = torch.mean(x, dim=(2, 3))
        return self.fc(x)

    def forward(self, x: torch.Tensor):
        z = self.logits(x)
        return torch.argmax(z, dim=1), F.softmax(z, dim=1)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each 8x8 image by up to `max_shift` pixels in x and y, zero fill."""
    n = x.shape[0]
    img = F.pad(x.reshape(n, 8, 8), (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(8)[None, :])                 # [n, 8]
    cols = (dx[:, None] + torch.arange(8)[None, :])
    out = img[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.reshape(n, 64)


def train_cnn(model: nn.Module, xt: np.ndarray, yt: np.ndarray, *, epochs: int, lr: float,
              batch_size: int = 64, shift: bool = False, log: str = "") -> nn.Module:
    seed_everything()
    gen = torch.Generator().manual_seed(SEED)
    x = torch.from_numpy(xt)
    y = torch.from_numpy(yt)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx]
            if shift:
                xb = random_shift(xb, gen)
            loss = F.cross_entropy(model.logits(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print(f"  {log} epoch {epoch + 1}/{epochs} loss {total / len(x):.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    model.eval()
    return model


def torch_to_onnx(model: nn.Module, path: Path, doc: str) -> None:
    model.eval()
    dummy = torch.zeros(2, 64, dtype=torch.float32)
    kwargs = dict(
        input_names=["x"],
        output_names=["label", "probabilities"],
        dynamic_axes={"x": {0: BATCH}, "label": {0: BATCH}, "probabilities": {0: BATCH}},
        opset_version=OPSET,
        do_constant_folding=True,
    )
    tmp = path.with_suffix(".tmp.onnx")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
            torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, **kwargs)
    except Exception as exc:  # legacy exporter unavailable: fall back to the dynamo exporter
        print(f"  legacy exporter failed ({exc}); using dynamo", file=sys.stderr)
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=True, external_data=False, **kwargs)
    onx = onnx.load(str(tmp), load_external_data=True)
    tmp.unlink()
    for extra in path.parent.glob(tmp.name + "*.data"):
        extra.unlink()
    onx.producer_version = torch.__version__.split("+")[0]
    save_onnx(name_batch_dim(onx), path, doc)


# --------------------------------------------------------------------------- checks

def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["label", "probabilities"], (path, names)
    label, proba = sess.run(None, {"x": x})
    assert label.dtype == np.int64 and label.shape == y.shape, (path, label.dtype, label.shape)
    assert proba.dtype == np.float32 and proba.shape[0] == len(y), (path, proba.dtype, proba.shape)
    for n in (1, 8, 32):
        lab, pr = sess.run(None, {"x": x[:n]})
        assert lab.shape == (n,) and pr.shape == (n, proba.shape[1])
    return float((label == y).mean())


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "examples" / "zoo",
                    help="output directory (default examples/zoo)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    seed_everything()
    t_start = time.perf_counter()
    built: list[tuple[str, Path, str]] = []   # (file stem, validation file, task)

    # ---- digits
    xt, xv, yt, yv = digits_split()
    np.savez_compressed(out / "digits-val.npz", x=xv, y=yv)
    np.save(out / "digit.npy", xv[:1])  # one sample, for `infaas query --input`
    dval = out / "digits-val.npz"

    print("digits-tree", file=sys.stderr)
    tree = DecisionTreeClassifier(max_depth=7, random_state=SEED).fit(xt, yt)
    sklearn_to_onnx(tree, 64, out / "digits-tree.onnx", "Digits: decision tree (max_depth 7).")
    built.append(("digits-tree", dval, "digits"))

    print("digits-logreg", file=sys.stderr)
    logreg = LogisticRegression(max_iter=2000, random_state=SEED).fit(xt, yt)
    sklearn_to_onnx(logreg, 64, out / "digits-logreg.onnx", "Digits: multinomial logistic regression.")
    built.append(("digits-logreg", dval, "digits"))

    print("digits-mlp", file=sys.stderr)
    mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, random_state=SEED).fit(xt, yt)
    sklearn_to_onnx(mlp, 64, out / "digits-mlp.onnx", "Digits: MLP, one hidden layer of 128.")
    built.append(("digits-mlp", dval, "digits"))

    print("digits-cnn-s", file=sys.stderr)
    seed_everything()
    cnn_s = train_cnn(DigitsCNNSmall(), xt, yt, epochs=30, lr=1e-2, log="cnn-s")
    torch_to_onnx(cnn_s, out / "digits-cnn-s.onnx", "Digits: small CNN on 16x16 upsampled input.")
    built.append(("digits-cnn-s", dval, "digits"))

    print("digits-cnn-l", file=sys.stderr)
    seed_everything()
    cnn_l = train_cnn(DigitsCNNLarge(), xt, yt, epochs=20, lr=3e-3, shift=True, log="cnn-l")
    torch_to_onnx(cnn_l, out / "digits-cnn-l.onnx", "Digits: larger CNN on 32x32 upsampled input.")
    built.append(("digits-cnn-l", dval, "digits"))

    # ---- breast cancer
    ct, cv, ct_y, cv_y = cancer_split()
    np.savez_compressed(out / "cancer-val.npz", x=cv, y=cv_y)
    cval = out / "cancer-val.npz"

    print("cancer-logreg", file=sys.stderr)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=SEED)).fit(ct, ct_y)
    sklearn_to_onnx(pipe, 30, out / "cancer-logreg.onnx", "Breast cancer: scaler + logistic regression.")
    built.append(("cancer-logreg", cval, "cancer"))

    print("cancer-gbt", file=sys.stderr)
    pipe = make_pipeline(StandardScaler(), GradientBoostingClassifier(
        n_estimators=50, max_depth=3, learning_rate=0.1, random_state=SEED)).fit(ct, ct_y)
    sklearn_to_onnx(pipe, 30, out / "cancer-gbt.onnx", "Breast cancer: scaler + gradient-boosted trees.")
    built.append(("cancer-gbt", cval, "cancer"))

    print("cancer-mlp", file=sys.stderr)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64, 32), max_iter=1000, random_state=SEED)).fit(ct, ct_y)
    sklearn_to_onnx(pipe, 30, out / "cancer-mlp.onnx", "Breast cancer: scaler + MLP (64, 32).")
    built.append(("cancer-mlp", cval, "cancer"))

    # ---- summary, measured with onnxruntime on the exported files
    print(f"\nbuilt {len(built)} models in {time.perf_counter() - t_start:.0f}s into {out}")
    print(f"{'model':<16} {'accuracy':>8} {'size':>10}")
    for stem, val, _ in built:
        path = out / f"{stem}.onnx"
        data = np.load(val)
        acc = ort_accuracy(path, data["x"], data["y"])
        print(f"{stem:<16} {acc:>8.4f} {path.stat().st_size / 1024:>8.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
