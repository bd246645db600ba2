"""The open-loop replayer against a real cluster started by `infaas up`."""

from __future__ import annotations

import numpy as np
import pytest

from infaas_cli.catalog.home import InfaasHome
from infaas_cli.client import Client
from infaas_cli.cluster import embedded
from infaas_cli.experiments.replay import CostMeter, replay
from infaas_cli.experiments.trace import QueryClass, TraceConfig, generate_trace
from infaas_cli.policy.selection import PriceTable
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from support import FAST, ZOO

REAL_CLASSES = [
    QueryClass("loose", "digit-classification", "digits", latency_ms=250.0, min_accuracy=0.9, weight=3.0),
    QueryClass("accurate", "digit-classification", "digits", latency_ms=250.0, min_accuracy=0.97,
               objective="latency", weight=1.0),
]


@pytest.mark.slow
def test_replay_against_a_real_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    home = InfaasHome(tmp_path / "home")
    for name in ("digits-logreg", "digits-mlp"):
        e = ZOO[name]
        register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
        generate_variants(home, name)
    profile_models(home, ["digits-logreg", "digits-mlp"], batch_sizes=[1, 8], settings=FAST)
    x = np.load(ZOO["digits-mlp"].validation)["x"]
    config = TraceConfig(duration_s=3.0, base_qps=40.0, peak_qps=100.0, burst_rate_per_min=20.0,
                         burst_multiplier=1.5, burst_duration_s=0.5, seed=11)
    trace = generate_trace(config, REAL_CLASSES)
    try:
        record = embedded.up(workers=1, home=home.path, heartbeat_interval_s=0.25)
        with Client(record["master"]["client_endpoint"], timeout_s=30.0) as client:
            client.push(home.store, home.artifacts)
            for cls in REAL_CLASSES:  # load the variants first: this test is about the replayer, not cold starts
                client.query({"x": x[:1]}, **cls.query_kwargs())
            meter = CostMeter(client.status, PriceTable(1e-5, 1e-4, 1e-4))
            result = replay(client, trace, REAL_CLASSES, lambda c, i: {"x": x[i % len(x)][None]},
                            duration_s=config.duration_s, drain_timeout_s=10.0, cost_meter=meter,
                            cost_interval_s=0.5)
    finally:
        embedded.down(home.path)
        home.close()
    s = result.summary()
    print({k: v for k, v in s.items() if k != "per_class"})
    assert s["arrivals"] == s["sent"] == len(trace) and 150 < len(trace) < 400
    assert s["completed"] + s["failed"] == s["sent"]
    assert s["completed"] >= 0.95 * s["sent"], s["errors"]
    # Open loop: sends track the schedule.
    assert s["send_lag_ms"]["p99"] < 100
    assert 0 < s["p50_ms"] <= s["p99_ms"] < 10_000
    assert 0 <= s["slo_violation_rate"] < 0.5 and 0 < s["goodput_qps"] <= len(trace) / config.duration_s
    assert set(s["per_class"]) == {"loose", "accurate"}
    assert sum(c["sent"] for c in s["per_class"].values()) == s["sent"]
    assert {r.variant.split("/")[0] for r in result.records if r.ok} <= {"digits-logreg", "digits-mlp"}
    assert all(r.variant.startswith("digits-mlp/") for r in result.records if r.ok and r.class_index == 1)
    # The meter saw at least the variants loaded by the warm-up, for about the whole replay.
    assert s["core_seconds"] >= 0.5 * config.duration_s and s["cost_usd"] > 0
    tl = result.timeline(0.5)
    assert len(tl["t_s"]) == 6 and sum(tl["completed"]) == s["completed"]
