"""The embedded default: a master and N local workers as background processes under INFAAS_HOME/run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from infaas_cli.client import Client, endpoints_file
from infaas_cli.config import infaas_home
from infaas_cli.errors import InfaasError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def run_dir(home: str | Path | None = None) -> Path:
    return infaas_home(home) / "run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def cluster_file(home: str | Path | None = None) -> Path:
    return run_dir(home) / "cluster.json"


def read_cluster(home: str | Path | None = None) -> dict[str, Any] | None:
    path = cluster_file(home)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _spawn(args: list[str], log_path: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "INFAAS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "infaas_cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def up(workers: int = 1, home: str | Path | None = None, heartbeat_interval_s: float = 1.0,
       policy: str = "infaas", master_args: list[str] | None = None) -> dict[str, Any]:
    """Start a master and `workers` workers unless they run already; return the cluster record.

    `master_args` are extra `infaas master` options (e.g. the autoscaling windows).
    """
    from infaas_cli.policy.baselines import POLICIES

    if workers < 1:
        raise InfaasError("--workers must be at least 1")
    if policy not in POLICIES:
        raise InfaasError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}")
    home = infaas_home(home)
    rdir = run_dir(home)
    rdir.mkdir(parents=True, exist_ok=True)
    current = read_cluster(home)
    if current and _alive(current["master"]["pid"]):
        raise InfaasError(f"infaas is already up (master pid {current['master']['pid']} at "
                          f"{current['master']['client_endpoint']}); `infaas down` first to restart it")
    ep_file = endpoints_file(home)
    ep_file.unlink(missing_ok=True)
    # Free ports picked by the master (port 0) and recorded in the endpoints file: two homes, or a
    # test beside a running demo, never collide.
    master = _spawn(["master", "--data-dir", str(home / "master"), "--endpoints-file", str(ep_file),
                     "--client-endpoint", "tcp://127.0.0.1:0", "--worker-endpoint", "tcp://127.0.0.1:0",
                     "--heartbeat-interval-s", str(heartbeat_interval_s), "--policy", policy, *(master_args or [])],
                    rdir / "master.log", home)
    deadline = time.monotonic() + START_TIMEOUT_S
    endpoints = None
    while time.monotonic() < deadline:
        if ep_file.is_file():
            endpoints = json.loads(ep_file.read_text())
            if endpoints.get("pid") == master.pid:
                break
        if master.poll() is not None:
            raise InfaasError(f"the master exited at start (code {master.returncode}); see {rdir / 'master.log'}")
        time.sleep(0.05)
    else:
        master.kill()
        raise InfaasError(f"the master did not start within {START_TIMEOUT_S:.0f} s; see {rdir / 'master.log'}")
    record: dict[str, Any] = {"master": {"pid": master.pid, **endpoints}, "workers": []}
    for i in range(workers):
        wid = f"local-{i}"
        proc = _spawn(["worker", "--master", endpoints["worker_endpoint"], "--worker-id", wid,
                       "--cache-dir", str(home / "worker-cache"), "--heartbeat-interval-s", str(heartbeat_interval_s)],
                      rdir / f"{wid}.log", home)
        record["workers"].append({"pid": proc.pid, "worker_id": wid})
    cluster_file(home).write_text(json.dumps(record, indent=2))
    with Client(endpoints["client_endpoint"], timeout_s=5.0) as client:
        while time.monotonic() < deadline:
            alive = [w for w in client.status()["workers"] if w["alive"]]
            if len(alive) >= workers:
                break
            time.sleep(0.1)
        else:
            down(home)
            raise InfaasError(f"workers did not register within {START_TIMEOUT_S:.0f} s; see the logs in {rdir}")
    return record


def down(home: str | Path | None = None) -> list[int]:
    """Stop the embedded daemons (workers first), SIGTERM then SIGKILL after a grace period."""
    home = infaas_home(home)
    record = read_cluster(home)
    if record is None:
        return []
    pids = [w["pid"] for w in record.get("workers", [])] + [record["master"]["pid"]]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    cluster_file(home).unlink(missing_ok=True)
    endpoints_file(home).unlink(missing_ok=True)
    return pids
