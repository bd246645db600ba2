"""Registering a model's next version: its file read and hashed once (as it is copied in), and a refused one leaves
no copy of its file in the artifact store."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from support import make_int_input_model, make_two_input_model
from infaas_cli.catalog import artifacts
from infaas_cli.errors import AlreadyExistsError, InfaasError
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.register import register_model


def _another_file(source: Path, dest: Path) -> Path:
    """The same model (same signature) in a file with other bytes: a model's next version."""
    model = onnx.load(str(source))
    model.doc_string = "retrained"
    onnx.save(model, str(dest))
    return dest


def _counting(monkeypatch, path: Path) -> dict[str, int]:
    """How often the artifact store copies `path` in, and how often anything hashes it on its own."""
    counts = {"put_file": 0, "sha256_file": 0}
    put_file, sha256_file = artifacts.ArtifactStore.put_file, artifacts.sha256_file

    def counted_put(self, source):
        counts["put_file"] += Path(source) == path
        return put_file(self, source)

    def counted_sha(source):
        counts["sha256_file"] += Path(source) == path
        return sha256_file(source)

    monkeypatch.setattr(artifacts.ArtifactStore, "put_file", counted_put)
    monkeypatch.setattr(artifacts, "sha256_file", counted_sha)
    return counts


def _version_1(home, tmp_path) -> Path:
    """Model "two" registered and its variants generated (else a next version is refused as unfinished)."""
    path = make_two_input_model(tmp_path / "v1.onnx")
    register_model(home, path, "two", "toy", "toyset", accuracy=0.5)
    assert generate_variants(home, "two").variants
    return path


def test_a_next_version_is_hashed_once(home, tmp_path, monkeypatch):
    v2 = _another_file(_version_1(home, tmp_path), tmp_path / "v2.onnx")
    counts = _counting(monkeypatch, v2)
    record = register_model(home, v2, "two", accuracy=0.5)
    assert counts == {"put_file": 1, "sha256_file": 0}
    assert record.name == "two@v2" and record.artifact_sha256 == artifacts.sha256_file(v2)
    assert home.artifacts.has(record.artifact_sha256)


def test_a_refused_version_leaves_no_copy_and_the_same_file_keeps_its_own(home, tmp_path):
    v1 = _version_1(home, tmp_path)
    before = set(home.artifacts.digests())
    # The same file again: refused, and version 1's artifact (the same digest) stays.
    with pytest.raises(AlreadyExistsError, match="--replace"):
        register_model(home, v1, "two", accuracy=0.5)
    assert set(home.artifacts.digests()) == before and home.artifacts.has(home.store.model("two").artifact_sha256)
    # Another signature as the next version: refused after the file was copied in for its digest; the copy goes.
    other = make_int_input_model(tmp_path / "other.onnx")
    with pytest.raises(InfaasError, match="inputs of its other versions"):
        register_model(home, other, "two", accuracy=0.5)
    assert set(home.artifacts.digests()) == before
    assert [m.name for m in home.store.models()] == ["two"]
