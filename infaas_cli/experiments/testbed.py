"""Fresh daemons for one serving policy on local worker hosts with a CPU budget: the experiments' testbed.

A run gets a master (policy, horizontal autoscaler and its scale commands in the generated config) and
`hosts` worker hosts from the start; hosts are `infaas cluster host` processes (infaas_cli.cluster.hosts),
so what a policy is billed for is what it held, from launch to stop, as a cloud bill would charge.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.catalog.home import InfaasHome
from infaas_cli.catalog.records import ModelRecord
from infaas_cli.client import Client
from infaas_cli.cluster import embedded, hosts
from infaas_cli.errors import InfaasError
from infaas_cli.experiments.trace import QueryClass
from infaas_cli.policy.baselines import POLICIES, canonical_policy
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from infaas_cli.toolkit.zoo import load_manifest


@dataclass(frozen=True)
class HostPlan:
    """The worker hosts of a run: each one instance of `cores` vCPUs (its thread budget and its price)
    whose CPU is a quota of `cpu_quota` cores of this machine.

    The default is a 1/8-scale model of c5.xlarge hosts (4 vCPUs, four single-thread variants resident,
    $0.17/h) sized for a 2-core machine: three hosts take 1.5 cores, leaving half a core to the master and
    the client.
    """

    cores: int = 4
    cpu_quota: float = 0.5
    min_hosts: int = 1  # the autoscaled policies start with this many and never go below
    max_hosts: int = 3  # the autoscaler's ceiling, and what fixed-peak holds (provisioned for the peak)

    def __post_init__(self) -> None:
        if not (1 <= self.min_hosts <= self.max_hosts):
            raise InfaasError(f"hosts need 1 <= min_hosts <= max_hosts, not {self.min_hosts}, {self.max_hosts}")
        if self.cores < 1 or not self.cpu_quota > 0:
            raise InfaasError("a host needs cores >= 1 and a positive cpu_quota")

    def utilisation(self, fraction_of_quota: float) -> float:
        """A threshold on the worker's utilisation (process CPU over its advertised cores) that means
        `fraction_of_quota` of the CPU the host really has."""
        return fraction_of_quota * min(self.cpu_quota, self.cores) / self.cores


@dataclass(frozen=True)
class ScalingPlan:
    """The horizontal autoscaler's thresholds and windows: the same for every policy that scales."""

    scale_out_fraction: float = 0.8  # of the host's CPU quota, on every host
    scale_in_fraction: float = 0.2
    out_window_s: float = 2.0
    in_window_s: float = 8.0
    backoff_s: float = 4.0
    idle_unload_s: float = 10.0  # model-level: unload a variant idle this long
    heartbeat_interval_s: float = 0.5


def prepare_zoo(home: InfaasHome, on_step: Callable[[str], None] = lambda s: None,
                models: Sequence[str] | None = None) -> list[str]:
    """Register, generate and profile the example zoo (or its `models`) into `home` where not done yet."""
    names = []
    for e in load_manifest():
        if models is not None and e.name not in models:
            continue
        if home.store.get(ModelRecord, e.name) is None:
            on_step(f"registering {e.name}")
            register_model(home, e.file, e.name, e.task, e.dataset, e.validation)
            generate_variants(home, e.name)
        names.append(e.name)
    on_step("profiling the zoo (stored profiles are kept)")
    profile_models(home, names)
    return names


def inputs_for(classes: Sequence[QueryClass]) -> Callable[[int, int], dict[str, np.ndarray]]:
    """One validation sample per query, cycling through each task's validation set."""
    by_task = {}
    for e in load_manifest():
        if e.validation is not None and e.task not in by_task:
            by_task[e.task] = np.load(e.validation)["x"]
    missing = sorted({c.task for c in classes} - set(by_task))
    if missing:
        raise InfaasError(f"no validation inputs in the zoo for task(s) {', '.join(missing)}")
    data = [by_task[c.task] for c in classes]

    def inputs_for_class(class_index: int, arrival_index: int) -> dict[str, np.ndarray]:
        x = data[class_index]
        i = arrival_index % x.shape[0]
        return {"x": x[i:i + 1]}

    return inputs_for_class


