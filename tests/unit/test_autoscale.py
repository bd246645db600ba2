"""Pure tests of the model-level autoscaling policy: a fake clock and plain numbers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infaas_cli.policy.autoscale import (Action, AutoscaleConfig, VariantLoad, VariantOption, VariantState, WorkerView,
                                  autoscale_worker, options_from_index)
from infaas_cli.errors import InfaasError
from infaas_cli.policy.selection import CatalogIndex, PriceTable, VariantInfo
from support import FakeClock

CONFIG = AutoscaleConfig()  # window 5 s, hold 15 s, cooldown 3 s, idle unload 30 s


def opt(name: str, accuracy: float | None, threads: int, latency_ms_b1: float, capacity_qps: float) -> VariantOption:
    return VariantOption(name=name, model=name.split("/", 1)[0], accuracy=accuracy, threads=threads, max_batch=8,
                         latency_ms_b1=latency_ms_b1, capacity_qps=capacity_qps, cost_usd_per_s=1e-3 * threads)


FP32_T1 = opt("m/fp32-t1", 0.95, 1, 10.0, 100.0)
INT8_T1 = opt("m/int8-t1", 0.947, 1, 5.0, 250.0)  # within the 0.005 accuracy tolerance of fp32
FP32_T2 = opt("m/fp32-t2", 0.95, 2, 6.0, 180.0)
INT8_T2 = opt("m/int8-t2", 0.947, 2, 3.0, 400.0)
TINY_T1 = opt("m/tiny-t1", 0.80, 1, 1.0, 1000.0)  # fast but much less accurate
OTHER = opt("other/fp32-t1", 0.99, 1, 1.0, 5000.0)  # another model: never a switch target for m
ALL = {o.name: o for o in (FP32_T1, INT8_T1, FP32_T2, INT8_T2, TINY_T1, OTHER)}

# With a 50 ms SLO and 10 ms per sample, the slack is 40 ms: more than 2 queued samples threaten it.
OVERLOAD = dict(qps=95.0, queue_samples=3)
NORMAL = dict(qps=50.0, queue_samples=0)
LOW = dict(qps=5.0, queue_samples=0)



def load(variant: str = "m/fp32-t1", *, replicas: int = 1, queue_samples: int = 0, qps: float = 50.0,
         latency_ms: float | None = None, slo_ms: float | None = 50.0, idle_s: float = 0.0) -> VariantLoad:
    if latency_ms is None:  # served as fast as profiled
        latency_ms = ALL[variant].latency_ms_b1 if variant in ALL else 10.0
    return VariantLoad(variant=variant, replicas=replicas, queue_samples=queue_samples, qps=qps,
                       latency_ms=latency_ms, slo_ms=slo_ms, idle_s=idle_s)


def view(*loads: VariantLoad, free_cores: float = 4) -> WorkerView:
    return WorkerView(cores=8, free_cores=free_cores, free_memory_bytes=1 << 30, variants=tuple(loads))


class Harness:
    """Ticks the policy on a fake clock, keeping its state between calls like the worker loop does."""

    def __init__(self, options=ALL, config: AutoscaleConfig = CONFIG) -> None:
        self.clock = FakeClock()
        self.options = options
        self.config = config
        self.states: dict[str, VariantState] = {}
        self.log: list[tuple[float, Action]] = []

    def tick(self, *loads: VariantLoad, free_cores: float = 4) -> list[Action]:
        actions, self.states = autoscale_worker(self.states, view(*loads, free_cores=free_cores), self.options,
                                                self.clock.now_s, self.config)
        self.log.extend((self.clock.now_s, a) for a in actions)
        return actions

    def run(self, seconds: float, make_load, step_s: float = 1.0, free_cores: float = 4) -> None:
        """Tick every step_s for `seconds`, asking make_load(now_s) for the variant's load each time."""
        end = self.clock.now_s + seconds
        while self.clock.now_s < end - 1e-9:
            self.tick(make_load(self.clock.now_s), free_cores=free_cores)
            self.clock.advance(step_s)

    def kinds(self) -> list[str]:
        return [a.kind for _, a in self.log]


