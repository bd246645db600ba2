"""Placement keys: a variant that needs a host capability (bf16) goes only to workers that advertise it."""

from __future__ import annotations

import sys

import pytest

from infaas_cli.backends import keys
from infaas_cli.backends.keys import placement_key, provided_keys, split_key, unavailable_reason
from infaas_cli.policy.placement import VariantNeed, WorkerState, need_of, place
from infaas_cli.policy.selection import (CatalogIndex, ClusterSnapshot, PriceTable, Query, UnavailableError,
                                         VariantInfo, select)
from infaas_cli.protocol import messages as m

PRICES = PriceTable(cpu_usd_per_core_second=1e-3, gpu_usd_per_device_second=1e-2,
                    inferentia_usd_per_device_second=5e-3)
GIB = 1 << 30
PLAIN = ("ort-cpu", "ov-cpu")  # a CPU without BF16
BF16_HOST = ("ort-cpu", "ov-cpu", "ov-cpu+bf16")


def vi(name: str, backend: str, recipe: str, lat_ms: float, acc: float = 0.9) -> VariantInfo:
    return VariantInfo(name=name, model=name.split("/", 1)[0], task="digits-cls", dataset="digits", backend=backend,
                       hardware="cpu", recipe=recipe, threads=1, max_batch=8, accuracy=acc, load_time_ms=0.0,
                       peak_memory_bytes=0, batch_latency_ms=((1, lat_ms), (8, lat_ms * 4)))


def worker(wid: str, backends: tuple[str, ...], free_cores: float = 4, loaded: dict[str, int] | None = None,
           alive: bool = True) -> WorkerState:
    return WorkerState(wid, frozenset(backends), 8, free_cores, 8 * GIB, loaded or {}, alive)


def snap(*workers: WorkerState) -> ClusterSnapshot:
    return ClusterSnapshot(workers, overhead_ms_default=0.0)


# The zoo's CNN on OpenVINO: bf16 is the fastest, fp32 the next, ORT's fp32 the slowest.
INDEX = CatalogIndex([vi("cnn/ov-cpu-bf16-t1-b8", "ov-cpu", "bf16", 0.4),
                      vi("cnn/ov-cpu-fp32-t1-b8", "ov-cpu", "fp32", 0.6),
                      vi("cnn/ort-cpu-fp32o3-t1-b8", "ort-cpu", "fp32o3", 0.7)], PRICES)
BF16 = "cnn/ov-cpu-bf16-t1-b8"


# -- keys --------------------------------------------------------------------------------------------

def test_a_recipe_that_needs_a_capability_has_it_in_its_key():
    assert placement_key("ov-cpu", "bf16") == "ov-cpu+bf16"
    assert [placement_key("ov-cpu", r) for r in ("fp32", "int8")] == ["ov-cpu", "ov-cpu"]
    assert placement_key("ort-cpu", "int8s") == "ort-cpu"
    assert split_key("ov-cpu+bf16") == ("ov-cpu", ("bf16",)) and split_key("ort-cpu") == ("ort-cpu", ())
    assert keys.describe_needs("ov-cpu+bf16") == "needs a CPU with BF16" and keys.describe_needs("ov-cpu") == ""


def test_a_host_provides_the_capability_keys_it_meets():
    assert provided_keys("ov-cpu", {"bf16"}) == ["ov-cpu", "ov-cpu+bf16"]
    assert provided_keys("ov-cpu", ()) == ["ov-cpu"]
    assert provided_keys("ort-cpu", {"bf16"}) == ["ort-cpu"]  # no ort-cpu recipe needs it
    assert keys.backend_names(["ort-cpu", "ov-cpu", "ov-cpu+bf16"]) == ["ort-cpu", "ov-cpu"]


def test_every_declared_need_is_a_real_recipe_with_a_description():
    from infaas_cli.backends import backend, ov_cpu

    assert set(keys.RECIPE_NEEDS["ov-cpu"]) <= set(ov_cpu.RECIPES)
    for name, recipes in keys.RECIPE_NEEDS.items():
        backend(name)  # a known backend
        for needs in recipes.values():
            assert all(c in keys.CAPABILITY_TEXT for c in needs)


def test_ov_cpu_reports_bf16_from_the_plugin_capabilities(monkeypatch):
    from infaas_cli.backends import ov_cpu

    monkeypatch.setattr(ov_cpu, "cpu_capabilities", lambda: ["BF16", "FP32", "INT8"])
    assert ov_cpu.OvCpuBackend().capabilities() == {"bf16"}
    monkeypatch.setattr(ov_cpu, "cpu_capabilities", lambda: ["FP32", "INT8"])
    assert ov_cpu.OvCpuBackend().capabilities() == frozenset()


