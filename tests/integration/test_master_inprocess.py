"""The master in-process against fake workers: real ZeroMQ on 127.0.0.1, real LMDB, no subprocesses.

Each test starts a master thread on ephemeral ports (support.start_master), pushes a small catalog with the
real Client, and drives it with FakeWorkers that speak the real protocol over DEALER sockets, so dispatch,
re-routing, autoscaling, placement and the guarded doors are checked message by message.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import zmq

from infaas_cli import protocol
from infaas_cli.catalog.records import VariantRecord
from infaas_cli.client import QueryFailed, QueryResult
from infaas_cli.client.client import query_message
from infaas_cli.policy.autoscale import AutoscaleConfig, options_from_index
from infaas_cli.policy.selection import build_index, load_prices
from support import FakeWorker, build_catalog, catalog_outputs, digits_x, start_master, wait_for

pytestmark = pytest.mark.timeout(30)

MODELS = ("digits-logreg", "digits-mlp")
#: A one-thread variant queried by name where a test needs to know which variant a worker holds.
V = "digits-mlp/ort-cpu-fp32o2-t1-b8"
MODELLESS = {"task": "digit-classification", "dataset": "digits", "latency_ms": 1000.0, "min_accuracy": 0.9}
#: Short enough that a test sees pressure, a hold and idleness within a couple of seconds.
FAST_AUTOSCALE = AutoscaleConfig(window_s=0.3, hold_s=0.6, cooldown_s=0.0, idle_unload_s=1.0)
#: Pressure on V with a 50 ms SLO: 5000 queued samples wait far longer than half the SLO's slack.
HEAVY = {"queue": 5000, "qps": 20000.0, "samples_per_s": 20000.0, "latency_ms": 200.0}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    home = build_catalog(tmp_path_factory.mktemp("inprocess") / "home", MODELS)
    yield home
    home.close()


@pytest.fixture(scope="module")
def outputs(catalog):
    return catalog_outputs(catalog.store)


@pytest.fixture
def workers(outputs):
    """workers(master, worker_id, **options): a started FakeWorker, killed after the test."""
    started: list[FakeWorker] = []

    def start(master, worker_id: str, **options) -> FakeWorker:
        options.setdefault("outputs", outputs)
        w = FakeWorker(master.worker_endpoint, worker_id, **options)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def by_id(client) -> dict[str, dict]:
    return {w["worker_id"]: w for w in client.status()["workers"]}


def wait_serving(client, *worker_ids: str, holding: str | None = None) -> None:
    """Until each worker is registered, serving, has heartbeated (and reports `holding`, when given)."""
    def ready():
        ws = by_id(client)
        return all(i in ws and ws[i]["state"] == "serving" and ws[i]["free_memory_bytes"] is not None
                   and (holding is None or holding in ws[i]["variants"]) for i in worker_ids)
    wait_for(ready, 5.0)


def raw_dealer(endpoint: str, identity: bytes | None = None, rcvhwm: int | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if rcvhwm is not None:
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(endpoint)
    return sock


def receive(sock: zmq.Socket, timeout_s: float = 5.0) -> protocol.Message:
    assert sock.poll(int(timeout_s * 1e3), zmq.POLLIN), f"no frame within {timeout_s} s"
    return protocol.decode(sock.recv_multipart())


# -- dispatch -----------------------------------------------------------------------------------------------

def test_modelless_query_is_dispatched_to_a_fake_worker_and_its_outputs_come_back(tmp_path, catalog, workers):
    def infer_fn(body, inputs):
        x = inputs["x"]
        return [np.arange(len(x), dtype=np.int64), np.ascontiguousarray(x[:, :10])]

    with start_master(tmp_path, catalog) as (master, client):
        w = workers(master, "fake-a", infer_fn=infer_fn)
        wait_serving(client, "fake-a")
        x = digits_x(4)
        res = client.query({"x": x}, **MODELLESS)
        again = client.query({"x": x}, **MODELLESS)

    infer = w.wait_message("infer")
    assert res.variant.split("/")[0] in MODELS
    assert infer.body.variant == res.variant
    spec = infer.body.spec
    assert spec.name == res.variant and [s.name for s in spec.inputs] == ["x"]
    assert spec.artifact_sha256 == catalog.store.get(VariantRecord, res.variant).artifact_sha256
    assert spec.latency_ms, "the spec carries the profiled latencies"
    assert infer.body.deadline_ms == MODELLESS["latency_ms"]
    np.testing.assert_array_equal(protocol.unpack_tensor(infer.body.inputs["x"], infer.frames), x)

    assert isinstance(res, QueryResult) and res.worker == "fake-a" and res.decision_us > 0
    assert res.needs_load and res.extra["attempts"] == 1
    assert res.extra["output_names"] == ["label", "probabilities"]
    np.testing.assert_array_equal(res.outputs[0], np.arange(4))
    np.testing.assert_array_equal(res.outputs[1], x[:, :10])
    assert res.timing["batch_size"] == 4 and res.timing["total_ms"] >= 0
    # The fake answered `loaded`: the next query of the class runs where the variant already is.
    assert again.variant == res.variant and again.worker == "fake-a" and not again.needs_load
    assert [m.body.variant for m in w.messages("infer")] == [res.variant, res.variant]


# -- re-routing ---------------------------------------------------------------------------------------------

def test_queries_on_a_dead_worker_are_rerouted_and_it_is_forgotten(tmp_path, catalog, workers):
    with start_master(tmp_path, catalog, forget_dead_worker_s=1.0) as (master, client):
        doomed = workers(master, "fake-a", answer=False, preload=[V])
        survivor = workers(master, "fake-b", preload=[V])
        wait_serving(client, "fake-a", "fake-b", holding=V)
        x = digits_x(1)
        ids = [client.submit({"x": x}, variant=V) for _ in range(12)]
        wait_for(lambda: len(doomed.messages("infer")) + len(survivor.messages("infer")) == 12, 5.0)
        lost = {m.id for m in doomed.messages("infer")}
        assert lost, "ties go to fake-a, so the doomed worker holds at least one query"
        assert len(doomed.unanswered) == len(lost)

        doomed.kill()
        results = client.gather(ids, timeout_s=8.0)
        assert all(isinstance(r, QueryResult) for r in results.values()), results
        assert {r.worker for r in results.values()} == {"fake-b"}
        assert sum(r.extra["attempts"] == 2 for r in results.values()) == len(lost)
        assert all(r.extra["attempts"] in (1, 2) for r in results.values())
        assert len(survivor.messages("infer")) == 12  # its own, plus every one the dead worker held
        label, probabilities = results[ids[0]].outputs  # the fake's zeros, in the model's output shapes
        assert label.shape == (1,) and label.dtype == np.int64 and probabilities.shape == (1, 10)

        wait_for(lambda: "fake-a" not in by_id(client), 5.0)
        status = client.status()
        assert [w["worker_id"] for w in status["workers"]] == ["fake-b"]
        assert status["master"]["pending"] == 0 and status["master"]["queries_served"] == 12


# -- autoscaling --------------------------------------------------------------------------------------------

def _loads(w: FakeWorker, variant: str, replicas: int | None = None) -> list:
    return [m for m in w.messages("load")
            if m.body.variant == variant and (replicas is None or m.body.replicas == replicas)]


def test_heavy_load_gets_a_replica_and_idleness_an_unload(tmp_path, catalog, workers):
    with start_master(tmp_path, catalog, autoscale=FAST_AUTOSCALE) as (master, client):
        w = workers(master, "fake-a", cores=4)
        wait_serving(client, "fake-a")
        x = digits_x(1)
        assert client.query({"x": x}, variant=V, latency_ms=50.0).needs_load  # loads V there; sets its SLO
        wait_serving(client, "fake-a", holding=V)
        w.report(V, **HEAVY)

        def replicated():
            client.query({"x": x}, variant=V, latency_ms=50.0)  # the SLO stays fresh while pressure lasts
            return _loads(w, V, replicas=2)
        load = wait_for(replicated, 5.0)[0]
        assert load.body.spec.name == V

        w.report(V)  # back to what it measures: nothing is served any more
        unload = w.wait_message("unload", lambda m: m.body.variant == V, timeout_s=6.0)
        assert unload.body.variant == V
        wait_for(lambda: V not in by_id(client)["fake-a"]["variants"], 3.0)
        actions = [a for a in client.status()["master"]["autoscale_actions"]
                   if a["variant"] == V and a["worker"] == "fake-a"]

    kinds = [a["kind"] for a in actions]
    assert kinds[0] == "replicate" and kinds[-1] == "unload", kinds
    assert "overloaded" in actions[0]["reason"] and "idle" in actions[-1]["reason"]
    assert set(kinds) <= {"replicate", "remove_replica", "upgrade", "unload"}


def test_an_upgrade_moves_model_traffic_to_the_faster_variant(tmp_path, catalog, workers):
    config = AutoscaleConfig(window_s=0.3, hold_s=0.6, cooldown_s=0.5, idle_unload_s=1.0)
    with start_master(tmp_path, catalog, autoscale=config) as (master, client):
        w = workers(master, "fake-a", cores=1)  # no core for a replica: only an upgrade can help
        wait_serving(client, "fake-a")
        x = digits_x(1)
        # The cheapest one-thread batch-1 variant: its own recipe at a larger max batch is as cheap for one
        # sample and sustains more samples/s, so an upgrade target exists and model queries may follow it.
        options = _options(catalog)
        source = min((o for o in options.values() if o.model == "digits-mlp" and o.threads == 1 and o.max_batch == 1),
                     key=lambda o: (o.latency_ms_b1, o.name)).name
        client.query({"x": x}, variant=source)
        wait_serving(client, "fake-a", holding=source)
        assert client.query({"x": x}, model="digits-mlp", latency_ms=50.0).variant == source  # loaded: it wins
        w.report(source, **HEAVY)
        routed: list[str] = []

        def moved():
            routed.append(client.query({"x": x}, model="digits-mlp", latency_ms=50.0).variant)
            up = [a for a in client.status()["master"]["autoscale_actions"] if a["kind"] == "upgrade"]
            return up and routed[-1] == up[0]["target"] and up[0]
        upgrade = wait_for(moved, 5.0)
        assert upgrade["variant"] == source and _loads(w, upgrade["target"])
        assert options[upgrade["target"]].capacity_qps > options[source].capacity_qps


def _options(catalog):
    return options_from_index(build_index(catalog.store.models(), catalog.store.variants(),
                                          catalog.store.profiles(), load_prices(None)))


def test_an_upgrade_neither_oversubscribes_nor_flaps(tmp_path, catalog, workers):
    config = AutoscaleConfig(window_s=0.3, hold_s=0.6, cooldown_s=0.5, idle_unload_s=1.0)
    options = _options(catalog)
    one_thread = [o for o in options.values() if o.model == "digits-mlp" and o.threads == 1]
    source = min((o for o in one_thread if o.max_batch == 8), key=lambda o: (o.capacity_qps, o.name)).name
    with start_master(tmp_path, catalog, autoscale=config) as (master, client):
        w = workers(master, "fake-a", cores=1)  # no core for a replica: only an upgrade can help
        wait_serving(client, "fake-a")
        x = digits_x(1)
        client.query({"x": x}, variant=source, latency_ms=50.0)
        wait_serving(client, "fake-a", holding=source)
        w.report(source, **HEAVY)

        def long_enough():  # the upgrade, and its target's idle timeout, have had time to happen
            # By model: a variant its clients name (as the first query did) is never switched away.
            client.query({"x": x}, model="digits-mlp", latency_ms=50.0)
            up = [a for a in client.status()["master"]["autoscale_actions"] if a["kind"] == "upgrade"]
            return up and w.heartbeats_sent * w.interval_s > config.idle_unload_s + 1.0 and up[0]
        upgrade = wait_for(long_enough, 6.0)
        target = upgrade["target"]
        assert w.peak_threads <= w.cores, f"{w.peak_threads} threads held on {w.cores} core(s)"
        events = [(m.type, m.body.variant) for m in w.messages() if m.type in ("load", "unload")]
        assert ("unload", target) not in events or events[-1] == ("unload", target), events
        switch = next(m for m in w.messages("load") if m.body.variant == target)
        assert switch.body.replaces == source
        assert client.query({"x": x}, model="digits-mlp", latency_ms=50.0).variant == target


# -- memory pressure ----------------------------------------------------------------------------------------

def test_a_new_load_goes_where_memory_is_free(tmp_path, catalog, workers):
    with start_master(tmp_path, catalog) as (master, client):
        big = workers(master, "fake-big", cores=8, free_memory_bytes=1 << 20)  # most cores, 1 MiB free
        roomy = workers(master, "fake-roomy", cores=2)
        wait_serving(client, "fake-big", "fake-roomy")
        assert by_id(client)["fake-big"]["free_memory_bytes"] == 1 << 20
        res = client.query({"x": digits_x(2)}, **MODELLESS)
        assert res.needs_load and res.worker == "fake-roomy"
        assert [m.body.variant for m in roomy.messages("infer")] == [res.variant]
        assert big.messages("infer") == [] and big.messages("load") == []

        # With its memory back, the worker with the most free cores takes the next new load.
        big.free_memory_bytes = None
        wait_for(lambda: by_id(client)["fake-big"]["free_memory_bytes"] > 1 << 30, 5.0)
        other = next(v.name for v in catalog.store.variants()
                     if v.model != res.variant.split("/")[0] and v.threads == 1 and v.max_batch >= 2)
        res2 = client.query({"x": digits_x(2)}, variant=other)
        assert res2.needs_load and res2.worker == "fake-big"
        assert [m.body.variant for m in big.messages("infer")] == [other]


def test_no_replica_where_memory_is_short(tmp_path, catalog, workers):
    peak: dict[str, int] = {}  # V's profiled peak memory, from the spec the worker got
    with start_master(tmp_path, catalog, autoscale=FAST_AUTOSCALE) as (master, client):
        w = workers(master, "fake-a", cores=8, free_memory_bytes=1 << 20)  # cores to spare, 1 MiB free
        wait_serving(client, "fake-a")
        x = digits_x(1)
        client.query({"x": x}, variant=V, latency_ms=50.0)
        wait_serving(client, "fake-a", holding=V)
        peak[V] = w.messages("infer")[0].body.spec.peak_memory_bytes
        assert peak[V] > 1 << 20, "the profile says one more replica needs more than the 1 MiB free"
        w.report(V, **HEAVY)

        def overloaded_for(ticks: int):
            start = w.heartbeats_sent

            def seen():
                client.query({"x": x}, variant=V, latency_ms=50.0)
                state = by_id(client)["fake-a"]["autoscale"].get(V)
                return state == "overloaded" and w.heartbeats_sent - start >= ticks
            return seen
        wait_for(overloaded_for(12), 5.0)  # overloaded, and several autoscale ticks have seen it
        assert _loads(w, V, replicas=2) == []
        actions = [a for a in client.status()["master"]["autoscale_actions"] if a["worker"] == "fake-a"]
        assert all(a["kind"] != "replicate" for a in actions), actions
        for a in actions:  # an upgrade in place is allowed only to a variant that needs no more memory
            assert a["kind"] == "upgrade" and a["variant"] == V, actions
            target = _loads(w, a["target"])[0].body.spec
            assert target.peak_memory_bytes - peak[V] <= 1 << 20

        w.free_memory_bytes = None  # memory freed: the same pressure now gets a replica
        wait_for(lambda: client.query({"x": x}, variant=V, latency_ms=50.0) and _loads(w, V, replicas=2), 5.0)


# -- the doors ----------------------------------------------------------------------------------------------

FLOOD = 3000


def _flood(tmp_path, catalog, workers, max_pending_per_client: int, **settings):
    """FLOOD queries from a raw DEALER (RCVHWM 10) that reads nothing until the master has handled them all.

    Returns (ids, answers by id, the master's status after, the replies it held waiting before the read).
    """
    def wide(body, inputs):  # 8 KiB replies: a few hundred fill the kernel's buffers
        return [np.zeros(1, np.int64), np.zeros((1, 2048), np.float32)]

    with start_master(tmp_path, catalog, max_pending_per_client=max_pending_per_client,
                      heartbeat_interval_s=0.5, **settings) as (master, client):
        workers(master, "fake-a", preload=[V], infer_fn=wide, interval_s=0.1)
        wait_serving(client, "fake-a", holding=V)
        query = query_message({"x": digits_x(1)}, variant=V)
        ids = [f"flood-{i}" for i in range(FLOOD)]
        sock = raw_dealer(master.client_endpoint, rcvhwm=10)

        def handled(count: int):  # the master's counters, read by another client: it has answered `count`
            def done():
                st = client.status()["master"]
                return st["queries_served"] + st["queries_failed"] + st["queries_refused"] >= count
            return done
        try:
            for i, rid in enumerate(ids, 1):
                sock.send_multipart(protocol.encode(protocol.Message("query", query.body, id=rid, frames=query.frames)))
                if i % 50 == 0:  # in waves the worker keeps up with, so the bound is met by unread replies
                    wait_for(handled(i), 5.0, interval_s=0.002)
            wait_for(handled(FLOOD), 5.0)
            # Nothing read yet: the master holds what the socket cannot take in the client's outbox.
            waiting = client.status()["master"]["replies_waiting"]
            answers: dict[str, list[protocol.Message]] = {}
            while sock.poll(1000, zmq.POLLIN):  # read until a quiet second
                msg = protocol.decode(sock.recv_multipart())
                answers.setdefault(msg.id, []).append(msg)
        finally:
            sock.close(linger=0)
        status = client.status()["master"]
    return ids, answers, status, waiting


def _check_answers(ids, answers, status) -> tuple[int, int]:
    """Each answer is the only one to its query, a reply or an `overloaded` refusal; (served, refused)."""
    assert set(answers) <= set(ids)
    assert all(len(a) == 1 for a in answers.values()), "a query answered twice"
    kinds = [(a[0].type, a[0].body.code if a[0].type == "error" else None) for a in answers.values()]
    assert set(kinds) <= {("reply", None), ("error", "overloaded")}, set(kinds)
    served, refused = kinds.count(("reply", None)), kinds.count(("error", "overloaded"))
    assert served >= 50 and refused > 0
    # Refused only once the client's load (in flight plus unread replies) reached the bound, never before.
    first_refused = next(i for i, rid in enumerate(ids) if rid in answers and answers[rid][0].type == "error")
    assert first_refused >= 50
    assert status["replies_waiting"] == 0 and status["pending"] == 0 and status["queries_served"] == served
    return served, refused


def test_a_flood_from_a_client_that_reads_late_is_answered_in_full(tmp_path, catalog, workers):
    ids, answers, status, waiting = _flood(tmp_path, catalog, workers, max_pending_per_client=1000)
    assert waiting > 0, "the unread replies waited in the outbox"
    assert set(answers) == set(ids)
    _check_answers(ids, answers, status)
    assert status["replies_dropped"] == 0


def test_a_flood_past_the_outbox_cap_is_accounted_for(tmp_path, catalog, workers):
    """Past master.max_waiting_replies_per_client unread replies, further ones are dropped and counted
    (docs/protocol.md: memory stays bounded)."""
    ids, answers, status, waiting = _flood(tmp_path, catalog, workers, max_pending_per_client=50,
                                           max_waiting_replies_per_client=200)
    assert 0 < waiting <= 200 and status["replies_dropped"] > 0
    _check_answers(ids, answers, status)
    assert len(answers) + status["replies_dropped"] == FLOOD


def test_a_flood_with_a_small_client_bound_is_answered_in_full(tmp_path, catalog, workers):
    """The brief's door: 3000 unread queries, max_pending_per_client=50: every one answered or `overloaded`."""
    ids, answers, status, _ = _flood(tmp_path, catalog, workers, max_pending_per_client=50)
    _check_answers(ids, answers, status)
    assert set(answers) == set(ids), f"{len(set(ids) - set(answers))} of {FLOOD} queries never answered"


def test_a_worker_sending_garbage_is_cut_off(tmp_path, catalog, workers):
    limit = 5
    with start_master(tmp_path, catalog, worker_garbage_limit=limit) as (master, client):
        workers(master, "fake-good")
        wait_serving(client, "fake-good")
        sock = raw_dealer(master.worker_endpoint, identity=b"garbage-w")
        try:
            register = protocol.Message("register", {"worker_id": "garbage-w", "hardware": {"cores": 2},
                                                     "backends": ["ort-cpu"]})
            sock.send_multipart(protocol.encode(register))
            assert receive(sock).type == "registered"
            wait_for(lambda: "garbage-w" in by_id(client), 5.0)
            for i in range(limit):
                sock.send(b"\xc1 not msgpack %d" % i)
                reply = receive(sock)
                assert reply.type == "error" and reply.body.code == "malformed"
            wait_for(lambda: "garbage-w" not in by_id(client), 5.0)
            assert client.status()["master"]["workers_refused"] == 1
            # Cut off: even a valid frame from that identity is no longer read.
            sock.send_multipart(protocol.encode(register))
            assert not sock.poll(500, zmq.POLLIN)
        finally:
            sock.close(linger=0)
        assert sorted(by_id(client)) == ["fake-good"]
        assert client.query({"x": digits_x(1)}, variant=V).worker == "fake-good"


def test_a_register_with_a_bad_field_gets_bad_request_naming_it(tmp_path, catalog, workers):
    with start_master(tmp_path, catalog) as (master, client):
        workers(master, "fake-good")
        wait_serving(client, "fake-good")
        sock = raw_dealer(master.worker_endpoint, identity=b"bad-hw")
        try:
            sock.send(msgspec.msgpack.encode({"v": protocol.PROTOCOL_VERSION, "type": "register", "id": "reg-1",
                                              "body": {"worker_id": "bad-hw", "hardware": {"cores": "x"},
                                                       "backends": ["ort-cpu"]}}))
            reply = receive(sock)
        finally:
            sock.close(linger=0)
        assert reply.type == "error" and reply.id == "reg-1"
        assert reply.body.code == "bad_request" and "$.hardware.cores" in reply.body.reason
        assert "bad-hw" not in by_id(client)
        res = client.query({"x": digits_x(2)}, **MODELLESS)
        assert res.worker == "fake-good"
        with pytest.raises(QueryFailed) as info:
            client.query({"x": digits_x(1)}, model="nope")
        assert info.value.code == "unknown_model"


# -- the prediction cache -------------------------------------------------------------------------------------

def _infers(w: FakeWorker) -> int:
    with w._lock:
        return sum(1 for msg in w.received if msg.type == "infer")


def _cache(client, model: str = "digits-mlp") -> dict:
    return client.status()["master"]["prediction_cache"]["models"][model]


def test_the_prediction_cache_answers_a_repeat_without_a_worker(tmp_path, catalog, workers):
    with start_master(tmp_path, catalog, prediction_cache_mib=1) as (master, client):
        w = workers(master, "fake-a", preload=[V])
        wait_serving(client, "fake-a", holding=V)
        x, y = digits_x(2), digits_x(2) + 1.0
        miss = client.query({"x": x}, variant=V)
        hit = client.query({"x": x}, variant=V)
        other = client.query({"x": y}, variant=V)
        assert (miss.cached, miss.worker) == (False, "fake-a") and (other.cached, other.worker) == (False, "fake-a")
        assert (hit.cached, hit.worker, hit.variant) == (True, "cache", V)
        for a, b in zip(hit.outputs, miss.outputs):
            np.testing.assert_array_equal(a, b)
        assert hit.output_names == miss.output_names
        assert _infers(w) == 2  # the hit never reached the worker
        # the same bytes, but asked of the model (a different answer may come back): a separate entry
        assert not client.query({"x": x}, model="digits-mlp").cached
        stats = _cache(client)
        assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 3, 3)
        assert client.status()["master"]["prediction_cache"]["models"]["digits-logreg"]["entries"] == 0


