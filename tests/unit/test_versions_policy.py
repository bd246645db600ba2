"""Pure tests of model versions: names, the version policy's resolution, canary draws, the warm-up plan of a roll-out,
and how the selection index routes queries by model name and by task to the serving version."""

from __future__ import annotations

import pytest

from infaas_cli.catalog.records import InvalidRecordError, VersionPolicyRecord
from infaas_cli.policy.selection import (CatalogIndex, ClusterSnapshot, NoVariantError, PriceTable, Query,
                                         UnknownModelError, VariantInfo, WorkerState, select)
from infaas_cli.policy.versions import (Candidate, Route, VersionError, VersionPolicy, canonical_id, counterpart,
                                        is_version_name, resolve_route, route_draw, split_id, version_id, warm_plan)

PRICES = PriceTable(cpu_usd_per_core_second=1e-3, gpu_usd_per_device_second=1e-2,
                    inferentia_usd_per_device_second=5e-3)


# -- names ---------------------------------------------------------------------------------------------------------

def test_version_one_keeps_the_plain_name_and_later_ones_their_own_record():
    assert version_id("digits-cnn", 1) == "digits-cnn"
    assert version_id("digits-cnn", 12) == "digits-cnn@v12"
    assert split_id("digits-cnn") == ("digits-cnn", 1)
    assert split_id("digits-cnn@v12") == ("digits-cnn", 12)
    assert split_id("digits-cnn@v3/ort-cpu-fp32o1-t1-b8") == ("digits-cnn", 3)
    assert split_id("digits-cnn/ort-cpu-fp32o1-t1-b8") == ("digits-cnn", 1)
    assert canonical_id("digits-cnn@v1") == "digits-cnn" and canonical_id("digits-cnn@v2") == "digits-cnn@v2"
    assert canonical_id("digits-cnn/ort-cpu-fp32o1-t1-b8") == "digits-cnn/ort-cpu-fp32o1-t1-b8"
    assert is_version_name("m@v2") and is_version_name("m@v1") and not is_version_name("m")
    # Not versions: a task@dataset pair, a leading zero, version 0.
    for name in ("digit-classification@digits", "m@v02", "m@v0", "m@v"):
        assert not is_version_name(name) and split_id(name)[1] == 1
    with pytest.raises(VersionError):
        version_id("m", 0)


# -- the policy ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (("pinned",), "names a version"), (("canary", 2), "percent"), (("canary", 2, 100.0), "below 100"),
    (("latest", 2), "no version"), (("pinned", 2, 5.0), "no percent"), (("newest",), "one of latest")])
def test_bad_policies_name_the_fix(args, fragment):
    with pytest.raises(VersionError, match=fragment):
        VersionPolicy(*args)


def test_the_stored_record_refuses_the_same_inconsistencies():
    assert VersionPolicyRecord.from_dict({"model": "m", "mode": "canary", "version": 2, "percent": 10.0}).percent == 10
    for bad in ({"model": "m", "mode": "pinned"}, {"model": "m", "mode": "latest", "version": 2},
                {"model": "m", "mode": "canary", "version": 2}, {"model": "m", "mode": "pinned", "version": 0}):
        with pytest.raises(InvalidRecordError):
            VersionPolicyRecord.from_dict(bad)


def test_latest_is_the_highest_profiled_version():
    latest = VersionPolicy()
    assert resolve_route(latest, {1, 2}) == Route(2)
    assert resolve_route(latest, {1}, Route(1)) == Route(1)  # v3 registered, not profiled: v1 keeps serving
    assert resolve_route(latest, set()) is None


def test_pinned_waits_for_its_version_to_be_profiled():
    assert resolve_route(VersionPolicy("pinned", 1), {1, 2}, Route(2)) == Route(1)  # roll-back
    assert resolve_route(VersionPolicy("pinned", 3), {1, 2}, Route(1)) == Route(1)  # v3 unprofiled: v1 stays
    assert resolve_route(VersionPolicy("pinned", 3), {1, 2}) == Route(2)  # nothing serves yet: the latest


def test_a_canary_splits_from_the_version_that_serves():
    canary = VersionPolicy("canary", 3, 10.0)
    assert resolve_route(canary, {1, 2, 3}, Route(1)) == Route(1, 3, 10.0)
    assert resolve_route(canary, {1, 2, 3}) == Route(2, 3, 10.0)  # no current route: the latest other version
    assert resolve_route(canary, {1, 2, 3}, Route(3)) == Route(2, 3, 10.0)
    assert resolve_route(canary, {3}) == Route(3)  # the only version is all of it
    assert resolve_route(canary, {1, 2}, Route(1)) == Route(1)  # not profiled yet


