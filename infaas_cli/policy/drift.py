"""Profile drift as pure policy: observed inference latencies against the profiles, and when to re-profile.

A `LatencyObserver` keeps, per (variant, where, batch bucket), a bounded window of the inference
times workers report in each result (`timing.inference_ms` at `timing.batch_size`). `where` is the
worker id (to tell one slowed worker from its peers) or a hardware id (to pool workers of one kind).
Memory is bounded twice: at most `max_samples` per key, at most `max_keys` keys (least recently
observed dropped first); each observation costs O(1).

`detect_drift` compares a robust statistic of each window (the median by default) with the
profiled p50 at the same batch size and reports, per (variant, where), the bucket that drifted
furthest beyond `threshold` — slower or faster — unless that pair was re-profiled within
`reprofile_cooldown_s`. The clock is always an argument; nothing here does I/O.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from infaas_cli.catalog.records import is_predicted
from infaas_cli.errors import InfaasError

#: Largest batch bucket (the protocol's largest batch size).
MAX_BUCKET = 65536


class DriftConfigError(InfaasError):
    code = "bad_config"


@dataclass(frozen=True, slots=True)
class DriftConfig:
    threshold: float = 1.5  # drift when observed/profiled > this, or < 1/this (slower or faster)
    window_s: float = 30.0  # only observations this recent count
    min_samples: int = 20  # fewer observations in the window say nothing
    max_samples: int = 128  # observations kept per (variant, where, batch bucket)
    max_keys: int = 4096  # (variant, where, batch bucket) windows kept; the least recently observed go first
    quantile: float = 0.5  # the statistic of a window compared with the profiled p50 (0.5: the median)
    reprofile_cooldown_s: float = 300.0  # no second re-profile of a (variant, where) this soon
    max_busy_fraction: float = 0.75  # a worker whose own process uses more of its cores is too busy to re-profile
    reprofile_budget_ms: float = 100.0  # measuring budget per batch size of one re-profile

    def __post_init__(self) -> None:
        for name in ("threshold", "window_s", "quantile", "reprofile_cooldown_s", "max_busy_fraction",
                     "reprofile_budget_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DriftConfigError(f"drift.{name} must be a finite number, not {value!r}")
        for name in ("min_samples", "max_samples", "max_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DriftConfigError(f"drift.{name} must be a whole number >= 1, not {value!r}")
        if self.threshold <= 1:
            raise DriftConfigError(f"drift.threshold must be > 1 (a ratio of observed to profiled latency), "
                                   f"not {self.threshold}")
        if self.window_s <= 0:
            raise DriftConfigError(f"drift.window_s must be > 0 seconds, not {self.window_s}")
        if self.min_samples > self.max_samples:
            raise DriftConfigError(f"drift.min_samples ({self.min_samples}) must not exceed drift.max_samples "
                                   f"({self.max_samples}): a window would never hold enough observations")
        if not 0 < self.quantile < 1:
            raise DriftConfigError(f"drift.quantile must be in (0, 1), not {self.quantile}")
        if self.reprofile_cooldown_s < 0:
            raise DriftConfigError(f"drift.reprofile_cooldown_s must be >= 0 seconds, not {self.reprofile_cooldown_s}")
        if not 0 < self.max_busy_fraction <= 1:
            raise DriftConfigError(f"drift.max_busy_fraction must be in (0, 1], not {self.max_busy_fraction}")
        if self.reprofile_budget_ms <= 0:
            raise DriftConfigError(f"drift.reprofile_budget_ms must be > 0 ms, not {self.reprofile_budget_ms}")


def batch_bucket(batch_size: int) -> int:
    """The power of two at or above `batch_size` (1, 2, 4, 8, …), which the default profiles measure."""
    if batch_size <= 1:
        return 1
    return min(MAX_BUCKET, 1 << (int(batch_size) - 1).bit_length())


Key = tuple[str, str, int]  # (variant, where, batch bucket)


class LatencyObserver:
    """Bounded windows of observed inference times; `observe` is O(1), the reads are O(max_samples)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._windows: collections.OrderedDict[Key, collections.deque[tuple[float, float]]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def observe(self, variant: str, where: str, batch_size: int, inference_ms: float, now_s: float) -> None:
        """One result's inference time; a value that is not a finite, non-negative number is ignored."""
        if isinstance(inference_ms, bool) or not isinstance(inference_ms, (int, float)) \
                or not math.isfinite(inference_ms) or inference_ms < 0:
            return
        key = (variant, where, batch_bucket(batch_size))
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.config.max_keys:
                self._windows.popitem(last=False)  # the least recently observed
            window = self._windows[key] = collections.deque(maxlen=self.config.max_samples)
        else:
            self._windows.move_to_end(key)
        window.append((now_s, float(inference_ms)))

    def samples(self, variant: str, where: str, batch_size: int, now_s: float) -> list[float]:
        """The observations of the bucket of `batch_size` within the window, oldest first."""
        window = self._windows.get((variant, where, batch_bucket(batch_size)))
        if not window:
            return []
        since = now_s - self.config.window_s
        return [ms for at, ms in window if at >= since]

    def observed_ms(self, variant: str, where: str, batch_size: int, now_s: float) -> float | None:
        """The window's `quantile` (the median by default), or None with fewer than `min_samples`."""
        values = self.samples(variant, where, batch_size, now_s)
        if len(values) < self.config.min_samples:
            return None
        return float(np.quantile(np.asarray(values), self.config.quantile))

    def keys(self) -> list[Key]:
        return list(self._windows)

    def forget(self, variant: str, where: str | None = None) -> None:
        """Drop a variant's windows (at `where`, or everywhere), e.g. when it leaves the catalog."""
        for key in [k for k in self._windows if k[0] == variant and (where is None or k[1] == where)]:
            del self._windows[key]


@dataclass(frozen=True, slots=True)
class DriftFinding:
    variant: str
    where: str
    batch_size: int  # the batch bucket that drifted furthest
    observed_ms: float
    profiled_ms: float
    ratio: float  # observed / profiled
    samples: int

    @property
    def direction(self) -> str:
        return "slower" if self.ratio > 1 else "faster"

    def describe(self) -> str:
        return (f"{self.variant} on {self.where} runs batch {self.batch_size} in {self.observed_ms:.2f} ms, "
                f"{self.ratio:.2f}x its profiled {self.profiled_ms:.2f} ms ({self.direction}, "
                f"{self.samples} samples)")

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "where": self.where, "batch_size": self.batch_size,
                "observed_ms": round(self.observed_ms, 3), "profiled_ms": round(self.profiled_ms, 3),
                "ratio": round(self.ratio, 3), "direction": self.direction, "samples": self.samples}


