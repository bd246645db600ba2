"""Pure tests of the incremental cluster view: after any sequence of events it answers as a fresh snapshot does."""

from __future__ import annotations

import random

import pytest

from infaas_cli.errors import InfaasError
from infaas_cli.policy.cluster_view import ClusterView
from infaas_cli.policy.placement import LoadRanking, VariantNeed, WorkerState, place
from infaas_cli.policy.selection import CatalogIndex, ClusterSnapshot, PriceTable, Query, VariantInfo, select

PRICES = PriceTable(cpu_usd_per_core_second=1e-3, gpu_usd_per_device_second=1e-2,
                    inferentia_usd_per_device_second=5e-3)
GIB = 1 << 30
BACKENDS = ("ort-cpu", "ort-gpu", "neuron")


def random_index(rng: random.Random) -> CatalogIndex:
    """Three models over two tasks, CPU and GPU variants (neuron has none: its workers never matter)."""
    infos = []
    for i in range(rng.randint(4, 16)):
        model = f"m{i % 3}"
        gpu = rng.random() < 0.3
        lat1 = rng.choice((0.5, 1.0, 2.0, rng.uniform(0.1, 8.0)))
        max_batch = rng.choice((1, 4, 8))
        infos.append(VariantInfo(
            name=f"{model}/v{i}", model=model, task="digits-cls" if model != "m2" else "other", dataset="digits",
            backend="ort-gpu" if gpu else "ort-cpu", hardware="gpu" if gpu else "cpu", recipe="fp32",
            threads=rng.choice((1, 2, 4)), max_batch=max_batch, accuracy=rng.choice((None, 0.8, 0.9, 0.95)),
            load_time_ms=rng.choice((0.0, 5.0, rng.uniform(1, 50))), peak_memory_bytes=rng.randint(0, 6) * GIB,
            batch_latency_ms=tuple((b, lat1 * b ** 0.8) for b in (1, 4, 8) if b <= max_batch)
            if rng.random() < 0.95 else ()))
    return CatalogIndex(infos, PRICES)


def random_worker(rng: random.Random, worker_id: str, names: list[str]) -> WorkerState:
    """Few distinct free-core counts and memories, so that ranks tie and the tie-breaks are exercised."""
    backends = frozenset(rng.sample(BACKENDS, rng.randint(1, 2)))
    free_cores = rng.choice((-2, 0, 1, 2, 4, 4, 8)) if rng.random() < 0.9 else rng.uniform(-1, 8)
    loaded = {n: rng.randint(0, 6) for n in rng.sample(names, rng.randint(0, min(4, len(names))))}
    return WorkerState(worker_id, backends, 8, free_cores, rng.randint(0, 8) * GIB, loaded, rng.random() < 0.8)


def random_queries(rng: random.Random, index: CatalogIndex, count: int) -> list[Query]:
    queries = []
    for _ in range(count):
        slo = {"batch_size": rng.choice((1, 1, 2, 4, 8)), "latency_ms": rng.choice((None, 1.0, 3.0, 8.0, 30.0, 100.0)),
               "min_accuracy": rng.choice((None, None, 0.85, 0.93)), "objective": rng.choice(("cost", "latency")),
               "max_cost_usd": rng.choice((None, None, 1e-6, 1e-4)), "slo_mode": rng.choice(("best_effort", "strict"))}
        kind = rng.choice(("variant", "model", "task"))
        if kind == "variant":
            queries.append(Query(kind="variant", variant=rng.choice(sorted(index.infos) + ["m0/nope"]),
                                 batch_size=slo["batch_size"], latency_ms=slo["latency_ms"], slo_mode=slo["slo_mode"]))
        elif kind == "model":
            queries.append(Query(kind="model", model=rng.choice(("m0", "m1", "m2")), **slo))
        else:
            queries.append(Query(kind="task", task=rng.choice(("digits-cls", "other")), dataset="digits", **slo))
    return queries


def outcome(query: Query, index: CatalogIndex, cluster) -> tuple:
    """A decision, or the error it raised with everything a client sees of it."""
    try:
        return ("ok", select(query, index, cluster))
    except InfaasError as exc:
        return (exc.code, str(exc), exc.details)


