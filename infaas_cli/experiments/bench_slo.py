"""`infaas bench slo`: one seeded bursty trace replayed against each serving policy on fresh daemons, side by side.

Violations are measured by the client, end to end; cost is the cloud bill of the worker hosts each policy held
(instance-seconds from launch to stop, over the trace's duration, priced from configs/prices.toml).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infaas_cli.cluster import hosts
from infaas_cli.errors import InfaasError
from infaas_cli.experiments.replay import replay
from infaas_cli.experiments.testbed import HostPlan, ScalingPlan, inputs_for, policy_cluster, prepare_run
from infaas_cli.experiments.trace import (QueryClass, TraceConfig, generate_trace,
                                          offered_load_series)
from infaas_cli.policy.selection import load_prices

POLICY_ORDER = ("infaas", "fixed-peak", "fixed-autoscale")
HEADLINE = ("slo_violation_rate", "cost_usd", "completed", "failed", "p50_ms", "p99_ms", "goodput_qps",
            "instance_seconds", "mean_hosts", "peak_hosts")
#: The targets of the headline experiment (the INFaaS paper's claims, scaled to one machine).
TARGETS = {"violations_vs_fixed_autoscale": 3.0, "cost_vs_fixed_peak": 0.5, "cost_vs_fixed_autoscale": 2 / 3}


@dataclass(frozen=True)
class SloBenchConfig:
    duration_s: float = 60.0
    seeds: tuple[int, ...] = (0,)
    base_qps: float = 40.0
    peak_qps: float = 200.0
    burst_rate_per_min: float = 4.0
    burst_multiplier: float = 2.0
    burst_duration_s: float = 3.0
    policies: tuple[str, ...] = POLICY_ORDER
    hosts: HostPlan = field(default_factory=HostPlan)
    scaling: ScalingPlan = field(default_factory=ScalingPlan)
    bin_s: float = 2.0

    def trace_config(self, seed: int) -> TraceConfig:
        return TraceConfig(duration_s=self.duration_s, base_qps=self.base_qps, peak_qps=self.peak_qps,
                           period_s=self.duration_s, burst_rate_per_min=self.burst_rate_per_min,
                           burst_multiplier=self.burst_multiplier,
                           burst_duration_s=min(self.burst_duration_s, self.duration_s / 4), seed=seed)


def output_paths(output_dir: Path, stem: str) -> tuple[Path, Path]:
    return output_dir / f"{stem}.json", output_dir / f"{stem}.png"


def check_output(output_dir: Path, stem: str, overwrite: bool) -> tuple[Path, Path]:
    """The result files; existing ones are refused unless `overwrite` (committed results are never clobbered)."""
    paths = output_paths(output_dir, stem)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise InfaasError(f"{' and '.join(existing)} exist already; pass --overwrite to replace them, or another "
                          "--output-dir")
    return paths


def run_policy(home: Path, policy: str, trace: Sequence, classes: Sequence[QueryClass], config: SloBenchConfig,
               usd_per_core_second: float, on_step: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One policy on fresh daemons: (its summary, its timeline)."""
    plan = config.hosts
    n_hosts = plan.max_hosts if policy == "fixed-peak" else plan.min_hosts
    on_step(f"{policy}: a master and {n_hosts} host(s) of {plan.cores} vCPU(s) (CPU quota {plan.cpu_quota:g} core)")
    with policy_cluster(home, policy, n_hosts, plan, config.scaling) as (_, client):
        on_step(f"{policy}: replaying {len(trace)} queries over {config.duration_s:g} s")
        start_wall = time.time()
        result = replay(client, trace, classes, inputs_for(classes), duration_s=config.duration_s,
                        drain_timeout_s=15.0)
        status = client.status()
        ledger = hosts.read_ledger(home)
    bill = hosts.bill(ledger, start_wall, start_wall + config.duration_s, usd_per_core_second, config.bin_s)
    summary = result.summary()
    summary.update(
        cost_usd=bill["cost_usd"], instance_seconds=bill["instance_seconds"], core_seconds=bill["core_seconds"],
        mean_hosts=bill["instance_seconds"] / config.duration_s, peak_hosts=bill["peak_hosts"],
        hosts_launched=bill["hosts_launched"],
        variants_used=sorted({r.variant for r in result.records if r.ok}),
        autoscale_actions=len(status["master"].get("autoscale_actions", [])),
        scale_decisions=[{k: d.get(k) for k in ("kind", "worker", "reason")}
                         for d in status["master"].get("cluster_decisions", [])])
    timeline = result.timeline(config.bin_s)
    timeline["hosts_held"] = bill["hosts_held"]
    return summary, timeline


