"""Pure tests of pinned variants in the policies: eviction never picks them, autoscaling never unloads, switches or
cuts them below their pinned replicas; and of the store-side removal and artifact garbage collection."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infaas_cli.catalog.artifacts import ArtifactStore, referenced_artifacts
from infaas_cli.catalog.records import ArtifactRecord, ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.catalog.removal import owned_keys, remove_models
from infaas_cli.catalog.store import MemoryStore
from infaas_cli.errors import InfaasError
from infaas_cli.policy.autoscale import VariantLoad
from infaas_cli.policy.eviction import Resident, plan_eviction
from test_autoscale import ALL, FP32_T1, FP32_T2, INT8_T1, LOW, OVERLOAD, Harness, load


# -- eviction ----------------------------------------------------------------------------------------------

def test_a_pinned_variant_is_never_evicted_even_when_it_is_the_oldest_idle_one():
    loaded = [Resident("pinned", 1.0, 2, pinned=True), Resident("a", 5.0, 2), Resident("b", 9.0, 2)]
    plan = plan_eviction(loaded, threads=4, free_threads=0)
    assert plan.victims == ("a", "b") and plan.fits


def test_pinned_variants_block_a_load_that_needs_their_cores():
    loaded = [Resident("pinned", 1.0, 4, pinned=True), Resident("a", 5.0, 2)]
    plan = plan_eviction(loaded, threads=4, free_threads=0)
    # Unloading `a` frees 2 of the 4 cores: not enough, so nothing goes (and the pinned one is never "alone"-evicted).
    assert plan.victims == () and not plan.fits


def test_memory_pressure_never_takes_a_pinned_variant():
    loaded = [Resident("pinned", 1.0, 1, memory_bytes=8 << 30, pinned=True), Resident("a", 5.0, 1, 1 << 30)]
    plan = plan_eviction(loaded, threads=1, free_threads=4, memory_bytes=4 << 30, free_memory_bytes=1 << 30)
    assert plan.victims == ("a",)


# -- model-level autoscaling ----------------------------------------------------------------------------------

def pinned(variant: str = "m/fp32-t1", n: int = 1, **kw) -> VariantLoad:
    return replace(load(variant, **kw), pinned_replicas=n)


def test_an_idle_pinned_variant_is_never_unloaded():
    h = Harness()
    h.run(120, lambda t: pinned(qps=0.0, idle_s=t))
    assert h.log == []
    h2 = Harness()  # the same load unpinned is unloaded at 30 s: the pin is what keeps it
    h2.run(31, lambda t: load(qps=0.0, idle_s=t))
    assert h2.kinds() == ["unload"]


def test_an_idle_pinned_variant_outside_the_catalog_is_kept_too():
    h = Harness(options={})
    h.run(60, lambda t: pinned("gone/x", qps=0.0, idle_s=t))
    assert h.log == []


def test_a_quiet_pinned_variant_is_never_downgraded_but_surplus_replicas_go():
    h = Harness()
    replicas = {"n": 3}

    def tick_load(t):
        return pinned("m/fp32-t2", n=2, replicas=replicas["n"], **LOW)

    for _ in range(80):
        for a in h.tick(tick_load(h.clock.now_s)):
            if a.kind == "remove_replica":
                replicas["n"] -= 1
        h.clock.advance(1)
    # One surplus replica (3 > 2 pinned) goes after the hold; then nothing: neither below 2 nor a cheaper variant.
    assert h.kinds() == ["remove_replica"] and replicas["n"] == 2
    unpinned = Harness()
    unpinned.run(40, lambda t: load("m/fp32-t2", **LOW))
    assert unpinned.kinds()[0] == "downgrade"  # what the pin prevents (the harness does not apply it: repeated)


def test_an_overloaded_pinned_variant_gets_a_replica_elsewhere_instead_of_an_upgrade():
    h = Harness()
    h.run(8, lambda t: pinned(**OVERLOAD), free_cores=0)
    (_, action), = h.log
    assert action.kind == "replicate" and action.elsewhere and action.target is None
    u = Harness()
    u.run(8, lambda t: load(**OVERLOAD), free_cores=0)
    assert [a.kind for _, a in u.log] == ["upgrade"]  # unpinned: switched to a faster build in place


def test_an_overloaded_pinned_variant_with_room_is_replicated_here():
    h = Harness()
    h.run(8, lambda t: pinned(**OVERLOAD), free_cores=4)
    (_, action), = h.log
    assert action.kind == "replicate" and not action.elsewhere


def test_pinned_replicas_must_be_a_count():
    with pytest.raises(InfaasError, match="pinned_replicas"):
        pinned(n=-1)
    assert pinned(n=2).pinned and not load().pinned
    assert {FP32_T1.name, FP32_T2.name, INT8_T1.name} <= set(ALL)


# -- removal and garbage collection (MemoryStore, files in a temporary directory) ----------------------------------

def model(name: str, sha: str, validation: str | None = None) -> ModelRecord:
    return ModelRecord(name=name, task="t", dataset="d", artifact_sha256=sha, source_file=f"{name}.onnx",
                       size_bytes=1, inputs=[], outputs=[], batch_dim="dynamic", max_batch=8, opset=17,
                       producer="test", accuracy=None, accuracy_metric="declared", validation_sha256=validation,
                       validation_samples=0, registered_at=0.0)


def variant(model_name: str, recipe: str, sha: str) -> VariantRecord:
    return VariantRecord(name=f"{model_name}/ort-cpu-{recipe}-t1-b8", model=model_name, backend="ort-cpu",
                         hardware="cpu", recipe=recipe, precision="fp32", threads=1, max_batch=8, artifact_sha256=sha,
                         accuracy=None, accuracy_metric="declared", build_time_ms=1.0, created_at=0.0)


@pytest.fixture
def catalog(tmp_path):
    """Two models sharing one variant file (an identical build) and one validation file; each has its own too."""
    store, artifacts = MemoryStore(), ArtifactStore(tmp_path / "artifacts")
    shas = {}
    for label in ("a-model", "b-model", "shared-build", "a-build", "validation"):
        path = tmp_path / f"{label}.bin"
        path.write_bytes(label.encode() * 100)
        shas[label] = artifacts.put_file(path)
    with store.transaction() as txn:
        txn.put(model("a", shas["a-model"], shas["validation"]))
        txn.put(model("b", shas["b-model"], shas["validation"]))
        txn.put(model("ab", shas["b-model"]))  # a name that starts like "a": none of its records are a's
        for m_name, recipe, sha in (("a", "fp32o1", shas["shared-build"]), ("a", "int8d", shas["a-build"]),
                                    ("b", "fp32o1", shas["shared-build"])):
            v = variant(m_name, recipe, sha)
            txn.put(v)
            txn.put(ProfileRecord(variant=v.name, model=m_name, hardware_id="hw", hardware={}, load_time_ms=1.0,
                                  peak_memory_bytes=0))
        for label, sha in shas.items():
            txn.put(ArtifactRecord(sha, 100, "model", label))
    return store, artifacts, shas


def test_owned_keys_are_a_models_own_records_and_its_variants(catalog):
    store, _, _ = catalog
    keys = owned_keys(store, "a")
    assert ("models", "a") in keys and ("models", "ab") not in keys
    assert sorted(k for t, k in keys if t == "variants") == ["a/ort-cpu-fp32o1-t1-b8", "a/ort-cpu-int8d-t1-b8"]
    assert sum(1 for t, _ in keys if t == "profiles") == 2


def test_remove_deletes_its_records_and_only_the_artifacts_nothing_else_uses(catalog):
    store, artifacts, shas = catalog
    before = store.last_seq()
    removal = remove_models(store, artifacts, ["a"])
    assert store.get(ModelRecord, "a") is None and store.variants("a") == [] and store.profiles("a") == []
    assert store.get(ModelRecord, "ab") is not None and len(store.variants("b")) == 1
    gone = {sha for sha, _ in removal.artifacts}
    assert gone == {shas["a-model"], shas["a-build"]}  # the shared build and the validation file stay (b uses them)
    for label in ("shared-build", "validation", "b-model"):
        assert artifacts.has(shas[label]) and store.artifact(shas[label]) is not None
    for label in ("a-model", "a-build"):
        assert not artifacts.has(shas[label]) and store.artifact(shas[label]) is None
    assert removal.freed_bytes == 100 * len("a-model") + 100 * len("a-build")
    # The change log records every delete, in one transaction, for replication.
    changes = store.changes(before)
    assert changes and all(c.op == "delete" for c in changes)
    assert {(c.table, c.key) for c in changes} >= {("models", "a"), ("artifacts", shas["a-build"])}
    assert removal.records == {"models": 1, "variants": 2, "profiles": 2, "artifacts": 2}


def test_removing_the_last_user_of_a_shared_artifact_collects_it(catalog):
    store, artifacts, shas = catalog
    remove_models(store, artifacts, ["a"])
    remove_models(store, artifacts, ["b", "ab"])
    assert list(artifacts.digests()) == []
    assert store.scan(ArtifactRecord) == [] and store.models() == []


def test_a_sweep_keeps_what_records_reference(catalog):
    store, artifacts, shas = catalog
    stray = artifacts.root / "stray.bin"
    stray.write_bytes(b"not referenced by any record")
    orphan = artifacts.put_file(stray)
    removed = artifacts.collect_garbage(referenced_artifacts(store.models(), store.variants()))
    assert [sha for sha, _ in removed] == [orphan]
    assert set(artifacts.digests()) == set(shas.values())


# -- selection: an error caused by a cold load says so, and names the pin that fixes it ------------------------------

def test_a_variant_that_meets_the_slo_only_warm_is_named_with_its_load_time_and_the_fix():
    from infaas_cli.policy.selection import NoVariantError, Query, select
    from test_selection import cluster, index, vi, worker

    idx = index(vi("m/fast", {1: 0.7}, load_ms=6.8), vi("m/slow", {1: 9.0}, load_ms=1.0))
    with pytest.raises(NoVariantError) as info:
        select(Query(kind="model", model="m", latency_ms=5), idx, cluster(worker("w1")))
    msg = str(info.value)
    assert "none runs within 5 ms (the fastest takes 7.5 ms: m/fast)" in msg
    assert "m/fast meets it only warm: it takes 7.5 ms = 0.7 ms inference + 6.8 ms load; " \
           "`infaas load m/fast` keeps it warm" in msg
    # Pinned (loaded), it serves the same query.
    assert select(Query(kind="model", model="m", latency_ms=5), idx,
                  cluster(worker("w1", {"m/fast": 0}))).variant == "m/fast"


def test_no_warm_hint_when_even_a_warm_variant_misses_or_lacks_accuracy():
    from infaas_cli.policy.selection import NoVariantError, Query, select
    from test_selection import cluster, index, vi, worker

    idx = index(vi("m/fast", {1: 6.0}, load_ms=6.8, acc=0.5), vi("m/slow", {1: 9.0}, load_ms=1.0))
    for query in (Query(kind="model", model="m", latency_ms=5),  # 6 ms warm: still too slow
                  Query(kind="model", model="m", latency_ms=7, min_accuracy=0.8)):  # fast enough warm, not accurate
        with pytest.raises(NoVariantError) as info:
            select(query, idx, cluster(worker("w1")))
        assert "infaas load" not in str(info.value)
