"""Pure tests of the selection policy and the price table: plain numbers, no sockets, no LMDB."""

from __future__ import annotations

import numpy as np
import pytest

from infaas_cli.errors import InfaasError
from infaas_cli.protocol import ERROR_CODES
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.policy.latency import PRIOR_OVERHEAD_MS
from infaas_cli.policy.selection import (CatalogIndex, ClusterSnapshot, Decision, InvalidInputError,
                                         InvalidQueryError, ModelSignature, NoVariantError, OverloadedError,
                                         PriceTable, Query, UnavailableError, UnknownModelError, VariantInfo,
                                         WorkerState, build_index, input_signature, load_prices, select)

# $0.001 per core-second: a t1 variant taking 1 ms costs $1e-6 per query.
PRICES = PriceTable(cpu_usd_per_core_second=1e-3, gpu_usd_per_device_second=1e-2,
                    inferentia_usd_per_device_second=5e-3)
GIB = 1 << 30


def vi(name: str, lat: dict[int, float], acc: float | None = 0.9, load_ms: float = 0.0, threads: int = 1,
       max_batch: int | None = None, backend: str = "ort-cpu", hardware: str = "cpu", task: str = "digits-cls",
       dataset: str = "digits", mem_bytes: int = 0) -> VariantInfo:
    model = name.split("/", 1)[0]
    return VariantInfo(name=name, model=model, task=task, dataset=dataset, backend=backend, hardware=hardware,
                       recipe="fp32", threads=threads, max_batch=max_batch or max(lat, default=1), accuracy=acc,
                       load_time_ms=load_ms, peak_memory_bytes=mem_bytes,
                       batch_latency_ms=tuple(sorted(lat.items())))


def worker(wid: str, loaded: dict[str, int] | None = None, free_cores: float = 4, free_mem: int = 8 * GIB,
           backends=("ort-cpu",), alive: bool = True) -> WorkerState:
    return WorkerState(worker_id=wid, backends=frozenset(backends), cores=8, free_cores=free_cores,
                       free_memory_bytes=free_mem, loaded=loaded or {}, alive=alive)


def cluster(*workers: WorkerState, overhead_ms: dict[str, float] | None = None,
            default_ms: float = 0.0) -> ClusterSnapshot:
    """A snapshot whose serving overhead is 0 unless given: most tests check model-time arithmetic (queues,
    loads, batches, ranking); the end-to-end overhead is tested on its own in its section below."""
    return ClusterSnapshot(tuple(workers), overhead_ms=overhead_ms, overhead_ms_default=default_ms)


def index(*infos: VariantInfo, models: dict[str, tuple[str, str]] | None = None) -> CatalogIndex:
    return CatalogIndex(infos, PRICES, models)


def task_query(**kw) -> Query:
    return Query(kind="task", task="digits-cls", dataset="digits", **kw)


# -- prices ------------------------------------------------------------------------------------------

def test_bundled_prices_derive_from_ec2_list_prices():
    prices = load_prices()
    assert prices.cpu_usd_per_core_second == pytest.approx(0.085 / 2 / 3600, rel=1e-4)  # c5.large
    assert prices.gpu_usd_per_device_second == pytest.approx(0.526 / 3600, rel=1e-4)  # g4dn.xlarge
    assert prices.inferentia_usd_per_device_second == pytest.approx(0.228 / 3600, rel=1e-4)  # inf1.xlarge
    assert prices.usd_per_second("cpu", 4) == pytest.approx(4 * prices.cpu_usd_per_core_second)
    assert prices.usd_per_second("gpu", 4) == prices.gpu_usd_per_device_second  # per device, not per thread


def test_usd_per_second_unknown_hardware():
    with pytest.raises(InfaasError, match="no price for hardware 'tpu'"):
        PRICES.usd_per_second("tpu", 1)


@pytest.mark.parametrize("text, fragment", [
    ("[cpu]\nusd_per_core_second = 1e-5\nusd_per_hour = 0.1\n", "unknown key 'cpu.usd_per_hour'"),
    ("[tpu]\nusd_per_device_second = 1.0\n", "unknown key 'tpu'"),
    ("[cpu]\nusd_per_core_second = -1.0\n", "'cpu.usd_per_core_second' must be a non-negative number"),
    ("[cpu]\nusd_per_core_second = 1e-5\n", "lacks gpu.usd_per_device_second, inferentia.usd_per_device_second"),
    ("[cpu\n", "not valid TOML"),
])
def test_bad_price_file_is_rejected_naming_the_key(tmp_path, text, fragment):
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(InfaasError) as info:
        load_prices(path)
    assert fragment in str(info.value)