def test_the_policies_import_no_runtime():
    # The master imports selection and placement: the keys must not pull onnxruntime or openvino in with them.
    import subprocess

    code = ("import sys, infaas_cli.policy.selection, infaas_cli.backends.keys; "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- placement ---------------------------------------------------------------------------------------

def test_place_sends_a_bf16_variant_only_to_a_bf16_worker():
    spec = m.VariantSpec(name=BF16, backend="ov-cpu", recipe="bf16", threads=1, max_batch=8, batch_dim="dynamic",
                         artifact_sha256="0" * 64, inputs=[])
    need = need_of(spec)
    assert need == VariantNeed(BF16, "ov-cpu+bf16", 1, 0)
    roomy_plain, bf16 = worker("a", PLAIN, free_cores=8), worker("b", BF16_HOST, free_cores=1)
    for purpose in ("query", "static", "replica"):
        assert place([roomy_plain, bf16], need, purpose) == ("b",)
        assert place([roomy_plain], need, purpose) == ()


# -- selection ---------------------------------------------------------------------------------------

def test_selection_never_picks_a_bf16_variant_without_a_bf16_worker():
    q = Query(kind="task", task="digits-cls", dataset="digits", objective="latency")
    d = select(q, INDEX, snap(worker("plain", PLAIN)))
    assert (d.variant, d.worker_id) == ("cnn/ov-cpu-fp32-t1-b8", "plain")
    # With a BF16 worker beside it (fewer free cores), the bf16 variant wins and is loaded there only.
    d = select(q, INDEX, snap(worker("plain", PLAIN, free_cores=8), worker("bf16", BF16_HOST, free_cores=1)))
    assert (d.variant, d.worker_id, d.needs_load) == (BF16, "bf16", True)


def test_a_bound_only_bf16_meets_says_no_worker_has_bf16():
    q = Query(kind="model", model="cnn", latency_ms=0.5)
    with pytest.raises(UnavailableError) as info:
        select(q, INDEX, snap(worker("plain", PLAIN)))
    assert "ov-cpu bf16 variants need a CPU with BF16, which no live ov-cpu worker has" in str(info.value)
    assert info.value.code == "unavailable"


def test_a_bf16_variant_asked_by_name_says_why_it_cannot_run():
    with pytest.raises(UnavailableError) as info:
        select(Query(kind="variant", variant=BF16), INDEX, snap(worker("plain", PLAIN)))
    assert str(info.value).startswith(f"no live worker can run {BF16}: ov-cpu bf16 variants need a CPU with BF16")
    # Without any OpenVINO worker the backend itself is what is missing.
    with pytest.raises(UnavailableError, match="^no live worker runs backend ov-cpu; start one"):
        select(Query(kind="variant", variant=BF16), INDEX, snap(worker("ort", ("ort-cpu",))))


def test_a_bf16_variant_already_loaded_serves_where_it_is():
    # Held (e.g. loaded before the worker lost its key): a loaded copy counts, it is not loaded anew.
    d = select(Query(kind="model", model="cnn", objective="latency"), INDEX,
               snap(worker("bf16", BF16_HOST, loaded={BF16: 0}), worker("plain", PLAIN, free_cores=8)))
    assert (d.variant, d.worker_id, d.needs_load) == (BF16, "bf16", False)


def test_cluster_view_ranks_workers_per_key():
    view = snap(worker("plain", PLAIN, free_cores=8), worker("bf16", BF16_HOST, free_cores=1)).view()
    assert view.place_query("ov-cpu", 0) == "plain"
    assert view.place_query("ov-cpu+bf16", 0) == "bf16"
    view.upsert_worker("bf16", BF16_HOST, 8, 1, 8 * GIB, alive=False)  # drains: no bf16 worker left
    assert view.place_query("ov-cpu+bf16", 0) is None
    group = view.group(INDEX, 0, len(INDEX))
    runnable = {INDEX.order[i].name: bool(ok) for i, ok in enumerate(group.runnable)}
    assert runnable == {BF16: False, "cnn/ov-cpu-fp32-t1-b8": True, "cnn/ort-cpu-fp32o3-t1-b8": True}


def test_unavailable_reason_names_each_missing_piece():
    text = unavailable_reason(["ort-cuda", "ov-cpu+bf16"], ["ort-cpu", "ov-cpu"], "any variant of model m")
    assert text.startswith("no live worker can run any variant of model m: no live worker runs backend ort-cuda; "
                           "ov-cpu bf16 variants need a CPU with BF16, which no live ov-cpu worker has")
