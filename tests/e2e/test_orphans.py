"""Processes that never orphan: `infaas up`/`down` and the worker's master-gone exit, with real daemons killed
for real (SIGKILL of the master), and the daemons' rotating logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from infaas_cli.client import Client
from infaas_cli.cluster import embedded
from support import run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _gone(pid: int) -> bool:
    return not embedded._alive(pid)


def _kill_master(record) -> None:
    os.kill(record["master"]["pid"], signal.SIGKILL)
    wait_for(lambda: _gone(record["master"]["pid"]), 10.0)


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    yield path
    embedded.down(path)  # whatever a failed test left


def test_down_stops_the_workers_of_a_killed_master(home):
    # Through the CLI, as a user runs it: knobs `up` has no option for reach the daemons by --set.
    r = run_cli(home, "--set", "worker.master_grace_s=600", "--set", "autoscale.idle_unload_s=7", "up",
                "--no-gateway", "--workers", "2", "--heartbeat-interval-s", "0.25")
    assert r.returncode == 0, r.stderr
    config = (home / "run" / "infaas.toml").read_text()
    assert "idle_unload_s = 7.0" in config and "master_grace_s = 600.0" in config
    # A worker host as the horizontal autoscaler's scale-out command starts one.
    r = run_cli(home, "cluster", "host", "start", "--enforce", "none", "--json")
    assert r.returncode == 0, r.stderr
    record = embedded.read_cluster(home)
    assert all(e["create_time"] for e in [record["master"], *record["workers"]])
    workers = [w["pid"] for w in record["workers"]]
    assert len(workers) == 3
    _kill_master(record)
    assert all(not _gone(p) for p in workers)  # a long grace: they wait for their master

    r = run_cli(home, "down")
    assert r.returncode == 0 and "stopped 3 process(es)" in r.stderr, r.stderr
    assert all(_gone(p) for p in workers)
    assert embedded.read_cluster(home) is None
    hosts = json.loads(run_cli(home, "cluster", "host", "list", "--json").stdout)["hosts"]
    assert [h["stopped_at"] is not None for h in hosts] == [True]  # its bill is closed


def test_up_over_a_stale_record_stops_its_survivors_first(home):
    first = embedded.up(workers=1, home=home, heartbeat_interval_s=0.25,
                        overrides={"worker.master_grace_s": 600}, gateway=True, http_port=0, grpc_port=0)
    old = [first["workers"][0]["pid"], first["gateway"]["pid"]]
    _kill_master(first)
    second = embedded.up(workers=1, home=home, heartbeat_interval_s=0.25, overrides={"worker.master_grace_s": 600})
    assert sorted(second["stopped_stale"]) == sorted(old)
    assert all(_gone(p) for p in old)
    with Client(second["master"]["client_endpoint"], timeout_s=10) as client:
        st = client.status()
    assert [w["worker_id"] for w in st["workers"]] == ["local-0"] and st["master"]["workers_alive"] == 1
    assert st["master"]["pid"] == second["master"]["pid"]
    embedded.down(home)
    assert _gone(second["workers"][0]["pid"]) and _gone(second["master"]["pid"])


def test_a_worker_exits_once_its_master_is_gone_past_the_grace_period(home):
    record = embedded.up(workers=1, home=home, heartbeat_interval_s=0.25, overrides={"worker.master_grace_s": 1.0})
    worker = psutil.Process(record["workers"][0]["pid"])
    _kill_master(record)
    started = time.monotonic()
    code = worker.wait(timeout=20)  # our child: its exit status
    assert code == 3  # "unavailable": systemd's Restart=on-failure restarts it on a cluster
    assert 1.0 <= time.monotonic() - started < 15
    log = (home / "run" / "local-0.log").read_text()
    assert "lost the connection to the master" in log and "out of reach" in log and "master_grace_s = 1 s" in log


def test_a_worker_outlives_a_master_restart_within_the_grace_period(home):
    """A master back within the grace period keeps its workers (the connection comes back)."""
    record = embedded.up(workers=1, home=home, heartbeat_interval_s=0.25, overrides={"worker.master_grace_s": 30})
    worker = record["workers"][0]["pid"]
    ep = record["master"]
    _kill_master(record)
    log_path = home / "run" / "local-0.log"
    wait_for(lambda: "lost the connection" in log_path.read_text(), 10.0)
    master = subprocess.Popen([sys.executable, "-m", "infaas_cli", "--home", str(home), "--config", record["config"],
                               "master", "--client-endpoint", ep["client_endpoint"], "--worker-endpoint",
                               ep["worker_endpoint"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(ep["client_endpoint"], timeout_s=10) as client:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 20.0)
        assert log_path.read_text().count("connected to the master at") >= 2 and not _gone(worker)
    finally:
        master.terminate()
        master.wait(10)


def test_a_recycled_pid_is_never_stopped(home):
    """A record whose pid now names another process (another start time, or not an infaas process) is stale:
    `down` leaves that process alone and `up` starts anew."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        started = psutil.Process(bystander.pid).create_time()
        run = home / "run"
        run.mkdir(parents=True)
        for master in ({"pid": bystander.pid, "create_time": started - 1000.0}, {"pid": bystander.pid}):
            (run / "cluster.json").write_text(json.dumps({"master": master, "workers": [master]}))
            assert embedded.process_of(master) is None
            assert embedded.down(home) == []
            assert bystander.poll() is None
        assert embedded.process_of({"pid": bystander.pid, "create_time": started}) is not None
    finally:
        bystander.kill()
        bystander.wait()


def test_daemon_logs_rotate_at_their_size_cap(tmp_path):
    log_file = tmp_path / "d.log"
    code = ("import logging; from infaas_daemons.common import setup_logging; "
            f"setup_logging('INFO', {str(log_file)!r}, 4096, 2); "
            "[logging.getLogger('infaas').info('line %05d ' + 'x' * 100, i) for i in range(400)]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.log", "d.log.1", "d.log.2"]  # 400 lines of ~150 bytes: ~60 KB, capped at 3 × 4 KiB
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    assert "line 00399" in log_file.read_text()
