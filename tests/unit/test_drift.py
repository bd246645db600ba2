"""Pure tests of the drift policy: observed latencies against profiles, with a fake clock and plain numbers."""

from __future__ import annotations

import pytest

from infaas_cli.catalog.records import ProfileRecord
from infaas_cli.policy.drift import (DriftConfig, DriftConfigError, LatencyObserver, batch_bucket, can_reprofile,
                                     detect_drift, latency_factor, profiled_p50_ms, refine_profile)
from support import FakeClock

CONFIG = DriftConfig(threshold=1.5, window_s=10.0, min_samples=5, max_samples=20, max_keys=100,
                     reprofile_cooldown_s=60.0)
PROFILED = {"m/v": {1: 2.0, 4: 5.0, 8: 9.0}}


def feed(obs: LatencyObserver, clock: FakeClock, ms: float, n: int = 10, *, variant: str = "m/v",
         where: str = "w1", batch: int = 1, step_s: float = 0.1) -> None:
    for _ in range(n):
        obs.observe(variant, where, batch, ms, clock())
        clock.advance(step_s)


def test_buckets_are_powers_of_two():
    assert [batch_bucket(b) for b in (0, 1, 2, 3, 4, 5, 8, 9, 32, 33)] == [1, 1, 2, 4, 4, 8, 8, 16, 32, 64]
    assert batch_bucket(10**9) == 65536


def test_observed_needs_min_samples_and_is_robust():
    clock, obs = FakeClock(100.0), LatencyObserver(CONFIG)
    feed(obs, clock, 2.0, n=4)
    assert obs.observed_ms("m/v", "w1", 1, clock()) is None  # 4 < min_samples
    feed(obs, clock, 2.0, n=4)
    obs.observe("m/v", "w1", 1, 500.0, clock())  # one outlier does not move the median
    assert obs.observed_ms("m/v", "w1", 1, clock()) == pytest.approx(2.0)
    # Batches 3 and 4 share a bucket; another worker has its own window.
    assert obs.observed_ms("m/v", "w2", 1, clock()) is None
    feed(obs, clock, 6.0, n=5, batch=3)
    assert obs.observed_ms("m/v", "w1", 4, clock()) == pytest.approx(6.0)


def test_window_forgets_old_observations():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    feed(obs, clock, 2.0, n=10)
    clock.advance(CONFIG.window_s + 1)
    assert obs.samples("m/v", "w1", 1, clock()) == []
    assert obs.observed_ms("m/v", "w1", 1, clock()) is None


def test_memory_is_bounded():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    feed(obs, clock, 1.0, n=1000, step_s=0.0)
    assert len(obs.samples("m/v", "w1", 1, clock())) == CONFIG.max_samples
    for i in range(3 * CONFIG.max_keys):
        obs.observe(f"m/v{i}", "w1", 1, 1.0, clock())
    assert len(obs) == CONFIG.max_keys
    assert ("m/v", "w1", 1) not in obs.keys()  # least recently observed went first
    obs.observe("m/v0-new", "w1", 1, 1.0, clock())
    assert ("m/v0-new", "w1", 1) in obs.keys() and len(obs) == CONFIG.max_keys


def test_bad_values_are_ignored():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    for bad in (float("nan"), float("inf"), -1.0, True, "3"):
        obs.observe("m/v", "w1", 1, bad, clock())  # type: ignore[arg-type]
    assert len(obs) == 0


def test_no_drift_within_threshold():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    feed(obs, clock, 2.9)  # 1.45x: within 1.5
    feed(obs, clock, 4.0, batch=4)
    assert detect_drift(obs, PROFILED, clock()) == []


def test_slower_drift_is_found_with_the_worst_bucket():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    feed(obs, clock, 4.0)  # 2x at batch 1
    feed(obs, clock, 15.0, batch=4)  # 3x at batch 4
    feed(obs, clock, 2.0, where="w2")  # the other worker is fine
    [finding] = detect_drift(obs, PROFILED, clock())
    assert (finding.variant, finding.where, finding.batch_size) == ("m/v", "w1", 4)
    assert finding.ratio == pytest.approx(3.0) and finding.direction == "slower"
    assert finding.profiled_ms == 5.0 and finding.samples == 10
    assert "3.00x its profiled 5.00 ms" in finding.describe()
    assert finding.to_dict()["direction"] == "slower"


def test_faster_drift_is_found_too():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    feed(obs, clock, 1.0)  # 0.5x < 1/1.5
    [finding] = detect_drift(obs, PROFILED, clock())
    assert finding.direction == "faster" and finding.ratio == pytest.approx(0.5)


