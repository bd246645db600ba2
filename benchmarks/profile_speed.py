"""Benchmark: time to generate and profile the example zoo, and how stable the p50s are across repeats.

Target (issue 2): at least 12 variants x 5 batch sizes profiled in <= 60 s on a 2-core machine,
with the spread of p50 over 3 repeats reported. Prints a summary and writes JSON.

    python benchmarks/profile_speed.py [--repeats 3] [--output benchmarks/results/profile_speed.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from infaas_cli.config import DEFAULT_PROFILE_BATCH_SIZES
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.hardware import host_hardware
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from infaas_cli.toolkit.zoo import load_manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "profile_speed.json")
    args = parser.parse_args()

    entries = load_manifest(args.manifest)
    with tempfile.TemporaryDirectory(prefix="infaas-bench-") as tmp, InfaasHome(tmp) as home:
        t0 = time.perf_counter()
        for e in entries:
            register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
        register_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for e in entries:
            generate_variants(home, e.name)
        generate_s = time.perf_counter() - t0
        variants = home.store.variants()
        names = [e.name for e in entries]

        runs = []
        p50s: dict[tuple[str, str], list[float]] = {}
        for i in range(args.repeats):
            t0 = time.perf_counter()
            report = profile_models(home, names, DEFAULT_PROFILE_BATCH_SIZES, force=True)
            seconds = time.perf_counter() - t0
            runs.append({"seconds": seconds, "measurements": report.measurements,
                         "variants": len(report.profiled), "failed": len(report.failed)})
            print(f"profile repeat {i + 1}: {len(report.profiled)} variants, {report.measurements} "
                  f"(configuration, batch) measurements in {seconds:.1f} s", flush=True)
            # Variants that differ only in max batch share a measurement: count each configuration once.
            seen = set()
            for p in home.store.profiles():
                config = p.variant.rsplit("-b", 1)[0]
                for b, stats in p.batches.items():
                    if (config, b) not in seen:
                        seen.add((config, b))
                        p50s.setdefault((config, b), []).append(stats["p50_ms"])

    # Spread of p50 over the repeats, per (configuration, batch): (max - min) / median.
    spreads = sorted((max(v) - min(v)) / statistics.median(v) for v in p50s.values() if len(v) == args.repeats)
    full5 = sum(1 for v in variants
                if all(b <= v.max_batch for b in DEFAULT_PROFILE_BATCH_SIZES))
    result = {
        "host": host_hardware(), "python": platform.python_version(),
        "models": len(entries), "variants": len(variants),
        "variants_with_all_5_batch_sizes": full5,
        "register_s": register_s, "generate_s": generate_s,
        "profile_runs": runs,
        "profile_s_median": statistics.median(r["seconds"] for r in runs),
        "p50_relative_spread": {
            "median": spreads[len(spreads) // 2] if spreads else None,
            "p90": spreads[int(len(spreads) * 0.9)] if spreads else None,
            "max": spreads[-1] if spreads else None,
            "pairs": len(spreads),
        },
        "target": "≥ 12 variants × 5 batch sizes profiled in ≤ 60 s",
    }
    result["target_met"] = full5 >= 12 and result["profile_s_median"] <= 60
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"zoo: {len(entries)} models, {len(variants)} variants ({full5} with all 5 batch sizes); "
          f"register {register_s:.1f} s, generate {generate_s:.1f} s")
    print(f"profile (all variants, batch sizes {list(DEFAULT_PROFILE_BATCH_SIZES)}): median "
          f"{result['profile_s_median']:.1f} s over {args.repeats} repeats")
    s = result["p50_relative_spread"]
    if s["pairs"]:
        print(f"p50 spread across repeats, (max-min)/median over {s['pairs']} (configuration, batch) pairs: "
              f"median {s['median']:.1%}, p90 {s['p90']:.1%}, max {s['max']:.1%}")
    print(f"target met: {result['target_met']} — wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
