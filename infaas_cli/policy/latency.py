"""Serving overhead learned online: a streaming quantile of (end-to-end − worker) time per worker path.

A query's SLO bounds the time from its arrival at the master to its reply leaving it. The profiled model time
is only part of that: decoding, the hop to the worker and back, the worker's door, queue hand-off and the
reply's encoding add a roughly constant serving overhead per path, which for small models dwarfs the model
time (0.006 ms profiled, 7 ms served). The master measures it on every reply — end-to-end time at the master
minus the time the worker reports for the query — and feeds the samples to one `OverheadEstimator` per worker;
selection then predicts ``overhead + queueing + model time (+ load time)``.

The estimator keeps the last `window` samples in a fixed ring (bounded memory, O(1) `add`) and answers a
high quantile of them (default p90: an SLO is about the tail, not the mean), computed on demand and cached
until the next sample. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from infaas_cli.errors import InfaasError

#: The overhead assumed for a path with no sample yet, in ms: one loopback ZeroMQ round trip plus msgpack
#: encoding and decoding of a small tensor on each side measures ~0.3–1 ms on a laptop; 1 ms is the
#: conservative end, so a fresh cluster does not promise sub-millisecond SLOs it has never shown it can meet.
PRIOR_OVERHEAD_MS = 1.0

#: The quantile of the overhead samples used as the prediction (an SLO is a tail bound).
DEFAULT_QUANTILE = 0.9

#: How many recent samples an estimator keeps: enough for a stable p90 (≥ 25 samples above it), small
#: enough that the sort on a cache miss stays a few microseconds and the estimate follows a changed path.
DEFAULT_WINDOW = 256


class OverheadConfigError(InfaasError):
    code = "bad_config"


def serving_overhead_ms(end_to_end_ms: float, worker_ms: float) -> float:
    """The overhead sample of one reply: end-to-end at the master minus the worker's own time, never below 0."""
    return max(0.0, float(end_to_end_ms) - float(worker_ms))


def quantile_nearest_rank(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile of ascending values (an observed value, never an interpolation)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("the quantile of no values is undefined")
    rank = max(1, math.ceil(q * n))
    return sorted_values[min(rank, n) - 1]


class OverheadEstimator:
    """A streaming q-quantile of overhead samples (ms) over the last `window` of them, with a prior.

    `add` is O(1) (a ring write); `value_ms` sorts the ring on the first call after a change and caches
    the answer. Before any sample it answers `prior_ms`. Samples that are not finite are ignored and
    negative ones count as 0 (clock jitter between the two timings), so one bad reply cannot poison it.
    """

    __slots__ = ("quantile", "window", "prior_ms", "_ring", "_next", "_count", "_cached")

    def __init__(self, quantile: float = DEFAULT_QUANTILE, window: int = DEFAULT_WINDOW,
                 prior_ms: float = PRIOR_OVERHEAD_MS) -> None:
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile <= 1:
            raise OverheadConfigError(f"overhead quantile must be in (0, 1], not {quantile!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise OverheadConfigError(f"overhead window must be a whole number of samples >= 1, not {window!r}")
        if isinstance(prior_ms, bool) or not isinstance(prior_ms, (int, float)) or not math.isfinite(prior_ms) \
                or prior_ms < 0:
            raise OverheadConfigError(f"overhead prior must be a non-negative number of ms, not {prior_ms!r}")
        self.quantile = float(quantile)
        self.window = window
        self.prior_ms = float(prior_ms)
        self._ring: list[float] = []
        self._next = 0  # where the next sample goes once the ring is full
        self._count = 0  # samples ever accepted
        self._cached: float | None = None

    def add(self, ms: float) -> None:
        ms = float(ms)
        if not math.isfinite(ms):
            return
        if ms < 0:
            ms = 0.0
        ring = self._ring
        if len(ring) < self.window:
            ring.append(ms)
        else:
            ring[self._next] = ms
            self._next = (self._next + 1) % self.window
        self._count += 1
        self._cached = None

    def extend(self, samples: Iterable[float]) -> None:
        for ms in samples:
            self.add(ms)

    @property
    def samples(self) -> int:
        """How many samples the estimate rests on (at most `window`)."""
        return len(self._ring)

    @property
    def total_samples(self) -> int:
        return self._count

    def floor_ms(self) -> float:
        """The least overhead seen in the window (the path with no queue in front of the worker), or the
        prior before any sample: what an idle cluster would add."""
        return min(self._ring) if self._ring else self.prior_ms

    def value_ms(self) -> float:
        """The current estimate: the q-quantile of the kept samples, or the prior before any."""
        cached = self._cached
        if cached is None:
            cached = self.prior_ms if not self._ring else quantile_nearest_rank(sorted(self._ring), self.quantile)
            self._cached = cached
        return cached


class WorkerOverheads:
    """One OverheadEstimator per worker, created on its first sample; `snapshot()` feeds `ClusterSnapshot`."""

    __slots__ = ("quantile", "window", "prior_ms", "_by_worker")

    def __init__(self, quantile: float = DEFAULT_QUANTILE, window: int = DEFAULT_WINDOW,
                 prior_ms: float = PRIOR_OVERHEAD_MS) -> None:
        OverheadEstimator(quantile, window, prior_ms)  # validate the settings once, here
        self.quantile, self.window, self.prior_ms = quantile, window, float(prior_ms)
        self._by_worker: dict[str, OverheadEstimator] = {}

    def add(self, worker_id: str, end_to_end_ms: float, worker_ms: float) -> None:
        """Record one reply of `worker_id`: its end-to-end time at the master and the worker's own time."""
        est = self._by_worker.get(worker_id)
        if est is None:
            est = self._by_worker[worker_id] = OverheadEstimator(self.quantile, self.window, self.prior_ms)
        est.add(serving_overhead_ms(end_to_end_ms, worker_ms))

    def forget(self, worker_id: str) -> None:
        self._by_worker.pop(worker_id, None)

    def value_ms(self, worker_id: str) -> float:
        est = self._by_worker.get(worker_id)
        return self.prior_ms if est is None else est.value_ms()

    def snapshot(self) -> dict[str, float]:
        """worker -> overhead estimate (ms), for the workers with at least one sample."""
        return {w: est.value_ms() for w, est in self._by_worker.items()}

    def floor_ms(self) -> float:
        """The least overhead any worker's path showed lately (the prior before any sample): the idle figure."""
        return min((est.floor_ms() for est in self._by_worker.values()), default=self.prior_ms)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._by_worker


def overhead_for(overhead_ms: Mapping[str, float] | None, worker_id: str, default_ms: float) -> float:
    """The overhead of the path to `worker_id`: its learned estimate, else `default_ms`."""
    if not overhead_ms:
        return default_ms
    value = overhead_ms.get(worker_id)
    return default_ms if value is None else value
