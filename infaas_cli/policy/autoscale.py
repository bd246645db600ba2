"""Model-level autoscaling as pure policies: (previous states, a worker's measured load, now) -> (actions, new states).

Nothing here does I/O or reads a clock: `now_s` and the previous `VariantState`s are arguments, in the spirit
of Ray Serve's `policy(context) -> (decision, new_state)`. The worker / master loops snapshot the metrics, call
`autoscale_worker`, apply the actions and keep the returned states for the next tick.

Asymmetric hysteresis keeps it from flapping: scaling up waits only for the pressure to last one measurement
window (`window_s`), scaling down waits for low utilisation to last a longer hold (`hold_s` > `window_s`), and
any action on a variant backs it off for `cooldown_s`.

No action without evidence: a window with fewer than `min_window_queries` queries in it (served ones,
qps × window_s, plus those still queued) says nothing about overload, interference or what a cheaper
variant would sustain, so it neither replicates, upgrades, downgrades nor counts as "interfered" (whose
mean latency is measured over the served ones alone). Idle-unload and removing a surplus replica still act
on little or no traffic: a quiet window is the evidence for those.

Pinned variants (an operator's `infaas load`, or `master.min_loaded`) keep their pinned replicas: they are never
unloaded, switched away (upgrade or downgrade) or cut below the pinned replica count; they may still gain
replicas under load (on another worker when this one has no room, where an unpinned variant would be upgraded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from infaas_cli.errors import InfaasError
from infaas_cli.policy.selection import CatalogIndex

STATES = ("inactive", "active", "overloaded", "interfered")
ACTIONS = ("replicate", "remove_replica", "upgrade", "downgrade", "unload")

#: How much accuracy a switch to another variant of the same model may give away (half a point): the profiled
#: accuracies of variants of one model differ by measurement noise (e.g. int8 vs fp32 on a small validation set).
ACCURACY_TOLERANCE = 0.005

#: A queue of at most this many samples per replica cannot explain a slow mean latency: that is interference.
_SHORT_QUEUE_PER_REPLICA = 1


class AutoscaleConfigError(InfaasError):
    code = "bad_config"


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    window_s: float = 5.0  # measurement window: pressure must last this long before scaling up
    hold_s: float = 15.0  # low utilisation must last this long before scaling down (> window_s: no flapping)
    cooldown_s: float = 3.0  # no further action on a variant this soon after the last one
    overload_slack_fraction: float = 0.5  # overloaded when queueing delay > this fraction of the SLO slack
    interference_factor: float = 1.5  # measured latency > profiled × this with a short queue → interfered
    low_utilisation: float = 0.3  # below this fraction of capacity a variant is a scale-down candidate
    idle_unload_s: float = 30.0  # unload a variant that has served nothing for this long
    min_window_queries: int = 20  # fewer queries in a window (qps × window_s + queued) are no evidence to act on

    def __post_init__(self) -> None:
        for name in ("window_s", "hold_s", "cooldown_s", "overload_slack_fraction", "interference_factor",
                     "low_utilisation", "idle_unload_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AutoscaleConfigError(f"autoscale.{name} must be a finite number, not {value!r}")
        if self.window_s <= 0:
            raise AutoscaleConfigError(f"autoscale.window_s must be > 0 seconds, not {self.window_s}")
        if self.hold_s <= self.window_s:
            raise AutoscaleConfigError(
                f"autoscale.hold_s ({self.hold_s} s) must be longer than autoscale.window_s ({self.window_s} s): "
                "a scale-down hold no longer than the measurement window lets oscillating load flap the variant; "
                f"raise hold_s above {self.window_s} or shorten window_s")
        if self.cooldown_s < 0:
            raise AutoscaleConfigError(f"autoscale.cooldown_s must be >= 0 seconds, not {self.cooldown_s}")
        if not 0 < self.overload_slack_fraction <= 1:
            raise AutoscaleConfigError("autoscale.overload_slack_fraction must be in (0, 1], not "
                                       f"{self.overload_slack_fraction}")
        if self.interference_factor <= 1:
            raise AutoscaleConfigError("autoscale.interference_factor must be > 1 (a multiple of the profiled "
                                       f"latency), not {self.interference_factor}")
        if not 0 < self.low_utilisation < 1:
            raise AutoscaleConfigError(f"autoscale.low_utilisation must be in (0, 1), not {self.low_utilisation}")
        if self.idle_unload_s <= 0:
            raise AutoscaleConfigError(f"autoscale.idle_unload_s must be > 0 seconds, not {self.idle_unload_s}")
        if isinstance(self.min_window_queries, bool) or not isinstance(self.min_window_queries, int) \
                or self.min_window_queries < 1:
            raise AutoscaleConfigError("autoscale.min_window_queries must be a whole number of queries >= 1 (a "
                                       "window with fewer is no evidence to scale on), not "
                                       f"{self.min_window_queries!r}")


@dataclass(frozen=True, slots=True)
class VariantLoad:
    """What a worker measured for one loaded variant over the last window."""

    variant: str
    replicas: int
    queue_samples: int
    qps: float
    latency_ms: float  # mean served latency (arrival to reply), 0 when nothing was served
    slo_ms: float | None  # tightest latency SLO among its recent queries; None when none had one
    idle_s: float
    #: Observed / profiled inference time on this worker at the batch sizes it ran (None: not measured). When
    #: given it, rather than the mean latency against the batch-1 profile, tells interference.
    slowdown: float | None = None
    #: Replicas an operator pinned on this worker (0: not pinned here): never unloaded, switched or cut below.
    pinned_replicas: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise InfaasError(f"variant {self.variant}: replicas must be a whole number >= 1, not {self.replicas!r}")
        if isinstance(self.pinned_replicas, bool) or not isinstance(self.pinned_replicas, int) \
                or self.pinned_replicas < 0:
            raise InfaasError(f"variant {self.variant}: pinned_replicas must be a whole number >= 0, not "
                              f"{self.pinned_replicas!r}")

    @property
    def pinned(self) -> bool:
        return self.pinned_replicas > 0


@dataclass(frozen=True, slots=True)
class VariantOption:
    """A catalog summary of one variant the policy may run or switch to."""

    name: str
    model: str
    accuracy: float | None
    threads: int
    max_batch: int
    latency_ms_b1: float
    capacity_qps: float  # most queries/s one replica sustains: max over profiled batches of batch / latency
    cost_usd_per_s: float  # what one replica costs while loaded
    peak_memory_bytes: int = 0  # what one more replica needs free on the worker


@dataclass(frozen=True, slots=True)
class VariantState:
    state: str  # one of STATES
    since_s: float  # when the variant entered `state`
    last_action_s: float | None = None
    low_since_s: float | None = None  # start of the current run of under-utilised observations
    overloaded_since_s: float | None = None  # start of the current run of observations with SLO pressure


@dataclass(frozen=True, slots=True)
class WorkerView:
    cores: int
    free_cores: float
    free_memory_bytes: int
    variants: tuple[VariantLoad, ...]

    def __post_init__(self) -> None:
        names = [v.variant for v in self.variants]
        if len(set(names)) != len(names):
            # One entry per variant (its replicas counted in it), else one variant could get two actions.
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise InfaasError(f"worker view lists {', '.join(dupes)} more than once; report each variant once "
                              "with its replica count")


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # one of ACTIONS
    variant: str
    target: str | None  # the variant to switch to, for upgrade / downgrade
    reason: str
    elsewhere: bool = False  # replicate: on another worker (interference here), never beside this one


def options_from_index(index: CatalogIndex) -> dict[str, VariantOption]:
    """One VariantOption per profiled, priced variant of the selection index."""
    options: dict[str, VariantOption] = {}
    for info in index.order:  # the index keeps only profiled variants with a price here
        points = [(b, ms) for b, ms in info.batch_latency_ms if b <= info.max_batch and ms > 0]
        latency_b1 = info.latency_ms(1)
        if not points or latency_b1 is None:
            continue
        try:
            cost = index.prices.usd_per_second(info.hardware, info.threads)
        except InfaasError:
            continue
        options[info.name] = VariantOption(
            name=info.name, model=info.model, accuracy=info.accuracy, threads=info.threads,
            max_batch=info.max_batch, latency_ms_b1=latency_b1,
            capacity_qps=max(b * 1e3 / ms for b, ms in points), cost_usd_per_s=cost,
            peak_memory_bytes=info.peak_memory_bytes)
    return options


# -- the worker policy ---------------------------------------------------------------------------------

def _accurate_enough(candidate: VariantOption, current: VariantOption) -> bool:
    # An unknown accuracy cannot be shown to be no worse, so it only replaces another unknown one.
    if current.accuracy is None:
        return True
    if candidate.accuracy is None:
        return False
    return candidate.accuracy >= current.accuracy - ACCURACY_TOLERANCE


def _upgrade_target(current: VariantOption, load: VariantLoad, options: Mapping[str, VariantOption],
                    free_cores: float, free_memory_bytes: int) -> VariantOption | None:
    """The cheapest (then fastest) variant of the same model with more capacity that fits where this one runs."""
    best = None
    for opt in options.values():
        if opt.name == current.name or opt.model != current.model or opt.capacity_qps <= current.capacity_qps:
            continue
        if not _accurate_enough(opt, current) or opt.max_batch < current.max_batch:
            continue  # the queries this variant serves may carry batches up to its max batch
        if load.slo_ms is not None and opt.latency_ms_b1 >= load.slo_ms:
            continue  # more throughput at a latency no query accepts is no help
        # The switch replaces every replica in place: only the extra threads must be free (no oversubscription).
        if load.replicas * (opt.threads - current.threads) > free_cores:
            continue
        if load.replicas * (opt.peak_memory_bytes - current.peak_memory_bytes) > free_memory_bytes:
            continue
        key = (opt.cost_usd_per_s, opt.latency_ms_b1, -opt.capacity_qps, opt.name)
        if best is None or key < best[0]:
            best = (key, opt)
    return None if best is None else best[1]


def _downgrade_target(current: VariantOption, load: VariantLoad,
                      options: Mapping[str, VariantOption]) -> VariantOption | None:
    """The cheapest variant of the same model, as accurate, that still has 2× headroom over the current load."""
    best = None
    for opt in options.values():
        if opt.name == current.name or opt.model != current.model or opt.cost_usd_per_s >= current.cost_usd_per_s:
            continue
        if not _accurate_enough(opt, current) or opt.capacity_qps < 2 * load.qps \
                or opt.max_batch < current.max_batch:
            continue
        if load.slo_ms is not None and opt.latency_ms_b1 >= load.slo_ms:
            continue  # cheaper but too slow for the queries it serves
        key = (opt.cost_usd_per_s, opt.latency_ms_b1, opt.name)
        if best is None or key < best[0]:
            best = (key, opt)
    return None if best is None else best[1]


def _with_state(prev: VariantState | None, state: str, now_s: float, **fields) -> VariantState:
    since = prev.since_s if prev is not None and prev.state == state else now_s
    last_action = prev.last_action_s if prev is not None else None
    return VariantState(state=state, since_s=since, last_action_s=last_action, **fields)


def autoscale_worker(states: Mapping[str, VariantState], view: WorkerView, options: Mapping[str, VariantOption],
                     now_s: float, config: AutoscaleConfig) -> tuple[list[Action], dict[str, VariantState]]:
    """Classify each loaded variant of one worker and decide at most one scaling action per variant.

    Returns the actions (in the order to apply them) and the new state of every variant seen so far; variants
    that left the view are kept as "inactive" so that their back-off survives a reload.
    """
    new_states: dict[str, VariantState] = {}
    actions: list[Action] = []
    # Cores promised to scale-ups earlier in this call are no longer free for later ones.
    free_cores = float(view.free_cores)
    free_memory = view.free_memory_bytes
    switched_to: set[str] = set()

    for load in sorted(view.variants, key=lambda v: v.variant):
        prev = states.get(load.variant)
        opt = options.get(load.variant)
        in_cooldown = (prev is not None and prev.last_action_s is not None
                       and now_s - prev.last_action_s < config.cooldown_s)
        idle = load.qps <= 0 and load.queue_samples == 0 and load.idle_s >= config.idle_unload_s
        unloadable = idle and not load.pinned

        if opt is None:
            # Not in the catalog (unprofiled, or a stale catalog): no capacity to reason with; only unload it.
            state = _with_state(prev, "inactive" if idle else "active", now_s)
            action = None
            if unloadable and not in_cooldown:
                action = Action("unload", load.variant, None,
                                f"idle for {load.idle_s:.0f} s (>= {config.idle_unload_s:.0f} s)")
            new_states[load.variant], acted = _finish(state, action, now_s)
            actions.extend(acted)
            continue

        capacity_qps = opt.capacity_qps * load.replicas
        utilisation = load.qps / capacity_qps if capacity_qps > 0 else math.inf
        queue_delay_ms = load.queue_samples * opt.latency_ms_b1 / load.replicas
        if load.slo_ms is not None:
            slack_ms = max(0.0, load.slo_ms - opt.latency_ms_b1)
            pressured = queue_delay_ms > config.overload_slack_fraction * slack_ms
            pressure_why = (f"queueing delay {queue_delay_ms:.1f} ms > {config.overload_slack_fraction:g} × "
                            f"{slack_ms:.1f} ms SLO slack")
        else:
            # No SLO to protect: keep headroom instead.
            pressured = utilisation > 0.9
            pressure_why = f"utilisation {utilisation:.0%} > 90% with no latency SLO"
        # Evidence: the window's served queries (the mean latency rests on those alone) and its arrivals
        # (served plus still queued: a queue that builds while little is served is overload, not silence).
        served = load.qps * config.window_s
        measured = served >= config.min_window_queries
        seen = served + load.queue_samples >= config.min_window_queries
        under_pressure = pressured  # even on a trickle, a threatened SLO is no time to scale down
        pressured = pressured and seen
        short_queue = load.queue_samples <= _SHORT_QUEUE_PER_REPLICA * load.replicas
        if load.slowdown is not None:
            interfered = measured and not pressured and load.slowdown > config.interference_factor
            interference_why = (f"inference {load.slowdown:.2f} × slower than profiled (> "
                                f"{config.interference_factor:g} ×)")
        else:
            interfered = (measured and not pressured and short_queue and load.latency_ms > 0
                          and load.latency_ms > config.interference_factor * opt.latency_ms_b1)
            interference_why = (f"mean latency {load.latency_ms:.1f} ms > {config.interference_factor:g} × profiled "
                                f"{opt.latency_ms_b1:.1f} ms with {load.queue_samples} queued")

        overloaded_since = None
        if pressured:
            overloaded_since = (prev.overloaded_since_s if prev is not None and prev.overloaded_since_s is not None
                                else now_s)
        overloaded = pressured and now_s - overloaded_since >= config.window_s
        # Pressure or interference of any kind breaks a run of low observations: only a continuous run counts.
        low = utilisation < config.low_utilisation and not under_pressure and not interfered
        low_since = None
        if low:
            low_since = prev.low_since_s if prev is not None and prev.low_since_s is not None else now_s

        if overloaded:
            label = "overloaded"
        elif interfered:
            label = "interfered"
        elif idle:
            label = "inactive"  # loaded but serving nothing: an unload candidate
        else:
            label = "active"  # includes pressure not yet sustained for a window: a spike is not overload
        state = _with_state(prev, label, now_s, low_since_s=low_since, overloaded_since_s=overloaded_since)

        action = None
        if in_cooldown:
            pass
        elif overloaded:
            if free_cores >= opt.threads and free_memory >= opt.peak_memory_bytes:
                action = Action("replicate", load.variant, None, f"overloaded for "
                                f"{now_s - overloaded_since:.0f} s: {pressure_why}; {free_cores:g} cores free")
                free_cores -= opt.threads
                free_memory -= opt.peak_memory_bytes
            elif load.pinned:  # never switched away: another replica where there is room, else stay
                action = Action("replicate", load.variant, None,
                                f"overloaded ({pressure_why}), pinned and no room here ({free_cores:g} cores free, "
                                f"{opt.threads} needed): a replica on another worker", elsewhere=True)
            else:
                target = _upgrade_target(opt, load, options, free_cores, free_memory)
                if target is not None:
                    action = Action("upgrade", load.variant, target.name,
                                    f"overloaded ({pressure_why}) and no room for another replica "
                                    f"({free_cores:g} cores free, {opt.threads} needed): {target.name} "
                                    f"sustains {target.capacity_qps:.0f} qps per replica vs {opt.capacity_qps:.0f}")
                    free_cores -= max(0, load.replicas * (target.threads - opt.threads))
                    free_memory -= max(0, load.replicas * (target.peak_memory_bytes - opt.peak_memory_bytes))
                # else: no room and nothing faster: stay overloaded rather than oversubscribe the cores.
        elif interfered and now_s - state.since_s >= config.window_s:
            # One slow window may be a passing neighbour; a replica is paid for only if it lasts. It goes to
            # another worker: a second replica beside the interference would suffer it too.
            action = Action("replicate", load.variant, None,
                            f"interfered for {now_s - state.since_s:.0f} s: {interference_why}", elsewhere=True)
        elif unloadable:
            action = Action("unload", load.variant, None,
                            f"idle for {load.idle_s:.0f} s (>= {config.idle_unload_s:.0f} s)")
        elif low and now_s - low_since >= config.hold_s:
            held = f"utilisation {utilisation:.0%} < {config.low_utilisation:.0%} for {now_s - low_since:.0f} s"
            if load.replicas > max(1, load.pinned_replicas):
                action = Action("remove_replica", load.variant, None, f"{held} on {load.replicas} replicas")
            elif measured and not load.pinned:  # a cheaper variant's headroom is judged against a measured load
                target = _downgrade_target(opt, load, options)
                if target is not None:
                    action = Action("downgrade", load.variant, target.name,
                                    f"{held}: {target.name} costs ${target.cost_usd_per_s:.3g}/s vs "
                                    f"${opt.cost_usd_per_s:.3g}/s and sustains {target.capacity_qps:.0f} qps "
                                    f"(>= 2 × {load.qps:.1f})")

        new_states[load.variant], acted = _finish(state, action, now_s)
        actions.extend(acted)
        if action is not None and action.target is not None:
            switched_to.add(action.target)

    for target in switched_to:
        # The variant switched to starts its own back-off now, so it is not switched again as soon as it arrives.
        current = new_states.get(target)
        if current is None:  # not loaded here yet: it is loading
            prev = states.get(target)
            since = prev.since_s if prev is not None and prev.state == "inactive" else now_s
            current = VariantState(state="inactive", since_s=since)
        new_states[target] = replace(current, last_action_s=now_s)

    seen = {v.variant for v in view.variants}
    for name, prev in states.items():
        if name in seen or name in new_states:
            continue
        # Gone from the worker: inactive, forgetting its runs of observations but not its back-off.
        new_states[name] = VariantState(state="inactive", since_s=prev.since_s if prev.state == "inactive" else now_s,
                                        last_action_s=prev.last_action_s)
    return actions, new_states


def _finish(state: VariantState, action: Action | None, now_s: float) -> tuple[VariantState, list[Action]]:
    if action is None:
        return state, []
    if action.kind in ("remove_replica", "downgrade", "unload"):
        # The next scale-down needs a fresh hold measured on the new configuration.
        state = replace(state, low_since_s=None)
    return replace(state, last_action_s=now_s), [action]

