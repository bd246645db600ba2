"""Benchmark: configuration search (`profile --search`) against brute-force profiling.

Over the example zoo plus two real networks nobody here built (the ONNX model-zoo graphs SqueezeNet and
ShuffleNet shipped in the `onnx` wheel, "light" versions: real topologies, weights generated in-graph; input
1x3x224x224, fixed batch 1; accuracy is agreement with the fp32 original on random images), on one machine in one
run: profile every variant by brute force, then forget every profile and search model after model (each search
warm-started from the models searched before it on this hardware). For a fixed set of SLO classes per model —
batch size 1, 8, 32 × accuracy floor (none, the model's best less 0.5 pt) × objective (fastest; cheapest within
1.5× the fastest's latency) — selection (`policy.selection.select`, with every variant loaded on one idle worker)
picks a variant from each set of profiles; the search's pick is judged by its brute-force figures.

The judge is brute force repeated `--rounds` times (default 3), each cell's figures the median over the rounds: one
pass on a shared 2-core machine does not reproduce itself within 5 % on microsecond models (a quiet or a busy
moment decides their p95), so a single pass is a poor "best" to be within 5 % of.

Two evaluations of the same search code (`profile_models(mode="search")`, `toolkit.search.Search`):

* **replay** — the search runs with a measuring function that returns each asked-for cell's brute-force figures
  (what it would have measured, minus run-to-run noise). This is how Triton Model Analyzer / Morphling-style
  searches are evaluated: it isolates the search's choices from noise.
* **live** — the search measures for itself, once per cell, as `infaas profile --search` does; measurement noise
  counts against it. One more brute-force pass judged the same way gives the noise floor of a single pass: how often
  noise alone moves a pick by more than 5 %.

Target (issue 12): the search's pick within 5 % of the brute-force best for every SLO class while measuring ≤ 15 %
of the (configuration, batch size) cells. Beside that strict score, each class is also judged by each brute-force
round alone (its own best, its own figures): a pick most rounds find within 5 % of their best is as good as brute
force itself can tell on this machine. The rounds' figures are kept in the JSON (`judge_round_figures`), so a
replay of a stored table scores both. Prints a table and writes JSON.

    python benchmarks/search.py [--quick | --budget-ms MS] [--rounds N] [--replay]
                                [--output benchmarks/results/search.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from infaas_cli.backends.keys import placement_key
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.catalog.records import BatchProfile, ProfileRecord, VariantRecord, is_predicted
from infaas_cli.errors import InfaasError
from infaas_cli.policy.placement import WorkerState
from infaas_cli.policy.selection import ClusterSnapshot, Query, build_index, load_prices, select
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.hardware import hardware_id, host_hardware
from infaas_cli.toolkit.profiler import MeasureSettings, profile_models
from infaas_cli.toolkit.register import register_model
from infaas_cli.toolkit.zoo import load_manifest

OUTSIDE = {"squeezenet": "data_0", "shufflenet": "gpu_0/data_0"}  # light_<name>.onnx and its input
BATCHES = (1, 8, 32)
TARGET_WITHIN = 0.05
TARGET_MEASURED = 0.15


def build(home: InfaasHome, tmp: Path) -> list[str]:
    names = []
    for e in load_manifest():
        register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
        names.append(e.name)
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    rng = np.random.default_rng(0)
    for name, input_name in OUTSIDE.items():
        validation = tmp / f"{name}-val.npz"
        np.savez(validation, **{input_name: rng.random((8, 3, 224, 224), dtype=np.float32)})
        register_model(home, light / f"light_{name}.onnx", name, "imagenet-classification", "imagenet", validation)
        names.append(name)
    for name in names:
        generate_variants(home, name)
    return names


def configuration(variant: str) -> str:
    """A variant's configuration: its name less the max batch (variants differing by max batch share its cells)."""
    return variant.rsplit("-b", 1)[0]


