"""Device check: the zoo's CNNs generated, profiled and served with every backend this host has, GPU ones included.

Runs the real CLI and daemons in a fresh INFAAS_HOME: `infaas backends`, `register` (generates the variants and
measures each one's accuracy by running it), `profile --exhaustive`, `up`, queries by variant name (each GPU
variant's answers compared with the CPU fp32 variant's), model-less queries under SLO classes, `down`. On a host
without a GPU the GPU backends are listed with the reason they are not available and only CPU variants run.
Prints the per-backend latency table and writes JSON.

    python benchmarks/gpu.py [--models digits-cnn-l,digits-cnn-s] [--budget-ms 100]
                             [--passes N] [--logs DIR]
                             [--output benchmarks/results/gpu.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infaas_cli.client import Client, QueryFailed, resolve_master
from infaas_cli.toolkit.hardware import host_hardware
from infaas_cli.toolkit.zoo import load_manifest

SIZES = (1, 8, 32)


def cli(home: Path, *args: str, timeout_s: float = 900) -> str:
    env = {**os.environ, "INFAAS_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "infaas_cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"infaas {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    return done.stdout


def latency_rows(variants: list[dict]) -> list[dict]:
    """One row per measured configuration (variants differing only in max batch share a measurement)."""
    rows: dict[tuple, dict] = {}
    for v in variants:
        key = (v["model"], v["backend"], v["recipe"], v["threads"])
        row = rows.setdefault(key, {"model": v["model"], "backend": v["backend"], "recipe": v["recipe"],
                                    "threads": v["threads"], "precision": v["precision"], "accuracy": v["accuracy"],
                                    "load_time_ms": v["load_time_ms"], "hardware_id": v["hardware_id"],
                                    "p50_ms": {}, "measured": True})
        for b, stats in (v.get("profiles") or {}).items():
            if int(b) in SIZES:
                row["p50_ms"][int(b)] = stats["p50_ms"]
                row["measured"] &= stats.get("measured", True)
    return list(rows.values())


def best_per_backend(rows: list[dict]) -> list[dict]:
    """Each (model, backend, recipe)'s fastest thread count at each batch size."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["backend"], r["recipe"])
        cur = best.setdefault(key, {**r, "p50_ms": {}, "threads_at": {}})
        for b, ms in r["p50_ms"].items():
            if b not in cur["p50_ms"] or ms < cur["p50_ms"][b]:
                cur["p50_ms"][b], cur["threads_at"][b] = ms, r["threads"]
    return sorted(best.values(), key=lambda r: (r["model"], r["backend"], r["recipe"]))


