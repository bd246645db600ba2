"""Where a copy of a variant goes: one pure function over plain worker views, for every placement infaas makes.

`place(workers, need, purpose)` answers three questions with one candidate filter and one ranking:

* ``"query"`` — a query picked a variant no live worker holds: the worker to load it on (`select`).
* ``"static"`` — the static baseline pins a variant: the workers that get a fixed replica of it.
* ``"replica"`` — the autoscaler wants another replica of a variant on `current`: where it goes.

Candidates are the workers that take new work (alive and not draining) and advertise the variant's placement
key (its backend, plus any host capability its recipe needs: `infaas_cli.backends.keys`).
They are ranked best first by most free cores, then most free memory, then worker id (deterministic).
What "fits" differs, on purpose: a query's load is bounded by memory only (cores may be oversubscribed:
the worker then evicts idle variants or waits for busy ones), while fixed and extra replicas are meant
to run beside what is there, so they need the cores and (as the master has always done) ignore memory.

`place` scans every worker, which suits the control path. For the query path, `LoadRanking` keeps the
``"query"`` answer of one backend up to date one worker at a time (`cluster_view.ClusterView` holds one
per backend), so that finding where a load goes does not grow with the cluster.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush
from typing import Protocol

from infaas_cli.backends.keys import placement_key

PURPOSES = ("query", "static", "replica")


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as the master last saw it (heartbeat plus what it dispatched since)."""

    worker_id: str
    backends: frozenset[str]  # the placement keys it advertises (`infaas_cli.backends.keys`)
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
    key: str  # its placement key: a worker must advertise it ("ort-cpu", "ov-cpu+bf16")
    threads: int
    memory_bytes: int = 0


class _Spec(Protocol):
    name: str
    backend: str
    recipe: str
    threads: int
    peak_memory_bytes: int


def need_of(spec: _Spec) -> VariantNeed:
    """The need of a variant as the master describes it to workers (a `VariantSpec`)."""
    return VariantNeed(spec.name, placement_key(spec.backend, spec.recipe), spec.threads, spec.peak_memory_bytes)


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
    candidates = [w for w in workers if w.alive and need.key in w.backends]
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


class LazyHeap:
    """A min-heap holding one live entry per key (a worker id), each entry a tuple whose second item is the key.

    A replaced or discarded entry stays in the heap until it surfaces (then it is dropped) or until the dead
    outnumber the live (then the heap is rebuilt from the live), so every operation is O(log n) amortised.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple] = []
        self._live: dict[str, tuple] = {}

    def __bool__(self) -> bool:
        return bool(self._live)

    def push(self, key: str, entry: tuple) -> None:
        self._live[key] = entry
        heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._live) + 16:
            self._heap = list(self._live.values())
            heapify(self._heap)

    def discard(self, key: str) -> None:
        self._live.pop(key, None)

    def top(self) -> tuple:
        """The least live entry; the heap must not be empty."""
        heap, live = self._heap, self._live
        while live.get(heap[0][1]) is not heap[0]:  # identity: an equal entry pushed later is another object
            heappop(heap)
        return heap[0]


class LoadRanking:
    """One backend's candidates for a query's load, answering `place(..., "query")` without a scan.

    Workers are grouped by free cores (whole numbers on the wire, so a few groups however many workers);
    within a group, rank order is most free memory first, so the group's best-ranked worker with m bytes
    free is its roomiest whenever that one has them. `place(m)` walks the groups from the most free cores
    down and stops at the first whose roomiest worker has m bytes: O(groups + log n), not O(n).
    """

    __slots__ = ("_groups", "_free_cores", "_roomiest", "_group_of", "version")

    def __init__(self) -> None:
        self._groups: dict[float, LazyHeap] = {}  # free cores -> (-free memory, worker id) of its workers
        self._free_cores: list[float] = []  # the groups' keys, ascending
        self._roomiest = LazyHeap()  # (-free memory, worker id) of every worker: the answer when nobody fits
        self._group_of: dict[str, float] = {}
        #: Bumped on every change, so that what a caller derives from the ranking can be cached against it.
        self.version = 0

    def __len__(self) -> int:
        return len(self._group_of)

    def put(self, worker_id: str, free_cores: float, free_memory_bytes: int) -> None:
        """Add a worker, or move it to its new free cores and memory."""
        self.discard(worker_id)
        entry = (-free_memory_bytes, worker_id)
        group = self._groups.get(free_cores)
        if group is None:
            group = self._groups[free_cores] = LazyHeap()
            insort(self._free_cores, free_cores)
        group.push(worker_id, entry)
        self._roomiest.push(worker_id, entry)
        self._group_of[worker_id] = free_cores
        self.version += 1

    def discard(self, worker_id: str) -> None:
        free_cores = self._group_of.pop(worker_id, None)
        if free_cores is None:
            return
        group = self._groups[free_cores]
        group.discard(worker_id)
        if not group:  # dropping an emptied group drops its dead entries with it
            del self._groups[free_cores]
            del self._free_cores[bisect_left(self._free_cores, free_cores)]
        self._roomiest.discard(worker_id)
        self.version += 1

    def place(self, memory_bytes: int) -> str | None:
        """The worker `place(workers, need, "query")` picks for a need of `memory_bytes`; None without workers."""
        for free_cores in reversed(self._free_cores):
            neg_memory, worker_id = self._groups[free_cores].top()
            if -neg_memory >= memory_bytes:
                return worker_id
        return self.roomiest()

    def best(self) -> tuple[int, str] | None:
        """(free memory, worker id) of the best-ranked worker; None without workers."""
        if not self._free_cores:
            return None
        neg_memory, worker_id = self._groups[self._free_cores[-1]].top()
        return -neg_memory, worker_id

    def roomiest(self) -> str | None:
        """The worker with the most free memory (then the least id): where a load nobody has room for goes."""
        return self._roomiest.top()[1] if self._group_of else None

    def roomier(self) -> list[tuple[int, str]]:
        """(free memory, worker id), best-ranked first, of each worker with more free memory than every
        better-ranked one: the first of them with m bytes free is where `place(m)` goes (m up to the last's)."""
        out: list[tuple[int, str]] = []
        if not self._group_of:
            return out
        most = -self._roomiest.top()[0]
        for free_cores in reversed(self._free_cores):
            neg_memory, worker_id = self._groups[free_cores].top()
            if not out or -neg_memory > out[-1][0]:
                out.append((-neg_memory, worker_id))
                if -neg_memory >= most:
                    break
        return out
