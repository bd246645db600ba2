"""The cluster as the selection policy reads it, kept up to date event by event rather than rebuilt per query.

The master owns one `ClusterView` and tells it what changes, as it learns it: a worker registers,
heartbeats, dies or drains (`upsert_worker`, `remove_worker`, `put`), a query is dispatched to or
finishes on a worker (`set_queue`), a worker loads or unloads a variant (`set_queue`, `drop_variant`,
`set_loaded`), a reply teaches the serving overhead of a worker's path (`set_overhead`,
`set_overhead_floor`); a retry avoids the workers that failed it (`excluding`). Each event costs
O(log n) in the workers and the holders it touches, so that what a decision reads costs the same with
ten workers or ten thousand:

* per variant, its alive holders sorted by (queue, worker id): the least-loaded holder is the first;
* per backend, a `placement.LoadRanking`: where a query's load would go, without a scan;
* the number of alive workers per backend and per serving overhead (one overhead for all is the common case);
* projected onto one `CatalogIndex` (rebuilt only when the catalog changes), per index position the
  shortest queue of the variant and its holder's overhead, so that `group(index, start, end)`, the view
  of a model's or a task's slice, is a few vectorised operations over the slice and no loop over workers.

"Backend" here means a placement key (`infaas_cli.backends.keys`), what a worker advertises and a variant
needs: a backend's name, or a backend plus a host capability its recipe needs ("ov-cpu+bf16"). A worker
advertises every key it provides, so a bf16 variant ranks only workers whose CPU computes bf16.

Decisions read from a view are those `ClusterSnapshot` (selection.py), a frozen list of workers, gives for
the same state: a snapshot builds a view of its workers on first use.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from infaas_cli.errors import InfaasError
from infaas_cli.policy.latency import PRIOR_OVERHEAD_MS
from infaas_cli.policy.placement import LazyHeap, LoadRanking, WorkerState

if TYPE_CHECKING:
    from infaas_cli.policy.selection import CatalogIndex

_INF = math.inf


def check_overhead_default(value: float) -> float:
    """The default serving overhead (ms) as a float; an InfaasError unless it is a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InfaasError(f"overhead_ms_default must be a non-negative number of ms, not {value!r}")
    return float(value)


class GroupView:
    """One index slice as the cluster sees it now: extra latency (overhead + queue or load) and masks.

    Valid until the view's next event (it reads the view's arrays): select uses it within one decision.
    What only the slow paths (a missed SLO, an error message) need is derived on first use.
    """

    __slots__ = ("extra_ms", "load_overhead_ms", "loaded", "runnable", "any_runnable", "_wait_ms", "_held_ms",
                 "_local")

    def __init__(self, extra_ms: np.ndarray, load_overhead_ms: float | np.ndarray, loaded: np.ndarray | None,
                 runnable: np.ndarray | None, any_runnable: bool, wait_ms: np.ndarray, held_ms: np.ndarray) -> None:
        self.extra_ms = extra_ms  # serving overhead + (queue wait if loaded, else load time)
        self.load_overhead_ms = load_overhead_ms  # per slice position (or one scalar): the load target's
        self.loaded = loaded  # None: nothing in the slice is loaded
        self.runnable = runnable  # None: every variant's backend has a live worker
        self.any_runnable = any_runnable
        self._wait_ms = wait_ms  # per slice position, where loaded: the queue wait, and the holder's overhead
        self._held_ms = held_ms
        self._local: np.ndarray | None = None

    @property
    def loaded_local(self) -> np.ndarray | None:
        """The loaded variants' positions in the slice; None: nothing in the slice is loaded."""
        if self._local is None and self.loaded is not None:
            self._local = np.flatnonzero(self.loaded)
        return self._local

    @property
    def wait_ms(self) -> np.ndarray | None:
        """Per loaded variant (loaded_local), its queue wait: the part of extra_ms an idle cluster would not pay."""
        local = self.loaded_local
        return None if local is None else self._wait_ms[local]

    @property
    def held_overhead_ms(self) -> np.ndarray | None:
        """Per loaded variant (loaded_local), the overhead of the worker holding it with the shortest queue."""
        local = self.loaded_local
        return None if local is None else self._held_ms[local]

    def overhead_at(self, i: int) -> float:
        """The serving overhead counted in the prediction of the slice's variant `i` (the slow path)."""
        if self.loaded is not None and self.loaded[i]:
            return float(self._held_ms[i])
        load = self.load_overhead_ms
        return float(load[i] if isinstance(load, np.ndarray) else load)