def _drifted(ratio: float, threshold: float) -> bool:
    return ratio > threshold or ratio < 1 / threshold


def profiled_at(profiled: Mapping[int, float], batch: int) -> float | None:
    """The profiled latency at `batch`: measured there, else interpolated linearly between the profiled batch
    sizes around it (beyond the largest: scaled from it, as selection does; below the smallest: the smallest's)."""
    if batch in profiled:
        return profiled[batch]
    if not profiled:
        return None
    sizes = sorted(profiled)
    below = [b for b in sizes if b < batch]
    above = [b for b in sizes if b > batch]
    if not below:
        return profiled[above[0]]
    if not above:
        return profiled[below[-1]] * batch / below[-1]
    lo, hi = below[-1], above[0]
    return profiled[lo] + (profiled[hi] - profiled[lo]) * (batch - lo) / (hi - lo)


def _ratios(observer: LatencyObserver, variant: str, where: str, profiled: Mapping[int, float],
            buckets: Iterable[int], now_s: float) -> list[tuple[float, int, float, float, int]]:
    """(ratio, bucket, observed, profiled, samples) of each bucket with enough samples and a profiled figure."""
    out = []
    for bucket in buckets:
        base = profiled_at(profiled, bucket)
        if base is None or not base > 0:
            continue
        values = observer.samples(variant, where, bucket, now_s)
        if len(values) < observer.config.min_samples:
            continue
        seen = float(np.quantile(np.asarray(values), observer.config.quantile))
        out.append((seen / base, bucket, seen, float(base), len(values)))
    return out


