"""Removing models from a store: every record that belongs to them, then the artifacts nothing else uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from infaas_cli.catalog.artifacts import ArtifactStore, referenced_artifacts
from infaas_cli.catalog.records import (REPLICATED_TABLES, ArtifactRecord, ModelRecord, VariantRecord,
                                        VersionPolicyRecord)
from infaas_cli.catalog.store import MetadataStore
from infaas_cli.policy.versions import split_id


@dataclass
class Removal:
    """What `remove_models` deleted: record counts per table, and the artifacts (sha256, bytes) it freed."""

    models: list[str]
    records: dict[str, int] = field(default_factory=dict)
    artifacts: list[tuple[str, int]] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(size for _, size in self.artifacts)

    def to_dict(self) -> dict:
        return {"models": self.models, "records": self.records, "artifacts_removed": len(self.artifacts),
                "freed_bytes": self.freed_bytes}


def owned_keys(store: MetadataStore, model: str) -> list[tuple[str, str]]:
    """(table, key) of every replicated record that belongs to `model` (a model record's name, e.g. `M` or a
    version's `M@v2`): its own record and every record keyed by one of its variants (`M/…`: variants, profiles,
    profile history). Model names cannot hold '/', so `M/` never matches another model's records."""
    keys = []
    for table in REPLICATED_TABLES:
        if table in (ArtifactRecord.table, VersionPolicyRecord.table):
            continue  # shared by content (collected below once nothing uses them), or by the model's versions
        keys += [(table, key) for key, _ in store.scan_raw(table, model) if key == model or
                 key.startswith(f"{model}/")]
    return keys


def remove_models(store: MetadataStore, artifacts: ArtifactStore, models: list[str]) -> Removal:
    """Delete `models` and everything they own in one transaction (the change log carries each delete, so a
    push replicates them), then the artifacts no remaining record uses, with their artifact records.

    The files go after the commit: a crash between leaves unused files behind, never a record without its file.
    """
    removal = Removal(list(models))
    released: set[str] = set()
    doomed: set[tuple[str, str]] = set()
    for name in models:
        record = store.get(ModelRecord, name)
        if record is not None:
            released |= referenced_artifacts([record], [])
        released |= {v.artifact_sha256 for v in store.variants(name) if v.model == name}
        doomed.update(owned_keys(store, name))
    remaining_models = [m for m in store.models() if m.name not in models]
    # A model's version policy goes with its last version (policy/versions.py: `M@vV` is version V of `M`).
    left = {split_id(m.name)[0] for m in remaining_models}
    doomed.update((VersionPolicyRecord.table, base) for base in {split_id(name)[0] for name in models} - left
                  if store.get_raw(VersionPolicyRecord.table, base) is not None)
    remaining_variants = [v for v in store.variants() if (VariantRecord.table, v.name) not in doomed]
    unused = released - referenced_artifacts(remaining_models, remaining_variants)
    with store.transaction() as txn:
        for table, key in sorted(doomed):
            txn.delete(table, key)
            removal.records[table] = removal.records.get(table, 0) + 1
        for sha in sorted(unused):
            if store.get_raw(ArtifactRecord.table, sha) is not None:
                txn.delete(ArtifactRecord.table, sha)
                removal.records[ArtifactRecord.table] = removal.records.get(ArtifactRecord.table, 0) + 1
    removal.artifacts = artifacts.collect_garbage(set(), unused)
    return removal
