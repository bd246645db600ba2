"""Registration of valid and invalid models: signatures, measured accuracy, store unchanged on error."""

from __future__ import annotations

import numpy as np
import pytest

from support import make_fixed_batch_model, make_int_input_model, make_two_input_model
from infaas_cli.errors import (AlreadyExistsError, InfaasError, InvalidModelError,
                               InvalidValidationDataError)
from infaas_cli.toolkit.register import register_model


def _snapshot(home):
    return home.store.last_seq(), [m.name for m in home.store.models()]


def test_multi_input_model_with_labels(home, tmp_path):
    path = make_two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 4)).astype(np.float32), rng.standard_normal((40, 4)).astype(np.float32)
    import onnxruntime as ort
    logits = ort.InferenceSession(str(path)).run(None, {"a": a, "b": b})[0]
    y = logits.argmax(axis=1)
    y[:10] = (y[:10] + 1) % 3  # a quarter of the labels wrong on purpose
    np.savez(tmp_path / "val.npz", a=a, b=b, y=y)
    record = register_model(home, path, "two", "toy", "toyset", tmp_path / "val.npz")
    assert [i["name"] for i in record.inputs] == ["a", "b"]
    assert record.inputs[0]["dtype"] == "float32"
    assert record.batch_dim == "dynamic" and record.max_batch == 32
    assert record.accuracy == pytest.approx(0.75)
    assert record.accuracy_metric == "top1"
    assert home.artifacts.verify(record.artifact_sha256).is_file()
    assert home.store.model("two").validation_samples == 40


def test_integer_input_model_without_labels_measures_agreement(home, tmp_path):
    path = make_int_input_model(tmp_path / "ids.onnx")
    ids = np.random.default_rng(1).integers(0, 10, size=(30, 5)).astype(np.int32)  # int32 is cast to int64
    np.savez(tmp_path / "val.npz", ids=ids)
    record = register_model(home, path, "ids", "toy", "toyset", tmp_path / "val.npz")
    assert record.inputs[0]["dtype"] == "int64"
    assert (record.accuracy, record.accuracy_metric) == (1.0, "agreement")


def test_fixed_batch_model_caps_max_batch(home, tmp_path):
    path = make_fixed_batch_model(tmp_path / "fixed.onnx", batch=4)
    x = np.random.default_rng(2).standard_normal((10, 6)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=np.zeros(10, np.int64))
    record = register_model(home, path, "fixed", "toy", "toyset", tmp_path / "val.npz")
    assert (record.batch_dim, record.max_batch) == ("fixed", 4)
    assert record.accuracy is not None


def test_sequence_of_maps_output(home, sklearn_models):
    record = register_model(home, sklearn_models["zipmap"], "zipmap", "digit-classification", "digits",
                            sklearn_models["val"])
    types = {o["name"]: o["type"] for o in record.outputs}
    assert any(t.startswith("seq(map(") for t in types.values())
    assert record.accuracy > 0.9


def test_declared_accuracy_without_validation(home, tmp_path):
    path = make_two_input_model(tmp_path / "two.onnx")
    record = register_model(home, path, "two", "toy", "toyset", accuracy=0.8)
    assert (record.accuracy, record.accuracy_metric) == (0.8, "declared")


@pytest.mark.parametrize("content,match", [
    (b"this is not onnx at all", "not an ONNX model"),
    (b"\x08\x07\x12\x04junk\x3a\x02\x0a\x00", "ONNX"),
])
def test_corrupt_or_foreign_files_are_refused(home, tmp_path, content, match):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    before = _snapshot(home)
    with pytest.raises(InvalidModelError, match=match):
        register_model(home, bad, "bad", "toy", "toyset")
    assert _snapshot(home) == before


