"""Model lifecycle commands: remove (drain, delete, collect artifacts), load / unload (pin and warm a variant), versions
and rollout (version policies, rolled out by the master without failing a query)."""

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
    from infaas_cli.catalog.listings import model_versions
    from infaas_cli.policy.versions import version_id

    if version is not None:
        if version < 1:
            raise InfaasError(f"--version must be 1 or more, not {version}", code="bad_request")
        wanted = version_id(name, version)
        store.model(wanted)  # NotFoundError naming the known models
        return [wanted]
    ids = [record.name for record in model_versions(store, name).values()]
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


# -- versions and roll-outs ------------------------------------------------------------------------------------

def _master_versions(name: str, c=None) -> dict[str, Any] | None:
    """The master's view of model `name`'s versions (policy, route, roll-out), or None without a reachable master.
    `c`: an open client to ask (a poll asks many times), else one is opened for this question."""
    if c is None:
        if not _master_known():
            return None
        try:
            with client(timeout_s=5.0) as c:
                return _master_versions(name, c)
        except InfaasError:  # MasterUnreachableError included
            return None
    try:
        return (c.status(workers_limit=0)["master"].get("versions") or {}).get(name, {})
    except InfaasError:
        return None


@command()
def versions(
    model: Annotated[str, typer.Argument(help="The model (its name, as version 1 is registered).")],
    as_json: JsonOpt = False,
) -> None:
    """List a model's versions: accuracy, variants, whether profiled, its version policy and which version serves.

    `serving` is the master's route when a master runs (it follows the policy through roll-outs), else what the
    policy gives on this catalog.
    """
    from infaas_cli.catalog.listings import versions_view

    with open_home() as home:
        view = versions_view(home.store, model)
    master = _master_versions(model)
    if master:
        view["master"] = master
    route = (master or {}).get("serving") or view["route"] or {}
    for row in view["versions"]:
        row["serving"] = row["version"] == route.get("version") or row["version"] == route.get("canary")
        row["canary_percent"] = route.get("percent") if row["version"] == route.get("canary") else None
    if as_json:
        print_json(view)
        return
    from rich.table import Table

    table = Table(title=f"{model}: policy {view['policy']['text']}", title_justify="left")
    for col in ("version", "record", "accuracy", "variants", "profiled", "serving"):
        table.add_column(col)
    for row in view["versions"]:
        acc = "—" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        serving = ("canary " + f"{row['canary_percent']:g}%" if row["canary_percent"] else "yes") \
            if row["serving"] else ""
        table.add_row(str(row["version"]), row["name"], acc, str(row["variants"]),
                      f"{row['profiled_variants']}/{row['variants']}" if row["variants"] else "no", serving)
    out.print(table)
    rollout = (master or {}).get("rollout")
    if rollout:
        out.print(f"last roll-out: {rollout['from']} → {rollout['to']} ({rollout['state']})", highlight=False)
    elif master is None:
        err.print("[dim]no master reachable: `serving` is what the policy gives on this catalog[/dim]")


def _rollout_done(master: dict[str, Any], want: dict[str, Any], since: float) -> dict[str, Any] | None:
    """The finished roll-out (or the route already as wanted) in the master's view of the model, else None."""
    serving = master.get("serving") or {}
    if (serving.get("version"), serving.get("canary")) != (want["version"], want["canary"]):
        return None
    rollout = master.get("rollout")
    if rollout is None or rollout["started_at"] < since - 1.0:
        return {"state": "already serving"}  # nothing moved: the route was already this one
    return rollout if rollout["state"] in ("done", "superseded") else None


