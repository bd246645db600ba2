"""Profiles that stay true, on real daemons: a CPU hog pinned to one worker's core slows it down; selection
moves away from it, the master sees the drift, and the worker re-profiles the variant (a new profile
record, the old one kept in the history, both in `status`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infaas_cli.catalog.store import LmdbStore
from infaas_cli.cluster import embedded
from infaas_cli.client import Client
from support import ZOO, build_catalog, wait_for

MODEL = "digits-cnn-l"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                       reason="needs two cores to pin a worker and its interference apart"),
]


def pin(pid: int, core: int) -> None:
    """Pin every thread of a process to one core (new threads inherit it), like `taskset -a -cp`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except ProcessLookupError:
            pass  # a thread that just ended


def hog(core: int) -> subprocess.Popen:
    """A busy loop on one core: honest interference, as a co-located tenant would cause."""
    cmd = [sys.executable, "-c", "while True: pass"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_a_slowed_worker_is_avoided_and_reprofiled(tmp_path, monkeypatch):
    home = build_catalog(tmp_path / "home", models=(MODEL,))
    monkeypatch.setenv("INFAAS_HOME", str(home.path))
    # Short windows so the test stays bounded (the `drift` settings section, DriftConfig's fields).
    for key, value in {"WINDOW_S": "5", "MIN_SAMPLES": "10", "REPROFILE_COOLDOWN_S": "600",
                       "THRESHOLD": "1.5", "REPROFILE_BUDGET_MS": "1500"}.items():
        monkeypatch.setenv(f"INFAAS_DRIFT_{key}", value)
    # Interference must last a window before the autoscaler replicates away from it: a short one here, shorter
    # than a re-profile takes (its budget per batch size above) — a stored re-profile resets the evidence of
    # interference (the slowed latency becomes the profile), so the replica must come first.
    # A serial client serves 13-30 queries a second here: 10 in a window of 1 s are evidence enough.
    for key, value in {"WINDOW_S": "1", "HOLD_S": "6", "COOLDOWN_S": "1", "MIN_WINDOW_QUERIES": "10"}.items():
        monkeypatch.setenv(f"INFAAS_AUTOSCALE_{key}", value)
    cores = sorted(os.sched_getaffinity(0))[:2]
    record = embedded.up(workers=2, home=home.path, heartbeat_interval_s=0.25)
    interference = None
    try:
        for w, core in zip(record["workers"], cores):
            pin(w["pid"], core)
        core_of = {w["worker_id"]: core for w, core in zip(record["workers"], cores)}
        with Client(record["master"]["client_endpoint"], timeout_s=30) as client:
            client.push(home.store, home.artifacts)
            # 16 samples a query: inference takes a few ms, longer than a scheduler slice, so a co-located hog
            # shows in the inference time itself (a sub-ms batch-1 run is rarely preempted).
            x = np.load(ZOO[MODEL].validation)["x"][:16]
            slo = {"model": MODEL, "latency_ms": 200.0, "objective": "latency"}

            def serve(n: int) -> list[str]:
                return [client.query({"x": x}, **slo).worker for _ in range(n)]

            before = serve(60)
            slow = max(set(before), key=before.count)  # the worker selection favours now
            interference = hog(core_of[slow])
            pin(interference.pid, core_of[slow])

            seen: list = []

            def reprofiled():
                serve(10)
                seen[:] = client.status()["master"].get("reprofiles", [])
                done = [r for r in seen if r.get("worker") == slow and r.get("status") == "stored"]
                return done[-1] if done else None

            try:
                entry = wait_for(reprofiled, timeout_s=30, interval_s=0.1)
            except AssertionError:
                raise AssertionError(f"no stored re-profile of {slow} within 30 s; re-profiles: {seen}") from None
            assert entry["ratio"] >= 1.5, entry  # drifted slower, beyond the threshold
            variant = entry["variant"]
            # Selection moves away from the slowed worker: the autoscaler replicates the variant elsewhere (it is
            # interfered with), and selection sees the slowed worker's queue as longer.
            share_before = before.count(slow) / len(before)

            def moved():
                after = serve(20)
                return after.count(slow) / len(after) < min(0.5, share_before)
            wait_for(moved, timeout_s=30, interval_s=0.1)
    finally:
        if interference is not None:
            interference.kill()
            interference.wait(5)
        embedded.down(home.path)
    # The re-profile is a new profile record on the master; the one it replaced is in the history.
    master_store = LmdbStore(Path(home.path) / "master" / "metadata.lmdb")
    try:
        history = master_store.profile_history(variant)
        assert len(history) >= 2 and history[-1].source == "reprofile" and history[-1].worker_id == slow
        current = [p for p in master_store.profiles(MODEL) if p.variant == variant]
        assert max(p.measured_at for p in current) == history[-1].measured_at
    finally:
        master_store.close()
        home.close()
