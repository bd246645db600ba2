"""The example zoo: a manifest (configs/zoo.toml) of small ONNX models with validation data."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from infaas_cli.errors import InfaasError

ZOO_ENV = "INFAAS_ZOO"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    file: Path
    task: str
    dataset: str
    validation: Path | None
    description: str


def default_manifest() -> Path:
    return Path(os.environ.get(ZOO_ENV) or REPO_ROOT / "configs" / "zoo.toml")


def load_manifest(path: Path | None = None) -> list[ZooEntry]:
    path = Path(path) if path is not None else default_manifest()
    if not path.is_file():
        raise InfaasError(f"zoo manifest {path} not found; run from a checkout of infaas, "
                          f"pass --manifest, or set {ZOO_ENV}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InfaasError(f"zoo manifest {path} is not valid TOML: {exc}") from None
    base = path.resolve().parent.parent if path.parent.name == "configs" else path.resolve().parent
    entries = []
    for i, item in enumerate(data.get("models", [])):
        unknown = set(item) - {"name", "file", "task", "dataset", "validation", "description"}
        if unknown:
            raise InfaasError(f"zoo manifest {path}: models[{i}] has unknown key(s) {', '.join(sorted(unknown))}")
        try:
            entries.append(ZooEntry(
                name=item["name"], file=base / item["file"], task=item["task"], dataset=item["dataset"],
                validation=base / item["validation"] if item.get("validation") else None,
                description=item.get("description", "")))
        except KeyError as exc:
            raise InfaasError(f"zoo manifest {path}: models[{i}] lacks key {exc}") from None
    if not entries:
        raise InfaasError(f"zoo manifest {path} lists no [[models]]")
    return entries
