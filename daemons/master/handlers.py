"""The master's message handlers: each takes one decoded, validated message and updates state or answers.

Bodies arrive as the typed structures of infaas_cli.protocol.messages, already checked at the door
(daemons/master/loop.py). A handler that raises has its exception turned into exactly one error
reply by the door; decisions are the pure policies' (infaas_cli.policy).
"""

from __future__ import annotations

import collections
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import sha256_file
from infaas_cli.catalog.records import ReplicationRecord, VariantRecord
from infaas_cli.errors import InfaasError, InvalidInputError
from infaas_cli.policy.baselines import pin_variant, query_class
from infaas_cli.backends.keys import backend_names, unavailable_reason
from infaas_cli.policy.placement import need_of, place
from infaas_cli.policy.selection import Query, select
from infaas_cli.policy.versions import route_draw, split_id
from infaas_cli.protocol import messages as m
from infaas_daemons.common import log
from infaas_daemons.master.cache import PredictionCache
from infaas_daemons.master.state import CachedAnswer, PendingQuery, WorkerEntry, slo_class

CHUNK_BYTES = 1 << 20
#: The `worker` a cache hit's reply names: no worker ran it.
CACHE_WORKER = "cache"
#: What a cached answer costs besides its output bytes, per output and for the entry (descriptors, names).
CACHED_HEADER_BYTES = 128


class _Upload:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0


