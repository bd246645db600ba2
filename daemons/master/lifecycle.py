"""The master's side of the model lifecycle: operator pins (`infaas load` / `unload`, `master.min_loaded`) and
removals (`infaas remove`: stop routing, drain, unload everywhere, then forget what replication deleted).

A pin is desired state: the control tick reconciles the workers toward it (re-sending a load a restarted worker
lost, re-placing a copy whose worker died), so a lost message is repaired on the next tick. Autoscaling reads
`pinned_replicas` and never unloads, switches or cuts a pinned copy; the worker, told `pinned`, never evicts it.

The artifacts a removal's sweep freed are told to the live workers at once, and kept as tombstones (in the master's
store, bounded by `master.artifact_tombstones_max`) for those away at the time: a worker that registers or comes back
from the dead is told them too, less what the catalog needs again. Only digests this master freed are ever named.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infaas_cli import protocol
from infaas_cli.catalog.records import ModelRecord, PinRecord, TombstoneRecord, VariantRecord
from infaas_cli.catalog.store import MetadataStore
from infaas_cli.errors import InfaasError
from infaas_cli.policy.placement import need_of, place
from infaas_cli.protocol import messages as m
from infaas_daemons.common import log

#: A pinned load the worker has not shown yet is sent again after this many heartbeat intervals.
RESEND_AFTER_INTERVALS = 3


@dataclass
class Pin:
    """A variant kept loaded: `replicas` copies on `worker`, or placed by the master (one per worker first)."""

    variant: str
    replicas: int
    worker: str | None = None
    source: str = "operator"  # "operator" (`infaas load`, kept in the master's store) or "config" (min_loaded)
    placed: dict[str, int] = field(default_factory=dict)  # worker -> replicas the pin keeps there

    def describe(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "worker": self.worker, "source": self.source, "placed": dict(self.placed)}


@dataclass
class _Drain:
    """A `remove --drain` in progress: answered once its variants have no query in flight and no worker holds them."""

    route: tuple[bytes, ...]
    request_id: str
    models: list[str]
    variants: set[str]
    started: float
    deadline: float
    drained_queries: int
    unloads_sent_at: float | None = None
    unloaded_on: set[str] = field(default_factory=set)
    rolling_off: set[str] = field(default_factory=set)  # models whose route must switch off these versions first
    held_on: list[str] = field(default_factory=list)  # the workers holding them when the removal began


class ArtifactTombstones:
    """The artifacts this master's own sweeps freed, oldest first, kept in its store so that a restart remembers them:
    what a worker away during a removal (dead, partitioned, stopped: its cache outlives it) is told to drop when it
    comes back. Past `limit` the oldest are forgotten; a worker away that long keeps those files, as it did before
    tombstones. A digest the catalog needs again (re-pushed) leaves the list."""

    def __init__(self, store: MetadataStore, limit: int) -> None:
        self.store, self.limit = store, limit
        records = sorted(store.scan(TombstoneRecord), key=lambda r: (r.freed_at, r.sha256))
        self.freed: dict[str, float] = {r.sha256: r.freed_at for r in records}  # sha256 -> when freed, oldest first
        self._forget(self._over_limit())  # a lower limit than the last run's

    def add(self, digests: Iterable[str], now: float) -> None:
        """Remember `digests` as freed `now` (the newest), forgetting the oldest past the limit."""
        stored = set(self.freed)
        new = list(dict.fromkeys(digests))
        for sha in new:
            self.freed.pop(sha, None)
            self.freed[sha] = now
        over = self._over_limit()
        for sha in over:
            del self.freed[sha]
        with self.store.transaction() as txn:
            for sha in new:
                if sha in self.freed:
                    txn.put(TombstoneRecord(sha, now))
            for sha in over:
                if sha in stored:
                    txn.delete(TombstoneRecord.table, sha)

    def revive(self, needed: set[str]) -> list[str]:
        """Forget the tombstones of digests the catalog uses again (a model re-pushed); those forgotten."""
        back = sorted(needed & self.freed.keys())
        for sha in back:
            del self.freed[sha]
        self._forget_stored(back)
        return back

    def pending(self, needed: set[str]) -> list[str]:
        """The digests to tell a returning worker to drop: every tombstone the catalog does not need, oldest first."""
        return [sha for sha in self.freed if sha not in needed]

    def _over_limit(self) -> list[str]:
        return list(self.freed)[:max(0, len(self.freed) - self.limit)]

    def _forget(self, digests: list[str]) -> None:
        for sha in digests:
            del self.freed[sha]
        self._forget_stored(digests)

    def _forget_stored(self, digests: list[str]) -> None:
        if digests:
            with self.store.transaction() as txn:
                for sha in digests:
                    txn.delete(TombstoneRecord.table, sha)


class Lifecycle:
    """Pins and removals, mixed into the Master: its loop advances drains on the liveness tick and reconciles
    pins on the control tick (every heartbeat interval)."""

    def _init_lifecycle(self) -> None:
        self.pinned: dict[str, Pin] = {}
        # Models hidden from selection until replication deletes (or re-puts) them: the catalog view's own set.
        self.removing: set[str] = self.catalog.hidden
        self.drains: list[_Drain] = []
        self._pin_sent: dict[tuple[str, str], tuple[int, float]] = {}  # (variant, worker) -> (replicas, when sent)
        self._config_pins_done: set[str] = set()  # min_loaded keys resolved (or dropped by an unload) this run
        self._config_pins_warned: set[str] = set()
        for record in self.store.scan(PinRecord):
            self.pinned[record.variant] = Pin(record.variant, record.replicas, record.worker)
        if self.pinned:
            log.info("pins restored from the master's store: %s", ", ".join(sorted(self.pinned)))
        self.tombstones = ArtifactTombstones(self.store, self.settings.artifact_tombstones_max)
        if self.tombstones.freed:  # a crash between a re-push and forgetting its tombstones is repaired here
            self.tombstones.revive(self.catalog.needed_artifacts())

    # -- what other parts ask ----------------------------------------------------------------------------
    def pinned_replicas(self, variant: str, worker_id: str) -> int:
        """The replicas of `variant` an operator's pin keeps on this worker (0: none)."""
        pin = self.pinned.get(variant)
        return 0 if pin is None else pin.placed.get(worker_id, 0)

    def _holds(self, w, variant: str) -> bool:
        return variant in w.loaded or variant in w.variant_metrics

    def _live(self) -> dict[str, Any]:
        return {wid: w for wid, w in self.workers.items() if w.alive and wid not in self.draining}

    def _in_flight(self, variants: Iterable[str] | set[str]) -> int:
        """Queries sent to any of `variants` and not answered yet."""
        return sum(1 for p in self.pending.values() if p.variant in variants)

    def _unload_on(self, w, variants: Iterable[str]) -> list[str]:
        """Unload `variants` from worker `w` (forgetting the copies dispatched there, the view refreshed once); the
        variants whose unload was sent."""
        variants = list(variants)
        sent = [v for v in variants if self._forget_and_unload(w, v)]
        if variants:
            self._cluster_changed(w)
        return sent

    def _forget_and_unload(self, w, variant: str) -> bool:
        w.loaded.pop(variant, None)
        return self._send_worker(w.identity, protocol.Message("unload", m.UnloadBody(variant=variant)))

    # -- pins ----------------------------------------------------------------------------------------------
    def pin(self, variant: str, replicas: int, worker: str | None, source: str = "operator") -> Pin:
        """Pin a variant (replacing an earlier pin of it) and start loading it where the pin wants it."""
        spec = self.catalog.variant_spec(variant)  # unknown_model when the catalog lacks it
        model = self.store.get(VariantRecord, variant).model
        if model in self.removing:
            raise protocol.ProtocolError("unknown_model", f"model {model} is being removed; re-register it first")
        if worker is not None:
            w = self.workers.get(worker)
            if w is None or not w.alive:
                live = ", ".join(sorted(self._live())) or "none"
                raise InfaasError(f"no live worker '{worker}' to pin {variant} on (live workers: {live}); leave out "
                                  "--worker to let the master place it", code="not_found")
            if need_of(spec).key not in w.backends:
                raise InfaasError(f"worker {worker} does not run {need_of(spec).key}, which {variant} needs; pick "
                                  "another --worker or leave it out", code="unavailable")
        elif not any(need_of(spec).key in w.backends for w in self._live().values()):
            raise InfaasError(f"no live worker runs {need_of(spec).key} to pin {variant} on; start one with "
                              "`infaas worker` or `infaas up`", code="unavailable")
        old = self.pinned.get(variant)
        new = Pin(variant, replicas, worker, source)
        if old is not None and worker is None and old.worker is None:
            new.placed = dict(old.placed)  # keep where it is: only the count changes
            while sum(new.placed.values()) > replicas:
                wid = max(new.placed, key=lambda k: (new.placed[k], k))
                new.placed[wid] -= 1
                if not new.placed[wid]:
                    del new.placed[wid]
        self.pinned[variant] = new
        if source == "operator":
            self.store.put(PinRecord(variant, replicas, worker, time.time()))
        self.named_variants.pop(variant, None)
        self._reconcile_pin(new)
        log.info("pinned %s: %d replica(s)%s", variant, replicas, f" on {worker}" if worker else "")
        return new

    def unpin(self, variant: str, worker: str | None = None) -> None:
        """Drop a pin, or (with `worker`) its share on that worker; what it loaded stays until unloaded."""
        pin = self.pinned.get(variant)
        if pin is None:
            return
        if worker is None or pin.worker == worker or set(pin.placed) <= {worker}:
            del self.pinned[variant]
            if pin.source == "config":
                self._config_pins_done.add(variant)
            if self.store.get(PinRecord, variant) is not None:
                with self.store.transaction() as txn:
                    txn.delete(PinRecord.table, variant)
            for key in [k for k in self._pin_sent if k[0] == variant]:
                del self._pin_sent[key]
            return
        pin.replicas = max(1, pin.replicas - pin.placed.pop(worker, 0))
        self._pin_sent.pop((variant, worker), None)
        if pin.source == "operator":
            self.store.put(PinRecord(variant, pin.replicas, pin.worker, time.time()))

    def _reconcile_pins(self) -> None:
        """Every pin toward its desired copies: config pins resolved, lost loads re-sent, dead workers replaced."""
        self._resolve_config_pins()
        for pin in list(self.pinned.values()):
            self._step(self._reconcile_pin, pin)

    def _reconcile_pin(self, pin: Pin) -> None:
        try:
            spec = self.catalog.variant_spec(pin.variant)
        except protocol.ProtocolError:  # gone from the catalog (removed): nothing left to keep loaded
            log.info("pin of %s dropped: the variant left the catalog", pin.variant)
            self.unpin(pin.variant)
            return
        live = self._live()
        for wid in [wid for wid in pin.placed if wid not in live]:
            del pin.placed[wid]  # its worker died or left: the copy goes elsewhere (or waits for it, when named)
        if pin.worker is not None:
            w = live.get(pin.worker)
            if w is None or need_of(spec).key not in w.backends:
                return
            pin.placed = {pin.worker: pin.replicas}
        else:
            self._place_pin(pin, spec, live)
        for wid, replicas in pin.placed.items():
            self._ensure_pinned_on(live[wid], spec, replicas)

    def _place_pin(self, pin: Pin, spec: m.VariantSpec, live: dict[str, Any]) -> None:
        """Spread the pin's replicas one per worker: workers holding the variant already first, then where an
        autoscaling replica would go; when no other worker has room, one more replica on a worker of the pin."""
        total = sum(pin.placed.values())
        need = need_of(spec)
        for wid, w in sorted(live.items()):
            if total >= pin.replicas:
                break
            if wid not in pin.placed and need.key in w.backends and self._holds(w, pin.variant):
                pin.placed[wid] = 1
                total += 1
        while total < pin.replicas:
            others = [s for s in self.snapshot().workers if s.worker_id not in pin.placed and s.worker_id in live]
            ids = place(others, need, "replica")
            if not ids and not pin.placed:
                ids = place(others, need, "query")  # no room anywhere: the cold-start pick, as a query would
            if ids:
                pin.placed[ids[0]] = 1
                w = live[ids[0]]
                w.loaded.setdefault(pin.variant, 0)  # selection sees it as held there (and its cores as taken)
                self._cluster_changed(w)
            elif pin.placed:
                wid = min(pin.placed, key=lambda k: (pin.placed[k], k))
                pin.placed[wid] += 1
            else:
                return  # no live worker runs its backend: the next tick tries again
            total += 1

    def _ensure_pinned_on(self, w, spec: m.VariantSpec, replicas: int) -> None:
        """Send `load` (pinned) unless the worker shows the copy as wanted, or was told so a moment ago."""
        key, now = (spec.name, w.worker_id), time.monotonic()
        vm = w.variant_metrics.get(spec.name)
        sent = self._pin_sent.get(key)
        have = vm.replicas if vm is not None and vm.state == "loaded" else 0
        if sent is not None and sent[0] == replicas:
            recent = now - sent[1] < RESEND_AFTER_INTERVALS * self.heartbeat_interval_s
            if recent or (self._holds(w, spec.name) and (vm is None or vm.state != "loaded" or have >= replicas)):
                return
        # More replicas than autoscaling added are kept: a pin only raises the count.
        body = m.LoadBody(variant=spec.name, spec=spec, pinned=True,
                          replicas=max(replicas, have) if replicas > 1 else None)
        if self._send_worker(w.identity, protocol.Message("load", body)):
            self._pin_sent[key] = (replicas, now)
            if spec.name not in w.loaded:
                w.loaded[spec.name] = 0
                self._cluster_changed(w)
            self.metrics.on_action("load")

    def _resolve_config_pins(self) -> None:
        """`master.min_loaded`: a variant is pinned as named; a model pins its fastest profiled variant at batch 1
        among those a live worker can run (chosen once per master run, so it does not flip)."""
        wanted = self.settings.min_loaded
        if not wanted:
            return
        index = self.catalog.index()
        keys = {k for w in self._live().values() for k in w.backends}  # placement keys the live workers offer
        for key, replicas in wanted.items():
            if key in self._config_pins_done:
                continue
            if key in index.infos:
                variant = key
            elif key in index.models:
                options = [i for i in index.infos.values() if i.model == key and i.placement_key in keys
                           and i.latency_ms(1) is not None]
                if not options:
                    continue  # no live worker for it yet: the next tick looks again
                variant = min(options, key=lambda i: (i.latency_ms(1), i.name)).name
            else:
                if key not in self._config_pins_warned:
                    self._config_pins_warned.add(key)
                    log.warning("master.min_loaded names %s, which is neither a profiled model nor a variant of the "
                                "catalog (yet); it is pinned once `infaas push` brings it", key)
                continue
            self._config_pins_done.add(key)
            if variant not in self.pinned:
                try:
                    self.pin(variant, replicas, None, source="config")
                except InfaasError as exc:
                    self._config_pins_done.discard(key)
                    log.info("min_loaded %s waits: %s", key, exc)

    # -- removal -------------------------------------------------------------------------------------------
    def remove(self, route: tuple[bytes, ...], request_id: str, body: m.RemoveBody) -> None:
        """Refuse while the models serve (unless drain); else hide them and answer now or once drained."""
        known = [name for name in body.models if self.store.get(ModelRecord, name) is not None]
        variants = {v.name for name in known for v in self.store.variants(name) if v.model == name}
        holders = sorted(wid for wid, w in self.workers.items()
                         if w.alive and any(self._holds(w, v) for v in variants))
        pinned = sorted(v for v in variants if v in self.pinned)
        in_flight = self._in_flight(variants)
        label = ", ".join(known)
        if not body.drain and (holders or pinned or in_flight):
            why = []
            if holders:
                why.append(f"serving on {len(holders)} worker{'s' if len(holders) > 1 else ''} "
                           f"({', '.join(holders[:5])}{' …' if len(holders) > 5 else ''})")
            if pinned:
                why.append(f"pinned ({', '.join(pinned[:3])})")
            if in_flight:
                why.append(f"answering {in_flight} quer{'ies' if in_flight > 1 else 'y'}")
            are, it = ("are", "them") if len(known) > 1 else ("is", "it")
            raise InfaasError(f"{label} {are} {' and '.join(why)}; pass --drain to stop routing, drain and unload "
                              f"{it} first", code="failed")
        for variant in pinned:
            self.unpin(variant)
        now = time.monotonic()
        drain = _Drain(route, request_id, known, variants, now, now + body.timeout_s, in_flight, held_on=holders)
        if not body.drain:
            self._hide(known)
            self._answer_drain(drain)
            return
        # A version a route serves keeps serving until the version taking over is warm where it is loaded (rollout.py)
        try:
            drain.rolling_off = self._roll_off(known)
        except BaseException:
            self._left(known)  # no removal goes on: nothing may stay marked leaving
            self._settle_routes()
            raise
        if not drain.rolling_off:
            self._hide(known)
        log.info("draining %s for removal: %d quer%s in flight, held on %s%s", label, in_flight,
                 "y" if in_flight == 1 else "ies", ", ".join(holders) or "no worker",
                 f"; first rolling {', '.join(sorted(drain.rolling_off))} off it" if drain.rolling_off else "")
        self.drains.append(drain)
        self._advance_drain(drain)

    def _hide(self, models: Iterable[str]) -> None:
        self._left(models)
        added = set(models) - self.removing
        if added:
            self.removing |= added
            self._catalog_changed()

    def _advance_drains(self) -> None:
        for drain in list(self.drains):
            self._step(self._advance_drain, drain)

    def _advance_drain(self, drain: _Drain) -> None:
        now = time.monotonic()
        if drain.rolling_off:
            warming = sorted(name for name in drain.rolling_off
                             if name in self.rollouts and self.rollouts[name].state == "warming")
            if warming and now < drain.deadline:
                return
            if warming:  # out of time while the version taking over warms: nothing removed, the route stays
                self._left(drain.models)
                self._settle_routes()  # the policy resolves to the serving version again: the roll-out is cancelled
                self.drains.remove(drain)
                self._reply(drain.route, protocol.error(
                    "unavailable", f"the version taking over from {', '.join(drain.models)} was not warm within "
                    f"{drain.deadline - drain.started:g} s, so nothing was removed and it still serves; raise "
                    "--timeout-s", drain.request_id))
                return
            drain.rolling_off = set()
            self._hide(drain.models)
            drain.drained_queries = self._in_flight(drain.variants)  # those routed to them up to the switch
            budget = drain.deadline - drain.started  # the drain after the switch gets the whole --timeout-s again
            drain.started, drain.deadline = now, now + budget
            # The roll-out's own drain may have unloaded them already; either way the answer waits until no live
            # worker holds them.
            drain.unloaded_on |= {wid for wid in drain.held_on if wid in self.workers and self.workers[wid].alive}
        if drain.unloads_sent_at is None:
            in_flight = self._in_flight(drain.variants)
            if in_flight:
                if now >= drain.deadline:
                    waited_s = drain.deadline - drain.started
                    self._fail_drain(drain, f"{in_flight} quer{'ies' if in_flight > 1 else 'y'} of "
                                     f"{', '.join(drain.models)} still in flight after {waited_s:.0f} s")
                return
            self._unload_everywhere(drain)
            drain.unloads_sent_at = now
        still = sorted(wid for wid, w in self.workers.items()
                       if w.alive and any(v in w.variant_metrics for v in drain.variants))
        if not still:
            self._answer_drain(drain)
        elif now >= drain.deadline:
            self._fail_drain(drain, f"still loaded on {', '.join(still)} after "
                             f"{drain.deadline - drain.started:.0f} s")
        elif now - drain.unloads_sent_at >= RESEND_AFTER_INTERVALS * self.heartbeat_interval_s:
            self._unload_everywhere(drain)  # a worker keeps a busy variant: ask again
            drain.unloads_sent_at = now

    def _unload_everywhere(self, drain: _Drain) -> None:
        for w in self.workers.values():
            if not w.alive:
                continue
            held = sorted(v for v in drain.variants if self._holds(w, v))
            self._unload_on(w, held)
            for _ in held:
                self.metrics.on_action("unload")
            if held:
                drain.unloaded_on.add(w.worker_id)

    def _answer_drain(self, drain: _Drain) -> None:
        if drain in self.drains:
            self.drains.remove(drain)
        waited_ms = (time.monotonic() - drain.started) * 1e3
        log.info("%s ready for removal after %.0f ms (unloaded on %s)", ", ".join(drain.models) or "nothing",
                 waited_ms, ", ".join(sorted(drain.unloaded_on)) or "no worker")
        self._reply(drain.route, protocol.Message("remove_reply", m.RemoveReplyBody(
            models=drain.models, variants=sorted(drain.variants), unloaded_on=sorted(drain.unloaded_on),
            drained_queries=drain.drained_queries, waited_ms=waited_ms), id=drain.request_id))

    def _fail_drain(self, drain: _Drain, why: str) -> None:
        self.drains.remove(drain)
        self._reply(drain.route, protocol.error(
            "unavailable", f"{why}; the models stay hidden from queries — run `infaas remove` again to finish, or "
            "raise --timeout-s", drain.request_id))

    def _replicated(self, entries: Iterable[Any], needed: set[str]) -> None:
        """After replication: a re-put model is visible again; deleted models leave `removing`; variants that left
        the catalog are unloaded wherever a worker still holds them; artifacts not `needed` (by the catalog now) are
        collected."""
        put_models = {e.key for e in entries if e.table == ModelRecord.table and e.op == "put"}
        deleted = any(e.op == "delete" and e.table in ("models", "variants") for e in entries)
        known = {rec.name for rec in self.store.models()}
        self.removing -= put_models
        self.removing &= known
        revived = self.tombstones.revive(needed)
        if revived:
            log.info("%d freed artifact(s) are used again: no returning worker is told to drop them", len(revived))
        if not deleted:
            return
        names = {v.name for v in self.store.variants()}
        for w in self.workers.values():
            if w.alive:
                self._unload_uncatalogued(w, set(w.loaded) | set(w.variant_metrics), names)
        for variant in [v for v in self.pinned if v not in names]:
            self.unpin(variant)
        removed = self.artifacts.collect_garbage(needed)
        if removed:
            log.info("collected %d unused artifact(s), %d bytes", len(removed), sum(size for _, size in removed))
            digests = [sha for sha, _ in removed]
            self.tombstones.add(digests, time.time())  # for the workers away now
            self._drop_cached(digests)

    def _drop_cached(self, digests: list[str]) -> None:
        """Tell every live worker to delete its cached copies of `digests`: a worker fetched each of them from this
        master's store, so what the master's sweep freed is what the workers may still hold (one that evicted the
        variant long ago too, so every live worker is told, not only those that held it)."""
        for w in self.workers.values():
            if w.alive:
                self._send_drops(w, digests)

    def _came_back(self, w, metrics: m.WorkerMetrics) -> None:
        """A worker is heard from after being away — its first heartbeat since it registered (a restart, or one this
        master had forgotten or never knew) or back from the dead (a partition healed): removals may have happened
        meanwhile. What it still runs of variants the catalog no longer has is unloaded (nothing routes to them, and
        autoscaling only weighs catalogued variants, so they would stay loaded for good) — unless this master knows
        no model at all (a fresh one, before a push) — then it is told what the sweeps freed (an artifact one of
        those variants uses goes at its unload)."""
        names = {v.name for v in self.store.variants()} if metrics.variants else set()  # most come back empty
        if names:
            self._unload_uncatalogued(w, metrics.variants, names)
        self._drop_tombstoned(w)

    def _unload_uncatalogued(self, w, held: Iterable[str], names: set[str]) -> None:
        """Unload from worker `w` what it holds of variants not in the catalog (`names`): removed ones."""
        gone = sorted(v for v in held if v not in names)
        self._unload_on(w, gone)
        if gone:
            log.info("unload %s on %s: removed from the catalog", ", ".join(gone), w.worker_id)

    def _drop_tombstoned(self, w) -> None:
        """A worker heard from after being away (`_came_back`) may have missed sweeps that freed artifacts it caches
        (its cache outlives it): it is told every tombstone the catalog does not need now. Digests it never cached
        cost it a look-up; one a variant it still runs uses waits for that variant's unload."""
        if not self.tombstones.freed:
            return
        digests = self.tombstones.pending(self.catalog.needed_artifacts())
        if digests:
            self._send_drops(w, digests)
            log.info("told %s to drop %d artifact(s) freed by earlier removals, should it still cache them",
                     w.worker_id, len(digests))

    def _send_drops(self, w, digests: list[str]) -> None:
        for start in range(0, len(digests), m.MAX_ENTRIES):
            body = m.DropArtifactsBody(artifacts=digests[start:start + m.MAX_ENTRIES])
            self._send_worker(w.identity, protocol.Message("drop_artifacts", body))
