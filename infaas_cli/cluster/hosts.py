"""Local worker hosts with a real CPU budget: start and stop them, and keep the ledger a cloud bill is made from.

A host is one worker process standing for one cloud instance. Its budget is made real by the best means the
machine offers, in this order:

* ``cgroup-v2``: a child of ``/sys/fs/cgroup/infaas`` with ``cpu.max`` = quota × period (needs write access,
  e.g. root, to the cgroup2 mount with the ``cpu`` controller);
* ``cgroup-v1``: a child of ``/sys/fs/cgroup/cpu/infaas`` with ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``;
* ``taskset``: the process pinned to ``ceil(quota)`` cores (round robin by host number); a ceiling only,
  since other processes may share those cores;
* ``none``: nothing enforces the budget (said in the record and on stderr by the CLI).

The worker advertises ``cores`` (its thread budget: how many single-thread variants it may hold at once);
``cpu_quota`` is the CPU time it may use, in cores (default: ``cores``). A host is billed from the moment
it is launched to the moment it is stopped, like an instance: the ledger, ``run/hosts.json`` under the data
directory, records both. The scale commands of the horizontal autoscaler are ``infaas cluster host start``
and ``infaas cluster host stop`` (the master passes the drained host as ``$INFAAS_WORKER_ID``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from infaas_cli.cluster.embedded import identity, process_of, stop_processes
from infaas_cli.config import infaas_home
from infaas_cli.errors import InfaasError

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The CFS period of a host's quota. Short, so that a host over its budget stalls for at most this long
#: (a 100 ms period would stall a throttled host for tens of milliseconds, longer than most SLOs here).
CPU_PERIOD_US = 10_000
STOP_TIMEOUT_S = 10.0
ENFORCEMENTS = ("cgroup-v2", "cgroup-v1", "taskset", "none")


def ledger_path(home: str | Path | None = None) -> Path:
    return infaas_home(home) / "run" / "hosts.json"


@contextlib.contextmanager
def _ledger(home: str | Path | None) -> Iterator[dict[str, Any]]:
    """The ledger, read and written under an exclusive lock (scale commands may run beside the bench)."""
    path = ledger_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            data = {}
        data.setdefault("hosts", [])
        yield data
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)


def read_ledger(home: str | Path | None = None) -> list[dict[str, Any]]:
    """Every host launched under this data directory since the ledger was last cleared, oldest first."""
    path = ledger_path(home)
    try:
        return list(json.loads(path.read_text()).get("hosts", []))
    except (OSError, ValueError):
        return []


def clear_ledger(home: str | Path | None = None) -> None:
    """Forget stopped hosts (a new experiment starts a new bill); refuses while hosts still run."""
    with _ledger(home) as data:
        running = [h["worker_id"] for h in data["hosts"] if h.get("stopped_at") is None and process_of(h)]
        if running:
            raise InfaasError(f"hosts {', '.join(running)} still run; `infaas cluster host stop --all` first")
        data["hosts"] = []


# -- enforcement --------------------------------------------------------------------------------------------

def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def enforcement(root: Path = CGROUP_ROOT) -> str:
    """How this machine can make a host's CPU budget real: one of ENFORCEMENTS, best first."""
    controllers = root / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split() and _writable(root):
        return "cgroup-v2"
    if _writable(root / "cpu") and (root / "cpu" / "cpu.cfs_quota_us").exists():
        return "cgroup-v1"
    if hasattr(os, "sched_setaffinity"):
        return "taskset"
    return "none"


def _cgroup_dir(kind: str, name: str, root: Path = CGROUP_ROOT) -> Path:
    return (root / "infaas" / name) if kind == "cgroup-v2" else (root / "cpu" / "infaas" / name)


def _make_cgroup(kind: str, name: str, cpu_quota: float, root: Path = CGROUP_ROOT) -> Path:
    """A cgroup limited to cpu_quota cores; returns its directory."""
    quota_us = max(1000, int(round(cpu_quota * CPU_PERIOD_US)))
    path = _cgroup_dir(kind, name, root)
    try:
        if kind == "cgroup-v2":
            for parent in (root, root / "infaas"):
                parent.mkdir(exist_ok=True)
                control = parent / "cgroup.subtree_control"
                if "cpu" not in control.read_text().split():
                    control.write_text("+cpu")
            path.mkdir(exist_ok=True)
            (path / "cpu.max").write_text(f"{quota_us} {CPU_PERIOD_US}")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota_us))
    except OSError as exc:
        raise InfaasError(f"cannot set a CPU quota in {path}: {exc.strerror or exc}; run as root or pass "
                          "--enforce taskset") from None
    return path


