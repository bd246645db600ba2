"""The one core arithmetic of the master: a worker's cores, its free cores as the master knows them, its CPU use."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def worker_cores(heartbeat_cores: int | None, registered_cores: int | None) -> int:
    """A worker's cores: its last heartbeat's count, else what it registered with, at least 1.

    Both come from the worker's own `cores` (its --cores or the host's), so they agree once it has
    sent a heartbeat; before that, the registration's hardware is all there is.
    """
    return max(1, int(heartbeat_cores or registered_cores or 1))


def known_free_cores(cores: int, heartbeat_free_cores: float | None, dispatched_threads: int) -> float:
    """Free cores as the master knows them: the fewer of the heartbeat's count and cores minus dispatched threads.

    The master sees loads it dispatched before the worker's next heartbeat does, and the heartbeat sees
    replicas and loads in progress the master does not count; each bounds the other. Not clamped at 0:
    of two full workers, placement then prefers the less oversubscribed. `heartbeat_free_cores` is None
    before the first heartbeat (then only the dispatched threads count).
    """
    free = cores - dispatched_threads
    if heartbeat_free_cores is not None and heartbeat_free_cores < free:
        return float(heartbeat_free_cores)
    return float(free)


def dispatched_threads(variants: Iterable[str], threads_of: Callable[[str], int]) -> int:
    """The threads of the variants the master placed on a worker: one replica each, `threads_of(name)` per variant
    (the master's returns 0 for a variant it cannot resolve)."""
    return sum(int(threads_of(name)) for name in variants)


def cpu_utilisation(process_cpu_percent: float | None, cores: int) -> float:
    """A worker's utilisation for the cluster autoscaler: its own process's CPU % over its cores (0..1).

    The process's share, not the host's: a host may run other things that more workers would not help.
    """
    return float(process_cpu_percent or 0.0) / (100.0 * max(1, int(cores)))
