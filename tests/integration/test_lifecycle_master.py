"""Remove and pin against a master in-process: real LMDB on both sides, real ZeroMQ, FakeWorkers.

Removal: the master refuses while a model serves, drains it (waiting for its queries, unloading it everywhere),
then the CLI-side delete replicates through the change log and the master collects the artifacts nobody uses —
keeping those another model shares. Pins: loaded with `pinned`, marked in status, kept through idleness, re-sent
to a restarted worker, restored by a restarted master, and `master.min_loaded` pins a model's fastest variant.
"""

from __future__ import annotations

import pytest

from infaas_cli.catalog.artifacts import referenced_artifacts
from infaas_cli.catalog.records import ModelRecord, PinRecord
from infaas_cli.catalog.removal import remove_models
from infaas_cli.client import QueryFailed, QueryResult
from infaas_cli.policy.autoscale import AutoscaleConfig
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from support import FAST, ZOO, FakeWorker, build_catalog, catalog_outputs, digits_x, start_master, wait_for

pytestmark = pytest.mark.timeout(60)

#: Idleness counts after a second: an unpinned variant is unloaded well within a test, a pinned one never.
QUICK_IDLE = AutoscaleConfig(window_s=0.3, hold_s=0.6, cooldown_s=0.0, idle_unload_s=1.0)
MODEL, COPY = "digits-logreg", "logreg-copy"
V = f"{MODEL}/ort-cpu-fp32o1-t1-b8"


@pytest.fixture
def home(tmp_path):
    """digits-logreg, and the same file registered again as logreg-copy: every artifact of one is the other's."""
    home = build_catalog(tmp_path / "home", (MODEL,))
    e = ZOO[MODEL]
    register_model(home, e.file, COPY, e.task, e.dataset, e.validation)
    generate_variants(home, COPY)
    profile_models(home, [COPY], batch_sizes=[1, 8], settings=FAST)
    yield home
    home.close()


@pytest.fixture
def workers(home):
    started: list[FakeWorker] = []

    def start(master, worker_id: str, **options) -> FakeWorker:
        options.setdefault("outputs", catalog_outputs(home.store))
        w = FakeWorker(master.worker_endpoint, worker_id, **options)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.alive:
            w.kill()


def rows(client) -> dict[str, dict]:
    return {w["worker_id"]: w for w in client.status()["workers"]}


def serving(client, *ids: str, holding: str | None = None) -> None:
    wait_for(lambda: all(i in rows(client) and rows(client)[i]["state"] == "serving" and
                         (holding is None or holding in rows(client)[i]["variants"]) for i in ids), 5.0)


def pinned_loads(w: FakeWorker, variant: str = V) -> list:
    return [msg for msg in w.messages("load") if msg.body.variant == variant and msg.body.pinned]


# -- removal -------------------------------------------------------------------------------------------------------

def test_a_serving_model_is_refused_then_drained_and_its_deletes_replicate_with_gc(tmp_path, home, workers):
    shared = referenced_artifacts([home.store.model(COPY)], home.store.variants(COPY))
    own = referenced_artifacts([home.store.model(MODEL)], home.store.variants(MODEL)) - shared
    with start_master(tmp_path, home) as (master, client):
        w = workers(master, "fake-a", delay_s=0.4)
        serving(client, "fake-a")
        x = digits_x(1)
        assert client.query({"x": x}, variant=V).worker == "fake-a"
        serving(client, "fake-a", holding=V)
        with pytest.raises(QueryFailed) as refused:
            client.remove([MODEL])
        assert refused.value.code == "failed"
        assert str(refused.value).startswith(f"{MODEL} is serving on 1 worker (fake-a)")
        assert "pass --drain to stop routing, drain and unload it first" in str(refused.value)

        in_flight = [client.submit({"x": x}, variant=V) for _ in range(3)]
        wait_for(lambda: len(w.messages("infer")) == 4, 5.0)
        drained = client.remove([MODEL], drain=True, timeout_s=10.0)
        # The drain answered only after the three queries were: each got its result.
        assert all(isinstance(r, QueryResult) for r in client.gather(in_flight, 1.0).values())
        assert drained["models"] == [MODEL] and drained["unloaded_on"] == ["fake-a"]
        assert drained["drained_queries"] == 3 and V in drained["variants"]
        assert w.wait_message("unload", lambda msg: msg.body.variant == V).body.variant == V
        assert V not in w.loaded
        # Hidden from selection at once, before any record is deleted.
        with pytest.raises(QueryFailed) as hidden:
            client.query({"x": x}, model=MODEL)
        assert hidden.value.code == "unknown_model" and "is being removed" in str(hidden.value)
        assert client.status()["master"]["removing"] == [MODEL]

        # The CLI's side: one transaction of deletes, replicated by the ordinary push.
        before = home.store.last_seq()
        removal = remove_models(home.store, home.artifacts, [MODEL])
        deletes = home.store.changes(before)
        assert deletes and {c.op for c in deletes} == {"delete"}
        assert {sha for sha, _ in removal.artifacts} == own
        assert all(home.artifacts.has(sha) for sha in shared)
        pushed = client.push(home.store, home.artifacts)
        assert pushed["applied"] == len(deletes)

        assert master.store.get(ModelRecord, MODEL) is None and master.store.variants(MODEL) == []
        assert master.store.profiles(MODEL) == [] and master.store.get(ModelRecord, COPY) is not None
        on_master = set(master.artifacts.digests())
        assert on_master == referenced_artifacts(master.store.models(), master.store.variants())
        assert shared <= on_master and not own & on_master
        status = client.status()["master"]
        assert status["removing"] == [] and status["models"] == 1
        assert client.query({"x": x}, model=COPY).variant.startswith(f"{COPY}/")