# -- config --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hold_s", [5.0, 4.0, 0.0])
def test_config_rejects_hold_not_longer_than_window(hold_s):
    with pytest.raises(InfaasError, match=r"hold_s .* must be longer than autoscale.window_s"):
        AutoscaleConfig(window_s=5.0, hold_s=hold_s)


@pytest.mark.parametrize("field, value", [("window_s", 0.0), ("cooldown_s", -1.0), ("interference_factor", 1.0),
                                          ("low_utilisation", 1.5), ("overload_slack_fraction", 0.0),
                                          ("idle_unload_s", float("nan")), ("min_window_queries", 0),
                                          ("min_window_queries", 2.5), ("min_window_queries", True)])
def test_config_rejects_nonsense(field, value):
    with pytest.raises(InfaasError, match=f"autoscale.{field}"):
        AutoscaleConfig(**{field: value})


def test_variant_load_needs_a_replica():
    with pytest.raises(InfaasError, match="replicas"):
        load(replicas=0)


# -- scale up --------------------------------------------------------------------------------------------

def test_replicate_on_sustained_overload():
    h = Harness()
    for t in range(5):  # pressure for 0..4 s: not yet a full window
        assert h.tick(load(**OVERLOAD)) == []
        assert h.states["m/fp32-t1"].state == "active"
        assert h.states["m/fp32-t1"].overloaded_since_s == 0.0
        h.clock.advance(1)
    [action] = h.tick(load(**OVERLOAD))
    assert (h.clock.now_s, action.kind, action.variant, action.target) == (5.0, "replicate", "m/fp32-t1", None)
    assert "queueing delay 30.0 ms" in action.reason
    state = h.states["m/fp32-t1"]
    assert (state.state, state.since_s, state.last_action_s) == ("overloaded", 5.0, 5.0)


def test_spike_shorter_than_window_does_not_replicate():
    h = Harness()
    h.run(4.5, lambda t: load(**OVERLOAD), step_s=0.5)  # 0..4 s under pressure
    h.run(20, lambda t: load(**NORMAL), step_s=0.5)
    assert h.log == []
    assert h.states["m/fp32-t1"].overloaded_since_s is None
    assert h.states["m/fp32-t1"].state == "active"


def test_overload_without_slo_uses_utilisation():
    h = Harness()
    h.run(6, lambda t: load(qps=95.0, queue_samples=0, slo_ms=None))  # 95% of 100 qps
    assert h.kinds() == ["replicate"]
    assert "no latency SLO" in h.log[0][1].reason


def test_upgrade_when_no_free_cores():
    h = Harness()
    h.run(6, lambda t: load(**OVERLOAD), free_cores=0)
    [(at, action)] = h.log
    # fp32-t2 needs a core more than is free and tiny is less accurate: the int8 build of the same threads wins.
    assert (at, action.kind, action.target) == (5.0, "upgrade", "m/int8-t1")
    # The variant switched to starts its own back-off, so it is not switched again as soon as it is loaded.
    assert h.states["m/int8-t1"].last_action_s == 5.0


def test_upgrade_prefers_the_cheapest_that_fits():
    h = Harness()
    # fp32-t2 (2 threads) cannot replicate on 1 free core; int8-t2 and int8-t1 fit (0 extra threads, or fewer):
    # int8-t1 is cheaper.
    h.run(6, lambda t: load("m/fp32-t2", qps=170.0, queue_samples=5), free_cores=1)
    assert [(a.kind, a.target) for _, a in h.log] == [("upgrade", "m/int8-t1")]


def test_no_upgrade_to_a_less_accurate_variant():
    h = Harness(options={o.name: o for o in (FP32_T1, TINY_T1, OTHER)})
    h.run(30, lambda t: load(**OVERLOAD), free_cores=0)
    assert h.log == []  # no oversubscription, no accuracy loss: it stays overloaded
    assert h.states["m/fp32-t1"].state == "overloaded"


