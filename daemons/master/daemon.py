"""The master daemon: owns the replicated catalog, picks a variant and a worker per query, tracks workers.

A thin loop over two ROUTER sockets (clients, workers): decode → update state or call the pure
selection policy → send. Every handler runs in its own try/except; a malformed message is
answered with an error and changes nothing.
"""

from __future__ import annotations

import collections
import json
import os
import shlex
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import ArtifactStore, sha256_file
from infaas_cli.errors import InfaasError
from infaas_cli.catalog.listings import pick_profile
from infaas_cli.toolkit.modelio import check_query_inputs, coerce_query_inputs
from infaas_cli.catalog.records import ReplicationRecord, VariantRecord
from infaas_cli.policy.autoscale import (AutoscaleConfig, VariantLoad, VariantState, WorkerView, autoscale_worker,
                                  options_from_index)
from infaas_cli.policy.baselines import POLICIES, pin_variant, query_class
from infaas_cli.policy.cluster_autoscale import ClusterAutoscaleConfig, ClusterState, HostLoad, autoscale_cluster
from infaas_cli.policy.selection import (ClusterSnapshot, Query, WorkerState, build_index, load_prices, select)
from infaas_cli.catalog.store import LmdbStore, SequenceGapError
from infaas_daemons.common import log, safe_send, step

CHUNK_BYTES = 1 << 20
#: A query not answered after this long is answered with an error (never left hanging).
PENDING_TIMEOUT_S = 60.0
#: How stale the queue lengths in the selection's cluster snapshot may get.
SNAPSHOT_QUEUE_REFRESH_S = 0.005
#: A dead worker's queries are re-routed at most this many times.
MAX_ATTEMPTS = 3


@dataclass
class WorkerEntry:
    worker_id: str
    identity: bytes
    hardware: dict[str, Any]
    backends: list[str]
    last_seen: float
    alive: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)  # variant -> queued samples (heartbeat + in flight)
    inflight: set[str] = field(default_factory=set)


@dataclass
class PendingQuery:
    client: bytes
    client_request_id: str
    body: dict[str, Any]
    query: Query
    variant: str
    worker_id: str
    batch: int
    decision_us: float
    started: float
    needs_load: bool
    attempts: int = 1
    output_names: list[str] = field(default_factory=list)


@dataclass
class _Upload:
    path: Path
    offset: int = 0


