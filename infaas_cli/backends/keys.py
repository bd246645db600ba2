"""Placement keys: what a variant needs of a worker (its backend, plus host capabilities some recipes need).

A variant's placement key is its backend's name, followed by `+capability` for each host capability its
recipe needs beyond the backend (OpenVINO's bf16 recipe needs a CPU that computes bf16: "ov-cpu+bf16").
A worker advertises every key it provides: its available backends, and each backend+capability key its
host has. Selection, the cluster view and placement match variants to workers by key and nothing else,
so a bf16 variant profiled on a BF16 CPU is never placed on a CPU without it.

Pure and free of runtimes (the master imports it, and never a runtime): what each recipe needs is a table
here, next to the words that tell a person what a capability is; the backend module that detects the
capability (`Backend.capabilities()`) names it with the same constant.
"""

from __future__ import annotations

from collections.abc import Iterable

#: A CPU that computes bf16 (OpenVINO reports BF16 among the CPU plugin's OPTIMIZATION_CAPABILITIES).
BF16 = "bf16"

#: backend -> recipe -> the host capabilities it needs beyond the backend's own availability.
RECIPE_NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "ov-cpu": {"bf16": (BF16,)},
}

#: capability -> what it is, for people ("needs a CPU with BF16").
CAPABILITY_TEXT: dict[str, str] = {
    BF16: "a CPU with BF16",
}

SEPARATOR = "+"


def recipe_needs(backend: str, recipe: str) -> tuple[str, ...]:
    """The host capabilities a (backend, recipe) variant needs beyond its backend, sorted."""
    return tuple(sorted(RECIPE_NEEDS.get(backend, {}).get(recipe, ())))


def placement_key(backend: str, recipe: str) -> str:
    """The key a worker must advertise to run this variant: "ort-cpu", "ov-cpu+bf16"."""
    return SEPARATOR.join((backend, *recipe_needs(backend, recipe)))


def split_key(key: str) -> tuple[str, tuple[str, ...]]:
    """(backend, capabilities) of a placement key."""
    backend, *needs = key.split(SEPARATOR)
    return backend, tuple(needs)


def provided_keys(backend: str, capabilities: Iterable[str]) -> list[str]:
    """The keys a host with `backend` available and these capabilities provides: the backend's name, then
    one key per distinct need of its recipes that the host meets."""
    have = set(capabilities)
    keys = [backend]
    for recipe, needs in RECIPE_NEEDS.get(backend, {}).items():
        key = placement_key(backend, recipe)
        if set(needs) <= have and key not in keys:
            keys.append(key)
    return keys


def describe_capability(capability: str) -> str:
    return CAPABILITY_TEXT.get(capability, f"the host capability '{capability}'")


def describe_needs(key: str) -> str:
    """What a key needs beyond its backend, for people: "needs a CPU with BF16"; "" for a plain backend."""
    _, needs = split_key(key)
    return "needs " + _wants(needs) if needs else ""


def _wants(needs: Iterable[str]) -> str:
    return " and ".join(describe_capability(c) for c in needs)


def backend_names(keys: Iterable[str]) -> list[str]:
    """The distinct backends among placement keys, in first-seen order: what people read in listings."""
    seen: dict[str, None] = {}
    for key in keys:
        seen.setdefault(split_key(key)[0], None)
    return list(seen)


def unavailable_reason(keys: Iterable[str], live: Iterable[str], what: str) -> str:
    """Why no live worker can run variants of these placement keys, given the keys live workers advertise: per
    key, the backend no worker runs, or the capability a recipe needs that no worker of its backend has.
    `what` names the variants asked for ("digits-cnn-l/ov-cpu-bf16-t1-b8", "any variant of model m")."""
    live_backends = {split_key(k)[0] for k in live}
    parts = [split_key(k) for k in sorted(set(keys))]
    absent = sorted({b for b, _ in parts if b not in live_backends})
    which = f"backend {absent[0]}" if len(absent) == 1 else f"backends {', '.join(absent)}"
    lacking = [(b, needs) for b, needs in parts if needs and b in live_backends]
    if not lacking:
        return f"no live worker runs {which}; start one with `infaas worker` or `infaas up`"
    reasons = [f"no live worker runs {which}"] if absent else []
    for b, needs in lacking:
        reasons.append(f"{b} {'+'.join(needs)} variants need {_wants(needs)}, which no live {b} worker has")
    return (f"no live worker can run {what}: {'; '.join(reasons)} — start a worker on a host that has it "
            "(`infaas backends` says what each host can run), or query by model or task so that another variant "
            "serves")