def test_no_upgrade_to_a_variant_slower_than_the_slo():
    slow_but_wide = replace(INT8_T1, name="m/int8-b64-t1", latency_ms_b1=60.0, capacity_qps=900.0)
    h = Harness(options={o.name: o for o in (FP32_T1, slow_but_wide)})
    h.run(10, lambda t: load(**OVERLOAD), free_cores=0)
    assert h.log == []


def test_replicate_needs_free_memory():
    big = {o.name: replace(o, peak_memory_bytes=2 << 30) for o in (FP32_T1, TINY_T1)}
    h = Harness(options=big)
    h.run(10, lambda t: load(**OVERLOAD))  # 4 cores free but 1 GiB of memory: no replica of a 2 GiB variant
    assert h.log == []


def test_view_lists_each_variant_once():
    with pytest.raises(InfaasError, match="more than once"):
        view(load(), load())


def test_free_cores_are_shared_between_variants_in_one_call():
    h = Harness()
    actions = []
    for _ in range(6):
        actions = h.tick(load("m/fp32-t1", **OVERLOAD), load("other/fp32-t1", queue_samples=40, qps=10.0),
                         free_cores=1)
        h.clock.advance(1)
    # Both are overloaded but only one core is free: the first takes it; the other has nothing faster to switch
    # to and must not oversubscribe, so it stays overloaded.
    assert [(a.variant, a.kind) for a in actions] == [("m/fp32-t1", "replicate")]
    assert h.states["other/fp32-t1"].state == "overloaded"


def test_cooldown_between_actions():
    h = Harness()
    # Still overloaded after each replica (the load is not applied): actions come no closer than cooldown_s.
    h.run(12, lambda t: load(**OVERLOAD), step_s=0.5)
    assert [t for t, _ in h.log] == [5.0, 8.0, 11.0]
    slow = Harness(config=AutoscaleConfig(cooldown_s=10.0))
    slow.run(20, lambda t: load(**OVERLOAD), step_s=0.5)
    assert [t for t, _ in slow.log] == [5.0, 15.0]


# -- scale down ------------------------------------------------------------------------------------------

def test_scale_down_waits_for_hold():
    h = Harness()
    h.run(15, lambda t: load("m/fp32-t2", replicas=2, **LOW))
    assert h.log == []  # 0..14 s of low utilisation: shorter than the 15 s hold
    assert h.states["m/fp32-t2"].low_since_s == 0.0
    [action] = h.tick(load("m/fp32-t2", replicas=2, **LOW))
    assert (h.clock.now_s, action.kind) == (15.0, "remove_replica")


def test_one_busy_observation_restarts_the_hold():
    h = Harness()
    h.run(11, lambda t: load("m/fp32-t2", replicas=2, **LOW))
    h.run(1, lambda t: load("m/fp32-t2", replicas=2, **NORMAL))  # 50 qps of 360: 14%... still low
    h.run(1, lambda t: load("m/fp32-t2", replicas=2, qps=200.0))  # 56%: not low
    h.run(30, lambda t: load("m/fp32-t2", replicas=2, **LOW))
    assert [(t, a.kind) for t, a in h.log] == [(13.0 + 15.0, "remove_replica")]


def test_remove_replica_before_downgrade():
    h = Harness()
    replicas = {"n": 2}

    def apply(actions):
        for a in actions:
            if a.kind == "remove_replica":
                replicas["n"] -= 1

    for _ in range(60):
        apply(h.tick(load("m/fp32-t2", replicas=replicas["n"], **LOW)))
        if any(a.kind == "downgrade" for _, a in h.log):
            break
        h.clock.advance(1)
    assert h.kinds() == ["remove_replica", "downgrade"]
    (t1, _), (t2, down) = h.log
    assert t1 == 15.0 and t2 - t1 >= CONFIG.hold_s  # a fresh hold on the new configuration
    # Both 1-thread builds cost half; of those, int8 is as accurate (within tolerance) and faster.
    assert down.target == "m/int8-t1"


