"""Pure tests of LRU eviction on a worker: plain numbers."""

from __future__ import annotations

from infaas_cli.policy.eviction import Eviction, Resident, plan_eviction


def residents(loaded: dict[str, tuple[float, int, bool]]) -> list[Resident]:
    """variant -> (last used s, threads, idle), the shape the old `autoscale.evict_lru` took."""
    return [Resident(name, last_used, threads, idle=idle) for name, (last_used, threads, idle) in loaded.items()]


def victims(loaded: dict[str, tuple[float, int, bool]], needed_threads: int, free_threads: int) -> list[str]:
    return list(plan_eviction(residents(loaded), needed_threads, free_threads).victims)


# -- cores (moved from test_autoscale: the assertions of the former evict_lru) ---------------------------

def test_evict_lru_order():
    loaded = {"a": (30.0, 2, True), "b": (10.0, 1, True), "c": (5.0, 4, False), "d": (20.0, 2, True)}
    assert victims(loaded, needed_threads=2, free_threads=2) == []  # it fits already
    assert victims(loaded, needed_threads=2, free_threads=1) == ["b"]
    assert victims(loaded, needed_threads=4, free_threads=1) == ["b", "d"]  # c is older but busy
    assert victims(loaded, needed_threads=6, free_threads=1) == ["b", "d", "a"]


def test_evict_lru_cannot_fit():
    loaded = {"a": (30.0, 2, True), "busy": (1.0, 8, False)}
    assert victims(loaded, needed_threads=4, free_threads=1) == []
    assert victims({}, needed_threads=1, free_threads=0) == []


def test_fits_is_reported():
    loaded = {"a": (30.0, 2, True), "busy": (1.0, 8, False)}
    assert plan_eviction(residents(loaded), 2, 2) == Eviction((), True)
    assert plan_eviction(residents(loaded), 3, 1) == Eviction(("a",), True)
    # Cannot fit: nothing is unloaded, the load waits for the busy variant.
    assert plan_eviction(residents(loaded), 4, 1) == Eviction((), False)


def test_equal_last_use_breaks_ties_by_name():
    loaded = {"b": (5.0, 1, True), "a": (5.0, 1, True)}
    assert victims(loaded, needed_threads=1, free_threads=0) == ["a"]


def test_oversubscribed_worker_has_negative_free_threads():
    loaded = {"a": (1.0, 4, True), "b": (2.0, 4, True), "busy": (0.0, 1, False)}
    # 4 cores run 9 threads (a variant once loaded alone): -5 free, 2 needed -> both idle ones go.
    assert victims(loaded, needed_threads=2, free_threads=-5) == ["a", "b"]


# -- alone, a variant may use every core ------------------------------------------------------------

def test_alone_a_variant_may_use_every_core():
    # 4 cores, nothing loaded: an 8-thread variant still loads.
    assert plan_eviction([], threads=8, free_threads=4) == Eviction((), True)
    # Every loaded variant is idle: unloading them all leaves it alone.
    loaded = {"a": (3.0, 2, True), "b": (1.0, 1, True)}
    assert plan_eviction(residents(loaded), threads=8, free_threads=1) == Eviction(("b", "a"), True)


def test_not_alone_while_another_load_is_in_progress_or_a_variant_is_busy():
    loaded = {"a": (3.0, 2, True)}
    assert plan_eviction(residents(loaded), threads=8, free_threads=1, loading=True) == Eviction((), False)
    assert plan_eviction([], threads=8, free_threads=2, loading=True) == Eviction((), False)
    loaded = {"a": (3.0, 2, True), "busy": (9.0, 1, False)}
    assert plan_eviction(residents(loaded), threads=8, free_threads=1) == Eviction((), False)


def test_parked_queries_make_a_variant_not_idle():
    # The worker marks a variant with queries parked for it as not idle: it is never a victim.
    loaded = [Resident("parked", 1.0, 2, idle=False), Resident("free", 5.0, 2)]
    assert plan_eviction(loaded, threads=2, free_threads=0) == Eviction(("free",), True)


# -- memory ------------------------------------------------------------------------------------------

GIB = 1 << 30


def test_memory_evicts_lru_until_the_profiled_peaks_cover_the_load():
    loaded = [Resident("old", 1.0, 1, memory_bytes=GIB), Resident("mid", 2.0, 1, memory_bytes=GIB),
              Resident("new", 3.0, 1, memory_bytes=GIB)]
    plan = plan_eviction(loaded, threads=1, free_threads=4, memory_bytes=3 * GIB, free_memory_bytes=GIB)
    assert plan == Eviction(("old", "mid"), True)
    # Enough memory already: nothing goes.
    plan = plan_eviction(loaded, threads=1, free_threads=4, memory_bytes=GIB, free_memory_bytes=2 * GIB)
    assert plan == Eviction((), True)
    # No memory figure for the load (unprofiled) or the worker: memory is not looked at.
    assert plan_eviction(loaded, 1, 4, memory_bytes=0, free_memory_bytes=0).victims == ()
    assert plan_eviction(loaded, 1, 4, memory_bytes=GIB, free_memory_bytes=None).victims == ()


def test_memory_never_blocks_a_load():
    # Every idle variant goes and memory is still short: the load may fit anyway (profiles overestimate).
    loaded = [Resident("a", 1.0, 1, memory_bytes=GIB), Resident("busy", 0.0, 1, memory_bytes=GIB, idle=False)]
    plan = plan_eviction(loaded, threads=1, free_threads=2, memory_bytes=8 * GIB, free_memory_bytes=GIB)
    assert plan == Eviction(("a",), True)


def test_memory_victims_count_towards_the_cores():
    loaded = [Resident("a", 1.0, 2, memory_bytes=GIB), Resident("b", 2.0, 2, memory_bytes=GIB),
              Resident("busy", 0.0, 1, idle=False)]
    # Memory needs a to go; its 2 threads plus the 1 free make room for 3: b stays.
    plan = plan_eviction(loaded, threads=3, free_threads=1, memory_bytes=2 * GIB, free_memory_bytes=GIB)
    assert plan == Eviction(("a",), True)
    # 6 threads cannot fit beside the busy one: nothing is unloaded, not even for memory.
    plan = plan_eviction(loaded, threads=6, free_threads=1, memory_bytes=2 * GIB, free_memory_bytes=GIB)
    assert plan == Eviction((), False)