@command()
def rollout(
    model: Annotated[str, typer.Argument(help="The model whose queries move.")],
    to: Annotated[Optional[int], typer.Option("--to", min=1, metavar="V", help="Move every query to version V (policy `pinned V`); roll-back is the same command.")] = None,
    canary: Annotated[Optional[int], typer.Option(min=1, metavar="V", help="Send --percent of the queries to version V (policy `canary V PERCENT`).")] = None,
    percent: Annotated[Optional[float], typer.Option(min=0.01, max=99.99, metavar="PERCENT", help="With --canary: the share of queries for it.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Follow the highest profiled version (the default policy).")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the master has switched and drained.")] = True,
    timeout_s: Annotated[float, typer.Option(min=0.1, max=3600, help="With --wait: the longest to wait.")] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Set a model's version policy and let the master roll it out without failing a query.

    The master loads and warms the new version where the old one serves, then switches the model's queries (by
    name and by task) to it, lets the old one's queries finish and unloads it. The policy is replicated like the
    catalog (`infaas push`), so a restarted master resumes it.
    """
    from infaas_cli.catalog.listings import versions_view
    from infaas_cli.catalog.records import VersionPolicyRecord
    from infaas_cli.policy.versions import VersionError, VersionPolicy, resolve_route

    chosen = [flag for flag, given in (("--to", to is not None), ("--canary", canary is not None),
                                       ("--latest", latest)) if given]
    if len(chosen) != 1:
        raise InfaasError("pass one of --to V, --canary V --percent P or --latest", code="bad_request")
    if (percent is not None) != (canary is not None):
        raise InfaasError("--canary V goes with --percent P (the share of queries for V), and --percent only "
                          "with --canary", code="bad_request")
    try:
        policy = VersionPolicy("pinned", to) if to is not None else \
            VersionPolicy("canary", canary, percent) if canary is not None else VersionPolicy()
    except VersionError as exc:
        raise InfaasError(str(exc), code="bad_request") from None
    home = open_home()
    view = versions_view(home.store, model)
    rows = {r["version"]: r for r in view["versions"]}
    if policy.version is not None:
        row = rows.get(policy.version)
        if row is None:
            raise NotFoundError(f"model {model} has no version {policy.version}; its versions: "
                                f"{', '.join(map(str, rows))} — register one with `infaas register FILE --name "
                                f"{model}`")
        if not row["profiled"]:
            raise InfaasError(f"version {policy.version} of {model} is not profiled, so it cannot take queries; run "
                              f"`infaas profile {row['name']}` first", code="failed")
    route = resolve_route(policy, [v for v, r in rows.items() if r["profiled"]])
    if route is None:
        raise InfaasError(f"no version of {model} is profiled; run `infaas profile {model}`", code="failed")
    since = time.time()
    home.store.put(VersionPolicyRecord(model, policy.mode, policy.version, policy.percent, since))
    maybe_push(home, quiet=as_json)
    want = route.to_dict()
    result: dict[str, Any] = {"model": model, "policy": policy.describe(), "route": want, "master": None}
    known = _master_known()
    if wait and known:
        deadline = time.monotonic() + timeout_s
        with client(timeout_s=5.0) as c:  # one connection for the whole poll
            while True:
                master = _master_versions(model, c)
                done = _rollout_done(master, want, since) if master else None
                if done is not None:
                    result["master"], result["rollout"] = master, done
                    break
                if time.monotonic() >= deadline:
                    state = (master or {}).get("rollout") or {}
                    raise InfaasError(f"{model} is not on {route.describe()} after {timeout_s:g} s (roll-out "
                                      f"{state.get('state', 'not started')}: "
                                      f"{state.get('note') or 'see `infaas status`'}); the master keeps rolling out — "
                                      "`infaas versions` shows where it is", code="unavailable")
                time.sleep(0.1)
    if as_json:
        print_json(result)
        return
    ro = result.get("rollout")
    if ro is None and not known:
        out.print(f"{model}: policy {policy.describe()} set ({route.describe()}); no master to roll it out now — the "
                  "next `infaas push` takes it there", highlight=False)
    elif ro is None:
        out.print(f"{model}: policy {policy.describe()} set; the master rolls out {route.describe()} — `infaas "
                  f"versions {model}` shows where it is", highlight=False)
    elif ro.get("started_at") is None:
        out.print(f"{model}: policy {policy.describe()}; {route.describe()} serves already", highlight=False)
    else:
        switched = ro["switched_at"] - ro["started_at"] if ro.get("switched_at") else None
        total = (ro.get("finished_at") or time.time()) - ro["started_at"]
        out.print(f"{model}: rolled out {ro['from']} → {ro['to']} (policy {policy.describe()}): switched after "
                  f"{switched * 1e3:.0f} ms of warming ({len(ro['warmed'])} variant(s)), drained "
                  f"{ro['drained_queries']} quer{'y' if ro['drained_queries'] == 1 else 'ies'} and unloaded "
                  f"{len(ro['unloaded'])} in {total * 1e3:.0f} ms in all", highlight=False)