class ClientHandlers:
    """query, status, changes and artifact_chunk from clients (and the CLI's replication)."""

    def _on_query(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        t0 = time.perf_counter_ns(), time.thread_time_ns()  # the decision's clocks: every lookup below counts
        b: m.QueryBody = msg.body
        if not b.inputs:
            raise protocol.ProtocolError("invalid_input", "the query carries no inputs")
        identity = route[0]
        lag_s = self.loop_lag_s()
        if lag_s * 1e3 > self.settings.max_loop_lag_ms:
            raise protocol.ProtocolError("overloaded", f"the master is {lag_s * 1e3:.0f} ms behind its queries; "
                                         "retry shortly, or spread the load over more masters")
        if self.ledger.load(identity) >= self.settings.max_pending_per_client or \
                len(self.pending) >= self.settings.max_pending:
            raise protocol.ProtocolError("overloaded", f"too many queries in flight ({self.ledger.load(identity)} "
                                         "from this client); read the replies, or send fewer at once")
        if self.removing:  # a model being removed (lifecycle.py) is hidden from selection: say why
            named = b.model if b.kind == "model" else \
                (b.variant or "").split("/", 1)[0] if b.kind == "variant" else None
            if named in self.removing:
                raise protocol.ProtocolError("unknown_model", f"model {named} is being removed (`infaas remove`); "
                                             "query another model, or register it again")
        signature = tuple(sorted((name, t.dtype, tuple(t.shape)) for name, t in b.inputs.items()))
        query = Query(kind=b.kind, variant=b.variant, model=b.model, task=b.task, dataset=b.dataset,
                      latency_ms=b.latency_ms, min_accuracy=b.min_accuracy, objective=b.objective or "cost",
                      max_cost_usd=b.max_cost_usd, batch_size=self._batch_hint(b, signature),
                      slo_mode=b.slo_mode or "best_effort", inputs=signature,
                      route_draw=route_draw(msg.id) if b.kind != "variant" else None)
        self._dispatch(route, msg.id, b.inputs, msg.frames, query, attempts=1, exclude=(), arrived=self.arrived,
                       t0=t0)

    def _batch_hint(self, b: m.QueryBody, signature: tuple) -> int:
        """The batch size selection plans for: the first candidate model that takes the inputs says it."""
        index = self.catalog.index()
        if b.kind == "variant":
            info = index.infos.get(b.variant or "")
            names = [info.model] if info is not None else []
        elif b.kind == "model":
            names = [index.model_id(b.model)] if b.model else []  # the version its route serves
        else:
            names = self.catalog.task_models(b.task, b.dataset)
        first_error: InfaasError | None = None
        for name in names:
            try:
                return self.catalog.check_inputs(name, signature)
            except InvalidInputError as exc:
                first_error = first_error or exc
            except InfaasError:
                continue
        if first_error is not None:
            raise first_error
        _, _, shape = signature[0]
        return int(shape[0]) if shape else 1

    def _dispatch(self, route: tuple[bytes, ...], client_id: str, inputs: dict[str, m.Tensor], frames: list,
                  query: Query, attempts: int, exclude: tuple[str, ...], arrived: float,
                  t0: tuple[int, int] | None = None) -> None:
        t0 = (time.perf_counter_ns(), time.thread_time_ns()) if t0 is None else t0
        index = self.catalog.index()
        if self.policy != "infaas" and query.kind != "variant":  # a baseline: the class's fixed variant,
            key = query_class(query)                                # placed like a by-name query
            pinned = self.pins.get(key)
            if pinned is None:
                pinned = self.pins[key] = pin_variant(query, index)
                if self.policy == "fixed-peak":
                    self._provision_static(pinned)
            query_ = Query("variant", variant=pinned, batch_size=query.batch_size)
        else:
            query_ = query
        if exclude:  # a retry: the workers that failed it count as gone, for this decision only
            with self.view.excluding(exclude) as view:
                decision = select(query_, index, view)
        else:
            decision = select(query_, index, self.view)
        try:
            batch = self.catalog.check_inputs(decision.model, query.inputs)
        except InfaasError as exc:
            raise protocol.ProtocolError("invalid_input", str(exc)) from None
        decision_us = (time.perf_counter_ns() - t0[0]) / 1e3
        # The master's own work, without the time the OS gave the CPU to someone else meanwhile.
        self.decision_cpu_us.append((time.thread_time_ns() - t0[1]) / 1e3)
        if query.kind == "variant":  # named by its client: autoscaling may replicate it, never switch it away
            self.named_variants[decision.variant] = time.monotonic()
        if query.latency_ms is not None:
            prev = self.variant_slo.get(decision.variant)
            now = time.monotonic()
            if prev is None or query.latency_ms <= prev[0] or now - prev[1] > self.autoscale_config.window_s:
                self.variant_slo[decision.variant] = (query.latency_ms, now)
        self.decision_us.append(decision_us)
        self.metrics.on_decision(decision_us / 1e6, index)
        spec = self.catalog.variant_spec(decision.variant)
        model = self.catalog.model(decision.model)
        if len(inputs) == 1 and "" in inputs and len(spec.inputs) == 1:  # a .npy query: the model names it
            inputs = {spec.inputs[0].name: inputs[""]}
        cache_key = None
        if self.cache.enabled(decision.model):
            cache_key = self._cache_key(decision.model, inputs, frames, query)
            hit = self.cache.get(cache_key)
            if hit is not None:
                self._answer_from_cache(route, client_id, query, decision.model, hit, decision_us, arrived)
                return
        worker = self.workers[decision.worker_id]
        internal_id = f"{self.id_prefix}{next(self.id_counter):x}"  # unique per master run, cheaper than uuid4
        # The data frames go on untouched: the worker views them as its inputs (and casts what needs a cast).
        infer = protocol.Message("infer", m.InferBody(variant=decision.variant, inputs=inputs, spec=spec,
                                                      deadline_ms=query.latency_ms), id=internal_id, frames=frames)
        try:
            encoded = protocol.encode(infer)
        except protocol.ProtocolError as exc:  # our own bug: the door answers it
            raise protocol.ProtocolError("internal", f"the infer could not be encoded: {exc.reason}") from None
        self.pending[internal_id] = PendingQuery(route, client_id, inputs, frames, query, decision.variant,
                                                 worker.worker_id, batch, decision_us, time.monotonic(),
                                                 decision.needs_load, attempts, [o["name"] for o in model.outputs],
                                                 arrived, decision.predicted_latency_ms, decision.model, cache_key)
        self.ledger.started(route[0])
        worker.inflight.add(internal_id)
        if decision.variant in worker.loaded:
            worker.loaded[decision.variant] += batch
            self._queue_changed(worker, decision.variant)
        else:  # a load on this worker: the next query must see it as held there (and its cores as taken)
            worker.loaded[decision.variant] = batch
            self._cluster_changed(worker)
        self._queue_infer(worker.identity, encoded, internal_id)  # last: a flush may re-route it at once

    @staticmethod
    def _cache_key(model: str, inputs: dict[str, m.Tensor], frames: list, query: Query):
        """The prediction cache's key: the model, the input bytes (hashed in place) and what else shapes the
        answer — the variant a query named, or the accuracy a model-less one asked for."""
        scope = query.variant if query.kind == "variant" else \
            (f"min_accuracy={query.min_accuracy!r}" if query.min_accuracy else "")
        return PredictionCache.key(model, ((name, t.dtype, t.shape, protocol.frame_buffer(frames[t.frame]))
                                           for name, t in inputs.items()), scope)

    def _answer_from_cache(self, route: tuple[bytes, ...], client_id: str, query: Query, model: str,
                           hit: CachedAnswer, decision_us: float, arrived: float) -> None:
        """A cache hit: answered here, no worker involved; counted like any other answer."""
        now = time.monotonic()
        latency_ms = (now - arrived) * 1e3
        slo_met = None if query.latency_ms is None else latency_ms <= query.latency_ms
        if slo_met is not None:
            self.slo.record(now, model, slo_class(query), slo_met)
        self.metrics.on_reply(model, hit.variant, query.task, latency_ms / 1e3, None, None, slo_met)
        self.queries_served += 1
        base, version = split_id(model)
        self._reply(route, protocol.Message("reply", m.ReplyBody(
            outputs=hit.outputs, variant=hit.variant, worker=CACHE_WORKER, decision_us=decision_us,
            timing={"total_ms": latency_ms}, output_names=hit.output_names, latency_ms=latency_ms, slo_met=slo_met,
            model=base, cached=True, version=version), id=client_id, frames=hit.frames))

    def _on_status(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        status = self.status(msg.body.workers_offset, msg.body.workers_limit)
        self._reply(route, protocol.Message("status_reply", m.StatusReplyBody(**status), id=msg.id))

    def status(self, workers_offset: int = 0, workers_limit: int = 100) -> dict[str, Any]:
        """The master's summary, and one page of its workers: a status costs the page, not the cluster."""
        now = time.monotonic()
        dec = np.asarray(self.decision_us) if self.decision_us else np.zeros(0)
        dec_cpu = np.asarray(self.decision_cpu_us) if self.decision_cpu_us else np.zeros(0)
        workers = []
        page = itertools.islice(self.workers.values(), workers_offset, workers_offset + workers_limit)
        for w in page:
            mt = w.metrics
            workers.append({
                "worker_id": w.worker_id, "alive": w.alive, "last_seen_s": round(now - w.last_seen, 3),
                # Backends by name as people know them; the placement keys add the host capabilities ("ov-cpu+bf16").
                "backends": backend_names(w.backends), "placement_keys": w.backends,
                "cores": mt.cores if mt else w.hardware.cores,
                "free_cores": mt.free_cores if mt else None, "cpu_percent": mt.cpu_percent if mt else None,
                "free_memory_bytes": mt.free_memory_bytes if mt else None, "in_flight": len(w.inflight),
                "cpu_model": w.hardware.cpu_model, "hostname": w.hardware.hostname,
                "variants": self._worker_variants(w),
                "autoscale": {name: st.state for name, st in self.autoscale_states.get(w.worker_id, {}).items()},
                "state": "dead" if not w.alive else ("draining" if w.worker_id in self.draining else "serving"),
                "hardware": {"cpu_model": w.hardware.cpu_model, "cores": w.hardware.cores,
                             "memory_bytes": w.hardware.memory_bytes, "gpus": w.hardware.gpus,
                             "hostname": w.hardware.hostname},
            })
        store = self.catalog.store
        return {
            "master": {
                "endpoint": self.client_endpoint, "worker_endpoint": self.worker_endpoint, "pid": self.pid,
                "metrics_endpoint": self.metrics_endpoint,
                "uptime_s": round(time.time() - self.started, 1),
                "models": len(store.models()), "variants": len(store.variants()),
                "replication": {r.source: r.last_seq for r in store.scan(ReplicationRecord)},
                "policy": self.policy, "pins": {"/".join(str(k) for k in key): v for key, v in self.pins.items()},
                "pinned": {name: pin.describe() for name, pin in sorted(self.pinned.items())},
                "removing": sorted(self.removing),
                "versions": self.versions_status(),
                "rollouts": [*self.rollout_history, *(ro.describe() for ro in self.rollouts.values())],
                "autoscale_actions": list(self.actions),
                "cluster_decisions": list(self.cluster_decisions),
                "workers_total": len(self.workers), "workers_alive": self.workers_alive,
                "workers_offset": workers_offset, "loop_lag_ms": round(self.loop_lag_s() * 1e3, 1),
                "false_death_guard": self.deaths_deferred,
                "pending": len(self.pending), "queries_served": self.queries_served,
                "queries_failed": self.queries_failed, "queries_refused": self.queries_refused,
                "prediction_cache": self.cache.stats(),
                "replies_waiting": self.ledger.waiting, "replies_dropped": self.replies_dropped, "workers_refused": len(self.refused),
                "slo": self.slo.summary(now),
                "reprofiles": self.drift_status(),
                "decision_us": {"count": int(dec.size),
                                "p50": float(np.percentile(dec, 50)) if dec.size else None,
                                "p99": float(np.percentile(dec, 99)) if dec.size else None,
                                "max": float(dec.max()) if dec.size else None},
                "decision_cpu_us": {"p50": float(np.percentile(dec_cpu, 50)) if dec_cpu.size else None,
                                    "p99": float(np.percentile(dec_cpu, 99)) if dec_cpu.size else None},
            },
            "workers": workers,
        }

    def _worker_variants(self, w: WorkerEntry) -> dict[str, Any]:
        """The last heartbeat's view, plus what was dispatched since (loads the heartbeat has not shown yet);
        an operator's pinned copies are marked `pinned: true` with the replicas the pin keeps there."""
        variants = {k: {f: getattr(v, f) for f in v.__struct_fields__} for k, v in w.variant_metrics.items()}
        for name, queued in w.loaded.items():
            variants.setdefault(name, {"state": "dispatched", "queue": queued, "qps": 0.0, "latency_ms": 0.0})
        for name, row in variants.items():
            pinned = self.pinned_replicas(name, w.worker_id)
            if pinned:
                row["pinned"], row["pinned_replicas"] = True, pinned
        return variants

    # -- the catalog and client-requested loads (the gateway's OIP metadata and repository extension) -------
    def _on_catalog(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        self._reply(route, protocol.Message("catalog_reply", self.catalog_reply(msg.body.model), id=msg.id))

    def catalog_reply(self, only: str | None = None) -> m.CatalogReplyBody:
        """Models, their signatures and variants, and where each variant is loaded (or loading) now."""
        index = self.catalog.index()
        loaded: dict[str, list[str]] = collections.defaultdict(list)
        loading: dict[str, list[str]] = collections.defaultdict(list)
        for w in self.workers.values():
            if not w.alive:
                continue
            shown = w.variant_metrics
            for name in set(shown) | set(w.loaded):
                vm = shown.get(name)
                (loaded if vm is not None and vm.state == "loaded" else loading)[name].append(w.worker_id)
        variants: dict[str, list[m.CatalogVariant]] = collections.defaultdict(list)
        for v in self.catalog.store.variants():
            info = index.infos.get(v.name)
            lat = info.batch_latency_ms[0][1] if info is not None and info.batch_latency_ms else None
            variants[v.model].append(m.CatalogVariant(
                name=v.name, recipe=v.recipe, backend=v.backend, hardware=v.hardware, threads=v.threads,
                max_batch=v.max_batch, accuracy=v.accuracy, latency_ms=lat, loaded_on=sorted(loaded[v.name]),
                loading_on=sorted(loading[v.name]),
                pinned_on=sorted(self.pinned[v.name].placed) if v.name in self.pinned else []))
        models = []
        for rec in self.catalog.store.models():
            if only is not None and rec.name != only:
                continue
            base, version = split_id(rec.name)
            route = index.routes.get(base)
            models.append(m.CatalogModel(
                version=version, serving=route is not None and version in route.versions,
                name=rec.name, task=rec.task or "", dataset=rec.dataset or "",
                inputs=[m.TensorSpec(**s) for s in rec.inputs], outputs=[m.TensorSpec(**s) for s in rec.outputs],
                batch_dim=rec.batch_dim, max_batch=max(1, rec.max_batch), accuracy=rec.accuracy,
                variants=sorted(variants[rec.name], key=lambda x: x.name)))
        if only is not None and not models:
            raise protocol.ProtocolError("unknown_model", f"unknown model '{only}'")
        return m.CatalogReplyBody(models=models, workers_alive=sum(1 for w in self.workers.values() if w.alive))

    def _on_preload(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        """Load a variant ahead of its queries: on a worker placed like a query's cold start, unless some
        live worker holds it already; with `pin`, keep it loaded (lifecycle.py). Answered at once with the
        model's catalog entry (the load runs on)."""
        name = msg.body.variant
        if msg.body.pin:
            self.pin(name, msg.body.replicas or 1, msg.body.worker)
            model = self.store.get(VariantRecord, name).model
            self._reply(route, protocol.Message("catalog_reply", self.catalog_reply(model), id=msg.id))
            return
        spec = self.catalog.variant_spec(name)  # unknown_model when the catalog lacks it
        snapshot = self.snapshot()
        if not any(name in w.loaded for w in snapshot.workers if w.alive):
            need = need_of(spec)
            ids = place(snapshot.workers, need, "query")
            if not ids:
                live = {key for w in snapshot.workers if w.alive for key in w.backends}
                raise protocol.ProtocolError("unavailable", unavailable_reason([need.key], live, name))
            w = self.workers[ids[0]]
            if not self._send_worker(w.identity, protocol.Message("load", m.LoadBody(variant=name, spec=spec))):
                raise protocol.ProtocolError("unavailable", f"worker {w.worker_id} cannot be reached")
            w.loaded.setdefault(name, 0)
            self._cluster_changed(w)
            log.info("preload %s on %s (asked by a client)", name, w.worker_id)
        self.named_variants[name] = time.monotonic()  # asked for by name: autoscaling does not switch it away
        model = self.store.get(VariantRecord, name).model
        self._reply(route, protocol.Message("catalog_reply", self.catalog_reply(model), id=msg.id))

    def _on_client_unload(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        """Unload a variant from every live worker holding it (or from `worker` only), dropping its pin (or that
        worker's share of it); answered with the model's catalog entry."""
        name, only = msg.body.variant, msg.body.worker
        self.catalog.variant_spec(name)  # unknown_model when the catalog lacks it
        if only is not None and only not in self.workers:
            raise protocol.ProtocolError("not_found", f"no worker '{only}' (workers: "
                                         f"{', '.join(sorted(self.workers)) or 'none'})")
        self.unpin(name, only)
        for w in list(self.workers.values()):
            if only is not None and w.worker_id != only:
                continue
            if w.alive and self._holds(w, name):
                self._unload_on(w, [name])
                log.info("unload %s on %s (asked by a client)", name, w.worker_id)
        if only is None:
            self.named_variants.pop(name, None)
        model = self.store.get(VariantRecord, name).model
        self._reply(route, protocol.Message("catalog_reply", self.catalog_reply(model), id=msg.id))

    def _on_remove(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        """`infaas remove`: refuse while serving, or drain (lifecycle.py); answered now or once drained."""
        self.remove(route, msg.id, msg.body)

    # -- replication -------------------------------------------------------------------------------------
    def _on_changes(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        b: m.ChangesBody = msg.body
        entries = [{f: getattr(e, f) for f in e.__struct_fields__} for e in b.entries]
        applied, last = self.catalog.store.apply_replicated(b.source, entries)
        needed = self.catalog.needed_artifacts()
        if applied:
            self._replicated(b.entries, needed)  # removals: hidden models, unloads, unused artifacts (lifecycle.py)
            self._catalog_changed()
            log.info("applied %d change(s) from %s, now at %d", applied, b.source, last)
        missing = sorted(s for s in needed if not self.artifacts.has(s))
        self._reply(route, protocol.Message("ack", m.AckBody(last_seq=last, applied=applied,
                                                             missing_artifacts=missing), id=msg.id))

    def _on_upload(self, route: tuple[bytes, ...], msg: protocol.Message) -> None:
        b: m.ArtifactChunkBody = msg.body
        sha = b.sha256
        if self.artifacts.has(sha):
            self._reply(route, protocol.Message("ack", m.AckBody(sha256=sha, complete=True), id=msg.id))
            return
        upload = self.uploads.get(sha)
        if b.offset == 0:
            self.artifacts.root.mkdir(parents=True, exist_ok=True)
            upload = self.uploads[sha] = _Upload(self.artifacts.root / f".upload-{sha}")
            upload.path.write_bytes(b"")
        if upload is None or b.offset != upload.offset:
            expected = 0 if upload is None else upload.offset
            raise protocol.ProtocolError("sequence_gap", f"chunk at offset {b.offset} of {sha[:12]}, expected {expected}")
        if upload.offset + len(b.data) > b.total_bytes:
            del self.uploads[sha]
            upload.path.unlink(missing_ok=True)
            raise protocol.ProtocolError("bad_request", f"chunks of {sha[:12]} run past total_bytes {b.total_bytes}")
        with open(upload.path, "ab") as fh:
            fh.write(b.data)
        upload.offset += len(b.data)
        if upload.offset < b.total_bytes:
            self._reply(route, protocol.Message("ack", m.AckBody(sha256=sha, offset=upload.offset, complete=False),
                                                id=msg.id))
            return
        del self.uploads[sha]
        if sha256_file(upload.path) != sha:
            upload.path.unlink(missing_ok=True)
            raise protocol.ProtocolError("checksum", f"artifact {sha[:12]} arrived corrupt; push it again")
        self.artifacts.put_file(upload.path)
        upload.path.unlink(missing_ok=True)
        self._reply(route, protocol.Message("ack", m.AckBody(sha256=sha, complete=True), id=msg.id))


class WorkerHandlers:
    """register, heartbeat, loaded, result, error and fetch from workers."""

    def _on_register(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        b: m.RegisterBody = msg.body
        old = self.workers.get(worker_id)
        self.workers[worker_id] = entry = WorkerEntry(worker_id, identity, b.hardware, list(b.backends),
                                                      time.monotonic(), inflight=old.inflight if old else set())
        self.seen(entry)
        self._cluster_changed(entry)
        log.info("worker %s registered (%s cores, backends %s)", worker_id, b.hardware.cores, ",".join(b.backends))
        self._send_worker(identity, protocol.Message(
            "registered", m.RegisteredBody(heartbeat_interval_s=self.heartbeat_interval_s), id=msg.id))

    def _known(self, identity: bytes, worker_id: str, msg: protocol.Message) -> WorkerEntry | None:
        entry = self.workers.get(worker_id)
        if entry is None:
            self._send_worker(identity, protocol.error("not_found", f"worker {worker_id} is not registered; "
                                                       "register again", msg.id, worker_id=worker_id))
        return entry

    def _on_heartbeat(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        entry = self._known(identity, worker_id, msg)
        if entry is None:
            return
        metrics: m.WorkerMetrics = msg.body.metrics
        was_alive, before = entry.alive, entry.metrics
        entry.alive = True
        if not was_alive:
            log.info("worker %s is back", worker_id)
        entry.metrics = metrics
        in_flight: dict[str, int] = collections.Counter()
        for rid in entry.inflight:
            p = self.pending.get(rid)
            if p is not None:
                in_flight[p.variant] += p.batch
        # A retiring variant (being switched out) takes no new queries.
        loaded = {name: int(in_flight.get(name, 0)) for name, vm in metrics.variants.items()
                  if vm.state != "retiring"}
        for name, n in in_flight.items():  # dispatched but not yet seen by the worker's heartbeat
            loaded.setdefault(name, n)
        # Most heartbeats repeat the last one as selection sees it: then the view has nothing to learn.
        if not (was_alive and before is not None and loaded == entry.loaded and
                (metrics.cores, metrics.free_cores, metrics.free_memory_bytes) ==
                (before.cores, before.free_cores, before.free_memory_bytes)):
            entry.loaded = loaded
            self._cluster_changed(entry)
        if not was_alive or before is None:  # back from the dead, or its first heartbeat since it (re-)registered:
            self._step(self._came_back, entry, metrics)  # removals may have happened while it was away (lifecycle.py)
        self._step(self._autoscale, entry)  # the worker's new load through the policy (spread over the interval)

    def _on_loaded(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        entry = self._known(identity, worker_id, msg)
        if entry is not None:
            entry.loaded.setdefault(msg.body.variant, 0)
            self._cluster_changed(entry)
            self._rollout_warmed(worker_id, msg.body.variant)  # a roll-out waiting for it may switch now

    def _on_result(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        p = self._finish(msg.id, worker_id)
        if p is None:
            return
        now = time.monotonic()
        timing = dict(msg.body.timing)
        timing["total_ms"] = (now - p.started) * 1e3
        latency_ms = (now - p.arrived) * 1e3
        bound = p.query.latency_ms
        slo_met = None if bound is None else latency_ms <= bound
        if slo_met is not None:
            self.slo.record(now, p.model, slo_class(p.query), slo_met)
        self._observe_result(p, latency_ms, timing)
        self._observe_inference(p.variant, p.worker_id, timing, p.batch)
        queue_ms, compute_ms = timing.get("queue_ms"), timing.get("inference_ms")
        self.metrics.on_reply(p.model, p.variant, p.query.task, latency_ms / 1e3,
                              None if queue_ms is None else queue_ms / 1e3,
                              None if compute_ms is None else compute_ms / 1e3, slo_met)
        base, version = split_id(p.model or p.variant)
        reply = protocol.Message("reply", m.ReplyBody(
            outputs=msg.body.outputs, variant=p.variant, worker=p.worker_id, decision_us=p.decision_us,
            timing=timing, needs_load=p.needs_load, attempts=p.attempts, output_names=p.output_names,
            latency_ms=latency_ms, predicted_latency_ms=p.predicted_latency_ms, slo_met=slo_met, model=base,
            version=version),
            id=p.client_request_id, frames=msg.frames)  # the output frames go on untouched
        self.queries_served += 1
        if p.cache_key is not None and p.attempts == 1:
            self.cache.put(p.cache_key, CachedAnswer(msg.body.outputs, msg.frames, p.variant, p.output_names),
                           sum(len(f) for f in msg.frames) + CACHED_HEADER_BYTES * (1 + len(msg.body.outputs)))
        self._reply(p.route, reply)

    def _observe_result(self, p: PendingQuery, latency_ms: float, timing: dict[str, float]) -> None:
        """What a finished query teaches: the serving path's overhead on its worker (end to end minus the
        worker's own queue and inference time), which selection adds to its predictions."""
        worker_ms = timing.get("worker_ms")
        if worker_ms is not None and not p.needs_load and p.attempts == 1:
            first = p.worker_id not in self.overheads
            self.overheads.add(p.worker_id, latency_ms, worker_ms)
            self._overheads_dirty.add(p.worker_id)
            if first:  # a worker's first sample counts at once; later ones on the next tick
                self._sync_overheads()

    def _on_worker_error(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        b: m.ErrorBody = msg.body
        if self._reprofile_refused(msg.id, b.code, b.reason):
            return
        p = self._finish(msg.id, worker_id)
        if p is None:
            log.warning("worker %s reports %s: %s", worker_id, b.code, b.reason)
            return
        self._reply_error(p, b.code if b.code in protocol.ERROR_CODES else "internal", b.reason)

    def _finish(self, internal_id: str, worker_id: str | None = None) -> PendingQuery | None:
        """Take a query out of flight; only the worker it was sent to may finish it."""
        p = self.pending.get(internal_id)
        if p is None or (worker_id is not None and p.worker_id != worker_id):
            return None
        del self.pending[internal_id]
        self.ledger.finished(p.route[0])
        w = self.workers.get(p.worker_id)
        if w is not None:
            w.inflight.discard(internal_id)
            if p.variant in w.loaded:
                w.loaded[p.variant] = max(0, w.loaded[p.variant] - p.batch)
                self._queue_changed(w, p.variant)
        return p

    def _reply_error(self, p: PendingQuery, code: str, reason: str) -> None:
        self.queries_failed += 1
        self.metrics.on_error(code, p.model, p.variant, p.query.task, slo=p.query.latency_ms is not None)
        self._reply(p.route, protocol.error(code, reason, p.client_request_id))

    def _on_fetch(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        b: m.FetchBody = msg.body
        path = self.artifacts.path(b.sha256)
        if not path.is_file():
            self._send_worker(identity, protocol.error("not_found", f"artifact {b.sha256[:12]} is not on the master; "
                                                       "run `infaas push`", msg.id, sha256=b.sha256))
            return
        total = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(b.offset)
            data = fh.read(CHUNK_BYTES)
        self._send_worker(identity, protocol.Message("artifact_chunk", m.ArtifactChunkBody(
            sha256=b.sha256, offset=b.offset, data=data, total_bytes=total), id=msg.id))
