"""Benchmark: decision time of the selection policy, on a synthetic 10,000-variant catalog and up to 10,000 workers.

Catalog: 10 tasks x 10 models x 100 variants (threads, max batch, recipe, CPU/GPU), built from
records through `build_index`. Each `select` call is timed with time.perf_counter_ns over mixed queries
(model-less and per-model, by variant, varied SLOs and objectives, some impossible).

* catalog cases: 8 workers (2 with a GPU) with a few hundred variants loaded; also the worst case of one
  task holding all 10,000 variants. "static": one unchanging ClusterView; "events": the master's pattern,
  each decision followed by its dispatch (`set_queue`), results finishing earlier queries and heartbeats.
* scaling: the same queries on 10, 1,000 and 10,000 workers (20% with a GPU, 20 variants loaded each),
  with events between queries, once with one serving overhead for all workers and once with a learned
  overhead per worker (a reply teaching one every query); then the cost of each ClusterView event.

Target: select p99 <= 50 us, whatever the number of workers; events a few us. `--clock cpu` times the
thread's CPU time instead of the wall clock: on a shared machine, preemption then stays out of the tails.

    python benchmarks/selection.py [--queries 20000] [--workers 10,1000,10000] [--clock wall|cpu] [--seed 0]
                                   [--output FILE]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from infaas_cli.errors import InfaasError
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.policy.cluster_view import ClusterView
from infaas_cli.policy.selection import CatalogIndex, Decision, Query, WorkerState, build_index, load_prices, select

GIB = 1 << 30
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}
clock_ns = CLOCKS["wall"]  # what every timing reads; main() sets it from --clock
RECIPES = {  # recipe -> (latency factor, accuracy drop)
    "fp32o1": (1.0, 0.0), "fp32o3": (0.85, 0.0), "fp16": (0.6, 0.002), "int8d": (0.55, 0.01), "int8s": (0.45, 0.015),
}
THREADS = (1, 2, 4, 8)
MAX_BATCHES = (1, 4, 8, 16, 32)


def synthetic_catalog(rng: random.Random, tasks: int, models_per_task: int, variants_per_model: int,
                      one_task: bool = False):
    models, variants, profiles = [], [], []
    for t in range(tasks):
        for m in range(models_per_task):
            task = "task-0" if one_task else f"task-{t}"
            name = f"{task if not one_task else f'task-{t}'}-model-{m}"
            base_ms = rng.uniform(0.05, 20.0)  # batch-1 latency of the fp32, 1-thread build
            base_acc = rng.uniform(0.70, 0.995)
            models.append(ModelRecord(
                name=name, task=task, dataset="set-0", artifact_sha256="0" * 64, source_file=f"{name}.onnx",
                size_bytes=1, inputs=[], outputs=[], batch_dim="dynamic", max_batch=32, opset=17, producer="bench",
                accuracy=base_acc, accuracy_metric="top1", validation_sha256=None, validation_samples=0,
                registered_at=0.0))
            seen: set[str] = set()
            while len(seen) < variants_per_model:
                gpu = rng.random() < 0.1
                recipe = rng.choice(list(RECIPES))
                threads = rng.choice(THREADS)
                max_batch = rng.choice(MAX_BATCHES)
                backend, hardware = ("ort-gpu", "gpu") if gpu else ("ort-cpu", "cpu")
                vname = f"{name}/{backend}-{recipe}-t{threads}-b{max_batch}-{len(seen)}"
                seen.add(vname)
                factor, drop = RECIPES[recipe]
                lat1 = base_ms * factor / threads ** 0.7 * (0.15 if gpu else 1.0) * rng.uniform(0.9, 1.1)
                batches = {str(b): {"p50_ms": lat1 * b ** 0.8 * 0.9, "p95_ms": lat1 * b ** 0.8,
                                    "p99_ms": lat1 * b ** 0.8 * 1.2, "mean_ms": lat1 * b ** 0.8 * 0.92,
                                    "throughput_qps": b / (lat1 * b ** 0.8) * 1e3, "runs": 50}
                           for b in MAX_BATCHES if b <= max_batch}
                acc = None if rng.random() < 0.02 else max(0.0, base_acc - drop - rng.uniform(0, 0.005))
                variants.append(VariantRecord(
                    name=vname, model=name, backend=backend, hardware=hardware, recipe=recipe,
                    precision=recipe[:4], threads=threads, max_batch=max_batch, artifact_sha256="1" * 64,
                    accuracy=acc, accuracy_metric="top1", build_time_ms=1.0, created_at=0.0))
                if rng.random() < 0.98:  # a few variants stay unprofiled (reachable by name only)
                    profiles.append(ProfileRecord(
                        variant=vname, model=name, hardware_id=hardware, hardware={},
                        load_time_ms=rng.uniform(20, 500), peak_memory_bytes=rng.randint(10 << 20, 2 * GIB),
                        batches=batches, measured_at=1.0))
    return models, variants, profiles


def synthetic_workers(rng: random.Random, variants: list[VariantRecord], workers: int, loaded_per_worker: int,
                      gpu_share: float) -> list[WorkerState]:
    """Workers as heartbeats describe them: whole free cores (-2..16), free memory in GiB, a few dead."""
    cpu = [v.name for v in variants if v.backend == "ort-cpu"]
    gpu = [v.name for v in variants if v.backend == "ort-gpu"]
    states = []
    for i in range(workers):
        has_gpu = i < max(1, int(workers * gpu_share))
        held = rng.sample(cpu + gpu if has_gpu else cpu, loaded_per_worker)
        states.append(WorkerState(
            worker_id=f"worker-{i}", backends=frozenset({"ort-cpu", "ort-gpu"} if has_gpu else {"ort-cpu"}),
            cores=16, free_cores=rng.randint(-2, 16), free_memory_bytes=rng.randint(1, 64) * GIB,
            loaded={name: rng.randint(0, 20) for name in held}, alive=i % 50 != 49))  # 2% dead
    return states


def build_view(states: list[WorkerState], overhead_ms: dict[str, float] | None = None) -> ClusterView:
    view = ClusterView()
    for worker_id, ms in (overhead_ms or {}).items():
        view.set_overhead(worker_id, ms)
    for state in states:
        view.put(state)
    return view


class MasterEvents:
    """What the master tells the view between two decisions: the dispatch of the last one, the result of the
    oldest query in flight, now and then a heartbeat and (when overheads are learned) a reply's overhead."""

    def __init__(self, rng: random.Random, view: ClusterView, states: list[WorkerState], learned: bool) -> None:
        self.rng, self.view, self.learned = rng, view, learned
        self.states = {s.worker_id: s for s in states}
        self.ids = sorted(self.states)
        self.queues = {(s.worker_id, v): q for s in states for v, q in s.loaded.items()}
        self.inflight: collections.deque[tuple[str, str]] = collections.deque()
        self.count = 0

    def __call__(self, decision: Decision | None) -> None:
        view, rng = self.view, self.rng
        if decision is not None:
            key = (decision.worker_id, decision.variant)
            self.queues[key] = self.queues.get(key, 0) + 1
            view.set_queue(*key, self.queues[key])
            self.inflight.append(key)
        if len(self.inflight) > 64:
            key = self.inflight.popleft()
            self.queues[key] = max(0, self.queues[key] - 1)
            view.set_queue(*key, self.queues[key])
            if self.learned:
                view.set_overhead(key[0], rng.choice((0.4, 0.5, 0.6, 0.8, 1.2)))
        self.count += 1
        if self.count % 10 == 0:
            s = self.states[rng.choice(self.ids)]
            view.upsert_worker(s.worker_id, s.backends, s.cores, rng.randint(-2, 16), rng.randint(1, 64) * GIB,
                               s.alive)


