"""When a worker closes a batch, which queued queries it takes, and when a query skips the queue altogether.

Queries pile up while a batch runs, so under load batches form by themselves. Waiting on top of that
helps only when queries arrive faster than a batch is served, and then only as long as the tightest
queued deadline leaves slack (and never over `max_batch_wait_ms`). At low load a query runs at once.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: Longest a batch waits for more queries by default (the worker's `max_batch_wait_ms` setting overrides it).
MAX_BATCH_WAIT_MS = 2.0
#: Variants predicted to run a query this fast are run on the event-loop thread when idle (no handoff).
INLINE_MAX_MS = 1.0
#: Weight of the newest gap in the moving average of the time between arrivals.
ARRIVAL_GAP_WEIGHT = 0.2


def predicted_ms(latency_ms: Mapping[int, float], batch: int) -> float:
    """Profiled latency at the smallest profiled batch >= `batch`; beyond the largest, scaled linearly; 0 unprofiled."""
    fitting = [b for b in latency_ms if b >= batch]
    if fitting:
        return latency_ms[min(fitting)]
    if latency_ms:
        biggest = max(latency_ms)
        return latency_ms[biggest] * batch / biggest
    return 0.0


def update_arrival_gap(avg_gap_s: float, gap_s: float) -> float:
    """The moving average of the time between arrivals after one more gap (the first gap is taken as it is)."""
    if avg_gap_s == math.inf:
        return gap_s
    return (1 - ARRIVAL_GAP_WEIGHT) * avg_gap_s + ARRIVAL_GAP_WEIGHT * gap_s


class Queued(Protocol):
    """What batching reads of a queued query (the worker's own queue entries may carry these names)."""

    @property
    def batch(self) -> int: ...
    @property
    def shape_key(self) -> Hashable: ...
    @property
    def deadline_s(self) -> float: ...
    @property
    def arrived_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A queued query as batching sees it (a plain implementation of `Queued`)."""

    batch: int  # samples it carries
    shape_key: Hashable  # queries batch together only with equal per-sample input shapes
    deadline_s: float  # when its result is due (inf without a latency SLO), on the same clock as now_s
    arrived_s: float


@dataclass(frozen=True, slots=True)
class BatchDecision:
    take: int  # run this many queued queries from the head now, as one batch; 0: wait
    wait_s: float  # with take == 0: wait at most this long (or until a query arrives), then decide again


def next_batch(queue: Sequence[Queued], max_batch: int, batch_dim: str, arrival_gap_s: float,
               latency_ms: Mapping[int, float], now_s: float,
               max_batch_wait_ms: float = MAX_BATCH_WAIT_MS) -> BatchDecision:
    """Close a batch now, or wait for more queries.

    Runs now when the queue holds a full batch, when queries arrive slower than one more sample would be
    served (`arrival_gap_s` vs the predicted latency of a batch one larger), or when waiting would miss
    the tightest deadline or make the oldest query wait past `max_batch_wait_ms`. The batch is then the
    longest run from the head with the head's shape that fits `max_batch` (at least the head). A variant
    whose batch_dim is "none" runs one query at a time, at once.
    """
    if not queue:
        return BatchDecision(0, math.inf)
    if batch_dim == "none":
        return BatchDecision(1, 0.0)
    size = sum(q.batch for q in queue)
    if size < max_batch and arrival_gap_s * 1e3 < predicted_ms(latency_ms, size + 1):
        tightest = min(q.deadline_s for q in queue)
        slack_s = tightest - now_s - predicted_ms(latency_ms, min(max_batch, size + 1)) / 1e3
        oldest_wait_s = now_s - queue[0].arrived_s
        wait_s = min(slack_s, max_batch_wait_ms / 1e3 - oldest_wait_s)
        if wait_s > 0:
            return BatchDecision(0, wait_s)
    shape_key = queue[0].shape_key
    take, size = 0, 0
    for q in queue:
        if size + q.batch > max_batch or q.shape_key != shape_key:
            break
        take += 1
        size += q.batch
    return BatchDecision(max(1, take), 0.0)  # a single query over max batch is refused on arrival


def run_inline(latency_ms: Mapping[int, float], batch: int, max_batch: int, arrival_gap_s: float, queued: int,
               busy: int, replicas: int, inline_max_ms: float = INLINE_MAX_MS) -> bool:
    """Whether a query runs right on the receiving thread instead of being queued (two thread handoffs saved).

    Only for a profiled, fast variant with one replica that is idle (nothing queued, nothing running) at
    low load: queries arriving slower than a batch one larger is served would not have batched anyway.
    `arrival_gap_s` already counts this query's arrival.
    """
    return (not queued and not busy and replicas == 1 and bool(latency_ms)
            and predicted_ms(latency_ms, batch) <= inline_max_ms
            and arrival_gap_s * 1e3 >= predicted_ms(latency_ms, min(max_batch, batch + 1)))
