"""Pure tests of the learned serving overhead: plain numbers, no clock."""

from __future__ import annotations

import math

import pytest

from infaas_cli.errors import InfaasError
from infaas_cli.policy.latency import (DEFAULT_QUANTILE, PRIOR_OVERHEAD_MS, OverheadEstimator, WorkerOverheads,
                                       overhead_for, quantile_nearest_rank, serving_overhead_ms)


def test_prior_before_any_sample():
    est = OverheadEstimator()
    assert est.value_ms() == PRIOR_OVERHEAD_MS == 1.0
    assert est.samples == 0 and DEFAULT_QUANTILE == 0.9
    assert OverheadEstimator(prior_ms=2.5).value_ms() == 2.5


def test_p90_of_the_samples_by_nearest_rank():
    est = OverheadEstimator()
    est.extend(float(ms) for ms in range(1, 11))  # 1..10 ms
    assert est.value_ms() == 9.0  # ceil(0.9 × 10) = 9th smallest
    est.add(100.0)  # one outlier among 11: rank ceil(9.9) = 10th
    assert est.value_ms() == 10.0
    assert OverheadEstimator(quantile=0.5).value_ms() == PRIOR_OVERHEAD_MS


def test_one_sample_is_the_estimate():
    est = OverheadEstimator()
    est.add(7.2)
    assert est.value_ms() == 7.2


def test_the_ring_forgets_old_samples():
    est = OverheadEstimator(window=4)
    est.extend([50.0, 50.0, 50.0, 50.0])
    assert est.value_ms() == 50.0
    est.extend([2.0, 2.0, 2.0, 3.0])  # the path got faster: the old samples are gone
    assert est.samples == 4 and est.total_samples == 8
    assert est.value_ms() == 3.0


def test_memory_stays_bounded():
    est = OverheadEstimator(window=16)
    est.extend(float(i % 7) for i in range(10_000))
    assert est.samples == 16 and len(est._ring) == 16


def test_value_is_cached_until_the_next_sample():
    est = OverheadEstimator()
    est.extend([1.0, 2.0, 3.0])
    first = est.value_ms()
    assert est._cached == first
    est.add(10.0)
    assert est._cached is None and est.value_ms() == 10.0


def test_bad_samples_cannot_poison_it():
    est = OverheadEstimator()
    est.extend([math.nan, math.inf, -math.inf])
    assert est.samples == 0 and est.value_ms() == PRIOR_OVERHEAD_MS
    est.add(-0.3)  # clock jitter: the worker's time read a hair above the end-to-end time
    assert est.value_ms() == 0.0


def test_deterministic():
    samples = [((i * 37) % 101) / 10 for i in range(500)]
    a, b = OverheadEstimator(), OverheadEstimator()
    a.extend(samples)
    b.extend(samples)
    assert a.value_ms() == b.value_ms() == quantile_nearest_rank(sorted(samples[-256:]), 0.9)


@pytest.mark.parametrize("kwargs", [{"quantile": 0.0}, {"quantile": 1.5}, {"window": 0}, {"window": 2.0},
                                    {"prior_ms": -1.0}, {"prior_ms": math.nan}, {"quantile": True}])
def test_rejects_nonsense_settings(kwargs):
    with pytest.raises(InfaasError) as info:
        OverheadEstimator(**kwargs)
    assert info.value.code == "bad_config"


def test_quantile_helpers():
    assert serving_overhead_ms(7.2, 0.006) == pytest.approx(7.194)
    assert serving_overhead_ms(1.0, 1.5) == 0.0
    assert quantile_nearest_rank([1.0], 0.9) == 1.0
    assert quantile_nearest_rank([1.0, 2.0], 1.0) == 2.0
    with pytest.raises(ValueError):
        quantile_nearest_rank([], 0.9)


def test_worker_overheads_feed_a_snapshot():
    table = WorkerOverheads()
    assert table.snapshot() == {} and table.value_ms("w1") == PRIOR_OVERHEAD_MS
    for _ in range(10):
        table.add("w1", end_to_end_ms=7.2, worker_ms=0.2)
    table.add("w2", end_to_end_ms=3.0, worker_ms=2.5)
    assert table.snapshot() == {"w1": pytest.approx(7.0), "w2": 0.5}
    assert "w1" in table and "w3" not in table
    table.forget("w1")
    assert table.snapshot() == {"w2": 0.5}
    assert overhead_for(table.snapshot(), "w2", 1.0) == 0.5
    assert overhead_for(table.snapshot(), "w9", 1.0) == 1.0
    assert overhead_for(None, "w2", 1.0) == 1.0
    with pytest.raises(InfaasError):
        WorkerOverheads(window=0)


def test_the_floor_is_the_least_recent_overhead_or_the_prior():
    from infaas_cli.policy.latency import PRIOR_OVERHEAD_MS, WorkerOverheads

    o = WorkerOverheads(window=4)
    assert o.floor_ms() == PRIOR_OVERHEAD_MS
    for e2e in (5.0, 1.3, 9.0):
        o.add("w1", e2e, 1.0)
    o.add("w2", 3.0, 1.0)
    assert o.floor_ms() == pytest.approx(0.3)


def test_slo_ledger_counts_leave_the_window_with_their_queries():
    from infaas_daemons.master.state import SloLedger

    ledger = SloLedger(window_s=10.0, max_entries=3)
    ledger.record(0.0, "m", "a", True)
    ledger.record(1.0, "m", "b", False)
    ledger.record(5.0, "n", "a", True)
    s = ledger.summary(5.0)
    assert (s["queries"], s["attainment"]) == (3, 2 / 3)
    assert s["by_model"]["m"] == {"met": 1, "missed": 1, "attainment": 0.5}
    ledger.record(6.0, "n", "a", False)  # past max_entries: the oldest leaves, with its counts
    s = ledger.summary(6.0)
    assert s["queries"] == 3 and s["by_class"]["a"] == {"met": 1, "missed": 1, "attainment": 0.5}
    s = ledger.summary(12.0)  # t=1 has left the 10 s window
    assert s["queries"] == 2 and "m" not in s["by_model"] and s["by_class"]["a"]["missed"] == 1
    assert (s["met_total"], s["missed_total"]) == (2, 2)
    assert ledger.summary(100.0)["attainment"] is None