def prepare_run(policies: Sequence[str], home: Path | None, models: Sequence[str] | None,
                classes: Sequence[QueryClass] | None,
                on_step: Callable[[str], None]) -> tuple[list[str], Path, list[QueryClass]]:
    """What every experiment does first: check the policies, make sure the zoo (or its `models`) is
    registered and profiled in `home` (default INFAAS_HOME/bench), pick the query classes."""
    from infaas_cli.catalog.home import InfaasHome
    from infaas_cli.config import infaas_home
    from infaas_cli.experiments.trace import default_classes

    checked = check_policies(policies)
    home = Path(home) if home else infaas_home() / "bench"
    with InfaasHome(home) as h:
        prepare_zoo(h, on_step, models)
    return checked, home, list(classes or default_classes())


def check_policies(policies: Sequence[str]) -> list[str]:
    """The policies by their canonical names; unknown names refused with the known ones."""
    named = [canonical_policy(p) for p in policies]
    unknown = [p for p in named if p not in POLICIES]
    if unknown or not named:
        raise InfaasError(f"unknown policy {', '.join(unknown) or '(none given)'}; choose from {', '.join(POLICIES)}")
    return named


def settings_overrides(policy: str, home: Path, plan: HostPlan, scaling: ScalingPlan) -> dict[str, Any]:
    """The config keys of a run: the policy, the hosts' thread budget, the autoscalers and the scale commands."""
    base = [sys.executable, "-m", "infaas_cli", "--home", str(home), "--config", str(embedded.config_path(home)),
            "cluster", "host"]
    start = [*base, "start", "--cores", str(plan.cores), "--cpu-quota", repr(plan.cpu_quota)]
    stop = [*base, "stop", "--drain-s", "1"]
    return {
        "master.policy": policy, "master.heartbeat_interval_s": scaling.heartbeat_interval_s,
        "worker.heartbeat_interval_s": scaling.heartbeat_interval_s, "worker.cores": plan.cores,
        "autoscale.idle_unload_s": scaling.idle_unload_s,
        "cluster.scale_out_utilisation": plan.utilisation(scaling.scale_out_fraction),
        "cluster.scale_in_utilisation": plan.utilisation(scaling.scale_in_fraction),
        "cluster.out_window_s": scaling.out_window_s, "cluster.in_window_s": scaling.in_window_s,
        "cluster.backoff_s": scaling.backoff_s, "cluster.min_workers": plan.min_hosts,
        "cluster.max_workers": plan.max_hosts,
        "cluster.scale_out_command": shlex.join(start), "cluster.scale_in_command": shlex.join(stop),
    }


def _reset(home: Path) -> None:
    embedded.down(home)
    hosts.stop_all(home)
    for stale in ("master", "worker-cache", "run"):  # every run starts cold, as the first did
        shutil.rmtree(home / stale, ignore_errors=True)


@contextlib.contextmanager
def policy_cluster(home: Path, policy: str, n_hosts: int, plan: HostPlan,
                   scaling: ScalingPlan) -> Iterator[tuple[dict[str, Any], Client]]:
    """A master running `policy`, `n_hosts` hosts under their budget, the zoo pushed; (cluster record, client).

    Everything is stopped on exit, the hosts started by the autoscaler included.
    """
    _reset(home)
    record = embedded.up(workers=n_hosts, home=home, overrides=settings_overrides(policy, home, plan, scaling))
    try:
        for w in record["workers"]:  # `infaas up`'s workers become hosts: budget and ledger
            hosts.adopt_host(home, w["pid"], w["worker_id"], plan.cores, plan.cpu_quota)
        with InfaasHome(home) as h, Client(record["master"]["client_endpoint"], timeout_s=60) as client:
            client.push(h.store, h.artifacts)
            yield record, client
    finally:
        embedded.down(home)
        hosts.stop_all(home)
