"""The worker's loop, its door to the master, and its handlers (infer, load, unload, chunks, dropped artifacts,
errors).

One thread owns the ZeroMQ socket to the master; each loaded variant has executor threads
(daemons/worker/executor.py); a loader thread opens sessions (daemons/worker/loading.py). Every
`infer` gets exactly one answer: a result, or an error naming why.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import zmq

from infaas_cli import protocol
from infaas_cli.backends import advertised_keys
from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.catalog.records import TensorSpec
from infaas_cli.config import host_cores
from infaas_cli.errors import InfaasError, wire_error
from infaas_cli.protocol import messages as m
from infaas_cli.settings import SecuritySettings, Settings, WorkerSettings
from infaas_cli.toolkit.hardware import host_hardware
from infaas_cli.toolkit.modelio import SignatureChecks, coerce_query_inputs
from infaas_daemons.common import log, step
from infaas_daemons.worker.executor import _LOADER, _RESULT, LoadedVariant, QueuedQuery
from infaas_daemons.worker.loading import Loading
from infaas_daemons.worker.reprofile import Reprofiling


#: Queued messages that are sent at once, without waiting for the end of the drain.
FLUSH_AT = 16


class Worker(Loading, Reprofiling):
    """The worker daemon. `run()` blocks until `stop_event` is set (SIGTERM in the CLI)."""

    def __init__(self, settings: WorkerSettings | None = None, security: SecuritySettings | None = None) -> None:
        self.settings = settings = settings or WorkerSettings()
        security = security or SecuritySettings()
        if bool(security.curve_secret_key) != bool(security.master_public_key):
            raise InfaasError("CurveZMQ needs both security.curve_secret_key and security.master_public_key",
                              code="bad_config")
        # (own .key_secret file, master's public .key file), or None
        self.curve = (str(security.curve_secret_key), str(security.master_public_key)) \
            if security.curve_secret_key else None
        self.master_endpoint = settings.master_endpoint
        self.worker_id = settings.worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.cache = ArtifactStore(Path(settings.cache_dir) if settings.cache_dir else
                                   Path(tempfile.gettempdir()) / f"infaas-{self.worker_id}")
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self.cores = settings.cores or host_cores()
        self.stop_event = threading.Event()
        self.master_grace_s = settings.master_grace_s
        # Since when the master has been out of reach (time.monotonic()); None while connected. Not yet connected
        # counts as out of reach, so that a worker whose master never comes does not wait for ever either.
        self._master_lost_at: float | None = time.monotonic()
        self.exit_reason: str | None = None  # set when the worker stops by itself (its master gone): the CLI exits 1
        self._out: list[list] = []  # messages to the master, sent by _flush() after each drain
        self._checks = SignatureChecks()  # _check_inputs' verdicts
        self.variants: dict[str, LoadedVariant] = {}
        self.loading: dict[str, m.VariantSpec] = {}
        self.parked: dict[str, list[QueuedQuery]] = {}  # variant -> queries waiting for its load
        self.waiting_budget: dict[str, m.VariantSpec] = {}
        self.retiring: set[str] = set()  # switched out: unloaded once idle, then their replacement loads
        self.waiting_since: dict[str, float] = {}
        self.fetches: dict[str, Any] = {}
        self.fetch_waiters: dict[str, list[m.VariantSpec]] = {}
        self.drop_later: set[str] = set()  # cached artifacts to delete once the variant using them unloads
        # Placement keys: the available backends and the host capabilities their recipes need ("ov-cpu+bf16"),
        # so that the master never sends this worker a variant its host cannot run as profiled.
        self.backends = advertised_keys()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        # Sessions the loader opened, handed to the loop (dict operations are atomic under the GIL).
        self._ready: dict[str, Any] = {}
        self.loading_replicas: dict[str, int] = {}  # extra replicas being opened, per variant
        self.pinned: set[str] = set()  # variants an operator pinned (load.pinned): never evicted to make room
        self._inputs: dict[tuple[str, str], list[TensorSpec]] = {}
        self._results_endpoint = f"inproc://results-{uuid.uuid4().hex}"
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        return cls(settings.worker, settings.security)

    # -- loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        ctx = zmq.Context.instance()
        self.ctx = ctx
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        # Results are bounded by the queries the master has in flight here: never drop one for a full pipe.
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_FRAME_BYTES)
        if self.curve:
            from infaas_cli.security import make_client

            make_client(self.sock, *self.curve)
        # Is the master there? ZMTP heartbeats (PING/PONG answered by the master's ZeroMQ I/O thread: no message,
        # no work on its loop) drop a connection to a master that is gone without closing it (a host lost, a
        # process stopped); the socket's monitor then says when the connection is lost, and when it is back.
        interval_ms = max(100, int(self.heartbeat_interval_s * 1e3))
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * interval_ms)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(self.master_endpoint)
        self.results = ctx.socket(zmq.PULL)
        self.results.bind(self._results_endpoint)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.results, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        self._register()
        next_beat = time.monotonic() + self.heartbeat_interval_s
        log.info("worker %s connected to %s (%d cores, backends %s)", self.worker_id, self.master_endpoint,
                 self.cores, ",".join(self.backends))
        try:
            while not self.stop_event.is_set():
                self._flush()  # what the last turn produced, in one burst, before waiting again
                timeout_ms = max(0, int((next_beat - time.monotonic()) * 1e3))
                for sock, _ in poller.poll(min(timeout_ms, 100)):
                    if sock is self.sock:
                        self._drain_master()
                    elif sock is self.monitor:
                        self._step(self._drain_monitor)
                    else:
                        self._drain_results()
                if time.monotonic() >= next_beat:
                    self._step(self._check_master)
                    self._step(self._retire_idle)
                    self._step(self._heartbeat)
                    self._step(self._retry_budget)
                    next_beat = time.monotonic() + self.heartbeat_interval_s
        finally:
            for v in list(self.variants.values()):
                v.stop()
            self._loader.shutdown(wait=False, cancel_futures=True)
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.sock.close(linger=0)
            self.results.close(linger=0)
            log.info("worker %s stopped", self.worker_id)

    def _step(self, fn, *args) -> None:
        step("worker", fn, *args)

    def _drain_monitor(self) -> None:
        """Connection events: the handshake with the master done (it is there), or the connection lost."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            now = time.monotonic()
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self._master_lost_at is not None:
                    log.info("connected to the master at %s", self.master_endpoint)
                self._master_lost_at = None
            elif event == zmq.EVENT_DISCONNECTED and self._master_lost_at is None:
                self._master_lost_at = now
                log.warning("lost the connection to the master at %s; retrying, and exiting if it is not back "
                            "within %g s (worker.master_grace_s)", self.master_endpoint, self.master_grace_s)

    def _check_master(self) -> None:
        """Stop when the master has been out of reach longer than the grace period: locally nothing is left
        running orphaned; on a cluster systemd restarts the worker (it exits with a failure status), which then waits
        for its master anew."""
        lost_at = self._master_lost_at
        if lost_at is None or self.master_grace_s <= 0:
            return
        gone_s = time.monotonic() - lost_at
        if gone_s >= self.master_grace_s:
            self.exit_reason = (f"the master at {self.master_endpoint} has been out of reach for {gone_s:.0f} s "
                                f"(worker.master_grace_s = {self.master_grace_s:g} s); the worker exits rather than "
                                "run orphaned")
            log.error("%s", self.exit_reason)
            self.stop_event.set()

    def _drain_master(self) -> None:
        for _ in range(1000):  # bounded, so heartbeats still go out under a flood
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)  # inputs are viewed, not copied
            except zmq.Again:
                return
            self._step(self._door, frames)

    def _drain_results(self) -> None:
        while True:
            try:
                frames = self.results.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            tag = frames[0].bytes
            if tag == _RESULT:
                self._send_frames(frames[1:])
            elif tag == _LOADER:
                self._step(self._on_loader, [f.bytes for f in frames])
            if self.retiring:
                self._step(self._retire_idle)

    def _send_frames(self, frames: list) -> None:
        """Queue one message's frames (envelope, then tensor data) for the next flush: the loop sends what a
        drain produced in one burst, so ZeroMQ's I/O thread is woken once per burst, not once per reply."""
        self._out.append(frames)
        if len(self._out) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        """Send the queued messages, zero-copy above ZeroMQ's copy threshold."""
        out, self._out = self._out, []
        for frames in out:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=not protocol.zero_copy(frames))
            except zmq.ZMQError as exc:
                log.warning("could not send to master: %s", exc)

    def _send(self, msg: protocol.Message) -> None:
        try:
            self._send_frames(protocol.encode(msg))
        except protocol.ProtocolError as exc:
            log.error("cannot encode %s %s: %s", msg.type, msg.id, exc.reason)

    # -- the door --------------------------------------------------------------------------------------
    def _door(self, frames: list) -> None:
        """One message from the master: validated, then handled; a failure is answered with an error."""
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            log.warning("bad frame from master: %s", exc.reason)
            self._send(protocol.error(exc.code, exc.reason, protocol.peek_id(frames)))
            return
        handler = {"infer": self._on_infer, "load": self._on_load, "unload": self._on_unload,
                   "artifact_chunk": self._on_chunk, "drop_artifacts": self._on_drop_artifacts,
                   "registered": lambda msg: None,
                   "reprofile": self._on_reprofile,
                   "error": self._on_master_error}.get(msg.type)
        if handler is None:
            self._send(protocol.error("unknown_type", f"a worker does not take {msg.type} messages", msg.id))
            return
        try:
            handler(msg)
        except Exception as exc:
            code, reason, extra = wire_error(exc)
            if code == "internal":
                log.exception("%s %s failed", msg.type, msg.id)
            if msg.type not in ("error", "registered"):  # never answer an answer
                self._send(protocol.error(code, reason, msg.id, **extra))

    # -- handlers --------------------------------------------------------------------------------------
    def _input_specs(self, spec: m.VariantSpec) -> list[TensorSpec]:
        key = (spec.name, spec.artifact_sha256)
        specs = self._inputs.get(key)
        if specs is None:
            if len(self._inputs) > 4096:
                self._inputs.clear()
            specs = self._inputs[key] = [TensorSpec(s.name, s.type, s.dtype, s.shape) for s in spec.inputs]
        return specs

    def _check_inputs(self, spec: m.VariantSpec, inputs: dict[str, m.Tensor]) -> tuple[int, bool]:
        """(batch size, whether a cast or a renaming is needed) of inputs with these descriptors, checked against
        the variant's inputs once per (variant, signature)."""
        signature = tuple((name, t.dtype, tuple(t.shape)) for name, t in inputs.items())
        try:
            return self._checks.check((spec.name, spec.artifact_sha256), signature, self._input_specs(spec),
                                      spec.batch_dim, spec.max_batch)
        except InfaasError as exc:
            raise protocol.ProtocolError("invalid_input", str(exc)) from None

    def _on_infer(self, msg: protocol.Message) -> None:
        b: m.InferBody = msg.body
        spec = b.spec
        batch, cast = self._check_inputs(spec, b.inputs)
        # Views of the received frames; only a dtype cast (float64 sent to a float32 model) copies.
        feeds = protocol.unpack_tensors(b.inputs, msg.frames)
        if cast:
            feeds, _ = coerce_query_inputs(feeds, self._input_specs(spec))
        now = time.monotonic()
        deadline = now + b.deadline_ms / 1e3 if b.deadline_ms else float("inf")
        query = QueuedQuery(msg.id, feeds, batch, deadline, now)
        loaded = self.variants.get(spec.name)
        if loaded is not None:
            for frames in loaded.submit(query) or ():
                self._send_frames(frames)
            return
        self.parked.setdefault(spec.name, []).append(query)
        self._ensure_loaded(spec)

    def _on_load(self, msg: protocol.Message) -> None:
        """Load a variant, or set its replica count (body "replicas"), within the thread budget."""
        b: m.LoadBody = msg.body
        spec, want = b.spec, b.replicas
        if b.pinned:
            self.pinned.add(spec.name)
        loaded = self.variants.get(spec.name)
        if loaded is None:
            if b.replaces and b.replaces in self.variants and b.replaces != spec.name:
                self.retiring.add(b.replaces)  # a switch: the old variant drains and unloads first
                self._retire_idle()
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
        self.pinned.discard(msg.body.variant)
        if msg.body.variant in self.variants:  # a busy variant finishes its queue first
            self.retiring.add(msg.body.variant)
            self._retire_idle()

    def _on_master_error(self, msg: protocol.Message) -> None:
        b: m.ErrorBody = msg.body
        if b.code == "not_found" and b.worker_id == self.worker_id:
            self._register()  # the master restarted and forgot us
        elif b.sha256 in self.fetches:
            self._fetch_failed(b.sha256, b.reason)
        else:
            log.warning("master error %s: %s", b.code, b.reason)

    # -- registration and heartbeats -----------------------------------------------------------------
    def _register(self) -> None:
        hw = host_hardware()
        hw["cores"] = self.cores
        self._send(protocol.Message("register", m.RegisterBody(worker_id=self.worker_id, hardware=m.Hardware(**hw),
                                                               backends=self.backends, pid=os.getpid())))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        mem = psutil.virtual_memory()
        variants = {name: v.metrics(now) for name, v in self.variants.items()}
        for name in self.retiring & variants.keys():
            variants[name].state = "retiring"
        for name, spec in self.loading.items():
            variants[name] = m.VariantMetrics(state="loading", queue=sum(q.batch for q in self.parked.get(name, [])),
                                              threads=spec.threads)
        metrics = m.WorkerMetrics(
            cpu_percent=psutil.cpu_percent(None), process_cpu_percent=self._proc.cpu_percent(None),
            process_rss_bytes=self._proc.memory_info().rss,
            memory_total_bytes=mem.total, free_memory_bytes=mem.available,
            cores=self.cores, free_cores=max(0, self.cores - self._threads_in_use()), variants=variants)
        self._send(protocol.Message("heartbeat", m.HeartbeatBody(worker_id=self.worker_id, metrics=metrics)))
