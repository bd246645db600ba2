"""A removal sweeps the workers' artifact caches too: a real worker (in-process, real ONNX Runtime, its own cache
directory) beside a master in-process deletes its cached copies of the removed variants' artifacts — on the drain
path and the plain one, held or long evicted — and keeps any artifact a surviving model still uses."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.catalog.removal import remove_models
from infaas_cli.protocol import messages as m
from infaas_cli.settings import WorkerSettings
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from infaas_daemons.worker import Worker
from support import FAST, ZOO, build_catalog, digits_x, make_two_input_model, retrained_logreg, start_master, \
    wait_for

pytestmark = pytest.mark.timeout(90)

MODEL, COPY, OTHER = "digits-logreg", "logreg-copy", "logreg-other"
RECIPE = "ort-cpu-fp32o1-t1-b8"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """digits-logreg; logreg-copy, the same file (its variants' artifacts are digits-logreg's); logreg-other, a
    different file (its artifacts are its own)."""
    tmp = tmp_path_factory.mktemp("cache-gc")
    home = build_catalog(tmp / "home", (MODEL,))
    e = ZOO[MODEL]
    register_model(home, e.file, COPY, e.task, e.dataset, e.validation)
    register_model(home, retrained_logreg(tmp / "other.onnx"), OTHER, e.task, e.dataset, e.validation)
    for name in (COPY, OTHER):
        generate_variants(home, name)
    profile_models(home, [COPY, OTHER], batch_sizes=[1, 8], settings=FAST)
    yield home
    home.close()


@pytest.fixture
def worker(tmp_path):
    """Start a real Worker against a master; yields a starter returning (worker, its cache)."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(master) -> tuple[Worker, ArtifactStore]:
        cache = ArtifactStore(tmp_path / "worker-cache")
        w = Worker(WorkerSettings(master_endpoint=master.worker_endpoint, worker_id="w-gc", cache_dir=str(cache.root),
                                  cores=2, heartbeat_interval_s=0.1))
        thread = threading.Thread(target=w.run, name="worker-gc", daemon=True)
        thread.start()
        started.append((w, thread))
        return w, cache

    yield start
    for w, thread in started:
        w.stop_event.set()
        thread.join(10)


def sha_of(home, variant: str) -> str:
    (record,) = [v for v in home.store.variants() if v.name == variant]
    return record.artifact_sha256


def test_a_drained_removal_drops_the_removed_artifacts_from_the_worker_cache_and_keeps_shared_ones(
        tmp_path, catalog, worker):
    mine, shared_one, other = f"{MODEL}/{RECIPE}", f"{COPY}/{RECIPE}", f"{OTHER}/{RECIPE}"
    shared, own = sha_of(catalog, mine), sha_of(catalog, other)
    assert shared == sha_of(catalog, shared_one) and own != shared  # the premise: one artifact shared, one not
    with start_master(tmp_path, catalog) as (master, client):
        _, cache = worker(master)
        wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 10.0)
        x = digits_x(1)
        assert client.query({"x": x}, variant=mine).worker == "w-gc"
        assert client.query({"x": x}, variant=other).worker == "w-gc"
        assert cache.has(shared) and cache.has(own)

        answer = client.remove([MODEL, OTHER], drain=True, timeout_s=10.0)
        assert answer["unloaded_on"] == ["w-gc"]
        assert cache.has(own), "nothing is dropped before replication deletes the records"
        remove_models(catalog.store, catalog.artifacts, [MODEL, OTHER])
        client.push(catalog.store, catalog.artifacts)

        wait_for(lambda: not cache.has(own), 10.0)
        assert cache.has(shared), "an artifact logreg-copy still uses stays cached"
        assert client.query({"x": x}, variant=shared_one).worker == "w-gc"  # the survivor still serves
        assert not any(p.name.startswith(".fetch-") for p in cache.root.iterdir())


def test_a_plain_removal_drops_the_artifact_of_a_variant_the_worker_no_longer_holds(tmp_path, worker):
    home = build_catalog(tmp_path / "home", (MODEL,))
    try:
        variant = f"{MODEL}/{RECIPE}"
        own = sha_of(home, variant)
        with start_master(tmp_path, home) as (master, client):
            _, cache = worker(master)
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 10.0)
            assert client.query({"x": digits_x(1)}, variant=variant).worker == "w-gc"
            client.unpin(variant)  # unloaded: the worker holds it no more, its cache still does
            wait_for(lambda: variant not in client.status()["workers"][0]["variants"], 10.0)  # as the master sees it
            assert cache.has(own)
            assert client.remove([MODEL])["unloaded_on"] == []  # nothing serves it: no drain needed
            remove_models(home.store, home.artifacts, [MODEL])
            client.push(home.store, home.artifacts)
            wait_for(lambda: not cache.has(own), 10.0)
            assert list(cache.digests()) == []
    finally:
        home.close()


def test_an_artifact_in_use_is_dropped_once_its_variant_unloads(tmp_path):
    """A drop that reaches a worker while the variant still runs (a removed variant finishing its queue) waits for
    the unload; the worker's socket order makes each answer a point where the earlier messages were handled."""
    model = make_two_input_model(tmp_path / "two.onnx")
    cache = ArtifactStore(tmp_path / "cache")
    sha = cache.put_file(model)
    spec = {"name": "two/ort-cpu-fp32-t1-b8", "backend": "ort-cpu", "recipe": "fp32", "threads": 1, "max_batch": 8,
            "batch_dim": "dynamic", "artifact_sha256": sha,
            "inputs": [{"name": n, "type": "tensor(float)", "dtype": "float32", "shape": ["N", 4]} for n in "ab"]}
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
    w = Worker(WorkerSettings(master_endpoint=endpoint, worker_id="w-drop", cache_dir=str(cache.root), cores=1,
                              heartbeat_interval_s=0.2))
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    identity = b""

    def send(msg: protocol.Message) -> str:
        sock.send_multipart([identity, *protocol.encode(msg)])
        return msg.id

    def recv(type_: str, msg_id: str | None = None) -> protocol.Message:
        def one():
            nonlocal identity
            while sock.poll(50):
                identity, *frames = sock.recv_multipart()
                msg = protocol.decode(frames)
                if msg.type == type_ and msg_id in (None, msg.id):
                    return msg
            return None
        return wait_for(one, 10.0)

    def infer() -> None:
        data: list = []
        inputs, _ = protocol.pack_tensors({n: np.ones((1, 4), np.float32) for n in "ab"}, data)
        rid = send(protocol.Message("infer", {"variant": spec["name"], "spec": spec, "inputs": inputs}, frames=data))
        recv("result", rid)

    try:
        recv("register")
        send(protocol.Message("registered", m.RegisteredBody(heartbeat_interval_s=0.2)))
        send(protocol.Message("load", {"variant": spec["name"], "spec": spec}))
        recv("loaded")
        send(protocol.Message("drop_artifacts", m.DropArtifactsBody(artifacts=[sha, "ab" * 32])))
        infer()  # answered after the drop was handled: the loaded variant kept its artifact
        assert cache.has(sha)
        send(protocol.Message("unload", m.UnloadBody(variant=spec["name"])))
        wait_for(lambda: not cache.has(sha), 10.0)
        assert not w.drop_later
    finally:
        w.stop_event.set()
        thread.join(10)
        sock.close(linger=0)
