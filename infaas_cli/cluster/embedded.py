"""The embedded default: a master and N local workers as background processes under INFAAS_HOME/run,
all reading one generated config file there (run/infaas.toml)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infaas_cli.client import Client, endpoints_file
from infaas_cli.config import infaas_home
from infaas_cli.errors import InfaasError

if TYPE_CHECKING:
    from infaas_cli.settings import Settings

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


def config_path(home: str | Path | None = None) -> Path:
    """The config file the embedded daemons run with."""
    return run_dir(home) / "infaas.toml"


def _daemon_env(home: Path) -> dict[str, str]:
    """The environment without the variables that set config keys: the generated file is the whole truth."""
    from infaas_cli.settings import ENV_ALIASES, all_keys, env_var

    setting_vars = set(ENV_ALIASES) | {env_var(k) for k in all_keys()}
    return {**{k: v for k, v in os.environ.items() if k not in setting_vars}, "INFAAS_HOME": str(home),
            "PYTHONUNBUFFERED": "1"}


def _spawn(args: list[str], log_path: Path, home: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "infaas_cli", "--config", str(config_path(home)), *args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_daemon_env(home),
                                start_new_session=True)


def _write_config(path: Path, settings: Settings) -> None:
    from infaas_cli.settings import to_toml

    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Written by `infaas up`: the settings of the embedded master and workers.\n" + to_toml(settings))
    tmp.replace(path)


def up(workers: int = 1, home: str | Path | None = None, heartbeat_interval_s: float | None = None,
       policy: str | None = None, master_args: list[str] | None = None, *, settings: Settings | None = None,
       overrides: Mapping[str, Any] | None = None, gateway: bool | None = None, http_port: int | None = None,
       grpc_port: int | None = None, metrics_port: int | None = None) -> dict[str, Any]:
    """Start a master and `workers` workers unless they run already; return the cluster record.

    The daemons read a generated config file, run/infaas.toml: `settings` (default: loaded as the CLI would,
    with `overrides` such as {"autoscale.window_s": 1}), with free local ports and the data directories under
    `home`. `heartbeat_interval_s` and `policy` are shorthands for the master/worker keys; `master_args` are
    extra `infaas master` options, kept for callers that still pass them.

    The gateway (`infaas gateway`: REST and gRPC, the Open Inference Protocol) starts too when `gateway` is
    true, or when it is None and `http_port` or `grpc_port` is given (gateway.http_port / grpc_port; 0: a free
    port). `metrics_port` is master.metrics_port (the master's Prometheus /metrics; 0: a free port). The bound
    ports are in the record's "fronts".
    """
    from infaas_cli.settings import SecuritySettings, load_settings, override, with_home_defaults

    if workers < 1:
        raise InfaasError("--workers must be at least 1")
    home = infaas_home(home)
    shorthand = {"master.heartbeat_interval_s": heartbeat_interval_s, "worker.heartbeat_interval_s": heartbeat_interval_s,
                 "master.policy": policy, "gateway.http_port": http_port, "gateway.grpc_port": grpc_port,
                 "master.metrics_port": metrics_port}
    if gateway is None:
        gateway = http_port is not None or grpc_port is not None
    if settings is None:
        settings, _ = load_settings(overrides={**shorthand, **(overrides or {})}, home=home)
    else:
        settings = override(settings, {**shorthand, **(overrides or {})})
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
    if not settings.security.authorized_keys:
        # A client's own keys ($INFAAS_CURVE_SECRET_KEY) do not make a CurveZMQ master: without the
        # master's authorised keys the local cluster runs on loopback without CurveZMQ, as it always did.
        settings = replace(settings, security=SecuritySettings())
    settings = with_home_defaults(replace(settings, master=replace(
        settings.master, client_endpoint="tcp://127.0.0.1:0", worker_endpoint="tcp://127.0.0.1:0",
        data_dir=str(home / "master"))), home)
    _write_config(config_path(home), settings)
    master = _spawn(["master", "--endpoints-file", str(ep_file), *(master_args or [])], rdir / "master.log", home)
    deadline = time.monotonic() + START_TIMEOUT_S
    endpoints = wait_for_endpoints(ep_file, master, deadline)
    if endpoints is None:
        if master.poll() is not None:
            raise InfaasError(f"the master exited at start (code {master.returncode}); see {rdir / 'master.log'}")
        master.kill()
        raise InfaasError(f"the master did not start within {START_TIMEOUT_S:.0f} s; see {rdir / 'master.log'}")
    # The workers learn the port the master picked from the same file, now completed.
    settings = replace(settings, worker=replace(settings.worker, master_endpoint=endpoints["worker_endpoint"]),
                       client=replace(settings.client, master=endpoints["client_endpoint"]))
    _write_config(config_path(home), settings)
    record: dict[str, Any] = {"master": {"pid": master.pid, **endpoints}, "workers": [],
                              "config": str(config_path(home))}
    for i in range(workers):
        wid = f"local-{i}"
        proc = _spawn(["worker", "--worker-id", wid], rdir / f"{wid}.log", home)
        record["workers"].append({"pid": proc.pid, "worker_id": wid})
    record["fronts"] = {"metrics": endpoints.get("metrics_endpoint")}
    cluster_file(home).write_text(json.dumps(record, indent=2))
    with Client(endpoints["client_endpoint"], timeout_s=5.0, curve_secret_key=settings.security.curve_secret_key,
                master_public_key=settings.security.master_public_key) as client:
        while time.monotonic() < deadline:
            if client.status(workers_limit=0)["master"]["workers_alive"] >= workers:
                break
            time.sleep(0.1)
        else:
            down(home)
            raise InfaasError(f"workers did not register within {START_TIMEOUT_S:.0f} s; see the logs in {rdir}")
    if gateway:
        try:
            record["gateway"], fronts = _start_gateway(home, deadline)
        except InfaasError:
            down(home)
            raise
        record["fronts"].update(fronts)
        cluster_file(home).write_text(json.dumps(record, indent=2))
    return record


def gateway_endpoints_file(home: str | Path | None = None) -> Path:
    return run_dir(home) / "gateway.json"


def _start_gateway(home: Path, deadline: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start `infaas gateway` with the generated config; wait for its bound ports. (record entry, fronts)."""
    ep_file = gateway_endpoints_file(home)
    ep_file.unlink(missing_ok=True)
    rdir = run_dir(home)
    proc = _spawn(["gateway", "--endpoints-file", str(ep_file)], rdir / "gateway.log", home)
    bound = wait_for_endpoints(ep_file, proc, max(deadline, time.monotonic() + 10.0))
    if bound is not None:
        return ({"pid": proc.pid, **bound},
                {"http": bound.get("http"), "http_port": bound.get("http_port"), "grpc": bound.get("grpc"),
                 "grpc_port": bound.get("grpc_port")})
    if proc.poll() is not None:
        tail = (rdir / "gateway.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise InfaasError(f"the gateway exited at start (code {proc.returncode}): {tail[0]}; see "
                          f"{rdir / 'gateway.log'}")
    proc.kill()
    raise InfaasError(f"the gateway did not start within {START_TIMEOUT_S:.0f} s; see {rdir / 'gateway.log'}")


def wait_for_endpoints(path: Path, proc: subprocess.Popen, deadline: float) -> dict[str, Any] | None:
    """The endpoints a daemon started with `--endpoints-file path` wrote once bound (the file names its pid);
    None when `proc` exited first or `deadline` (time.monotonic()) passed — `proc.poll()` tells which."""
    while time.monotonic() < deadline:
        if path.is_file():
            try:
                written = json.loads(path.read_text())
            except ValueError:  # caught mid-write
                written = {}
            if written.get("pid") == proc.pid:
                return written
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def down(home: str | Path | None = None) -> list[int]:
    """Stop the embedded daemons (workers first), SIGTERM then SIGKILL after a grace period."""
    home = infaas_home(home)
    record = read_cluster(home)
    if record is None:
        return []
    gateway = [record["gateway"]["pid"]] if record.get("gateway") else []
    pids = gateway + [w["pid"] for w in record.get("workers", [])] + [record["master"]["pid"]]
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
    gateway_endpoints_file(home).unlink(missing_ok=True)
    from infaas_cli.cluster import hosts  # the worker hosts the autoscaler started (`infaas cluster host start`)

    pids += [h["pid"] for h in hosts.stop_all(home)]
    return pids