def test_no_downgrade_without_headroom_or_accuracy():
    # 50.1 qps is 28% of fp32-t2's 180: low, for long enough. The cheaper fp32-t1 sustains 100 qps, short of
    # 2 × 50.1, and the cheaper tiny is far less accurate: no downgrade (and one replica: nothing to remove).
    opts = {o.name: o for o in (FP32_T1, FP32_T2, TINY_T1)}
    h = Harness(options=opts)
    h.run(40, lambda t: load("m/fp32-t2", qps=50.1, latency_ms=6.0))
    assert h.log == []


def test_unload_after_idle():
    h = Harness()
    h.run(31, lambda t: load(qps=0.0, idle_s=t))
    assert [(t, a.kind) for t, a in h.log] == [(30.0, "unload")]
    assert h.states["m/fp32-t1"].state == "inactive"


@pytest.mark.parametrize("step_s", [0.5, 1.0])
def test_no_flapping_under_oscillating_load(step_s):
    h = Harness()
    replicas = {"n": 1}

    def oscillating(t: float) -> VariantLoad:
        high = int(t // 2) % 2 == 0  # 2 s high, 2 s low, for 60 s
        return load(replicas=replicas["n"], **(OVERLOAD if high else LOW))

    end = 60.0
    while h.clock.now_s < end:
        for a in h.tick(oscillating(h.clock.now_s)):
            replicas["n"] += a.kind == "replicate"
            replicas["n"] -= a.kind == "remove_replica"
        h.clock.advance(step_s)
    assert not {"remove_replica", "downgrade", "unload"} & set(h.kinds())
    # Each 2 s burst is shorter than the 5 s window, and each 2 s lull shorter than the 15 s hold: nothing moves.
    assert h.log == []


def test_no_flapping_when_bursts_last_longer_than_the_window():
    # 6 s bursts, 6 s lulls: the first burst adds a replica (which absorbs the later ones); lulls never last
    # the 15 s hold, so that replica is kept rather than removed and added back every cycle.
    h = Harness()
    replicas = {"n": 1}
    while h.clock.now_s < 60.0:
        high = int(h.clock.now_s // 6) % 2 == 0
        for a in h.tick(load(replicas=replicas["n"], **(OVERLOAD if high else LOW))):
            replicas["n"] += {"replicate": 1, "remove_replica": -1}.get(a.kind, 0)
        h.clock.advance(0.5)
    assert [(t, a.kind) for t, a in h.log] == [(5.0, "replicate")]


# -- states ----------------------------------------------------------------------------------------------

def test_interference_is_detected_and_replicated_after_a_window():
    h = Harness()
    h.tick(load(qps=20.0, queue_samples=0, latency_ms=20.0))  # 2 × the profiled 10 ms, nothing queued
    assert h.states["m/fp32-t1"].state == "interfered"
    h.clock.advance(1)
    h.run(5, lambda t: load(qps=20.0, queue_samples=1, latency_ms=20.0))
    assert [(t, a.kind) for t, a in h.log] == [(5.0, "replicate")]
    assert "interfered" in h.log[0][1].reason


def test_slow_latency_with_a_long_queue_is_not_interference():
    h = Harness()
    h.tick(load(qps=20.0, queue_samples=10, latency_ms=60.0, slo_ms=None))
    assert h.states["m/fp32-t1"].state == "active"


def test_states_are_visible():
    h = Harness()
    h.tick(load("m/fp32-t1", **NORMAL), load("m/fp32-t2", qps=0.0, idle_s=40.0))
    assert h.states["m/fp32-t1"].state == "active"
    assert h.states["m/fp32-t2"].state == "inactive"
    h.clock.advance(1)
    h.tick(load("m/fp32-t1", **NORMAL))  # fp32-t2 was unloaded: gone from the view
    gone = h.states["m/fp32-t2"]
    assert (gone.state, gone.since_s, gone.last_action_s) == ("inactive", 0.0, 0.0)  # back-off kept
    h.run(6, lambda t: load("m/fp32-t1", **OVERLOAD), free_cores=0)
    assert h.states["m/fp32-t1"].state == "overloaded"
    h.tick(load("m/fp32-t1", qps=20.0, latency_ms=25.0))
    assert h.states["m/fp32-t1"].state == "interfered"


def test_unknown_variant_is_only_unloaded():
    # Not in the catalog: no capacity to reason about, so a long queue scales nothing; idleness still unloads it.
    h = Harness()
    h.run(10, lambda t: load("m/unprofiled", qps=40.0, queue_samples=50))
    assert h.log == [] and h.states["m/unprofiled"].state == "active"
    h.run(31, lambda t: load("m/unprofiled", qps=0.0, idle_s=t - 10.0))
    assert [(t, a.kind) for t, a in h.log] == [(40.0, "unload")]


# -- no action without evidence --------------------------------------------------------------------------

# A tiny model: 0.006 ms profiled, so any served latency (0.2 ms of runtime overhead) is "1.5 × profiled".
TINY = opt("t/tiny", 0.9, 1, 0.006, 100_000.0)
TINY_CHEAP = VariantOption(name="t/tiny-cheap", model="t", accuracy=0.9, threads=1, max_batch=8, latency_ms_b1=0.01,
                           capacity_qps=50_000.0, cost_usd_per_s=1e-4)
TINY_OPTIONS = {o.name: o for o in (TINY, TINY_CHEAP)}


def test_min_window_queries_is_a_config_field():
    assert AutoscaleConfig().min_window_queries == 20
    assert AutoscaleConfig(min_window_queries=1).min_window_queries == 1


@pytest.mark.parametrize("qps", [0.0, 0.2, 1.0, 3.9])  # 0, 1, 5 and 19.5 queries in the 5 s window
def test_no_interference_verdict_without_enough_queries(qps):
    # The reported bug: zero traffic decided "replicate … interfered: mean latency 0.2 ms > 1.5 × profiled 0.0 ms
    # with 0 queued". A window with fewer than 20 queries is no evidence for it, however long it lasts.
    h = Harness(options=TINY_OPTIONS)
    h.run(60, lambda t: load("t/tiny", qps=qps, latency_ms=0.2, slo_ms=None), step_s=1.0)
    assert not any(a.kind == "replicate" for _, a in h.log)
    assert h.states["t/tiny"].state != "interfered"


def test_zero_traffic_never_replicates_upgrades_or_downgrades():
    h = Harness()
    h.run(60, lambda t: load("m/fp32-t1", qps=0.0, queue_samples=0, latency_ms=0.2), step_s=1.0)
    assert h.log == [] and h.states["m/fp32-t1"].state == "active"
    h = Harness()
    h.run(31, lambda t: load("m/fp32-t1", qps=0.0, latency_ms=0.2, idle_s=t), step_s=1.0)
    assert [(t, a.kind) for t, a in h.log] == [(30.0, "unload")]  # idleness is evidence enough to unload


def test_low_traffic_does_not_scale_up_or_switch():
    # 2 qps = 10 queries per 5 s window: a queue of 3 against a 50 ms SLO would be pressure with evidence,
    # but 13 queries are too few to call it overload.
    h = Harness()
    h.run(30, lambda t: load(qps=2.0, queue_samples=3), free_cores=0)
    h.run(30, lambda t: load(qps=2.0, queue_samples=3))
    assert h.log == [] and h.states["m/fp32-t1"].state == "active"
    # Low utilisation on a trickle: no downgrade (the load a cheaper variant must carry was not measured).
    h = Harness()
    h.run(60, lambda t: load(qps=1.0))
    assert h.log == []


def test_low_traffic_may_still_remove_a_surplus_replica():
    h = Harness()
    h.run(20, lambda t: load(replicas=2, qps=1.0))
    assert [a.kind for _, a in h.log] == ["remove_replica"]


def test_enough_traffic_acts_as_before():
    # 4 qps over 5 s = 20 queries: interference is measured and, once it lasts a window, replicated.
    h = Harness(options=TINY_OPTIONS)
    h.run(7, lambda t: load("t/tiny", qps=4.0, latency_ms=0.2, slo_ms=None))
    assert [(t, a.kind) for t, a in h.log] == [(5.0, "replicate")]
    # A queue that builds while few are served counts its waiting queries as evidence of overload.
    h = Harness(config=replace(CONFIG, min_window_queries=20))
    h.run(7, lambda t: load(qps=2.0, queue_samples=12))
    assert [(t, a.kind) for t, a in h.log] == [(5.0, "replicate")]


def test_a_lower_minimum_lets_a_trickle_act():
    h = Harness(options=TINY_OPTIONS, config=replace(CONFIG, min_window_queries=1))
    h.run(7, lambda t: load("t/tiny", qps=0.2, latency_ms=0.2, slo_ms=None))
    assert [a.kind for _, a in h.log] == ["replicate"]


# -- catalog ---------------------------------------------------------------------------------------------

def test_options_from_index():
    prices = PriceTable(cpu_usd_per_core_second=1e-3, gpu_usd_per_device_second=1e-2,
                        inferentia_usd_per_device_second=5e-3)

    def vi(name, lat, threads=1, acc=0.9, hardware="cpu", max_batch=None):
        return VariantInfo(name=name, model=name.split("/", 1)[0], task="digits-cls", dataset="digits",
                           backend="ort-cpu", hardware=hardware, recipe="fp32", threads=threads,
                           max_batch=max_batch or max(lat, default=1), accuracy=acc, load_time_ms=100.0,
                           peak_memory_bytes=7, batch_latency_ms=tuple(sorted(lat.items())))

    index = CatalogIndex([vi("m/a", {1: 2.0, 8: 8.0}, threads=2, acc=0.95),  # 500 qps at b1, 1000 at b8
                          vi("m/b", {1: 1.0, 4: 8.0}, acc=None),  # batching does not pay: 1000 qps at b1
                          vi("m/gpu", {1: 0.5}, hardware="gpu"),
                          vi("m/unprofiled", {})], prices)
    options = options_from_index(index)
    assert sorted(options) == ["m/a", "m/b", "m/gpu"]
    a = options["m/a"]
    assert (a.model, a.accuracy, a.threads, a.max_batch, a.latency_ms_b1) == ("m", 0.95, 2, 8, 2.0)
    assert a.capacity_qps == pytest.approx(1000.0)
    assert a.cost_usd_per_s == pytest.approx(2e-3)  # price per core × threads
    assert options["m/b"].capacity_qps == pytest.approx(1000.0)
    assert options["m/b"].accuracy is None
    assert options["m/gpu"].cost_usd_per_s == pytest.approx(1e-2)
    assert options["m/a"].peak_memory_bytes == 7


def test_unknown_accuracy_never_replaces_a_known_one():
    unmeasured = replace(INT8_T1, name="m/int8-nocal-t1", accuracy=None)
    h = Harness(options={o.name: o for o in (FP32_T1, unmeasured)})
    h.run(10, lambda t: load(**OVERLOAD), free_cores=0)
    assert h.log == []


def test_a_variant_with_queued_work_is_never_unloaded():
    h = Harness()
    h.run(40, lambda t: load(qps=0.0, queue_samples=1, slo_ms=None, idle_s=100.0))
    assert "unload" not in h.kinds()


def test_pressure_on_a_trickle_neither_scales_up_nor_down():
    h = Harness()
    h.run(40, lambda t: load(replicas=2, qps=1.0, queue_samples=8))  # 13 queries a window; 8 queued on 2 replicas
    assert h.log == []
