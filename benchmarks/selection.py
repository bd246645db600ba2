"""Benchmark: decision time of the selection policy on a synthetic 10,000-variant catalog.

Catalog: 10 tasks x 10 models x 100 variants (threads, max batch, recipe, CPU/GPU), built from
records through `build_index`. Cluster: 8 workers (2 with a GPU) with a few hundred variants loaded.
Each `select` call is timed with time.perf_counter_ns over mixed queries (model-less and per-model,
by variant, varied SLOs and objectives, some impossible); also the worst case of one task holding
all 10,000 variants, and the master's pattern of a fresh cluster snapshot per query.
Target: p99 <= 50 us on the 10 x 10 catalog.

    python benchmarks/selection.py [--queries 20000] [--seed 0] [--output benchmarks/results/selection.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from infaas_cli.errors import InfaasError
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.policy.selection import (CatalogIndex, ClusterSnapshot, Query, WorkerState, build_index, load_prices,
                                  select)

GIB = 1 << 30
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


def synthetic_cluster(rng: random.Random, variants: list[VariantRecord], workers: int, loaded: int) -> ClusterSnapshot:
    states = []
    cpu = [v.name for v in variants if v.backend == "ort-cpu"]
    gpu = [v.name for v in variants if v.backend == "ort-gpu"]
    for i in range(workers):
        has_gpu = i < 2
        pool = cpu + gpu if has_gpu else cpu
        held = rng.sample(pool, loaded // workers)
        states.append(WorkerState(
            worker_id=f"worker-{i}", backends=frozenset({"ort-cpu", "ort-gpu"} if has_gpu else {"ort-cpu"}),
            cores=16, free_cores=rng.uniform(0, 16), free_memory_bytes=rng.randint(1, 64) * GIB,
            loaded={name: rng.randint(0, 20) for name in held}, alive=i != workers - 1))  # one dead worker
    return ClusterSnapshot(tuple(states))


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


def time_queries(queries: list[Query], index: CatalogIndex, snapshot: ClusterSnapshot,
                 fresh_snapshot: bool = False) -> dict:
    """Time each select; with fresh_snapshot, each query sees a new snapshot (as the master builds them)."""
    times_ns = np.empty(len(queries), dtype=np.int64)
    outcomes: dict[str, int] = {}
    by_kind: dict[str, list[int]] = {}
    by_outcome: dict[str, list[int]] = {}
    workers = snapshot.workers
    select(queries[0], index, snapshot) if not fresh_snapshot else None  # warm the cached snapshot view
    gc.collect()
    clock = time.perf_counter_ns
    for i, q in enumerate(queries):
        snap = ClusterSnapshot(workers) if fresh_snapshot else snapshot
        t0 = clock()
        try:
            select(q, index, snap)
            outcome = "ok"
        except InfaasError as exc:
            outcome = exc.code
        t = clock() - t0
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


def run_case(label: str, rng: random.Random, prices, queries: int, one_task: bool) -> dict:
    models, variants, profiles = synthetic_catalog(rng, 10, 10, 100, one_task=one_task)
    t0 = time.perf_counter()
    index = build_index(models, variants, profiles, prices)
    build_s = time.perf_counter() - t0
    snapshot = synthetic_cluster(rng, variants, workers=8, loaded=320)
    qs = synthetic_queries(rng, index, queries, task_only=one_task)
    result = {"variants": len(variants), "profiled": len(index), "models": len(models),
              "task_groups": len(index.task_spans), "loaded": len(snapshot.holders()),
              "index_build_s": round(build_s, 3), "cached_snapshot": time_queries(qs, index, snapshot),
              "fresh_snapshot": time_queries(qs[: max(1, queries // 4)], index, snapshot, fresh_snapshot=True)}
    cached, fresh = result["cached_snapshot"], result["fresh_snapshot"]
    print(f"{label}: {len(variants)} variants, {len(index.task_spans)} task group(s), {result['loaded']} loaded, "
          f"index built in {build_s:.2f} s")
    print(f"  cached snapshot  p50 {cached['all']['p50_us']:7.1f} us  p99 {cached['all']['p99_us']:7.1f} us  "
          f"max {cached['all']['max_us']:8.1f} us  ({cached['all']['count']} queries; outcomes {cached['outcomes']})")
    for kind, s in [*cached["by_kind"].items(), *cached["by_outcome"].items()]:
        print(f"    {kind:8s} p50 {s['p50_us']:7.1f} us  p99 {s['p99_us']:7.1f} us  max {s['max_us']:8.1f} us")
    print(f"  fresh snapshot   p50 {fresh['all']['p50_us']:7.1f} us  p99 {fresh['all']['p99_us']:7.1f} us  "
          f"max {fresh['all']['max_us']:8.1f} us  ({fresh['all']['count']} queries)")
    return result


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "selection.json")
    args = parser.parse_args()
    prices = load_prices()
    results = {
        "benchmark": "selection", "queries": args.queries, "seed": args.seed, "target_p99_us": 50,
        "python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cases": {
            "10_tasks_x_10_models": run_case("10 tasks x 10 models x 100 variants", random.Random(args.seed), prices,
                                             args.queries, one_task=False),
            "one_task_10000_variants": run_case("worst case: one task holding all 10,000 variants",
                                                random.Random(args.seed + 1), prices, args.queries, one_task=True),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
