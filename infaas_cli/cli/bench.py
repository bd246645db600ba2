"""`infaas bench`: reproducible experiments (the INFaaS paper's comparison, scaled to this machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from infaas_cli.cli.app import InfaasGroup, _state, app, command, err, fmt, out, print_json
from infaas_cli.errors import InfaasError

bench_app = typer.Typer(cls=InfaasGroup, help="Reproducible experiments.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

PoliciesOpt = Annotated[str, typer.Option(help="Comma-separated policies to compare (infaas, fixed-peak, "
                                               "fixed-autoscale).")]
OutputOpt = Annotated[Path, typer.Option(help="Where the JSON and the plot go (existing files are refused "
                                              "without --overwrite).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace result files that exist already.")]
CoresOpt = Annotated[int, typer.Option(help="vCPUs of each worker host: its thread budget and what it is billed.")]
QuotaOpt = Annotated[float, typer.Option(help="CPU each host may use, in cores of this machine (cgroup quota).")]


def _policies(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InfaasError(f"--seeds takes comma-separated integers, e.g. 0,1,2, not {text!r}") from None
    if not seeds:
        raise InfaasError("--seeds needs at least one seed, e.g. 0")
    return seeds


@command(bench_app, "slo")
def bench_slo(
    duration_s: Annotated[float, typer.Option(help="Length of the replayed trace.")] = 60.0,
    seeds: Annotated[str, typer.Option("--seeds", "--seed", help="Trace seed(s), comma-separated: each seed "
                                                                 "replays the same arrivals to every policy.")] = "0",
    base_qps: Annotated[float, typer.Option(help="Load at the trough of the diurnal swell.")] = 40.0,
    peak_qps: Annotated[float, typer.Option(help="Load at its crest (bursts go above it).")] = 200.0,
    burst_multiplier: Annotated[float, typer.Option(help="Load multiplier during a burst.")] = 2.0,
    policies: PoliciesOpt = "infaas,fixed-peak,fixed-autoscale",
    host_cores: CoresOpt = 4,
    host_cpu_quota: QuotaOpt = 0.5,
    max_hosts: Annotated[int, typer.Option(help="The autoscaler's ceiling, and the hosts fixed-peak holds.")] = 3,
    output_dir: OutputOpt = Path("."),
    overwrite: OverwriteOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Replay one seeded bursty trace against each policy; print violations, cost and hosts side by side."""
    from infaas_cli.experiments.bench_slo import SloBenchConfig, run_bench
    from infaas_cli.experiments.testbed import HostPlan

    if duration_s <= 0:
        raise InfaasError("--duration-s must be positive, e.g. 60")
    config = SloBenchConfig(duration_s=duration_s, seeds=_seeds(seeds), base_qps=base_qps, peak_qps=peak_qps,
                            burst_multiplier=burst_multiplier, policies=_policies(policies),
                            hosts=HostPlan(cores=host_cores, cpu_quota=host_cpu_quota, max_hosts=max_hosts))
    report = run_bench(config, _state["home"] and Path(_state["home"]) / "bench", output_dir, overwrite,
                       on_step=lambda s: err.print(s, highlight=False))
    if as_json:
        print_json({k: v for k, v in report.items() if k != "runs"})
        return
    table = Table(title=f"bench slo: seeds {seeds}, {duration_s:g} s each")
    for col in ("policy", "SLO violations", "cost USD", "hosts (mean)", "p50 ms", "p99 ms", "completed", "failed",
                "goodput q/s"):
        table.add_column(col, justify="right")
    for name, r in report["policies"].items():
        table.add_row(name, f"{r['slo_violation_rate']:.2%}", f"{r['cost_usd']:.6f}", fmt(r["mean_hosts"], ".2f"),
                      fmt(r["p50_ms"], ".2f"), fmt(r["p99_ms"], ".2f"), str(r["completed"]), str(r["failed"]),
                      fmt(r["goodput_qps"], ".1f"))
    out.print(table)
    for key, value in report["comparison"].items():
        out.print(f"  {key}: {fmt(value, '.3g') if isinstance(value, float) else value}", highlight=False)
    if report.get("written"):
        err.print(f"wrote {' and '.join(report['written'])}", highlight=False)


@command(bench_app, "capacity")
def bench_capacity(
    hosts: Annotated[int, typer.Option(help="Fixed worker hosts every policy gets.")] = 1,
    policies: PoliciesOpt = "infaas,fixed-peak,fixed-autoscale",
    max_violation_rate: Annotated[float, typer.Option(help="The SLO-violation budget of a passing rate.")] = 0.01,
    probe_s: Annotated[float, typer.Option(help="Counted seconds of each probe (after the warm-up).")] = 8.0,
    start_qps: Annotated[float, typer.Option(help="The first rate probed.")] = 100.0,
    seed: Annotated[int, typer.Option(help="Seed of the probes' arrivals and query mix.")] = 0,
    host_cores: CoresOpt = 4,
    host_cpu_quota: QuotaOpt = 0.5,
    output_dir: OutputOpt = Path("."),
    overwrite: OverwriteOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The highest steady rate each policy serves within the violation budget on the same fixed hosts."""
    from infaas_cli.experiments.capacity import CapacityConfig, run_capacity
    from infaas_cli.experiments.testbed import HostPlan

    if not 0 <= max_violation_rate < 1 or probe_s <= 0 or start_qps <= 0 or hosts < 1:
        raise InfaasError("bench capacity needs --hosts >= 1, 0 <= --max-violation-rate < 1 and positive "
                          "--probe-s and --start-qps")
    config = CapacityConfig(policies=_policies(policies), hosts=hosts, max_violation_rate=max_violation_rate,
                            probe_s=probe_s, start_qps=start_qps, seed=seed,
                            host_plan=HostPlan(cores=host_cores, cpu_quota=host_cpu_quota))
    report = run_capacity(config, _state["home"] and Path(_state["home"]) / "bench", output_dir, overwrite,
                          on_step=lambda s: err.print(s, highlight=False))
    if as_json:
        print_json(report)
        return
    table = Table(title=f"bench capacity: {hosts} fixed host(s), <= {max_violation_rate:.0%} SLO violations")
    for col in ("policy", "capacity q/s", "probes"):
        table.add_column(col, justify="right")
    for name, r in report["policies"].items():
        table.add_row(name, f"{r['capacity_qps']:.0f}", str(len(r["probes"])))
    out.print(table)
    if "comparison" in report:
        c = report["comparison"]
        out.print(f"  infaas / fixed-peak: {c['capacity_infaas_over_fixed_peak']:.2f}x (target "
                  f"{report['target']}x: {'met' if c['target_met'] else 'missed'})", highlight=False)
    if report.get("written"):
        err.print(f"wrote {' and '.join(report['written'])}", highlight=False)
