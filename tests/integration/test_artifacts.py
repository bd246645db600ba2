"""The content-addressed artifact store."""

from __future__ import annotations

import hashlib
import os

import pytest

from infaas_cli.catalog.artifacts import ArtifactStore, sha256_file
from infaas_cli.errors import ArtifactError


def test_put_is_content_addressed_and_idempotent(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"hello" * 1000)
    store = ArtifactStore(tmp_path / "art")
    sha = store.put_file(src)
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest() == sha256_file(src)
    assert store.put_file(src) == sha
    assert store.verify(sha).read_bytes() == src.read_bytes()
    assert not [p for p in (tmp_path / "art").iterdir() if p.name.startswith(".incoming")]


def test_corruption_and_absence_are_detected(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"payload")
    store = ArtifactStore(tmp_path / "art")
    sha = store.put_file(src)
    path = store.path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.verify(sha)
    store.remove(sha)
    with pytest.raises(ArtifactError, match="missing"):
        store.verify(sha)


def test_malformed_digest_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not a sha256"):
        ArtifactStore(tmp_path).path("../../etc/passwd")