def cells(profiles: list[ProfileRecord]) -> int:
    """(configuration, batch size) cells of a set of profiles."""
    return len({(configuration(p.variant), b) for p in profiles for b in p.batches})


def slo_classes(index, model: str, accuracy: list[float]):
    best_acc = max(accuracy) if accuracy else None
    floors = [None] + ([best_acc - 0.005] if best_acc is not None else [])
    for b in BATCHES:
        for floor in floors:
            yield {"model": model, "batch_size": b, "min_accuracy": floor, "objective": "latency"}
            yield {"model": model, "batch_size": b, "min_accuracy": floor, "objective": "cost", "bound": 1.5}


def as_p50(profiles: list[ProfileRecord]) -> list[ProfileRecord]:
    """The profiles with p50 where selection reads p95: the steadier figure of what a variant costs, to judge by."""
    return [dataclasses.replace(p, batches={b: {**s, "p95_ms": s["p50_ms"]} for b, s in p.batches.items()})
            for p in profiles]


def judge(bf_index, search_index, cluster, query: dict) -> dict | None:
    """The brute-force best and the search's pick for one SLO class, both by brute-force figures (`bf_index`:
    p95, as selection reads them, or p50); None: the class does not apply to this model."""
    q = dict(query)
    bound = q.pop("bound", None)
    try:
        fastest = select(Query(kind="model", **{**q, "objective": "latency"}), bf_index, cluster)
    except InfaasError:
        return None  # e.g. a batch above the model's max batch
    if bound is not None:
        q["latency_ms"] = fastest.predicted_latency_ms * bound
    best = select(Query(kind="model", **q), bf_index, cluster)
    try:
        pick = select(Query(kind="model", **q), search_index, cluster).variant
    except InfaasError as exc:
        return {**query, "best": best.variant, "pick": None, "ratio": None, "ok": False, "why": str(exc)[:120]}
    info = bf_index.infos[pick]
    lat = info.latency_ms(q["batch_size"])
    price = bf_index.prices.usd_per_second(info.hardware, info.threads)
    value = lat if q["objective"] == "latency" else price * lat / 1e3
    best_value = best.predicted_latency_ms if q["objective"] == "latency" else best.cost_usd
    meets = q.get("latency_ms") is None or lat <= q["latency_ms"]
    ratio = value / best_value if best_value else 1.0
    return {**query, "best": best.variant, "pick": pick, "ratio": round(ratio, 4),
            "ok": bool(meets and ratio <= 1 + TARGET_WITHIN)}


def replayer(profiles: list[ProfileRecord], variants: list[VariantRecord]):
    """A search measurement (`profile_models(search_measure=...)`, the signature of the profiler's
    `_measure_isolated`) that returns what brute force measured for those cells instead of measuring again: the
    search chooses exactly as it would live, minus run-to-run noise. How Triton Model Analyzer- or Morphling-style
    searches are evaluated: against one brute-force table, so that a miss is the search's, not the noise's."""
    group = {v.name: (v.model, v.backend, v.recipe, v.threads) for v in variants}
    table = {(*group[p.variant], int(b)): (p.load_time_ms, p.peak_memory_bytes, stats)
             for p in profiles for b, stats in p.batches.items()}

    def measure(backend, artifact, recipe, threads, model, data, batch_sizes, settings, partial=None):
        rows = [table[(model.name, backend.name, recipe, threads, b)] for b in batch_sizes]  # KeyError: failed
        return rows[0][0], rows[0][1], {b: BatchProfile(**row[2]) for b, row in zip(batch_sizes, rows)}

    return measure


def search_all(home: InfaasHome, names: list[str], settings: MeasureSettings, measure=None):
    """Search model after model from an empty store (each warm-started from those before it); the profiles and
    per-model counts. The store's profiles are deleted afterwards."""
    per_model, total_s = {}, 0.0
    for name in names:
        t0 = time.perf_counter()
        report = profile_models(home, [name], settings=settings, mode="search", search_measure=measure)
        seconds = time.perf_counter() - t0
        total_s += seconds
        per_model[name] = {"measured": report.measurements, "predicted": report.predicted, "seconds": seconds,
                           "failed": report.failed}
    profiles = home.store.profiles()
    forget(home, profiles)
    return profiles, per_model, total_s


