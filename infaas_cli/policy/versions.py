"""Model versions and the version policy: which version of a model answers the queries that name it or its task.

A model's versions are separate catalog records, so that everything kept per model (variants, profiles, the
selection spans, the prediction cache, autoscaling) stays per version: version 1 of model M is the record `M`
(every catalog written before versions existed keeps working), version V ≥ 2 the record `M@vV`, whose variants
are then `M@vV/BACKEND-…`. Model names cannot contain '@' (toolkit.register.check_name), so the spelling is
unambiguous and a version is read off any model or variant name without a lookup; `M@v1` names version 1.

A query naming `M` (or M's task) is answered by the version M's *route* picks — a canary's share by the same
request-id hash either way; a query naming `M@vV` or a variant reaches that version directly. The route follows the
model's policy (`latest`, `pinned V`, `canary V PERCENT`), but only through a roll-out (daemons/master/rollout.py):
the master warms the new version where the old one serves before it switches the route, so no query waits on a
cold load or fails. Everything here is pure.
"""

from __future__ import annotations

import re
import zlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: What joins a model's name and a version ≥ 2 in the version's record name: `digits-cnn@v2`.
VERSION_MARK = "@v"
#: The largest version number (a bound on a replicated field and on `--version`).
MAX_VERSION = 1_000_000
POLICY_MODES = ("latest", "pinned", "canary")

_ID = re.compile(r"^(?P<base>[^@/]+)@v(?P<version>[1-9][0-9]{0,6})$")


class VersionError(ValueError):
    """A version or policy that cannot be: the message names the fix."""


def version_id(model: str, version: int) -> str:
    """The record name of version `version` of `model`: the plain name for version 1, else `model@vV`."""
    if version < 1:
        raise VersionError(f"versions count from 1, not {version}")
    return model if version == 1 else f"{model}{VERSION_MARK}{version}"


def split_id(name: str) -> tuple[str, int]:
    """(model, version) of a model record or variant name: `m` → (m, 1), `m@v3` or `m@v3/ort-…` → (m, 3)."""
    head = name.split("/", 1)[0]
    found = _ID.match(head)
    if found is None:
        return head, 1
    return found["base"], int(found["version"])


def canonical_id(name: str) -> str:
    """The record name a model name means: `m@v1` is `m`; anything else (a variant's name too) is itself."""
    found = _ID.match(name)
    return found["base"] if found is not None and found["version"] == "1" else name


def is_version_name(name: str) -> bool:
    """Whether `name` names one version explicitly (`m@vV`), rather than the model its policy routes."""
    return _ID.match(name) is not None


# -- the policy --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """latest: the highest profiled version; pinned: `version`; canary: `percent` % of the model's queries to
    `version`, the rest to the version that served before the canary (the stable one)."""

    mode: str = "latest"
    version: int | None = None
    percent: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in POLICY_MODES:
            raise VersionError(f"version policy must be one of {', '.join(POLICY_MODES)}, not {self.mode!r}")
        if self.mode == "latest":
            if self.version is not None or self.percent is not None:
                raise VersionError("the latest policy takes no version and no percent")
            return
        if self.version is None or not 1 <= self.version <= MAX_VERSION:
            raise VersionError(f"a {self.mode} policy names a version from 1 to {MAX_VERSION}, not {self.version!r}")
        if self.mode == "pinned" and self.percent is not None:
            raise VersionError("a pinned policy takes no percent (a canary does)")
        if self.mode == "canary" and (self.percent is None or not 0 < self.percent < 100):
            raise VersionError(f"a canary takes a percent of the queries above 0 and below 100, not {self.percent!r}; "
                               "for all of them, roll out (`infaas rollout M --to V`)")

    def describe(self) -> str:
        if self.mode == "latest":
            return "latest"
        if self.mode == "pinned":
            return f"pinned {self.version}"
        return f"canary {self.version} {self.percent:g}%"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "version": self.version, "percent": self.percent}


LATEST = VersionPolicy()


@dataclass(frozen=True, slots=True)
class Route:
    """Which version answers a model's queries now: `stable`, or for `percent` % of them `canary`."""

    stable: int
    canary: int | None = None
    percent: float = 0.0

    @property
    def versions(self) -> tuple[int, ...]:
        return (self.stable,) if self.canary is None else (self.stable, self.canary)

    def pick(self, draw: float | None) -> int:
        """The version for a query whose draw (in [0, 100), `route_draw`) is `draw`; no draw: the stable one."""
        if self.canary is not None and draw is not None and draw < self.percent:
            return self.canary
        return self.stable

    def describe(self) -> str:
        if self.canary is None:
            return f"v{self.stable}"
        return f"v{self.stable} + v{self.canary} ({self.percent:g}%)"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.stable, "canary": self.canary, "percent": self.percent if self.canary else None}