class Mirror:
    """Random events applied both to a ClusterView and to plain WorkerStates (the truth a snapshot is built of)."""

    def __init__(self, rng: random.Random, names: list[str]) -> None:
        self.rng, self.names = rng, names
        self.view = ClusterView(overhead_ms_default=rng.choice((0.0, 1.0, 1.5)))
        self.states: dict[str, WorkerState] = {}
        self.overhead_ms: dict[str, float] = {}
        self.floor_ms: float | None = None

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(tuple(self.states.values()), overhead_ms=dict(self.overhead_ms),
                               overhead_ms_default=self.view.overhead_ms_default, overhead_floor_ms=self.floor_ms)

    def step(self) -> None:
        rng, view = self.rng, self.view
        ids = sorted(self.states)
        r = rng.random()
        if r < 0.2 or not ids:  # register, or a heartbeat with new free cores, memory, liveness
            state = random_worker(rng, rng.choice(ids) if ids and rng.random() < 0.6 else f"w{rng.randint(0, 40)}",
                                  self.names)
            old = self.states.get(state.worker_id)
            if old is not None and rng.random() < 0.5:  # the heartbeat does not change the loaded map
                state = WorkerState(state.worker_id, state.backends, state.cores, state.free_cores,
                                    state.free_memory_bytes, old.loaded, state.alive)
                view.upsert_worker(state.worker_id, state.backends, state.cores, state.free_cores,
                                   state.free_memory_bytes, state.alive)
            else:
                view.put(state)
            self.states[state.worker_id] = state
            return
        wid = rng.choice(ids)
        state = self.states[wid]
        loaded = dict(state.loaded)
        if r < 0.25:
            view.remove_worker(wid)
            del self.states[wid]
            return
        if r < 0.6:  # a dispatch, a result or a load
            variant = rng.choice(self.names)
            loaded[variant] = max(0, loaded.get(variant, 0) + rng.choice((-2, -1, 1, 1, 3)))
            view.set_queue(wid, variant, loaded[variant])
        elif r < 0.7 and loaded:
            variant = rng.choice(sorted(loaded))
            del loaded[variant]
            view.drop_variant(wid, variant)
        elif r < 0.8:  # draining, dead, back
            alive = not state.alive
            view.upsert_worker(wid, state.backends, state.cores, state.free_cores, state.free_memory_bytes, alive)
            self.states[wid] = WorkerState(wid, state.backends, state.cores, state.free_cores,
                                           state.free_memory_bytes, loaded, alive)
            return
        elif r < 0.95:  # a reply teaches an overhead, or the estimate is forgotten
            ms = rng.choice((None, 0.5, 1.0, 2.0, 4.0, rng.uniform(0, 5)))
            view.set_overhead(wid, ms)
            if ms is None:
                self.overhead_ms.pop(wid, None)
            else:
                self.overhead_ms[wid] = ms
        else:
            self.floor_ms = rng.choice((None, 0.0, 0.3, 2.0))
            view.set_overhead_floor(self.floor_ms)
        self.states[wid] = WorkerState(wid, state.backends, state.cores, state.free_cores, state.free_memory_bytes,
                                       loaded, state.alive)


@pytest.mark.parametrize("seed", range(40))
def test_an_updated_view_decides_as_a_fresh_snapshot_of_the_same_state(seed):
    rng = random.Random(seed)
    idx = random_index(rng)
    mirror = Mirror(rng, sorted(idx.infos) + ["x/unknown"])
    for _ in range(12):
        for _ in range(rng.randint(1, 25)):
            mirror.step()
        if rng.random() < 0.2:  # a catalog change: the view projects onto the new index
            idx = random_index(random.Random(rng.random()))
            mirror.names[:] = sorted(idx.infos) + ["x/unknown"]
        snap = mirror.snapshot()
        for q in random_queries(rng, idx, 15):
            assert outcome(q, idx, mirror.view) == outcome(q, idx, snap), q
        assert {w.worker_id: w for w in mirror.view.workers()} == mirror.states


@pytest.mark.parametrize("seed", range(20))
def test_group_predictions_are_each_variants_figure_on_its_worker(seed):
    # Brute force, from the plain worker states: the least-loaded holder, else where `place` loads it.
    rng = random.Random(seed)
    idx = random_index(rng)
    mirror = Mirror(rng, sorted(idx.infos))
    for _ in range(60):
        mirror.step()
    view, states = mirror.view, list(mirror.states.values())
    start, end = 0, len(idx)
    group = view.group(idx, start, end)
    for i, info in enumerate(idx.order):
        held = [(w.loaded[info.name], w.worker_id) for w in states if w.alive and info.name in w.loaded]
        if held:
            queued, worker_id = min(held)
            expected = queued * idx.lat1_ms[i] + view.overhead_of(worker_id)
        else:
            where = place(states, VariantNeed(info.name, info.backend, info.threads, info.peak_memory_bytes))
            if not where:
                assert not group.runnable[i]
                continue
            expected = info.load_time_ms + view.overhead_of(where[0])
        assert group.extra_ms[i] == pytest.approx(expected), info.name
        assert group.overhead_at(i) == view.overhead_of(worker_id if held else where[0])


@pytest.mark.parametrize("seed", range(10))
def test_excluding_workers_decides_as_a_snapshot_without_them(seed):
    rng = random.Random(seed)
    idx = random_index(rng)
    mirror = Mirror(rng, sorted(idx.infos))
    for _ in range(80):
        mirror.step()
    gone = set(rng.sample(sorted(mirror.states), min(3, len(mirror.states))))
    without = ClusterSnapshot(tuple(w for w in mirror.states.values() if w.worker_id not in gone),
                              overhead_ms=dict(mirror.overhead_ms),
                              overhead_ms_default=mirror.view.overhead_ms_default,
                              overhead_floor_ms=mirror.view.overhead_floor_ms)
    queries = random_queries(rng, idx, 40)
    before = [outcome(q, idx, mirror.view) for q in queries]
    with mirror.view.excluding(gone) as view:
        assert [outcome(q, idx, view) for q in queries] == [outcome(q, idx, without) for q in queries]
    assert [outcome(q, idx, mirror.view) for q in queries] == before  # back as they were