def forget(home: InfaasHome, profiles: list[ProfileRecord]) -> None:
    with home.store.transaction() as txn:
        for p in profiles:
            txn.delete(ProfileRecord.table, p.key)


def table_row(p: ProfileRecord) -> dict:
    """A judge's profile as the JSON keeps it (the host is the run's `host`)."""
    keep = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_qps", "runs")
    return {"variant": p.variant, "model": p.model, "hardware_id": p.hardware_id, "load_time_ms": p.load_time_ms,
            "peak_memory_bytes": p.peak_memory_bytes,
            "batches": {b: {k: stats[k] for k in keep} for b, stats in p.batches.items()}}


def stored_table(path: Path) -> tuple[list[ProfileRecord], list[list[ProfileRecord]]]:
    """The judge's table an earlier run wrote (`judge_table`), as this host's profiles, and its rounds (none from
    runs that did not keep them)."""
    hw = host_hardware()
    stored = json.loads(path.read_text())
    table = [ProfileRecord(**{**row, "hardware": hw,
                              "hardware_id": hardware_id(row["hardware_id"].split("-", 1)[0], hw)})
             for row in stored["judge_table"]]
    return table, [from_figures(table, r) for r in stored.get("judge_round_figures", [])]


#: A round's figures as the JSON keeps them (compact: per configuration and batch size, these two, 4 digits; the
#: others are the judge's).
ROUND_FIGURES = ("p50_ms", "p95_ms")


def round_figures(profiles: list[ProfileRecord]) -> dict:
    out: dict = {}
    for p in profiles:
        row = out.setdefault(configuration(p.variant), {})
        for b, s in p.batches.items():
            row[b] = " ".join(f"{s[k]:.4g}" for k in ROUND_FIGURES)
    return out


def from_figures(table: list[ProfileRecord], figures: dict) -> list[ProfileRecord]:
    """A round's profiles: the judge's table with the round's own figures."""
    out = []
    for p in table:
        row = figures.get(configuration(p.variant), {})
        out.append(dataclasses.replace(p, batches={b: {**s, **dict(zip(ROUND_FIGURES, map(float, row[b].split())))}
                                                   for b, s in p.batches.items() if b in row}))
    return out


def median_of(rounds: list[list[ProfileRecord]]) -> list[ProfileRecord]:
    """Each variant's profile with every figure the median over brute-force rounds (the judge's table)."""
    by_variant: dict[str, list[ProfileRecord]] = {}
    for profiles in rounds:
        for p in profiles:
            by_variant.setdefault(p.variant, []).append(p)
    out = []
    for first, *rest in by_variant.values():
        group = [first, *rest]
        batches = {b: {k: (float(np.median([g.batches[b][k] for g in group])) if isinstance(v, float) else v)
                       for k, v in stats.items()}
                   for b, stats in first.batches.items() if all(b in g.batches for g in group)}
        out.append(dataclasses.replace(first, batches=batches,
                                       load_time_ms=float(np.median([g.load_time_ms for g in group]))))
    return out


