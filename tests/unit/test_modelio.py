"""Pure helpers: batch semantics, validation data checks, top-1 and agreement."""

from __future__ import annotations

import numpy as np
import pytest

from infaas_cli.errors import InvalidValidationDataError
from infaas_cli.toolkit.modelio import (agreement, as_array, batch_semantics, conform_array, run_dataset,
                                top1_accuracy, top1_predictions)
from infaas_cli.catalog.records import TensorSpec


def spec(name="x", dtype="float32", shape=(None, 4)):
    return TensorSpec(name, f"tensor({'float' if dtype == 'float32' else dtype})", dtype, list(shape))


def test_batch_semantics():
    assert batch_semantics([spec(shape=("N", 4))]) == ("dynamic", 32)
    assert batch_semantics([spec(shape=(4, 6))]) == ("fixed", 4)
    assert batch_semantics([spec(shape=(None, 4)), spec("b", shape=(2, 4))]) == ("fixed", 2)
    assert batch_semantics([spec(shape=())]) == ("none", 1)


def test_conform_array_checks_kind_rank_and_fixed_dims():
    s = spec(shape=(None, 4))
    assert conform_array(np.zeros((3, 4), np.float64), s, "x", "dynamic").dtype == np.float32
    with pytest.raises(InvalidValidationDataError, match="dtype int64.*astype"):
        conform_array(np.zeros((3, 4), np.int64), s, "x", "dynamic")
    with pytest.raises(InvalidValidationDataError, match=r"expects \[N, 4\]"):
        conform_array(np.zeros((3, 5), np.float32), s, "x", "dynamic")
    with pytest.raises(InvalidValidationDataError, match="reshape"):
        conform_array(np.zeros((3,), np.float32), s, "x", "dynamic")
    scalar = spec(shape=())
    assert conform_array(np.zeros((7,), np.float32), scalar, "x", "none").shape == (7,)


def test_run_dataset_pads_fixed_batches_and_trims():
    calls = []

    def run(feeds):
        calls.append(feeds["x"].shape[0])
        return [feeds["x"].sum(axis=1)]

    data = {"x": np.arange(20, dtype=np.float32).reshape(10, 2)}
    out = run_dataset(run, data, "fixed", 4)
    assert calls == [4, 4, 4]
    np.testing.assert_allclose(out[0], data["x"].sum(axis=1))
    calls.clear()
    run_dataset(run, data, "dynamic", 32)
    assert calls == [10]


def test_top1_from_labels_scores_and_maps():
    specs = [spec("label", "int64", (None,)), spec("p", "float32", (None, 3))]
    labels = np.array([0, 2, 1])
    probs = np.eye(3, dtype=np.float32)[[0, 2, 2]]
    assert top1_accuracy([labels, probs], specs, labels) == 1.0
    assert top1_accuracy([probs], specs[1:], labels) == pytest.approx(2 / 3)
    maps = [{0: 0.9, 1: 0.1}, {0: 0.2, 1: 0.8}]
    np.testing.assert_array_equal(top1_predictions([maps], [], 2), [0, 1])
    with pytest.raises(InvalidValidationDataError, match="cannot derive a top-1"):
        top1_predictions([np.zeros(2, np.float32)], [spec(shape=(None,))], 2)


def test_agreement_tolerance():
    ref = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)]
    assert agreement([ref[0] + 0.01], ref) == 1.0
    assert agreement([ref[0] + np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)], ref) == 0.5
    assert agreement([np.array([1, 2])], [np.array([1, 3])]) == 0.5
    maps = [{1: 0.5, 0: 0.5}]
    np.testing.assert_array_equal(as_array(maps), [[0.5, 0.5]])
