"""The ov-cpu backend on the zoo's CNNs with real OpenVINO (and NNCF): skipped where openvino is not installed."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from infaas_cli.backends import BuildInput, backend  # noqa: E402
from infaas_cli.backends import ov_cpu  # noqa: E402
from infaas_cli.catalog.home import InfaasHome  # noqa: E402
from infaas_cli.errors import BackendUnavailableError  # noqa: E402
from infaas_cli.toolkit.generate import generate_variants, load_model_validation, measure_accuracy  # noqa: E402
from infaas_cli.toolkit.register import register_model  # noqa: E402
from infaas_cli.toolkit.zoo import load_manifest  # noqa: E402

ZOO = {e.name: e for e in load_manifest()}
HAS_BF16 = "BF16" in ov_cpu.cpu_capabilities()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """digits-cnn-l registered in a fresh home, and every ov-cpu recipe that applies built from it."""
    entry = ZOO["digits-cnn-l"]
    home = InfaasHome(tmp_path_factory.mktemp("home"))
    model = register_model(home, entry.file, entry.name, entry.task, entry.dataset, entry.validation)
    vset = load_model_validation(home, model)
    work = tmp_path_factory.mktemp("ov-build")
    build = BuildInput(model, home.artifacts.verify(model.artifact_sha256), vset.inputs, work)
    ov_backend = backend("ov-cpu")
    recipes, skipped = ov_backend.recipes(build)
    artifacts = {r.name: ov_backend.build(r, build) for r in recipes}
    yield {"home": home, "model": model, "vset": vset, "build": build, "recipes": recipes, "skipped": skipped,
           "artifacts": artifacts}
    home.close()


def ort_reference(cnn, x):
    ort = backend("ort-cpu")
    runner = ort.load(cnn["build"].source_path, "fp32o3", 1)
    try:
        return runner.run({"x": x})
    finally:
        runner.close()


def test_recipes_on_this_host(cnn):
    names = [r.name for r in cnn["recipes"]]
    assert names[0] == "fp32"
    assert ("bf16" in names) == HAS_BF16
    nncf_there = ov_cpu.nncf_installed()
    assert ("int8" in names) == nncf_there
    assert {s.recipe for s in cnn["skipped"]} == {"bf16"} - set(names) | ({"int8"} - set(names))


def test_the_artifact_is_one_reproducible_file_shared_by_fp32_and_bf16(cnn, tmp_path):
    fp32 = cnn["artifacts"]["fp32"]
    assert fp32.is_file() and fp32.stat().st_size > 1_000_000  # fp32 weights (~1.1 MB), not halved to fp16
    if HAS_BF16:
        assert cnn["artifacts"]["bf16"] == fp32
    again = BuildInput(cnn["model"], cnn["build"].source_path, None, tmp_path)
    rebuilt = backend("ov-cpu").build(ov_cpu.RECIPES["fp32"], again)
    assert rebuilt.read_bytes() == fp32.read_bytes()  # same model, same digest in the store


@pytest.mark.parametrize("threads", [1, 2])
def test_fp32_matches_onnx_runtime(cnn, threads):
    x = cnn["vset"].inputs["x"]
    ref = ort_reference(cnn, x)
    runner = backend("ov-cpu").load(cnn["artifacts"]["fp32"], "fp32", threads)
    try:
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == threads
        for batch in (1, 7, 32, x.shape[0]):  # the batch dimension stayed dynamic
            out = runner.run({"x": x[:batch]})
            assert [o.dtype for o in out] == [np.int64, np.float32]  # label, probabilities: the model's order
            np.testing.assert_array_equal(out[0], ref[0][:batch])
            np.testing.assert_allclose(out[1], ref[1][:batch], atol=1e-5, rtol=0)
    finally:
        runner.close()


@pytest.mark.skipif(not HAS_BF16, reason="this CPU does not compute bf16")
def test_bf16_gives_the_same_labels(cnn):
    x = cnn["vset"].inputs["x"]
    ref = ort_reference(cnn, x)
    runner = backend("ov-cpu").load(cnn["artifacts"]["bf16"], "bf16", 1)
    try:
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        out = runner.run({"x": x})
    finally:
        runner.close()
    np.testing.assert_array_equal(out[0], ref[0])
    np.testing.assert_allclose(out[1], ref[1], atol=0.05)


def test_bf16_is_refused_on_a_cpu_without_it(cnn, monkeypatch):
    monkeypatch.setattr(ov_cpu, "cpu_capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(BackendUnavailableError, match="does not compute bf16.*FP32, INT8"):
        backend("ov-cpu").load(cnn["artifacts"]["fp32"], "bf16", 1)


def test_int8_accuracy_within_a_point_of_fp32(cnn):
    pytest.importorskip("nncf")
    ov_backend, model, vset = backend("ov-cpu"), cnn["model"], cnn["vset"]
    fp32, metric = measure_accuracy(ov_backend, cnn["artifacts"]["fp32"], "fp32", model, vset, None)
    int8, _ = measure_accuracy(ov_backend, cnn["artifacts"]["int8"], "int8", model, vset, None)
    assert metric == "top1" and fp32 == pytest.approx(model.accuracy)
    assert abs(int8 - fp32) <= 0.01
    assert cnn["artifacts"]["int8"].read_bytes() != cnn["artifacts"]["fp32"].read_bytes()


def test_generate_lists_ov_cpu_variants_with_measured_accuracy(home):
    entry = ZOO["digits-cnn-s"]
    register_model(home, entry.file, entry.name, entry.task, entry.dataset, entry.validation)
    report = generate_variants(home, entry.name)
    ov_variants = [v for v in report.variants if v.backend == "ov-cpu"]
    recipes = {v.recipe for v in ov_variants}
    assert "fp32" in recipes and ("bf16" in recipes) == HAS_BF16
    assert all(v.hardware == "cpu" and v.accuracy_metric == "top1" and v.accuracy > 0.9 for v in ov_variants)
    assert all(v.name.startswith(f"{entry.name}/ov-cpu-{v.recipe}-t") for v in ov_variants)
    shas = {v.recipe: v.artifact_sha256 for v in ov_variants}
    if HAS_BF16:
        assert shas["bf16"] == shas["fp32"]
    assert not [s for s in report.skipped if s.backend == "ov-cpu" and s.reason.startswith("build or check failed")]