def test_canary_draws_are_per_request_and_split_as_the_percent_says():
    route = Route(1, 2, 10.0)
    assert route_draw("r-1") == route_draw("r-1")
    picks = [route.pick(route_draw(f"req-{i}")) for i in range(20_000)]
    share = picks.count(2) / len(picks)
    assert 0.09 < share < 0.11
    assert route.pick(None) == 1 and Route(2).pick(0.0) == 2


# -- roll-out plans ------------------------------------------------------------------------------------------------

NEW = [Candidate("m@v2/ort-cpu-fp32o1-t1-b8", "ort-cpu", 0.5), Candidate("m@v2/ort-cpu-int8d-t1-b8", "ort-cpu", 0.3),
       Candidate("m@v2/ov-cpu-fp32-t1-b8", "ov-cpu", 0.2)]


def test_the_counterpart_is_the_same_configuration_else_the_fastest_the_worker_runs():
    def name(*args, **kw):
        found = counterpart(*args, **kw)
        return None if found is None else found.name

    assert name("m/ort-cpu-fp32o1-t1-b8", "m@v2", NEW, {"ort-cpu"}) == "m@v2/ort-cpu-fp32o1-t1-b8"
    assert name("m/ort-cpu-fp16-t1-b8", "m@v2", NEW, {"ort-cpu"}) == "m@v2/ort-cpu-int8d-t1-b8"
    assert name("m/ort-cpu-fp16-t1-b8", "m@v2", NEW, {"ort-cpu", "ov-cpu"}) == "m@v2/ov-cpu-fp32-t1-b8"
    assert name("m/ort-cpu-fp16-t1-b8", "m@v2", NEW, {"ort-cuda"}) is None
    # Within the worker's free cores beside the old version when it can: a t4 copy does not fit 2 free cores.
    wide = [Candidate("m@v2/ort-cpu-fp32o1-t4-b8", "ort-cpu", 0.1, threads=4), *NEW]
    assert name("m/ort-cpu-fp32o1-t4-b8", "m@v2", wide, {"ort-cpu"}, free_cores=2) == "m@v2/ort-cpu-int8d-t1-b8"
    assert name("m/ort-cpu-fp32o1-t4-b8", "m@v2", wide, {"ort-cpu"}, free_cores=0) == "m@v2/ort-cpu-fp32o1-t4-b8"


def test_the_plan_warms_one_counterpart_per_old_variant_where_it_serves():
    plan = warm_plan({"w1": ["m/ort-cpu-fp32o1-t1-b8", "m/ort-cpu-fp16-t1-b8"], "w2": ["m/ort-cpu-int8d-t1-b8"],
                      "w3": ["m/ort-cpu-fp32o1-t1-b8"]}, "m@v2", NEW,
                     {"w1": ["ort-cpu"], "w2": ["ort-cpu"], "w3": ["ort-cuda"]}, {"w1": 2, "w2": 0})
    assert plan == {"w1": ["m@v2/ort-cpu-int8d-t1-b8", "m@v2/ort-cpu-fp32o1-t1-b8"],
                    "w2": ["m@v2/ort-cpu-int8d-t1-b8"]}


# -- routing in the selection index ---------------------------------------------------------------------------------

def vi(name: str, ms: float, acc: float = 0.9, task: str = "cls") -> VariantInfo:
    return VariantInfo(name=name, model=name.split("/", 1)[0], task=task, dataset="d", backend="ort-cpu",
                       hardware="cpu", recipe="fp32", threads=1, max_batch=8, accuracy=acc, load_time_ms=0.0,
                       peak_memory_bytes=0, batch_latency_ms=((1, ms), (8, ms * 4)))


INFOS = (vi("m/a", 1.0), vi("m@v2/a", 2.0, acc=0.95), vi("m@v3/a", 0.5), vi("m-big/a", 3.0, acc=0.99),
         vi("other/a", 9.0, task="x"))
MODELS = {"m": ("cls", "d"), "m@v2": ("cls", "d"), "m@v3": ("cls", "d"), "m-big": ("cls", "d"), "other": ("x", "d")}
CLUSTER = ClusterSnapshot((WorkerState("w", frozenset({"ort-cpu"}), 8, 8, 1 << 33, {}, True),),
                          overhead_ms_default=0.0)


def pick(index: CatalogIndex, **query) -> str:
    return select(Query(**query), index, CLUSTER).variant