class Master:
    """The master daemon. `run()` blocks until `stop_event` is set."""

    def __init__(self, home: str | Path, client_endpoint: str = "tcp://127.0.0.1:0",
                 worker_endpoint: str = "tcp://127.0.0.1:0", heartbeat_interval_s: float = 1.0,
                 endpoints_file: str | Path | None = None, prices_file: str | Path | None = None,
                 policy: str = "infaas", autoscale: AutoscaleConfig | None = None,
                 curve_secret_key: str | Path | None = None, authorized_keys: str | Path | None = None,
                 cluster: ClusterAutoscaleConfig | None = None, scale_out_command: str | None = None,
                 scale_in_command: str | None = None) -> None:
        self.cluster_config = cluster or ClusterAutoscaleConfig()
        self.cluster_state = ClusterState()
        self.scale_out_command, self.scale_in_command = scale_out_command, scale_in_command
        self.cluster_decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.draining: set[str] = set()
        self._scaling: list[subprocess.Popen] = []
        if bool(curve_secret_key) != bool(authorized_keys):
            raise InfaasError("CurveZMQ needs both --curve-secret-key (the master's .key_secret) and "
                              "--authorized-keys (a directory of the workers' and clients' public .key files)")
        self.curve_secret_key = curve_secret_key
        self.authorized_keys = authorized_keys
        if policy not in POLICIES:
            raise InfaasError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.autoscale_config = autoscale or AutoscaleConfig()
        self.pins: dict[tuple, str] = {}  # baselines: the fixed variant of each query class
        self.autoscale_states: dict[str, dict[str, VariantState]] = {}  # worker -> variant -> state
        self.variant_slo: dict[str, tuple[float, float]] = {}  # variant -> (tightest recent SLO ms, when)
        self.actions: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._options = None
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = LmdbStore(self.home / "metadata.lmdb")
        self.artifacts = ArtifactStore(self.home / "artifacts")
        self.client_endpoint = client_endpoint
        self.worker_endpoint = worker_endpoint
        self.heartbeat_interval_s = heartbeat_interval_s
        self.endpoints_file = Path(endpoints_file) if endpoints_file else None
        self.prices = load_prices(prices_file)
        self.stop_event = threading.Event()
        self.workers: dict[str, WorkerEntry] = {}
        self.pending: dict[str, PendingQuery] = {}
        self.uploads: dict[str, _Upload] = {}
        self.decision_us: collections.deque[float] = collections.deque(maxlen=10_000)
        self.started = time.time()
        self.queries_served = 0
        self.queries_failed = 0
        self._index = None
        self._specs: dict[str, dict[str, Any]] = {}
        self._models: dict[str, Any] = {}  # model records by name, read once per catalog change
        self._snapshot: ClusterSnapshot | None = None
        self._snapshot_at = 0.0
        self._snapshot_stale = False

    # -- catalog ---------------------------------------------------------------------------------------
    def index(self):
        if self._index is None:
            self._index = build_index(self.store.models(), self.store.variants(), self.store.profiles(), self.prices)
            self._specs.clear()
        return self._index

    def _catalog_changed(self) -> None:
        self._index = None
        self._options = None
        self.pins.clear()
        self._models.clear()

    def model(self, name: str):
        record = self._models.get(name)
        if record is None:
            record = self._models[name] = self.store.model(name)
        return record

    def variant_spec(self, name: str) -> dict[str, Any]:
        spec = self._specs.get(name)
        if spec is None:
            variant = self.store.get(VariantRecord, name)
            if variant is None:
                raise protocol.ProtocolError("unknown_model", f"unknown variant '{name}'")
            model = self.model(variant.model)
            profile = pick_profile(variant, [p for p in self.store.profiles(variant.model) if p.variant == name])
            latency = {b: s["p95_ms"] for b, s in profile.batches.items()} if profile else {}
            spec = {"name": name, "backend": variant.backend, "recipe": variant.recipe, "threads": variant.threads,
                    "peak_memory_bytes": profile.peak_memory_bytes if profile else 0,
                    "max_batch": variant.max_batch, "batch_dim": model.batch_dim,
                    "artifact_sha256": variant.artifact_sha256, "inputs": model.inputs, "latency_ms": latency}
            self._specs[name] = spec
        return spec

    # -- cluster snapshot --------------------------------------------------------------------------------
    def snapshot(self) -> ClusterSnapshot:
        """The cluster as the selection policy sees it.

        Rebuilt at once when membership, liveness or the set of loaded variants changes; queue
        lengths alone (every dispatch and result changes them) refresh it at most every
        SNAPSHOT_QUEUE_REFRESH_S, so a burst does not pay a rebuild per query.
        """
        if self._snapshot is not None and self._snapshot_stale \
                and time.monotonic() - self._snapshot_at > SNAPSHOT_QUEUE_REFRESH_S:
            self._snapshot = None
        if self._snapshot is None:
            states = []
            for w in self.workers.values():
                m = w.metrics
                cores = int(m.get("cores", w.hardware.get("cores", 1)))
                # Free cores as the master knows them: it sees loads it dispatched before the
                # worker's next heartbeat does.
                used = sum(self._threads_of(name) for name in w.loaded)
                states.append(WorkerState(
                    worker_id=w.worker_id, backends=frozenset(w.backends), cores=cores,
                    # Not clamped at 0: placement then prefers the less oversubscribed of two full workers.
                    free_cores=float(min(m.get("free_cores", cores), cores - used)),
                    free_memory_bytes=int(m.get("free_memory_bytes", w.hardware.get("memory_bytes", 0))),
                    loaded=dict(w.loaded), alive=w.alive and w.worker_id not in self.draining))
            self._snapshot = ClusterSnapshot(tuple(states))
            self._snapshot_at = time.monotonic()
            self._snapshot_stale = False
        return self._snapshot

    def _threads_of(self, variant: str) -> int:
        try:
            return int(self.variant_spec(variant)["threads"])
        except (protocol.ProtocolError, InfaasError):
            return 0

    def _cluster_changed(self) -> None:
        self._snapshot = None

    def _queues_changed(self) -> None:
        self._snapshot_stale = True

    # -- loop ------------------------------------------------------------------------------------------
    def run(self) -> None:
        ctx = zmq.Context.instance()
        auth = None
        if self.curve_secret_key:
            from infaas_cli.security import start_authenticator

            auth = start_authenticator(ctx, self.authorized_keys)
        else:
            log.warning("CurveZMQ is off: anyone who reaches %s or %s can use this master; keep it on loopback or "
                        "configure keys (`infaas keys generate`)", self.client_endpoint, self.worker_endpoint)
        self.clients = ctx.socket(zmq.ROUTER)
        self.workers_sock = ctx.socket(zmq.ROUTER)
        for sock in (self.clients, self.workers_sock):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
            if self.curve_secret_key:
                from infaas_cli.security import make_server

                make_server(sock, self.curve_secret_key)
        # A restarted worker reconnects under its old id; let the new connection take the id over.
        self.workers_sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.client_endpoint = _bind(self.clients, self.client_endpoint)
        self.worker_endpoint = _bind(self.workers_sock, self.worker_endpoint)
        self._write_endpoints()
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.workers_sock, zmq.POLLIN)
        log.info("master serving clients on %s, workers on %s (catalog: %d models, %d variants)",
                 self.client_endpoint, self.worker_endpoint, len(self.store.models()), len(self.store.variants()))
        next_tick = next_autoscale = time.monotonic()
        try:
            while not self.stop_event.is_set():
                for sock, _ in poller.poll(50):
                    self._drain(sock)
                if time.monotonic() >= next_tick:
                    self._step(self._check_workers)
                    self._step(self._expire_pending)
                    next_tick = time.monotonic() + min(0.25, self.heartbeat_interval_s / 2)
                if time.monotonic() >= next_autoscale:
                    self._step(self._autoscale)
                    self._step(self._autoscale_cluster)
                    next_autoscale = time.monotonic() + self.heartbeat_interval_s
        finally:
            for p in list(self.pending.values()):
                self._reply_error(p, "unavailable", "the master is shutting down; retry against the restarted master")
            self.clients.close(linger=200)
            self.workers_sock.close(linger=0)
            if auth is not None:
                auth.stop()
            self.store.close()
            log.info("master stopped")

    def _write_endpoints(self) -> None:
        if self.endpoints_file is None:
            return
        self.endpoints_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"client_endpoint": self.client_endpoint, "worker_endpoint": self.worker_endpoint,
                                   "pid": os.getpid()}))
        os.replace(tmp, self.endpoints_file)

    def _step(self, fn, *args) -> None:
        step("master", fn, *args)

    def _drain(self, sock: zmq.Socket) -> None:
        for _ in range(1000):  # bounded, so timers still run under a flood
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            identity, frame = frames[0], frames[-1]
            if sock is self.clients:
                self._step(self._handle_client, identity, frame)
            else:
                self._step(self._handle_worker, identity, frame)

    # -- clients ---------------------------------------------------------------------------------------
    def _handle_client(self, identity: bytes, frame: bytes) -> None:
        try:
            msg = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            log.warning("bad frame from a client: %s", exc.reason)
            safe_send(self.clients, protocol.error(exc.code, exc.reason, protocol.peek_id(frame)), identity)
            return
        handlers = {"query": self._on_query, "status": self._on_status, "changes": self._on_changes,
                    "artifact_chunk": self._on_upload}
        handler = handlers.get(msg.type)
        if handler is None:
            safe_send(self.clients, protocol.error("unknown_type", f"the master does not take {msg.type} from clients",
                                                   msg.id), identity)
            return
        try:
            handler(identity, msg)
        except protocol.ProtocolError as exc:
            safe_send(self.clients, protocol.error(exc.code, exc.reason, msg.id), identity)
        except InfaasError as exc:
            code = getattr(exc, "code", "internal")
            extra = {k: getattr(exc, k) for k in ("best_latency_ms", "best_accuracy", "last_seq")
                     if getattr(exc, k, None) is not None}
            safe_send(self.clients, protocol.error(code if code in protocol.ERROR_CODES else "internal", str(exc),
                                                   msg.id, **extra), identity)

    def _on_query(self, identity: bytes, msg: protocol.Message) -> None:
        feeds = protocol.unpack_tensors(msg.body["inputs"])
        if not feeds:
            raise protocol.ProtocolError("invalid_input", "the query carries no inputs")
        body = dict(msg.body)
        first = next(iter(feeds.values()))
        body["batch_size"] = int(first.shape[0]) if first.ndim else 1
        query = Query.from_body(body)
        self._dispatch(identity, msg.id, msg.body, query, feeds, attempts=1, exclude=())

    def _dispatch(self, identity: bytes, client_id: str, body: dict[str, Any], query: Query,
                  feeds: dict[str, np.ndarray] | None, attempts: int, exclude: tuple[str, ...]) -> None:
        index = self.index()
        snapshot = self.snapshot()
        if exclude:
            snapshot = ClusterSnapshot(tuple(w for w in snapshot.workers if w.worker_id not in exclude))
        t0 = time.perf_counter_ns()
        if self.policy == "infaas" or query.kind == "variant":
            decision = select(query, index, snapshot)
        else:  # a baseline: the class's fixed variant, placed like a by-name query
            key = query_class(query)
            pinned = self.pins.get(key)
            if pinned is None:
                pinned = self.pins[key] = pin_variant(query, index)
                if self.policy == "static":
                    self._provision_static(pinned)
            decision = select(Query("variant", variant=pinned, batch_size=query.batch_size), index, snapshot)
        decision_us = (time.perf_counter_ns() - t0) / 1e3
        if query.latency_ms is not None:
            prev = self.variant_slo.get(decision.variant)
            now = time.monotonic()
            if prev is None or query.latency_ms <= prev[0] or now - prev[1] > self.autoscale_config.window_s:
                self.variant_slo[decision.variant] = (query.latency_ms, now)
        self.decision_us.append(decision_us)
        spec = self.variant_spec(decision.variant)
        model = self.model(decision.model)
        if feeds is not None:
            feeds, changed = coerce_query_inputs(feeds, model.input_specs())
            try:
                batch = check_query_inputs(feeds, model.input_specs(), model.batch_dim, model.max_batch)
            except InfaasError as exc:
                raise protocol.ProtocolError("invalid_input", f"{decision.model}: {exc}") from None
            if changed:
                body = {**body, "inputs": protocol.pack_tensors(feeds)}
        else:
            batch = query.batch_size
        worker = self.workers[decision.worker_id]
        internal_id = uuid.uuid4().hex
        infer = protocol.Message("infer", {"variant": decision.variant, "inputs": body["inputs"],
                                           "deadline_ms": query.latency_ms, "spec": spec}, id=internal_id)
        if not safe_send(self.workers_sock, infer, worker.identity):
            raise protocol.ProtocolError("unavailable", f"worker {worker.worker_id} cannot be reached")
        self.pending[internal_id] = PendingQuery(identity, client_id, body, query, decision.variant, worker.worker_id,
                                                 batch, decision_us, time.monotonic(), decision.needs_load, attempts,
                                                 [o["name"] for o in model.outputs])
        worker.inflight.add(internal_id)
        if decision.variant in worker.loaded:
            worker.loaded[decision.variant] += batch
            self._queues_changed()
        else:  # a load on this worker: the next query must see it as held there
            worker.loaded[decision.variant] = batch
            self._cluster_changed()

    def _on_status(self, identity: bytes, msg: protocol.Message) -> None:
        safe_send(self.clients, protocol.Message("status_reply", self.status(), id=msg.id), identity)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        dec = np.asarray(self.decision_us) if self.decision_us else np.zeros(0)
        workers = []
        for w in self.workers.values():
            m = w.metrics
            workers.append({
                "worker_id": w.worker_id, "alive": w.alive, "last_seen_s": round(now - w.last_seen, 3),
                "backends": w.backends, "cores": m.get("cores", w.hardware.get("cores")),
                "free_cores": m.get("free_cores"), "cpu_percent": m.get("cpu_percent"),
                "free_memory_bytes": m.get("free_memory_bytes"), "in_flight": len(w.inflight),
                "cpu_model": w.hardware.get("cpu_model"), "hostname": w.hardware.get("hostname"),
                "variants": self._worker_variants(w),
                "autoscale": {name: st.state for name, st in self.autoscale_states.get(w.worker_id, {}).items()},
                "state": "dead" if not w.alive else ("draining" if w.worker_id in self.draining else "serving"),
                "hardware": {k: w.hardware.get(k) for k in ("cpu_model", "cores", "memory_bytes", "gpus", "hostname")},
            })
        return {
            "master": {
                "endpoint": self.client_endpoint, "worker_endpoint": self.worker_endpoint, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 1),
                "models": len(self.store.models()), "variants": len(self.store.variants()),
                "replication": {r.source: r.last_seq for r in self.store.scan(ReplicationRecord)},
                "policy": self.policy, "pins": {"/".join(str(k) for k in key): v for key, v in self.pins.items()},
                "autoscale_actions": list(self.actions),
                "cluster_decisions": list(self.cluster_decisions),
                "pending": len(self.pending), "queries_served": self.queries_served,
                "queries_failed": self.queries_failed,
                "decision_us": {"count": int(dec.size),
                                "p50": float(np.percentile(dec, 50)) if dec.size else None,
                                "p99": float(np.percentile(dec, 99)) if dec.size else None,
                                "max": float(dec.max()) if dec.size else None},
            },
            "workers": workers,
        }

    @staticmethod
    def _worker_variants(w: WorkerEntry) -> dict[str, Any]:
        """The last heartbeat's view, plus what was dispatched since (loads the heartbeat has not shown yet)."""
        variants = {k: dict(v) for k, v in (w.metrics.get("variants") or {}).items()}
        for name, queued in w.loaded.items():
            variants.setdefault(name, {"state": "dispatched", "queue": queued, "qps": 0.0, "latency_ms": 0.0})
        return variants

    # -- replication -------------------------------------------------------------------------------------
    def _on_changes(self, identity: bytes, msg: protocol.Message) -> None:
        source, entries = msg.body["source"], msg.body["entries"]
        if not isinstance(source, str) or not isinstance(entries, list):
            raise protocol.ProtocolError("bad_request", "changes needs a source string and a list of entries")
        try:
            applied, last = self.store.apply_replicated(source, entries)
        except SequenceGapError as exc:
            safe_send(self.clients, protocol.error("sequence_gap", str(exc), msg.id, last_seq=exc.last_seq), identity)
            return
        except (KeyError, TypeError, ValueError) as exc:
            raise protocol.ProtocolError("bad_request", f"a change-log entry is malformed: {exc}") from None
        if applied:
            self._catalog_changed()
            log.info("applied %d change(s) from %s, now at %d", applied, source, last)
        safe_send(self.clients, protocol.Message("ack", {"last_seq": last, "applied": applied,
                                                         "missing_artifacts": self.missing_artifacts()}, id=msg.id),
                  identity)

    def missing_artifacts(self) -> list[str]:
        needed = set()
        for m in self.store.models():
            needed.add(m.artifact_sha256)
            if m.validation_sha256:
                needed.add(m.validation_sha256)
        for v in self.store.variants():
            needed.add(v.artifact_sha256)
        return sorted(s for s in needed if not self.artifacts.has(s))

    def _on_upload(self, identity: bytes, msg: protocol.Message) -> None:
        b = msg.body
        sha, offset, data, total = b["sha256"], b["offset"], b["data"], b["total_bytes"]
        if not isinstance(data, bytes) or not isinstance(offset, int) or not isinstance(total, int):
            raise protocol.ProtocolError("bad_request", "artifact_chunk needs bytes data and integer offset/total")
        self.artifacts.path(sha)  # validates the digest
        if self.artifacts.has(sha):
            safe_send(self.clients, protocol.Message("ack", {"sha256": sha, "complete": True}, id=msg.id), identity)
            return
        upload = self.uploads.get(sha)
        if offset == 0:
            self.artifacts.root.mkdir(parents=True, exist_ok=True)
            upload = self.uploads[sha] = _Upload(self.artifacts.root / f".upload-{sha}")
            upload.path.write_bytes(b"")
        if upload is None or offset != upload.offset:
            expected = 0 if upload is None else upload.offset
            raise protocol.ProtocolError("sequence_gap", f"chunk at offset {offset} of {sha[:12]}, expected {expected}")
        with open(upload.path, "ab") as fh:
            fh.write(data)
        upload.offset += len(data)
        if upload.offset < total:
            safe_send(self.clients, protocol.Message("ack", {"sha256": sha, "offset": upload.offset,
                                                             "complete": False}, id=msg.id), identity)
            return
        del self.uploads[sha]
        if sha256_file(upload.path) != sha:
            upload.path.unlink(missing_ok=True)
            raise protocol.ProtocolError("checksum", f"artifact {sha[:12]} arrived corrupt; push it again")
        self.artifacts.put_file(upload.path)
        upload.path.unlink(missing_ok=True)
        safe_send(self.clients, protocol.Message("ack", {"sha256": sha, "complete": True}, id=msg.id), identity)

    # -- workers -------------------------------------------------------------------------------------------
    def _handle_worker(self, identity: bytes, frame: bytes) -> None:
        try:
            msg = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            log.warning("bad frame from worker %r: %s", identity, exc.reason)
            safe_send(self.workers_sock, protocol.error(exc.code, exc.reason, protocol.peek_id(frame)), identity)
            return
        worker_id = identity.decode(errors="replace")
        entry = self.workers.get(worker_id)
        if entry is not None:
            entry.last_seen = time.monotonic()
        handlers = {"register": self._on_register, "heartbeat": self._on_heartbeat, "result": self._on_result,
                    "error": self._on_worker_error, "loaded": self._on_loaded, "fetch": self._on_fetch}
        handler = handlers.get(msg.type)
        if handler is None:
            safe_send(self.workers_sock, protocol.error("unknown_type", f"the master does not take {msg.type} "
                                                        "from workers", msg.id), identity)
            return
        try:
            handler(identity, worker_id, msg)
        except protocol.ProtocolError as exc:
            safe_send(self.workers_sock, protocol.error(exc.code, exc.reason, msg.id), identity)

    def _on_register(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        b = msg.body
        if not isinstance(b["hardware"], dict) or not isinstance(b["backends"], list):
            raise protocol.ProtocolError("bad_request", "register needs a hardware map and a backends list")
        old = self.workers.get(worker_id)
        self.workers[worker_id] = WorkerEntry(worker_id, identity, b["hardware"], [str(x) for x in b["backends"]],
                                              time.monotonic(), inflight=old.inflight if old else set())
        self._cluster_changed()
        log.info("worker %s registered (%s cores, backends %s)", worker_id, b["hardware"].get("cores"),
                 ",".join(b["backends"]))
        safe_send(self.workers_sock, protocol.Message("registered", {"heartbeat_interval_s": self.heartbeat_interval_s},
                                                      id=msg.id), identity)

    def _known(self, identity: bytes, worker_id: str, msg: protocol.Message) -> WorkerEntry | None:
        entry = self.workers.get(worker_id)
        if entry is None:
            safe_send(self.workers_sock, protocol.error("not_found", f"worker {worker_id} is not registered; "
                                                        "register again", msg.id, worker_id=worker_id), identity)
        return entry

    def _on_heartbeat(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        entry = self._known(identity, worker_id, msg)
        if entry is None:
            return
        metrics = msg.body["metrics"]
        if not isinstance(metrics, dict):
            raise protocol.ProtocolError("bad_request", "heartbeat metrics must be a map")
        if not entry.alive:
            log.info("worker %s is back", worker_id)
        entry.alive = True
        entry.metrics = metrics
        variants = metrics.get("variants") or {}
        in_flight: dict[str, int] = collections.Counter()
        for rid in entry.inflight:
            p = self.pending.get(rid)
            if p is not None:
                in_flight[p.variant] += p.batch
        entry.loaded = {name: int(in_flight.get(name, 0)) for name in variants}
        for name, n in in_flight.items():  # dispatched but not yet seen by the worker's heartbeat
            entry.loaded.setdefault(name, n)
        self._cluster_changed()

    def _on_loaded(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        entry = self._known(identity, worker_id, msg)
        if entry is not None:
            entry.loaded.setdefault(msg.body["variant"], 0)
            self._cluster_changed()

    def _on_result(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        p = self._finish(msg.id)
        if p is None:
            return
        timing = dict(msg.body["timing"]) if isinstance(msg.body["timing"], dict) else {}
        timing["total_ms"] = (time.monotonic() - p.started) * 1e3
        reply = protocol.Message("reply", {
            "outputs": msg.body["outputs"], "variant": p.variant, "worker": p.worker_id,
            "decision_us": p.decision_us, "timing": timing, "needs_load": p.needs_load, "attempts": p.attempts,
            "output_names": p.output_names,
        }, id=p.client_request_id)
        self.queries_served += 1
        safe_send(self.clients, reply, p.client)

    def _on_worker_error(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        p = self._finish(msg.id)
        if p is None:
            log.warning("worker %s reports %s: %s", worker_id, msg.body.get("code"), msg.body.get("reason"))
            return
        code = msg.body.get("code", "internal")
        self._reply_error(p, code if code in protocol.ERROR_CODES else "internal", str(msg.body.get("reason")))

    def _finish(self, internal_id: str) -> PendingQuery | None:
        p = self.pending.pop(internal_id, None)
        if p is None:
            return None
        w = self.workers.get(p.worker_id)
        if w is not None:
            w.inflight.discard(internal_id)
            if p.variant in w.loaded:
                w.loaded[p.variant] = max(0, w.loaded[p.variant] - p.batch)
            self._queues_changed()
        return p

    def _reply_error(self, p: PendingQuery, code: str, reason: str) -> None:
        self.queries_failed += 1
        safe_send(self.clients, protocol.error(code, reason, p.client_request_id), p.client)

    def _on_fetch(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        sha, offset = msg.body["sha256"], msg.body["offset"]
        if not isinstance(sha, str) or not isinstance(offset, int) or offset < 0:
            raise protocol.ProtocolError("bad_request", "fetch needs a sha256 string and a non-negative offset")
        try:
            path = self.artifacts.path(sha)
        except InfaasError as exc:
            raise protocol.ProtocolError("bad_request", str(exc)) from None
        if not path.is_file():
            safe_send(self.workers_sock, protocol.error("not_found", f"artifact {sha[:12]} is not on the master; "
                                                        "run `infaas push`", msg.id, sha256=sha), identity)
            return
        total = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(CHUNK_BYTES)
        safe_send(self.workers_sock, protocol.Message("artifact_chunk", {"sha256": sha, "offset": offset, "data": data,
                                                                         "total_bytes": total}, id=msg.id), identity)

    def _provision_static(self, variant: str) -> None:
        """The static baseline's fixed replicas: its pinned variant on every live worker where it fits
        beside the variants already placed there (on the roomiest worker when it fits nowhere)."""
        spec = self.variant_spec(variant)
        able = [w for w in self.workers.values() if w.alive and spec["backend"] in w.backends]

        def free(w: WorkerEntry) -> int:
            return int(w.hardware.get("cores", 1)) - sum(self._threads_of(n) for n in w.loaded)

        targets = [w for w in able if variant not in w.loaded and free(w) >= spec["threads"]]
        if not targets and able and not any(variant in w.loaded for w in able):
            targets = [max(able, key=free)]
        for w in targets:
            if safe_send(self.workers_sock, protocol.Message("load", {"variant": variant, "spec": spec}), w.identity):
                w.loaded[variant] = 0
        self._cluster_changed()

    # -- horizontal autoscaling ---------------------------------------------------------------------------
    def _autoscale_cluster(self) -> None:
        self._scaling = [p for p in self._scaling if p.poll() is None]
        if self._scaling:
            return  # one scaling command at a time: the next decision sees its result
        # A worker's utilisation is its own process's CPU over its cores (a host may run other things).
        hosts = [HostLoad(w.worker_id, "gpu" if w.hardware.get("gpus") else "cpu",
                          float(w.metrics.get("process_cpu_percent") or 0.0)
                          / (100.0 * max(1, int(w.metrics.get("cores") or w.hardware.get("cores") or 1))),
                          w.alive, w.worker_id in self.draining)
                 for w in self.workers.values()]
        actions, self.cluster_state = autoscale_cluster(self.cluster_state, hosts, time.monotonic(),
                                                        self.cluster_config)
        for a in actions:
            command = self.scale_out_command if a.kind == "scale_out" else self.scale_in_command
            if a.kind == "scale_in" and a.worker_id and command:
                self.draining.add(a.worker_id)  # no new queries; it unloads and leaves once idle
                self._cluster_changed()
            ran = None
            if command:
                env = {**os.environ, "INFAAS_HARDWARE": a.hardware, "INFAAS_WORKER_ID": a.worker_id or ""}
                self._scaling.append(subprocess.Popen(shlex.split(command), env=env, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL, start_new_session=True))
                ran = command
            self.cluster_decisions.append({"at": round(time.time(), 3), "kind": a.kind, "hardware": a.hardware,
                                           "worker": a.worker_id, "reason": a.reason, "command": ran})
            log.info("cluster %s (%s): %s; %s", a.kind, a.hardware, a.reason,
                     f"running {command}" if command else "no command configured")

    # -- model-level autoscaling -----------------------------------------------------------------------
    def _autoscale(self) -> None:
        """Snapshot each worker's measured load, ask the pure policy, apply what it allows under this policy."""
        if self.policy == "static" or not self.workers:
            return
        index = self.index()
        if self._options is None:
            self._options = options_from_index(index)
        now = time.monotonic()
        for w in list(self.workers.values()):
            if not w.alive:
                continue
            loads = []
            for name, m in (w.metrics.get("variants") or {}).items():
                if m.get("state") != "loaded" or name not in self._options:
                    continue
                slo = self.variant_slo.get(name)
                loads.append(VariantLoad(
                    variant=name, replicas=int(m.get("replicas", 1)), queue_samples=int(m.get("queue", 0)),
                    # Capacity is profiled in samples per second, so load is measured in samples too.
                    qps=float(m.get("samples_per_s", m.get("qps", 0.0))), latency_ms=float(m.get("latency_ms", 0.0)),
                    slo_ms=slo[0] if slo and now - slo[1] <= 3 * self.autoscale_config.window_s else None,
                    idle_s=float(m.get("idle_s", 0.0))))
            view = WorkerView(cores=int(w.metrics.get("cores", w.hardware.get("cores", 1))),
                              free_cores=int(w.metrics.get("free_cores", 0)),
                              free_memory_bytes=int(w.metrics.get("free_memory_bytes", 0)), variants=tuple(loads))
            actions, self.autoscale_states[w.worker_id] = autoscale_worker(
                self.autoscale_states.get(w.worker_id, {}), view, self._options, now, self.autoscale_config)
            for action in actions:
                self._step(self._apply, w, action)

    def _apply(self, w: WorkerEntry, action) -> None:
        allowed = {"infaas": ("replicate", "remove_replica", "upgrade", "downgrade", "unload"),
                   "replicate": ("replicate", "remove_replica", "unload")}[self.policy]
        if action.kind not in allowed:
            return
        m = (w.metrics.get("variants") or {}).get(action.variant, {})
        replicas = int(m.get("replicas", 1))
        spec = self.variant_spec(action.variant)
        where = w
        if action.kind == "replicate":
            free = int(w.metrics.get("free_cores", 0))
            if free >= spec["threads"]:
                body = {"variant": action.variant, "spec": spec, "replicas": replicas + 1}
            else:  # no room here: a replica on the worker with the most free cores
                others = [o for o in self.workers.values() if o.alive and o is not w
                          and action.variant not in o.loaded and spec["backend"] in o.backends
                          and int(o.metrics.get("free_cores", 0)) >= spec["threads"]]
                if not others:
                    return
                where = max(others, key=lambda o: int(o.metrics.get("free_cores", 0)))
                body = {"variant": action.variant, "spec": spec}
                where.loaded.setdefault(action.variant, 0)
                self._cluster_changed()
            msg = protocol.Message("load", body)
        elif action.kind == "remove_replica":
            msg = protocol.Message("load", {"variant": action.variant, "spec": spec, "replicas": max(1, replicas - 1)})
        elif action.kind in ("upgrade", "downgrade"):
            target = self.variant_spec(action.target)
            msg = protocol.Message("load", {"variant": action.target, "spec": target})
            w.loaded.setdefault(action.target, 0)
            self._cluster_changed()
        else:  # unload: stop routing there first
            w.loaded.pop(action.variant, None)
            self._cluster_changed()
            msg = protocol.Message("unload", {"variant": action.variant})
        if safe_send(self.workers_sock, msg, where.identity):
            record = {"at": round(time.time(), 3), "worker": where.worker_id, "kind": action.kind,
                      "variant": action.variant, "target": action.target, "reason": action.reason}
            self.actions.append(record)
            log.info("autoscale %s %s%s on %s: %s", action.kind, action.variant,
                     f" -> {action.target}" if action.target else "", where.worker_id, action.reason)

    # -- timers --------------------------------------------------------------------------------------------
    def _check_workers(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.alive and now - w.last_seen > 3 * self.heartbeat_interval_s:
                w.alive = False
                w.loaded = {}
                self._cluster_changed()
                lost = [rid for rid in w.inflight if rid in self.pending]
                log.warning("worker %s missed 3 heartbeats: dead; re-routing %d queries", w.worker_id, len(lost))
                w.inflight = set()
                for rid in lost:
                    self._reroute(self.pending.pop(rid), w.worker_id)

    def _reroute(self, p: PendingQuery, dead_worker: str) -> None:
        if p.attempts >= MAX_ATTEMPTS:
            self._reply_error(p, "worker_lost", f"worker {dead_worker} died and the query was already retried "
                                                f"{p.attempts - 1} time(s)")
            return
        try:
            self._dispatch(p.client, p.client_request_id, p.body, p.query, protocol.unpack_tensors(p.body["inputs"]),
                           p.attempts + 1, (dead_worker,))
        except (InfaasError, protocol.ProtocolError) as exc:
            self._reply_error(p, "worker_lost", f"worker {dead_worker} died and no other can take the query: {exc}")

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for rid, p in list(self.pending.items()):
            if now - p.started > PENDING_TIMEOUT_S:
                self._finish(rid)
                self._reply_error(p, "overloaded", f"no answer from worker {p.worker_id} within "
                                                   f"{PENDING_TIMEOUT_S:.0f} s")


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind; a tcp endpoint with port 0 gets a free port. Returns the endpoint actually bound."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        host = endpoint[len("tcp://"):-2]
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
