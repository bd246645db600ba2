"""`infaas bench slo`: one seeded bursty trace replayed against each serving policy, side by side."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.cluster import embedded
from infaas_cli.policy.baselines import POLICIES
from infaas_cli.client import Client
from infaas_cli.config import infaas_home
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.catalog.records import ModelRecord
from infaas_cli.toolkit.register import register_model
from infaas_cli.experiments.replay import CostMeter, replay
from infaas_cli.policy.selection import load_prices
from infaas_cli.experiments.trace import QueryClass, TraceConfig, default_classes, generate_trace
from infaas_cli.toolkit.zoo import load_manifest

#: Variants idle this long are unloaded (policies that may unload: infaas, replicate).
IDLE_UNLOAD_S = 10.0
HEADLINE = ("slo_violation_rate", "cost_usd", "p50_ms", "p99_ms", "completed", "failed", "goodput_qps")


def prepare_zoo(home: InfaasHome, on_step: Callable[[str], None] = lambda s: None) -> list[str]:
    """Register, generate and profile the example zoo into `home` where that was not done yet."""
    names = []
    for e in load_manifest():
        if home.store.get(ModelRecord, e.name) is None:
            on_step(f"registering {e.name}")
            register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
            generate_variants(home, e.name)
        names.append(e.name)
    on_step("profiling the zoo (stored profiles are kept)")
    profile_models(home, names)
    return names


def _inputs(classes: Sequence[QueryClass]) -> Callable[[int, int], dict[str, np.ndarray]]:
    """One validation sample per query, cycling through each task's validation set."""
    by_task = {}
    for e in load_manifest():
        if e.validation is not None and e.task not in by_task:
            by_task[e.task] = np.load(e.validation)["x"]
    data = [by_task[c.task] for c in classes]

    def inputs_for_class(class_index: int, arrival_index: int) -> dict[str, np.ndarray]:
        x = data[class_index]
        i = arrival_index % x.shape[0]
        return {"x": x[i:i + 1]}

    return inputs_for_class


def run_bench(duration_s: float = 60.0, seed: int = 0, workers: int = 2, base_qps: float = 40.0,
              peak_qps: float = 240.0, policies: Sequence[str] = ("infaas", "static", "replicate"),
              output_dir: Path | None = None, home: Path | None = None,
              on_step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Replay the same trace against each policy on fresh daemons; return (and write) the comparison."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        from infaas_cli.errors import InfaasError
        raise InfaasError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    home = Path(home) if home else infaas_home() / "bench"
    with InfaasHome(home) as h:
        prepare_zoo(h, on_step)
    classes = default_classes()
    config = TraceConfig(duration_s=duration_s, base_qps=base_qps, peak_qps=peak_qps, period_s=duration_s,
                         burst_rate_per_min=3.0, burst_multiplier=2.5, burst_duration_s=max(2.0, duration_s / 20),
                         seed=seed)
    trace = generate_trace(config, classes)
    inputs_for_class = _inputs(classes)
    prices = load_prices()
    results: dict[str, Any] = {}
    timelines: dict[str, Any] = {}
    for policy in policies:
        embedded.down(home)
        for stale in ("master", "worker-cache", "run"):  # every policy starts cold, as the first did
            shutil.rmtree(home / stale, ignore_errors=True)
        on_step(f"{policy}: starting a master and {workers} worker(s)")
        record = embedded.up(workers=workers, home=home, heartbeat_interval_s=0.5, policy=policy,
                             master_args=["--autoscale-idle-unload-s", str(IDLE_UNLOAD_S)])
        try:
            with InfaasHome(home) as h, Client(record["master"]["client_endpoint"], timeout_s=60) as client:
                client.push(h.store, h.artifacts)
                on_step(f"{policy}: replaying {len(trace)} queries over {duration_s:g} s")
                meter = CostMeter(status_fn=client.status, prices=prices)
                started = time.monotonic()
                result = replay(client, trace, classes, inputs_for_class, cost_meter=meter, duration_s=duration_s)
                meter.sample(time.monotonic() - started)
                summary = result.summary()
                status = client.status()
                summary["autoscale_actions"] = len(status["master"].get("autoscale_actions", []))
                summary["variants_used"] = sorted({r.variant for r in result.records if r.ok})
                results[policy] = summary
                timelines[policy] = result.timeline(max(1.0, duration_s / 30))
        finally:
            embedded.down(home)
    report: dict[str, Any] = {
        "policies": {p: {k: results[p].get(k) for k in HEADLINE} | {
            "core_seconds": results[p].get("core_seconds"), "busy_core_seconds": results[p].get("busy_core_seconds"),
            "compute_cost_usd": results[p].get("compute_cost_usd"), "variants_used": results[p]["variants_used"],
            "autoscale_actions": results[p]["autoscale_actions"], "errors": results[p].get("errors")}
            for p in policies},
        "trace": {"duration_s": duration_s, "seed": seed, "queries": len(trace), "base_qps": base_qps,
                  "peak_qps": peak_qps, "classes": [c.__dict__ for c in classes], "workers": workers},
    }
    if "infaas" in results and "static" in results:
        s, i = results["static"], results["infaas"]
        report["infaas_vs_static"] = {
            "violation_ratio": (s["slo_violation_rate"] / i["slo_violation_rate"]) if i["slo_violation_rate"] else None,
            "cost_ratio": (s["cost_usd"] / i["cost_usd"]) if i["cost_usd"] else None,
            "compute_cost_ratio": (s["compute_cost_usd"] / i["compute_cost_usd"]) if i.get("compute_cost_usd") else None,
        }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "bench_slo.json").write_text(json.dumps(report | {"timelines": timelines}, indent=2) + "\n")
        plot_bench(timelines, report, output_dir / "bench_slo.png")
    return report


def plot_bench(timelines: dict[str, Any], report: dict[str, Any], path: Path) -> None:
    """Offered load, SLO violations per policy, and the variants infaas chose, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    first = next(iter(timelines.values()))
    axes[0].plot(first["t_s"], first["offered_qps"], color="black")
    axes[0].set_ylabel("offered load (q/s)")
    axes[0].set_title("infaas bench slo: the same trace against each policy")
    for policy, tl in timelines.items():
        p = report["policies"][policy]
        axes[1].plot(tl["t_s"], tl["violations"], label=f"{policy}: {p['slo_violation_rate']:.1%} violations, "
                                                         f"${p['cost_usd']:.5f}")
    axes[1].set_ylabel("SLO violations per bin")
    axes[1].legend(fontsize=8)
    if "infaas" in timelines:
        tl = timelines["infaas"]
        by_model: dict[str, np.ndarray] = {}
        for variant, counts in tl["variants"].items():
            model = variant.split("/")[0]
            by_model[model] = by_model.get(model, 0) + np.asarray(counts)
        if by_model:
            axes[2].stackplot(tl["t_s"], *by_model.values(), labels=list(by_model))
            axes[2].legend(fontsize=7, loc="upper left")
    axes[2].set_ylabel("infaas: queries per model per bin")
    axes[2].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
