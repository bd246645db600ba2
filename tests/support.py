"""Helpers every test tier shares: a fake clock, a deadline wait, catalog builders, small ONNX models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from infaas_cli.toolkit.profiler import MeasureSettings
from infaas_cli.toolkit.zoo import load_manifest

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock the test moves: `now_s` (or calling it) reads it, `advance`/`sleep` move it forward."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    @property
    def now(self) -> float:
        return self.now_s

    @now.setter
    def now(self, value: float) -> None:
        self.now_s = value

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now_s += seconds

    sleep = advance


OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _weights(name: str, shape, seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def make_two_input_model(path: Path) -> Path:
    """a, b: float32 [N, 4] -> logits float32 [N, 3] = (a + b) @ W."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["logits"])],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [_weights("W", (4, 3), 1)])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_int_input_model(path: Path) -> Path:
    """ids: int64 [N, 5] in [0, 10) -> embedding lookup, mean, projection -> scores float32 [N, 3]."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["emb"]),
         helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["scores"])],
        "int_input",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [_weights("E", (10, 8), 2), _weights("W", (8, 3), 3)])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_fixed_batch_model(path: Path, batch: int = 4) -> Path:
    """x: float32 [4, 6] (batch fixed at 4) -> y float32 [4, 3]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "fixed_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [_weights("W", (6, 3), 4)])
    return _save(helper.make_model(graph, opset_imports=OPSET), path)



FAST = MeasureSettings(warmup_runs=1, budget_ms=3.0, min_runs=5, max_runs=100)
ZOO = {e.name: e for e in load_manifest()}
SERVED = ("digits-logreg", "digits-mlp", "digits-cnn-s")


