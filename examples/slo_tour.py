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

#: (what the application asks for, latency_ms, min_accuracy, objective)
SCENARIOS = [
    ("cheapest that is right 80 % of the time", 1000.0, 0.80, "cost"),
    ("interactive: 0.05 ms, 95 %", 0.05, 0.95, "latency"),
    ("97 % within 5 ms, cheapest", 5.0, 0.97, "cost"),
    ("98 % within 20 ms, cheapest", 20.0, 0.98, "cost"),
    ("best accuracy (≥ 99.5 %) within 50 ms", 50.0, 0.995, "cost"),
    ("fastest with ≥ 99.5 %", 50.0, 0.995, "latency"),
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
    table = Table(title="model-less queries: task digit-classification, dataset digits")
    for col in ("SLO", "chosen variant", "worker", "correct", "p50 ms", "decision µs"):
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
                table.add_row(label, f"[red]{err.code}[/red]: {str(err)[:90]}…", "-", "-", "-", "-")
                continue
            variants = sorted({r.variant for _, r in ok})
            correct = np.mean([r.outputs[0][0] == y[i] for i, r in ok])
            table.add_row(label, ", ".join(variants), ", ".join(sorted({r.worker for _, r in ok})),
                          f"{correct:.0%}", f"{np.median([r.latency_ms for _, r in ok]):.2f}",
                          f"{np.median([r.decision_us for _, r in ok]):.1f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