def _cgroup_name(home: Path, worker_id: str) -> str:
    """Unique per data directory, so that two experiments on one machine never share a cgroup."""
    return f"{hashlib.sha1(str(home).encode()).hexdigest()[:8]}-{worker_id}"


def _remove_cgroup(path: str | None) -> None:
    if not path:
        return
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:  # still has a process that is exiting
            time.sleep(0.05)


def _cores_for(index: int, n: int) -> set[int]:
    """Round robin: host `index` gets n consecutive cores of those this process may use."""
    available = sorted(os.sched_getaffinity(0))
    return {available[(index * n + k) % len(available)] for k in range(min(n, len(available)))}


# -- start / adopt / stop -----------------------------------------------------------------------------------

def _next_id(hosts: Sequence[dict[str, Any]]) -> str:
    used = {h["worker_id"] for h in hosts}
    n = len(hosts)
    while f"host-{n}" in used:
        n += 1
    return f"host-{n}"


def _check_budget(cores: int, cpu_quota: float | None) -> float:
    if cores < 1:
        raise InfaasError(f"--cores must be at least 1, not {cores}")
    quota = float(cores if cpu_quota is None else cpu_quota)
    if not (0.01 <= quota <= (os.cpu_count() or 1)) or not math.isfinite(quota):
        raise InfaasError(f"--cpu-quota must lie between 0.01 and this machine's {os.cpu_count()} cores, "
                          f"not {cpu_quota!r}")
    return quota


def start_host(home: str | Path | None = None, cores: int = 1, cpu_quota: float | None = None, *,
               worker_id: str | None = None, config: str | Path | None = None, enforce: str | None = None,
               log_dir: str | Path | None = None) -> dict[str, Any]:
    """Launch a worker host with `cores` advertised and `cpu_quota` cores of CPU; its ledger record.

    The worker reads `config` (default: the embedded cluster's run/infaas.toml, whose worker section names
    the master). The budget is set before the worker's first instruction (in the child, before exec).
    """
    from infaas_cli.cluster import embedded

    home = infaas_home(home)
    quota = _check_budget(cores, cpu_quota)
    kind = enforce or enforcement()
    if kind not in ENFORCEMENTS:
        raise InfaasError(f"--enforce must be one of {', '.join(ENFORCEMENTS)}, not {kind!r}")
    config = Path(config) if config else embedded.config_path(home)
    if not config.is_file():
        raise InfaasError(f"no config file at {config}: start a master first (`infaas up`) or pass --config")
    log_dir = Path(log_dir) if log_dir else embedded.run_dir(home)
    log_dir.mkdir(parents=True, exist_ok=True)
    with _ledger(home) as data:
        worker_id = worker_id or _next_id(data["hosts"])
        if any(h["worker_id"] == worker_id and h.get("stopped_at") is None for h in data["hosts"]):
            raise InfaasError(f"host {worker_id} runs already")
        cgroup = _make_cgroup(kind, _cgroup_name(home, worker_id), quota) \
            if kind.startswith("cgroup") else None
        cpus = _cores_for(len(data["hosts"]), math.ceil(quota)) if kind == "taskset" else None

        def confine() -> None:  # in the child, before exec: the worker never runs outside its budget
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            elif cpus:
                os.sched_setaffinity(0, cpus)

        launched_at = time.time()
        # As `infaas up` starts its daemons (INFAAS_HOME=home): the log rotates, crash output goes to ID.out.
        proc = embedded.spawn(["worker", "--worker-id", worker_id, "--cores", str(cores)], worker_id, home,
                              config=config, log_dir=log_dir, preexec_fn=confine)
        record = {"worker_id": worker_id, **identity(proc.pid), "cores": cores, "cpu_quota": quota, "enforcement": kind,
                  "cgroup": str(cgroup) if cgroup else None, "cpus": sorted(cpus) if cpus else None,
                  "launched_at": launched_at, "stopped_at": None}
        data["hosts"].append(record)
    _register_with_cluster(home, record)
    return record