def route_draw(request_id: str) -> float:
    """A query's place in [0, 100) for a canary split: a hash of its request id, so that the same request (and its
    retries) always reaches the same version, and a stream of requests splits as the percent says."""
    return (zlib.crc32(request_id.encode("utf-8", "surrogatepass")) % 10_000) / 100.0


def serving_rank(model_id: str, routes: Mapping[str, Route]) -> tuple[int, float, str]:
    """Where a model record's variants sort within its task in the selection index, so that every span a task
    query can get under canaries is one slice: the stable versions of canaried models (highest percent first), the
    other models' routed versions, the canary versions (highest percent first, as their stable ones), then the rest.

    A draw sends to the canary exactly the models whose percent is above it: the highest percents. Their stable
    blocks are the first of the stable part and their canary blocks the first after it, so the task's span only
    slides right (`task_splits`).
    """
    base, version = split_id(model_id)
    route = routes.get(base)
    if route is None:
        return 3, 0.0, base
    if route.canary is None:
        return (1, 0.0, base) if version == route.stable else (3, 0.0, base)
    if version == route.stable:
        return 0, -route.percent, base
    return (2, -route.percent, base) if version == route.canary else (3, 0.0, base)


@dataclass(frozen=True, slots=True)
class TaskSplit:
    """A task's candidate span for a query's draw while some of its models run canaries: `spans[i]` for a draw below
    `bounds[i]` (and at or above the bound before), the stable span (`stable`) above the last bound or without a
    draw — the same choice `Route.pick` makes for a query naming each model."""

    bounds: tuple[float, ...]
    spans: tuple[tuple[int, int], ...]
    stable: tuple[int, int]

    def span(self, draw: float | None) -> tuple[int, int]:
        if draw is None:
            return self.stable
        i = bisect_right(self.bounds, draw)
        return self.spans[i] if i < len(self.spans) else self.stable


def task_splits(routes: Mapping[str, Route], model_spans: Mapping[str, tuple[int, int]],
                task_of: Mapping[str, tuple[str | None, str | None]],
                task_spans: Mapping[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], TaskSplit]:
    """Per (task, dataset) with a canaried model, the spans its queries' draws select, on an index laid out by
    `serving_rank`. A model whose versions disagree on the task, or a layout that is not as expected, keeps the
    task's queries on the stable versions (as before canaries applied to them)."""
    canaries: dict[tuple[str, str], list[tuple[float, str, str]]] = {}
    for base, route in routes.items():
        if route.canary is None:
            continue
        stable_id, canary_id = version_id(base, route.stable), version_id(base, route.canary)
        pair = task_of.get(stable_id)
        if pair in task_spans and task_of.get(canary_id) == pair and stable_id in model_spans \
                and canary_id in model_spans:
            canaries.setdefault(pair, []).append((route.percent, stable_id, canary_id))
    splits = {}
    for pair, entries in canaries.items():
        stable = task_spans[pair]
        entries.sort(key=lambda e: (-e[0], split_id(e[1])[0]))  # serving_rank's order
        bounds = tuple(sorted({percent for percent, _, _ in entries}))
        spans, ok = [], True
        for bound in bounds:
            # A draw in [the previous bound, bound) moves every model whose percent is at least `bound`.
            start, end = stable
            for percent, stable_id, canary_id in entries:
                if percent < bound:
                    break
                s, c = model_spans[stable_id], model_spans[canary_id]
                ok &= s[0] == start and c[0] == end
                start, end = s[1], c[1]
            spans.append((start, end))
        if ok:
            splits[pair] = TaskSplit(bounds, tuple(spans), stable)
    return splits


