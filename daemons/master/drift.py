"""Profiles that stay true: the master watches observed inference times, asks a worker to re-profile a
variant whose latency drifted from its profile (low priority, one at a time), and stores the result.

Decisions are `infaas_cli.policy.drift`'s (pure); this is the thin part that feeds it and applies them.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import msgspec

from infaas_cli import protocol
from infaas_cli.catalog.records import ProfileRecord, VariantRecord, profile_key
from infaas_cli.policy.cores import worker_cores
from infaas_cli.policy.drift import (DriftFinding, LatencyObserver, can_reprofile, detect_drift, latency_factor,
                                     predicted_sizes, profiled_p50_ms)
from infaas_cli.policy.profiles import applicable_profiles
from infaas_cli.protocol import messages as m
from infaas_cli.toolkit.hardware import hardware_id
from infaas_daemons.common import log

#: A re-profile not answered within this long is given up on (the worker may have died).
REPROFILE_TIMEOUT_S = 120.0
#: After a worker refused (busy), try again this soon.
REFUSED_RETRY_S = 5.0


class DriftWatch:
    def _init_drift(self, config) -> None:
        self.drift_config = config
        self.latency_observer = LatencyObserver(config)
        self.reprofile_last: dict[Any, float] = {}  # cooldown key -> when a re-profile was last sent
        self.reprofiles_inflight: dict[str, dict[str, Any]] = {}  # message id -> status entry
        self.reprofiles: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._profiled_p50: dict[str, dict[int, float]] | None = None  # per catalog change
        self._predicted: dict[str, list[int]] = {}  # variant -> its predicted batch sizes (with _profiled_p50)
        self.predicted_served: dict[str, str] = {}  # variant -> the worker that served it last (see refine)
        self.worker_slowdown: dict[str, float] = {}  # worker -> observed/profiled inference time (>= 1)

    def _observe_inference(self, variant: str, worker_id: str, timing: dict[str, float], batch: int) -> None:
        # Where it serves, for the online refinement of predicted profiles; `_refine_predicted` (the control tick)
        # drops the variants that are not predicted, so the result path never reads the profile store.
        self.predicted_served[variant] = worker_id
        ms = timing.get("inference_ms")
        if ms is not None:
            self.latency_observer.observe(variant, worker_id, int(timing.get("batch_size", batch)), ms,
                                          time.monotonic())

    def _hardware_id_of(self, worker_id: str) -> str:
        w = self.workers.get(worker_id)
        return hardware_id("cpu", msgspec.structs.asdict(w.hardware)) if w is not None else worker_id

    def _profiles_now(self) -> dict[str, dict[int, float]]:
        if self._profiled_p50 is None:
            profiles = applicable_profiles(self.store.profiles())
            self._predicted = {v: sizes for v, p in profiles.items() if (sizes := predicted_sizes(p.batches))}
            self._profiled_p50 = {v: profiled_p50_ms(p.batches) for v, p in profiles.items()}
        return self._profiled_p50

    def _predicted_now(self) -> dict[str, list[int]]:
        self._profiles_now()
        return self._predicted

    def _refine_predicted(self, now: float) -> bool:
        """Online refinement of `profile --search`: a variant with predicted figures that served on a worker is
        re-profiled there (the drift path: low priority, one at a time, the cooldown per hardware), and the
        figures it stores are measured. True when a re-profile was sent."""
        predicted = self._predicted_now()
        for variant, worker_id in list(self.predicted_served.items()):
            sizes = predicted.get(variant)
            w = self.workers.get(worker_id)
            if sizes is None or w is None or not w.alive:
                del self.predicted_served[variant]
                continue
            done = self.reprofile_last.get((variant, self._hardware_id_of(worker_id)))
            if done is not None and now - done < self.drift_config.reprofile_cooldown_s:
                continue
            if self._send_reprofile(w, variant, sizes, reason="predicted"):
                return True
        return False

    def _refresh_slowdowns(self, now: float) -> None:
        """Each worker's slowdown: the median, over the variants it ran lately, of observed/profiled inference
        time. Selection sees a slowed worker's queues as that much longer, so its traffic moves away."""
        profiled = self._profiles_now()
        factors: dict[str, list[float]] = {}
        for variant, where, _ in self.latency_observer.keys():
            if variant in profiled:
                factors.setdefault(where, []).append((variant, where))
        slowdown = {}
        for where, pairs in factors.items():
            values = [f for v, w in set(pairs)
                      if (f := latency_factor(self.latency_observer, v, w, profiled[v], now)) is not None]
            if values:  # faster than profiled counts too: after a re-profile on a slowed peer, the others are
                slowdown[where] = min(10.0, max(0.1, float(sorted(values)[len(values) // 2])))
        changed = any(abs(slowdown.get(w, 1.0) - self.worker_slowdown.get(w, 1.0)) > 0.1
                      for w in set(slowdown) | set(self.worker_slowdown))
        self.worker_slowdown = slowdown
        if changed:
            self._cluster_changed()

    def _variant_slowdown(self, variant: str, worker_id: str, now: float) -> float | None:
        """Observed / profiled inference time of one variant on one worker (None: too few observations)."""
        profiled = self._profiles_now().get(variant)
        return latency_factor(self.latency_observer, variant, worker_id, profiled, now) if profiled else None

    def _check_drift(self) -> None:
        """Control step: find drifted variants and send at most one re-profile into the cluster at a time."""
        now = time.monotonic()
        self._refresh_slowdowns(now)
        for rid, entry in list(self.reprofiles_inflight.items()):
            w = self.workers.get(entry["worker"])
            if now - entry["sent_s"] > REPROFILE_TIMEOUT_S or w is None or not w.alive:
                entry["status"] = "lost"
                del self.reprofiles_inflight[rid]
        if self.reprofiles_inflight:
            return  # one at a time: re-profiling takes cores from serving
        if self._refine_predicted(now):
            return
        findings = detect_drift(self.latency_observer, self._profiles_now(), now, self.reprofile_last,
                                lambda v, w: (v, self._hardware_id_of(w)))
        for f in findings:
            w = self.workers.get(f.where)
            if w is None or not w.alive or w.worker_id in self.draining or w.metrics is None:
                continue
            state = self.autoscale_states.get(w.worker_id, {}).get(f.variant)
            if state is not None and state.state == "interfered" and not any(
                    o.alive and o is not w and f.variant in o.loaded for o in self.workers.values()):
                # Interference on one worker: first move the traffic (autoscaling replicates the variant
                # elsewhere); a re-profile now would make the slow figure the profile and hide it.
                continue
            sizes = sorted(b for b in self._profiles_now().get(f.variant, {}))
            if self._send_reprofile(w, f.variant, sizes, reason="drift", finding=f):
                return

    def _send_reprofile(self, w, variant: str, sizes: list[int], reason: str,
                        finding: DriftFinding | None = None) -> bool:
        """Ask worker `w` to re-profile `variant` at `sizes` (low priority: only when it has room). True if sent.
        `finding` is the drift that asks for it (none for the refinement of predicted figures): its figures go
        into the status entry and the log."""
        if w.worker_id in self.draining or w.metrics is None:
            return False
        ok, why = can_reprofile([vm.queue for vm in w.metrics.variants.values()], w.metrics.process_cpu_percent,
                                worker_cores(w.metrics.cores, w.hardware.cores), self.drift_config)
        if not ok:
            log.debug("%s on %s, but not re-profiling now: %s", reason, w.worker_id, why)
            return False
        spec = self.catalog.variant_spec(variant)
        sizes = sorted(b for b in sizes if b <= spec.max_batch)[:64] or [1]
        msg = protocol.Message("reprofile", m.ReprofileBody(variant=variant, spec=spec, batch_sizes=sizes,
                                                           budget_ms=self.drift_config.reprofile_budget_ms))
        if not self._send_worker(w.identity, msg):
            return False
        now = time.monotonic()
        hw = self._hardware_id_of(w.worker_id)
        entry = {"at": round(time.time(), 3), "worker": w.worker_id, "hardware_id": hw, "variant": variant,
                 **(finding.to_dict() if finding is not None else {}), "reason": reason, "status": "sent",
                 "sent_s": now}
        self.reprofiles_inflight[msg.id] = entry
        self.reprofiles.append(entry)
        self.reprofile_last[(variant, hw)] = now
        self.metrics.on_action("reprofile")
        if finding is None:
            log.info("%s serves on %s with predicted figures (profile --search); measuring them there",
                     variant, w.worker_id)
        else:
            log.info("drift: %s; re-profiling it on %s", finding.describe(), w.worker_id)
        return True

    def _on_reprofiled(self, identity: bytes, worker_id: str, msg: protocol.Message) -> None:
        entry = self.reprofiles_inflight.pop(msg.id, None)
        if entry is None or entry["worker"] != worker_id:
            return
        b: m.ReprofiledBody = msg.body
        variant = self.store.get(VariantRecord, b.variant)
        if variant is None:
            entry["status"] = "dropped: the variant left the catalog"
            return
        old = self.store.get(ProfileRecord, profile_key(b.variant, b.hardware_id))
        batches = dict(old.batches) if old else {}
        batches.update({str(k): {**msgspec.structs.asdict(v), "measured": True, "predicted_error": None}
                        for k, v in b.batches.items()})
        record = ProfileRecord(variant=b.variant, model=variant.model, hardware_id=b.hardware_id,
                               hardware=msgspec.structs.asdict(b.hardware), load_time_ms=b.load_time_ms,
                               peak_memory_bytes=b.peak_memory_bytes, batches=batches, measured_at=time.time(),
                               source="reprofile", worker_id=worker_id)
        with self.store.transaction() as txn:  # enters the change log; the old profile stays in the history
            txn.put_profile(record)
        self._catalog_changed()
        entry.update(status="stored", p50_ms_after={str(k): round(v.p50_ms, 4) for k, v in b.batches.items()})
        log.info("re-profiled %s on %s: stored as its profile on %s (the old one is kept in the history)",
                 b.variant, worker_id, b.hardware_id)

    def _reprofile_refused(self, request_id: str, code: str, reason: str) -> bool:
        """A worker's error answering a re-profile; True when it was one."""
        entry = self.reprofiles_inflight.pop(request_id, None)
        if entry is None:
            return False
        key = (entry["variant"], entry["hardware_id"])
        if code == "overloaded":  # busy: try again soon, not after the whole cooldown
            entry["status"] = f"refused: {reason}"
            self.reprofile_last[key] = time.monotonic() - self.drift_config.reprofile_cooldown_s + REFUSED_RETRY_S
        else:
            entry["status"] = f"failed: {code}: {reason}"
        return True

    def drift_status(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "sent_s"} for e in self.reprofiles]
