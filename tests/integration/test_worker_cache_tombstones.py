"""A worker away during a removal (stopped, dead, partitioned) is told what the sweep freed when it comes back: a real
master and real workers in-process, sharing nothing but sockets (the worker's cache directory survives it, as on a
host). The master names only digests its own sweep freed, remembered across its restarts, and never one the catalog
needs again."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import zmq

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.catalog.records import TombstoneRecord
from infaas_cli.catalog.removal import remove_models
from infaas_cli.protocol import messages as m
from infaas_cli.settings import WorkerSettings
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from infaas_daemons.worker import Worker
from support import FAST, ZOO, build_catalog, digits_x, retrained_logreg, start_master, wait_for

pytestmark = pytest.mark.timeout(90)

MODEL, COPY, OTHER = "digits-logreg", "logreg-copy", "logreg-other"
RECIPE = "ort-cpu-fp32o1-t1-b8"
MINE, OTHERS = f"{MODEL}/{RECIPE}", f"{OTHER}/{RECIPE}"


def register_other(home, tmp_path) -> None:
    e = ZOO[MODEL]
    register_model(home, retrained_logreg(tmp_path / "other.onnx"), OTHER, e.task, e.dataset, e.validation)
    generate_variants(home, OTHER)
    profile_models(home, [OTHER], batch_sizes=[1, 8], settings=FAST)


@pytest.fixture
def catalog(tmp_path):
    """digits-logreg; logreg-copy, the same file (its artifacts are digits-logreg's); logreg-other, a different file
    (its artifacts are its own). Each test removes models, so each has its own."""
    home = build_catalog(tmp_path / "home", (MODEL,))
    e = ZOO[MODEL]
    register_model(home, e.file, COPY, e.task, e.dataset, e.validation)
    generate_variants(home, COPY)
    profile_models(home, [COPY], batch_sizes=[1, 8], settings=FAST)
    register_other(home, tmp_path)
    yield home
    home.close()


def sha_of(home, variant: str) -> str:
    (record,) = [v for v in home.store.variants() if v.name == variant]
    return record.artifact_sha256


@contextmanager
def running_worker(master, cache_dir):
    """A real Worker of id w-away with its cache in `cache_dir`, stopped (its thread joined) on the way out."""
    w = Worker(WorkerSettings(master_endpoint=master.worker_endpoint, worker_id="w-away", cache_dir=str(cache_dir),
                              cores=2, heartbeat_interval_s=0.1))
    thread = threading.Thread(target=w.run, name="worker-away", daemon=True)
    thread.start()
    try:
        yield w
    finally:
        w.stop_event.set()
        thread.join(10)
        assert not thread.is_alive(), "the worker did not stop within 10 s"


def alive(client) -> int:
    return client.status()["master"]["workers_alive"]


def cache_both_and_stop(master, client, cache: ArtifactStore) -> None:
    """The worker serves digits-logreg (its artifact shared with logreg-copy) and logreg-other, then stops; the
    master sees it dead."""
    with running_worker(master, cache.root):
        wait_for(lambda: alive(client) == 1, 10.0)
        assert client.query({"x": digits_x(1)}, variant=MINE).worker == "w-away"
        assert client.query({"x": digits_x(1)}, variant=OTHERS).worker == "w-away"
    wait_for(lambda: alive(client) == 0, 10.0)


def remove_and_push(client, home, models: list[str], drain: bool) -> None:
    answer = client.remove(models, drain=drain, timeout_s=10.0) if drain else client.remove(models)
    assert answer["unloaded_on"] == []  # no live worker held them: the one that did is away
    remove_models(home.store, home.artifacts, models)
    client.push(home.store, home.artifacts)


@pytest.mark.parametrize("drain", [True, False], ids=["drained", "plain"])
def test_a_worker_away_during_a_removal_drops_the_freed_artifacts_when_it_registers_again(
        tmp_path, catalog, drain):
    shared, own = sha_of(catalog, MINE), sha_of(catalog, OTHERS)
    assert shared == sha_of(catalog, f"{COPY}/{RECIPE}") and own != shared  # the premise: one shared, one not
    cache = ArtifactStore(tmp_path / "worker-cache")
    with start_master(tmp_path, catalog) as (master, client):
        cache_both_and_stop(master, client, cache)
        assert cache.has(shared) and cache.has(own)
        remove_and_push(client, catalog, [MODEL, OTHER], drain)
        assert not master.artifacts.has(own) and master.artifacts.has(shared)  # the master's sweep freed its own
        assert cache.has(own), "nobody told the worker while it was away"

        kept = cache.path(shared).stat()
        with running_worker(master, cache.root):  # the same worker id and cache directory, back
            wait_for(lambda: not cache.has(own), 5.0)
            assert client.query({"x": digits_x(1)}, variant=f"{COPY}/{RECIPE}").worker == "w-away"
            after = cache.path(shared).stat()  # an artifact logreg-copy still uses stayed cached, never fetched again
            assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


class FakeWorker:
    """A worker speaking the real protocol whose silence the test controls (a partition, a restart): no cache, no
    heartbeats unless sent."""

    def __init__(self, endpoint: str, worker_id: str) -> None:
        self.worker_id = worker_id
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, worker_id.encode())  # the master knows a worker by its socket's identity
        self.sock.connect(endpoint)

    def send(self, type_: str, body) -> str:
        msg = protocol.Message(type_, body)
        self.sock.send_multipart(protocol.encode(msg))
        return msg.id

    def register(self) -> list[protocol.Message]:
        """Register; what the master sent in answer (its `registered` and anything that came with it)."""
        self.send("register", m.RegisterBody(worker_id=self.worker_id, backends=["ort-cpu"],
                                             hardware=m.Hardware(cores=1, memory_bytes=1 << 30)))
        return self.sync()

    def heartbeat(self, *loaded: str) -> list[protocol.Message]:
        """A heartbeat holding `loaded` (variant names); what the master sent since."""
        self.send("heartbeat", m.HeartbeatBody(worker_id=self.worker_id, metrics=m.WorkerMetrics(
            cores=1, free_cores=1, free_memory_bytes=1 << 30,
            variants={name: m.VariantMetrics(state="loaded") for name in loaded})))
        return self.sync()

    def sync(self) -> list[protocol.Message]:
        """Every message the master sent before answering a fetch sent now (its answer, an error, comes after
        them on the same pipe): a point where what the master sent so far has all arrived."""
        fetch_id = self.send("fetch", m.FetchBody(sha256="0" * 64, offset=0, worker_id=self.worker_id))
        got: list[protocol.Message] = []

        def answered() -> bool:
            while self.sock.poll(20):
                msg = protocol.decode(self.sock.recv_multipart())
                if msg.type == "error" and msg.id == fetch_id:
                    return True
                got.append(msg)
            return False

        wait_for(answered, 10.0)
        return got

    def close(self) -> None:
        self.sock.close(linger=0)


def drops(messages: list[protocol.Message]) -> list[str]:
    return [sha for msg in messages if msg.type == "drop_artifacts" for sha in msg.body.artifacts]


def test_tombstones_survive_a_master_restart_and_a_fresh_master_drops_nothing(tmp_path, catalog):
    own, shared = sha_of(catalog, OTHERS), sha_of(catalog, MINE)
    cache = ArtifactStore(tmp_path / "worker-cache")
    with start_master(tmp_path, catalog) as (master, client):
        cache_both_and_stop(master, client, cache)
        remove_and_push(client, catalog, [OTHER], drain=False)
        tombstoned = [r.sha256 for r in master.store.scan(TombstoneRecord)]
        assert own in tombstoned and shared not in tombstoned  # its variants' file (and its registered one)

    # A fresh master (its own data directory) whose catalog has not been pushed: it knows none of the worker's
    # artifacts but freed none either, so it names none.
    fresh_home = build_catalog(tmp_path / "fresh-home", ())
    try:
        with start_master(tmp_path / "fresh", fresh_home) as (master, client):
            fake = FakeWorker(master.worker_endpoint, "w-fresh")
            try:
                assert [msg.type for msg in fake.register()] == ["registered"]
                assert fake.heartbeat(OTHERS) == []  # nothing dropped, and nothing unloaded: it knows no model
            finally:
                fake.close()
    finally:
        fresh_home.close()

    (tmp_path / "master" / "endpoints.json").unlink()  # the restarted master writes its own
    with start_master(tmp_path, catalog) as (master, client):  # the first master again, restarted on its data dir
        assert sorted(master.tombstones.freed) == sorted(tombstoned)
        with running_worker(master, cache.root):
            wait_for(lambda: not cache.has(own), 5.0)
            assert cache.has(shared)


def test_a_re_pushed_model_s_artifact_is_not_dropped(tmp_path, catalog):
    own = sha_of(catalog, OTHERS)
    cache = ArtifactStore(tmp_path / "worker-cache")
    with start_master(tmp_path, catalog) as (master, client):
        cache_both_and_stop(master, client, cache)
        remove_and_push(client, catalog, [OTHER], drain=False)
        assert own in master.tombstones.freed
        register_other(catalog, tmp_path)  # the same file again: the same artifacts
        assert sha_of(catalog, OTHERS) == own
        client.push(catalog.store, catalog.artifacts)
        assert not master.tombstones.freed and master.store.get(TombstoneRecord, own) is None

        fake = FakeWorker(master.worker_endpoint, "w-fake")
        try:
            assert drops(fake.register() + fake.heartbeat(OTHERS)) == []
        finally:
            fake.close()
        cached = cache.path(own).stat()
        with running_worker(master, cache.root):
            wait_for(lambda: any(w["worker_id"] == "w-away" and w["alive"] for w in client.status()["workers"]), 10.0)
            assert client.query({"x": digits_x(1)}, variant=OTHERS).worker == "w-away"
            after = cache.path(own).stat()
            assert (after.st_ino, after.st_mtime_ns) == (cached.st_ino, cached.st_mtime_ns)  # kept, not fetched again


def test_a_worker_declared_dead_and_heard_from_again_is_told_what_was_freed_meanwhile(tmp_path, catalog):
    """A partition: the worker never re-registers, its heartbeats just resume."""
    own = sha_of(catalog, OTHERS)
    with start_master(tmp_path, catalog) as (master, client):
        fake = FakeWorker(master.worker_endpoint, "w-fake")
        try:
            assert drops(fake.register()) == []
            wait_for(lambda: alive(client) == 0, 10.0)  # silent: declared dead
            remove_and_push(client, catalog, [OTHER], drain=False)
            assert drops(fake.sync()) == []  # the sweep is sent to live workers only
            back = fake.heartbeat(OTHERS, MINE)  # back, still running the removed variant and a kept one
            assert own in drops(back)  # told at once
            assert [msg.body.variant for msg in back if msg.type == "unload"] == [OTHERS]  # nothing routes there now
            assert drops(fake.heartbeat(MINE)) == []  # once
        finally:
            fake.close()


def test_a_worker_the_master_forgot_registers_again_still_running_a_removed_variant(tmp_path, catalog):
    """A partition longer than the master remembers dead workers (or a master restart): the worker registers afresh
    with the removed variant still loaded. Its first heartbeat gets that variant unloaded and the freed artifact
    dropped; the kept variant stays."""
    own = sha_of(catalog, OTHERS)
    with start_master(tmp_path, catalog) as (master, client):
        remove_and_push(client, catalog, [OTHER], drain=False)
        fake = FakeWorker(master.worker_endpoint, "w-forgotten")
        try:
            assert [msg.type for msg in fake.register()] == ["registered"]
            first = fake.heartbeat(OTHERS, MINE)
            assert own in drops(first)
            assert [msg.body.variant for msg in first if msg.type == "unload"] == [OTHERS]
            assert fake.heartbeat(MINE) == []  # once
        finally:
            fake.close()