def adopt_host(home: str | Path | None, pid: int, worker_id: str, cores: int, cpu_quota: float | None = None, *,
               enforce: str | None = None) -> dict[str, Any]:
    """Put a running worker (e.g. one `infaas up` started) under a host budget and into the ledger."""
    home = infaas_home(home)
    quota = _check_budget(cores, cpu_quota)
    kind = enforce or enforcement()
    with _ledger(home) as data:
        cgroup = cpus = None
        if kind.startswith("cgroup"):
            cgroup = _make_cgroup(kind, _cgroup_name(home, worker_id), quota)
            # Every thread of the worker: cgroup.procs moves the whole process (v1 and v2).
            (cgroup / "cgroup.procs").write_text(str(pid))
        elif kind == "taskset":
            cpus = _cores_for(len(data["hosts"]), math.ceil(quota))
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), cpus)
        record = {"worker_id": worker_id, **identity(pid), "cores": cores, "cpu_quota": quota, "enforcement": kind,
                  "cgroup": str(cgroup) if cgroup else None, "cpus": sorted(cpus) if cpus else None,
                  "launched_at": time.time(), "stopped_at": None}
        data["hosts"].append(record)
    return record


def _register_with_cluster(home: Path, record: dict[str, Any]) -> None:
    """List the host among the embedded cluster's workers, so that `infaas down` stops it too."""
    from infaas_cli.cluster import embedded

    cluster = embedded.read_cluster(home)
    if cluster is None:
        return
    cluster.setdefault("workers", []).append({"pid": record["pid"], "create_time": record.get("create_time"),
                                              "worker_id": record["worker_id"], "host": True})
    embedded.write_cluster(home, cluster)


def stop_host(home: str | Path | None = None, worker_id: str | None = None, *, drain_s: float = 0.0) -> dict[str, Any]:
    """Stop a host after `drain_s` (the master drains it first: no new queries go there) and close its bill."""
    home = infaas_home(home)
    if not worker_id:
        raise InfaasError("name the host to stop: --worker-id ID (the master passes $INFAAS_WORKER_ID)")
    hosts = {h["worker_id"]: h for h in read_ledger(home) if h.get("stopped_at") is None}
    if worker_id not in hosts:
        raise InfaasError(f"no running host {worker_id} in {ledger_path(home)}; running: "
                          f"{', '.join(hosts) or 'none'}")
    if drain_s > 0:
        time.sleep(drain_s)  # let the queries already on it finish
    record = hosts[worker_id]
    stop_processes([record], STOP_TIMEOUT_S)  # by pid and start time: never a process that got a recycled pid
    stopped_at = time.time()
    _remove_cgroup(record.get("cgroup"))
    with _ledger(home) as data:
        for h in data["hosts"]:
            if h["worker_id"] == worker_id and h.get("stopped_at") is None:
                h["stopped_at"] = stopped_at
                record = h
    return record


def stop_all(home: str | Path | None = None) -> list[dict[str, Any]]:
    """Stop every running host of the ledger (at once: the bill closes when each one is gone)."""
    home = infaas_home(home)
    running = [h for h in read_ledger(home) if h.get("stopped_at") is None]
    for h in running:
        proc = process_of(h)
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
    return [stop_host(home, h["worker_id"]) for h in running]


# -- the bill -----------------------------------------------------------------------------------------------

def bill(hosts: Sequence[dict[str, Any]], start_s: float, end_s: float, usd_per_core_second: float,
         bin_s: float | None = None) -> dict[str, Any]:
    """What a cloud bill charges for the hosts of a ledger over [start_s, end_s] (wall-clock seconds).

    Each host is an instance of `cores` vCPUs, billed per second from launch to stop (still running: to
    end_s) at cores × usd_per_core_second. With `bin_s`, also the hosts held in each bin (mean over the bin).
    """
    if end_s < start_s:
        raise InfaasError("a bill needs end_s >= start_s")
    instance_s = core_s = 0.0
    spans = []
    for h in hosts:
        lo = max(start_s, float(h["launched_at"]))
        hi = min(end_s, float(h["stopped_at"]) if h.get("stopped_at") is not None else end_s)
        if hi > lo:
            instance_s += hi - lo
            core_s += (hi - lo) * int(h["cores"])
            spans.append((lo - start_s, hi - start_s))
    out: dict[str, Any] = {"instance_seconds": instance_s, "core_seconds": core_s,
                           "cost_usd": core_s * usd_per_core_second, "hosts_launched": len(spans),
                           "peak_hosts": _peak(spans)}
    if bin_s:
        n = max(1, math.ceil((end_s - start_s) / bin_s - 1e-9))
        held = [0.0] * n
        for lo, hi in spans:
            for b in range(int(lo // bin_s), min(n, math.ceil(hi / bin_s))):
                held[b] += max(0.0, min(hi, (b + 1) * bin_s) - max(lo, b * bin_s)) / bin_s
        out["hosts_held"] = held
    return out


def _peak(spans: Sequence[tuple[float, float]]) -> int:
    events = sorted([(lo, 1) for lo, _ in spans] + [(hi, -1) for _, hi in spans], key=lambda e: (e[0], e[1]))
    peak = now = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak
