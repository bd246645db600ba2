"""Variant generation and profiling with real ONNX Runtime sessions on real models."""

from __future__ import annotations

import re

import numpy as np
import pytest

from support import make_fixed_batch_model, make_int_input_model
from infaas_cli.backends import backend
from infaas_cli.config import host_cores
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import MeasureSettings, profile_models
from infaas_cli.toolkit.register import register_model

FAST = MeasureSettings(warmup_runs=1, budget_ms=2.0, min_runs=5, max_runs=50)
NAME = re.compile(r"^[\w.-]+/ort-cpu-(fp32o1|fp32o2|fp32o3|int8d|int8s)-t\d+-b\d+$")


@pytest.fixture
def mlp(home, sklearn_models):
    register_model(home, sklearn_models["mlp"], "mlp", "digit-classification", "digits", sklearn_models["val"])
    return generate_variants(home, "mlp")


def test_mlp_gets_every_recipe_thread_count_and_batch(home, mlp):
    recipes = {v.recipe for v in mlp.variants}
    assert recipes == {"fp32o1", "fp32o2", "fp32o3", "int8d", "int8s"}
    threads = sorted({v.threads for v in mlp.variants})
    assert threads[0] == 1 and threads[-1] == host_cores()
    assert sorted({v.max_batch for v in mlp.variants}) == [1, 4, 8, 16, 32]
    assert len(mlp.variants) == 5 * len(threads) * 5
    assert all(NAME.match(v.name) for v in mlp.variants)
    assert {v.name for v in home.store.variants("mlp")} == {v.name for v in mlp.variants}
    assert {u[0] for u in mlp.unavailable} >= {"neuron"}


def test_int8_variants_run_and_stay_close_to_fp32(home, mlp, sklearn_models):
    by_recipe = {v.recipe: v for v in mlp.variants if v.threads == 1 and v.max_batch == 32}
    fp32 = by_recipe["fp32o1"]
    x = np.load(sklearn_models["val"])["x"][:32]
    ort_cpu = backend("ort-cpu")
    ref = ort_cpu.load(home.artifacts.verify(fp32.artifact_sha256), "fp32o1", 1).run({"X": x})
    for recipe in ("int8d", "int8s"):
        v = by_recipe[recipe]
        assert v.precision == "int8"
        assert v.accuracy is not None and abs(v.accuracy - fp32.accuracy) <= 0.03
        out = ort_cpu.load(home.artifacts.verify(v.artifact_sha256), recipe, 1).run({"X": x})
        np.testing.assert_allclose(out[1], ref[1], atol=0.1)  # probabilities
        assert np.mean(out[0] == ref[0]) >= 0.9  # labels
    assert fp32.artifact_sha256 != by_recipe["int8s"].artifact_sha256


def test_tree_model_skips_quantisation_and_says_why(home, sklearn_models):
    register_model(home, sklearn_models["tree"], "tree", "digit-classification", "digits", sklearn_models["val"])
    report = generate_variants(home, "tree")
    assert {v.recipe for v in report.variants} == {"fp32o1", "fp32o2", "fp32o3"}
    reasons = {s.recipe: s.reason for s in report.skipped if s.backend == "ort-cpu"}
    assert set(reasons) == {"int8d", "int8s"}
    assert "TreeEnsembleClassifier" in reasons["int8d"]
    # OpenVINO, where installed, cannot read ai.onnx.ml graphs at all: every recipe skipped, and why.
    ov = {s.recipe: s.reason for s in report.skipped if s.backend == "ov-cpu"}
    if "ov-cpu" not in {b for b, _ in report.unavailable}:
        assert set(ov) == {"fp32", "bf16", "int8"} and all("ai.onnx.ml" in r for r in ov.values()), ov


def test_fixed_batch_model_variants_and_profiles(home, tmp_path):
    path = make_fixed_batch_model(tmp_path / "fixed.onnx", batch=4)
    x = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    register_model(home, path, "fixed", "toy", "toyset", tmp_path / "val.npz")
    report = generate_variants(home, "fixed")
    assert {v.max_batch for v in report.variants} == {4}
    assert all(v.accuracy is not None for v in report.variants)
    profile_models(home, ["fixed"], settings=FAST)
    assert {tuple(p.batches) for p in home.store.profiles("fixed")} == {("4",)}


def test_integer_inputs_generate_and_profile(home, tmp_path):
    path = make_int_input_model(tmp_path / "ids.onnx")
    np.savez(tmp_path / "val.npz", ids=np.random.default_rng(1).integers(0, 10, size=(40, 5)))
    register_model(home, path, "ids", "toy", "toyset", tmp_path / "val.npz")
    report = generate_variants(home, "ids")
    assert {"fp32o1", "int8d", "int8s"} <= {v.recipe for v in report.variants}
    for v in report.variants:
        assert v.accuracy_metric == "agreement"
        assert v.accuracy is not None and 0.0 <= v.accuracy <= 1.0
    assert {v.accuracy for v in report.variants if v.precision == "fp32"} == {1.0}
    profile_models(home, ["ids"], batch_sizes=[1, 8], settings=FAST)
    max_batch = {v.name: v.max_batch for v in report.variants}
    for p in home.store.profiles("ids"):
        assert set(p.batches) == ({"1", "8"} if max_batch[p.variant] >= 8 else {"1"})


def test_profiles_are_sane_and_resumable(home, mlp):
    first = profile_models(home, ["mlp"], batch_sizes=[1, 8, 32], settings=FAST)
    assert not first.failed
    profiles = home.store.profiles("mlp")
    assert len(profiles) == len(mlp.variants)
    for p in profiles:
        assert p.load_time_ms > 0
        assert p.peak_memory_bytes >= 0
        assert p.hardware["cores"] >= 1 and p.hardware["memory_bytes"] > 0 and p.hardware["cpu_model"]
        for b, stats in p.batches.items():
            assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
            assert stats["throughput_qps"] > 0 and stats["runs"] >= FAST.min_runs
    # Variants differing only in max batch share one measurement per configuration.
    configs = {(v.recipe, v.threads) for v in mlp.variants}
    assert first.measurements == 3 * len(configs)

    again = profile_models(home, ["mlp"], batch_sizes=[1, 8, 32], settings=FAST)
    assert again.measurements == 0 and again.skipped_stored == len(mlp.variants)
    seq = home.store.last_seq()
    more = profile_models(home, ["mlp"], batch_sizes=[1, 4], settings=FAST)
    assert more.measurements == len(configs)  # only batch 4 was missing
    assert home.store.last_seq() > seq
    p = next(p for p in home.store.profiles("mlp") if p.variant.endswith("-b32"))
    assert set(p.batches) == {"1", "4", "8", "32"}
    forced = profile_models(home, ["mlp"], batch_sizes=[1], force=True, settings=FAST)
    assert forced.measurements == len(configs)
    assert set(home.store.get(type(p), p.key).batches) == {"1"}


def test_regenerate_replaces_variants(home, mlp):
    profile_models(home, ["mlp"], batch_sizes=[1], settings=FAST)
    again = generate_variants(home, "mlp")
    assert {v.name for v in home.store.variants("mlp")} == {v.name for v in again.variants}
    names = {v.name for v in again.variants}
    assert all(p.variant in names for p in home.store.profiles("mlp"))