def test_queries_by_name_and_task_reach_only_the_routed_version():
    # v3 unprofiled here: "latest" is v2 (profiled versions only).
    infos = [i for i in INFOS if i.model != "m@v3"]
    index = CatalogIndex(infos, PRICES, MODELS)
    assert index.routes["m"] == Route(2)
    assert pick(index, kind="model", model="m") == "m@v2/a"
    assert pick(index, kind="model", model="m@v1") == "m/a"  # a version by name: reached directly
    # The fastest of the task is v1 (1 ms), but only v2 of m serves the task; m-big is slower still.
    assert pick(index, kind="task", task="cls", dataset="d", objective="latency") == "m@v2/a"
    assert pick(index, kind="variant", variant="m/a") == "m/a"


def test_a_route_given_by_the_master_pins_and_a_canary_splits_by_draw():
    index = CatalogIndex(INFOS, PRICES, MODELS, routes={"m": Route(1, 3, 25.0)})
    assert pick(index, kind="model", model="m", route_draw=10.0) == "m@v3/a"
    assert pick(index, kind="model", model="m", route_draw=60.0) == "m/a"
    assert pick(index, kind="model", model="m") == "m/a"  # no draw: the stable version
    assert pick(index, kind="task", task="cls", dataset="d", objective="latency") == "m/a"
    # A route naming a version with nothing profiled is ignored: the highest profiled serves.
    assert CatalogIndex(INFOS, PRICES, MODELS, routes={"m": Route(7)}).routes["m"] == Route(3)


def test_unknown_versions_say_which_exist():
    index = CatalogIndex(INFOS, PRICES, MODELS)
    with pytest.raises(UnknownModelError, match=r"model m has no version 9; its versions: 1, 2, 3 — see "
                                                r"`infaas versions m`"):
        pick(index, kind="model", model="m@v9")
    unprofiled = CatalogIndex([i for i in INFOS if i.model != "m@v2"], PRICES, MODELS)
    with pytest.raises(NoVariantError, match="model m@v2 has no profiled variant yet"):
        pick(unprofiled, kind="model", model="m@v2")


def test_the_gateway_names_a_version_as_its_record():
    from infaas_daemons.gateway.core import Front, Target

    variant = {"name": "m@v2/ort-cpu-fp32o1-t1-b8"}
    catalog = {"models": {"m": {"name": "m", "task": "cls", "dataset": "d", "variants": []},
                          "m@v2": {"name": "m@v2", "task": "cls", "dataset": "d", "variants": [variant]}}}
    front = Front("tcp://127.0.0.1:1")
    assert front._resolve_in(catalog, "m", None) == Target("model", model="m")  # its policy picks the version
    assert front._resolve_in(catalog, "m@v1", None) == Target("model", model="m", named="m@v1")  # v1 itself
    assert front._resolve_in(catalog, "m@v2", "ort-cpu-fp32o1-t1-b8") == Target(
        "variant", model="m@v2", variant="m@v2/ort-cpu-fp32o1-t1-b8")
    assert front._resolve_in(catalog, "cls@d", None) == Target("task", task="cls", dataset="d")
    catalog["models"]["t"] = {"name": "t", "task": "x", "dataset": "v1", "variants": []}
    assert front._resolve_in(catalog, "x@v1", None) == Target("task", task="x", dataset="v1")  # no model x
    assert front._resolve_in(catalog, variant["name"], None) == Target("variant", model="m@v2",
                                                                         variant=variant["name"])


def test_profile_by_model_name_covers_every_version():
    """`infaas profile M` after registering M's version 2 profiles it too; `M@v2` names one version, `M@v1` is M."""
    from infaas_cli.catalog.records import ModelRecord
    from infaas_cli.catalog.store import MemoryStore
    from infaas_cli.cli.catalog import _every_version

    store = MemoryStore()
    with store.transaction() as txn:
        for n in ("m", "m@v10", "m@v2", "other"):
            txn.put(ModelRecord(name=n, task="t", dataset="d", artifact_sha256="0" * 64, source_file=f"{n}.onnx",
                                size_bytes=1, inputs=[], outputs=[], batch_dim="dynamic", max_batch=8, opset=17,
                                producer="test", accuracy=None, accuracy_metric="declared", validation_sha256=None,
                                validation_samples=0, registered_at=0.0))
    assert _every_version(store, ["m"]) == ["m", "m@v2", "m@v10"]
    assert _every_version(store, ["m@v2", "other"]) == ["m@v2", "other"]
    assert _every_version(store, ["m@v1", "m"]) == ["m", "m@v2", "m@v10"]
