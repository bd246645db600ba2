"""An infaas data directory: the metadata store and the artifact store side by side."""

from __future__ import annotations

from pathlib import Path

from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.config import infaas_home
from infaas_cli.catalog.store import LmdbStore, open_store


class InfaasHome:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = infaas_home(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.store: LmdbStore = open_store(self.path)
        self.artifacts = ArtifactStore(self.path / "artifacts")

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> InfaasHome:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