class Judge:
    """Judges sets of profiles against the brute-force ones: per model, the share of SLO classes whose pick is
    within 5 % of the brute-force best (by p95, as selection reads it, and by p50), and how good the predictions
    are."""

    def __init__(self, names, models, variants, bf_profiles, rounds: list[list[ProfileRecord]] = ()) -> None:
        self.names, self.models, self.variants = names, models, variants
        self.prices = load_prices()
        self.bf_profiles = bf_profiles
        self.bf = build_index(models, variants, bf_profiles, self.prices)
        # Each brute-force round on its own: a pick most rounds judge within 5 % of their own best is as good as
        # brute force can tell apart on this machine (one round alone does not reproduce another within 5 %).
        self.round_indexes = [build_index(models, variants, r, self.prices) for r in rounds] if len(rounds) > 1 else []
        self.bf50 = build_index(models, variants, as_p50(bf_profiles), self.prices)
        self.truth = {(p.variant, b): s["p50_ms"] for p in bf_profiles for b, s in p.batches.items()}
        self.cluster = ClusterSnapshot([WorkerState(
            worker_id="w", backends=frozenset({placement_key(v.backend, v.recipe) for v in variants}), cores=64,
            free_cores=64, free_memory_bytes=1 << 40, loaded={v.name: 0 for v in variants}, alive=True)],
            overhead_ms_default=0.0)

    def __call__(self, profiles: list[ProfileRecord], per_model: dict | None = None) -> tuple[list[dict], dict]:
        index = build_index(self.models, self.variants, profiles, self.prices)
        # Judged by p50, selection reads p50 too: a cost class's bound (1.5x the fastest's p50) against p95 figures
        # found no pick at all on models whose p95 is 1.5x their p50, whatever the search had measured.
        index50 = build_index(self.models, self.variants, as_p50(profiles), self.prices)
        rows, classes = [], []
        for name in self.names:
            total = cells([p for p in self.bf_profiles if p.model == name])
            accuracy = [v.accuracy for v in self.variants if v.model == name and v.accuracy is not None]
            results = []
            for q in slo_classes(self.bf, name, accuracy):
                r = judge(self.bf, index, self.cluster, q)
                if r is not None:
                    r50 = judge(self.bf50, index50, self.cluster, q)
                    r.update(ok_p50=r50["ok"], ratio_p50=r50["ratio"])
                    if self.round_indexes:
                        votes = sum(bool((v := judge(ri, index, self.cluster, q)) and v["ok"])
                                    for ri in self.round_indexes)
                        r.update(rounds_ok=votes, ok_rounds=2 * votes > len(self.round_indexes))
                    results.append(r)
            for r in results:  # how the search knew the pick and the best: measured, or predicted (and its figure)
                r.update(searched_figures(profiles, r))
            classes += results
            errors, covered = [], []
            for p in profiles:
                for b, s in p.batches.items() if p.model == name else ():
                    if is_predicted(s) and (p.variant, b) in self.truth:
                        err = abs(s["p50_ms"] / self.truth[(p.variant, b)] - 1)
                        errors.append(err)
                        covered.append(err <= s["predicted_error"])
            row = {"model": name, "cells": total, "classes": len(results),
                   "within_5pct": sum(r["ok"] for r in results), "within_5pct_p50": sum(r["ok_p50"] for r in results),
                   "within_5pct_rounds": sum(r.get("ok_rounds", False) for r in results),
                   "median_prediction_error": float(np.median(errors)) if errors else None,
                   "within_stated_error": float(np.mean(covered)) if covered else None}
            if per_model is not None:  # a search's: which cells it measured (configuration@batch), to analyse misses
                m = per_model[name]
                row["measured_cells"] = sorted({f"{configuration(p.variant)}@{b}" for p in profiles if p.model == name
                                                for b, s in p.batches.items() if not is_predicted(s)})
                row.update(measured=m["measured"], measured_fraction=m["measured"] / total if total else 0.0,
                           search_s=m["seconds"], failed=m["failed"])
            rows.append(row)
        n = len(classes)
        overall = {"cells": sum(r["cells"] for r in rows), "classes": n,
                   "within_5pct": sum(r["ok"] for r in classes),
                   "within_5pct_fraction": sum(r["ok"] for r in classes) / n,
                   "within_5pct_p50_fraction": sum(r["ok_p50"] for r in classes) / n}
        if self.round_indexes:  # by p95, as most of the judge's rounds alone see it
            overall["judge_rounds"] = len(self.round_indexes)
            overall["within_5pct_rounds"] = sum(r["ok_rounds"] for r in classes)
        if per_model is not None:
            overall["measured"] = sum(r["measured"] for r in rows)
            overall["measured_fraction"] = overall["measured"] / overall["cells"]
            overall["target_met"] = (overall["measured_fraction"] <= TARGET_MEASURED
                                     and overall["within_5pct_fraction"] >= 1.0)
        return rows, {"overall": overall, "models": rows, "classes": classes}


