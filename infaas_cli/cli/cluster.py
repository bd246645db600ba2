"""Cluster commands: CurveZMQ keys and the worker hosts with the horizontal autoscaler's decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from infaas_cli.cli.app import InfaasGroup, app, client, command, fmt, home_dir, out, print_json

keys_app = typer.Typer(cls=InfaasGroup, help="CurveZMQ key pairs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@command(keys_app, "generate")
def keys_generate(
    name: Annotated[str, typer.Option(help="Key pair name, e.g. master, worker-1, client-app.")],
    directory: Annotated[Optional[Path], typer.Option("--dir", help="Where to write (default $INFAAS_HOME/keys).")] = None,
) -> None:
    """Make a CurveZMQ key pair: NAME.key (public, hand it out) and NAME.key_secret (keep it)."""
    from infaas_cli.security import generate_keys

    public, secret = generate_keys(directory or home_dir() / "keys", name)
    out.print(f"public key: {public}\nsecret key: {secret} (mode 0600)", highlight=False)


cluster_app = typer.Typer(cls=InfaasGroup, help="The worker hosts and horizontal autoscaling.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@command(cluster_app, "status")
def cluster_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for the master.")] = 5.0,
) -> None:
    """Hosts, their hardware and state, and the horizontal autoscaler's last decisions."""
    with client(timeout_s) as master:
        st = master.status()
    hosts = [{"worker_id": w["worker_id"], "state": w.get("state"), "hardware": w.get("hardware"),
              "cpu_percent": w.get("cpu_percent"), "variants": len(w.get("variants") or {})} for w in st["workers"]]
    decisions = st["master"].get("cluster_decisions", [])
    if as_json:
        print_json({"master": st["master"]["endpoint"], "hosts": hosts, "decisions": decisions})
        return
    table = Table(title=f"cluster of {st['master']['endpoint']}")
    for col in ("worker", "host", "state", "cores", "memory GiB", "GPUs", "cpu %", "variants"):
        table.add_column(col)
    for h in hosts:
        hw = h["hardware"] or {}
        table.add_row(h["worker_id"], str(hw.get("hostname")), str(h["state"]), str(hw.get("cores")),
                      fmt((hw.get("memory_bytes") or 0) / (1 << 30), ".1f"), str(len(hw.get("gpus") or [])),
                      fmt(h["cpu_percent"], ".0f"), str(h["variants"]))
    out.print(table)
    for d in decisions[-5:]:
        out.print(f"  {d['kind']} ({d['hardware']}): {d['reason']}" + (f" — ran {d['command']}" if d["command"] else ""),
                  highlight=False)
