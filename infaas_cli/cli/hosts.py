"""`infaas cluster host start|stop|list`: local worker hosts with a CPU budget, the local scale commands."""

from __future__ import annotations

import os
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from infaas_cli.cli.app import InfaasGroup, _state, choice, choices, command, err, fmt, home_dir, out, print_json
from infaas_cli.cluster.hosts import ENFORCEMENTS
from infaas_cli.cli.cluster import cluster_app

host_app = typer.Typer(cls=InfaasGroup,
                       help="Local worker hosts with a CPU budget (the horizontal autoscaler's scale commands).",
                       no_args_is_help=True)
cluster_app.add_typer(host_app, name="host")

Enforcement = choices("Enforcement", list(ENFORCEMENTS))


@command(host_app, "start")
def host_start(
    cores: Annotated[int, typer.Option(help="Cores the host advertises (its thread budget) and is billed for.")] = 1,
    cpu_quota: Annotated[Optional[float], typer.Option(help="CPU time it may use, in cores (default: --cores); "
                                                           "enforced by a cgroup quota, else taskset.")] = None,
    worker_id: Annotated[Optional[str], typer.Option(help="The host's worker id (default host-N).")] = None,
    enforce: Annotated[Optional[Enforcement], typer.Option(help="How the CPU budget is enforced (default: the best "
                                                                "this machine allows).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the host's record as JSON.")] = False,
) -> None:
    """Launch a worker host for the master of `infaas up` (or of --config) and bill it from now."""
    from infaas_cli.cluster import hosts

    record = hosts.start_host(home_dir(), cores, cpu_quota, worker_id=worker_id, config=_state["config"],
                              enforce=choice(enforce))
    if record["enforcement"] == "none":
        err.print("[yellow]warning:[/yellow] nothing on this machine enforces the host's CPU budget", highlight=False)
    if as_json:
        print_json(record)
        return
    out.print(f"started {record['worker_id']} (pid {record['pid']}, {record['cores']} core(s), CPU quota "
              f"{record['cpu_quota']:g} core(s) by {record['enforcement']})", highlight=False)


@command(host_app, "stop")
def host_stop(
    worker_id: Annotated[Optional[str], typer.Option(help="The host to stop (default $INFAAS_WORKER_ID, which the "
                                                          "master sets for its scale-in command).")] = None,
    all_hosts: Annotated[bool, typer.Option("--all", help="Stop every running host.")] = False,
    drain_s: Annotated[float, typer.Option(help="Wait this long first, for the queries already on it.")] = 1.0,
) -> None:
    """Stop a host (the master has drained it) and close its bill."""
    from infaas_cli.cluster import hosts

    if all_hosts:
        stopped = hosts.stop_all(home_dir())
        out.print(f"stopped {len(stopped)} host(s)", highlight=False)
        return
    record = hosts.stop_host(home_dir(), worker_id or os.environ.get("INFAAS_WORKER_ID"), drain_s=drain_s)
    out.print(f"stopped {record['worker_id']} after {record['stopped_at'] - record['launched_at']:.1f} s",
              highlight=False)


@command(host_app, "list")
def host_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The hosts of the ledger: budget, enforcement, launch and stop times."""
    from infaas_cli.cluster import hosts

    records = hosts.read_ledger(home_dir())
    if as_json:
        print_json({"ledger": str(hosts.ledger_path(home_dir())), "hosts": records})
        return
    table = Table(title=str(hosts.ledger_path(home_dir())))
    for col in ("host", "pid", "cores", "CPU quota", "enforcement", "alive s", "state"):
        table.add_column(col)
    for h in records:
        end = h["stopped_at"] if h.get("stopped_at") is not None else time.time()
        table.add_row(h["worker_id"], str(h["pid"]), str(h["cores"]), fmt(h["cpu_quota"], "g"), h["enforcement"],
                      fmt(end - h["launched_at"], ".1f"), "stopped" if h.get("stopped_at") else "running")
    out.print(table)

