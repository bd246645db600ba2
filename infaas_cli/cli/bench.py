"""`infaas bench`: reproducible experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from infaas_cli.cli.app import _state, app, command, err, fmt, out, print_json
from infaas_cli.errors import InfaasError

bench_app = typer.Typer(help="Reproducible experiments.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@command(bench_app, "slo")
def bench_slo(
    duration_s: Annotated[float, typer.Option(help="Length of the replayed trace.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Trace seed: the same seed replays the same arrivals.")] = 0,
    workers: Annotated[int, typer.Option(help="Local workers per policy run.")] = 2,
    base_qps: Annotated[float, typer.Option(help="Load at the trough of the diurnal swell.")] = 40.0,
    peak_qps: Annotated[float, typer.Option(help="Load at its crest (bursts go above it).")] = 240.0,
    policies: Annotated[str, typer.Option(help="Comma-separated policies to compare.")] = "infaas,static,replicate",
    output_dir: Annotated[Path, typer.Option(help="Where bench_slo.json and bench_slo.png go.")] = Path("benchmarks/results"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Replay one seeded bursty trace against each policy; print violations, cost and latency side by side."""
    from infaas_cli.experiments.bench_slo import run_bench

    if duration_s <= 0:
        raise InfaasError("--duration-s must be positive, e.g. 60")
    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    report = run_bench(duration_s, seed, workers, base_qps, peak_qps, chosen, output_dir, _state["home"],
                       on_step=lambda s: err.print(s, highlight=False))
    if as_json:
        print_json(report)
        return
    table = Table(title=f"bench slo: {report['trace']['queries']} queries over {duration_s:g} s, seed {seed}")
    for col in ("policy", "SLO violations", "cost USD", "p50 ms", "p99 ms", "completed", "failed", "goodput q/s"):
        table.add_column(col, justify="right")
    for name, r in report["policies"].items():
        table.add_row(name, f"{r['slo_violation_rate']:.2%}", f"{r['cost_usd']:.6f}", fmt(r["p50_ms"], ".2f"),
                      fmt(r["p99_ms"], ".2f"), str(r["completed"]), str(r["failed"]), fmt(r["goodput_qps"], ".1f"))
    out.print(table)
    err.print(f"wrote {output_dir / 'bench_slo.json'} and {output_dir / 'bench_slo.png'}", highlight=False)