def test_the_prediction_cache_evicts_the_least_recently_used_within_its_cap(tmp_path, catalog, workers):
    def big(body, inputs):  # 400 KB of output: two answers fit a 1 MiB cache, a third evicts the oldest
        return [np.zeros(len(inputs["x"]), np.int64), np.zeros((len(inputs["x"]), 50_000), np.float32)]

    with start_master(tmp_path, catalog, prediction_cache_mib=1) as (master, client):
        w = workers(master, "fake-a", preload=[V], infer_fn=big)
        wait_serving(client, "fake-a", holding=V)
        xs = [digits_x(2) + i for i in range(3)]
        for x in xs:
            assert not client.query({"x": x}, variant=V).cached
        assert client.query({"x": xs[2]}, variant=V).cached  # the newest stays
        assert client.query({"x": xs[1]}, variant=V).cached
        assert not client.query({"x": xs[0]}, variant=V).cached  # the oldest was evicted
        stats = _cache(client)
        assert stats["evictions"] >= 1 and stats["bytes"] <= stats["capacity_bytes"] == 1 << 20
        assert _infers(w) == 4


def test_the_prediction_cache_is_invalidated_when_the_models_variants_change(tmp_path, catalog, workers):
    from infaas_cli.catalog.artifacts import ArtifactStore
    from infaas_cli.catalog.store import LmdbStore

    with start_master(tmp_path, catalog, prediction_cache_mib=1) as (master, client):
        workers(master, "fake-a", preload=[V])
        wait_serving(client, "fake-a", holding=V)
        x = digits_x(1)
        client.query({"x": x}, variant=V)
        assert client.query({"x": x}, variant=V).cached
        # Another catalog adds a variant of digits-mlp (replicated like any push): the model's answers may change.
        other = LmdbStore(tmp_path / "other.lmdb")
        try:
            base = catalog.store.get(VariantRecord, V)
            other.put(VariantRecord(**{**base.to_dict(), "name": "digits-mlp/ort-cpu-fp32o2-t3-b8", "threads": 3}))
            assert client.push(other, ArtifactStore(tmp_path / "other-artifacts"))["applied"] == 1
        finally:
            other.close()
        wait_for(lambda: _cache(client)["invalidations"] == 1, 5.0)
        assert _cache(client)["entries"] == 0
        assert not client.query({"x": x}, variant=V).cached


def test_status_is_a_summary_with_a_page_of_workers(tmp_path, catalog, workers):
    with start_master(tmp_path, catalog) as (master, client):
        for i in range(3):
            workers(master, f"fake-{i}")
        wait_serving(client, "fake-0", "fake-1", "fake-2")
        full = client.status()
        page = client.status(workers_offset=1, workers_limit=1)
        summary = client.status(workers_limit=0)
    order = [w["worker_id"] for w in full["workers"]]  # registration order
    assert sorted(order) == ["fake-0", "fake-1", "fake-2"]
    assert [w["worker_id"] for w in page["workers"]] == order[1:2] and summary["workers"] == []
    for st in (full, page, summary):
        assert (st["master"]["workers_total"], st["master"]["workers_alive"]) == (3, 3)
    assert page["master"]["workers_offset"] == 1 and summary["master"]["loop_lag_ms"] == 0.0