def test_load_ranking_answers_as_place_after_moves_and_removals():
    rng = random.Random(3)
    ranking, workers = LoadRanking(), {}
    for step in range(2000):
        wid = f"w{rng.randint(0, 30)}"
        if rng.random() < 0.2:
            ranking.discard(wid)
            workers.pop(wid, None)
        else:
            workers[wid] = WorkerState(wid, frozenset({"ort-cpu"}), 8, rng.choice((0, 1, 2, 4, 8, 2.5)),
                                       rng.randint(0, 10) * GIB)
            ranking.put(wid, workers[wid].free_cores, workers[wid].free_memory_bytes)
        memory = rng.randint(0, 11) * GIB
        expected = place(workers.values(), VariantNeed("m/a", "ort-cpu", 1, memory))
        assert ranking.place(memory) == (expected[0] if expected else None), step
        assert len(ranking) == len(workers)


def test_fractional_queues_count_the_overhead_of_the_holder_the_decision_names():
    # A slowed-down worker's queue is fractional (queue x slowdown + slowdown - 1): the shortest queue, then the
    # id, still picks the holder whose overhead the prediction counts (w4 here, though w1 sorts first by id).
    info = VariantInfo(name="m/a", model="m", task="digits-cls", dataset="digits", backend="ort-cpu", hardware="cpu",
                       recipe="fp32", threads=1, max_batch=1, accuracy=0.9, load_time_ms=0.0, peak_memory_bytes=0,
                       batch_latency_ms=((1, 2.0),))
    idx = CatalogIndex([info], PRICES)
    cpu = frozenset({"ort-cpu"})
    workers = [WorkerState("w1", cpu, 8, 4, GIB, {"m/a": 1.6}), WorkerState("w2", cpu, 8, 4, GIB),
               WorkerState("w3", cpu, 8, 4, GIB), WorkerState("w4", cpu, 8, 4, GIB, {"m/a": 1.5})]
    snap = ClusterSnapshot(workers, overhead_ms={"w1": 1.0, "w4": 5.0})
    d = select(Query(kind="task", task="digits-cls", dataset="digits"), idx, snap)
    assert (d.worker_id, d.predicted_latency_ms) == ("w4", 2.0 + 1.5 * 2.0 + 5.0)
    assert select(Query(kind="variant", variant="m/a"), idx, snap).predicted_latency_ms == d.predicted_latency_ms


def test_events_for_unknown_workers_are_ignored_and_dead_workers_hold_nothing():
    view = ClusterView(overhead_ms_default=1.0)
    view.set_queue("ghost", "m/a", 3)
    view.drop_variant("ghost", "m/a")
    view.set_loaded("ghost", {"m/a": 1})
    view.upsert_worker("w1", ["ort-cpu"], 8, 4, GIB)
    view.set_queue("w1", "m/a", 2)
    assert view.least_loaded_holder("m/a") == (2, "w1")
    view.upsert_worker("w1", ["ort-cpu"], 8, 4, GIB, alive=False)  # draining: keeps its state, holds nothing
    assert (view.least_loaded_holder("m/a"), view.live_backends(), view.place_query("ort-cpu", 0)) == \
        (None, frozenset(), None)
    view.upsert_worker("w1", ["ort-cpu"], 8, 4, GIB)
    assert view.least_loaded_holder("m/a") == (2, "w1")
    view.remove_worker("w1")
    assert (len(view), view.least_loaded_holder("m/a"), view.live_backends()) == (0, None, frozenset())


def test_overheads_uniform_then_differing_and_the_floor():
    view = ClusterView(overhead_ms_default=1.0)
    assert (view.uniform_overhead_ms(), view.overhead_floor_ms) == (1.0, 1.0)
    view.upsert_worker("w1", ["ort-cpu"], 8, 4, GIB)
    view.upsert_worker("w2", ["ort-cpu"], 8, 4, GIB)
    view.set_overhead("w1", 3.0)
    assert (view.uniform_overhead_ms(), view.overhead_floor_ms) == (None, 3.0)  # w2 counts the default
    view.set_overhead("w2", 3.0)
    assert view.uniform_overhead_ms() == 3.0
    view.set_overhead("w1", 0.5)
    view.upsert_worker("w2", ["ort-cpu"], 8, 4, GIB, alive=False)
    assert (view.uniform_overhead_ms(), view.overhead_floor_ms) == (0.5, 0.5)
    view.set_overhead_floor(0.2)
    assert view.overhead_floor_ms == 0.2
    with pytest.raises(InfaasError, match="overhead_ms_default"):
        ClusterView(overhead_ms_default=-1.0)
