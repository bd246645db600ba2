"""A real worker answers `reprofile` over real ZeroMQ: measurements, refusals, and the profiler's interruption."""

from __future__ import annotations

import threading
import time

import msgspec
import numpy as np
import pytest
import zmq

from infaas_cli import protocol
from infaas_cli.backends import backend as backend_named
from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.protocol import messages as m
from infaas_cli.settings import WorkerSettings
from infaas_cli.toolkit.hardware import hardware_id
from infaas_cli.toolkit.profiler import MeasureInterrupted, MeasureSettings, measure_session
from infaas_daemons.worker import Worker
from support import make_two_input_model

pytestmark = pytest.mark.timeout(60)


def _spec(sha: str, max_batch: int = 8) -> dict:
    return {"name": "two/ort-cpu-fp32-t1-b8", "backend": "ort-cpu", "recipe": "fp32", "threads": 1,
            "max_batch": max_batch, "batch_dim": "dynamic", "artifact_sha256": sha,
            "inputs": [{"name": n, "type": "tensor(float)", "dtype": "float32", "shape": ["N", 4]} for n in "ab"]}


class FakeMaster:
    """A ROUTER on loopback that speaks the real protocol to one worker."""

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.identity = b""

    def recv(self, type_: str, msg_id: str | None = None, timeout_s: float = 20.0) -> protocol.Message:
        """The next message of `type_` (answering `id` when given), skipping heartbeats and the like."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            self.identity, *frames = self.sock.recv_multipart()
            msg = protocol.decode(frames)
            if msg.type == type_ and (msg_id is None or msg.id == msg_id):
                return msg
        raise AssertionError(f"no {type_} within {timeout_s} s")

    def send(self, msg: protocol.Message) -> str:
        self.sock.send_multipart([self.identity, *protocol.encode(msg)])
        return msg.id

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def setup(tmp_path):
    model = make_two_input_model(tmp_path / "two.onnx")
    cache = ArtifactStore(tmp_path / "cache")
    sha = cache.put_file(model)
    master = FakeMaster()
    worker = Worker(WorkerSettings(master_endpoint=master.endpoint, worker_id="w-rp", cache_dir=str(cache.root),
                                   cores=1, heartbeat_interval_s=0.2))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        register = master.recv("register")
        master.send(protocol.Message("registered", m.RegisteredBody(heartbeat_interval_s=0.2), id=register.id))
        yield master, worker, sha, register.body
    finally:
        worker.stop_event.set()
        thread.join(10)
        master.close()


def _reprofile(sha: str, sizes=(1, 4), budget_ms: float = 20.0, max_batch: int = 8) -> protocol.Message:
    return protocol.Message("reprofile", {"variant": "two/ort-cpu-fp32-t1-b8", "spec": _spec(sha, max_batch),
                                          "batch_sizes": list(sizes), "budget_ms": budget_ms})


def test_reprofile_measures_on_the_worker(setup):
    master, worker, sha, registered = setup
    rid = master.send(_reprofile(sha, sizes=(1, 4, 64)))  # 64 is above the max batch: left out
    reply = master.recv("reprofiled", rid)
    b: m.ReprofiledBody = reply.body
    assert b.variant == "two/ort-cpu-fp32-t1-b8" and b.worker_id == "w-rp"
    assert sorted(b.batches) == [1, 4]
    for stats in b.batches.values():
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms and stats.runs >= 5 and stats.throughput_qps > 0
    assert b.load_time_ms > 0
    # The master names the worker's hardware from its registration the same way.
    assert b.hardware_id == hardware_id("cpu", msgspec.structs.asdict(registered.hardware))
    assert b.hardware.cores == 1
    assert worker._reprofiling is None


def test_reprofile_refusals(setup):
    master, worker, sha, _ = setup
    rid = master.send(_reprofile("ab" * 32))
    err = master.recv("error", rid)
    assert err.body.code == "not_found" and "not cached" in err.body.reason
    rid = master.send(_reprofile(sha, sizes=(16, 32), max_batch=8))
    assert master.recv("error", rid).body.code == "bad_request"
    # One re-profile at a time: the second is refused while the first runs.
    first = master.send(_reprofile(sha, budget_ms=200.0))
    second = master.send(_reprofile(sha))
    err = master.recv("error", second)
    assert err.body.code == "overloaded" and "re-profiling" in err.body.reason
    master.recv("reprofiled", first)


def test_measuring_stops_between_batch_sizes_when_interrupted(tmp_path):
    model = make_two_input_model(tmp_path / "two.onnx")
    data = {n: np.zeros((4, 4), np.float32) for n in "ab"}
    asked = []

    def interrupted():
        asked.append(1)
        return "queries arrived" if len(asked) > 1 else None

    with pytest.raises(MeasureInterrupted, match="queries arrived") as info:
        measure_session(backend_named("ort-cpu"), model, "fp32", 1, "dynamic", data, [1, 4],
                        MeasureSettings(warmup_runs=1, budget_ms=1.0, min_runs=2, max_runs=10), interrupted)
    assert info.value.code == "overloaded" and len(asked) == 2
