"""Model-level autoscaling on real daemons: load rises, a replica is added; load falls, it is removed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from infaas_cli.cluster import embedded
from infaas_cli.client import Client, QueryFailed
from support import ZOO, build_catalog, wait_for

pytestmark = pytest.mark.slow


def actions(client: Client) -> list[str]:
    return [a["kind"] for a in client.status()["master"]["autoscale_actions"]]


def test_scales_up_under_load_then_back(tmp_path, monkeypatch):
    home = build_catalog(tmp_path / "home", models=("digits-cnn-l",))
    monkeypatch.setenv("INFAAS_HOME", str(home.path))
    record = embedded.up(workers=1, home=home.path, heartbeat_interval_s=0.25, master_args=[
        "--autoscale-window-s", "1", "--autoscale-hold-s", "2.5", "--autoscale-cooldown-s", "0.5",
        "--autoscale-idle-unload-s", "8"])
    try:
        with Client(record["master"]["client_endpoint"], timeout_s=60) as client:
            client.push(home.store, home.artifacts)
            x = np.repeat(np.load(ZOO["digits-cnn-l"].validation)["x"][:1], 32, axis=0)
            slo = {"model": "digits-cnn-l", "latency_ms": 50.0, "objective": "cost"}
            first = client.query({"x": x}, **slo)
            assert actions(client) == []
            # Open loop, 32-sample queries at 1.6 × what the chosen variant serves on its threads (by its
            # profile), capped so the client keeps up on this machine.
            profile = next(p for p in home.store.profiles("digits-cnn-l") if p.variant == first.variant)
            capacity_qps = 1e3 / profile.batches["32"]["p50_ms"]
            rate = min(200.0, max(60.0, 1.6 * capacity_qps))
            ids, t0, scaled_up = [], time.monotonic(), None
            while time.monotonic() - t0 < 15 and scaled_up is None:
                ids.append(client.submit({"x": x}, **slo))
                time.sleep(1 / rate)
                if len(ids) % 30 == 0 and {"replicate", "upgrade"} & set(actions(client)):
                    scaled_up = time.monotonic() - t0
            assert scaled_up is not None, f"no scale-up; first choice {first.variant}"
            results = client.gather(ids, timeout_s=60)
            assert not [r for r in results.values() if isinstance(r, QueryFailed)]
            # Load gone: the system scales back (fewer replicas, or unloads once idle: with no traffic to
            # measure, a cheaper variant is not judged, see min_window_queries).
            n_up = len(actions(client))
            wait_for(lambda: {"remove_replica", "downgrade", "unload"} & set(actions(client)[n_up - 1:]),
                     timeout_s=25, interval_s=0.25)
    finally:
        embedded.down(home.path)
        home.close()
