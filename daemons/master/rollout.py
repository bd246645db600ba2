"""The master's side of model versions: each model's route (which version answers queries by its name or task) and
the roll-outs that move it without losing or failing a query.

The route follows the model's replicated version policy (`policy.versions.resolve_route`). A change of route is a
roll-out: (1) *warming* — the new version's counterpart of every old variant is loaded (the load includes a warm-up
run) on each worker where the old one is loaded; (2) *switch* — the route changes, so new queries go to the new
version, warm; (3) *draining* — queries already sent to the old version finish there; then its variants are
unloaded (pinned ones stay). A restarted master starts from the stored policy with nothing loaded, so its first
route needs no roll-out. Advanced on the liveness tick; a lost load is sent again, and past
`master.rollout_warm_timeout_s` the switch happens anyway (a cold counterpart loads on its first query, which
waits rather than fails); past `master.rollout_drain_timeout_s` the old version is unloaded with queries still
queued on it (the worker finishes its queue before it unloads).

A drained removal of a version on the route (`infaas remove M --version V --drain`) moves the route the same way:
the version is *leaving* (left out of what the policy may pick) and the route rolls off it — the version that takes
over is warmed where V is loaded, then switched to — before the removal hides V and drains it (lifecycle.py).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infaas_cli import protocol
from infaas_cli.catalog.records import VersionPolicyRecord
from infaas_cli.policy.versions import (LATEST, Candidate, Route, VersionPolicy, resolve_route, split_id, version_id,
                                        warm_plan)
from infaas_cli.protocol import messages as m
from infaas_daemons.common import log
from infaas_daemons.master.lifecycle import RESEND_AFTER_INTERVALS

#: Finished roll-outs `status` lists (the newest last).
HISTORY = 20


@dataclass
class Rollout:
    """One route change of one model, from `source` to `target`, and how far it got."""

    model: str
    source: Route
    target: Route
    policy: str  # the policy that asked for it, as `VersionPolicy.describe()` writes it
    started_at: float  # wall clock, for status
    started: float  # time.monotonic()
    state: str = "warming"  # warming → draining → done; or cancelled / superseded
    warming: dict[tuple[str, str], str] = field(default_factory=dict)  # (worker, variant) → "loading" / "loaded"
    sent: dict[tuple[str, str], float] = field(default_factory=dict)  # (worker, variant) → when its load was sent
    retiring: set[str] = field(default_factory=set)  # the old version's variants, to drain and unload
    switched_at: float | None = None
    switched: float | None = None  # monotonic
    finished_at: float | None = None
    drained_queries: int = 0
    unloaded: list[str] = field(default_factory=list)  # "worker:variant"
    note: str = ""

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "from": self.source.describe(), "to": self.target.describe(),
                "from_version": self.source.stable, "to_version": self.target.stable,
                "to_canary": self.target.canary, "policy": self.policy, "state": self.state,
                "started_at": round(self.started_at, 3),
                "switched_at": None if self.switched_at is None else round(self.switched_at, 3),
                "finished_at": None if self.finished_at is None else round(self.finished_at, 3),
                "warmed": sorted(f"{w}:{v} ({s})" for (w, v), s in self.warming.items()),
                "drained_queries": self.drained_queries, "unloaded": list(self.unloaded), "note": self.note}


class Rollouts:
    """Routes and roll-outs, mixed into the Master: `_settle_routes` after each catalog change, `_advance_rollouts`
    on the liveness tick, `_rollout_warmed` when a worker reports a load."""

    def _init_rollouts(self) -> None:
        self.routes: dict[str, Route] = {}
        self.rollouts: dict[str, Rollout] = {}  # model → its roll-out in progress
        self.rollout_history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self.version_policies: dict[str, VersionPolicy] = {}
        self.leaving: dict[str, set[int]] = {}  # model → versions a drained removal rolls its route off first
        self._settle_routes()
        if any(len(v) > 1 for v in self.catalog.index().profiled_versions.values()) or self.version_policies:
            log.info("routes from the stored version policies: %s", ", ".join(
                f"{name} {route.describe()}" for name, route in sorted(self.routes.items())) or "none")

    # -- what the policy asks for ------------------------------------------------------------------------
    def _read_policies(self) -> dict[str, VersionPolicy]:
        policies = {}
        for record in self.store.scan(VersionPolicyRecord):
            try:
                policies[record.model] = VersionPolicy(record.mode, record.version, record.percent)
            except ValueError as exc:  # validated on replication; a bad one must not stop the others
                log.warning("version policy of %s ignored: %s", record.model, exc)
        return policies

    def _settle_routes(self) -> None:
        """Every model's route toward what its policy asks for: set at once where nothing serves yet, else through
        a roll-out. Called after every catalog change (a policy, a version or a profile arrived or left)."""
        self.version_policies = self._read_policies()
        index = self.catalog.index()
        profiled = index.profiled_versions
        changed = False
        for name in sorted(set(profiled) | set(self.routes) | set(self.rollouts)):
            leaving = self.leaving.get(name, set())
            have = profiled.get(name, set()) - leaving
            current = source = self.routes.get(name)
            if current is not None and not all(v in have for v in current.versions):
                current = None  # its version left the catalog (or lost its profiles, or is leaving): no policy keeps it
            target = resolve_route(self.version_policies.get(name, LATEST), have, current)
            active = self.rollouts.get(name)
            if active is not None:
                if active.target == target:
                    continue
                self._end_rollout(active, "superseded" if active.state == "draining" else "cancelled",
                                  f"the policy now asks for {target.describe() if target else 'nothing'}", keep=target)
            if target is None:
                if self.routes.pop(name, None) is not None:
                    changed = True
                continue
            if current == target:
                if self.routes.get(name) != target:
                    self.routes[name], changed = target, True
                continue
            if source is not None and leaving & set(source.versions) and self.workers:
                self._start_rollout(name, source, target, f"v{', v'.join(map(str, sorted(leaving)))} being removed")
                continue  # off a version being removed: warm what takes over where it serves, as any roll-out
            if current is None or not self.workers:
                self.routes[name], changed = target, True  # nothing serves it yet: no roll-out needed
                continue
            self._start_rollout(name, current, target)
        if changed:
            self._routes_changed()

    def _routes_changed(self) -> None:
        self.catalog.set_routes(self.routes)
        self._options = None

    # -- roll-outs ---------------------------------------------------------------------------------------
    def _held(self, w) -> set[str]:
        """The variants a worker holds or is loading (not those it is retiring)."""
        shown = {name for name, vm in w.variant_metrics.items() if vm.state in ("loaded", "loading")}
        return shown | set(w.loaded)

    def _roll_off(self, model_ids: Iterable[str]) -> set[str]:
        """Before a drained removal hides versions its models' routes serve: mark them leaving and roll each route
        off them (warm, switch, drain) rather than let it fall back to a cold version. The models whose roll-out is
        still warming: the removal hides its versions once those have switched (`_left`)."""
        marked = set()
        for model_id in model_ids:
            base, version = split_id(model_id)
            route = self.routes.get(base)
            if route is not None and version in route.versions:
                self.leaving.setdefault(base, set()).add(version)
                marked.add(base)
        if marked:
            self._settle_routes()
        return {base for base in marked if base in self.rollouts and self.rollouts[base].state == "warming"}

    def _left(self, model_ids: Iterable[str]) -> None:
        """The removal hid these versions (the catalog's index leaves them out from now on): no longer leaving."""
        for model_id in model_ids:
            base, version = split_id(model_id)
            versions = self.leaving.get(base)
            if versions is not None:
                versions.discard(version)
                if not versions:
                    del self.leaving[base]

    def _start_rollout(self, name: str, current: Route, target: Route, note: str = "") -> None:
        policy = self.version_policies.get(name, LATEST).describe()
        ro = Rollout(name, current, target, policy, time.time(), time.monotonic(), note=note)
        self.rollouts[name] = ro
        index = self.catalog.index()
        old_ids = {version_id(name, v) for v in current.versions}
        live = self._live()
        held = {wid: [v for v in self._held(w) if v.split("/", 1)[0] in old_ids] for wid, w in live.items()}
        held = {wid: vs for wid, vs in held.items() if vs}
        for version in target.versions:
            if version in current.versions:
                continue
            new_id = version_id(name, version)
            start, end = index.model_spans[new_id]
            candidates = [Candidate(i.name, i.placement_key, i.latency_ms(1) or math.inf, i.threads)
                          for i in index.order[start:end]]
            plan = warm_plan(held, new_id, candidates, {wid: live[wid].backends for wid in held},
                             {wid: self._worker_state(live[wid]).free_cores for wid in held})
            for wid, variants in plan.items():
                w = live[wid]
                for variant in variants:
                    shown = w.variant_metrics.get(variant)
                    ro.warming[(wid, variant)] = "loaded" if shown is not None and shown.state == "loaded" \
                        else "loading"
                    if not self._holds(w, variant):
                        self._warm_on(w, variant, ro)
        log.info("roll-out of %s: %s → %s (%s); warming %s", name, current.describe(), target.describe(), policy,
                 ", ".join(f"{v} on {w}" for w, v in sorted(ro.warming)) or "nothing (no worker holds it)")
        self._advance_rollout(ro)

    def _warm_on(self, w, variant: str, ro: Rollout) -> None:
        spec = self.catalog.variant_spec(variant)
        ro.sent[(w.worker_id, variant)] = time.monotonic()
        if self._send_worker(w.identity, protocol.Message("load", m.LoadBody(variant=variant, spec=spec))):
            w.loaded.setdefault(variant, 0)  # placement sees its cores as taken; no query routes to it yet
            self._cluster_changed(w)
            self.metrics.on_action("load")

    def _rollout_warmed(self, worker_id: str, variant: str) -> None:
        """A worker reports `variant` loaded (after its warm-up run): a roll-out waiting for it may switch."""
        for ro in list(self.rollouts.values()):
            if ro.warming.get((worker_id, variant)) == "loading":
                ro.warming[(worker_id, variant)] = "loaded"
                self._advance_rollout(ro)

    def _advance_rollouts(self) -> None:
        for ro in list(self.rollouts.values()):
            self._step(self._advance_rollout, ro)

    def _advance_rollout(self, ro: Rollout) -> None:
        now = time.monotonic()
        if ro.state == "warming":
            waiting = []
            for (wid, variant), state in ro.warming.items():
                w = self.workers.get(wid)
                if state == "loaded" or w is None or not w.alive:
                    continue  # a dead worker's copy is not waited for
                vm = w.variant_metrics.get(variant)
                if vm is not None and vm.state == "loaded":
                    ro.warming[(wid, variant)] = "loaded"
                    continue
                if vm is None and variant not in w.loaded and \
                        now - ro.sent.get((wid, variant), -1e18) >= RESEND_AFTER_INTERVALS * self.heartbeat_interval_s:
                    self._warm_on(w, variant, ro)  # gone (it was retiring, or its load failed): load it again
                waiting.append(f"{variant} on {wid}")
            timeout_s = self.settings.rollout_warm_timeout_s
            if waiting and now - ro.started < timeout_s:
                return
            if waiting:
                ro.note = f"switched after {timeout_s:g} s with {', '.join(waiting)} not loaded yet"
                log.warning("roll-out of %s: %s", ro.model, ro.note)
            self._switch(ro)
        if ro.state == "draining":
            in_flight = self._in_flight(ro.retiring)
            if in_flight and now - ro.switched < self.settings.rollout_drain_timeout_s:
                return
            self._retire(ro)
            self._end_rollout(ro, "done")

    def _switch(self, ro: Rollout) -> None:
        """New queries go to the target route from now on; the old version's variants start draining."""
        old_ids = {version_id(ro.model, v) for v in ro.source.versions if v not in ro.target.versions}
        ro.retiring = {v for w in self.workers.values() for v in self._held(w) | set(w.variant_metrics)
                       if v.split("/", 1)[0] in old_ids}
        ro.drained_queries = self._in_flight(ro.retiring)
        self.routes[ro.model] = ro.target
        ro.state, ro.switched_at, ro.switched = "draining", time.time(), time.monotonic()
        self._routes_changed()
        self.metrics.on_switch(ro.model, ro.target.stable)
        log.info("roll-out of %s: switched to %s after %.0f ms; %d quer%s in flight on %s drain", ro.model,
                 ro.target.describe(), (ro.switched - ro.started) * 1e3, ro.drained_queries,
                 "y" if ro.drained_queries == 1 else "ies", ro.source.describe())

    def _retire(self, ro: Rollout) -> None:
        """Unload the drained old variants everywhere (a pinned copy stays: its operator asked for it); the worker
        finishes anything still queued before it unloads."""
        serving = {version_id(ro.model, v) for v in self.routes.get(ro.model, ro.target).versions}
        for w in self.workers.values():
            if not w.alive:
                continue
            gone = sorted(v for v in ro.retiring if v.split("/", 1)[0] not in serving and self._holds(w, v)
                          and v not in self.pinned)
            for variant in self._unload_on(w, gone):
                ro.unloaded.append(f"{w.worker_id}:{variant}")
                self.metrics.on_action("unload")

    def _end_rollout(self, ro: Rollout, state: str, note: str = "", keep: Route | None = None) -> None:
        """Close a roll-out; a cancelled one unloads what it warmed unless `keep` (the next route) serves it."""
        if state == "cancelled":
            kept = {version_id(ro.model, v) for v in keep.versions} if keep is not None else set()
            ro.retiring = {v for (_, v) in ro.warming if v.split("/", 1)[0] not in kept}
            if not self._in_flight(ro.retiring):
                self._retire(ro)
        ro.state, ro.finished_at = state, time.time()
        if note:
            ro.note = f"{ro.note}; {note}" if ro.note else note
        if self.rollouts.get(ro.model) is ro:
            del self.rollouts[ro.model]
        self.rollout_history.append(ro.describe())
        log.info("roll-out of %s %s → %s: %s%s", ro.model, ro.source.describe(), ro.target.describe(), state,
                 f" ({ro.note})" if ro.note else "")

    # -- what status shows -------------------------------------------------------------------------------
    def versions_status(self) -> dict[str, Any]:
        """Per model with a version policy, several versions or a roll-out: its policy, versions, route and
        roll-out (in progress, else the last one)."""
        index = self.catalog.index()
        registered: dict[str, list[int]] = collections.defaultdict(list)
        for model_id in index.models:
            base, version = split_id(model_id)
            registered[base].append(version)
        last = {row["model"]: row for row in self.rollout_history}
        out = {}
        for name in sorted(registered):
            policy = self.version_policies.get(name)
            if len(registered[name]) < 2 and policy is None and name not in last and name not in self.rollouts:
                continue
            route = self.routes.get(name) or index.routes.get(name)
            active = self.rollouts.get(name)
            out[name] = {
                "policy": (policy or LATEST).describe(), "versions": sorted(registered[name]),
                "profiled": sorted(index.profiled_versions.get(name, ())),
                "serving": None if route is None else route.to_dict(),
                "rollout": active.describe() if active is not None else last.get(name)}
        return out