def synthetic_queries(rng: random.Random, index: CatalogIndex, count: int, task_only: bool = False) -> list[Query]:
    tasks = sorted(index.task_spans)
    models = sorted(index.model_spans)
    names = sorted(index.infos)
    queries = []
    for _ in range(count):
        r = rng.random()
        slo = {
            "batch_size": rng.choice((1, 1, 1, 1, 4, 8, 16, 32)),
            "latency_ms": None if rng.random() < 0.1 else 10 ** rng.uniform(-0.5, 3.0),  # 0.3 .. 1000 ms
            "min_accuracy": None if rng.random() < 0.3 else rng.uniform(0.5, 0.95),
            "objective": rng.choice(("cost", "latency")),
            "max_cost_usd": None if rng.random() < 0.8 else 10 ** rng.uniform(-7, -4),
        }
        if task_only or r < 0.6:
            task, dataset = rng.choice(tasks)
            queries.append(Query(kind="task", task=task, dataset=dataset, **slo))
        elif r < 0.9:
            # A per-model query fixes the accuracy by its choice of model; few also bound it.
            if rng.random() < 0.7:
                slo["min_accuracy"] = None
            queries.append(Query(kind="model", model=rng.choice(models), **slo))
        else:
            queries.append(Query(kind="variant", variant=rng.choice(names), batch_size=1))
    return queries


