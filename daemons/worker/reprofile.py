"""A worker's low-priority re-profile: re-measure a variant on this hardware when the master saw it drift.

It runs on the loader thread (so never beside a load), with a fresh session of the variant's artifact
and threads, through the profiler's own measuring (`toolkit.profiler.measure_session`), and only
while this worker is not saturated: nothing queued, its own process below the busy limit. Load from
other processes does not count — that interference is what the re-profile measures. Queries that
arrive meanwhile stop it between batch sizes; the master is told `overloaded` and tries later.
"""

from __future__ import annotations

import psutil
import zmq

from infaas_cli import protocol
from infaas_cli.backends import backend as backend_named, pads_to_max_batch
from infaas_cli.errors import InfaasError, wire_error
from infaas_cli.policy.drift import DriftConfig, can_reprofile
from infaas_cli.protocol import messages as m
from infaas_cli.toolkit.hardware import hardware_id, host_hardware
from infaas_cli.toolkit.modelio import synthetic_inputs
from infaas_cli.toolkit.profiler import MeasureSettings, measure_session
from infaas_daemons.common import log
from infaas_daemons.worker.executor import _RESULT

#: How long the worker samples its own process's CPU before it starts measuring.
CPU_SAMPLE_S = 0.2
#: The re-profile's busy limit (DriftConfig.max_busy_fraction's default).
REPROFILE_LIMITS = DriftConfig()


class Busy(InfaasError):
    code = "overloaded"


class Reprofiling:
    """The `reprofile` handler (loop thread) and the measurement (loader thread) of the worker."""

    _reprofiling: str | None = None  # the variant being re-measured

    def _queued(self) -> list[int]:
        """Queries waiting here, per variant (queued, or parked for a load). Safe from any thread:
        only lengths are read, and the dicts are copied first."""
        return [len(v.queue) for v in list(self.variants.values())] + [len(q) for q in list(self.parked.values())]

    def _on_reprofile(self, msg: protocol.Message) -> None:
        b: m.ReprofileBody = msg.body
        spec = b.spec
        if self._reprofiling is not None:
            raise Busy(f"{self.worker_id} is re-profiling {self._reprofiling}; try {spec.name} later")
        if spec.backend not in self.backends:
            raise protocol.ProtocolError("backend_unavailable",
                                         f"backend {spec.backend} is not available on {self.worker_id}")
        if not self.cache.has(spec.artifact_sha256):
            raise protocol.ProtocolError("not_found", f"{spec.name}'s artifact {spec.artifact_sha256[:12]} is not "
                                         f"cached on {self.worker_id}; re-profile where it was loaded")
        ok, why = can_reprofile(self._queued(), 0.0, self.cores, REPROFILE_LIMITS)
        if not ok:
            raise Busy(f"{self.worker_id} is busy ({why}); try re-profiling {spec.name} later")
        sizes = [spec.max_batch] if spec.batch_dim != "dynamic" or pads_to_max_batch(spec.backend, spec.batch_dim) else \
            sorted({s for s in b.batch_sizes if s <= spec.max_batch})
        if not sizes:
            raise protocol.ProtocolError("bad_request", f"none of the batch sizes {b.batch_sizes} fits "
                                         f"{spec.name}'s max batch {spec.max_batch}")
        self._reprofiling = spec.name
        log.info("re-profiling %s at batch sizes %s (asked by the master)", spec.name, sizes)
        try:
            self._loader.submit(self._reprofile, msg.id, spec, sizes, b.budget_ms)
        except Exception:
            self._reprofiling = None
            raise

    def _busy_reason(self, cpu_percent: float = 0.0) -> str | None:
        ok, why = can_reprofile(self._queued(), cpu_percent, self.cores, REPROFILE_LIMITS)
        return None if ok else f"{self.worker_id} got busy ({why})"

    def _reprofile(self, request_id: str, spec: m.VariantSpec, sizes: list[int], budget_ms: float) -> None:
        """Loader thread: measure, then hand the `reprofiled` (or `error`) frame to the loop to send."""
        push = self.ctx.socket(zmq.PUSH)
        push.connect(self._results_endpoint)
        freed = False
        try:
            try:
                msg = self._measure_variant(request_id, spec, sizes, budget_ms)
            except Exception as exc:
                code, reason, _ = wire_error(exc)
                if code == "internal":
                    log.exception("re-profiling %s failed", spec.name)
                    code, reason = "failed", " ".join(str(exc).split())[:300] or type(exc).__name__
                log.info("re-profiling %s stopped: %s", spec.name, reason)
                msg = protocol.error(code, f"re-profiling {spec.name} on {self.worker_id}: {reason}", request_id,
                                     variant=spec.name, worker_id=self.worker_id)
            # Free before the answer leaves: its reader may ask for the next re-profile at once (it was told busy),
            # and only once: after the answer, the mark may already be that next one's.
            self._reprofiling, freed = None, True
            push.send_multipart([_RESULT, *protocol.encode(msg)])
        finally:
            if not freed:
                self._reprofiling = None
            push.close(linger=1000)

    def _measure_variant(self, request_id: str, spec: m.VariantSpec, sizes: list[int],
                         budget_ms: float) -> protocol.Message:
        why = self._busy_reason(psutil.Process().cpu_percent(interval=CPU_SAMPLE_S))
        if why:
            raise Busy(f"{why}; try later")
        backend = backend_named(spec.backend)
        data = synthetic_inputs(self._input_specs(spec), spec.batch_dim, max(sizes))
        settings = MeasureSettings(warmup_runs=2, budget_ms=budget_ms, min_runs=5, max_runs=1000)
        load_ms, peak_bytes, per_batch = measure_session(
            backend, self.cache.verify(spec.artifact_sha256), spec.recipe, spec.threads, spec.batch_dim, data,
            sizes, settings, interrupted=self._busy_reason)
        # The hardware as this worker registered it, so the master can name it the same way.
        hw = host_hardware()
        hw["cores"] = self.cores
        hw_id = hardware_id(backend.hardware, hw)
        wire = m.BatchLatency.__struct_fields__  # a re-profile is always measured: the wire has no flag for it
        batches = {b: m.BatchLatency(**{k: getattr(p, k) for k in wire}) for b, p in per_batch.items()}
        log.info("re-profiled %s on %s: %s", spec.name, hw_id,
                 ", ".join(f"b{b} p50 {p.p50_ms:.2f} ms" for b, p in sorted(batches.items())))
        return protocol.Message("reprofiled", m.ReprofiledBody(
            variant=spec.name, hardware_id=hw_id, batches=batches, load_time_ms=load_ms,
            peak_memory_bytes=peak_bytes, hardware=m.Hardware(**hw), worker_id=self.worker_id), id=request_id)
