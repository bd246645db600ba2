"""What a host can run and why not: this host's backends, and each worker's as the master reports them.

The rows `infaas backends` prints (and its --json): per backend, available or the reason; per recipe that
needs a host capability beyond its backend (`keys.RECIPE_NEEDS`), whether the host has it.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from typing import Any

from infaas_cli.backends.keys import RECIPE_NEEDS, backend_names, describe_needs, placement_key


def _recipe_rows(backend: str, provided: set[str] | None) -> list[dict[str, Any]]:
    """The backend's recipes that need a capability; `met` None when the backend is not there to ask."""
    rows = []
    for recipe, needs in sorted(RECIPE_NEEDS.get(backend, {}).items()):
        key = placement_key(backend, recipe)
        rows.append({"recipe": recipe, "key": key, "needs": list(needs), "why": describe_needs(key),
                     "met": None if provided is None else key in provided})
    return rows


def host_backends() -> dict[str, Any]:
    """This host: each backend (available, or why not) with its capability-bound recipes, and the placement
    keys a worker here would advertise."""
    from infaas_cli.backends import all_backends, provided_by
    from infaas_cli.toolkit.hardware import cpu_model

    rows, keys = [], []
    for b in all_backends():
        a = b.availability()
        offered = provided_by(b, a.available)
        provided = None if offered is None else set(offered)
        keys.extend(sorted(provided or ()))
        rows.append({"backend": b.name, "hardware": b.hardware, "available": a.available, "reason": a.reason,
                     "recipes": _recipe_rows(b.name, provided)})
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "backends": rows, "placement_keys": keys}


def worker_backends(worker: Mapping[str, Any]) -> dict[str, Any]:
    """One worker of the master's status: what it runs, and per capability-bound recipe of those backends
    whether its host has what the recipe needs."""
    keys: Iterable[str] = worker.get("placement_keys") or worker.get("backends") or []
    keys = list(keys)
    names = backend_names(keys)
    provided = set(keys)
    return {"worker_id": worker.get("worker_id"), "state": worker.get("state"),
            "hostname": worker.get("hostname") or "", "cpu_model": worker.get("cpu_model") or "",
            "backends": names, "placement_keys": keys,
            "recipes": {name: _recipe_rows(name, provided) for name in names if RECIPE_NEEDS.get(name)}}