def time_queries(queries: list[Query], index: CatalogIndex, view: ClusterView,
                 events: Callable[[Decision | None], None] | None = None) -> dict:
    """Time each select; `events`, when given, runs (untimed) after each one with its decision."""
    times_ns = np.empty(len(queries), dtype=np.int64)
    outcomes: dict[str, int] = {}
    by_kind: dict[str, list[int]] = {}
    by_outcome: dict[str, list[int]] = {}
    for q in queries[:200]:  # warm the index's per-slice caches and the view's projection
        try:
            select(q, index, view)
        except InfaasError:
            pass
    gc.collect()
    clock = clock_ns
    for i, q in enumerate(queries):
        decision = None
        t0 = clock()
        try:
            decision = select(q, index, view)
            outcome = "ok"
        except InfaasError as exc:
            outcome = exc.code
        t = clock() - t0
        if events is not None:
            events(decision)
        times_ns[i] = t
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        by_kind.setdefault(q.kind, []).append(t)
        by_outcome.setdefault("selected" if outcome == "ok" else "error", []).append(t)
    return {"all": _stats(times_ns), "by_kind": {k: _stats(np.asarray(v)) for k, v in sorted(by_kind.items())},
            "by_outcome": {k: _stats(np.asarray(v)) for k, v in sorted(by_outcome.items())},
            "outcomes": dict(sorted(outcomes.items()))}


