"""The master's control steps: snapshot → pure policy (infaas_cli.policy) → apply its actions to workers.

Model-level autoscaling (replicate, upgrade, downgrade, unload), the static baseline's fixed
replicas, and horizontal autoscaling (scale commands). Runs on the control timer, off the query path.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

from infaas_cli import protocol
from infaas_cli.policy.autoscale import VariantLoad, VariantOption, WorkerView, autoscale_worker, options_from_index
from infaas_cli.policy.cluster_autoscale import HostLoad, autoscale_cluster
from infaas_cli.policy.cores import cpu_utilisation, worker_cores
from infaas_cli.policy.placement import need_of, place
from infaas_cli.protocol import messages as m
from infaas_daemons.common import log
from infaas_daemons.master.state import WorkerEntry


def _free_cores(w: WorkerEntry) -> int:
    """The free cores a worker's last heartbeat reported (what the model-level autoscaler reasons about)."""
    return w.metrics.free_cores if w.metrics is not None else 0


def _cores(w: WorkerEntry) -> int:
    return worker_cores(w.metrics.cores if w.metrics is not None else None, w.hardware.cores)


class Actions:
    #: Per set of advertised placement keys, the options such a worker runs: derived from `_options`, so emptied
    #: where `_options` is rebuilt (in _options_on, after the catalog or the routes changed and set it to None).
    _options_by_keys: dict[frozenset[str], dict[str, VariantOption]]

    def _provision_static(self, variant: str) -> None:
        """The static baseline's fixed replicas: its pinned variant on every live worker where it fits
        beside the variants already placed there (on the roomiest worker when it fits nowhere)."""
        spec = self.catalog.variant_spec(variant)
        ids = place(self.snapshot().workers, need_of(spec), "static")
        for w in (self.workers[i] for i in ids):
            if self._send_worker(w.identity, protocol.Message("load", m.LoadBody(variant=variant, spec=spec))):
                w.loaded[variant] = 0
                self._cluster_changed(w)
                self.metrics.on_action("load")

    # -- horizontal autoscaling ---------------------------------------------------------------------------
    def _autoscale_cluster(self) -> None:
        if self.policy == "fixed-peak":
            return  # provisioned for the peak: never scales
        self._scaling = [p for p in self._scaling if p.poll() is None]
        if self._scaling:
            return  # one scaling command at a time: the next decision sees its result
        # A worker's utilisation is its own process's CPU over its cores (a host may run other things).
        hosts = [HostLoad(w.worker_id, "gpu" if w.hardware.gpus else "cpu",
                          cpu_utilisation(w.metrics.process_cpu_percent if w.metrics else None, _cores(w)),
                          w.alive, w.worker_id in self.draining)
                 for w in self.workers.values()]
        actions, self.cluster_state = autoscale_cluster(self.cluster_state, hosts, time.monotonic(),
                                                        self.cluster_config)
        for a in actions:
            command = self.scale_out_command if a.kind == "scale_out" else self.scale_in_command
            if a.kind == "scale_in" and a.worker_id and command:
                self.draining.add(a.worker_id)  # no new queries; it unloads and leaves once idle
                if a.worker_id in self.workers:
                    self._cluster_changed(self.workers[a.worker_id])
            ran = None
            if command:
                env = {**os.environ, "INFAAS_HARDWARE": a.hardware, "INFAAS_WORKER_ID": a.worker_id or ""}
                self._scaling.append(subprocess.Popen(shlex.split(command), env=env, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL, start_new_session=True))
                ran = command
            self.metrics.on_action(a.kind)
            self.cluster_decisions.append({"at": round(time.time(), 3), "kind": a.kind, "hardware": a.hardware,
                                           "worker": a.worker_id, "reason": a.reason, "command": ran})
            log.info("cluster %s (%s): %s; %s", a.kind, a.hardware, a.reason,
                     f"running {command}" if command else "no command configured")

    # -- model-level autoscaling -----------------------------------------------------------------------
    def _autoscale(self, w: WorkerEntry) -> None:
        """One worker's measured load through the pure policy; apply what it allows under this policy.

        Run as the worker's heartbeat arrives (at most once per heartbeat interval), so the work of a large
        cluster is spread over the interval rather than done in one O(workers) pass that queries wait behind.
        """
        if self.policy == "fixed-peak" or not w.alive or w.metrics is None:
            return
        now = time.monotonic()
        if now - self.autoscaled_at.get(w.worker_id, -1e18) < 0.9 * self.heartbeat_interval_s:
            return
        self.autoscaled_at[w.worker_id] = now
        options = self._options_on(w)
        loads = []
        for name, vm in w.metrics.variants.items():
            if vm.state != "loaded" or name not in options:
                continue
            slo = self.variant_slo.get(name)
            loads.append(VariantLoad(
                variant=name, replicas=vm.replicas, queue_samples=vm.queue,
                # Capacity is profiled in samples per second, so load is measured in samples too.
                qps=vm.samples_per_s or vm.qps, latency_ms=vm.latency_ms,
                slo_ms=slo[0] if slo and now - slo[1] <= 3 * self.autoscale_config.window_s else None,
                idle_s=vm.idle_s, slowdown=self._variant_slowdown(name, w.worker_id, now),
                pinned_replicas=self.pinned_replicas(name, w.worker_id)))
        states = self.autoscale_states.get(w.worker_id)
        if not loads and not states:
            return  # nothing loaded, nothing remembered: the policy has nothing to decide
        view = WorkerView(cores=_cores(w), free_cores=_free_cores(w),
                          free_memory_bytes=w.metrics.free_memory_bytes, variants=tuple(loads))
        actions, self.autoscale_states[w.worker_id] = autoscale_worker(
            states or {}, view, options, now, self.autoscale_config)
        for action in actions:
            self._step(self._apply, w, action)

    def _options_on(self, w: WorkerEntry) -> dict[str, VariantOption]:
        """The autoscaler's variants that this worker can run (their placement key is one it advertises), so that
        a switch never loads what the worker's host cannot run as profiled (a bf16 variant on a CPU without BF16);
        cached per set of advertised keys until the options are rebuilt."""
        if self._options is None:
            self._options = options_from_index(self.catalog.index())
            self._options_by_keys = {}
        keys = frozenset(w.backends)
        found = self._options_by_keys.get(keys)
        if found is None:
            infos = self.catalog.index().infos
            found = self._options_by_keys[keys] = {name: opt for name, opt in self._options.items()
                                                   if infos[name].placement_key in keys}
        return found

    def _apply(self, w: WorkerEntry, action) -> None:
        allowed = {"infaas": ("replicate", "remove_replica", "upgrade", "downgrade", "unload"),
                   "fixed-autoscale": ("replicate", "remove_replica", "unload")}.get(self.policy, ())
        if action.kind not in allowed:
            return
        vm = w.variant_metrics.get(action.variant)
        replicas = vm.replicas if vm is not None else 1
        spec = self.catalog.variant_spec(action.variant)
        where = w
        if action.kind == "replicate":
            ids = place(self.snapshot().workers, need_of(spec), "replica",
                        current=None if action.elsewhere else w.worker_id)
            if not ids:
                return
            if ids[0] == w.worker_id:
                body = m.LoadBody(variant=action.variant, spec=spec, replicas=replicas + 1)
            else:  # no room here: a replica on the worker with the most free cores
                where = self.workers[ids[0]]
                body = m.LoadBody(variant=action.variant, spec=spec)
                where.loaded.setdefault(action.variant, 0)
                self._cluster_changed(where)
            msg = protocol.Message("load", body)
        elif action.kind == "remove_replica":
            msg = protocol.Message("load", m.LoadBody(variant=action.variant, spec=spec, replicas=max(1, replicas - 1)))
        elif action.kind in ("upgrade", "downgrade"):
            named = self.named_variants.get(action.variant)
            if named is not None and time.monotonic() - named <= 3 * self.autoscale_config.window_s:
                return  # its clients ask for it by name: a switch would only reload it beside the target
            # A switch in place: new queries go to the target at once (the worker holds them until it
            # is loaded); the worker drains and unloads the old variant first, so it never holds both.
            msg = protocol.Message("load", m.LoadBody(variant=action.target, replaces=action.variant,
                                                      spec=self.catalog.variant_spec(action.target)))
            w.loaded.pop(action.variant, None)
            w.loaded.setdefault(action.target, 0)
            self._cluster_changed(w)
        else:  # unload: stop routing there first
            w.loaded.pop(action.variant, None)
            self._cluster_changed(w)
            msg = protocol.Message("unload", m.UnloadBody(variant=action.variant))
        if self._send_worker(where.identity, msg):
            record = {"at": round(time.time(), 3), "worker": where.worker_id, "kind": action.kind,
                      "variant": action.variant, "target": action.target, "reason": action.reason}
            self.actions.append(record)
            self.metrics.on_action(action.kind)
            log.info("autoscale %s %s%s on %s: %s", action.kind, action.variant,
                     f" -> {action.target}" if action.target else "", where.worker_id, action.reason)