def wait_for(predicate, timeout_s: float = 15.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def run_cli(home, *args: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    """`infaas --home HOME ARGS…` as a user runs it, in a child process, with no INFAAS_* variable of this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    return subprocess.run([sys.executable, "-m", "infaas_cli", "--home", str(home), *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def cli_json(result: subprocess.CompletedProcess):
    """The JSON a successful `run_cli(..., "--json")` printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def build_catalog(path, models=SERVED):
    from infaas_cli.catalog.home import InfaasHome
    from infaas_cli.toolkit.generate import generate_variants
    from infaas_cli.toolkit.profiler import profile_models
    from infaas_cli.toolkit.register import register_model

    home = InfaasHome(path)
    for name in models:
        e = ZOO[name]
        register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
        generate_variants(home, name)
    profile_models(home, list(models), batch_sizes=[1, 8, 32], settings=FAST)
    return home


def retrained_logreg(path) -> Path:
    """digits-logreg "retrained": its coefficients nudged, so a different file (a new version of the model) with the
    same signature and nearly the same answers."""
    model = onnx.load(str(ZOO["digits-logreg"].file))
    (node,) = [n for n in model.graph.node if n.op_type == "LinearClassifier"]  # scikit-learn's, via skl2onnx
    (coefficients,) = [a for a in node.attribute if a.name == "coefficients"]
    scaled = [c * 1.01 for c in coefficients.floats]
    del coefficients.floats[:]
    coefficients.floats.extend(scaled)
    onnx.save(model, str(path))
    return Path(path)


def digits_x(n: int) -> np.ndarray:
    return np.load(ZOO["digits-mlp"].validation)["x"][:n]


def original_outputs(name: str, x: np.ndarray):
    return ort.InferenceSession(str(ZOO[name].file)).run(None, {"x": x})




# -- the master in-process, and fake workers speaking the real protocol --------------------------------

import contextlib  # noqa: E402
import threading  # noqa: E402



def catalog_outputs(store) -> dict[str, list[tuple[str, list]]]:
    """variant -> [(dtype, shape)] of its model's outputs (symbolic dimensions left as they are)."""
    models = {m.name: [(o.get("dtype") or "float32", list(o.get("shape") or [])) for o in m.outputs]
              for m in store.models()}
    return {v.name: models.get(v.model, []) for v in store.variants()}


def zeros_like_outputs(outputs: list[tuple[str, list]], batch: int) -> list[np.ndarray]:
    """Zeros of each output's shape, every dimension that is not a fixed size taken as the batch."""
    return [np.zeros([d if isinstance(d, int) and d > 0 else batch for d in shape], dtype=dtype)
            for dtype, shape in outputs]


class _FakeVariant:
    def __init__(self, threads: int = 1, peak_memory_bytes: int = 0, replicas: int = 1) -> None:
        self.threads = threads
        self.peak_memory_bytes = peak_memory_bytes
        self.replicas = replicas
        self.queued = 0  # samples received and not yet answered
        self.last_used = time.monotonic()
        self.done: list[tuple[float, int, float]] = []  # (answered at, samples, latency ms)
        self.ready_at = 0.0  # when its load finishes (monotonic): "loading" until then


class FakeWorker:
    """A worker with no model behind it that speaks the real protocol over a real DEALER socket.

    In a background thread it registers, heartbeats every `interval_s` with metrics that reflect what it
    "loaded" (a `load`, or an `infer` of a variant it does not hold, loads it and is answered `loaded`),
    answers `infer` with a `result` after `delay_s` (outputs from `infer_fn(body, inputs)`, else zeros of the
    shapes in `outputs[variant]`, else one float32 zero per sample), obeys `unload`, and records every message
    it receives. A load takes `load_s` (heartbeats say "loading", infers wait for it, `loaded` comes after it).
    `answer = False` leaves infers unanswered; `report()` overrides what its heartbeats claim for
    a variant; `kill()` is death: no more heartbeats or answers, the socket closed.
    """

    def __init__(self, endpoint: str, worker_id: str = "fake-0", *, cores: int = 4, memory_bytes: int = 8 << 30,
                 free_memory_bytes: int | None = None, backends=("ort-cpu",), interval_s: float = 0.05,
                 delay_s: float = 0.0, answer: bool = True, outputs: dict | None = None, infer_fn=None,
                 preload=(), metrics_window_s: float = 1.0, start: bool = True, load_s: float = 0.0) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.cores = cores
        self.memory_bytes = memory_bytes
        self.free_memory_bytes = free_memory_bytes  # None: memory_bytes less what it "loaded"
        self.backends = list(backends)
        self.interval_s = interval_s
        self.delay_s = delay_s
        self.load_s = load_s
        self._loading: list[tuple[float, str]] = []  # (ready at, variant): `loaded` to send then
        self.answer = answer
        self.outputs = outputs or {}
        self.infer_fn = infer_fn
        self.metrics_window_s = metrics_window_s
        self.received: list = []  # every protocol.Message from the master, in order
        self.heartbeats_sent = 0
        self.peak_threads = 0  # most threads its loaded variants ever held together
        self.unanswered: list = []  # infers left unanswered (answer = False)
        self._lock = threading.Lock()
        self._overrides: dict[str, dict] = {}
        self._due: list[tuple[float, int, object]] = []  # (when, seq, infer message) results to send
        self._seq = 0
        self._outbox: list = []  # messages other threads asked to send
        self.loaded: dict[str, _FakeVariant] = {name: _FakeVariant() for name in preload}
        self.error: BaseException | None = None  # what broke its thread, re-raised by kill()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake-worker-{worker_id}", daemon=True)
        if start:
            self.start()

    def start(self) -> FakeWorker:
        self._thread.start()
        return self

    def __enter__(self) -> FakeWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def kill(self, timeout_s: float = 5.0) -> None:
        """Die: stop heartbeating and answering, close the socket (what is in flight stays unanswered)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            assert not self._thread.is_alive(), f"fake worker {self.worker_id} did not stop"
        if self.error is not None:
            raise AssertionError(f"fake worker {self.worker_id} failed: {self.error!r}") from self.error

    # -- what the test sees and sets ------------------------------------------------------------------
    def messages(self, type_: str | None = None) -> list:
        with self._lock:
            return [msg for msg in self.received if type_ is None or msg.type == type_]

    def wait_message(self, type_: str, where=lambda msg: True, timeout_s: float = 5.0):
        """The first received message of `type_` that `where` accepts, waiting up to `timeout_s`."""
        return wait_for(lambda: next((msg for msg in self.messages(type_) if where(msg)), None), timeout_s)

    def report(self, variant: str, **fields) -> None:
        """What heartbeats claim for `variant` (VariantMetrics fields); no fields: report what it measures."""
        with self._lock:
            if fields:
                self._overrides[variant] = fields
            else:
                self._overrides.pop(variant, None)

    def send(self, msg) -> None:
        """Send a message to the master from the worker's own socket (on its thread)."""
        with self._lock:
            self._outbox.append(msg)

    # -- the worker's thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        import heapq

        import zmq

        from infaas_cli import protocol
        from infaas_cli.protocol import messages as m

        self._protocol, self._m, self._heapq = protocol, m, heapq
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.endpoint)
        self._sock = sock
        try:
            self._register()
            next_beat = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.interval_s
                with self._lock:
                    outbox, self._outbox = self._outbox, []
                for msg in outbox:
                    self._send(msg)
                while self._due and self._due[0][0] <= time.monotonic():
                    self._answer(heapq.heappop(self._due)[2])
                while self._loading and self._loading[0][0] <= time.monotonic():
                    self._send(self._protocol.Message("loaded", m.LoadedBody(
                        variant=heapq.heappop(self._loading)[1], load_time_ms=self.load_s * 1e3,
                        worker_id=self.worker_id)))
                wake = min([next_beat] + [q[0][0] for q in (self._due, self._loading) if q])
                timeout_ms = max(0, min(20, int((wake - time.monotonic()) * 1e3)))
                if sock.poll(timeout_ms, zmq.POLLIN):
                    for _ in range(1000):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_frame(frames)
        except BaseException as exc:  # surfaced by kill(): a fake must not die quietly
            self.error = exc
            raise
        finally:
            sock.close(linger=0)

    def _send(self, msg) -> None:
        self._sock.send_multipart(self._protocol.encode(msg))

    def _register(self) -> None:
        m = self._m
        self._send(self._protocol.Message("register", m.RegisterBody(
            worker_id=self.worker_id, backends=self.backends, pid=os.getpid(),
            hardware=m.Hardware(cores=self.cores, memory_bytes=self.memory_bytes, cpu_model="fake",
                                hostname=f"host-{self.worker_id}"))))

    def _heartbeat(self) -> None:
        m, now = self._m, time.monotonic()
        variants = {}
        with self._lock:
            overrides = {k: dict(v) for k, v in self._overrides.items()}
        for name, v in self.loaded.items():
            v.done = [d for d in v.done if now - d[0] <= self.metrics_window_s]
            served = sum(d[1] for d in v.done)
            fields = dict(state="loaded" if v.ready_at <= now else "loading", queue=v.queued,
                          qps=len(v.done) / self.metrics_window_s,
                          samples_per_s=served / self.metrics_window_s,
                          latency_ms=sum(d[2] for d in v.done) / len(v.done) if v.done else 0.0,
                          threads=v.threads, replicas=v.replicas, idle_s=max(0.0, now - v.last_used))
            fields.update(overrides.get(name, {}))
            variants[name] = m.VariantMetrics(**fields)
        used = sum(v.threads * v.replicas for v in self.loaded.values())
        free_memory = self.free_memory_bytes
        if free_memory is None:
            free_memory = max(0, self.memory_bytes - sum(v.peak_memory_bytes * v.replicas
                                                         for v in self.loaded.values()))
        self._send(self._protocol.Message("heartbeat", m.HeartbeatBody(worker_id=self.worker_id, metrics=m.WorkerMetrics(
            cores=self.cores, free_cores=self.cores - used, memory_total_bytes=self.memory_bytes,
            free_memory_bytes=free_memory, variants=variants))))
        self.heartbeats_sent += 1

    def _on_frame(self, frame: bytes) -> None:
        protocol = self._protocol
        msg = protocol.decode(frame)  # the master must only ever send valid frames: fail loudly otherwise
        with self._lock:
            self.received.append(msg)
        if msg.type == "infer":
            self._on_infer(msg)
        elif msg.type == "load":
            v = self.loaded.get(msg.body.variant)
            if v is None:
                if msg.body.replaces is not None:  # a switch, as the real worker does it: the old one goes first
                    self.loaded.pop(msg.body.replaces, None)
                self._load(msg.body.spec, msg.body.replicas or 1)
            elif msg.body.replicas is not None:
                v.replicas = msg.body.replicas
                self._note_threads()
        elif msg.type == "unload":
            v = self.loaded.get(msg.body.variant)
            if v is not None and v.queued == 0:  # like the real worker: only an idle variant goes
                del self.loaded[msg.body.variant]
        elif msg.type == "error" and msg.body.code == "not_found" and msg.body.worker_id == self.worker_id:
            self._register()  # the master forgot us

    def _load(self, spec, replicas: int = 1) -> _FakeVariant:
        v = self.loaded[spec.name] = _FakeVariant(spec.threads, spec.peak_memory_bytes, replicas)
        self._note_threads()
        if self.load_s > 0:
            v.ready_at = time.monotonic() + self.load_s
            self._heapq.heappush(self._loading, (v.ready_at, spec.name))
            return v
        self._send(self._protocol.Message("loaded", self._m.LoadedBody(variant=spec.name, load_time_ms=0.0,
                                                                       worker_id=self.worker_id)))
        return v

    def _note_threads(self) -> None:
        self.peak_threads = max(self.peak_threads, sum(v.threads * v.replicas for v in self.loaded.values()))

    def _batch(self, body) -> int:
        first = next(iter(body.inputs.values()))
        return int(first.shape[0]) if body.spec.batch_dim != "none" and first.shape else 1

    def _on_infer(self, msg) -> None:
        v = self.loaded.get(msg.body.variant) or self._load(msg.body.spec)
        v.queued += self._batch(msg.body)
        v.last_used = time.monotonic()
        if not self.answer:
            self.unanswered.append(msg)
            return
        self._seq += 1
        self._heapq.heappush(self._due, (max(time.monotonic(), v.ready_at) + self.delay_s, self._seq, msg))

    def _answer(self, msg) -> None:
        protocol, body = self._protocol, msg.body
        batch = self._batch(body)
        inputs = protocol.unpack_tensors(body.inputs, msg.frames)
        if self.infer_fn is not None:
            outputs = self.infer_fn(body, inputs)
        elif body.variant in self.outputs:
            outputs = zeros_like_outputs(self.outputs[body.variant], batch)
        else:
            outputs = [np.zeros(batch, np.float32)]
        v = self.loaded.get(body.variant)
        if v is not None:
            now = time.monotonic()
            v.queued = max(0, v.queued - batch)
            v.last_used = now
            v.done.append((now, batch, self.delay_s * 1e3))
        data: list = []
        self._send(protocol.Message("result", self._m.ResultBody(
            outputs=[protocol.pack_output(o, data) for o in outputs],
            timing={"batch_size": float(batch), "run_ms": self.delay_s * 1e3, "queue_ms": 0.0}), id=msg.id,
            frames=data))


@contextlib.contextmanager
def start_master(tmp_path, catalog_home, *, autoscale=None, **settings):
    """An in-process master on loopback ephemeral ports, the catalog pushed with the real Client.push.

    Yields (master, client); `settings` are MasterSettings fields (a short heartbeat interval by default).
    The master runs in a thread and is stopped, and its thread joined, on the way out.
    """
    from infaas_cli.client import Client
    from infaas_cli.settings import MasterSettings
    from infaas_daemons.master import Master

    opts = {"client_endpoint": "tcp://127.0.0.1:0", "worker_endpoint": "tcp://127.0.0.1:0",
            "heartbeat_interval_s": 0.1, **settings}
    run_dir = Path(tmp_path) / "master"
    endpoints = run_dir / "endpoints.json"
    master = Master(run_dir / "data", MasterSettings(**opts), autoscale=autoscale, endpoints_file=endpoints)
    thread = threading.Thread(target=master.run, name="master", daemon=True)
    thread.start()
    try:
        wait_for(lambda: endpoints.is_file() or not thread.is_alive(), 10.0)
        assert thread.is_alive(), "the master stopped before binding its endpoints (see the log)"
        client = Client(master.client_endpoint, timeout_s=10.0)
        try:
            client.push(catalog_home.store, catalog_home.artifacts)
            yield master, client
        finally:
            client.close()
    finally:
        master.stop_event.set()
        thread.join(10.0)
        assert not thread.is_alive(), "the master did not stop within 10 s"


@contextlib.contextmanager
def running_cluster(home, workers: int = 1, heartbeat_interval_s: float = 0.25):
    """`infaas up` on an InfaasHome with its catalog pushed: yields (cluster record, client); `down` afterwards."""
    from infaas_cli.client import Client
    from infaas_cli.cluster import embedded

    record = embedded.up(workers=workers, home=home.path, heartbeat_interval_s=heartbeat_interval_s)
    client = Client(record["master"]["client_endpoint"], timeout_s=30.0)
    try:
        client.push(home.store, home.artifacts)
        yield record, client
    finally:
        client.close()
        embedded.down(home.path)
