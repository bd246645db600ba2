"""`infaas bench slo` and `bench capacity`, bounded: real daemons and hosts, a small zoo, seconds not minutes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infaas_cli.catalog.home import InfaasHome
from infaas_cli.cluster import hosts
from infaas_cli.experiments.bench_slo import SloBenchConfig, run_bench
from infaas_cli.experiments.capacity import CapacityConfig, run_capacity
from infaas_cli.experiments.testbed import HostPlan, ScalingPlan
from infaas_cli.experiments.trace import QueryClass
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from support import FAST, ZOO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

MODELS = ("digits-logreg", "digits-mlp", "cancer-logreg")
CLASSES = [  # two tasks, accuracy and latency needs that differ, all met by the three small models
    QueryClass("digits-loose", "digit-classification", "digits", latency_ms=200.0, min_accuracy=0.9, weight=2.0),
    QueryClass("digits-strict", "digit-classification", "digits", latency_ms=200.0, min_accuracy=0.97, weight=1.0),
    QueryClass("cancer", "tumor-classification", "breast-cancer", latency_ms=200.0, min_accuracy=0.95, weight=1.0),
]
PLAN = HostPlan(cores=2, cpu_quota=0.5, min_hosts=1, max_hosts=2)


@pytest.fixture
def bench_home(tmp_path):
    home = tmp_path / "home"
    with InfaasHome(home) as h:
        for name in MODELS:
            e = ZOO[name]
            register_model(h, e.file, e.name, e.task, e.dataset, e.validation)
            generate_variants(h, name)
        profile_models(h, list(MODELS), batch_sizes=[1, 8], settings=FAST)
    yield home
    hosts.stop_all(home)


def test_bench_slo_and_capacity_smoke(bench_home, tmp_path):
    out = tmp_path / "results"
    config = SloBenchConfig(duration_s=4.0, base_qps=20.0, peak_qps=40.0, hosts=PLAN,
                            scaling=ScalingPlan(out_window_s=1.0, in_window_s=3.0, backoff_s=1.0))
    report = run_bench(config, bench_home, out, classes=CLASSES, models=MODELS)
    assert set(report["policies"]) == {"infaas", "fixed-peak", "fixed-autoscale"}
    for name, p in report["policies"].items():
        assert p["completed"] + p["failed"] == p["arrivals"] > 0, name
        assert 0 <= p["slo_violation_rate"] <= 1 and p["cost_usd"] > 0, name
    # fixed-peak holds its max_hosts for the whole trace; the others start with min_hosts.
    assert report["policies"]["fixed-peak"]["instance_seconds"] == pytest.approx(2 * 4.0, rel=0.05)
    assert report["policies"]["infaas"]["mean_hosts"] < 2.0
    written = json.loads((out / "bench_slo.json").read_text())
    assert written["policies"].keys() == report["policies"].keys() and (out / "bench_slo.png").stat().st_size > 0
    assert set(written["timelines"]["infaas"]) >= {"t_s", "violations", "hosts_held"}
    # Results are never written over silently: the CLI refuses before it starts anything.
    cli = subprocess.run([sys.executable, "-m", "infaas_cli", "--home", str(bench_home), "bench", "slo",
                          "--output-dir", str(out)], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 1 and "--overwrite" in cli.stderr

    capacity = run_capacity(CapacityConfig(policies=("infaas", "fixed-peak"), host_plan=PLAN, probe_s=1.0,
                                           warmup_s=0.5, start_qps=50.0, growth=4.0, max_qps=200.0,
                                           settle_s=0.2),
                            bench_home, out, classes=CLASSES, models=MODELS)
    for name in ("infaas", "fixed-peak"):
        r = capacity["policies"][name]
        assert r["probes"] and r["capacity_qps"] in [p["qps"] for p in r["probes"]] + [0.0]
    assert json.loads((out / "bench_capacity.json").read_text())["policies"].keys() == {"infaas", "fixed-peak"}
    # Every host the runs started was stopped, and its bill closed.
    assert all(h["stopped_at"] is not None for h in hosts.read_ledger(bench_home))
