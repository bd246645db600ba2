"""Load traces, the open-loop replayer (fake clock and a real cluster) and the cost meter's integration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from infaas_cli.client import MasterUnreachableError, QueryFailed, QueryResult
from infaas_cli.errors import InfaasError
from infaas_cli.experiments.replay import (IN_FLIGHT_CAP, NOT_ANSWERED, CostMeter, held_resources, replay)
from infaas_cli.policy.selection import PriceTable
from infaas_cli.experiments.trace import (Arrival, QueryClass, TraceConfig, burst_windows, default_classes,
                                          generate_trace, offered_load_series, rate_at)
from support import FakeClock

pytestmark = pytest.mark.timeout(60)
#: A fixed mix for these tests (the bench's default mix may change without touching them).
CLASSES = [
    QueryClass("digits-balanced", "digit-classification", "digits", latency_ms=20.0, min_accuracy=0.97, weight=4.0),
    QueryClass("digits-fast", "digit-classification", "digits", latency_ms=5.0, min_accuracy=0.95, weight=2.0),
    QueryClass("digits-accurate", "digit-classification", "digits", latency_ms=50.0, min_accuracy=0.99, weight=1.0),
    QueryClass("cancer-fast", "tumor-classification", "breast-cancer", latency_ms=10.0, min_accuracy=0.95,
               weight=3.0),
]
SWELL = TraceConfig(duration_s=60.0, base_qps=20.0, peak_qps=100.0, seed=7)


# -- traces ------------------------------------------------------------------------------------------

def test_same_seed_same_trace_and_different_seeds_differ():
    cfg = dataclasses.replace(SWELL, burst_rate_per_min=6, burst_multiplier=3, burst_duration_s=2)
    a, b = generate_trace(cfg, CLASSES), generate_trace(cfg, CLASSES)
    assert a == b and len(a) > 100
    other = generate_trace(dataclasses.replace(cfg, seed=8), CLASSES)
    assert other != a
    assert burst_windows(cfg) == burst_windows(cfg)


def test_mean_rate_lies_between_base_and_peak_and_duration_is_respected():
    trace = generate_trace(SWELL, CLASSES)
    times = np.array([a.t_s for a in trace])
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < SWELL.duration_s
    mean_qps = len(trace) / SWELL.duration_s
    assert SWELL.base_qps < mean_qps < SWELL.peak_qps
    assert abs(mean_qps - (SWELL.base_qps + SWELL.peak_qps) / 2) < 5  # the swell's mean; Poisson noise ~1.2
    # The diurnal shape: quiet at the ends, busy mid-period.
    t, qps = offered_load_series(trace, bin_s=6.0, duration_s=SWELL.duration_s)
    assert len(t) == len(qps) == 10 and qps.sum() * 6.0 == len(trace)
    assert qps[4:6].mean() > 2 * qps[[0, -1]].mean()


def test_bursts_raise_the_local_rate():
    cfg = TraceConfig(duration_s=120.0, base_qps=50.0, peak_qps=50.0, burst_rate_per_min=4, burst_multiplier=4,
                      burst_duration_s=3.0, seed=3)
    bursts = burst_windows(cfg)
    assert bursts and all(0 <= s < e <= cfg.duration_s for s, e in bursts)
    start, end = bursts[0]
    assert rate_at(cfg, bursts, (start + end) / 2) == pytest.approx(200.0)
    trace = generate_trace(cfg, CLASSES)
    times = np.array([a.t_s for a in trace])
    in_burst = np.zeros(times.size, dtype=bool)
    for s, e in bursts:
        in_burst |= (times >= s) & (times < e)
    burst_time = sum(e - s for s, e in _merged(bursts))
    burst_qps = in_burst.sum() / burst_time
    calm_qps = (~in_burst).sum() / (cfg.duration_s - burst_time)
    assert burst_qps > 2.5 * calm_qps and 40 < calm_qps < 60


def _merged(windows):
    out = []
    for s, e in sorted(windows):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def test_class_mix_follows_weights():
    trace = generate_trace(SWELL, CLASSES)
    counts = np.bincount([a.class_index for a in trace], minlength=len(CLASSES))
    weights = np.array([c.weight for c in CLASSES])
    np.testing.assert_allclose(counts / counts.sum(), weights / weights.sum(), atol=0.05)
    # Re-weighting the classes keeps the arrival times (independent random streams).
    one = generate_trace(SWELL, [dataclasses.replace(c, weight=1.0) for c in CLASSES])
    assert [a.t_s for a in one] == [a.t_s for a in trace]


@pytest.mark.parametrize("kwargs", [{"duration_s": 0}, {"base_qps": 10, "peak_qps": 5}, {"burst_multiplier": 0.5},
                                    {"period_s": 0}])
def test_bad_trace_configs_are_refused(kwargs):
    with pytest.raises(InfaasError):
        TraceConfig(**{"duration_s": 10.0, "base_qps": 1.0, "peak_qps": 2.0, **kwargs})


# -- replay with a fake clock and a fake client ---------------------------------------------------------


class FakeClient:
    """Answers each query service_s(index) after it was sent (None: never), in whatever order that gives."""

    def __init__(self, clock: FakeClock, service_s) -> None:
        self.clock, self.service_s = clock, service_s
        self.sent: list[float] = []
        self.due: dict[str, tuple[float | None, int]] = {}

    def submit(self, inputs, **slo) -> str:
        assert set(slo) == {"task", "dataset", "latency_ms", "min_accuracy", "objective"}
        n = len(self.sent)
        self.sent.append(self.clock.now)
        s = self.service_s(n)
        self.due[str(n)] = (None if s is None else self.clock.now + s, n)
        return str(n)

    def gather(self, ids, timeout_s=None):
        (rid,) = ids
        ready_at, n = self.due[rid]
        if ready_at is None or ready_at > self.clock.now + timeout_s:
            self.clock.now += timeout_s
            raise MasterUnreachableError("timed out")
        self.clock.now = max(self.clock.now, ready_at)
        del self.due[rid]
        if n % 10 == 9:
            return {rid: QueryFailed("no_variant", "nothing fits")}
        return {rid: QueryResult([], f"v{n % 2}", "w", 1.0, {}, latency_ms=self.service_s(n) * 1e3)}


def fake_replay(service_s, trace, **kwargs):
    clock = FakeClock(100.0)
    client = FakeClient(clock, service_s)
    result = replay(client, trace, CLASSES, lambda c, i: {"x": np.zeros(1)}, time_fn=clock, sleep_fn=clock.sleep,
                    **kwargs)
    return result, client, clock


def test_replay_is_open_loop_even_when_replies_are_slow():
    trace = [Arrival(0.01 * i, i % 2) for i in range(100)]  # 100 qps; each reply takes 0.5 s
    result, client, _ = fake_replay(lambda n: 0.5, trace, duration_s=1.0)
    start = client.sent[0]
    assert [t - start for t in client.sent] == pytest.approx([a.t_s for a in trace], abs=1e-5)
    s = result.summary()
    assert s["sent"] == s["arrivals"] == 100 and s["completed"] == 90 and s["failed"] == 10
    assert abs(s["send_lag_ms"]["max"]) < 1e-2
    assert s["errors"] == {"no_variant": 10}
    # 500 ms is over class 0's 20 ms and class 1's 5 ms: every query violates its SLO.
    assert s["slo_violation_rate"] == 1.0 and s["goodput_qps"] == 0.0
    assert s["p50_ms"] == pytest.approx(500.0)


def test_replay_counts_unanswered_and_capped_queries_as_failed():
    trace = [Arrival(0.1 * i, 2) for i in range(10)]
    # Query 3 never comes back; 4.. complete out of order behind it, and must still be collected.
    result, _, clock = fake_replay(lambda n: None if n == 3 else 0.01, trace, drain_timeout_s=2.0)
    by_code = result.summary()["errors"]
    assert by_code == {NOT_ANSWERED: 1, "no_variant": 1}
    assert result.records[3].error_code == NOT_ANSWERED and all(r.ok for r in result.records[4:9])
    assert result.drain_s == pytest.approx(2.0)
    capped, _, _ = fake_replay(lambda n: 10.0, trace, max_in_flight=4, drain_timeout_s=20)
    s = capped.summary()
    assert s["arrivals"] == 10 and s["sent"] == 4 and s["errors"][IN_FLIGHT_CAP] == 6
    assert s["completed"] + s["failed"] == s["arrivals"]


def test_summary_per_class_and_timeline():
    trace = [Arrival(0.05 * i, i % 2) for i in range(40)]  # 2 s at 20 qps
    # Class 0 (20 ms SLO) meets it at 10 ms; class 1 (5 ms SLO) misses it.
    result, _, _ = fake_replay(lambda n: 0.01, trace, duration_s=2.0)
    s = result.summary()
    balanced, fast = s["per_class"]["digits-balanced"], s["per_class"]["digits-fast"]
    assert balanced["slo_violation_rate"] == 0.0 and balanced["completed"] == 20
    assert fast["slo_violation_rate"] == 1.0 and fast["failed"] == 4  # queries 9, 19, 29, 39: no_variant
    assert s["slo_violation_rate"] == pytest.approx(0.5) and s["goodput_qps"] == pytest.approx(20 / 2.0)
    tl = result.timeline(0.5)
    assert tl["t_s"] == [0.0, 0.5, 1.0, 1.5] and tl["offered_qps"] == [20.0] * 4
    assert sum(tl["completed"]) == s["completed"] and sum(tl["violations"]) == s["violations"]
    assert set(tl["variants"]) == {"v0", "v1"} and sum(map(sum, tl["variants"].values())) == s["completed"]


# -- cost meter ----------------------------------------------------------------------------------------

PRICES = PriceTable(cpu_usd_per_core_second=0.001, gpu_usd_per_device_second=0.01,
                    inferentia_usd_per_device_second=0.005)


def _status(*workers):
    return {"workers": [{"worker_id": wid, "alive": alive, "variants": variants} for wid, alive, variants in workers]}


def _v(threads, state="loaded"):
    return {"threads": threads, "state": state, "queue": 0}


def test_cost_meter_integrates_held_threads_of_alive_workers():
    snapshots = iter([
        # t=0: w0 holds a 2-thread variant; w1 is dead, so its 4 threads are not ours to pay.
        _status(("w0", True, {"m/ort-cpu-fp32-t2-b8": _v(2), "m/ort-cpu-int8-t1-b8": _v(1, "loading")}),
                ("w1", False, {"m/ort-cpu-fp32-t4-b8": _v(4)})),
        # t=10: the int8 variant has loaded (3 threads in all).
        _status(("w0", True, {"m/ort-cpu-fp32-t2-b8": _v(2), "m/ort-cpu-int8-t1-b8": _v(1)}),
                ("w1", False, {"m/ort-cpu-fp32-t4-b8": _v(4)})),
        # t=15: fp32 unloaded, and a GPU variant (billed per device) on w1, alive again.
        _status(("w0", True, {"m/ort-cpu-int8-t1-b8": _v(1)}),
                ("w1", True, {"m/ort-cuda-fp16-t1-b8": _v(1), "m/ort-cpu-fp32-t4-b8": _v(4, "inactive")})),
        _status(),
    ])
    meter = CostMeter(lambda: next(snapshots), PRICES)
    assert meter.sample(0.0) == 0.0  # the first sample only starts the clock
    meter.sample(10.0)
    assert meter.core_seconds == pytest.approx(2 * 10)
    meter.sample(15.0)
    assert meter.core_seconds == pytest.approx(20 + 3 * 5)
    meter.sample(25.0)
    assert meter.core_seconds == pytest.approx(35 + 1 * 10)
    assert meter.cost_usd == pytest.approx(0.001 * 45 + 0.01 * 10)
    assert [s[0] for s in meter.samples] == [0.0, 10.0, 15.0, 25.0]


def test_cost_meter_keeps_the_holdings_when_a_snapshot_fails():
    calls = iter([_status(("w0", True, {"m/ort-cpu-fp32-t2-b8": _v(2)})), None])

    def status():
        snap = next(calls)
        if snap is None:
            raise MasterUnreachableError("no answer")
        return snap

    meter = CostMeter(status, PRICES)
    meter.sample(0.0)
    meter.sample(4.0)
    assert meter.failed_samples == 1 and meter.core_seconds == pytest.approx(8.0)


def test_held_resources_reads_hardware_from_the_entry_or_the_backend():
    snap = _status(("w0", True, {"m/trt-fp16-t1-b8": _v(1), "m/x": {**_v(3), "hardware": "inferentia"},
                                 "m/ort-cpu-fp32-t2-b8": _v(2, "dispatched")}))
    assert held_resources(snap, PRICES) == (pytest.approx(0.01 + 0.005), 0.0)




def test_replay_times_queries_as_the_client_saw_them():
    trace = [Arrival(0.0, 0), Arrival(0.01, 0)]

    class Client:
        def __init__(self):
            self.n = 0

        def submit(self, inputs, **slo):
            self.n += 1
            return str(self.n)

        def gather(self, ids, timeout_s=None):
            (rid,) = ids
            seen = 7.5 if rid == "1" else None  # an older client library has no client_latency_ms
            return {rid: QueryResult([], "m/v-t2-b1", "w", 1.0, {}, latency_ms=3.0, client_latency_ms=seen)}

    clock = FakeClock(0.0)
    result = replay(Client(), trace, CLASSES, lambda c, i: {}, time_fn=clock, sleep_fn=clock.sleep)
    assert [r.latency_ms for r in result.records] == [7.5, 3.0]


def test_failures_keep_an_example_reason_per_code():
    trace = [Arrival(0.05 * i, 0) for i in range(20)]
    result, _, _ = fake_replay(lambda n: 0.001, trace)
    assert result.summary()["error_examples"] == {"no_variant": "nothing fits"}


# -- the bill of worker hosts, the testbed, the comparison and the capacity search ---------------------------

def _host(wid, launched, stopped=None, cores=4):
    return {"worker_id": wid, "launched_at": launched, "stopped_at": stopped, "cores": cores}


def test_bill_charges_instance_seconds_inside_the_window():
    from infaas_cli.cluster.hosts import bill

    ledger = [_host("h0", 90.0),  # before the window and still running: billed 100 → 160
              _host("h1", 110.0, 120.0),  # launched and stopped inside
              _host("h2", 150.0, 170.0, cores=2),  # stopped after the window's end
              _host("h3", 10.0, 50.0)]  # gone before the window: not billed
    b = bill(ledger, 100.0, 160.0, usd_per_core_second=0.5, bin_s=20.0)
    assert b["instance_seconds"] == pytest.approx(60 + 10 + 10)
    assert b["core_seconds"] == pytest.approx(4 * 60 + 4 * 10 + 2 * 10)
    assert b["cost_usd"] == pytest.approx(0.5 * b["core_seconds"])
    assert b["hosts_launched"] == 3 and b["peak_hosts"] == 2
    assert b["hosts_held"] == pytest.approx([1.5, 1.0, 1.5])  # mean hosts alive in each 20 s bin
    with pytest.raises(InfaasError):
        bill(ledger, 10.0, 5.0, 1.0)


def test_host_plan_thresholds_are_fractions_of_the_real_cpu():
    from infaas_cli.experiments.testbed import HostPlan, ScalingPlan, settings_overrides
    from infaas_cli.settings import Settings, override

    plan = HostPlan(cores=4, cpu_quota=0.5, min_hosts=1, max_hosts=3)
    assert plan.utilisation(0.8) == pytest.approx(0.1)  # 80 % of half a core, over 4 advertised cores
    assert HostPlan(cores=1, cpu_quota=1.0).utilisation(0.8) == pytest.approx(0.8)
    with pytest.raises(InfaasError):
        HostPlan(min_hosts=3, max_hosts=2)
    from pathlib import Path

    keys = settings_overrides("fixed-autoscale", Path("/tmp/h"), plan, ScalingPlan())
    settings = override(Settings(), keys)  # every key is a real config key with a valid value
    assert settings.master.policy == "fixed-autoscale" and settings.cluster.max_workers == 3
    assert settings.cluster.scale_out_utilisation == pytest.approx(0.1)
    start = settings.cluster.scale_out_command.split()
    assert start[-6:] == ["host", "start", "--cores", "4", "--cpu-quota", "0.5"]
    assert "stop" in settings.cluster.scale_in_command


def test_policy_names_and_their_former_aliases():
    from infaas_cli import settings as settings_module
    from infaas_cli.experiments.testbed import check_policies
    from infaas_cli.policy import baselines
    from infaas_cli.settings import Settings, override

    assert settings_module.POLICIES == baselines.POLICIES == ("infaas", "fixed-peak", "fixed-autoscale")
    assert check_policies(["static", "replicate", "infaas"]) == ["fixed-peak", "fixed-autoscale", "infaas"]
    assert override(Settings(), {"master.policy": "static"}).master.policy == "static"  # accepted as written
    with pytest.raises(InfaasError, match="fixed-peak"):
        check_policies(["clipper"])


def test_comparison_against_the_targets():
    from infaas_cli.experiments.bench_slo import compare

    rows = {"infaas": {"slo_violation_rate": 0.01, "cost_usd": 1.0},
            "fixed-peak": {"slo_violation_rate": 0.02, "cost_usd": 3.0},
            "fixed-autoscale": {"slo_violation_rate": 0.05, "cost_usd": 1.4}}
    c = compare(rows)
    assert c["violations_fixed_autoscale_over_infaas"] == pytest.approx(5.0) and c["violations_target_met"]
    assert c["violations_infaas_at_most_fixed_peak"] and c["cost_vs_fixed_peak_target_met"]
    assert c["cost_infaas_over_fixed_autoscale"] == pytest.approx(1 / 1.4)
    assert not c["cost_vs_fixed_autoscale_target_met"]
    assert compare({"infaas": rows["infaas"]}) == {}
    # infaas violated nothing: no ratio (JSON has no infinity), the target is met when the baseline did violate.
    perfect = compare({**rows, "infaas": {"slo_violation_rate": 0.0, "cost_usd": 1.0}})
    assert perfect["violations_fixed_autoscale_over_infaas"] is None and perfect["violations_target_met"]


def test_results_never_overwrite_existing_files_silently(tmp_path):
    from infaas_cli.experiments.bench_slo import check_output

    json_path, png_path = check_output(tmp_path, "bench_slo", overwrite=False)
    json_path.write_text("{}")
    with pytest.raises(InfaasError, match="--overwrite"):
        check_output(tmp_path, "bench_slo", overwrite=False)
    assert check_output(tmp_path, "bench_slo", overwrite=True) == (json_path, png_path)


def test_capacity_search_grows_then_bisects():
    from infaas_cli.experiments.capacity import CapacityConfig, next_rate

    cfg = CapacityConfig(start_qps=100.0, growth=2.0, precision=0.1, max_qps=1000.0)
    true_capacity = 300.0
    passed, failed, probed = [], [], []
    rate = next_rate(passed, failed, cfg)
    while rate is not None:
        probed.append(rate)
        (passed if rate <= true_capacity else failed).append(rate)
        rate = next_rate(passed, failed, cfg)
    assert probed[:3] == [100.0, 200.0, 400.0]
    assert max(passed) <= true_capacity < min(f for f in failed) <= max(passed) * 1.1
    # The first rate fails: the search goes down, and gives up far below the start.
    passed, failed = [], [100.0]
    assert next_rate(passed, failed, cfg) == 50.0
    assert next_rate([], [100.0, 50.0, 25.0, 12.5, 6.25], cfg) is None
    # Every rate passes up to the ceiling: the search stops there.
    assert next_rate([800.0], [], cfg) is None


def test_the_default_mix_differs_in_tasks_accuracy_and_latency():
    mix = default_classes()
    assert len(mix) >= 4 and len({c.task for c in mix}) >= 2
    assert len({c.latency_ms for c in mix}) >= 3 and len({c.min_accuracy for c in mix}) >= 3
    assert len({c.name for c in mix}) == len(mix)

