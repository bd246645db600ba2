"""Open-loop trace replay against a master, with SLO accounting and a meter of what the held resources cost."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from infaas_cli.client import MasterUnreachableError, QueryFailed
from infaas_cli.errors import InfaasError
from infaas_cli.policy.selection import PriceTable
from infaas_cli.experiments.trace import Arrival, QueryClass

log = logging.getLogger(__name__)

#: Variant states that hold a worker's cores (or device): loaded ones, whatever the autoscaler calls them.
#: "loading" and "dispatched" are not billed: the worker has not opened a session yet.
HELD_STATES = frozenset({"loaded", "active", "overloaded", "interfered"})

#: Error codes the replayer itself gives to queries it could not get an answer for.
NOT_ANSWERED = "not_answered"  # no reply within the drain timeout
IN_FLIGHT_CAP = "in_flight_cap"  # not sent: max_in_flight queries were outstanding

#: A send this close to its time is due: waiting for less would spin on float rounding of the clock.
SEND_SLACK_S = 1e-6


@dataclass(slots=True)
class QueryRecord:
    class_index: int
    scheduled_s: float  # from the trace, seconds after the replay started
    sent_s: float | None = None  # None: never sent (see error_code)
    latency_ms: float | None = None  # client-observed, from send to reply; None unless ok
    ok: bool = False
    error_code: str | None = None
    error_reason: str | None = None  # the master's reason, for the report's examples of each error code
    variant: str | None = None
    worker: str | None = None
    busy_core_ms: float = 0.0  # this query's share of its batch's inference time × the variant's threads

    @property
    def send_lag_ms(self) -> float | None:
        return None if self.sent_s is None else (self.sent_s - self.scheduled_s) * 1e3


# -- cost ----------------------------------------------------------------------------------------------

@functools.cache
def _backend_hardware() -> dict[str, str]:
    from infaas_cli.backends import BACKENDS  # late: the registry imports the runtimes

    return {b.name: b.hardware for b in BACKENDS}


def hardware_of(variant: str, info: dict[str, Any]) -> str:
    """The hardware a loaded variant occupies: its status entry's `hardware`, else its backend's, else cpu."""
    if info.get("hardware"):
        return str(info["hardware"])
    suffix = variant.split("/", 1)[-1]
    # Longest backend name first: "ort-cpu-..." must not be taken for a backend called "ort".
    for name, hardware in sorted(_backend_hardware().items(), key=lambda kv: -len(kv[0])):
        if suffix.startswith(name + "-"):
            return hardware
    return "cpu"


def held_resources(status: dict[str, Any], prices: PriceTable,
                   held_states: Iterable[str] = HELD_STATES) -> tuple[float, float]:
    """(USD per second, CPU cores) held now by the loaded variants of the alive workers in a status snapshot."""
    held_states = frozenset(held_states)
    usd_per_s = cores = 0.0
    for worker in status.get("workers") or ():
        if not worker.get("alive"):
            continue  # a dead worker's machine is no longer ours to pay for
        for name, info in (worker.get("variants") or {}).items():
            if info.get("state") not in held_states:
                continue
            threads = max(1, int(info.get("threads") or 1))
            hardware = hardware_of(name, info)
            usd_per_s += prices.usd_per_second(hardware, threads)
            if hardware == "cpu":
                cores += threads
    return usd_per_s, cores


@dataclass
class CostMeter:
    """Integrates the cost of held resources over time from periodic status snapshots.

    Zero-order hold: what a snapshot shows is taken as held until the next snapshot, so the first
    sample only starts the clock. A snapshot that fails keeps the previous holdings (logged).
    """

    status_fn: Callable[[], dict[str, Any]]
    prices: PriceTable
    held_states: frozenset[str] = HELD_STATES
    cost_usd: float = 0.0
    core_seconds: float = 0.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (now_s, usd_per_s, cores)
    failed_samples: int = 0

    def sample(self, now_s: float) -> float:
        """Charge the holdings of the previous sample up to now_s, then read the current ones; the total USD."""
        try:
            usd_per_s, cores = held_resources(self.status_fn(), self.prices, self.held_states)
        except InfaasError as exc:
            self.failed_samples += 1
            log.warning("cost sample at %.2f s failed (%s); assuming the holdings did not change", now_s, exc)
            if not self.samples:
                return self.cost_usd
            usd_per_s, cores = self.samples[-1][1:]
        if self.samples:
            last_s, last_usd_per_s, last_cores = self.samples[-1]
            elapsed_s = max(0.0, now_s - last_s)
            self.cost_usd += last_usd_per_s * elapsed_s
            self.core_seconds += last_cores * elapsed_s
        self.samples.append((now_s, usd_per_s, cores))
        return self.cost_usd


# -- results -------------------------------------------------------------------------------------------

def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def _tally(records: Sequence[QueryRecord], classes: Sequence[QueryClass], duration_s: float) -> dict[str, Any]:
    latencies = [r.latency_ms for r in records if r.ok]
    in_slo = sum(1 for r in records if r.ok and r.latency_ms <= classes[r.class_index].latency_ms)
    completed = len(latencies)
    arrivals = len(records)
    return {
        "arrivals": arrivals,
        "sent": sum(1 for r in records if r.sent_s is not None),
        "completed": completed,
        "failed": arrivals - completed,
        "violations": arrivals - in_slo,
        "slo_violation_rate": (arrivals - in_slo) / arrivals if arrivals else 0.0,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "goodput_qps": in_slo / duration_s if duration_s > 0 else 0.0,
    }


@dataclass
class ReplayResult:
    records: list[QueryRecord]
    classes: list[QueryClass]
    duration_s: float  # the trace's length: the denominator of goodput
    send_phase_s: float  # wall time from the first scheduled send to the last actual one
    drain_s: float  # wall time spent waiting for the last replies
    cost: CostMeter | None = None

    def summary(self) -> dict[str, Any]:
        """The headline numbers; a violation is a failed query or one slower than its class's latency_ms."""
        out = _tally(self.records, self.classes, self.duration_s)
        lags = [r.send_lag_ms for r in self.records if r.sent_s is not None]
        out["send_lag_ms"] = {"p50": _percentile(lags, 50), "p99": _percentile(lags, 99),
                              "max": float(max(lags)) if lags else None}
        out["duration_s"] = self.duration_s
        out["errors"] = dict(Counter(r.error_code for r in self.records if not r.ok))
        out["error_examples"] = {}
        for r in self.records:
            if not r.ok and r.error_reason and r.error_code not in out["error_examples"]:
                out["error_examples"][r.error_code] = r.error_reason[:300]
        out["cost_usd"] = self.cost.cost_usd if self.cost else None
        out["core_seconds"] = self.cost.core_seconds if self.cost else None
        # Compute actually used (pay-per-use view), beside the resources held (the cost above).
        busy_core_s = sum(r.busy_core_ms for r in self.records if r.ok) / 1e3
        out["busy_core_seconds"] = busy_core_s
        out["compute_cost_usd"] = busy_core_s * self.cost.prices.usd_per_second("cpu", 1) if self.cost else None
        out["per_class"] = {}
        for i, cls in enumerate(self.classes):
            key = cls.name if cls.name not in out["per_class"] else f"{cls.name}#{i}"
            out["per_class"][key] = _tally([r for r in self.records if r.class_index == i], self.classes,
                                           self.duration_s)
        return out

    def timeline(self, bin_s: float) -> dict[str, Any]:
        """Per bin of arrival time: offered qps, completed, violations and the count of each chosen variant."""
        if bin_s <= 0:
            raise InfaasError(f"bin_s must be positive, not {bin_s!r}")
        n_bins = max(1, math.ceil(self.duration_s / bin_s - 1e-9))
        offered = np.zeros(n_bins, dtype=np.int64)
        completed = np.zeros(n_bins, dtype=np.int64)
        violations = np.zeros(n_bins, dtype=np.int64)
        variants: dict[str, np.ndarray] = {}
        for r in self.records:
            b = min(n_bins - 1, max(0, int(r.scheduled_s // bin_s)))
            offered[b] += 1
            if r.ok:
                completed[b] += 1
                variants.setdefault(r.variant, np.zeros(n_bins, dtype=np.int64))[b] += 1
            if not r.ok or r.latency_ms > self.classes[r.class_index].latency_ms:
                violations[b] += 1
        return {"t_s": (np.arange(n_bins) * bin_s).tolist(), "offered_qps": (offered / bin_s).tolist(),
                "completed": completed.tolist(), "violations": violations.tolist(),
                "variants": {k: v.tolist() for k, v in sorted(variants.items())}}


# -- replay --------------------------------------------------------------------------------------------

def _record_reply(record: QueryRecord, reply: Any) -> None:
    if isinstance(reply, QueryFailed):
        record.error_code, record.error_reason = reply.code, str(reply)
        return
    # Client-observed, end to end (network and client included); older clients only had latency_ms.
    client_ms = getattr(reply, "client_latency_ms", None)
    record.ok, record.latency_ms = True, float(client_ms if client_ms is not None else reply.latency_ms)
    record.variant, record.worker = reply.variant, reply.worker
    timing = reply.timing or {}
    batch = max(1, int(timing.get("batch_size") or 1))
    threads = _threads_of(reply.variant)
    record.busy_core_ms = float(timing.get("inference_ms") or 0.0) / batch * threads


def _threads_of(variant: str) -> int:
    """The thread budget from a variant name (MODEL/BACKEND-RECIPE-tTHREADS-bMAXBATCH)."""
    for part in reversed(variant.rsplit("/", 1)[-1].split("-")):
        if part.startswith("t") and part[1:].isdigit():
            return int(part[1:])
    return 1


def _harvest(client: Any, pending: deque[tuple[str, int]], records: list[QueryRecord], wait_s: float) -> None:
    """Collect the replies that are in, oldest first, waiting at most wait_s for the oldest.

    gather() reads every reply already on the socket while it looks for the oldest, and raises
    MasterUnreachableError when its timeout passes first; the latency is stamped by the client on
    receipt, so a reply that waits behind a slower, older one is still timed right.
    """
    while pending:
        rid, index = pending[0]
        try:
            reply = client.gather([rid], timeout_s=max(0.0, wait_s))[rid]
        except MasterUnreachableError:
            return
        pending.popleft()
        _record_reply(records[index], reply)
        wait_s = 0.0  # only the first look may wait


def replay(client: Any, trace: Sequence[Arrival], classes: Sequence[QueryClass],
           inputs_for_class: Callable[[int, int], dict[str, np.ndarray]], *,
           time_fn: Callable[[], float] = time.monotonic, sleep_fn: Callable[[float], None] = time.sleep,
           max_in_flight: int = 10_000, drain_timeout_s: float = 30.0, duration_s: float | None = None,
           cost_meter: CostMeter | None = None, cost_interval_s: float = 0.5) -> ReplayResult:
    """Send each arrival at its scheduled time whatever the replies do (open loop); collect replies in between.

    `inputs_for_class(class_index, arrival_index)` makes each query's inputs; it runs before the wait for
    the send time, so it does not delay the send. When `max_in_flight` queries are outstanding the next
    arrival is not sent and counts as failed (`in_flight_cap`): waiting instead would close the loop and
    hide the overload. Queries unanswered `drain_timeout_s` after the last send count as failed
    (`not_answered`). `client` needs only submit() and gather(); `cost_meter` is sampled every
    `cost_interval_s` (its status_fn may use the same client: status replies interleave with queries).
    """
    classes = list(classes)
    records = [QueryRecord(a.class_index, a.t_s) for a in trace]
    pending: deque[tuple[str, int]] = deque()
    t0 = time_fn()

    def now_s() -> float:
        return time_fn() - t0

    next_cost_s = 0.0

    def meter_if_due() -> None:
        nonlocal next_cost_s
        if cost_meter is not None and now_s() >= next_cost_s:
            cost_meter.sample(now_s())
            next_cost_s = now_s() + cost_interval_s

    def until_next_cost_s() -> float:
        return max(0.0, next_cost_s - now_s()) if cost_meter is not None else math.inf

    for index, arrival in enumerate(trace):
        inputs = inputs_for_class(arrival.class_index, index)
        while True:
            _harvest(client, pending, records, 0.0)
            meter_if_due()
            due_in_s = arrival.t_s - now_s()
            if due_in_s <= SEND_SLACK_S:
                break
            wait_s = min(due_in_s, until_next_cost_s())
            if pending:
                _harvest(client, pending, records, wait_s)  # wakes early for a reply: no idle sleep
            elif wait_s > 0:
                sleep_fn(wait_s)
        record = records[index]
        if len(pending) >= max_in_flight:
            record.error_code = IN_FLIGHT_CAP
            continue
        sent_s = now_s()
        try:
            rid = client.submit(inputs, **classes[arrival.class_index].query_kwargs())
        except InfaasError as exc:  # refused before it left (bad inputs or SLO): a failure, not a crash
            record.error_code, record.error_reason = exc.code, str(exc)
            continue
        record.sent_s = sent_s
        pending.append((rid, index))
    send_end_s = now_s()
    send_phase_s = max(0.0, send_end_s - (trace[0].t_s if trace else 0.0))

    drain_deadline_s = send_end_s + drain_timeout_s
    while pending and now_s() < drain_deadline_s:
        _harvest(client, pending, records, min(drain_deadline_s - now_s(), until_next_cost_s()))
        meter_if_due()
    for rid, index in pending:  # replies behind an unanswered older one are in already; the rest never came
        try:
            _record_reply(records[index], client.gather([rid], timeout_s=0.0)[rid])
        except MasterUnreachableError:
            records[index].error_code = NOT_ANSWERED
    drain_s = now_s() - send_end_s
    if cost_meter is not None:
        cost_meter.sample(now_s())
    if duration_s is None:
        duration_s = trace[-1].t_s if trace else 0.0
    return ReplayResult(records, classes, float(duration_s), send_phase_s, drain_s, cost_meter)
