"""Model lifecycle commands: remove (drain, delete, collect artifacts), load / unload (pin and warm a variant)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import typer

from infaas_cli.cli.app import _state, client, command, err, home_dir, maybe_push, open_home, out, print_json, settings
from infaas_cli.errors import InfaasError, NotFoundError
from infaas_cli.protocol.messages import MAX_PINNED_REPLICAS

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def model_ids(store, name: str, version: int | None = None) -> list[str]:
    """The model records `remove NAME [--version V]` deletes: one version (v1 is the plain name, a later version V
    its own record `NAME@vV`), or the model with every version."""
    if version is not None:
        if version < 1:
            raise InfaasError(f"--version must be 1 or more, not {version}", code="bad_request")
        wanted = name if version == 1 else f"{name}@v{version}"
        store.model(wanted)  # NotFoundError naming the known models
        return [wanted]
    ids = [m.name for m in store.models() if m.name == name or m.name.startswith(f"{name}@v")]
    if not ids:
        store.model(name)  # raises, naming the known models
    return sorted(ids)


def _master_known() -> bool:
    from infaas_cli.client import resolve_master

    return resolve_master(_state["master"], home_dir(), settings=settings()[0]) is not None


@command()
def remove(
    model: Annotated[str, typer.Argument(help="The model to remove (with every version, unless --version).")],
    version: Annotated[Optional[int], typer.Option(min=1, help="Remove only this version (1: the first).")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="When it serves: stop routing to it, wait for its queries in flight and unload it everywhere first.")] = False,
    timeout_s: Annotated[float, typer.Option(min=0.1, max=3600, help="With --drain: the longest to wait for its queries and unloads.")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Delete a model, its records and the artifacts nothing else uses; refused while it serves unless --drain.

    Its variants, profiles and profile history go in one transaction whose deletes `infaas push` replicates; the
    master (when one runs) first refuses while the model is pinned or loaded, or with --drain stops routing to
    it, waits for its queries in flight and unloads it everywhere. Without a master it is removed here alone.
    """
    from infaas_cli.catalog.removal import remove_models
    from infaas_cli.client import MasterUnreachableError

    home = open_home()
    ids = model_ids(home.store, model, version)
    drained: dict[str, Any] | None = None
    if _master_known():
        try:
            with client() as c:
                drained = c.remove(ids, drain=drain, timeout_s=timeout_s)
        except MasterUnreachableError as exc:
            err.print(f"[yellow]warning:[/yellow] {exc} — removing locally; the master drops it at the next "
                      "`infaas push`", highlight=False, soft_wrap=True)
    removal = remove_models(home.store, home.artifacts, ids)
    maybe_push(home, quiet=as_json)
    report = {**removal.to_dict(), "master": drained}
    if as_json:
        print_json(report)
        return
    where = ""
    if drained and drained.get("unloaded_on"):
        where = (f"; drained and unloaded on {', '.join(drained['unloaded_on'])} in "
                 f"{drained.get('waited_ms', 0.0):.0f} ms")
    records = sum(removal.records.values())
    out.print(f"removed {', '.join(ids)}: {records} record(s), {len(removal.artifacts)} artifact(s) "
              f"({removal.freed_bytes / 1e6:.1f} MB){where}", highlight=False)


def _pin_state(status: dict[str, Any], variant: str) -> tuple[bool, str]:
    """(ready, summary) of a pin in a status reply: every placed copy loaded with its pinned replicas."""
    pin = (status["master"].get("pinned") or {}).get(variant)
    if pin is None:
        return False, "not pinned"
    rows = {w["worker_id"]: w for w in status["workers"]}
    parts, ready = [], sum(pin["placed"].values()) >= pin["replicas"]
    for wid, replicas in sorted(pin["placed"].items()):
        vm = rows.get(wid, {}).get("variants", {}).get(variant) or {}
        state = vm.get("state", "sent")
        ok = state == "loaded" and vm.get("replicas", 1) >= replicas
        ready &= ok
        parts.append(f"{wid} ({replicas} replica{'s' if replicas > 1 else ''}, {state})")
    placed = sum(pin["placed"].values())
    summary = ", ".join(parts) or "no worker yet"
    if placed < pin["replicas"]:
        summary += f"; {pin['replicas'] - placed} replica(s) not placed yet"
    return ready, summary


@command(name="load")
def load_cmd(
    variant: Annotated[str, typer.Argument(help="The variant to pin (see `infaas variants MODEL`).")],
    replicas: Annotated[int, typer.Option(min=1, max=MAX_PINNED_REPLICAS, help="Copies to keep loaded: one per worker where there is room, else more replicas on one.")] = 1,
    worker: Annotated[Optional[str], typer.Option(help="Keep them all on this worker (default: the master places them).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until every copy is loaded and warm.")] = True,
    timeout_s: Annotated[float, typer.Option(min=0.1, help="With --wait: the longest to wait.")] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Pin a variant: load and warm it, and keep it loaded (never evicted or autoscaled away) until `infaas unload`.

    The load includes one warm-up run, so its first query is not cold. A restarted worker gets it again; so does a
    restarted master, which keeps pins in its store. `infaas status` marks pinned copies.
    """
    with client() as c:
        c.pin(variant, replicas=replicas, worker=worker)
        deadline = time.monotonic() + timeout_s
        while True:
            status = c.status(workers_limit=10_000)
            ready, summary = _pin_state(status, variant)
            if ready or not wait:
                break
            if time.monotonic() >= deadline:
                raise InfaasError(f"{variant} is pinned but not loaded everywhere after {timeout_s:g} s: {summary}; "
                                  "it keeps loading — see `infaas status`", code="unavailable")
            time.sleep(0.2)
    if as_json:
        print_json({"variant": variant, "ready": ready, **status["master"]["pinned"][variant]})
        return
    out.print(f"pinned {variant}: {summary}{'' if ready else ' (loading)'}", highlight=False)


@command(name="unload")
def unload_cmd(
    variant: Annotated[str, typer.Argument(help="The variant to unload.")],
    worker: Annotated[Optional[str], typer.Option(help="Only on this worker (default: everywhere).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Unload a variant (everywhere, or on one worker) and drop its pin there; a later query loads it again."""
    with client() as c:
        catalog = c.unpin(variant, worker=worker)
    entry = next((v for mdl in catalog["models"] for v in mdl.get("variants", []) if v["name"] == variant), None)
    if entry is None:
        raise NotFoundError(f"the master no longer lists {variant}")
    if as_json:
        print_json({"variant": variant, "worker": worker, "pinned_on": entry.get("pinned_on", []),
                    "loaded_on": entry.get("loaded_on", [])})
        return
    still = entry.get("pinned_on") or []
    out.print(f"unloaded {variant} {'from ' + worker if worker else 'everywhere'}"
              f"{'; still pinned on ' + ', '.join(still) if still else '; not pinned'}", highlight=False)
