"""A short burst of model-less queries against a running infaas, showing the chosen variant follow the SLO.

    infaas up && infaas zoo register && infaas profile --all
    python examples/slo_tour.py            # uses the master `infaas up` recorded, or --master
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from infaas_cli.client import Client, QueryFailed, resolve_master

DIGITS_VAL = Path(__file__).resolve().parent / "zoo" / "digits-val.npz"

#: (what the application asks for, latency_ms, min_accuracy, objective). The SLO bounds the end-to-end
#: time at infaas's front (arrival at the master to reply), so loading a variant counts against it; every
#: reply says whether it met its SLO (`slo_met`), and "p50 ms" is that same end-to-end latency.
SCENARIOS = [
    ("≥ 95 % within 100 ms, cheapest (cold start)", 100.0, 0.95, "cost"),
    ("interactive: ≥ 95 % within 0.5 ms", 0.5, 0.95, "cost"),
    ("≥ 97 % within 100 ms, cheapest", 100.0, 0.97, "cost"),
    ("≥ 99.5 % within 100 ms, cheapest", 100.0, 0.995, "cost"),
    ("≥ 99.5 % within 5 ms, fastest", 5.0, 0.995, "latency"),
    ("≥ 80 % within 0.2 ms, cheapest", 0.2, 0.80, "cost"),
    ("impossible: 99.9 % in 1 µs", 0.001, 0.999, "latency"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", default=None)
    parser.add_argument("--repeats", type=int, default=20, help="queries per scenario")
    args = parser.parse_args()
    endpoint = resolve_master(args.master)
    if endpoint is None:
        print("no master: run `infaas up` first or pass --master", file=sys.stderr)
        return 1
    data = np.load(DIGITS_VAL)
    x, y = data["x"], data["y"]
    table = Table(title=f"model-less queries (task digit-classification, dataset digits), {args.repeats} per SLO")
    for col in ("SLO", "chosen variant", "worker", "correct", "p50 ms", "predicted ms", "SLO met", "decision µs"):
        table.add_column(col)
    with Client(endpoint, timeout_s=60) as client:
        for label, latency_ms, min_acc, objective in SCENARIOS:
            ids = [client.submit({"x": x[i:i + 1]}, task="digit-classification", dataset="digits",
                                 latency_ms=latency_ms, min_accuracy=min_acc, objective=objective)
                   for i in range(args.repeats)]
            results = client.gather(ids)
            ok = [(i, r) for i, r in zip(range(args.repeats), (results[j] for j in ids))
                  if not isinstance(r, QueryFailed)]
            if not ok:
                err = next(iter(results.values()))
                table.add_row(label, f"[red]{err.code}[/red]: {err}", "-", "-", "-", "-", "-", "-")
                continue
            variants = sorted({r.variant for _, r in ok})
            correct = np.mean([r.outputs[0][0] == y[i] for i, r in ok])
            table.add_row(label, ", ".join(variants), ", ".join(sorted({r.worker for _, r in ok})),
                          f"{correct:.0%}", f"{np.median([r.latency_ms for _, r in ok]):.2f}",
                          f"{np.median([r.predicted_latency_ms or 0 for _, r in ok]):.2f}",
                          f"{sum(bool(r.slo_met) for _, r in ok)}/{len(ok)}",
                          f"{np.median([r.decision_us for _, r in ok]):.1f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