def test_duplicate_name_needs_replace(home, tmp_path):
    path = make_two_input_model(tmp_path / "two.onnx")
    register_model(home, path, "two", "toy", "toyset", accuracy=0.5)
    before = _snapshot(home)
    with pytest.raises(AlreadyExistsError, match="--replace"):
        register_model(home, path, "two", "toy", "toyset", accuracy=0.6)
    assert _snapshot(home) == before
    assert register_model(home, path, "two", "toy", "toyset", accuracy=0.6, replace=True).accuracy == 0.6


@pytest.mark.parametrize("arrays,match", [
    ({"a": np.zeros((5, 4), np.float32)}, "lacks arrays for input.*b"),
    ({"a": np.zeros((5, 4), np.float32), "b": np.zeros((5, 5), np.float32)}, r"expects \[N, 4\]"),
    ({"a": np.zeros((5, 4), np.float32), "b": np.zeros((5, 4), np.int64)}, "dtype int64"),
    ({"a": np.zeros((5, 4), np.float32), "b": np.zeros((6, 4), np.float32)}, "disagree on the number"),
    ({"a": np.zeros((5, 4), np.float32), "b": np.zeros((5, 4), np.float32), "y": np.zeros(4)}, "labels 'y'"),
])
def test_bad_validation_files_leave_store_unchanged(home, tmp_path, arrays, match):
    path = make_two_input_model(tmp_path / "two.onnx")
    np.savez(tmp_path / "val.npz", **arrays)
    before = _snapshot(home)
    with pytest.raises(InvalidValidationDataError, match=match):
        register_model(home, path, "two", "toy", "toyset", tmp_path / "val.npz")
    assert _snapshot(home) == before
    assert not (home.path / "artifacts").exists()


def test_validation_file_that_is_not_npz(home, tmp_path):
    path = make_two_input_model(tmp_path / "two.onnx")
    (tmp_path / "val.npz").write_text("nope")
    with pytest.raises(InvalidValidationDataError, match="not a readable .npz"):
        register_model(home, path, "two", "toy", "toyset", tmp_path / "val.npz")


def test_bad_names_and_accuracy_flags(home, tmp_path):
    path = make_two_input_model(tmp_path / "two.onnx")
    with pytest.raises(InfaasError, match="not a valid name"):
        register_model(home, path, "a/b", "toy", "toyset")
    with pytest.raises(InfaasError, match="fraction"):
        register_model(home, path, "two", "toy", "toyset", accuracy=97.0)
    np.savez(tmp_path / "val.npz", a=np.zeros((2, 4), np.float32), b=np.zeros((2, 4), np.float32))
    with pytest.raises(InfaasError, match="--accuracy is for models without a validation set"):
        register_model(home, path, "two", "toy", "toyset", tmp_path / "val.npz", accuracy=0.9)
    assert home.store.models() == []


def test_cache_mib_is_stored_on_the_record_and_bad_values_write_nothing(home, tmp_path):
    path = make_two_input_model(tmp_path / "two.onnx")
    before = _snapshot(home)
    for bad in (-1, 1 << 30):
        with pytest.raises(InfaasError, match=r"--cache-mib .* out of range; .* 0 \(never cache it\) .*"
                                              r"master\.prediction_cache_mib"):
            register_model(home, path, "two", "toy", "toyset", accuracy=0.5, cache_mib=bad)
    assert _snapshot(home) == before and not (home.path / "artifacts").exists()
    assert register_model(home, path, "two", "toy", "toyset", accuracy=0.5, cache_mib=64).cache_mib == 64
    assert home.store.model("two").cache_mib == 64  # through LMDB and back
    assert [c.value for c in home.store.changes(0) if c.table == "models"][-1]["cache_mib"] == 64  # replicated
    # --replace without --cache-mib goes back to the master's default
    assert register_model(home, path, "two", "toy", "toyset", accuracy=0.5, replace=True).cache_mib is None
    assert home.store.model("two").cache_mib is None
    assert register_model(home, path, "off", "toy", "toyset", accuracy=0.5, cache_mib=0).cache_mib == 0
