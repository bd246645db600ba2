"""The embedded default: a master and N local workers as background processes under INFAAS_HOME/run,
all reading one generated config file there (run/infaas.toml).

Every process `up` starts is in the cluster record (run/cluster.json) by pid *and* start time, written as soon
as the process exists: `down` stops exactly those (a pid the system has since given to another process is left
alone), whether or not their master still runs, and `up` over the record of a cluster whose master died stops
that cluster's survivors first. Each daemon logs to run/NAME.log, rotated by size (log_max_bytes,
log_backups); what it writes outside logging (a crash at start) goes to run/NAME.out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

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


def identity(pid: int) -> dict[str, Any]:
    """What names one process for its whole life: its pid and its start time (a recycled pid has another)."""
    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": pid, "create_time": None}


def process_of(entry: Mapping[str, Any]) -> psutil.Process | None:
    """The live process a record entry ({"pid", "create_time"}) names; None when it is gone, a zombie, or its
    pid now belongs to another process."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            _alive(proc.pid)  # reaps it when it is our child
            return None
        started = entry.get("create_time")
        if started is None:  # a record written before start times were kept: only an infaas process qualifies
            return proc if "infaas_cli" in " ".join(proc.cmdline()) else None
        return proc if abs(proc.create_time() - float(started)) < 0.01 else None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def stop_processes(entries: list[Mapping[str, Any]], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """SIGTERM every live process the entries name, SIGKILL those still there after `timeout_s`; their pids.
    psutil checks the start time again before each signal, so a pid recycled meanwhile is never hit."""
    procs = [p for p in (process_of(e) for e in entries) if p is not None]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in survivors:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=5.0)
    return [p.pid for p in procs]


def cluster_file(home: str | Path | None = None) -> Path:
    return run_dir(home) / "cluster.json"


def write_cluster(home: Path, record: dict[str, Any]) -> None:
    path = cluster_file(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _entries(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The processes of a cluster record, the ones to stop first first: gateway, workers, master."""
    return ([record["gateway"]] if record.get("gateway") else []) + list(record.get("workers") or []) + \
        ([record["master"]] if record.get("master") else [])


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


def spawn(args: list[str], name: str, home: Path, *, config: Path | None = None, log_dir: Path | None = None,
          preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """Start `infaas ARGS` (a daemon command) with `config` (default run/infaas.toml), logging to LOG_DIR/NAME.log
    (rotated), its stdout and stderr to LOG_DIR/NAME.out (LOG_DIR default run/); `preexec_fn` runs in the child
    before exec (a worker host's CPU budget)."""
    log_dir = log_dir or run_dir(home)
    with open(log_dir / f"{name}.out", "ab") as console:
        return subprocess.Popen([sys.executable, "-m", "infaas_cli", "--config", str(config or config_path(home)),
                                 *args, "--log-file", str(log_dir / f"{name}.log")],
                                stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_daemon_env(home), start_new_session=True, preexec_fn=preexec_fn)


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
    from infaas_cli.client import Client, endpoints_file
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
    stale: list[int] = []
    if current:
        if current.get("master") and process_of(current["master"]) is not None:
            raise InfaasError(f"infaas is already up (master pid {current['master']['pid']} at "
                              f"{current['master'].get('client_endpoint', '?')}); `infaas down` first to restart it")
        stale = down(home)  # its master died: what survives of it (workers, gateway, hosts) goes first
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
    master = spawn(["master", "--endpoints-file", str(ep_file), *(master_args or [])], "master", home)
    # In the record from its first moment: an `up` interrupted from here on leaves nothing `down` cannot stop.
    record: dict[str, Any] = {"master": identity(master.pid), "workers": [], "config": str(config_path(home))}
    write_cluster(home, record)
    deadline = time.monotonic() + START_TIMEOUT_S
    endpoints = wait_for_endpoints(ep_file, master, deadline)
    if endpoints is None:
        exited = master.poll() is not None
        if not exited:
            master.kill()
            master.wait(5.0)
        cluster_file(home).unlink(missing_ok=True)
        if exited:
            raise InfaasError(f"the master exited at start (code {master.returncode}); see {rdir / 'master.out'} "
                              f"and {rdir / 'master.log'}")
        raise InfaasError(f"the master did not start within {START_TIMEOUT_S:.0f} s; see {rdir / 'master.log'}")
    # The workers learn the port the master picked from the same file, now completed.
    settings = replace(settings, worker=replace(settings.worker, master_endpoint=endpoints["worker_endpoint"]),
                       client=replace(settings.client, master=endpoints["client_endpoint"]))
    _write_config(config_path(home), settings)
    record["master"].update(endpoints)
    record["fronts"] = {"metrics": endpoints.get("metrics_endpoint")}
    for i in range(workers):
        wid = f"local-{i}"
        proc = spawn(["worker", "--worker-id", wid], wid, home)
        record["workers"].append({**identity(proc.pid), "worker_id": wid})
        write_cluster(home, record)
    if stale:
        record["stopped_stale"] = stale
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
        write_cluster(home, record)
    return record


def gateway_endpoints_file(home: str | Path | None = None) -> Path:
    return run_dir(home) / "gateway.json"


def _start_gateway(home: Path, deadline: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start `infaas gateway` with the generated config; wait for its bound ports. (record entry, fronts)."""
    ep_file = gateway_endpoints_file(home)
    ep_file.unlink(missing_ok=True)
    rdir = run_dir(home)
    proc = spawn(["gateway", "--endpoints-file", str(ep_file)], "gateway", home)
    bound = wait_for_endpoints(ep_file, proc, max(deadline, time.monotonic() + 10.0))
    if bound is not None:
        return ({**bound, **identity(proc.pid)},
                {"http": bound.get("http"), "http_port": bound.get("http_port"), "grpc": bound.get("grpc"),
                 "grpc_port": bound.get("grpc_port")})
    if proc.poll() is not None:
        tail = (rdir / "gateway.out").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise InfaasError(f"the gateway exited at start (code {proc.returncode}): {tail[0]}; see "
                          f"{rdir / 'gateway.out'} and {rdir / 'gateway.log'}")
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
    """Stop every process of the embedded cluster's record — its master alive or not —, SIGTERM then SIGKILL
    after a grace period, and the worker hosts started for it; the pids that were still running."""
    home = infaas_home(home)
    record = read_cluster(home)
    if record is None:
        return []
    from infaas_cli.client import endpoints_file

    pids = stop_processes(_entries(record))
    cluster_file(home).unlink(missing_ok=True)
    endpoints_file(home).unlink(missing_ok=True)
    gateway_endpoints_file(home).unlink(missing_ok=True)
    from infaas_cli.cluster import hosts  # the worker hosts the autoscaler started (`infaas cluster host start`)

    return pids + [h["pid"] for h in hosts.stop_all(home) if h["pid"] not in pids]
