"""Pure tests of the worker's batching rules: a fake clock and plain numbers."""

from __future__ import annotations

import math

from infaas_cli.policy.batching import (MAX_BATCH_WAIT_MS, BatchDecision, QueueItem, next_batch, predicted_ms,
                                        run_inline, update_arrival_gap)
from support import FakeClock

INF = math.inf
LAT = {1: 1.0, 4: 2.0, 8: 3.0}  # profiled ms per batch size


def item(at_s: float, batch: int = 1, shape: str = "x", deadline_s: float = INF) -> QueueItem:
    return QueueItem(batch=batch, shape_key=shape, deadline_s=deadline_s, arrived_s=at_s)


def decide(queue, now_s: float, gap_s: float = 1e-5, max_batch: int = 8, batch_dim: str = "dynamic",
           latency_ms=LAT, wait_ms: float = MAX_BATCH_WAIT_MS) -> BatchDecision:
    return next_batch(queue, max_batch, batch_dim, gap_s, latency_ms, now_s, wait_ms)


# -- predicted latency ---------------------------------------------------------------------------------

def test_predicted_ms_rounds_up_to_a_profiled_batch_and_scales_past_the_largest():
    assert predicted_ms(LAT, 1) == 1.0
    assert predicted_ms(LAT, 2) == 2.0  # the batch-4 measurement
    assert predicted_ms(LAT, 8) == 3.0
    assert predicted_ms(LAT, 16) == 6.0  # linear past the largest
    assert predicted_ms({}, 4) == 0.0  # unprofiled


def test_arrival_gap_average():
    assert update_arrival_gap(INF, 0.01) == 0.01  # the first gap as it is
    assert math.isclose(update_arrival_gap(0.01, 0.02), 0.012)  # 0.8 old + 0.2 new


# -- closing a batch ----------------------------------------------------------------------------------

def test_empty_queue_waits_for_a_query():
    assert decide([], 0.0) == BatchDecision(0, INF)


def test_batch_dim_none_runs_one_query_at_once():
    q = [item(0.0), item(0.0)]
    assert decide(q, 0.0, batch_dim="none") == BatchDecision(1, 0.0)


def test_slow_arrivals_run_at_once():
    # Queries 5 ms apart; a batch of 2 takes 2 ms: waiting for the next one cannot pay.
    assert decide([item(0.0)], 0.0, gap_s=0.005) == BatchDecision(1, 0.0)


def test_a_full_batch_runs_at_once_and_takes_at_most_max_batch():
    q = [item(0.0, batch=3), item(0.0, batch=3), item(0.0, batch=3)]
    assert decide(q, 0.0) == BatchDecision(2, 0.0)  # 3 + 3; a third would make 9 > 8


def test_fast_arrivals_wait_at_most_max_batch_wait():
    clock = FakeClock(10.0)
    q = [item(clock())]
    d = decide(q, clock())
    assert d.take == 0 and math.isclose(d.wait_s, MAX_BATCH_WAIT_MS / 1e3)
    clock.advance(0.0015)
    q.append(item(clock()))
    d = decide(q, clock())
    assert d.take == 0 and math.isclose(d.wait_s, 0.0005)  # the oldest has waited 1.5 of its 2 ms
    clock.advance(0.0005)
    assert decide(q, clock()) == BatchDecision(2, 0.0)


def test_the_configured_wait_applies():
    d = decide([item(0.0)], 0.0, wait_ms=10.0)
    assert d.take == 0 and math.isclose(d.wait_s, 0.010)
    assert decide([item(0.0)], 0.0, wait_ms=0.0) == BatchDecision(1, 0.0)


def test_the_tightest_deadline_bounds_the_wait():
    clock = FakeClock(0.0)
    # Due in 3 ms; a batch of 2 is predicted at 2 ms: 1 ms of slack.
    q = [item(0.0), item(0.0, deadline_s=0.003)]
    d = decide(q, clock())
    # size 2: a batch of 3 is predicted at 2 ms (the batch-4 measurement): 1 ms slack.
    assert d.take == 0 and math.isclose(d.wait_s, 0.001)
    clock.advance(0.001)
    assert decide(q, clock()) == BatchDecision(2, 0.0)  # no slack left: run now


def test_a_batch_is_one_shape():
    q = [item(0.0, shape="a"), item(0.0, shape="a"), item(0.0, shape="b"), item(0.0, shape="a")]
    assert decide(q, 0.002) == BatchDecision(2, 0.0)  # waited its 2 ms: the head's shape, up to the first other


def test_a_head_larger_than_max_batch_still_runs_alone():
    assert decide([item(0.0, batch=9)], 0.0) == BatchDecision(1, 0.0)


def test_under_load_batches_form_while_the_last_one_runs():
    # A query every 0.1 ms; each wake-up closes what is queued once the oldest has waited 2 ms.
    clock = FakeClock(0.0)
    queue: list[QueueItem] = []
    batches = []
    while clock() < 0.0065:
        queue.append(item(clock()))
        d = decide(queue, clock(), gap_s=0.0001)
        if d.take:
            batches.append(sum(q.batch for q in queue[:d.take]))
            del queue[:d.take]
        clock.advance(0.0001)
    assert batches and all(b == 8 for b in batches)  # full batches long before the 2 ms wait runs out


# -- running inline ------------------------------------------------------------------------------------

def test_inline_for_a_fast_idle_variant_at_low_load():
    assert run_inline({1: 0.5, 2: 0.8}, batch=1, max_batch=8, arrival_gap_s=0.01, queued=0, busy=0, replicas=1)


def test_not_inline_when_anything_else_is_going_on():
    fast = {1: 0.5, 2: 0.8}
    assert not run_inline(fast, 1, 8, 0.01, queued=1, busy=0, replicas=1)
    assert not run_inline(fast, 1, 8, 0.01, queued=0, busy=1, replicas=1)
    assert not run_inline(fast, 1, 8, 0.01, queued=0, busy=0, replicas=2)
    assert not run_inline({}, 1, 8, 0.01, queued=0, busy=0, replicas=1)  # unprofiled
    assert not run_inline({1: 1.5}, 1, 8, 0.01, queued=0, busy=0, replicas=1)  # too slow for the loop thread
    assert not run_inline(fast, 1, 8, 0.0005, queued=0, busy=0, replicas=1)  # arrivals fast enough to batch
    assert run_inline(fast, 1, 1, 0.0005, queued=0, busy=0, replicas=1)  # ... unless it cannot batch at all
    assert run_inline({1: 1.5}, 1, 8, 0.01, 0, 0, 1, inline_max_ms=2.0)
