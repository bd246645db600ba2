"""Offline (batch) queries: a directory through the daemons, throttled, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from infaas_cli.client.offline import BUSY_CPU_PERCENT, next_window, run_offline
from support import running_cluster, ZOO, build_catalog

MODEL = "digits-mlp"


def test_window_is_aimd():
    assert next_window(1, 0, 10.0, 8) == 2
    assert next_window(8, 0, 10.0, 8) == 8
    assert next_window(8, 3, 10.0, 8) == 4
    assert next_window(8, 0, BUSY_CPU_PERCENT + 1, 8) == 4
    assert next_window(1, 5, 99.0, 8) == 1  # never stalls


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("offline") / "home"
    home = build_catalog(path, models=(MODEL,))
    try:
        with running_cluster(home) as (_, client):
            yield home, client
    finally:
        home.close()


def _inputs(tmp_path, sizes=(3, 40, 1, 70)):
    d = tmp_path / "in"
    d.mkdir()
    x = np.load(ZOO[MODEL].validation)["x"]
    start = 0
    for i, n in enumerate(sizes):
        np.save(d / f"part-{i}.npy", x[start:start + n])
        start += n
    (d / "notes.txt").write_text("ignored")
    return d, x[:start]


def test_directory_is_processed_and_matches_onnxruntime(served, tmp_path):
    _, client = served
    d, x = _inputs(tmp_path)
    out = tmp_path / "out"
    seen = []
    report = run_offline(client, MODEL, d, out, on_progress=seen.append)
    assert (report.files_done, report.files_skipped, report.files_failed) == (4, 0, [])
    assert report.queries == 1 + 2 + 1 + 3  # 40 and 70 rows split into chunks of at most 32
    ref = ort.InferenceSession(str(ZOO[MODEL].file)).run(None, {"x": x})
    labels = np.concatenate([np.load(out / f"part-{i}.npz")["label"] for i in range(4)])
    assert np.mean(labels == ref[0]) >= 0.9
    probs = np.concatenate([np.load(out / f"part-{i}.npz")["probabilities"] for i in range(4)])
    assert probs.shape == (114, 10)
    assert len(seen) == 4


def test_resumes_without_redoing_finished_files(served, tmp_path):
    _, client = served
    d, _ = _inputs(tmp_path)
    out = tmp_path / "out"

    class Interrupt(Exception):
        pass

    def stop_after_two(name, done=[]):
        done.append(name)
        if len(done) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_offline(client, MODEL, d, out, on_progress=stop_after_two)
    finished = sorted(p.name for p in out.iterdir() if p.suffix == ".npz")
    assert len(finished) == 2
    report = run_offline(client, MODEL, d, out)
    assert (report.files_skipped, report.files_done) == (2, 2)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i}.npz" for i in range(4)]


def test_throttles_when_online_load_rises(served, tmp_path):
    _, client = served
    d, _ = _inputs(tmp_path, sizes=(32,) * 6)
    busy = {"master": {"pending": 50}, "workers": [{"alive": True, "cpu_percent": 20.0}]}
    report = run_offline(client, MODEL, d, tmp_path / "out", status_interval_s=0.0, max_in_flight=8,
                         status_fn=lambda: busy)
    assert report.files_done == 6
    # Every status poll saw online work waiting: the window never grew past one.
    assert report.max_window == 1 and report.queries == 6
    calm = {"master": {"pending": 0}, "workers": [{"alive": True, "cpu_percent": 20.0}]}
    report = run_offline(client, MODEL, d, tmp_path / "out2", status_interval_s=0.0, max_in_flight=4,
                         status_fn=lambda: calm)
    assert report.max_window == 4


def test_offline_cli(served, tmp_path):
    home, _ = served
    d, _ = _inputs(tmp_path, sizes=(5, 5))
    env = {**os.environ, "INFAAS_HOME": str(home.path)}
    cmd = [sys.executable, "-m", "infaas_cli", "query", "--offline", "--model", MODEL, "--input-dir", str(d),
           "--output-dir", str(tmp_path / "out"), "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["done"] == 2 and summary["failed"] == []
    again = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120).stdout)
    assert again["skipped_done_earlier"] == 2 and again["done"] == 0
    bad = subprocess.run([sys.executable, "-m", "infaas_cli", "query", "--offline", "--model", MODEL], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--input-dir" in bad.stderr