def _stats(times_ns: np.ndarray) -> dict:
    us = times_ns / 1e3
    return {"count": int(us.size), "p50_us": round(float(np.percentile(us, 50)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2), "max_us": round(float(us.max()), 2)}


def _print_timing(label: str, timing: dict) -> None:
    s = timing["all"]
    print(f"  {label:22s} p50 {s['p50_us']:7.1f} us  p99 {s['p99_us']:7.1f} us  max {s['max_us']:8.1f} us  "
          f"({s['count']} queries; outcomes {timing['outcomes']})")
    for kind, s in [*timing["by_kind"].items(), *timing["by_outcome"].items()]:
        print(f"    {kind:8s} p50 {s['p50_us']:7.1f} us  p99 {s['p99_us']:7.1f} us  max {s['max_us']:8.1f} us")


def run_case(label: str, rng: random.Random, prices, queries: int, one_task: bool) -> dict:
    models, variants, profiles = synthetic_catalog(rng, 10, 10, 100, one_task=one_task)
    t0 = time.perf_counter()
    index = build_index(models, variants, profiles, prices)
    build_s = time.perf_counter() - t0
    states = synthetic_workers(rng, variants, workers=8, loaded_per_worker=40, gpu_share=0.25)
    view = build_view(states)
    qs = synthetic_queries(rng, index, queries, task_only=one_task)
    result = {"variants": len(variants), "profiled": len(index), "models": len(models),
              "task_groups": len(index.task_spans), "loaded": sum(1 for n in index.infos if view.holders(n)),
              "index_build_s": round(build_s, 3), "static": time_queries(qs, index, view),
              "events": time_queries(qs, index, view, MasterEvents(rng, view, states, learned=False))}
    print(f"{label}: {len(variants)} variants, {len(index.task_spans)} task group(s), {result['loaded']} loaded, "
          f"index built in {build_s:.2f} s")
    _print_timing("static view", result["static"])
    _print_timing("events between queries", result["events"])
    return result


def time_events(rng: random.Random, view: ClusterView, states: list[WorkerState], names: list[str],
                count: int) -> dict:
    """The cost of each event method on `view`, `count` calls each on random workers (p50 / p99 us)."""
    alive = [s for s in states if s.alive]
    clock = clock_ns

    def timed(call: Callable[[WorkerState], None]) -> dict:
        picks = [rng.choice(alive) for _ in range(count)]
        times_ns = np.empty(count, dtype=np.int64)
        for i, s in enumerate(picks):
            t0 = clock()
            call(s)
            times_ns[i] = clock() - t0
        return _stats(times_ns)

    def heartbeat(s: WorkerState) -> None:  # new free cores and memory
        view.upsert_worker(s.worker_id, s.backends, s.cores, rng.randint(-2, 16), rng.randint(1, 64) * GIB)

    def same_heartbeat(s: WorkerState) -> None:  # nothing the ranking sees changed
        view.upsert_worker(s.worker_id, s.backends, s.cores, s.free_cores, s.free_memory_bytes)

    def dispatch(s: WorkerState) -> None:  # a queue of a variant it holds
        variant = next(iter(s.loaded))
        view.set_queue(s.worker_id, variant, rng.randint(0, 20))

    def load_and_unload(s: WorkerState) -> None:  # two events
        variant = rng.choice(names)
        if variant not in s.loaded:
            view.set_queue(s.worker_id, variant, 1)
            view.drop_variant(s.worker_id, variant)

    def heartbeat_map(s: WorkerState) -> None:  # the loaded map of a heartbeat, one queue changed
        loaded = dict(s.loaded)
        loaded[next(iter(loaded))] = rng.randint(0, 20)
        view.set_loaded(s.worker_id, loaded)

    def learned_overhead(s: WorkerState) -> None:
        view.set_overhead(s.worker_id, rng.choice((0.4, 0.5, 0.6, 0.8, 1.2)))

    def drain_and_back(s: WorkerState) -> None:  # two events: it leaves and comes back with its variants
        view.upsert_worker(s.worker_id, s.backends, s.cores, s.free_cores, s.free_memory_bytes, alive=False)
        view.upsert_worker(s.worker_id, s.backends, s.cores, s.free_cores, s.free_memory_bytes, alive=True)

    def remove_and_register(s: WorkerState) -> None:  # two events, the second with its loaded map (put)
        view.remove_worker(s.worker_id)
        view.put(s)

    return {"upsert_worker (heartbeat, moved)": timed(heartbeat),
            "upsert_worker (heartbeat, unchanged)": timed(same_heartbeat),
            "set_queue (dispatch / result)": timed(dispatch),
            "set_queue + drop_variant (load, unload)": timed(load_and_unload),
            "set_loaded (heartbeat map, 20 variants)": timed(heartbeat_map),
            "set_overhead": timed(learned_overhead),
            "upsert_worker x2 (drain, back)": timed(drain_and_back),
            "remove_worker + put (re-register)": timed(remove_and_register)}


def run_scaling(rng: random.Random, prices, queries: int, worker_counts: list[int]) -> dict:
    models, variants, profiles = synthetic_catalog(rng, 10, 10, 100)
    index = build_index(models, variants, profiles, prices)
    qs = synthetic_queries(rng, index, queries)
    names = sorted(index.infos)
    out = {}
    for n in worker_counts:
        states = synthetic_workers(rng, variants, workers=n, loaded_per_worker=20, gpu_share=0.2)
        t0 = time.perf_counter()
        view = build_view(states)
        build_s = time.perf_counter() - t0
        learned = {s.worker_id: rng.choice((0.4, 0.5, 0.6, 0.8, 1.2)) for s in states}
        learned_view = build_view(states, learned)
        result = {"workers": n, "view_build_s": round(build_s, 3),
                  "one_overhead": time_queries(qs, index, view, MasterEvents(rng, view, states, learned=False)),
                  "learned_overheads": time_queries(qs, index, learned_view,
                                                    MasterEvents(rng, learned_view, states, learned=True)),
                  "events": time_events(rng, learned_view, states, names, min(queries, 5000))}
        print(f"{n} workers: view built in {build_s:.2f} s (put of each worker with 20 variants)")
        _print_timing("one overhead", result["one_overhead"])
        _print_timing("learned overheads", result["learned_overheads"])
        for event, s in result["events"].items():
            print(f"    {event:42s} p50 {s['p50_us']:6.2f} us  p99 {s['p99_us']:6.2f} us")
        out[str(n)] = result
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000, help="queries per case")
    parser.add_argument("--workers", default="10,1000,10000", help="worker counts of the scaling case")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: perf_counter; cpu: the thread's CPU time (a shared machine's preemption left out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "selection.json")
    args = parser.parse_args()
    global clock_ns
    clock_ns = CLOCKS[args.clock]
    prices = load_prices()
    results = {
        "benchmark": "selection", "queries": args.queries, "seed": args.seed, "target_p99_us": 50, "clock": args.clock,
        "python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cases": {
            "10_tasks_x_10_models": run_case("10 tasks x 10 models x 100 variants", random.Random(args.seed), prices,
                                             args.queries, one_task=False),
            "one_task_10000_variants": run_case("worst case: one task holding all 10,000 variants",
                                                random.Random(args.seed + 1), prices, args.queries, one_task=True),
        },
        "scaling": run_scaling(random.Random(args.seed + 2), prices, args.queries,
                               [int(n) for n in args.workers.split(",")]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