def detect_drift(observer: LatencyObserver, profiled_ms: Mapping[str, Mapping[int, float]], now_s: float,
                 last_reprofile_s: Mapping[Hashable, float] | None = None,
                 cooldown_key: Callable[[str, str], Hashable] | None = None) -> list[DriftFinding]:
    """Per (variant, where), the bucket whose observed latency is furthest beyond the threshold.

    `profiled_ms` maps a variant to its profiled p50 by batch size (the profile selection uses);
    variants absent from it are not judged. A (variant, where) re-profiled less than
    `reprofile_cooldown_s` ago (`last_reprofile_s`, written by the caller when it acts) is skipped.
    The cooldown is kept under `cooldown_key(variant, where)` (default: the pair itself); e.g.
    (variant, hardware id of `where`), so that one re-profile of a hardware kind quiets all its workers.
    Findings are ordered by how far they drifted, furthest first.
    """
    config = observer.config
    last = last_reprofile_s or {}
    key_of = cooldown_key or (lambda variant, where: (variant, where))
    buckets: dict[tuple[str, str], list[int]] = {}
    for variant, where, bucket in observer.keys():
        buckets.setdefault((variant, where), []).append(bucket)
    findings = []
    for (variant, where), mine in buckets.items():
        profiled = profiled_ms.get(variant)
        if not profiled:
            continue
        done = last.get(key_of(variant, where))
        if done is not None and now_s - done < config.reprofile_cooldown_s:
            continue
        drifted = [r for r in _ratios(observer, variant, where, profiled, sorted(mine), now_s)
                   if _drifted(r[0], config.threshold)]
        if not drifted:
            continue
        ratio, bucket, seen, base, n = max(drifted, key=lambda r: abs(math.log(r[0])))
        findings.append(DriftFinding(variant, where, bucket, seen, base, ratio, n))
    findings.sort(key=lambda f: -abs(math.log(f.ratio)))
    return findings


def latency_factor(observer: LatencyObserver, variant: str, where: str, profiled_ms: Mapping[int, float],
                   now_s: float) -> float | None:
    """How much slower (> 1) or faster (< 1) than profiled a variant runs at `where`: the median of its
    buckets' observed/profiled ratios; None without enough observations. Selection may scale the
    variant's predicted latency there by it."""
    buckets = sorted({k[2] for k in observer.keys() if k[0] == variant and k[1] == where})
    ratios = [r[0] for r in _ratios(observer, variant, where, profiled_ms, buckets, now_s)]
    return float(np.median(ratios)) if ratios else None


def refine_batches(batches: Mapping[str, Mapping[str, Any]], factor: float) -> dict[str, dict[str, Any]]:
    """A profile's `batches` with every latency scaled by `factor` (throughput divided by it)."""
    out = {}
    for size, stats in batches.items():
        stats = dict(stats)
        for name in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"):
            if isinstance(stats.get(name), (int, float)):
                stats[name] = float(stats[name]) * factor
        if isinstance(stats.get("throughput_qps"), (int, float)) and factor > 0:
            stats["throughput_qps"] = float(stats["throughput_qps"]) / factor
        out[size] = stats
    return out


def refine_profile(profile, factor: float | None):
    """A copy of a ProfileRecord whose latencies are scaled by an observed `latency_factor` (None: as is)."""
    if factor is None or factor == 1.0:
        return profile
    return replace(profile, batches=refine_batches(profile.batches, factor))


def profiled_p50_ms(batches: Mapping[str, Mapping[str, Any]]) -> dict[int, float]:
    """batch size -> profiled p50, from a ProfileRecord's `batches` (malformed entries skipped)."""
    out = {}
    for size, stats in batches.items():
        try:
            out[int(size)] = float(stats["p50_ms"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def predicted_sizes(batches: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """The batch sizes of a ProfileRecord's `batches` that were predicted (`profile --search`), not measured."""
    out = []
    for size, stats in batches.items():
        try:
            if is_predicted(stats):
                out.append(int(size))
        except (AttributeError, TypeError, ValueError):
            continue
    return sorted(out)


def can_reprofile(queued: Iterable[int], process_cpu_percent: float, cores: int,
                  config: DriftConfig) -> tuple[bool, str]:
    """Whether a worker has room for a low-priority re-profile: nothing queued (per variant), and its own process
    below `max_busy_fraction` of its cores. Load from other processes (interference) does not count:
    it is what a re-profile is meant to measure. Returns (ok, why not)."""
    total = sum(queued)
    if total:
        return False, f"{total} queued"
    busy = process_cpu_percent / (100.0 * max(1, cores))
    if busy > config.max_busy_fraction:
        return False, f"its process uses {busy:.0%} of its {cores} core(s) (limit {config.max_busy_fraction:.0%})"
    return True, ""