def _aggregate(runs: Sequence[dict[str, Any]], policy: str) -> dict[str, Any]:
    """One policy over every seed: rates over all queries, costs and hosts as means per run."""
    rs = [r["policies"][policy] for r in runs]
    arrivals = sum(r["arrivals"] for r in rs)
    out = {
        "slo_violation_rate": sum(r["violations"] for r in rs) / arrivals if arrivals else 0.0,
        "cost_usd": sum(r["cost_usd"] for r in rs) / len(rs),
        "completed": sum(r["completed"] for r in rs), "failed": sum(r["failed"] for r in rs),
        "arrivals": arrivals, "violations": sum(r["violations"] for r in rs),
        "p50_ms": _mean([r["p50_ms"] for r in rs]), "p99_ms": _mean([r["p99_ms"] for r in rs]),
        "goodput_qps": _mean([r["goodput_qps"] for r in rs]),
        "instance_seconds": sum(r["instance_seconds"] for r in rs) / len(rs),
        "mean_hosts": _mean([r["mean_hosts"] for r in rs]), "peak_hosts": max(r["peak_hosts"] for r in rs),
        "slo_violation_rate_per_seed": [r["slo_violation_rate"] for r in rs],
        "cost_usd_per_seed": [r["cost_usd"] for r in rs],
    }
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def compare(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """infaas against each baseline, and whether each target is met (None: a policy was not run)."""
    i, peak, auto = (policies.get(p) for p in POLICY_ORDER)
    out: dict[str, Any] = {}
    if i and auto:
        # None when infaas violated nothing (the ratio is unbounded; JSON has no infinity): see the rates.
        ratio = auto["slo_violation_rate"] / i["slo_violation_rate"] if i["slo_violation_rate"] else None
        out["violations_fixed_autoscale_over_infaas"] = ratio
        out["violations_target_met"] = (ratio is None and auto["slo_violation_rate"] > 0) or \
            (ratio is not None and ratio >= TARGETS["violations_vs_fixed_autoscale"])
        out["cost_infaas_over_fixed_autoscale"] = i["cost_usd"] / auto["cost_usd"]
        out["cost_vs_fixed_autoscale_target_met"] = out["cost_infaas_over_fixed_autoscale"] <= \
            TARGETS["cost_vs_fixed_autoscale"] + 1e-12
    if i and peak:
        out["violations_infaas_at_most_fixed_peak"] = i["slo_violation_rate"] <= peak["slo_violation_rate"]
        out["cost_infaas_over_fixed_peak"] = i["cost_usd"] / peak["cost_usd"]
        out["cost_vs_fixed_peak_target_met"] = out["cost_infaas_over_fixed_peak"] <= TARGETS["cost_vs_fixed_peak"] + 1e-12
    return out


def run_bench(config: SloBenchConfig = SloBenchConfig(), home: Path | None = None, output_dir: Path | None = None,
              overwrite: bool = False, classes: Sequence[QueryClass] | None = None,
              models: Sequence[str] | None = None,
              on_step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Replay each seed's trace against each policy on fresh daemons; return (and write) the comparison."""
    paths = check_output(output_dir, "bench_slo", overwrite) if output_dir is not None else None
    policies, home, classes = prepare_run(config.policies, home, models, classes, on_step)
    usd_per_core_second = load_prices().usd_per_second("cpu", 1)
    runs, timelines = [], {}
    for seed in config.seeds:
        trace = generate_trace(config.trace_config(seed), classes)
        _, offered = offered_load_series(trace, 1.0, config.duration_s)
        run: dict[str, Any] = {"seed": seed, "queries": len(trace), "peak_1s_qps": float(offered.max()),
                               "policies": {}}
        for policy in policies:
            summary, timeline = run_policy(home, policy, trace, classes, config, usd_per_core_second, on_step)
            run["policies"][policy] = summary
            if seed == config.seeds[0]:
                timelines[policy] = timeline
            on_step(f"{policy}, seed {seed}: {summary['slo_violation_rate']:.2%} violations, "
                    f"${summary['cost_usd']:.6f} ({summary['mean_hosts']:.2f} hosts on average)")
        run["comparison"] = compare(run["policies"])
        runs.append(run)
    aggregate = {p: _aggregate(runs, p) for p in policies}
    report: dict[str, Any] = {
        "policies": aggregate,
        "comparison": compare(aggregate),
        "targets": TARGETS,
        "trace": {"duration_s": config.duration_s, "seeds": list(config.seeds), "base_qps": config.base_qps,
                  "peak_qps": config.peak_qps, "burst_rate_per_min": config.burst_rate_per_min,
                  "burst_multiplier": config.burst_multiplier, "burst_duration_s": config.burst_duration_s,
                  "classes": [asdict(c) for c in classes]},
        "hosts": {**asdict(config.hosts), "enforcement": hosts.enforcement(),
                  "usd_per_host_second": usd_per_core_second * config.hosts.cores,
                  "fixed_peak_hosts": config.hosts.max_hosts},
        "scaling": asdict(config.scaling),
        "runs": [{k: v for k, v in r.items()} | {"policies": {p: _run_row(s) for p, s in r["policies"].items()}}
                 for r in runs],
    }
    if paths is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(json.dumps(report | {"timelines": timelines}, indent=2, default=str) + "\n")
        plot_bench(timelines, report, paths[1])
        report["written"] = [str(p) for p in paths]
    return report


def _run_row(s: dict[str, Any]) -> dict[str, Any]:
    keep = HEADLINE + ("arrivals", "violations", "core_seconds", "hosts_launched", "variants_used",
                       "autoscale_actions", "scale_decisions", "errors", "error_examples", "send_lag_ms")
    row = {k: s.get(k) for k in keep}
    row["per_class"] = {name: {k: c[k] for k in ("slo_violation_rate", "completed", "failed", "p99_ms")}
                        for name, c in s["per_class"].items()}
    return row


def plot_bench(timelines: dict[str, Any], report: dict[str, Any], path: Path) -> None:
    """Offered load, SLO violations and worker hosts held over time, per policy (the first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not timelines:
        return
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    first = next(iter(timelines.values()))
    bin_s = first["t_s"][1] - first["t_s"][0] if len(first["t_s"]) > 1 else 1.0
    centres = [t + bin_s / 2 for t in first["t_s"]]
    seed = report["trace"]["seeds"][0]
    axes[0].plot(centres, first["offered_qps"], color="black")
    axes[0].set_ylabel("offered load (q/s)")
    axes[0].set_title(f"infaas bench slo: one trace (seed {seed}) against each policy")
    run = report["runs"][0]["policies"]
    for policy, tl in timelines.items():
        p = run[policy]
        label = f"{policy}: {p['slo_violation_rate']:.1%} violations, ${p['cost_usd']:.5f}"
        axes[1].plot(centres, [v / bin_s for v in tl["violations"]], label=label)
        axes[2].step(first["t_s"] + [first["t_s"][-1] + bin_s], tl["hosts_held"] + tl["hosts_held"][-1:],
                     where="post", label=f"{policy}: {p['mean_hosts']:.2f} hosts on average")
    axes[1].set_ylabel("SLO violations (q/s)")
    axes[1].legend(fontsize=8)
    axes[2].set_ylabel("worker hosts held")
    axes[2].set_ylim(bottom=0)
    axes[2].legend(fontsize=8)
    axes[2].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