def test_cooldown_and_unprofiled_variants():
    clock, obs = FakeClock(1000.0), LatencyObserver(CONFIG)
    feed(obs, clock, 4.0)
    feed(obs, clock, 40.0, variant="m/unprofiled")
    assert [f.variant for f in detect_drift(obs, PROFILED, clock())] == ["m/v"]
    last = {("m/v", "w1"): clock()}
    assert detect_drift(obs, PROFILED, clock() + 1, last) == []
    clock.advance(CONFIG.reprofile_cooldown_s)
    feed(obs, clock, 4.0)  # still slow after the cooldown: found again
    assert [f.variant for f in detect_drift(obs, PROFILED, clock(), last)] == ["m/v"]


def test_cooldown_by_hardware_kind():
    clock, obs = FakeClock(1000.0), LatencyObserver(CONFIG)
    feed(obs, clock, 4.0, where="w1")
    feed(obs, clock, 1.0, where="w2")
    hardware = {"w1": "cpu-a", "w2": "cpu-a"}
    last = {("m/v", "cpu-a"): clock()}  # w1 was just re-profiled on cpu-a: w2 waits too
    assert detect_drift(obs, PROFILED, clock(), last, lambda v, w: (v, hardware[w])) == []
    assert {f.where for f in detect_drift(obs, PROFILED, clock(), last)} == {"w1", "w2"}


def test_findings_are_ordered_furthest_first():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    feed(obs, clock, 4.0, where="w1")  # 2x
    feed(obs, clock, 0.5, where="w2")  # 0.25x: further
    assert [f.where for f in detect_drift(obs, PROFILED, clock())] == ["w2", "w1"]


def test_latency_factor_and_refined_profile():
    clock, obs = FakeClock(), LatencyObserver(CONFIG)
    assert latency_factor(obs, "m/v", "w1", PROFILED["m/v"], clock()) is None
    feed(obs, clock, 4.0)  # 2x
    feed(obs, clock, 15.0, batch=4)  # 3x
    feed(obs, clock, 18.0, batch=8)  # 2x
    factor = latency_factor(obs, "m/v", "w1", PROFILED["m/v"], clock())
    assert factor == pytest.approx(2.0)
    p = ProfileRecord(variant="m/v", model="m", hardware_id="cpu-x", hardware={}, load_time_ms=1.0,
                      peak_memory_bytes=1, batches={"1": {"p50_ms": 2.0, "p95_ms": 3.0, "p99_ms": 4.0,
                                                          "mean_ms": 2.5, "throughput_qps": 400.0, "runs": 9}})
    assert profiled_p50_ms(p.batches) == {1: 2.0}
    refined = refine_profile(p, factor)
    assert refined.batches["1"]["p95_ms"] == pytest.approx(6.0) and refined.batches["1"]["runs"] == 9
    assert refined.batches["1"]["throughput_qps"] == pytest.approx(200.0)
    assert p.batches["1"]["p95_ms"] == 3.0  # the original is untouched
    assert refine_profile(p, None) is p


def test_can_reprofile():
    assert can_reprofile([0, 0], 20.0, 2, CONFIG) == (True, "")
    ok, why = can_reprofile([0, 3], 20.0, 2, CONFIG)
    assert not ok and "3 queued" in why
    ok, why = can_reprofile([], 180.0, 2, CONFIG)  # 90% of 2 cores
    assert not ok and "90%" in why


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 1.0}, "threshold must be > 1"),
    ({"window_s": 0}, "window_s must be > 0"),
    ({"min_samples": 50, "max_samples": 10}, "must not exceed"),
    ({"max_keys": 0}, "max_keys must be a whole number"),
    ({"quantile": 1.0}, "quantile must be in"),
    ({"threshold": float("nan")}, "finite"),
    ({"max_busy_fraction": 0}, "max_busy_fraction"),
])
def test_config_is_checked(kwargs, match):
    with pytest.raises(DriftConfigError, match=match):
        DriftConfig(**kwargs)


def test_a_batch_between_profiled_sizes_is_judged_against_the_interpolated_profile():
    from infaas_cli.policy.drift import profiled_at

    profiled = {1: 1.0, 8: 8.0, 32: 20.0}
    assert profiled_at(profiled, 8) == 8.0
    assert profiled_at(profiled, 16) == 8.0 + 12.0 * 8 / 24  # between 8 and 32
    assert profiled_at(profiled, 64) == 40.0  # beyond the largest: linear from it
    assert profiled_at({4: 2.0}, 1) == 2.0 and profiled_at({}, 4) is None
