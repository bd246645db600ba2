"""Where a copy of a variant goes: one pure function over plain worker views, for every placement infaas makes.

`place(workers, need, purpose)` answers three questions with one candidate filter and one ranking:

* ``"query"`` — a query picked a variant no live worker holds: the worker to load it on (`select`).
* ``"static"`` — the static baseline pins a variant: the workers that get a fixed replica of it.
* ``"replica"`` — the autoscaler wants another replica of a variant on `current`: where it goes.

Candidates are the workers that take new work (alive and not draining) and run the variant's backend.
They are ranked best first by most free cores, then most free memory, then worker id (deterministic).
What "fits" differs, on purpose: a query's load is bounded by memory only (cores may be oversubscribed:
the worker then evicts idle variants or waits for busy ones), while fixed and extra replicas are meant
to run beside what is there, so they need the cores and (as the master has always done) ignore memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PURPOSES = ("query", "static", "replica")


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as the master last saw it (heartbeat plus what it dispatched since)."""

    worker_id: str
    backends: frozenset[str]
    cores: int
    #: `cores.known_free_cores`: may be negative on an oversubscribed worker (ranks the less oversubscribed first).
    free_cores: float
    free_memory_bytes: int
    loaded: Mapping[str, int] = field(default_factory=dict)  # variant -> queued samples
    #: Takes new work: registered, heartbeating and not draining (the master folds draining in).
    alive: bool = True


@dataclass(frozen=True, slots=True)
class VariantNeed:
    """What one copy of a variant needs of a worker."""

    variant: str
    backend: str
    threads: int
    memory_bytes: int = 0


def rank_key(w: WorkerState) -> tuple[float, int, str]:
    """Best place first: most free cores, then most free memory, then the worker id."""
    return (-w.free_cores, -w.free_memory_bytes, w.worker_id)


def place(workers: Iterable[WorkerState], need: VariantNeed, purpose: str = "query",
          current: str | None = None) -> tuple[str, ...]:
    """The workers that should get a new copy of `need.variant`, best first; () when none should.

    query:   the best-ranked candidate with `need.memory_bytes` free; when none has, the one with the
             most free memory (a load that does not quite fit beats no answer: profiles overestimate).
    static:  every candidate not holding the variant with `need.threads` free cores; when none has them
             and no candidate holds the variant yet, the best-ranked candidate (the roomiest).
    replica: `current` itself when it is a candidate with `need.threads` free cores (the caller then
             raises the replica count there); else the best-ranked other candidate not holding the
             variant with the cores free; else () (no room anywhere: stay put rather than oversubscribe).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"placement purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
    candidates = [w for w in workers if w.alive and need.backend in w.backends]
    if not candidates:
        return ()
    if purpose == "query":
        roomy = [w for w in candidates if w.free_memory_bytes >= need.memory_bytes]
        if roomy:
            return (min(roomy, key=rank_key).worker_id,)
        return (min(candidates, key=lambda w: (-w.free_memory_bytes, w.worker_id)).worker_id,)
    if purpose == "replica":
        for w in candidates:
            if w.worker_id == current and w.free_cores >= need.threads:
                return (w.worker_id,)
        others = [w for w in candidates if w.worker_id != current and need.variant not in w.loaded
                  and w.free_cores >= need.threads]
        return (min(others, key=rank_key).worker_id,) if others else ()
    # static
    fitting = sorted((w for w in candidates if need.variant not in w.loaded and w.free_cores >= need.threads),
                     key=rank_key)
    if fitting:
        return tuple(w.worker_id for w in fitting)
    if any(need.variant in w.loaded for w in candidates):
        return ()  # already placed somewhere: a fixed replica is not moved or duplicated onto a full worker
    return (min(candidates, key=rank_key).worker_id,)