def test_an_idle_model_is_removed_without_drain_and_a_re_registered_one_serves_again(tmp_path, home, workers):
    with start_master(tmp_path, home) as (master, client):
        workers(master, "fake-a")
        serving(client, "fake-a")
        answer = client.remove([MODEL, "never-registered"])  # nothing loaded: no drain needed
        assert answer["models"] == [MODEL] and answer["unloaded_on"] == []
        remove_models(home.store, home.artifacts, [MODEL])
        client.push(home.store, home.artifacts)
        e = ZOO[MODEL]
        register_model(home, e.file, MODEL, e.task, e.dataset, e.validation)  # back, under the same name
        generate_variants(home, MODEL)
        profile_models(home, [MODEL], batch_sizes=[1, 8], settings=FAST)
        client.push(home.store, home.artifacts)
        assert client.query({"x": digits_x(1)}, model=MODEL).variant.startswith(f"{MODEL}/")


def test_a_drain_that_outlasts_its_timeout_fails_and_keeps_the_model_hidden(tmp_path, home, workers):
    with start_master(tmp_path, home) as (master, client):
        w = workers(master, "fake-a", answer=False)
        serving(client, "fake-a")
        client.submit({"x": digits_x(1)}, variant=V)
        wait_for(lambda: w.messages("infer"), 5.0)
        with pytest.raises(QueryFailed) as info:
            client.remove([MODEL], drain=True, timeout_s=0.5)
        assert info.value.code == "unavailable" and "1 query of digits-logreg still in flight" in str(info.value)
        assert client.status()["master"]["removing"] == [MODEL]


# -- pins ----------------------------------------------------------------------------------------------------------

def test_a_pin_is_loaded_marked_kept_through_idleness_and_dropped_by_unload(tmp_path, home, workers):
    other = f"{MODEL}/ort-cpu-fp32o1-t2-b8"
    with start_master(tmp_path, home, autoscale=QUICK_IDLE) as (master, client):
        w = workers(master, "fake-a", cores=8)
        serving(client, "fake-a")
        reply = client.pin(V)
        entry = next(v for mdl in reply["models"] for v in mdl["variants"] if v["name"] == V)
        assert entry["pinned_on"] == ["fake-a"]
        assert wait_for(lambda: pinned_loads(w), 5.0)[0].body.spec.name == V
        client.query({"x": digits_x(1)}, variant=other)  # an unpinned neighbour, loaded by a query
        row = wait_for(lambda: (r := rows(client)["fake-a"]["variants"].get(V)) and r["state"] == "loaded" and r)
        assert row["pinned"] is True and row["pinned_replicas"] == 1 and row["state"] == "loaded"
        # Idle past idle_unload_s: the neighbour is unloaded, the pinned variant never.
        w.wait_message("unload", lambda msg: msg.body.variant == other, timeout_s=6.0)
        assert not [msg for msg in w.messages("unload") if msg.body.variant == V]
        assert V in w.loaded and master.store.get(PinRecord, V).replicas == 1

        client.unpin(V)
        assert w.wait_message("unload", lambda msg: msg.body.variant == V).body.variant == V
        assert client.status()["master"]["pinned"] == {} and master.store.get(PinRecord, V) is None


def test_pinned_replicas_spread_over_workers_and_follow_a_restart(tmp_path, home, workers):
    with start_master(tmp_path, home) as (master, client):
        a, b = workers(master, "fake-a"), workers(master, "fake-b")
        serving(client, "fake-a", "fake-b")
        client.pin(V, replicas=2)
        wait_for(lambda: pinned_loads(a) and pinned_loads(b), 5.0)
        assert client.status()["master"]["pinned"][V]["placed"] == {"fake-a": 1, "fake-b": 1}
        b.kill()  # a restart: the same id comes back with nothing loaded, and gets the pin again
        b2 = workers(master, "fake-b")
        wait_for(lambda: pinned_loads(b2), 5.0)
        assert V in b2.loaded
        with pytest.raises(QueryFailed) as unknown:
            client.pin(V, worker="fake-z")
        assert unknown.value.code == "not_found" and "no live worker 'fake-z'" in str(unknown.value)


def test_a_restarted_master_pins_again(tmp_path, home, workers):
    with start_master(tmp_path, home) as (master, client):
        a = workers(master, "fake-a")
        serving(client, "fake-a")
        client.pin(V, worker="fake-a")
        wait_for(lambda: pinned_loads(a), 5.0)
        a.kill()
    (tmp_path / "master" / "endpoints.json").unlink()  # start_master waits for the new master's file
    with start_master(tmp_path, home) as (master, client):  # the same data directory
        assert client.status()["master"]["pinned"][V]["worker"] == "fake-a"
        again = workers(master, "fake-a")
        wait_for(lambda: pinned_loads(again), 5.0)


def test_min_loaded_pins_the_fastest_variant_of_a_model(tmp_path, home, workers):
    with start_master(tmp_path, home, min_loaded={MODEL: 1}) as (master, client):
        w = workers(master, "fake-a")
        loads = wait_for(lambda: [msg for msg in w.messages("load") if msg.body.pinned], 5.0)
        variant = loads[0].body.variant
        index = master.catalog.index()
        fastest = min((i for i in index.infos.values() if i.model == MODEL), key=lambda i: (i.latency_ms(1), i.name))
        assert variant == fastest.name
        pin = client.status()["master"]["pinned"][variant]
        assert pin["source"] == "config" and pin["placed"] == {"fake-a": 1}
        assert master.store.get(PinRecord, variant) is None  # from the config: not stored, re-read at start
