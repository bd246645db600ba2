"""Seeded bursty load traces: a diurnal swell with Poisson bursts, arrivals by thinning, queries of mixed SLOs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from infaas_cli.errors import InfaasError


@dataclass(frozen=True)
class QueryClass:
    """One kind of query in a trace: a model-less request with its SLO, drawn with relative `weight`."""

    name: str
    task: str
    dataset: str
    latency_ms: float
    min_accuracy: float
    objective: str = "cost"
    weight: float = 1.0

    def query_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of Client.submit/query for this class."""
        return {"task": self.task, "dataset": self.dataset, "latency_ms": self.latency_ms,
                "min_accuracy": self.min_accuracy, "objective": self.objective}


@dataclass(frozen=True)
class TraceConfig:
    duration_s: float
    base_qps: float
    peak_qps: float
    period_s: float | None = None  # one compressed "day" of the diurnal shape; None: the whole duration
    burst_rate_per_min: float = 0.0  # expected burst starts per minute
    burst_multiplier: float = 1.0  # the rate is multiplied by this during a burst
    burst_duration_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise InfaasError(f"a trace needs a positive finite duration, not duration_s={self.duration_s!r}")
        if not (0 <= self.base_qps <= self.peak_qps) or not math.isfinite(self.peak_qps) or self.peak_qps <= 0:
            raise InfaasError(f"a trace needs 0 <= base_qps <= peak_qps and peak_qps > 0, not base_qps="
                              f"{self.base_qps!r}, peak_qps={self.peak_qps!r}")
        if self.period_s is not None and not self.period_s > 0:
            raise InfaasError(f"period_s must be positive (or left out for the whole duration), not {self.period_s!r}")
        if self.burst_rate_per_min < 0 or self.burst_duration_s < 0:
            raise InfaasError("burst_rate_per_min and burst_duration_s must be non-negative")
        if self.burst_multiplier < 1:
            raise InfaasError(f"burst_multiplier must be at least 1 (a burst raises the rate), "
                              f"not {self.burst_multiplier!r}")

    @property
    def effective_period_s(self) -> float:
        return self.period_s if self.period_s is not None else self.duration_s


@dataclass(frozen=True, slots=True)
class Arrival:
    t_s: float  # scheduled send time, seconds after the trace starts
    class_index: int


def _streams(seed: int) -> list[np.random.Generator]:
    # Independent streams for bursts, arrival times and classes: re-weighting the classes does not move
    # the arrivals, and a different burst rate does not reshuffle the classes.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def burst_windows(config: TraceConfig) -> list[tuple[float, float]]:
    """The (start_s, end_s) of each burst: starts are a Poisson process of burst_rate_per_min."""
    rng = _streams(config.seed)[0]
    if config.burst_rate_per_min <= 0 or config.burst_duration_s <= 0 or config.burst_multiplier == 1:
        return []
    rate_per_s = config.burst_rate_per_min / 60.0
    starts = np.sort(rng.uniform(0.0, config.duration_s, rng.poisson(rate_per_s * config.duration_s)))
    return [(float(s), float(min(s + config.burst_duration_s, config.duration_s))) for s in starts]


def rate_at(config: TraceConfig, bursts: Sequence[tuple[float, float]], t: float | np.ndarray) -> float | np.ndarray:
    """The offered rate (queries/s) at time t: the diurnal swell, times burst_multiplier inside a burst.

    Overlapping bursts do not compound. Works on a scalar or an array of times.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    diurnal = config.base_qps + (config.peak_qps - config.base_qps) * \
        (1.0 - np.cos(2.0 * np.pi * t_arr / config.effective_period_s)) / 2.0
    in_burst = np.zeros(t_arr.shape, dtype=bool)
    for start, end in bursts:
        in_burst |= (t_arr >= start) & (t_arr < end)
    rate = np.where(in_burst, diurnal * config.burst_multiplier, diurnal)
    return float(rate) if rate.ndim == 0 else rate


def generate_trace(config: TraceConfig, classes: Sequence[QueryClass]) -> list[Arrival]:
    """Non-homogeneous Poisson arrivals over [0, duration_s) by thinning; the same seed gives the same trace."""
    if not classes:
        raise InfaasError("a trace needs at least one query class")
    weights = np.array([c.weight for c in classes], dtype=np.float64)
    if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise InfaasError("query class weights must be non-negative with a positive sum, not "
                          + ", ".join(f"{c.name}={c.weight!r}" for c in classes))
    _, arrivals_rng, class_rng = _streams(config.seed)
    bursts = burst_windows(config)
    rate_max = config.peak_qps * (config.burst_multiplier if bursts else 1.0)
    # A homogeneous Poisson process of rate_max, each point kept with probability rate(t) / rate_max.
    n = int(arrivals_rng.poisson(rate_max * config.duration_s))
    candidates = np.sort(arrivals_rng.uniform(0.0, config.duration_s, n))
    keep = arrivals_rng.uniform(0.0, 1.0, n) * rate_max < rate_at(config, bursts, candidates)
    times = candidates[keep]
    kinds = class_rng.choice(len(classes), size=times.size, p=weights / weights.sum())
    return [Arrival(float(t), int(k)) for t, k in zip(times, kinds)]


def offered_load_series(trace: Sequence[Arrival], bin_s: float,
                        duration_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bin start times, arrivals per second in each bin), for plotting the offered load."""
    if bin_s <= 0:
        raise InfaasError(f"bin_s must be positive, not {bin_s!r}")
    times = np.array([a.t_s for a in trace], dtype=np.float64)
    end = duration_s if duration_s is not None else (float(times.max()) if times.size else 0.0)
    n_bins = max(1, math.ceil(end / bin_s - 1e-9)) if end > 0 else 1
    counts = np.bincount(np.minimum((times // bin_s).astype(np.int64), n_bins - 1), minlength=n_bins) \
        if times.size else np.zeros(n_bins, dtype=np.int64)
    return np.arange(n_bins) * bin_s, counts / bin_s


def default_classes() -> list[QueryClass]:
    """Four applications over the example zoo's two tasks, with accuracy and latency needs that differ.

    A developer hand-picking one variant per class takes the most accurate that meets its latency at low load
    (the 100 %-accurate digits CNN for every digits class); infaas may serve a class with any variant that
    meets both its latency and its accuracy floor.
    """
    return [
        # Interactive digit recognition (e.g. a form-filling UI): tight latency, a 95 % accuracy floor.
        QueryClass("digits-interactive", "digit-classification", "digits", latency_ms=40.0, min_accuracy=0.95,
                   weight=3.0),
        # Bulk digit transcription: relaxed latency, a 97 % floor.
        QueryClass("digits-standard", "digit-classification", "digits", latency_ms=100.0, min_accuracy=0.97,
                   weight=3.0),
        # Audited documents (cheques): only the most accurate model will do, latency barely matters.
        QueryClass("digits-audit", "digit-classification", "digits", latency_ms=300.0, min_accuracy=0.99,
                   weight=1.0),
        # Tumour screening while the clinician waits: tight latency, a 95 % floor.
        QueryClass("cancer-screening", "tumor-classification", "breast-cancer", latency_ms=40.0,
                   min_accuracy=0.95, weight=2.0),
    ]