def serve(home: Path, models: list[str], variants: list[dict], x: np.ndarray, passes: int = 1) -> dict:
    """Queries by name (GPU variants' answers against the CPU fp32 variant's) and model-less queries, `passes`
    times over the SLO classes (a later pass shows whether a slow first query comes back)."""
    gpu = [v for v in variants if v["hardware"] == "gpu" and v["max_batch"] >= 32 and v["profiles"]]
    out: dict = {"by_name": [], "model_less": []}
    cli(home, "up", "--workers", "1", "--no-gateway", timeout_s=120)
    try:
        endpoint = resolve_master(None, home=home)
        with Client(endpoint, timeout_s=120) as client:
            for model in models:
                reference = {b: client.query({"x": x[:b]}, variant=f"{model}/ort-cpu-fp32o3-t1-b32").outputs
                             for b in (1, 32)}
                for v in (v for v in gpu if v["model"] == model):
                    for b in (1, 32):
                        client.query({"x": x[:b]}, variant=v["name"])  # load and warm
                        runs = [client.query({"x": x[:b]}, variant=v["name"]) for _ in range(20)]
                        got, want = [np.asarray(o) for o in runs[-1].outputs], [np.asarray(o) for o in reference[b]]
                        agree = float(np.mean(got[0].reshape(b, -1).argmax(1) == want[0].reshape(b, -1).argmax(1)))
                        floats = [(g, w) for g, w in zip(got, want) if w.dtype.kind == "f"]
                        out["by_name"].append({
                            "variant": v["name"], "batch": b, "worker": runs[-1].worker,
                            "end_to_end_p50_ms": float(np.median([r.latency_ms for r in runs])),
                            "worker_ms": runs[-1].timing, "top1_agreement_with_cpu_fp32": agree,
                            "max_abs_diff": max((float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in floats),
                                                default=None),
                        })
            # Model-less: SLO classes at batch 1 and 32, 10 queries each (the first one's latency kept apart),
            # sent one at a time.
            for pass_, b, min_accuracy, latency_ms in itertools.product(range(1, passes + 1), (1, 32), (0.9, 0.99),
                                                                        (1.0, 2.0, 5.0, 20.0)):
                slo = dict(task="digit-classification", dataset="digits", latency_ms=latency_ms,
                           min_accuracy=min_accuracy, objective="cost")
                ids = []
                got = {}
                for _ in range(10):  # one at a time: the latency of a query, not of a burst's queue
                    ids.append(client.submit({"x": x[:b]}, **slo))
                    got.update(client.gather(ids[-1:]))
                done = [got[i] for i in ids if not isinstance(got[i], QueryFailed)]
                row = {"pass": pass_, "batch": b, "latency_ms": latency_ms, "min_accuracy": min_accuracy}
                if done:
                    row.update(variants=sorted({r.variant for r in done}),
                               slo_met=sum(bool(r.slo_met) for r in done) / len(done),
                               first_ms=done[0].latency_ms, first_timing=done[0].timing,
                               first_needs_load=done[0].needs_load,
                               p50_ms=float(np.median([r.latency_ms for r in done])),
                               predicted_ms=done[-1].predicted_latency_ms)
                else:
                    e = got[ids[0]]
                    row.update(error=e.code, reason=str(e))
                out["model_less"].append(row)
    finally:
        cli(home, "down", timeout_s=120)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-cnn-l,digits-cnn-s")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--passes", type=int, default=1, help="passes over the model-less SLO classes")
    parser.add_argument("--logs", type=Path, default=None, help="copy the daemons' logs here before the home goes")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    args = parser.parse_args()
    models = args.models.split(",")
    entries = {e.name: e for e in load_manifest()}
    x = np.load(entries[models[0]].validation)["x"][:32]
    result: dict = {"host": host_hardware(), "python": platform.python_version(), "models": models}
    with tempfile.TemporaryDirectory(prefix="infaas-gpu-") as tmp:
        home = Path(tmp)
        result["backends"] = json.loads(cli(home, "backends", "--json"))["host"]["backends"]
        for b in result["backends"]:
            print(f"{b['backend']:10} {'available' if b['available'] else 'not available: ' + b['reason']}")
        timings = {}
        for name in models:
            e = entries[name]
            t0 = time.perf_counter()
            cli(home, "register", str(e.file), "--name", name, "--task", e.task, "--dataset", e.dataset,
                "--validation", str(e.validation))
            timings[f"{name} register+generate s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cli(home, "profile", name, "--exhaustive", "--budget-ms", str(args.budget_ms),
                "--batch-sizes", ",".join(map(str, SIZES)))
            timings[f"{name} profile s"] = time.perf_counter() - t0
        variants = [v for m in models for v in json.loads(cli(home, "variants", m, "--json"))]
        result["timings_s"], result["variants"] = timings, len(variants)
        result["configurations"] = latency_rows(variants)
        result["table"] = best_per_backend(result["configurations"])
        try:
            result["serving"] = serve(home, models, variants, x, args.passes)
        finally:
            if args.logs is not None and (home / "run").is_dir():
                shutil.copytree(home / "run", args.logs, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock", "*.ipc"))

    print(f"\n{'model':14} {'backend':9} {'recipe':8} {'acc':>6} {'load ms':>8} "
          + " ".join(f"{'b' + str(b) + ' p50 ms (t)':>16}" for b in SIZES))
    for r in result["table"]:
        cells = " ".join(f"{r['p50_ms'][b]:>11.3f} ({r['threads_at'][b]:>2})" if b in r["p50_ms"] else f"{'-':>16}"
                         for b in SIZES)
        load = f"{r['load_time_ms']:.1f}" if r["load_time_ms"] is not None else "-"
        print(f"{r['model']:14} {r['backend']:9} {r['recipe']:8} {r['accuracy']:>6.3f} {load:>8} {cells}")
    for q in result["serving"]["by_name"]:
        print(f"served {q['variant']} b{q['batch']} on {q['worker']}: p50 {q['end_to_end_p50_ms']:.2f} ms end to "
              f"end, top-1 agreement with CPU fp32 {q['top1_agreement_with_cpu_fp32']:.3f}, "
              f"max |diff| of float outputs {q['max_abs_diff']}")
    for q in result["serving"]["model_less"]:
        print(f"model-less pass {q['pass']} b{q['batch']} ≥ {q['min_accuracy']:.0%} within {q['latency_ms']} ms: "
              + (f"{', '.join(q['variants'])} (p50 {q['p50_ms']:.2f} ms, first {q['first_ms']:.2f} ms, predicted "
                 f"{q['predicted_ms']:.2f} ms, met {q['slo_met']:.0%})"
                 + (f"; first: {json.dumps(q['first_timing'])}" if q["first_ms"] > 5 * q["p50_ms"] else "")
                 if "variants" in q
                 else f"{q['error']}: {q['reason'][:120]}"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