@dataclass(slots=True)
class _Worker:
    backends: frozenset[str]
    cores: int
    free_cores: float
    free_memory_bytes: int
    alive: bool
    loaded: dict[str, float]  # variant -> queued samples, as WorkerState.loaded


@dataclass(frozen=True, slots=True)
class _LoadTarget:
    """Where one backend's loads go when the best-ranked worker lacks the memory: per need, `place`'s pick."""

    roomier_bytes: np.ndarray  # LoadRanking.roomier(): strictly increasing free memory...
    roomier_ms: np.ndarray  # ...and the overheads of those workers
    roomiest_ms: float  # the overhead of the worker a load nobody has room for goes to


class ClusterView:
    """The workers as the master knows them now, with the learned serving overhead of each worker's path.

    A worker without a learned overhead counts `overhead_ms_default` (the estimator's prior unless the caller
    knows better). `overhead_floor_ms` is what the path adds with nothing queued in front of the worker: it
    decides "out of reach" (no_variant) versus "the cluster is busy now" (late, or overloaded in strict mode);
    without one set, the least learned overhead (else the default). Only alive workers (registered,
    heartbeating, not draining) hold variants or take loads; a dead one keeps its state until it is back.
    """

    __slots__ = ("overhead_ms_default", "_floor_ms", "_learned_ms", "_least_learned", "_workers", "_holders",
                 "_rankings", "_live_backends", "_alive_overheads", "_backend_overheads", "_overhead_epoch",
                 "_targets", "_index", "_lat1_ms", "_loaded", "_held_wait", "_held_overhead", "_held_extra",
                 "_backend_ok", "_all_live", "_mixed")

    def __init__(self, overhead_ms_default: float = PRIOR_OVERHEAD_MS, overhead_floor_ms: float | None = None) -> None:
        self.overhead_ms_default = check_overhead_default(overhead_ms_default)
        self._floor_ms = None if overhead_floor_ms is None else max(0.0, float(overhead_floor_ms))
        self._learned_ms: dict[str, float] = {}
        self._least_learned = LazyHeap()  # (ms, worker id) of _learned_ms: the default floor is its top
        self._workers: dict[str, _Worker] = {}
        self._holders: dict[str, list[tuple[float, str]]] = {}  # variant -> alive (queue, worker id), sorted
        self._rankings: dict[str, LoadRanking] = {}  # backend -> its alive workers
        self._live_backends: Counter[str] = Counter()  # backend -> alive workers running it
        self._alive_overheads: Counter[float] = Counter()  # overhead ms -> alive workers with it
        self._backend_overheads: dict[str, Counter[float]] = {}  # the same, per backend
        self._overhead_epoch = 0  # bumped when an alive worker's overhead changes
        self._targets: dict[str, tuple[tuple[int, int], _LoadTarget]] = {}  # backend -> (key, cached target)
        # The projection onto one index, per position: held by an alive worker, and then, for its holder with
        # the shortest queue, the queue wait (queue x batch-1 latency), the overhead and the two summed.
        self._index: CatalogIndex | None = None
        self._lat1_ms: list[float] = []
        self._loaded = np.zeros(0, dtype=bool)
        self._held_wait = self._held_overhead = self._held_extra = np.zeros(0)
        self._backend_ok: np.ndarray | None = None  # per index backend: has a live worker; None until needed
        self._all_live = True
        # Per slice of several backends whose load targets differ: (their overheads, the array they make).
        self._mixed: dict[tuple[int, int], tuple[tuple[float, ...], np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._workers)

    # -- events --------------------------------------------------------------------------------------

    def upsert_worker(self, worker_id: str, backends: Iterable[str], cores: int, free_cores: float,
                      free_memory_bytes: int, alive: bool = True) -> None:
        """A worker registered, heartbeat, died, came back or started or stopped draining (alive=False while
        it drains). Its loaded variants are kept: change them with set_queue / drop_variant / set_loaded."""
        backends = frozenset(backends)
        w = self._workers.get(worker_id)
        if w is None:
            w = self._workers[worker_id] = _Worker(backends, int(cores), free_cores, free_memory_bytes, False, {})
        elif w.alive and (not alive or backends != w.backends):
            self._leave(worker_id, w)
        moved = free_cores != w.free_cores or free_memory_bytes != w.free_memory_bytes
        w.backends, w.cores, w.free_cores, w.free_memory_bytes = backends, int(cores), free_cores, free_memory_bytes
        if alive and not w.alive:
            self._enter(worker_id, w)
        elif w.alive and moved:
            for backend in backends:
                self._rankings[backend].put(worker_id, free_cores, free_memory_bytes)

    def remove_worker(self, worker_id: str) -> None:
        """A worker is forgotten (its learned overhead is not: `set_overhead(worker_id, None)` drops it)."""
        w = self._workers.pop(worker_id, None)
        if w is not None and w.alive:
            self._leave(worker_id, w)

    def set_queue(self, worker_id: str, variant: str, queued: float) -> None:
        """`variant` is loaded (or loading) on the worker with `queued` samples waiting: a dispatch, a result,
        a load. An unknown worker is ignored (it was removed)."""
        w = self._workers.get(worker_id)
        if w is None:
            return
        old = w.loaded.get(variant)
        if old is not None and old == queued:
            return
        w.loaded[variant] = queued
        if w.alive:
            entries = self._holders.setdefault(variant, [])
            if old is not None:
                del entries[bisect_left(entries, (old, worker_id))]
            insort(entries, (queued, worker_id))
            self._project(variant)

    def drop_variant(self, worker_id: str, variant: str) -> None:
        """The worker no longer holds `variant` (unloaded, evicted, its load failed)."""
        w = self._workers.get(worker_id)
        if w is None:
            return
        old = w.loaded.pop(variant, None)
        if old is not None and w.alive:
            self._unhold(variant, old, worker_id)
            self._project(variant)

    def set_loaded(self, worker_id: str, loaded: Mapping[str, float]) -> None:
        """The worker's whole map of loaded variants -> queued samples (a heartbeat's); only the differences
        cost anything."""
        w = self._workers.get(worker_id)
        if w is None:
            return
        for variant in [v for v in w.loaded if v not in loaded]:
            self.drop_variant(worker_id, variant)
        for variant, queued in loaded.items():
            self.set_queue(worker_id, variant, queued)

    def put(self, state: WorkerState) -> None:
        """A worker as one WorkerState: upsert_worker and set_loaded in one call."""
        self.upsert_worker(state.worker_id, state.backends, state.cores, state.free_cores, state.free_memory_bytes,
                           state.alive)
        self.set_loaded(state.worker_id, state.loaded)

    def set_overhead(self, worker_id: str, overhead_ms: float | None) -> None:
        """The learned serving overhead (ms) of the path to a worker; None: forget it (the default counts)."""
        old = self.overhead_of(worker_id)
        if overhead_ms is None:
            self._learned_ms.pop(worker_id, None)
            self._least_learned.discard(worker_id)
        else:
            self._learned_ms[worker_id] = float(overhead_ms)
            self._least_learned.push(worker_id, (float(overhead_ms), worker_id))
        new = self.overhead_of(worker_id)
        w = self._workers.get(worker_id)
        if new == old or w is None or not w.alive:
            return
        for backend in (None, *w.backends):
            self._count_overhead(backend, old, -1)
            self._count_overhead(backend, new, +1)
        self._overhead_epoch += 1
        holders = self._holders
        for variant in w.loaded:
            if holders[variant][0][1] == worker_id:
                self._project(variant)

    def set_overhead_floor(self, overhead_floor_ms: float | None) -> None:
        """What the path adds with nothing queued (ms); None: the least learned overhead, else the default."""
        self._floor_ms = None if overhead_floor_ms is None else max(0.0, float(overhead_floor_ms))

    @contextmanager
    def excluding(self, worker_ids: Iterable[str]) -> Iterator[ClusterView]:
        """The view without these workers while the block runs (they count as not alive): a query's retry
        after its worker could not take it. Costs O(variants on them), not a copy of the cluster."""
        left = [(wid, w) for wid in set(worker_ids) if (w := self._workers.get(wid)) is not None and w.alive]
        for worker_id, w in left:
            self._leave(worker_id, w)
        try:
            yield self
        finally:
            for worker_id, w in left:
                if self._workers.get(worker_id) is w and not w.alive:
                    self._enter(worker_id, w)

    # -- reads ---------------------------------------------------------------------------------------

    def overhead_of(self, worker_id: str) -> float:
        """The serving overhead (ms) of the path to `worker_id`: its learned figure, else the default."""
        return self._learned_ms.get(worker_id, self.overhead_ms_default)

    @property
    def overhead_floor_ms(self) -> float:
        if self._floor_ms is not None:
            return self._floor_ms
        least = self._least_learned.top()[0] if self._least_learned else self.overhead_ms_default
        return max(0.0, least)

    def uniform_overhead_ms(self) -> float | None:
        """The overhead shared by every alive worker (the default when none is alive), or None when they differ."""
        counts = self._alive_overheads
        if len(counts) > 1:
            return None
        return next(iter(counts)) if counts else self.overhead_ms_default

    def least_loaded_holder(self, variant: str) -> tuple[float, str] | None:
        """(queue length, worker_id) of the alive worker holding `variant` with the shortest queue, or None."""
        entries = self._holders.get(variant)
        return entries[0] if entries else None

    def holders(self, variant: str) -> tuple[tuple[float, str], ...]:
        """(queue length, worker_id) of every alive worker holding `variant`, shortest queue first."""
        return tuple(self._holders.get(variant, ()))

    def live_backends(self) -> frozenset[str]:
        return frozenset(self._live_backends)

    def place_query(self, backend: str, memory_bytes: int) -> str | None:
        """Where a query's load of a variant goes: `placement.place(workers, need, "query")`, without the scan."""
        ranking = self._rankings.get(backend)
        return ranking.place(memory_bytes) if ranking is not None else None

    def workers(self) -> tuple[WorkerState, ...]:
        """Every worker as a WorkerState (O(workers): for the control path, not per query)."""
        return tuple(WorkerState(wid, w.backends, w.cores, w.free_cores, w.free_memory_bytes, dict(w.loaded),
                                 w.alive) for wid, w in self._workers.items())

    def group(self, index: CatalogIndex, start: int, end: int) -> GroupView:
        """The index slice [start, end) (a model's or a task's variants) as the cluster sees it now.

        Each variant's overhead is that of the worker the query would go to: a loaded variant's least-loaded
        holder, else the worker `place` would load it on. A few vectorised operations over the slice.
        """
        if index is not self._index:
            self._bind(index)
        uniform = self.uniform_overhead_ms()
        # Not loaded anywhere: pay the load first, on the worker it would be placed on.
        load_overhead = uniform if uniform is not None else self._load_overhead(index, start, end)
        extra = index.load_time_ms[start:end] + load_overhead
        loaded = self._loaded[start:end]
        if loaded.any():  # loaded: wait behind the shortest queue, each queued query taking about a batch-1 run
            np.copyto(extra, self._held_extra[start:end], where=loaded)
        else:
            loaded = None
        if self._backend_ok is None:
            live = self._live_backends
            self._backend_ok = np.asarray([b in live for b in index.key_names], dtype=bool)
            self._all_live = bool(self._backend_ok.all())
        runnable = None
        any_runnable = True
        if not self._all_live:
            runnable = self._backend_ok[index.key_code[start:end]]
            if loaded is not None:
                runnable |= loaded
            any_runnable = bool(runnable.any())
        return GroupView(extra, load_overhead, loaded, runnable, any_runnable, self._held_wait[start:end],
                         self._held_overhead[start:end])

    # -- upkeep --------------------------------------------------------------------------------------

    def _enter(self, worker_id: str, w: _Worker) -> None:
        """The worker takes work again (or for the first time): it ranks for loads and its variants count."""
        w.alive = True
        for backend in w.backends:
            ranking = self._rankings.get(backend)
            if ranking is None:
                ranking = self._rankings[backend] = LoadRanking()
            ranking.put(worker_id, w.free_cores, w.free_memory_bytes)
            self._live_backends[backend] += 1
            if self._live_backends[backend] == 1:
                self._backend_ok = None
        for backend in (None, *w.backends):
            self._count_overhead(backend, self.overhead_of(worker_id), +1)
        for variant, queued in w.loaded.items():
            insort(self._holders.setdefault(variant, []), (queued, worker_id))
            self._project(variant)

    def _leave(self, worker_id: str, w: _Worker) -> None:
        """The worker takes no new work: out of the rankings, its variants no longer held."""
        w.alive = False
        for backend in w.backends:
            self._rankings[backend].discard(worker_id)
            self._live_backends[backend] -= 1
            if not self._live_backends[backend]:
                del self._live_backends[backend]
                self._backend_ok = None
        for backend in (None, *w.backends):
            self._count_overhead(backend, self.overhead_of(worker_id), -1)
        for variant, queued in w.loaded.items():
            self._unhold(variant, queued, worker_id)
            self._project(variant)

    def _unhold(self, variant: str, queued: float, worker_id: str) -> None:
        entries = self._holders[variant]
        del entries[bisect_left(entries, (queued, worker_id))]
        if not entries:
            del self._holders[variant]

    def _count_overhead(self, backend: str | None, overhead_ms: float, delta: int) -> None:
        """Count an alive worker's overhead in or out: among all workers (backend None) or one backend's."""
        if backend is None:
            counts = self._alive_overheads
        else:
            counts = self._backend_overheads.get(backend)
            if counts is None:
                counts = self._backend_overheads[backend] = Counter()
        counts[overhead_ms] += delta
        if not counts[overhead_ms]:
            del counts[overhead_ms]

    def _project(self, variant: str) -> None:
        """Write the variant's shortest queue and its holder's overhead into the index arrays."""
        index = self._index
        pos = index.pos.get(variant) if index is not None else None
        if pos is None:
            return  # no index yet, or a variant it does not select by model or task (unprofiled, unknown)
        entries = self._holders.get(variant)
        if entries:
            queued, worker_id = entries[0]
            wait = queued * self._lat1_ms[pos]
            overhead = self.overhead_of(worker_id)
            self._loaded[pos] = True
            self._held_wait[pos] = wait
            self._held_overhead[pos] = overhead
            self._held_extra[pos] = wait + overhead
        else:
            self._loaded[pos] = False

    def _bind(self, index: CatalogIndex) -> None:
        """Project onto a new index (the catalog changed): O(variants held), once per catalog change."""
        self._index = index
        self._lat1_ms = index.lat1_ms.tolist()
        self._loaded = np.zeros(len(index), dtype=bool)
        self._held_wait, self._held_overhead, self._held_extra = (np.zeros(len(index)) for _ in range(3))
        self._backend_ok = None
        self._mixed = {}
        for variant in self._holders:
            self._project(variant)

    def _load_overhead(self, index: CatalogIndex, start: int, end: int) -> float | np.ndarray:
        """Per variant of the slice, the overhead of the worker `place(..., "query")` would load it on.

        One scalar in the common case: the slice's variants all go to the best-ranked worker of their one
        backend (it has the memory of the largest free), or the backends' targets share an overhead.
        """
        parts = []  # (mask over the slice or None for all of it, overhead: scalar or per masked variant)
        for code, mask, max_memory in index.span_keys(start, end):
            backend = index.key_names[code]
            ranking = self._rankings.get(backend)
            if not ranking:
                continue  # no live worker runs it: not runnable, masked out anyway
            overheads = self._backend_overheads[backend]
            if len(overheads) == 1:  # one overhead for all its workers
                parts.append((mask, next(iter(overheads))))
                continue
            free, worker_id = ranking.best()
            if free >= max_memory:  # all go to the best-ranked worker
                parts.append((mask, self.overhead_of(worker_id)))
                continue
            # The first ranked worker with the memory free is the first of the roomier ones that has it.
            target = self._load_target(backend, ranking)
            memory = index.peak_memory_bytes[start:end]
            at = np.searchsorted(target.roomier_bytes, memory if mask is None else memory[mask], side="left")
            size = target.roomier_ms.size
            parts.append((mask, np.where(at < size, target.roomier_ms[np.minimum(at, size - 1)],
                                         target.roomiest_ms)))
        if not parts:
            return self.overhead_ms_default
        values = tuple(value for _, value in parts)
        scalar = not any(isinstance(value, np.ndarray) for value in values)
        if scalar:
            if len(set(values)) == 1:
                return values[0]
            # With learned overheads, a slice's backends go to workers of different overheads on most queries,
            # and mostly the same ones as on the last query: reuse the array (select only reads it).
            cached = self._mixed.get((start, end))
            if cached is not None and cached[0] == values:
                return cached[1]
        out = np.full(end - start, self.overhead_ms_default, dtype=np.float64)
        for mask, value in parts:
            if mask is None:
                out[:] = value
            else:
                out[mask] = value
        if scalar:
            self._mixed[(start, end)] = (values, out)
        return out

    def _load_target(self, backend: str, ranking: LoadRanking) -> _LoadTarget:
        """The backend's roomier workers and their overheads, cached until its ranking or an overhead changes."""
        key = (ranking.version, self._overhead_epoch)
        cached = self._targets.get(backend)
        if cached is not None and cached[0] == key:
            return cached[1]
        roomier = ranking.roomier()
        target = _LoadTarget(np.asarray([m for m, _ in roomier], dtype=np.float64),
                             np.asarray([self.overhead_of(w) for _, w in roomier], dtype=np.float64),
                             self.overhead_of(ranking.roomiest()))
        self._targets[backend] = (key, target)
        return target
