"""The master's loop and its two guarded doors (clients, workers).

A thin loop over two ROUTER sockets: decode and validate a frame at the door → hand the typed
message to its handler (daemons/master/handlers.py) → send. Every frame at the client door gets
exactly one reply, whatever it holds; replies wait in a per-client outbox rather than being dropped
by a full socket. A worker that keeps sending garbage is cut off; dead workers leave the cluster view.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.catalog.store import LmdbStore
from infaas_cli.errors import InfaasError, wire_error
from infaas_cli.policy.autoscale import AutoscaleConfig
from infaas_cli.policy.baselines import POLICIES, canonical_policy
from infaas_cli.policy.cluster_autoscale import ClusterState
from infaas_cli.policy.drift import DriftConfig
from infaas_cli.policy.latency import WorkerOverheads
from infaas_cli.policy.cores import dispatched_threads, known_free_cores, worker_cores
from infaas_cli.policy.cluster_view import ClusterView
from infaas_cli.policy.selection import ClusterSnapshot, WorkerState, load_prices
from infaas_cli.protocol.messages import MAX_FRAME_BYTES
from infaas_cli.settings import ClusterSettings, MasterSettings, SecuritySettings, Settings
from infaas_daemons.common import log, step
from infaas_daemons.master.apply import Actions
from infaas_daemons.master.cache import PredictionCache, effective_mib
from infaas_daemons.master.drift import DriftWatch
from infaas_daemons.master.handlers import ClientHandlers, WorkerHandlers
from infaas_daemons.master.lifecycle import Lifecycle
from infaas_daemons.master.metrics import MasterMetrics, metrics_host, start_server
from infaas_daemons.master.rollout import Rollouts
from infaas_daemons.master.state import CatalogView, ClientLedger, PendingQuery, SloLedger

#: Messages handled per socket per loop turn, and the time a turn may spend on one socket (bounded, so the
#: other socket and the timers still run under a flood).
DRAIN_BATCH = 1000
DRAIN_BUDGET_S = 0.02
#: Queued replies or infers that are sent at once, without waiting for the end of the drain.
FLUSH_AT = 32
#: Identities of refused (garbage-sending) workers remembered.
MAX_REFUSED = 10_000


class Master(ClientHandlers, WorkerHandlers, Actions, DriftWatch, Lifecycle, Rollouts):
    """The master daemon. `run()` blocks until `stop_event` is set."""

    def __init__(self, home: str | Path, settings: MasterSettings | None = None, *,
                 autoscale: AutoscaleConfig | None = None, cluster: ClusterSettings | None = None,
                 security: SecuritySettings | None = None, endpoints_file: str | Path | None = None,
                 drift: DriftConfig | None = None) -> None:
        self.settings = settings = settings or MasterSettings()
        security = security or SecuritySettings()
        cluster = cluster or ClusterSettings()
        if bool(security.curve_secret_key) != bool(security.authorized_keys):
            raise InfaasError("CurveZMQ needs both security.curve_secret_key (the master's .key_secret) and "
                              "security.authorized_keys (a directory of the workers' and clients' public .key files)",
                              code="bad_config")
        if canonical_policy(settings.policy) not in POLICIES:
            raise InfaasError(f"unknown policy '{settings.policy}'; choose one of {', '.join(POLICIES)}",
                              code="bad_config")
        self.curve_secret_key = security.curve_secret_key
        self.authorized_keys = security.authorized_keys
        self.policy = canonical_policy(settings.policy)  # "static"/"replicate": former names
        self.autoscale_config = autoscale or AutoscaleConfig()
        self.cluster_config = cluster.policy()
        self.cluster_state = ClusterState()
        self.scale_out_command, self.scale_in_command = cluster.scale_out_command, cluster.scale_in_command
        self.cluster_decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.draining: set[str] = set()
        self._scaling: list = []
        self.pins: dict[tuple, str] = {}  # baselines: the fixed variant of each query class
        self.autoscale_states: dict[str, dict] = {}  # worker -> variant -> state
        self.autoscaled_at: dict[str, float] = {}  # worker -> when its load last went through the policy
        self.variant_slo: dict[str, tuple[float, float]] = {}  # variant -> (tightest recent SLO ms, when)
        self.named_variants: dict[str, float] = {}  # variant -> when a query last named it
        self.actions: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._options = None
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.catalog = CatalogView(LmdbStore(self.home / "metadata.lmdb"), load_prices(settings.prices_file))
        self.artifacts = ArtifactStore(self.home / "artifacts")
        self.client_endpoint = settings.client_endpoint
        self.worker_endpoint = settings.worker_endpoint
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self.endpoints_file = Path(endpoints_file) if endpoints_file else None
        self.stop_event = threading.Event()
        self.workers: dict[str, Any] = {}
        # Worker ids, least recently heard from first: the liveness check reads only the front (the late ones).
        self.seen_order: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._behind_since: float | None = None  # since when the loop has had a backlog it could not drain
        self.deaths_deferred = 0  # liveness checks skipped because the loop itself was behind
        self.pending: dict[str, PendingQuery] = {}
        self.ledger = ClientLedger()
        self.uploads: dict[str, Any] = {}
        self.garbage: collections.Counter[bytes] = collections.Counter()  # bad frames per worker identity
        self.refused: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.decision_us: collections.deque[float] = collections.deque(maxlen=10_000)
        self.decision_cpu_us: collections.deque[float] = collections.deque(maxlen=10_000)
        self.slo = SloLedger()
        self.metrics = MasterMetrics(self)  # Prometheus: served on settings.metrics_port by run()
        self.metrics_endpoint: str | None = None
        self._init_drift(drift or DriftConfig())
        self.overheads = WorkerOverheads()  # the serving path's overhead per worker, learned from results
        self.arrived = 0.0
        self.started = time.time()
        self.pid = os.getpid()
        self.queries_served = self.queries_failed = self.queries_refused = self.replies_dropped = 0
        # The cluster as selection reads it, updated event by event (policy/cluster_view.py).
        self.view = ClusterView(overhead_ms_default=self.overheads.prior_ms)
        self._client_handlers = {"query": self._on_query, "status": self._on_status, "changes": self._on_changes,
                                 "artifact_chunk": self._on_upload, "catalog": self._on_catalog,
                                 "preload": self._on_preload, "unload": self._on_client_unload,
                                 "remove": self._on_remove}
        self._worker_handlers = {"register": self._on_register, "heartbeat": self._on_heartbeat,
                                 "result": self._on_result, "error": self._on_worker_error, "loaded": self._on_loaded,
                                 "fetch": self._on_fetch, "reprofiled": self._on_reprofiled}
        self._overheads_dirty: set[str] = set()
        self._out_replies: list[tuple] = []  # (route, id, frames) for the next _flush()
        self._out_infers: list[tuple] = []  # (worker identity, frames, internal id) for the next _flush()
        self.id_prefix, self.id_counter = f"{uuid.uuid4().hex[:12]}-", itertools.count()  # queries sent to workers
        self.cache = PredictionCache()  # opt-in per model (its record's cache_mib, else the master's default)
        self.cache_stats = self.cache.stats()  # a copy the metrics thread may read; refreshed by the control tick
        self._cached_variants: dict[str, tuple] = {}  # model -> its variants when its cache was last valid
        self._configure_cache()
        self._init_lifecycle()  # pins (restored from the store) and removals
        self._init_rollouts()  # each model's route, from the stored version policies

    @classmethod
    def from_settings(cls, settings: Settings, home: str | Path, endpoints_file: str | Path | None = None) -> Master:
        """A master for INFAAS_HOME `home`: its data in master.data_dir (default `home`/master)."""
        data_dir = Path(settings.master.data_dir) if settings.master.data_dir else Path(home) / "master"
        return cls(data_dir, settings.master, autoscale=settings.autoscale, cluster=settings.cluster,
                   security=settings.security, endpoints_file=endpoints_file, drift=settings.drift)

    @property
    def store(self):
        return self.catalog.store

    @property
    def workers_alive(self) -> int:
        return sum(1 for w in self.workers.values() if w.alive)

    def loop_lag_s(self) -> float:
        """How long the loop has been behind its sockets (a backlog of a whole drain batch and more), or 0."""
        return 0.0 if self._behind_since is None else time.monotonic() - self._behind_since

    def seen(self, entry) -> None:
        """A worker was heard from now: it moves to the back of the liveness order."""
        entry.last_seen = time.monotonic()
        self.seen_order[entry.worker_id] = None
        self.seen_order.move_to_end(entry.worker_id)

    # -- catalog and cluster views ---------------------------------------------------------------------
    def _catalog_changed(self) -> None:
        self.catalog.changed()
        self._settle_routes()  # a policy, version or profile may have moved a model's route (rollout.py)
        self._profiled_p50 = None
        self._options = None
        # The baselines keep their pins: a developer's pick does not change when a profile is re-measured
        # (drift) or a model is added; only a pin whose variant left the catalog is dropped.
        known = self.catalog.index().infos
        self.pins = {key: v for key, v in self.pins.items() if v in known}
        self._configure_cache()

    def _configure_cache(self) -> None:
        """Each model's prediction cache sized as the catalog says; a model whose variants changed starts empty
        (its answers may have changed with them)."""
        variants: dict[str, list] = collections.defaultdict(list)
        for v in self.store.variants():
            variants[v.model].append((v.name, v.artifact_sha256))
        seen = set()
        for rec in self.store.models():
            seen.add(rec.name)
            self.cache.configure(rec.name, effective_mib(rec.cache_mib, self.settings.prediction_cache_mib))
            fingerprint = tuple(sorted(variants[rec.name]))
            if self._cached_variants.get(rec.name, fingerprint) != fingerprint:
                dropped = self.cache.invalidate(rec.name)
                log.info("prediction cache of %s invalidated (its variants changed): %d entries dropped",
                         rec.name, dropped)
            self._cached_variants[rec.name] = fingerprint
        for name in set(self._cached_variants) - seen:  # removed from the catalog
            self.cache.configure(name, 0)
            del self._cached_variants[name]
        self.cache_stats = self.cache.stats()

    def snapshot(self) -> ClusterSnapshot:
        """The cluster as a frozen list of workers, for the control path (autoscaling, preloads, placement of
        replicas): O(workers), built on demand. Queries read the incremental `self.view` instead."""
        return ClusterSnapshot(self.view.workers(), overhead_ms=self.overheads.snapshot(),
                               overhead_floor_ms=self.overheads.floor_ms())

    def _worker_state(self, w) -> WorkerState:
        """One worker as selection sees it: free cores as the master knows them (it sees loads it dispatched
        before the worker's next heartbeat does), queues stretched by its slowdown, draining as not alive."""
        mt = w.metrics
        cores = worker_cores(mt.cores if mt is not None else None, w.hardware.cores)
        free = known_free_cores(cores, mt.free_cores if mt is not None else None,
                                dispatched_threads(w.loaded, self.catalog.threads_of))
        loaded = {v: self._stretched(w.worker_id, q) for v, q in w.loaded.items()}
        return WorkerState(worker_id=w.worker_id, backends=frozenset(w.backends), cores=cores, free_cores=free,
                           free_memory_bytes=mt.free_memory_bytes if mt is not None else w.hardware.memory_bytes,
                           loaded=loaded, alive=w.alive and w.worker_id not in self.draining)

    def _cluster_changed(self, *workers) -> None:
        """Workers changed (membership, liveness, draining, loads, free cores): the view takes their new state.
        Without arguments every worker is refreshed (a slowdown change: rare, on the control tick)."""
        for w in workers or list(self.workers.values()):
            self.view.put(self._worker_state(w))

    def _queue_changed(self, w, variant: str) -> None:
        """A dispatch or a result moved one queue: O(log holders) in the view."""
        queued = w.loaded.get(variant)
        if queued is not None:
            self.view.set_queue(w.worker_id, variant, self._stretched(w.worker_id, queued))

    def _stretched(self, worker_id: str, queued: float) -> float:
        """A queue as selection counts it: a worker whose variants run slower than profiled (interference)
        looks that much more queued."""
        s = self.worker_slowdown.get(worker_id, 1.0)
        return queued if s == 1.0 else queued * s + (s - 1.0)

    def _sync_overheads(self) -> None:
        """Learned serving overheads into the view: the workers whose estimate took samples since the last tick
        (an estimate moves slowly; re-reading it per reply would sort its window per reply)."""
        for worker_id in self._overheads_dirty:
            if worker_id in self.workers:
                self.view.set_overhead(worker_id, self.overheads.value_ms(worker_id))
        self._overheads_dirty.clear()
        self.view.set_overhead_floor(self.overheads.floor_ms())

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
            # A send that does not fit raises instead of vanishing: replies wait in the outbox instead.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            if self.curve_secret_key:
                from infaas_cli.security import make_server

                make_server(sock, self.curve_secret_key)
        # A restarted worker reconnects under its old id; let the new connection take the id over.
        self.workers_sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.client_endpoint = _bind(self.clients, self.client_endpoint)
        self.worker_endpoint = _bind(self.workers_sock, self.worker_endpoint)
        metrics_server = None
        if self.settings.metrics_port is not None:
            metrics_server, self.metrics_endpoint = start_server(self.metrics, metrics_host(self.client_endpoint),
                                                                 self.settings.metrics_port)
            log.info("master metrics on %s", self.metrics_endpoint)
        self._write_endpoints()
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.workers_sock, zmq.POLLIN)
        log.info("master serving clients on %s, workers on %s (catalog: %d models, %d variants)",
                 self.client_endpoint, self.worker_endpoint, len(self.store.models()), len(self.store.variants()))
        next_tick = next_autoscale = time.monotonic()
        try:
            while not self.stop_event.is_set():
                # Waiting replies are retried every few ms until their clients read. Workers first: their
                # heartbeats and results must not wait behind a flood of queries.
                ready = dict(poller.poll(5 if self.ledger.waiting else 50))
                turn = time.monotonic()
                backlog = False
                for sock in (self.workers_sock, self.clients):
                    if sock in ready:
                        backlog |= not self._drain(sock)
                        self._flush()
                if not backlog:
                    self._behind_since = None
                elif self._behind_since is None:
                    self._behind_since = turn
                if self.ledger.waiting:
                    self._step(self._flush_outboxes)
                if time.monotonic() >= next_tick:
                    self._step(self._sync_overheads)
                    self._step(self._check_workers)
                    self._step(self._expire_pending)
                    self._step(self._advance_drains)
                    self._step(self._advance_rollouts)
                    next_tick = time.monotonic() + min(0.25, self.heartbeat_interval_s / 2)
                if time.monotonic() >= next_autoscale:
                    self.cache_stats = self.cache.stats()
                    self._step(self._autoscale_cluster)
                    self._step(self._check_drift)
                    self._step(self._reconcile_pins)
                    next_autoscale = time.monotonic() + self.heartbeat_interval_s
                self._flush()
        finally:
            for p in list(self.pending.values()):
                self._reply_error(p, "unavailable", "the master is shutting down; retry against the restarted master")
            self._flush()
            self._flush_outboxes()
            self.clients.close(linger=200)
            self.workers_sock.close(linger=0)
            if auth is not None:
                auth.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            self.store.close()
            log.info("master stopped")

    def _write_endpoints(self) -> None:
        if self.endpoints_file is None:
            return
        self.endpoints_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"client_endpoint": self.client_endpoint, "worker_endpoint": self.worker_endpoint,
                                   "metrics_endpoint": self.metrics_endpoint, "pid": os.getpid()}))
        os.replace(tmp, self.endpoints_file)

    def _step(self, fn, *args) -> None:
        step("master", fn, *args)

    def _drain(self, sock: zmq.Socket) -> bool:
        """Handle up to DRAIN_BATCH messages of one socket; False when more were left waiting (a backlog)."""
        door = self._client_door if sock is self.clients else self._worker_door
        until = time.monotonic() + DRAIN_BUDGET_S
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)  # tensor frames are forwarded, never copied
            except zmq.Again:
                return True
            self._step(door, frames)
            if time.monotonic() > until:
                break
        return False

    # -- sending ---------------------------------------------------------------------------------------
    def _reply(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        """Queue a reply to a client for the next flush (the loop sends what one drain produced in one burst)."""
        try:
            frames = [*route, *protocol.encode(msg)]
        except protocol.ProtocolError as exc:  # our own bug: still answer the request
            log.error("cannot encode %s %s: %s", msg.type, msg.id, exc.reason)
            frames = [*route, *protocol.encode(protocol.error("internal", "the reply could not be encoded (logged)",
                                                              msg.id))]
        self._out_replies.append((route, msg.id, frames))
        if len(self._out_replies) >= FLUSH_AT:
            self._flush()

    def _queue_infer(self, identity: bytes, frames: list, internal_id: str) -> None:
        """Queue an infer for the next flush, as _reply queues a reply."""
        self._out_infers.append((identity, frames, internal_id))
        if len(self._out_infers) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        """Send the queued infers and replies: ZeroMQ's I/O thread is woken once per burst, not per message."""
        if self._out_infers:
            infers, self._out_infers = self._out_infers, []
            for identity, frames, internal_id in infers:
                self._send_infer(identity, frames, internal_id)
        if self._out_replies:
            replies, self._out_replies = self._out_replies, []
            for route, msg_id, frames in replies:
                self._send_reply(route, msg_id, frames)

    def _send_infer(self, identity: bytes, frames: list, internal_id: str) -> None:
        """Send one queued infer; a worker that cannot take it has the query re-routed (or, when it is gone,
        declared dead with all its queries)."""
        try:
            self.workers_sock.send_multipart([identity, *frames], zmq.NOBLOCK,
                                             copy=not protocol.zero_copy(frames))
            return
        except zmq.Again:
            why = "its queue is full"
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the connection is gone
            why = f"it is unreachable ({exc})"
        p = self.pending.get(internal_id)
        if p is None:
            return
        log.warning("worker %s cannot take query %s now: %s", p.worker_id, internal_id, why)
        entry = self.workers.get(p.worker_id)
        if why.startswith("it is unreachable") and entry is not None and entry.alive:
            self._declare_dead(entry, why)  # re-routes this query with the others
            return
        self._finish(internal_id, p.worker_id)
        self._reroute(p, p.worker_id)

    def _send_reply(self, route: tuple[bytes, ...], msg_id: str, frames: list) -> None:
        """Send one reply; one its client's socket cannot take now waits, in order, in the client's outbox."""
        box = self.ledger.outbox.get(route[0])
        if box is None:
            try:
                self.clients.send_multipart(frames, zmq.NOBLOCK, copy=not protocol.zero_copy(frames))
                return
            except zmq.Again:
                box = self.ledger.outbox[route[0]] = collections.deque()
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone; nobody is left to tell
                log.info("client %r left before its reply %s: %s", route[0][:16], msg_id, exc)
                return
        if len(box) >= self.settings.max_waiting_replies_per_client or \
                self.ledger.waiting >= self.settings.max_waiting_replies:
            # A client that sends without ever reading: memory stays bounded, and the loss is counted.
            self.replies_dropped += 1
            if self.replies_dropped % 1000 == 1:
                log.warning("client %r reads no replies: %d waiting for it; dropping (%d dropped so far)",
                            route[0][:16], len(box), self.replies_dropped)
            return
        box.append(frames)
        self.ledger.waiting += 1

    def _flush_outboxes(self) -> None:
        for identity in list(self.ledger.outbox):
            box = self.ledger.outbox[identity]
            while box:
                try:
                    self.clients.send_multipart(box[0], zmq.NOBLOCK, copy=not protocol.zero_copy(box[0]))
                except zmq.Again:
                    break
                except zmq.ZMQError:  # the client left: its waiting replies have no reader
                    self.ledger.waiting -= len(box)
                    box.clear()
                    break
                box.popleft()
                self.ledger.waiting -= 1
            if not box:
                del self.ledger.outbox[identity]

    def _send_worker(self, identity: bytes, msg: protocol.Message) -> bool:
        """Send to a worker; False when its pipe is full or it is gone (then it is dead at once)."""
        try:
            self.workers_sock.send_multipart([identity, *protocol.encode(msg)], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            log.warning("worker %r cannot take %s %s now (its queue is full)", identity[:32], msg.type, msg.id)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the connection is gone
            entry = self.workers.get(identity.decode(errors="replace"))
            if entry is not None and entry.identity == identity and entry.alive:
                self._declare_dead(entry, f"is unreachable ({exc})")
        except protocol.ProtocolError as exc:
            log.error("cannot encode %s %s: %s", msg.type, msg.id, exc.reason)
        return False

    # -- the client door -------------------------------------------------------------------------------
    def _client_door(self, frames: list[bytes]) -> None:
        """Exactly one reply per client frame: a result later, or an error now."""
        if len(frames) < 2:
            return  # ROUTER always prefixes the identity; nothing here to answer
        self.arrived = time.monotonic()  # the SLO clock of a query starts at the door
        # The route: the identity ROUTER prefixed, and the empty delimiter a REQ client adds (an envelope is
        # never empty); the message: the envelope, then its tensor data frames.
        cut = 2 if len(frames) > 2 and not len(frames[1]) else 1
        route, message = tuple(f.bytes for f in frames[:cut]), frames[cut:]
        try:
            msg = protocol.decode(message)
        except protocol.ProtocolError as exc:
            self.metrics.on_error(exc.code)  # unreadable: perhaps a query; its model is unknown
            self._refuse(route, exc.code, exc.reason, protocol.peek_id(message))
            return
        handler = self._client_handlers.get(msg.type)
        if handler is None:
            self._refuse(route, "unknown_type", f"the master does not take {msg.type} from clients", msg.id)
            return
        try:
            handler(route, msg)
        except Exception as exc:
            code, reason, extra = wire_error(exc)
            if code == "internal":
                log.exception("client %s %s failed", msg.type, msg.id)
            if msg.type == "query":
                self.metrics.on_query_refused(code, msg.body)
            self._refuse(route, code, reason, msg.id, **extra)

    def _refuse(self, route: tuple[bytes, ...], code: str, reason: str, request_id: str, **extra: Any) -> None:
        self.queries_refused += 1
        self._reply(route, protocol.error(code, reason, request_id, **extra))

    # -- the worker door -------------------------------------------------------------------------------
    def _worker_door(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        identity, message = frames[0].bytes, frames[1:]
        if identity in self.refused:
            return  # cut off for sending garbage
        try:
            msg = protocol.decode(message)
        except protocol.ProtocolError as exc:
            self._worker_garbage(identity, exc.reason)
            self._send_worker(identity, protocol.error(exc.code, exc.reason, protocol.peek_id(message)))
            return
        worker_id = identity.decode(errors="replace")
        entry = self.workers.get(worker_id)
        if entry is not None and entry.identity == identity:
            self.seen(entry)
        handler = self._worker_handlers.get(msg.type)
        if handler is None:
            self._worker_garbage(identity, f"a worker sent {msg.type}")
            self._send_worker(identity, protocol.error("unknown_type", f"the master does not take {msg.type} "
                                                       "from workers", msg.id))
            return
        try:
            handler(identity, worker_id, msg)
        except Exception as exc:
            code, reason, extra = wire_error(exc)
            if code == "internal":
                log.exception("worker %s %s failed", msg.type, worker_id)
            self._send_worker(identity, protocol.error(code, reason, msg.id, **extra))

    def _worker_garbage(self, identity: bytes, reason: str) -> None:
        """Count a worker's bad frame; past the limit it is cut off and leaves the cluster."""
        self.garbage[identity] += 1
        n = self.garbage[identity]
        if n == 1:
            log.warning("bad frame from worker %r: %s", identity[:32], reason)
        if n < self.settings.worker_garbage_limit:
            return
        del self.garbage[identity]
        self.refused[identity] = None
        if len(self.refused) > MAX_REFUSED:
            self.refused.popitem(last=False)
        log.warning("worker %r sent %d bad frames: cut off", identity[:32], n)
        entry = self.workers.get(identity.decode(errors="replace"))
        if entry is not None and entry.identity == identity:
            self._declare_dead(entry, "cut off for sending garbage")
            self._forget(entry.worker_id)

    # -- timers ----------------------------------------------------------------------------------------
    def _check_workers(self) -> None:
        """Declare late workers dead and forget long-dead ones, reading only the front of the liveness order.

        Skipped while the loop itself is behind: a heartbeat still waiting in the socket is not a dead
        worker, so query load never turns into false deaths.
        """
        now = time.monotonic()
        late_s = self.settings.dead_after_missed_heartbeats * self.heartbeat_interval_s
        if self.loop_lag_s() > self.heartbeat_interval_s:
            self.deaths_deferred += 1
            return
        late = []
        for worker_id in self.seen_order:
            w = self.workers.get(worker_id)
            if w is not None and now - w.last_seen <= late_s:
                break  # everyone behind it was heard from more recently
            late.append((worker_id, w))
        for worker_id, w in late:
            if w is None:
                del self.seen_order[worker_id]
                continue
            quiet_s = now - w.last_seen
            if w.alive:
                self._declare_dead(w, f"missed {self.settings.dead_after_missed_heartbeats} heartbeats")
            elif quiet_s > self.settings.forget_dead_worker_s:
                log.info("worker %s forgotten (dead for %.0f s)", w.worker_id, quiet_s)
                self._forget(w.worker_id)

    def _declare_dead(self, w, why: str) -> None:
        w.alive = False
        w.loaded = {}
        self._cluster_changed(w)
        lost = [rid for rid in w.inflight if rid in self.pending]
        log.warning("worker %s %s: dead; re-routing %d queries", w.worker_id, why, len(lost))
        w.inflight = set()
        for rid in lost:
            p = self.pending.pop(rid)
            self.ledger.finished(p.route[0])
            self._reroute(p, w.worker_id)

    def _forget(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)
        self.seen_order.pop(worker_id, None)
        self.overheads.forget(worker_id)
        self.autoscale_states.pop(worker_id, None)
        self.autoscaled_at.pop(worker_id, None)
        self.draining.discard(worker_id)
        self.view.remove_worker(worker_id)
        self.view.set_overhead(worker_id, None)

    def _reroute(self, p: PendingQuery, dead_worker: str) -> None:
        if p.attempts >= self.settings.max_attempts:
            self._reply_error(p, "worker_lost", f"worker {dead_worker} died and the query was already retried "
                                                f"{p.attempts - 1} time(s)")
            return
        try:
            self._dispatch(p.route, p.client_request_id, p.inputs, p.frames, p.query, p.attempts + 1, (dead_worker,),
                           arrived=p.arrived)
        except Exception as exc:
            self._reply_error(p, "worker_lost", f"worker {dead_worker} died and no other can take the query: "
                                                f"{wire_error(exc)[1]}")

    def _expire_pending(self) -> None:
        """Answer queries whose worker never did; `pending` is in dispatch order, so only its front is read."""
        now = time.monotonic()
        timeout_s = self.settings.pending_timeout_s
        expired = []
        for rid, p in self.pending.items():
            if now - p.started <= timeout_s:
                break
            expired.append((rid, p))
        for rid, p in expired:
            self._finish(rid)
            self._reply_error(p, "overloaded", f"no answer from worker {p.worker_id} within {timeout_s:.0f} s")


def _bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind; a tcp endpoint with port 0 gets a free port. Returns the endpoint actually bound."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        host = endpoint[len("tcp://"):-2]
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