def resolve_route(policy: VersionPolicy, profiled: Iterable[int], current: Route | None = None) -> Route | None:
    """The route a model's policy asks for, given its profiled versions and the route serving now.

    A version takes traffic only once profiled (selection has nothing to rank before): `latest` is the highest
    profiled version; `pinned V` is V once profiled, else what serves now (else the latest); a canary adds V to the
    stable version — what serves now, or the latest other profiled version. None: nothing is profiled.
    """
    versions = set(profiled)
    if not versions:
        return None
    latest = Route(max(versions))
    if policy.mode == "latest":
        return latest
    keep = Route(current.stable) if current is not None and current.stable in versions else latest
    if policy.version not in versions:
        return keep  # the policy's version is not profiled (or not replicated) yet: what serves stays
    if policy.mode == "pinned":
        return Route(policy.version)
    stable = keep.stable if keep.stable != policy.version else None
    if stable is None:
        others = versions - {policy.version}
        if not others:
            return Route(policy.version)  # a canary of the only version is that version
        stable = max(others)
    return Route(stable, policy.version, float(policy.percent))


def default_routes(profiled: Mapping[str, Iterable[int]]) -> dict[str, Route]:
    """Every model's route under the default policy (`latest`)."""
    routes = {}
    for model, versions in profiled.items():
        route = resolve_route(LATEST, versions)
        if route is not None:
            routes[model] = route
    return routes


# -- roll-outs ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Candidate:
    """A variant of the version being rolled out to, as the warm-up plan weighs it."""

    name: str
    placement_key: str
    latency_ms: float  # at batch 1, profiled
    threads: int = 1


def counterpart(old_variant: str, new_model: str, candidates: Iterable[Candidate], worker_keys: Iterable[str],
                free_cores: float = float("inf")) -> Candidate | None:
    """The variant of `new_model` to warm where `old_variant` serves: the same configuration (backend, recipe,
    threads, max batch) when the new version has it and the worker runs it, else the fastest at batch 1 that the
    worker runs — among those that fit the worker's free cores beside the old one (it serves until the switch)
    when any does; None when the worker runs none of them."""
    keys = set(worker_keys)
    runnable = [c for c in candidates if c.placement_key in keys]
    fitting = [c for c in runnable if c.threads <= free_cores]
    suffix = old_variant.split("/", 1)[1] if "/" in old_variant else old_variant
    same = f"{new_model}/{suffix}"
    for pool in (fitting, runnable):
        for c in pool:
            if c.name == same:
                return c
        if pool:
            return min(pool, key=lambda c: (c.latency_ms, c.name))
    return None


def warm_plan(held: Mapping[str, Iterable[str]], new_model: str, candidates: Iterable[Candidate],
              worker_keys: Mapping[str, Iterable[str]],
              free_cores: Mapping[str, float] | None = None) -> dict[str, list[str]]:
    """Per worker, the new version's variants to load and warm before the switch: one counterpart of each old
    variant it holds (`held`: worker → old variants there), within its free cores where possible."""
    candidates = list(candidates)
    plan: dict[str, list[str]] = {}
    for worker, variants in sorted(held.items()):
        chosen: list[str] = []
        free = (free_cores or {}).get(worker, float("inf"))
        for old in sorted(variants):
            new = counterpart(old, new_model, candidates, worker_keys.get(worker, ()), free)
            if new is not None and new.name not in chosen:
                chosen.append(new.name)
                free -= new.threads
        if chosen:
            plan[worker] = chosen
    return plan
