"""`infaas bench capacity`: the highest steady rate each policy serves within an SLO-violation budget on the same
fixed hosts (the INFaaS paper's throughput comparison).

Each policy gets fresh daemons and `hosts` hosts that never change (the horizontal autoscaler's floor and
ceiling are both `hosts`). A probe replays a steady Poisson stream of the query mix at one rate; the first
`warmup_s` are not counted. Rates grow by `growth` until a probe fails, then bisect the last pass and the
first failure down to `precision`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from infaas_cli.experiments.bench_slo import POLICY_ORDER, check_output
from infaas_cli.experiments.replay import replay
from infaas_cli.experiments.testbed import HostPlan, ScalingPlan, inputs_for, policy_cluster, prepare_run
from infaas_cli.experiments.trace import QueryClass, TraceConfig, generate_trace

#: infaas's capacity over fixed-peak's on the same hosts (the paper: 1.3× higher throughput).
CAPACITY_TARGET = 1.3


@dataclass(frozen=True)
class CapacityConfig:
    policies: tuple[str, ...] = POLICY_ORDER
    hosts: int = 1
    host_plan: HostPlan = field(default_factory=HostPlan)
    scaling: ScalingPlan = field(default_factory=ScalingPlan)
    max_violation_rate: float = 0.01
    probe_s: float = 8.0
    warmup_s: float = 3.0
    start_qps: float = 100.0
    growth: float = 1.6
    precision: float = 0.05  # stop bisecting when the first failing rate is within this fraction of the last pass
    max_qps: float = 4000.0
    seed: int = 0
    settle_s: float = 2.0  # pause between probes, for a failed probe's backlog to drain


def probe_passes(violation_rate: float, config: CapacityConfig) -> bool:
    return violation_rate <= config.max_violation_rate


def next_rate(passed: Sequence[float], failed: Sequence[float], config: CapacityConfig) -> float | None:
    """The next rate to probe, from the rates that passed and failed so far; None when the search is done."""
    lo = max(passed, default=0.0)
    hi = min((f for f in failed if f > lo), default=None)
    if hi is None:
        if not passed:
            return config.start_qps if not failed else None
        nxt = lo * config.growth
        return nxt if nxt <= config.max_qps else None
    if hi <= lo * (1 + config.precision) or (not passed and hi <= config.start_qps / 16):
        return None
    return (lo + hi) / 2 if passed else hi / config.growth


def _probe(client: Any, rate: float, classes: Sequence[QueryClass], config: CapacityConfig,
           inputs: Callable, seed: int) -> dict[str, Any]:
    duration_s = config.warmup_s + config.probe_s
    trace = generate_trace(TraceConfig(duration_s=duration_s, base_qps=rate, peak_qps=rate, seed=seed), classes)
    result = replay(client, trace, classes, inputs, duration_s=duration_s, drain_timeout_s=10.0)
    counted = [r for r in result.records if r.scheduled_s >= config.warmup_s]
    violations = sum(1 for r in counted if not r.ok or r.latency_ms > classes[r.class_index].latency_ms)
    latencies = sorted(r.latency_ms for r in counted if r.ok)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    return {"qps": rate, "queries": len(counted), "violation_rate": violations / len(counted) if counted else 0.0,
            "p99_ms": p99, "failed": sum(1 for r in counted if not r.ok),
            "errors": dict(Counter(r.error_code for r in counted if not r.ok))}


def find_capacity(client: Any, classes: Sequence[QueryClass], config: CapacityConfig,
                  on_step: Callable[[str], None] = lambda s: None, label: str = "") -> dict[str, Any]:
    inputs = inputs_for(classes)
    passed: list[float] = []
    failed: list[float] = []
    probes = []
    rate = next_rate(passed, failed, config)
    while rate is not None:
        p = _probe(client, rate, classes, config, inputs, config.seed + len(probes))
        probes.append(p)
        ok = probe_passes(p["violation_rate"], config)
        (passed if ok else failed).append(rate)
        on_step(f"{label}{rate:.0f} q/s: {p['violation_rate']:.2%} violations, p99 "
                f"{p['p99_ms'] if p['p99_ms'] is None else round(p['p99_ms'], 1)} ms -> {'pass' if ok else 'fail'}")
        time.sleep(config.settle_s)
        rate = next_rate(passed, failed, config)
    return {"capacity_qps": max(passed, default=0.0), "probes": probes}


def run_capacity(config: CapacityConfig = CapacityConfig(), home: Path | None = None,
                 output_dir: Path | None = None, overwrite: bool = False,
                 classes: Sequence[QueryClass] | None = None, models: Sequence[str] | None = None,
                 on_step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    paths = check_output(output_dir, "bench_capacity", overwrite) if output_dir is not None else None
    policies, home, classes = prepare_run(config.policies, home, models, classes, on_step)
    plan = replace(config.host_plan, min_hosts=config.hosts, max_hosts=config.hosts)  # fixed hosts: no scaling
    results: dict[str, Any] = {}
    for policy in policies:
        on_step(f"{policy}: {config.hosts} fixed host(s) of {plan.cores} vCPU(s) (CPU quota {plan.cpu_quota:g})")
        with policy_cluster(home, policy, config.hosts, plan, config.scaling) as (_, client):
            results[policy] = find_capacity(client, classes, config, on_step, f"{policy}: ")
    report: dict[str, Any] = {
        "policies": results,
        "config": {k: v for k, v in asdict(config).items() if k not in ("host_plan", "scaling")},
        "hosts": asdict(plan),
        "classes": [asdict(c) for c in classes],
        "target": CAPACITY_TARGET,
    }
    if "infaas" in results and results.get("fixed-peak", {}).get("capacity_qps"):
        ratio = results["infaas"]["capacity_qps"] / results["fixed-peak"]["capacity_qps"]
        report["comparison"] = {"capacity_infaas_over_fixed_peak": ratio, "target_met": ratio >= CAPACITY_TARGET}
    if paths is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(json.dumps(report, indent=2) + "\n")
        plot_capacity(report, paths[1])
        report["written"] = [str(p) for p in paths]
    return report


def plot_capacity(report: dict[str, Any], path: Path) -> None:
    """SLO violations against the offered steady rate, per policy, with each policy's capacity marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for policy, r in report["policies"].items():
        probes = sorted(r["probes"], key=lambda p: p["qps"])
        line, = ax.plot([p["qps"] for p in probes], [100 * p["violation_rate"] for p in probes], marker="o",
                        label=f"{policy}: {r['capacity_qps']:.0f} q/s")
        if r["capacity_qps"]:
            ax.axvline(r["capacity_qps"], color=line.get_color(), linestyle=":")
    ax.axhline(100 * report["config"]["max_violation_rate"], color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("steady offered load (q/s)")
    ax.set_ylabel("SLO violations (%)")
    ax.set_title(f"infaas bench capacity: {report['hosts']['max_hosts']} fixed host(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
