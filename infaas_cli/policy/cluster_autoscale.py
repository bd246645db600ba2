"""Horizontal autoscaling as a pure policy: per-host utilisation snapshots + previous state + now → actions.

All workers of a hardware kind above `scale_out_utilisation` for `out_window_s` → scale out; all of
them below `scale_in_utilisation` for the longer `in_window_s` → scale in the least-loaded one
(drained first by the caller); after any action on a kind, nothing more for `backoff_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from infaas_cli.errors import InfaasError


@dataclass(frozen=True)
class ClusterAutoscaleConfig:
    scale_out_utilisation: float = 0.8
    scale_in_utilisation: float = 0.2
    out_window_s: float = 10.0
    in_window_s: float = 30.0
    backoff_s: float = 30.0
    min_workers: int = 1
    max_workers: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.scale_in_utilisation < self.scale_out_utilisation <= 1:
            raise InfaasError("cluster autoscaling needs 0 < scale_in_utilisation < scale_out_utilisation <= 1")
        if self.in_window_s <= self.out_window_s:
            raise InfaasError("cluster autoscaling: in_window_s must be longer than out_window_s, so that a dip "
                              "in load does not remove a host that the next burst needs")
        if self.min_workers < 1 or self.max_workers < self.min_workers:
            raise InfaasError("cluster autoscaling needs 1 <= min_workers <= max_workers")


@dataclass(frozen=True)
class HostLoad:
    worker_id: str
    hardware: str  # the kind hosts are scaled by, e.g. "cpu" or "gpu"
    utilisation: float  # 0..1 over the last heartbeat
    alive: bool = True
    draining: bool = False


@dataclass(frozen=True)
class ClusterState:
    high_since_s: dict[str, float] = field(default_factory=dict)
    low_since_s: dict[str, float] = field(default_factory=dict)
    last_action_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterAction:
    kind: str  # "scale_out" or "scale_in"
    hardware: str
    worker_id: str | None  # the host to drain and remove, for scale_in
    reason: str


def autoscale_cluster(state: ClusterState, hosts: Sequence[HostLoad], now_s: float,
                      config: ClusterAutoscaleConfig) -> tuple[list[ClusterAction], ClusterState]:
    high, low, last = dict(state.high_since_s), dict(state.low_since_s), dict(state.last_action_s)
    actions: list[ClusterAction] = []
    kinds = sorted({h.hardware for h in hosts})
    for kind in kinds:
        serving = [h for h in hosts if h.hardware == kind and h.alive and not h.draining]
        if not serving:
            high.pop(kind, None)
            low.pop(kind, None)
            continue
        if all(h.utilisation >= config.scale_out_utilisation for h in serving):
            high.setdefault(kind, now_s)
        else:
            high.pop(kind, None)
        if all(h.utilisation <= config.scale_in_utilisation for h in serving):
            low.setdefault(kind, now_s)
        else:
            low.pop(kind, None)
        if now_s - last.get(kind, float("-inf")) < config.backoff_s:
            continue
        if kind in high and now_s - high[kind] >= config.out_window_s and len(serving) < config.max_workers:
            lowest = min(h.utilisation for h in serving)
            actions.append(ClusterAction("scale_out", kind, None,
                                         f"all {len(serving)} {kind} worker(s) above {config.scale_out_utilisation:.0%} "
                                         f"for {now_s - high[kind]:.0f} s (least busy at {lowest:.0%})"))
            last[kind] = now_s
            high.pop(kind)
        elif kind in low and now_s - low[kind] >= config.in_window_s and len(serving) > config.min_workers:
            victim = min(serving, key=lambda h: (h.utilisation, h.worker_id))
            actions.append(ClusterAction("scale_in", kind, victim.worker_id,
                                         f"all {len(serving)} {kind} worker(s) below {config.scale_in_utilisation:.0%} "
                                         f"for {now_s - low[kind]:.0f} s; draining the least busy"))
            last[kind] = now_s
            low.pop(kind)
    return actions, replace(state, high_since_s=high, low_since_s=low, last_action_s=last)
