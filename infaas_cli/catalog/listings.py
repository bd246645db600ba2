"""Plain-data views of the catalog for `models`, `variants` and `plot` (JSON-ready dicts)."""

from __future__ import annotations

from typing import Any

from infaas_cli.toolkit.hardware import hardware_id, host_hardware
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, VariantRecord, is_predicted
from infaas_cli.catalog.store import MetadataStore
from infaas_cli.policy.profiles import applicable_profile
from infaas_cli.policy.versions import split_id


def model_view(model: ModelRecord, variant_count: int) -> dict[str, Any]:
    base, version = split_id(model.name)
    return {
        "name": model.name, "base": base, "version": version, "task": model.task, "dataset": model.dataset,
        "inputs": model.inputs, "outputs": model.outputs,
        "batch_dim": model.batch_dim, "max_batch": model.max_batch,
        "accuracy": model.accuracy, "accuracy_metric": model.accuracy_metric,
        "validation_samples": model.validation_samples, "variants": variant_count,
        "artifact_sha256": model.artifact_sha256, "size_bytes": model.size_bytes, "cache_mib": model.cache_mib,
    }


def models_view(store: MetadataStore) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for v in store.variants():
        counts[v.model] = counts.get(v.model, 0) + 1
    return [model_view(m, counts.get(m.name, 0)) for m in store.models()]


def pick_profile(variant: VariantRecord, profiles: list[ProfileRecord]) -> ProfileRecord | None:
    """The profile of the variant that applies on this host (`policy.profiles.applicable_profile`)."""
    mine = [p for p in profiles if p.variant == variant.name]
    if not mine:
        return None  # no need to look at the host's hardware
    return applicable_profile(mine, hardware_id(variant.hardware, host_hardware()))


def variant_view(variant: VariantRecord, profile: ProfileRecord | None) -> dict[str, Any]:
    return {
        "name": variant.name, "model": variant.model, "version": split_id(variant.model)[1],
        "backend": variant.backend,
        "hardware": variant.hardware, "recipe": variant.recipe, "precision": variant.precision,
        "threads": variant.threads, "max_batch": variant.max_batch,
        "accuracy": variant.accuracy, "accuracy_metric": variant.accuracy_metric,
        "load_time_ms": profile.load_time_ms if profile else None,
        "peak_memory_bytes": profile.peak_memory_bytes if profile else None,
        "hardware_id": profile.hardware_id if profile else None,
        "profiles": {b: batch_view(stats) for b, stats in
                     sorted((profile.batches if profile else {}).items(), key=lambda kv: int(kv[0]))},
        "artifact_sha256": variant.artifact_sha256,
    }


def batch_view(stats: dict[str, Any]) -> dict[str, Any]:
    """One batch size's profile with `measured` and `predicted_error` always present (entries stored before
    `profile --search` existed were all measured)."""
    return {**stats, "measured": not is_predicted(stats), "predicted_error": stats.get("predicted_error")}


def variants_view(store: MetadataStore, model: str | None = None) -> list[dict[str, Any]]:
    if model is not None:
        store.model(model)  # a clear error for an unknown name
    profiles = store.profiles(model)
    by_variant: dict[str, list[ProfileRecord]] = {}
    for p in profiles:
        by_variant.setdefault(p.variant, []).append(p)
    ordered = sorted(store.variants(model), key=lambda v: (v.model, v.backend, v.recipe, v.threads, v.max_batch))
    return [variant_view(v, pick_profile(v, by_variant.get(v.name, []))) for v in ordered]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency and higher accuracy are better)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_acc = [], float("-inf")
    for i in order:
        if points[i][1] > best_acc:
            front.append(i)
            best_acc = points[i][1]
    return front


def model_versions(store: MetadataStore, name: str) -> dict[int, ModelRecord]:
    """Every registered version of model `name` (version → its record), in version order."""
    found = {}
    for record in [store.get(ModelRecord, name)] + store.scan(ModelRecord, f"{name}@v"):
        if record is not None:
            base, version = split_id(record.name)
            if base == name:
                found[version] = record
    return dict(sorted(found.items()))


def versions_view(store: MetadataStore, name: str) -> dict[str, Any]:
    """Model `name`'s versions (each with its accuracy, variants and whether it is profiled), its stored version
    policy and the route that policy gives on this catalog (`infaas versions`; the master's own route, which follows
    through roll-outs, comes from its status)."""
    from infaas_cli.catalog.records import VersionPolicyRecord
    from infaas_cli.policy.versions import LATEST, VersionPolicy, resolve_route

    versions = model_versions(store, name)
    if not versions:
        store.model(name)  # NotFoundError naming the known models
    rows = []
    for version, record in versions.items():
        variants = store.variants(record.name)
        profiled = {p.variant for p in store.profiles(record.name) if p.batches}
        rows.append({"version": version, "name": record.name, "accuracy": record.accuracy,
                     "accuracy_metric": record.accuracy_metric, "variants": len(variants),
                     "profiled_variants": sum(1 for v in variants if v.name in profiled),
                     "profiled": any(v.name in profiled for v in variants), "registered_at": record.registered_at,
                     "artifact_sha256": record.artifact_sha256})
    stored = store.get(VersionPolicyRecord, name)
    policy = LATEST if stored is None else VersionPolicy(stored.mode, stored.version, stored.percent)
    route = resolve_route(policy, [r["version"] for r in rows if r["profiled"]])
    return {"model": name, "policy": policy.to_dict() | {"text": policy.describe()}, "versions": rows,
            "route": None if route is None else route.to_dict()}