def searched_figures(profiles: list[ProfileRecord], row: dict) -> dict:
    """The search's own figures of a class's pick and brute-force best at its batch size (p95 as selection reads
    it, predicted error included; whether measured), to tell a miss on a figure never measured from a misread one."""
    out = {}
    for role in ("best", "pick"):
        stats = next((p.batches.get(str(row["batch_size"])) for p in profiles if p.variant == row[role]), None)
        if stats is not None:
            out[f"{role}_measured"] = not is_predicted(stats)
            out[f"{role}_search_p95"] = stats["p95_ms"] * (1 + (stats.get("predicted_error") or 0.0))
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def report(results: dict, brute_s: float) -> None:
    """The table: per model, the replayed search, the live search and one more brute-force pass."""
    modes = [m for m in ("replay", "live", "repeat") if m in results]
    heads = {"replay": "── replay (BF table) ──", "live": "── live search ──", "repeat": "── 1 BF pass ──"}
    widths = {"replay": 37, "live": 20, "repeat": 14}
    print("\n" + f"{'':21s}" + " ".join(f"{heads[m]:^{widths[m]}s}" for m in modes))
    cols = {"replay": f"{'measured':>9s} {'p95':>5s} {'p50':>5s} {'err':>4s} {'in stated':>9s}",
            "live": f"{'measured':>9s} {'p95':>5s} {'p50':>4s}", "repeat": f"{'p95':>5s} {'p50':>5s}"}
    print(f"{'model':15s} {'cells':>5s} " + " ".join(f"{cols[m]:>{widths[m]}s}" for m in modes))
    rows = {m: {r["model"]: r for r in results[m]["models"]} for m in modes}
    for name, r0 in rows[modes[0]].items():
        line = f"{name:15s} {r0['cells']:5d}"
        for m in modes:
            r = rows[m][name]
            n = r["classes"]
            score = f"{r['within_5pct']:2d}/{n:<2d} {r['within_5pct_p50']:2d}/{n:<2d}"
            if m == "replay":
                line += (f" {r['measured']:3d} {r['measured_fraction']:4.0%} {score}"
                         f" {_pct(r['median_prediction_error']):>4s} {_pct(r['within_stated_error']):>9s}")
            elif m == "live":
                line += f"  {r['measured']:3d} {r['measured_fraction']:4.0%} {score}"
            else:
                line += f"  {score}"
        print(line)
    line = f"{'overall':15s} {results[modes[0]]['overall']['cells']:5d}"
    for m in modes:
        o = results[m]["overall"]
        score = f"{o['within_5pct_fraction']:5.0%} {o['within_5pct_p50_fraction']:5.0%}"
        line += (f" {o['measured']:3d} {o['measured_fraction']:4.0%} {score}" if m != "repeat" else f"  {score}")
        if m == "replay":
            line += " " * 15
    print(line)
    print("p95/p50: SLO classes whose pick is within 5 % of the brute-force best, judged by p95 (what selection "
          "reads) or p50. replay: the search measuring nothing, handed the brute-force figures of the cells it "
          "asks for (its choices, without run-to-run noise); live: the search measuring for itself; 1 BF pass: one "
          "more brute-force pass judged the same way (the noise floor of a live comparison). err: median "
          "|predicted/measured - 1| of predicted cells; in stated: share within their stated error.")
    for m in ("replay", "live", "repeat"):
        if m in results:
            o = results[m]["overall"]
            line = (f"{m}: {o['measured']}/{o['cells']} cells measured ({o['measured_fraction']:.1%}), "
                    if m != "repeat" else f"{m} (1 BF pass): ")
            line += f"{o['within_5pct']}/{o['classes']} classes within 5 % by p95"
            if "judge_rounds" in o:
                line += (f" ({o['within_5pct_rounds']}/{o['classes']} by most of the judge's {o['judge_rounds']} "
                         "rounds, each judged alone)")
            if m != "repeat":
                line += f"; target (≤ 15 % measured, every class within 5 %): {'met' if o['target_met'] else 'MISSED'}"
            print(line)
    if "live" in results:
        live_s = results["live"]["search_s"]
        print(f"brute force {brute_s:.1f} s, live search {live_s:.1f} s: {1 - live_s / brute_s:.0%} of the "
              f"profiling time saved")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 ms per measurement instead of --budget-ms")
    parser.add_argument("--budget-ms", type=float, default=150.0,
                        help="measuring time per cell (default 150: the brute-force table is the judge, and at "
                             "60 ms a second brute force agreed with the first on only 60-73 %% of the classes)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="brute-force passes whose per-cell median is the judge (default 3)")
    parser.add_argument("--replay", action="store_true",
                        help="only the replayed search (one brute force, no second one, no live search)")
    parser.add_argument("--judge-table", type=Path, default=None,
                        help="replay against the judge's table of an earlier run's JSON instead of measuring one "
                             "(same models, same host kind): the search's choices alone, in seconds")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "search.json")
    args = parser.parse_args()
    if args.judge_table is not None:
        args.replay, args.rounds = True, 0
    elif args.rounds < 1:
        parser.error("--rounds must be at least 1 (or replay a stored table with --judge-table)")
    settings = MeasureSettings(budget_ms=20.0 if args.quick else args.budget_ms, min_runs=10)

    with tempfile.TemporaryDirectory(prefix="infaas-search-") as tmp, InfaasHome(Path(tmp) / "home") as home:
        t0 = time.perf_counter()
        names = build(home, Path(tmp))
        print(f"registered and generated {len(names)} models in {time.perf_counter() - t0:.1f} s", flush=True)

        rounds, brute_s, brute_cells = [], 0.0, 0
        for i in range(args.rounds):
            t0 = time.perf_counter()
            brute = profile_models(home, names, force=True, settings=settings, mode="exhaustive")
            brute_s = time.perf_counter() - t0  # one pass: what profiling without search costs
            rounds.append(home.store.profiles())
            brute_cells = brute.measurements
            print(f"brute force {i + 1}/{args.rounds}: {brute.measurements} cells in {brute_s:.1f} s", flush=True)
        if rounds:
            bf_profiles = median_of(rounds)
        else:
            bf_profiles, rounds = stored_table(args.judge_table)
        variants = home.store.variants()
        models = home.store.models()
        runs = {}
        if not args.replay:
            # The noise floor: one more brute-force pass, judged like the search, shows how often measurement
            # noise alone moves a pick by more than 5 %.
            profile_models(home, names, force=True, settings=settings, mode="exhaustive")
            runs["repeat"] = (home.store.profiles(), None, 0.0)
        forget(home, home.store.profiles())
        runs["replay"] = search_all(home, names, settings, replayer(bf_profiles, variants))
        if not args.replay:
            runs["live"] = search_all(home, names, settings)
            print(f"live search: {runs['live'][2]:.1f} s", flush=True)

    judge_all = Judge(names, models, variants, bf_profiles, rounds)
    results = {}
    for mode in ("replay", "live", "repeat"):
        if mode in runs:
            profiles, per_model, seconds = runs[mode]
            results[mode] = {**judge_all(profiles, per_model)[1], "search_s": seconds}
    report(results, brute_s)
    result = {"host": host_hardware(), "python": platform.python_version(), "quick": args.quick,
              "measure_settings": vars(settings), "brute_force_cells": brute_cells, "brute_force_s": brute_s,
              "judge_rounds": args.rounds,
              "judge_table": [table_row(p) for p in bf_profiles],
              "judge_round_figures": [round_figures(r) for r in rounds],
              **results, "target": "≤ 15 % of cells measured; the pick within 5 % of the brute-force best"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