def test_price_file_round_trip(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text("[cpu]\nusd_per_core_second = 2\n[gpu]\nusd_per_device_second = 3.5\n"
                    "[inferentia]\nusd_per_device_second = 1\n")
    prices = load_prices(path)
    assert prices.usd_per_second("cpu", 3) == 6.0
    assert prices.usd_per_second("gpu", 8) == 3.5
    with pytest.raises(InfaasError, match="not found"):
        load_prices(tmp_path / "missing.toml")


# -- Query.from_body ---------------------------------------------------------------------------------

def test_from_body_fills_defaults_and_ignores_other_keys():
    q = Query.from_body({"kind": "task", "task": "digits-cls", "dataset": "digits", "latency_ms": 5,
                         "min_accuracy": None, "objective": None, "max_cost_usd": None, "variant": None,
                         "model": None, "inputs": {"x": b"..."}})
    assert q == Query(kind="task", task="digits-cls", dataset="digits", latency_ms=5.0)
    assert q.batch_size == 1 and q.objective == "cost" and isinstance(q.latency_ms, float)


@pytest.mark.parametrize("body, fragment", [
    ([1, 2], "a query body is a map"),
    ({}, "lacks 'kind'"),
    ({"kind": "tasks"}, "query kind must be 'variant', 'model' or 'task'"),
    ({"kind": "variant"}, "pass --variant"),
    ({"kind": "model", "model": ""}, "pass --model"),
    ({"kind": "task", "task": "t"}, "pass --task T --dataset D"),
    ({"kind": "model", "model": 3}, "model must be a string"),
    ({"kind": "model", "model": "m", "batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"kind": "model", "model": "m", "batch_size": 2.5}, "batch_size must be a whole number >= 1"),
    ({"kind": "model", "model": "m", "latency_ms": -1}, "latency_ms must be a positive number"),
    ({"kind": "model", "model": "m", "latency_ms": "5"}, "latency_ms must be a positive number"),
    ({"kind": "model", "model": "m", "min_accuracy": 97}, "0.97 means 97%"),
    ({"kind": "model", "model": "m", "min_accuracy": True}, "min_accuracy must be a fraction"),
    ({"kind": "model", "model": "m", "objective": "speed"}, "objective must be 'cost' or 'latency'"),
    ({"kind": "model", "model": "m", "max_cost_usd": -0.1}, "max_cost_usd must be a non-negative number"),
])
def test_from_body_rejects_bad_queries(body, fragment):
    with pytest.raises(InvalidQueryError) as info:
        Query.from_body(body)
    assert fragment in str(info.value)
    assert info.value.code == "bad_request"


# -- kinds -------------------------------------------------------------------------------------------

def test_kind_variant_goes_to_the_least_loaded_holder():
    idx = index(vi("m/a", {1: 2.0, 8: 6.0}, load_ms=50))
    snap = cluster(worker("w1", {"m/a": 5}), worker("w2", {"m/a": 1}), worker("w3", {"m/a": 0}, alive=False))
    d = select(Query(kind="variant", variant="m/a", batch_size=4), idx, snap)
    assert d == Decision(variant="m/a", worker_id="w2", needs_load=False,
                         predicted_latency_ms=6.0 + 1 * 2.0, cost_usd=pytest.approx(6e-6), model="m", accuracy=0.9)


def test_kind_variant_not_loaded_is_placed_with_its_load_time():
    idx = index(vi("m/a", {1: 2.0}, load_ms=50, mem_bytes=GIB))
    d = select(Query(kind="variant", variant="m/a"), idx, cluster(worker("w1", free_cores=1), worker("w2")))
    assert (d.worker_id, d.needs_load, d.predicted_latency_ms) == ("w2", True, 52.0)


def test_kind_variant_unprofiled_is_reachable_by_name_only():
    idx = index(vi("m/fast", {}, max_batch=8, acc=0.99), vi("m/slow", {1: 9.0}))
    d = select(Query(kind="variant", variant="m/fast"), idx, cluster(worker("w1")))
    assert (d.variant, d.predicted_latency_ms, d.cost_usd) == ("m/fast", None, None)
    assert select(Query(kind="model", model="m"), idx, cluster(worker("w1"))).variant == "m/slow"


def test_kind_variant_batch_above_max_batch():
    idx = index(vi("m/a", {1: 1.0, 4: 2.0}))
    with pytest.raises(NoVariantError, match="takes batches of at most 4"):
        select(Query(kind="variant", variant="m/a", batch_size=5), idx, cluster(worker("w1")))


def test_kind_model_picks_the_cheapest_of_that_model_only():
    idx = index(vi("m/t1", {1: 3.0}, threads=1), vi("m/t4", {1: 1.0}, threads=4),
                vi("other/cheap", {1: 0.1}, threads=1))
    d = select(Query(kind="model", model="m"), idx, cluster(worker("w1")))
    assert (d.variant, d.model) == ("m/t1", "m")  # 3 ms x 1 core < 1 ms x 4 cores
    assert d.cost_usd == pytest.approx(3e-6)


def test_kind_task_searches_every_model_of_the_task():
    idx = index(vi("m/a", {1: 3.0}), vi("n/b", {1: 0.5}), vi("x/c", {1: 0.1}, task="other"))
    d = select(task_query(), idx, cluster(worker("w1")))
    assert (d.variant, d.model, d.needs_load) == ("n/b", "n", True)


# -- SLO filters and ranking -------------------------------------------------------------------------

def test_load_time_counts_for_unloaded_variants():
    # fast would meet 10 ms on its own but not with its 100 ms load; slow is loaded and meets it.
    idx = index(vi("m/fast", {1: 1.0}, load_ms=100.0), vi("m/slow", {1: 5.0}, load_ms=100.0))
    snap = cluster(worker("w1", {"m/slow": 0}))
    d = select(task_query(latency_ms=10, objective="latency"), idx, snap)
    assert (d.variant, d.needs_load, d.predicted_latency_ms) == ("m/slow", False, 5.0)
    # Without the loaded one, nothing meets 10 ms: the best achievable includes the load time.
    with pytest.raises(NoVariantError) as info:
        select(task_query(latency_ms=10), idx, cluster(worker("w1")))
    assert info.value.best_latency_ms == 101.0


def test_a_loaded_variant_is_preferred_over_a_cheaper_unloaded_one():
    idx = index(vi("m/cheap", {1: 1.0}), vi("m/dear", {1: 4.0}))
    d = select(task_query(), idx, cluster(worker("w1", {"m/dear": 0})))
    assert (d.variant, d.needs_load) == ("m/dear", False)
    # ...unless the loaded one misses the SLO.
    d = select(task_query(latency_ms=2), idx, cluster(worker("w1", {"m/dear": 0})))
    assert (d.variant, d.needs_load) == ("m/cheap", True)


def test_queue_length_counts_against_a_loaded_variant():
    idx = index(vi("m/a", {1: 2.0}, load_ms=5.0), vi("m/b", {1: 3.0}, load_ms=1.0))
    snap = cluster(worker("w1", {"m/a": 10}), worker("w2", {"m/a": 4}))
    # m/a on w2: 2 + 4 x 2 = 10 ms > 8 ms; m/b unloaded: 1 + 3 = 4 ms.
    d = select(task_query(latency_ms=8), idx, snap)
    assert (d.variant, d.predicted_latency_ms) == ("m/b", 4.0)
    d = select(task_query(latency_ms=12), idx, snap)
    assert (d.variant, d.worker_id, d.predicted_latency_ms) == ("m/a", "w2", 10.0)


def test_cost_and_latency_objectives_pick_different_variants():
    idx = index(vi("m/t1", {1: 4.0}, threads=1), vi("m/t8", {1: 1.0}, threads=8))
    snap = cluster(worker("w1"))
    assert select(task_query(objective="cost"), idx, snap).variant == "m/t1"  # 4 core-ms < 8 core-ms
    assert select(task_query(objective="latency"), idx, snap).variant == "m/t8"


def test_max_cost_filters_out_dear_variants():
    idx = index(vi("m/t1", {1: 4.0}, threads=1), vi("m/t8", {1: 1.0}, threads=8))
    snap = cluster(worker("w1"))
    d = select(task_query(objective="latency", max_cost_usd=5e-6), idx, snap)
    assert d.variant == "m/t1"
    with pytest.raises(NoVariantError) as info:
        select(task_query(objective="latency", max_cost_usd=1e-6), idx, snap)
    assert "cost ≤ $1e-06 per query" in str(info.value) and "relax --max-cost" in str(info.value)


def test_min_accuracy_and_missing_accuracy():
    idx = index(vi("m/a", {1: 1.0}, acc=0.80), vi("m/b", {1: 2.0}, acc=0.95), vi("m/c", {1: 0.5}, acc=None))
    snap = cluster(worker("w1"))
    assert select(task_query(), idx, snap).variant == "m/c"  # no accuracy bound: the unmeasured one is fine
    assert select(task_query(min_accuracy=0.0), idx, snap).variant == "m/c"
    assert select(task_query(min_accuracy=0.5), idx, snap).variant == "m/a"  # None fails any bound > 0
    assert select(task_query(min_accuracy=0.9), idx, snap).variant == "m/b"


def test_batch_size_uses_the_next_profiled_batch_and_respects_max_batch():
    idx = index(vi("m/b4", {1: 1.0, 4: 2.0}, max_batch=4), vi("m/b16", {1: 1.5, 16: 3.0}))
    snap = cluster(worker("w1"))
    d = select(task_query(batch_size=3, objective="latency"), idx, snap)
    assert (d.variant, d.predicted_latency_ms) == ("m/b4", 2.0)
    d = select(task_query(batch_size=5, objective="latency"), idx, snap)
    assert (d.variant, d.predicted_latency_ms) == ("m/b16", 3.0)  # m/b4 takes at most 4
    with pytest.raises(NoVariantError, match="takes batches of 17: the largest max batch is 16"):
        select(task_query(batch_size=17), idx, snap)


def test_batch_beyond_the_largest_profiled_scales_linearly():
    info = vi("m/a", {1: 1.0, 4: 2.0}, max_batch=8)
    assert info.latency_ms(6) == pytest.approx(3.0)
    d = select(task_query(batch_size=6), index(info), cluster(worker("w1")))
    assert d.predicted_latency_ms == pytest.approx(3.0)


def test_ties_break_by_the_other_metric_then_by_name():
    idx = index(vi("m/b", {1: 2.0}), vi("m/a", {1: 2.0}), vi("m/c", {1: 1.0}, threads=2))
    snap = cluster(worker("w1"))
    # cost: b, a and c all cost 2 core-ms; c is faster.
    assert select(task_query(objective="cost"), idx, snap).variant == "m/c"
    idx = index(vi("m/b", {1: 2.0}), vi("m/a", {1: 2.0}))
    assert select(task_query(objective="cost"), idx, snap).variant == "m/a"
    assert select(task_query(objective="latency"), idx, snap).variant == "m/a"


def test_impossible_slo_names_the_best_latency_and_accuracy():
    idx = index(vi("digits-cnn-l/ort-cpu-fp32o3-t2-b8", {1: 0.35}, acc=0.995, threads=2),
                vi("digits-tree/ort-cpu-fp32-t1-b1", {1: 0.005}, acc=0.842))
    with pytest.raises(NoVariantError) as info:
        select(task_query(latency_ms=0.01, min_accuracy=0.99), idx, cluster(worker("w1")))
    err = info.value
    assert str(err) == (
        "no variant of task digits-cls/digits meets latency ≤ 0.01 ms with accuracy ≥ 99.0%: the fastest with "
        "enough accuracy takes 0.35 ms (digits-cnn-l/ort-cpu-fp32o3-t2-b8); the most accurate within 0.01 ms "
        "reaches 84.2% (digits-tree/ort-cpu-fp32-t1-b1) — relax --latency-ms or --min-accuracy")
    assert (err.best_latency_ms, err.best_accuracy, err.code) == (0.35, 0.842, "no_variant")


def test_impossible_slo_when_nothing_is_accurate_or_fast_enough():
    idx = index(vi("m/a", {1: 5.0}, acc=0.8), vi("m/b", {1: 7.0}, acc=0.85))
    with pytest.raises(NoVariantError) as info:
        select(Query(kind="model", model="m", latency_ms=1, min_accuracy=0.9), idx, cluster(worker("w1")))
    msg = str(info.value)
    assert msg.startswith("no variant of model m meets latency ≤ 1 ms with accuracy ≥ 90.0%")
    assert "none reaches 90.0% (the most accurate reaches 85.0%)" in msg
    assert "none runs within 1 ms (the fastest takes 5 ms: m/a)" in msg
    assert (info.value.best_latency_ms, info.value.best_accuracy) == (5.0, 0.85)


# -- unknown names and unavailable workers -----------------------------------------------------------

def test_unknown_model_task_and_variant_list_what_exists():
    idx = index(vi("m/a", {1: 1.0}), vi("n/b", {1: 1.0}, task="other", dataset="set"))
    snap = cluster(worker("w1"))
    with pytest.raises(UnknownModelError, match=r"unknown model 'zz'; known models: m, n"):
        select(Query(kind="model", model="zz"), idx, snap)
    with pytest.raises(UnknownModelError, match="known task/dataset pairs: digits-cls/digits, other/set"):
        select(Query(kind="task", task="digits-cls", dataset="mnist"), idx, snap)
    with pytest.raises(UnknownModelError, match="variants of model m: m/a"):
        select(Query(kind="variant", variant="m/zz"), idx, snap)
    with pytest.raises(UnknownModelError) as info:
        select(Query(kind="variant", variant="zz/a"), idx, snap)
    assert info.value.code == "unknown_model"


def test_unknown_model_listing_is_capped():
    idx = index(*(vi(f"m{i:02d}/a", {1: 1.0}) for i in range(25)))
    with pytest.raises(UnknownModelError, match=r"m09 \(and 15 more\)"):
        select(Query(kind="model", model="zz"), idx, cluster(worker("w1")))


def test_registered_model_without_profiles_says_to_profile():
    idx = index(vi("m/a", {1: 1.0}), models={"m": ("digits-cls", "digits"), "p": ("speech", "libri")})
    with pytest.raises(NoVariantError, match="run `infaas profile p`"):
        select(Query(kind="model", model="p"), idx, cluster(worker("w1")))
    with pytest.raises(NoVariantError, match="no variant of task speech/libri is profiled yet"):
        select(Query(kind="task", task="speech", dataset="libri"), idx, cluster(worker("w1")))


def test_no_alive_worker_is_unavailable():
    idx = index(vi("m/a", {1: 1.0}))
    snap = cluster(worker("w1", {"m/a": 0}, alive=False))
    for q in (task_query(), Query(kind="model", model="m"), Query(kind="variant", variant="m/a")):
        with pytest.raises(UnavailableError) as info:
            select(q, idx, snap)
        assert str(info.value) == "no live worker runs backend ort-cpu; start one with `infaas worker` or `infaas up`"
        assert info.value.code == "unavailable"


def test_variants_of_a_backend_without_workers_are_skipped():
    idx = index(vi("m/gpu", {1: 0.1}, backend="ort-gpu", hardware="gpu"), vi("m/cpu", {1: 2.0}))
    snap = cluster(worker("w1"))
    assert select(task_query(objective="latency"), idx, snap).variant == "m/cpu"
    # Only the GPU variant meets 1 ms: say which hardware is missing rather than "no variant".
    with pytest.raises(UnavailableError, match="no live worker runs backend ort-gpu"):
        select(task_query(latency_ms=1), idx, snap)
    gpu = worker("g1", backends=("ort-gpu",))
    d = select(task_query(latency_ms=1), idx, cluster(worker("w1"), gpu))
    assert (d.variant, d.worker_id) == ("m/gpu", "g1")


# -- placement ---------------------------------------------------------------------------------------

def test_load_goes_to_most_free_cores_then_most_free_memory():
    idx = index(vi("m/a", {1: 1.0}, mem_bytes=GIB))
    q = Query(kind="model", model="m")
    snap = cluster(worker("w1", free_cores=2), worker("w2", free_cores=6), worker("w3", free_cores=6, free_mem=9 * GIB),
                   worker("w4", free_cores=16, backends=("ort-gpu",)))
    assert select(q, idx, snap).worker_id == "w3"


def test_load_skips_workers_without_room():
    idx = index(vi("m/a", {1: 1.0}, mem_bytes=4 * GIB))
    q = Query(kind="model", model="m")
    snap = cluster(worker("w1", free_cores=8, free_mem=GIB), worker("w2", free_cores=2, free_mem=5 * GIB))
    assert select(q, idx, snap).worker_id == "w2"
    # Nobody has room: the one with the most free memory.
    snap = cluster(worker("w1", free_cores=8, free_mem=GIB), worker("w2", free_cores=2, free_mem=2 * GIB))
    assert select(q, idx, snap).worker_id == "w2"


def test_snapshot_holders_are_sorted_and_skip_dead_workers():
    snap = cluster(worker("w1", {"a": 3, "b": 1}), worker("w2", {"a": 1}), worker("w3", {"a": 0}, alive=False))
    view = snap.view()
    assert (view.holders("a"), view.holders("b"), view.holders("c")) == (((1, "w2"), (3, "w1")), ((1, "w1"),), ())
    assert view.least_loaded_holder("a") == (1, "w2")
    assert snap.view() is view  # built once


# -- records -----------------------------------------------------------------------------------------

def _model(name: str, task: str = "digits-cls", dataset: str = "digits") -> ModelRecord:
    return ModelRecord(name=name, task=task, dataset=dataset, artifact_sha256="0" * 64, source_file=f"{name}.onnx",
                       size_bytes=1, inputs=[], outputs=[], batch_dim="dynamic", max_batch=32, opset=17,
                       producer="test", accuracy=0.9, accuracy_metric="top1", validation_sha256=None,
                       validation_samples=0, registered_at=0.0)


def _variant(model: str, recipe: str, threads: int, max_batch: int, acc: float | None) -> VariantRecord:
    return VariantRecord(name=f"{model}/ort-cpu-{recipe}-t{threads}-b{max_batch}", model=model, backend="ort-cpu",
                         hardware="cpu", recipe=recipe, precision="fp32", threads=threads, max_batch=max_batch,
                         artifact_sha256="1" * 64, accuracy=acc, accuracy_metric="top1", build_time_ms=1.0,
                         created_at=0.0)


def _profile(variant: VariantRecord, lat: dict[int, float], at: float, load_ms: float = 10.0,
             hw: str = "cpu-a") -> ProfileRecord:
    batches = {str(b): {"p50_ms": ms / 2, "p95_ms": ms, "p99_ms": ms * 2, "mean_ms": ms / 2,
                        "throughput_qps": b / ms * 1e3, "runs": 10} for b, ms in lat.items()}
    return ProfileRecord(variant=variant.name, model=variant.model, hardware_id=hw, hardware={}, load_time_ms=load_ms,
                         peak_memory_bytes=1000, batches=batches, measured_at=at)


def test_build_index_from_records_uses_p95_of_the_latest_profile():
    fp32, int8, fresh = (_variant("cnn", "fp32o1", 1, 8, 0.97), _variant("cnn", "int8d", 1, 8, 0.95),
                         _variant("cnn", "fp16", 1, 8, 0.99))
    profiles = [_profile(fp32, {1: 2.0, 8: 5.0}, at=100.0, hw="old"),
                _profile(fp32, {1: 9.0, 8: 20.0}, at=50.0, hw="older"),
                _profile(int8, {1: 1.0, 8: 3.0}, at=10.0, load_ms=30.0)]
    idx = build_index([_model("cnn"), _model("tree", task="other")], [fp32, int8, fresh], profiles, PRICES)
    assert len(idx) == 2 and idx.infos[fresh.name].profiled is False
    assert idx.infos[fp32.name].batch_latency_ms == ((1, 2.0), (8, 5.0))
    assert idx.infos[int8.name].load_time_ms == 30.0
    snap = cluster(worker("w1"))
    d = select(Query(kind="model", model="cnn", batch_size=8, objective="latency"), idx, snap)
    assert (d.variant, d.predicted_latency_ms) == (fp32.name, 5.0 + 10.0)  # 3 + 30 for int8
    d = select(Query(kind="task", task="digits-cls", dataset="digits", min_accuracy=0.96), idx, snap)
    assert d.variant == fp32.name  # the fp16 one is more accurate but not profiled
    with pytest.raises(NoVariantError, match="no variant of task other/digits is profiled yet"):
        select(Query(kind="task", task="other", dataset="digits"), idx, snap)


def test_error_codes_are_protocol_codes():
    for cls in (InvalidQueryError, UnknownModelError, NoVariantError, UnavailableError, OverloadedError,
                InvalidInputError):
        assert cls.code in ERROR_CODES
        assert issubclass(cls, InfaasError)


def test_empty_catalog_says_what_to_register():
    idx = index()
    with pytest.raises(UnknownModelError, match="known task/dataset pairs: none"):
        select(task_query(), idx, cluster(worker("w1")))
    with pytest.raises(UnknownModelError, match="known models: none"):
        select(Query(kind="variant", variant="m/a"), idx, cluster(worker("w1")))


# -- end-to-end prediction: the serving overhead ------------------------------------------------------

def test_the_prior_overhead_counts_before_anything_is_learned():
    # The reported bug: --latency-ms 0.01 on a model profiled at 0.006 ms was accepted, then served in 7.2 ms.
    idx = index(vi("tree/a", {1: 0.006}, acc=0.84))
    snap = ClusterSnapshot((worker("w1", {"tree/a": 0}),))  # no overhead map: the prior
    with pytest.raises(NoVariantError) as info:
        select(task_query(latency_ms=0.01), idx, snap)
    assert info.value.best_latency_ms == pytest.approx(PRIOR_OVERHEAD_MS + 0.006)
    assert "1 ms serving overhead" in str(info.value)
    d = select(task_query(latency_ms=2), idx, snap)
    assert (d.predicted_latency_ms, d.slo_met_predicted) == (pytest.approx(1.006), True)


def test_the_learned_overhead_of_the_holder_is_added():
    idx = index(vi("tree/a", {1: 0.006}, acc=0.84))
    snap = cluster(worker("w1", {"tree/a": 0}), overhead_ms={"w1": 7.2})
    with pytest.raises(NoVariantError) as info:
        select(task_query(latency_ms=5), idx, snap)
    assert info.value.best_latency_ms == pytest.approx(7.206)
    assert "none runs within 5 ms (the fastest takes 7.21 ms: tree/a)" in str(info.value)
    assert select(task_query(latency_ms=8), idx, snap).predicted_latency_ms == pytest.approx(7.206)


def test_each_variant_counts_the_overhead_of_its_own_worker():
    # m/slow-model sits on a fast path, m/fast-model on a slow one: end to end, the first one wins.
    idx = index(vi("m/fast-model", {1: 1.0}), vi("m/slow-model", {1: 3.0}))
    snap = cluster(worker("w1", {"m/fast-model": 0}), worker("w2", {"m/slow-model": 0}),
                   overhead_ms={"w1": 10.0, "w2": 0.5})
    d = select(task_query(objective="latency"), idx, snap)
    assert (d.variant, d.worker_id, d.predicted_latency_ms) == ("m/slow-model", "w2", 3.5)
    d = select(task_query(latency_ms=5), idx, snap)  # cost would prefer fast-model, but it misses 5 ms
    assert (d.variant, d.predicted_latency_ms) == ("m/slow-model", 3.5)


def test_holder_overhead_follows_the_shortest_queue_then_the_worker_id():
    idx = index(vi("m/a", {1: 2.0}))
    snap = cluster(worker("w2", {"m/a": 1}), worker("w1", {"m/a": 1}), worker("w3", {"m/a": 0}),
                   overhead_ms={"w1": 1.0, "w2": 5.0, "w3": 4.0})
    d = select(task_query(), idx, snap)
    assert (d.worker_id, d.predicted_latency_ms) == ("w3", 2.0 + 4.0)
    snap = cluster(worker("w2", {"m/a": 1}), worker("w1", {"m/a": 1}), overhead_ms={"w1": 1.0, "w2": 5.0})
    d = select(task_query(), idx, snap)  # equal queues: w1 by id, as least_loaded_holder picks
    assert (d.worker_id, d.predicted_latency_ms) == ("w1", 2.0 + 2.0 + 1.0)
    d = select(Query(kind="variant", variant="m/a"), idx, snap)
    assert (d.worker_id, d.predicted_latency_ms) == ("w1", 5.0)


def test_a_load_counts_the_overhead_of_the_worker_it_is_placed_on():
    idx = index(vi("m/small", {1: 1.0}, load_ms=10.0, mem_bytes=GIB),
                vi("m/big", {1: 1.0}, load_ms=10.0, mem_bytes=6 * GIB))
    # w1 ranks first (most free cores) but has 2 GiB free; w2 has 8 GiB.
    snap = cluster(worker("w1", free_cores=8, free_mem=2 * GIB), worker("w2", free_cores=2),
                   overhead_ms={"w1": 0.5, "w2": 3.0})
    small = select(Query(kind="variant", variant="m/small"), idx, snap)
    big = select(Query(kind="variant", variant="m/big"), idx, snap)
    assert (small.worker_id, small.predicted_latency_ms) == ("w1", 11.5)
    assert (big.worker_id, big.predicted_latency_ms) == ("w2", 14.0)
    # The vectorised filter agrees with the exact figure for each.
    with pytest.raises(NoVariantError) as info:
        select(task_query(latency_ms=11), idx, snap)
    assert info.value.best_latency_ms == 11.5
    d = select(task_query(latency_ms=12, objective="latency"), idx, snap)
    assert (d.variant, d.worker_id, d.predicted_latency_ms) == ("m/small", "w1", 11.5)
    # Nobody has the memory: the worker with the most free memory, with its overhead.
    snap = cluster(worker("w1", free_cores=8, free_mem=2 * GIB), worker("w2", free_cores=2, free_mem=3 * GIB),
                   overhead_ms={"w1": 0.5, "w2": 3.0})
    d = select(Query(kind="model", model="m", min_accuracy=0.5, objective="latency"), idx, snap)
    assert (d.variant, d.predicted_latency_ms) == ("m/small", 11.5)
    big = select(Query(kind="variant", variant="m/big"), idx, snap)
    assert (big.worker_id, big.predicted_latency_ms) == ("w2", 14.0)


def test_a_worker_without_an_estimate_counts_the_default():
    idx = index(vi("m/a", {1: 2.0}))
    snap = cluster(worker("w1", {"m/a": 0}), worker("w2"), overhead_ms={"w2": 9.0}, default_ms=1.5)
    assert select(task_query(), idx, snap).predicted_latency_ms == 3.5
    with pytest.raises(InfaasError, match="overhead_ms_default"):
        ClusterSnapshot((), overhead_ms_default=-1.0)


# -- SLO modes ------------------------------------------------------------------------------------------

def test_best_effort_serves_the_fastest_when_only_the_queues_miss_the_slo():
    idx = index(vi("m/a", {1: 2.0}, threads=1), vi("m/b", {1: 3.0}, threads=1, load_ms=50.0))
    snap = cluster(worker("w1", {"m/a": 4}), worker("w2", {"m/a": 6}), overhead_ms={"w1": 1.0, "w2": 1.0})
    # m/a: 1 + 4 × 2 + 2 = 11 ms now, 3 ms idle; m/b needs a 50 ms load. Nothing meets 5 ms now.
    d = select(task_query(latency_ms=5), idx, snap)
    assert (d.variant, d.worker_id, d.needs_load, d.predicted_latency_ms, d.slo_met_predicted) == \
        ("m/a", "w1", False, 11.0, False)
    with pytest.raises(OverloadedError) as info:
        select(task_query(latency_ms=5, slo_mode="strict"), idx, snap)
    err = info.value
    assert (err.code, err.predicted_latency_ms) == ("overloaded", 11.0)
    assert "3 ms on an idle cluster" in str(err) and "retry later" in str(err)
    # Met now: both modes serve, on time.
    for mode in ("best_effort", "strict"):
        d = select(task_query(latency_ms=12, slo_mode=mode), idx, snap)
        assert (d.variant, d.slo_met_predicted) == ("m/a", True)


def test_best_effort_picks_the_lowest_prediction_among_the_admissible():
    idx = index(vi("m/a", {1: 2.0}, acc=0.95), vi("m/b", {1: 1.0}, acc=0.80), vi("m/c", {1: 1.5}, acc=0.96,
                                                                                 load_ms=4.0))
    snap = cluster(worker("w1", {"m/a": 3, "m/b": 0}))
    # accuracy ≥ 0.9 leaves a (2 + 6 = 8 ms now, 2 ms idle) and c (load: 5.5 ms); b is out.
    d = select(task_query(latency_ms=3, min_accuracy=0.9), idx, snap)
    assert (d.variant, d.needs_load, d.predicted_latency_ms, d.slo_met_predicted) == ("m/c", True, 5.5, False)


def test_an_slo_out_of_reach_even_when_idle_is_no_variant_in_both_modes():
    idx = index(vi("m/a", {1: 2.0}))
    snap = cluster(worker("w1", {"m/a": 10}), default_ms=1.0)
    for mode in ("best_effort", "strict"):
        with pytest.raises(NoVariantError) as info:
            select(task_query(latency_ms=2.5, slo_mode=mode), idx, snap)
        # The honest best figure is the one now (queue included), which is what the client would get.
        assert info.value.best_latency_ms == 1.0 + 2.0 + 10 * 2.0


def test_kind_variant_modes():
    idx = index(vi("m/a", {1: 2.0}, load_ms=20.0))
    snap = cluster(worker("w1", {"m/a": 3}), default_ms=1.0)
    d = select(Query(kind="variant", variant="m/a", latency_ms=4), idx, snap)
    assert (d.predicted_latency_ms, d.slo_met_predicted) == (9.0, False)
    with pytest.raises(OverloadedError) as info:
        select(Query(kind="variant", variant="m/a", latency_ms=4, slo_mode="strict"), idx, snap)
    assert info.value.predicted_latency_ms == 9.0
    with pytest.raises(NoVariantError) as info:
        select(Query(kind="variant", variant="m/a", latency_ms=2.5), idx, snap)
    assert info.value.best_latency_ms == 3.0 and "1 ms serving overhead" in str(info.value)
    # Not loaded: the load counts in the prediction, but by name it is a transient like a queue (nothing else
    # would ever load the variant): best_effort serves late, strict refuses, an unreachable bound is no_variant.
    cold = cluster(worker("w1"), default_ms=1.0)
    d = select(Query(kind="variant", variant="m/a", latency_ms=5), idx, cold)
    assert (d.needs_load, d.predicted_latency_ms, d.slo_met_predicted) == (True, 23.0, False)
    with pytest.raises(OverloadedError, match="its 20 ms load makes latency ≤ 5 ms unreachable"):
        select(Query(kind="variant", variant="m/a", latency_ms=5, slo_mode="strict"), idx, cold)
    with pytest.raises(NoVariantError, match="even when loaded and idle"):
        select(Query(kind="variant", variant="m/a", latency_ms=2.5), idx, cold)
    assert select(Query(kind="variant", variant="m/a", latency_ms=30), idx, cold).slo_met_predicted


def test_no_latency_bound_is_always_met():
    idx = index(vi("m/a", {1: 2.0}))
    d = select(task_query(), idx, cluster(worker("w1", {"m/a": 100})))
    assert d.slo_met_predicted is True


def test_slo_mode_is_validated():
    assert Query.from_body({"kind": "model", "model": "m", "slo_mode": "strict"}).slo_mode == "strict"
    assert Query.from_body({"kind": "model", "model": "m", "slo_mode": None}).slo_mode == "best_effort"
    with pytest.raises(InvalidQueryError, match="slo_mode must be 'best_effort' or 'strict'"):
        Query(kind="model", model="m", slo_mode="eager")


# -- input signatures -----------------------------------------------------------------------------------

def _model_with(name: str, inputs: list[tuple[str, str, list]], batch_dim: str = "dynamic",
                task: str = "digits-cls") -> ModelRecord:
    rec = _model(name, task=task)
    rec.inputs = [{"name": n, "type": f"tensor({d})", "dtype": d, "shape": shape} for n, d, shape in inputs]
    rec.batch_dim = batch_dim
    return rec


def _signature_index():
    models = [_model_with("cnn", [("image", "float32", [None, 1, 8, 8])]),
              _model_with("mlp", [("x", "float32", [None, 64])]),
              _model_with("tok", [("ids", "int64", [None, "seq"]), ("mask", "int64", [None, "seq"])]),
              _model("legacy")]  # a record without inputs: unknown signature, never filtered
    variants, profiles = [], []
    for model, ms in (("cnn", 1.0), ("mlp", 2.0), ("tok", 3.0), ("legacy", 4.0)):
        v = _variant(model, "fp32o1", 1, 8, 0.9)
        variants.append(v)
        profiles.append(_profile(v, {1: ms}, at=1.0))
    return build_index(models, variants, profiles, PRICES), variants


def test_task_queries_reach_only_models_that_take_their_inputs():
    idx, variants = _signature_index()
    snap = cluster(worker("w1"))
    sig = input_signature({"x": np.zeros((3, 64), dtype=np.float32)})
    assert sig == (("x", "float32", (3, 64)),)
    d = select(task_query(batch_size=3, inputs=sig, objective="latency"), idx, snap)
    assert d.model == "mlp"  # cnn is faster but takes an image
    # An unnamed tensor fits any single-input model of the right kind; float64 is cast to float32.
    d = select(task_query(objective="latency", inputs=(("", "float64", (1, 1, 8, 8)),)), idx, snap)
    assert d.model == "cnn"
    d = select(task_query(objective="latency", inputs=(("", "float64", (1, 64)),)), idx, snap)
    assert d.model == "mlp"
    # int32 is cast to int64; symbolic dimensions are free; both inputs must be there.
    d = select(task_query(inputs=(("ids", "int32", (2, 7)), ("mask", "int64", (2, 7)))), idx, snap)
    assert d.model == "tok"
    # A model whose record lists no inputs is not filtered (the master's input check still runs).
    d = select(task_query(inputs=(("ids", "int64", (2, 7)),)), idx, snap)
    assert d.model == "legacy"


def test_fixed_dimensions_rank_and_dtype_kind_are_checked():
    sig = ModelSignature.from_specs(_model_with("mlp", [("x", "float32", [None, 64])]).input_specs(), "dynamic")
    assert sig.mismatch((("x", "float32", (500, 64)),)) is None  # the batch axis is free
    assert "dimension 1 is 32" in sig.mismatch((("x", "float32", (1, 32)),))
    assert "rank 3" in sig.mismatch((("x", "float32", (1, 64, 1)),))
    assert "dtype int64, the model expects float32" in sig.mismatch((("x", "int64", (1, 64)),))
    assert "unexpected y" in sig.mismatch((("y", "float32", (1, 64)),))
    assert sig.describe() == "x: float32[?,64]"
    fixed = ModelSignature.from_specs(_model_with("f", [("x", "float32", [1, 64])]).input_specs(), "none")
    assert "dimension 0 is 2" in fixed.mismatch((("x", "float32", (2, 64)),))  # no batch axis: dim 0 is fixed
    two = ModelSignature.from_specs(_model_with("t", [("a", "float32", [None]), ("b", "float32", [None])])
                                    .input_specs(), "dynamic")
    assert "missing b" in two.mismatch((("a", "float32", (1,)),))
    assert two.mismatch((("", "float32", (1,)),)) is not None  # an unnamed tensor fits single-input models only


def test_no_model_taking_the_inputs_is_invalid_input_listing_the_signatures():
    models = [_model_with("cnn", [("image", "float32", [None, 1, 8, 8])]),
              _model_with("mlp", [("x", "float32", [None, 64])]), _model_with("mlp2", [("x", "float32", [None, 64])])]
    variants = [_variant(m, "fp32o1", 1, 8, 0.9) for m in ("cnn", "mlp", "mlp2")]
    idx = build_index(models, variants, [_profile(v, {1: 1.0}, at=1.0) for v in variants], PRICES)
    snap = cluster(worker("w1"))
    with pytest.raises(InvalidInputError) as info:
        select(task_query(inputs=(("", "float32", (1, 10)),)), idx, snap)
    assert info.value.code == "invalid_input"
    assert str(info.value) == (
        "no model of task digits-cls/digits takes inputs (unnamed): float32[1,10]; its models take: "
        "image: float32[?,1,8,8] (cnn); x: float32[?,64] (mlp, mlp2) — send tensors of one of these signatures "
        "(an unnamed tensor fits a single-input model)")
    with pytest.raises(InvalidInputError, match=r"model cnn does not take these inputs \(input 'image' has rank 2"):
        select(Query(kind="model", model="cnn", inputs=(("image", "float32", (1, 64)),)), idx, snap)
    with pytest.raises(InvalidInputError, match=r"model mlp takes x: float32\[\?,64\]"):
        select(Query(kind="variant", variant=variants[1].name, inputs=(("x", "uint8", (1, 64)),)), idx, snap)
    assert select(Query(kind="variant", variant=variants[1].name, inputs=(("x", "float64", (1, 64)),)),
                  idx, snap).model == "mlp"


def test_signature_masks_are_cached_per_slice_and_signature():
    idx, _ = _signature_index()
    start, end = idx.task_spans[("digits-cls", "digits")]
    sig = (("x", "float32", (1, 64)),)
    mask = idx.accepts(start, end, sig)
    assert mask is idx.accepts(start, end, sig)
    assert [idx.order[start + i].model for i in np.flatnonzero(mask)] == ["legacy", "mlp"]


def test_query_inputs_are_validated_and_canonical():
    q = task_query(inputs=[["b", "float32", [1, 2]], ("a", np.dtype("int32").name, (1,))])
    assert q.inputs == (("a", "int32", (1,)), ("b", "float32", (1, 2)))
    for bad, fragment in [([], "non-empty"), ([("x", "float32")], "(name, dtype, shape)"),
                          ([("x", "nonsense", (1,))], "not a numpy dtype"), ([("x", None, (1,))], "not a numpy dtype"),
                          ([("x", "float32", (-1,))], "whole numbers >= 0"),
                          ([("x", "float32", (1,)), ("x", "int64", (1,))], "more than once")]:
        with pytest.raises(InvalidQueryError, match=fragment):
            task_query(inputs=bad)


def test_two_backends_in_one_task_each_count_their_own_load_target():
    idx = index(vi("m/cpu", {1: 2.0}, load_ms=5.0), vi("m/gpu", {1: 0.5}, load_ms=5.0, backend="ort-gpu",
                                                         hardware="gpu"))
    snap = cluster(worker("w1"), worker("g1", backends=("ort-gpu",)), overhead_ms={"w1": 1.0, "g1": 4.0})
    d = select(task_query(objective="latency"), idx, snap)
    assert (d.variant, d.worker_id, d.predicted_latency_ms) == ("m/cpu", "w1", 8.0)  # 9.5 ms via g1
    snap = cluster(worker("w1"), worker("g1", backends=("ort-gpu",)), overhead_ms={"w1": 3.0, "g1": 1.0})
    d = select(task_query(objective="latency"), idx, snap)
    assert (d.variant, d.worker_id, d.predicted_latency_ms) == ("m/gpu", "g1", 6.5)


def test_the_vectorised_prediction_is_the_exact_figure_of_the_chosen_worker():
    import random

    rng = random.Random(7)
    for _ in range(30):
        infos = [vi(f"m{i % 3}/v{i}", {1: rng.uniform(0.1, 5.0)}, load_ms=rng.uniform(0, 20),
                    mem_bytes=rng.randint(1, 6) * GIB) for i in range(12)]
        idx = index(*infos)
        names = [v.name for v in infos]
        workers = [worker(f"w{j}", {n: rng.randint(0, 5) for n in rng.sample(names, 3)},
                          free_cores=rng.choice((1, 2, 4)), free_mem=rng.randint(1, 8) * GIB) for j in range(4)]
        snap = cluster(*workers, overhead_ms={f"w{j}": rng.choice((0.5, 1.0, 2.0)) for j in range(3)},
                       default_ms=1.5)
        start, end = idx.task_spans[("digits-cls", "digits")]
        group = snap.view().group(idx, start, end)
        vectorised = idx.lat_ms[0, start:end] + group.extra_ms
        for i, info in enumerate(idx.order[start:end]):
            exact = select(Query(kind="variant", variant=info.name), idx, snap)
            assert vectorised[i] == pytest.approx(exact.predicted_latency_ms), info.name
            assert group.overhead_at(i) == snap.overhead_of(exact.worker_id)


def test_a_busy_paths_overhead_makes_replies_late_not_the_slo_impossible():
    # Under load the learned overhead (a p90) holds queueing before the worker's clock: 14 ms here, while
    # the path adds 0.4 ms when nothing waits. A 10 ms SLO is then "busy now", not out of reach.
    idx = index(vi("m/a", {1: 0.5}))
    snap = ClusterSnapshot((worker("w1", {"m/a": 0}),), overhead_ms={"w1": 14.0}, overhead_floor_ms=0.4)
    d = select(task_query(latency_ms=10), idx, snap)
    assert (d.variant, d.slo_met_predicted, d.predicted_latency_ms) == ("m/a", False, 14.5)
    with pytest.raises(OverloadedError):
        select(task_query(latency_ms=10, slo_mode="strict"), idx, snap)
    assert not select(Query(kind="variant", variant="m/a", latency_ms=10), idx, snap).slo_met_predicted
    # Out of reach even with the floor: no_variant, with the figure under today's load.
    with pytest.raises(NoVariantError):
        select(task_query(latency_ms=0.5), idx, snap)
