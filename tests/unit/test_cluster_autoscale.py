"""Horizontal autoscaling policy with plain numbers and a fake clock."""

from __future__ import annotations

import pytest

from infaas_cli.policy.cluster_autoscale import ClusterAutoscaleConfig, ClusterState, HostLoad, autoscale_cluster
from infaas_cli.errors import InfaasError

CFG = ClusterAutoscaleConfig(out_window_s=10, in_window_s=30, backoff_s=20, max_workers=3)


def run(loads_at, until_s, step_s=1.0, cfg=CFG):
    """Drive the policy; loads_at(t) -> list[HostLoad]. Returns [(t, action)]."""
    state, t, out = ClusterState(), 0.0, []
    while t <= until_s:
        actions, state = autoscale_cluster(state, loads_at(t), t, cfg)
        out += [(t, a) for a in actions]
        t += step_s
    return out


def hosts(*utils, kind="cpu"):
    return [HostLoad(f"w{i}", kind, u) for i, u in enumerate(utils)]


def test_scale_out_needs_every_host_busy_for_the_window():
    actions = run(lambda t: hosts(0.95, 0.9), 12)
    assert [(t, a.kind) for t, a in actions] == [(10.0, "scale_out")]
    assert run(lambda t: hosts(0.95, 0.5), 60) == []  # one host with room: no new host


def test_backoff_after_an_action():
    actions = run(lambda t: hosts(0.95, 0.95), 45)
    assert [t for t, _ in actions] == [10.0, 30.0]  # window 10, then back-off 20 + window already met


def test_scale_in_waits_longer_and_picks_the_least_busy():
    actions = run(lambda t: hosts(0.1, 0.05, 0.15), 31)
    assert [(t, a.kind, a.worker_id) for t, a in actions] == [(30.0, "scale_in", "w1")]


def test_no_flapping_under_oscillating_load():
    actions = run(lambda t: hosts(*(2 * [0.95 if int(t) % 8 < 4 else 0.1])), 200)
    assert actions == []


def test_min_and_max_workers_and_dead_hosts():
    assert run(lambda t: hosts(0.05), 100) == []  # never below min_workers
    assert run(lambda t: hosts(0.99, 0.99, 0.99), 100) == []  # at max_workers
    dead = lambda t: [HostLoad("w0", "cpu", 0.99), HostLoad("w1", "cpu", 0.0, alive=False)]
    assert [a.kind for _, a in run(dead, 11)] == ["scale_out"]


def test_kinds_scale_independently():
    loads = lambda t: hosts(0.99) + hosts(0.1, kind="gpu")
    actions = run(loads, 12)
    assert [(a.kind, a.hardware) for _, a in actions] == [("scale_out", "cpu")]


def test_config_rejects_windows_that_would_flap():
    with pytest.raises(InfaasError, match="in_window_s"):
        ClusterAutoscaleConfig(out_window_s=10, in_window_s=5)
    with pytest.raises(InfaasError):
        ClusterAutoscaleConfig(scale_in_utilisation=0.9, scale_out_utilisation=0.8)
