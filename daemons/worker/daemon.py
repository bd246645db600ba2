"""The worker daemon: loads variants on demand, batches queries per variant, runs them, reports metrics.

One thread owns the ZeroMQ socket to the master (the event loop); each loaded variant has an
executor thread with its queue; a loader thread opens sessions. Executor and loader threads hand
finished frames back to the loop over an inproc PUSH/PULL pair, so the master socket is only ever
touched by the loop thread.
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import ArtifactStore, sha256_file
from infaas_cli.backends import BACKENDS, backend as backend_named
from infaas_cli.config import host_cores
from infaas_cli.errors import InfaasError
from infaas_cli.toolkit.hardware import host_hardware
from infaas_cli.toolkit.modelio import check_query_inputs, synthetic_inputs
from infaas_cli.catalog.records import TensorSpec
from infaas_daemons.common import log, safe_send, step

#: Longest a batch waits for more queries, even when the SLOs would allow more.
MAX_BATCH_WAIT_MS = 2.0
#: Variants predicted to run a query this fast are run on the event-loop thread when idle (no handoff).
INLINE_MAX_MS = 1.0
#: How long a load may wait for busy variants to free cores before its queries fail explicitly.
BUDGET_WAIT_S = 5.0
#: Window over which queries per second and latency are reported.
METRICS_WINDOW_S = 5.0


@dataclass
class QueuedQuery:
    request_id: str
    feeds: dict[str, np.ndarray]
    batch: int
    deadline: float  # time.monotonic() by which the result is due (inf without a latency SLO)
    arrived: float


@dataclass
class VariantSpec:
    """What the master tells a worker about a variant so it can load and run it."""

    name: str
    backend: str
    recipe: str
    threads: int
    max_batch: int
    batch_dim: str
    artifact_sha256: str
    inputs: list[TensorSpec]
    latency_ms: dict[int, float] = field(default_factory=dict)  # profiled, per batch size
    peak_memory_bytes: int = 0  # profiled

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> VariantSpec:
        try:
            return cls(name=d["name"], backend=d["backend"], recipe=d["recipe"], threads=int(d["threads"]),
                       max_batch=int(d["max_batch"]), batch_dim=d["batch_dim"], artifact_sha256=d["artifact_sha256"],
                       inputs=[TensorSpec(**s) for s in d["inputs"]],
                       latency_ms={int(k): float(v) for k, v in (d.get("latency_ms") or {}).items()},
                       peak_memory_bytes=int(d.get("peak_memory_bytes") or 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise protocol.ProtocolError("bad_request", f"variant spec is incomplete: {exc}") from None

    def predicted_ms(self, batch: int) -> float:
        fitting = [b for b in self.latency_ms if b >= batch]
        if fitting:
            return self.latency_ms[min(fitting)]
        if self.latency_ms:
            biggest = max(self.latency_ms)
            return self.latency_ms[biggest] * batch / biggest
        return 0.0


class LoadedVariant:
    """A loaded variant: its queue and its replicas — one session and one executor thread each —
    which take batches from the shared queue."""

    def __init__(self, spec: VariantSpec, runner, ctx: zmq.Context, results_endpoint: str) -> None:
        self.spec = spec
        self.queue: collections.deque[QueuedQuery] = collections.deque()
        self.cond = threading.Condition()
        self.running = True
        self.busy = 0  # replicas running a batch now
        self.last_used = time.monotonic()
        self.completed: collections.deque[tuple[float, float, int]] = collections.deque()  # (done_at, latency_ms, samples)
        self._last_arrival = 0.0
        self.arrival_gap_s = float("inf")  # moving average of the time between arrivals
        self._ctx = ctx
        self._endpoint = results_endpoint
        self.replicas: list[tuple[Any, threading.Event, threading.Thread]] = []
        self.add_replica(runner)

    def add_replica(self, runner) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(runner, stop), daemon=True,
                                  name=f"variant-{self.spec.name}-{len(self.replicas)}")
        self.replicas.append((runner, stop, thread))
        thread.start()

    def remove_replica(self) -> bool:
        """Stop the newest replica (it finishes its batch first); the last one stays."""
        if len(self.replicas) <= 1:
            return False
        runner, stop, thread = self.replicas.pop()
        stop.set()
        with self.cond:
            self.cond.notify_all()
        thread.join(timeout=5)
        runner.close()
        return True

    @property
    def threads(self) -> int:
        return self.spec.threads * len(self.replicas)

    def submit(self, query: QueuedQuery) -> list[bytes] | None:
        """Queue a query for the executor thread — or, for a fast variant that is idle at low load,
        run it right here and return the result frames (two thread handoffs saved)."""
        with self.cond:
            gap = query.arrived - self._last_arrival
            self._last_arrival = query.arrived
            self.arrival_gap_s = gap if self.arrival_gap_s == float("inf") else 0.8 * self.arrival_gap_s + 0.2 * gap
            self.last_used = time.monotonic()
            spec = self.spec
            inline = (not self.queue and not self.busy and len(self.replicas) == 1 and spec.latency_ms
                      and spec.predicted_ms(query.batch) <= INLINE_MAX_MS
                      and self.arrival_gap_s * 1e3 >= spec.predicted_ms(min(spec.max_batch, query.batch + 1)))
            if not inline:
                self.queue.append(query)
                self.cond.notify()
                return None
            self.busy += 1
        try:
            return self._run([query], self.replicas[0][0])
        finally:
            with self.cond:
                self.busy -= 1
                self.last_used = time.monotonic()
                if self.queue:
                    self.cond.notify()

    def idle(self) -> bool:
        with self.cond:
            return not self.queue and not self.busy

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        for runner, _, thread in self.replicas:
            thread.join(timeout=5)
            runner.close()

    def _take_batch(self, stop: threading.Event) -> list[QueuedQuery] | None:
        """Wait for work; then batch what is queued, waiting for more only when it pays.

        Queries pile up while a batch runs, so under load batches form by themselves. Waiting
        on top of that helps only when queries arrive faster than a batch is served, and then
        only as long as the tightest queued deadline leaves slack (and never over
        MAX_BATCH_WAIT_MS). At low load a query runs at once.
        """
        spec = self.spec
        with self.cond:
            while self.running and not stop.is_set() and not self.queue:
                self.cond.wait(0.5)
            if not self.running or stop.is_set():
                return None
            if spec.batch_dim == "none":
                self.busy += 1
                return [self.queue.popleft()]
            while True:
                size = sum(q.batch for q in self.queue)
                if size >= spec.max_batch or self.arrival_gap_s * 1e3 >= spec.predicted_ms(size + 1):
                    break
                tightest = min(q.deadline for q in self.queue)
                slack_s = tightest - time.monotonic() - spec.predicted_ms(min(spec.max_batch, size + 1)) / 1e3
                oldest_wait_s = time.monotonic() - self.queue[0].arrived
                wait_s = min(slack_s, MAX_BATCH_WAIT_MS / 1e3 - oldest_wait_s)
                if wait_s <= 0:
                    break
                self.cond.wait(wait_s)
                if not self.running or stop.is_set() or not self.queue:
                    return [] if self.running and not stop.is_set() else None
            batch, size = [], 0
            shape_key = _shape_key(self.queue[0].feeds)
            while self.queue and size + self.queue[0].batch <= spec.max_batch \
                    and _shape_key(self.queue[0].feeds) == shape_key:
                q = self.queue.popleft()
                batch.append(q)
                size += q.batch
            if not batch:  # a single query larger than max batch cannot happen (checked on arrival)
                batch.append(self.queue.popleft())
            self.busy += 1
            return batch

    def _loop(self, runner, stop: threading.Event) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.connect(self._endpoint)
        try:
            while True:
                batch = self._take_batch(stop)
                if batch is None:
                    return
                if not batch:  # another replica took the queue while this one waited
                    continue
                try:
                    for frame in self._run(batch, runner):
                        push.send_multipart([_RESULT, frame])
                finally:
                    with self.cond:
                        self.busy -= 1
                        self.last_used = time.monotonic()
        finally:
            push.close(linger=1000)

    def _run(self, batch: list[QueuedQuery], runner) -> list[bytes]:
        spec = self.spec
        started = time.monotonic()
        size = sum(q.batch for q in batch)
        try:
            if spec.batch_dim == "none":
                feeds = batch[0].feeds
            else:
                feeds = {name: np.concatenate([q.feeds[name] for q in batch], axis=0) for name in batch[0].feeds}
                if spec.batch_dim == "fixed" and size < spec.max_batch:  # pad to the fixed batch
                    feeds = {k: np.concatenate([v, np.repeat(v[-1:], spec.max_batch - size, axis=0)])
                             for k, v in feeds.items()}
            outputs = runner.run(feeds)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            return [protocol.encode(protocol.error("invalid_input", f"{spec.name} failed on the input: {reason}",
                                                   q.request_id)) for q in batch]
        inference_ms = (time.monotonic() - started) * 1e3
        frames, offset = [], 0
        now = time.monotonic()
        for q in batch:
            outs = outputs if spec.batch_dim == "none" else [o[offset:offset + q.batch] for o in outputs]
            offset += q.batch
            timing = {"queue_ms": (started - q.arrived) * 1e3, "inference_ms": inference_ms, "batch_size": size,
                      "worker_ms": (now - q.arrived) * 1e3}
            try:
                body = {"outputs": [protocol.pack_output(o) for o in outs], "timing": timing}
                frames.append(protocol.encode(protocol.Message("result", body, id=q.request_id)))
            except protocol.ProtocolError as exc:
                frames.append(protocol.encode(protocol.error("internal", exc.reason, q.request_id)))
            with self.cond:
                self.completed.append((now, (now - q.arrived) * 1e3, q.batch))
        return frames

    def metrics(self, now: float) -> dict[str, Any]:
        with self.cond:
            while self.completed and self.completed[0][0] < now - METRICS_WINDOW_S:
                self.completed.popleft()
            done = list(self.completed)
            queued = sum(q.batch for q in self.queue)
        return {"queue": queued, "qps": len(done) / METRICS_WINDOW_S,
                "samples_per_s": sum(d[2] for d in done) / METRICS_WINDOW_S,
                "latency_ms": float(np.mean([d[1] for d in done])) if done else 0.0,
                "threads": self.threads, "replicas": len(self.replicas), "state": "loaded",
                "idle_s": now - self.last_used}


_RESULT, _LOADER = b"R", b"L"  # tags on the inproc channel: forward as-is, or for the loop itself


def _shape_key(feeds: dict[str, np.ndarray]) -> tuple:
    return tuple((k, v.shape[1:]) for k, v in sorted(feeds.items()))


@dataclass
class _Fetch:
    sha256: str
    path: Path
    offset: int = 0


class Worker:
    """The worker daemon. `run()` blocks until `stop` is set (SIGTERM in the CLI)."""

    def __init__(self, master_endpoint: str, worker_id: str | None = None, cache_dir: str | Path | None = None,
                 heartbeat_interval_s: float = 1.0, cores: int | None = None,
                 curve: tuple[str, str] | None = None) -> None:
        self.curve = curve  # (own .key_secret file, master's public .key file), or None
        self.master_endpoint = master_endpoint
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.cache = ArtifactStore(Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) /
                                   f"infaas-{self.worker_id}")
        self.heartbeat_interval_s = heartbeat_interval_s
        self.cores = cores or host_cores()
        self.stop_event = threading.Event()
        self.variants: dict[str, LoadedVariant] = {}
        self.loading: dict[str, VariantSpec] = {}
        self.parked: dict[str, list[QueuedQuery]] = collections.defaultdict(list)  # variant -> waiting queries
        self.waiting_budget: list[VariantSpec] = []
        self.waiting_since: dict[str, float] = {}
        self.fetches: dict[str, _Fetch] = {}
        self.fetch_waiters: dict[str, list[VariantSpec]] = collections.defaultdict(list)
        self.backends = [b.name for b in BACKENDS if b.availability().available]
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        # Sessions the loader opened, handed to the loop (dict operations are atomic under the GIL).
        self._ready: dict[str, Any] = {}
        self.loading_replicas: dict[str, int] = {}  # extra replicas being opened, per variant
        self._spec_cache: dict[tuple, VariantSpec] = {}
        self._results_endpoint = f"inproc://results-{uuid.uuid4().hex}"
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)

    # -- loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        ctx = zmq.Context.instance()
        self.ctx = ctx
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.curve:
            from infaas_cli.security import make_client

            make_client(self.sock, *self.curve)
        self.sock.connect(self.master_endpoint)
        self.results = ctx.socket(zmq.PULL)
        self.results.bind(self._results_endpoint)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.results, zmq.POLLIN)
        self._register()
        next_beat = time.monotonic() + self.heartbeat_interval_s
        log.info("worker %s connected to %s (%d cores, backends %s)", self.worker_id, self.master_endpoint,
                 self.cores, ",".join(self.backends))
        try:
            while not self.stop_event.is_set():
                timeout_ms = max(0, int((next_beat - time.monotonic()) * 1e3))
                for sock, _ in poller.poll(min(timeout_ms, 100)):
                    if sock is self.sock:
                        self._drain_master()
                    else:
                        self._drain_results()
                if time.monotonic() >= next_beat:
                    self._step(self._heartbeat)
                    self._step(self._retry_budget)
                    next_beat = time.monotonic() + self.heartbeat_interval_s
        finally:
            for v in list(self.variants.values()):
                v.stop()
            self._loader.shutdown(wait=False, cancel_futures=True)
            self.sock.close(linger=0)
            self.results.close(linger=0)
            log.info("worker %s stopped", self.worker_id)

    def _step(self, fn, *args) -> None:
        step("worker", fn, *args)

    def _drain_master(self) -> None:
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._step(self._handle_frame, frame)

    def _drain_results(self) -> None:
        while True:
            try:
                tag, frame = self.results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if tag == _RESULT:
                self._send_frame(frame)
                continue
            msg = protocol.decode(frame)
            if msg.type == "loaded":
                self._step(self._on_loaded, msg)
            else:
                self._step(self._on_load_failed, msg)

    def _send_frame(self, frame: bytes) -> None:
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send to master: %s", exc)

    def _send(self, msg: protocol.Message) -> None:
        safe_send(self.sock, msg)

    # -- messages from the master --------------------------------------------------------------------
    def _handle_frame(self, frame: bytes) -> None:
        try:
            msg = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            log.warning("bad frame from master: %s", exc.reason)
            self._send(protocol.error(exc.code, exc.reason, protocol.peek_id(frame)))
            return
        handler = {"infer": self._on_infer, "load": self._on_load, "unload": self._on_unload,
                   "artifact_chunk": self._on_chunk, "registered": lambda m: None,
                   "error": self._on_master_error}.get(msg.type)
        if handler is None:
            self._send(protocol.error("unknown_type", f"a worker does not take {msg.type} messages", msg.id))
            return
        try:
            handler(msg)
        except protocol.ProtocolError as exc:
            self._send(protocol.error(exc.code, exc.reason, msg.id))
        except InfaasError as exc:
            self._send(protocol.error(getattr(exc, "code", "internal") if getattr(exc, "code", "") in
                                      protocol.ERROR_CODES else "internal", str(exc), msg.id))

    def _spec(self, body: dict[str, Any]) -> VariantSpec:
        raw = body.get("spec") or {}
        key = (raw.get("name"), raw.get("artifact_sha256"))
        spec = self._spec_cache.get(key)
        if spec is None:
            spec = self._spec_cache[key] = VariantSpec.from_body(raw)
        return spec

    def _on_infer(self, msg: protocol.Message) -> None:
        spec = self._spec(msg.body)
        feeds = protocol.unpack_tensors(msg.body["inputs"])
        try:
            batch = check_query_inputs(feeds, spec.inputs, spec.batch_dim, spec.max_batch)
        except InfaasError as exc:
            raise protocol.ProtocolError("invalid_input", str(exc)) from None
        deadline_ms = msg.body.get("deadline_ms")
        now = time.monotonic()
        deadline = now + float(deadline_ms) / 1e3 if deadline_ms else float("inf")
        query = QueuedQuery(msg.id, feeds, batch, deadline, now)
        loaded = self.variants.get(spec.name)
        if loaded is not None:
            for frame in loaded.submit(query) or ():
                self._send_frame(frame)
            return
        self.parked[spec.name].append(query)
        self._ensure_loaded(spec)

    def _on_load(self, msg: protocol.Message) -> None:
        """Load a variant, or set its replica count (body "replicas"), within the thread budget."""
        spec = self._spec(msg.body)
        want = msg.body.get("replicas")
        want = max(1, int(want)) if isinstance(want, int) else None
        loaded = self.variants.get(spec.name)
        if loaded is None:
            self._ensure_loaded(spec)
            return
        if want is None:
            return
        have = len(loaded.replicas) + self.loading_replicas.get(spec.name, 0)
        if want > have:
            for _ in range(want - have):
                if self._threads_in_use() + spec.threads > self.cores:
                    log.info("no free cores for another replica of %s", spec.name)
                    break
                self.loading_replicas[spec.name] = self.loading_replicas.get(spec.name, 0) + 1
                self._loader.submit(self._load, spec)
        else:
            while len(loaded.replicas) > want and loaded.remove_replica():
                log.info("removed a replica of %s (%d left)", spec.name, len(loaded.replicas))

    def _on_unload(self, msg: protocol.Message) -> None:
        loaded = self.variants.get(msg.body["variant"])
        if loaded is not None and loaded.idle():
            self._unload(loaded.spec.name)

    def _on_master_error(self, msg: protocol.Message) -> None:
        code = msg.body.get("code")
        if code == "not_found" and msg.body.get("worker_id") == self.worker_id:
            self._register()  # the master restarted and forgot us
        elif msg.body.get("sha256") in self.fetches:
            sha = msg.body["sha256"]
            fetch = self.fetches.pop(sha)
            fetch.path.unlink(missing_ok=True)
            for spec in self.fetch_waiters.pop(sha, []):
                self.loading.pop(spec.name, None)
                self._fail_parked(spec.name, "not_found", f"artifact of {spec.name} unavailable: {msg.body.get('reason')}")
        else:
            log.warning("master error %s: %s", code, msg.body.get("reason"))

    # -- loading -------------------------------------------------------------------------------------
    def _ensure_loaded(self, spec: VariantSpec) -> None:
        if spec.name in self.loading or spec.name in self.variants or spec in self.waiting_budget:
            return
        if spec.backend not in self.backends:
            self._fail_parked(spec.name, "unavailable", f"backend {spec.backend} is not available on {self.worker_id}")
            return
        if not self._make_room(spec.threads, spec.peak_memory_bytes):
            self.waiting_budget.append(spec)
            self.waiting_since.setdefault(spec.name, time.monotonic())
            return
        self.waiting_since.pop(spec.name, None)
        self.loading[spec.name] = spec
        if self.cache.has(spec.artifact_sha256):
            self._loader.submit(self._load, spec)
        else:
            self.fetch_waiters[spec.artifact_sha256].append(spec)
            if spec.artifact_sha256 not in self.fetches:
                self.cache.root.mkdir(parents=True, exist_ok=True)
                # The cache may be shared by the workers of one host: each fetches into its own file,
                # and the content-addressed store renames it into place atomically.
                path = self.cache.root / f".fetch-{spec.artifact_sha256}-{self.worker_id}"
                path.write_bytes(b"")
                self.fetches[spec.artifact_sha256] = _Fetch(spec.artifact_sha256, path)
                self._send(protocol.Message("fetch", {"sha256": spec.artifact_sha256, "offset": 0,
                                                      "worker_id": self.worker_id}))

    def _threads_in_use(self) -> int:
        extra = sum(self.variants[n].spec.threads * k for n, k in self.loading_replicas.items() if n in self.variants)
        return sum(v.threads for v in self.variants.values()) + sum(s.threads for s in self.loading.values()) + extra

    def _make_room(self, threads: int, memory_bytes: int = 0) -> bool:
        """Keep thread budgets within the host's cores and loads within free memory, unloading idle
        variants (least recently used first)."""
        while memory_bytes and psutil.virtual_memory().available < memory_bytes:
            idle = [v for v in self.variants.values() if v.idle() and not self.parked.get(v.spec.name)]
            if not idle:
                break  # nothing to give back; the load may still fit (profiles overestimate shared pages)
            victim = min(idle, key=lambda v: v.last_used)
            log.info("unloading idle %s to free memory", victim.spec.name)
            self._unload(victim.spec.name)
        while self._threads_in_use() + threads > self.cores:
            idle = [v for v in self.variants.values() if v.idle() and not self.parked.get(v.spec.name)]
            if not idle:
                return not self.variants and not self.loading  # alone, a variant may use every core
            victim = min(idle, key=lambda v: v.last_used)
            log.info("unloading idle %s to free %d thread(s)", victim.spec.name, victim.spec.threads)
            self._unload(victim.spec.name)
        return True

    def _retry_budget(self) -> None:
        """Retry loads that waited for cores; past BUDGET_WAIT_S their queries get an explicit error."""
        waiting, self.waiting_budget = self.waiting_budget, []
        now = time.monotonic()
        for spec in waiting:
            if now - self.waiting_since.get(spec.name, now) > BUDGET_WAIT_S:
                self.waiting_since.pop(spec.name, None)
                busy = ", ".join(f"{n} ({v.threads})" for n, v in self.variants.items())
                self._fail_parked(spec.name, "unavailable",
                                  f"{self.worker_id} has no free cores for {spec.name} ({spec.threads} thread(s)); "
                                  f"its {self.cores} cores run {busy or 'loads in progress'}")
                continue
            self._ensure_loaded(spec)

    def _unload(self, name: str) -> None:
        loaded = self.variants.pop(name, None)
        if loaded is not None:
            loaded.stop()

    def _on_chunk(self, msg: protocol.Message) -> None:
        sha = msg.body["sha256"]
        fetch = self.fetches.get(sha)
        if fetch is None or msg.body["offset"] != fetch.offset:
            return  # a stale or duplicate chunk
        data = msg.body["data"]
        with open(fetch.path, "ab") as fh:
            fh.write(data)
        fetch.offset += len(data)
        if fetch.offset < msg.body["total_bytes"]:
            self._send(protocol.Message("fetch", {"sha256": sha, "offset": fetch.offset, "worker_id": self.worker_id}))
            return
        del self.fetches[sha]
        waiters = self.fetch_waiters.pop(sha, [])
        if sha256_file(fetch.path) != sha:
            fetch.path.unlink(missing_ok=True)
            for spec in waiters:
                self.loading.pop(spec.name, None)
                self._fail_parked(spec.name, "checksum", f"artifact of {spec.name} arrived corrupt; query again")
            return
        self.cache.put_file(fetch.path)
        fetch.path.unlink(missing_ok=True)
        for spec in waiters:
            self._loader.submit(self._load, spec)

    def _load(self, spec: VariantSpec) -> None:
        """Loader thread: open the session, warm it up, hand it to the loop."""
        push = self.ctx.socket(zmq.PUSH)
        push.connect(self._results_endpoint)
        try:
            started = time.monotonic()
            runner = backend_named(spec.backend).load(self.cache.verify(spec.artifact_sha256), spec.recipe,
                                                      spec.threads)
            warm = synthetic_inputs(spec.inputs, spec.batch_dim, 1)
            runner.run({k: v[0] for k, v in warm.items()} if spec.batch_dim == "none" else warm)
            load_ms = (time.monotonic() - started) * 1e3
            token = uuid.uuid4().hex
            self._ready[token] = runner
            push.send_multipart([_LOADER, protocol.encode(protocol.Message(
                "loaded", {"variant": spec.name, "load_time_ms": load_ms, "worker_id": self.worker_id,
                           "token": token}))])
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            push.send_multipart([_LOADER, protocol.encode(protocol.error(
                "internal", f"loading {spec.name} failed: {reason}", variant=spec.name))])
        finally:
            push.close(linger=1000)

    def _on_loaded(self, msg: protocol.Message) -> None:
        name = msg.body["variant"]
        runner = self._ready.pop(msg.body.get("token"), None)
        if runner is None:
            return
        if name in self.variants and self.loading_replicas.get(name):  # an extra replica
            self.loading_replicas[name] -= 1
            self.variants[name].add_replica(runner)
            log.info("added a replica of %s (%d now)", name, len(self.variants[name].replicas))
            self._send(msg)
            return
        spec = self.loading.pop(name, None)
        if spec is None:
            runner.close()
            return
        loaded = LoadedVariant(spec, runner, self.ctx, self._results_endpoint)
        self.variants[name] = loaded
        for q in self.parked.pop(name, []):
            for frame in loaded.submit(q) or ():
                self._send_frame(frame)
        self._send(msg)
        log.info("loaded %s in %.1f ms", name, msg.body["load_time_ms"])

    def _on_load_failed(self, msg: protocol.Message) -> None:
        name = msg.body.get("variant", "")
        if self.loading_replicas.get(name):
            self.loading_replicas[name] -= 1
            return
        self.loading.pop(name, None)
        self._fail_parked(name, "internal", msg.body.get("reason", "load failed"))

    def _fail_parked(self, name: str, code: str, reason: str) -> None:
        for q in self.parked.pop(name, []):
            self._send(protocol.error(code, reason, q.request_id))

    # -- registration and heartbeats -----------------------------------------------------------------
    def _register(self) -> None:
        hw = host_hardware()
        hw["cores"] = self.cores
        self._send(protocol.Message("register", {"worker_id": self.worker_id, "hardware": hw,
                                                 "backends": self.backends, "pid": os.getpid()}))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        mem = psutil.virtual_memory()
        variants = {name: v.metrics(now) for name, v in self.variants.items()}
        for name, spec in self.loading.items():
            variants[name] = {"queue": sum(q.batch for q in self.parked.get(name, [])), "qps": 0.0,
                              "latency_ms": 0.0, "threads": spec.threads, "state": "loading", "idle_s": 0.0}
        metrics = {
            "cpu_percent": psutil.cpu_percent(None), "process_cpu_percent": self._proc.cpu_percent(None),
            "memory_total_bytes": mem.total, "free_memory_bytes": mem.available,
            "cores": self.cores, "free_cores": max(0, self.cores - self._threads_in_use()),
            "variants": variants,
        }
        self._send(protocol.Message("heartbeat", {"worker_id": self.worker_id, "metrics": metrics}))

