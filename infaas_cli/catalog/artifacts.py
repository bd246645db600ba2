"""Content-addressed artifact store: every model, variant and validation file, named by its sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from infaas_cli.errors import ArtifactError

_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Files under ROOT/sha256/ab/abcdef…; writes are atomic (temp file + rename), reads verified on demand."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArtifactError(f"'{sha256}' is not a sha256 digest (64 lowercase hex characters)")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, source: str | Path) -> str:
        """Copy a file in (hashing while copying); return its sha256. Storing twice is a no-op."""
        source = Path(source)
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.is_file():
                os.unlink(tmp)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                os.chmod(final, 0o444)
            return sha
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def verify(self, sha256: str) -> Path:
        """The artifact's path, after checking it exists and its content still hashes to its name."""
        path = self.path(sha256)
        if not path.is_file():
            raise ArtifactError(f"artifact {sha256[:12]} is missing from {self.root}; "
                                "re-register the model or run `infaas generate` again")
        actual = sha256_file(path)
        if actual != sha256:
            raise ArtifactError(f"artifact {sha256[:12]} is corrupt (content hashes to {actual[:12]}); "
                                "delete it and run `infaas generate` again")
        return path

    def remove(self, sha256: str) -> None:
        path = self.path(sha256)
        if path.exists():
            os.chmod(path, 0o644)
            path.unlink()

    def digests(self) -> Iterator[str]:
        """Every stored artifact's sha256 (files being written, `.incoming-*`, are not artifacts yet)."""
        root = self.root / "sha256"
        if not root.is_dir():
            return
        for shard in sorted(root.iterdir()):
            for path in sorted(shard.iterdir()) if shard.is_dir() else ():
                if len(path.name) == 64 and path.name.startswith(shard.name) and path.is_file():
                    yield path.name

    def collect_garbage(self, keep: set[str], candidates: Iterable[str] | None = None) -> list[tuple[str, int]]:
        """Delete the artifacts not in `keep`: among `candidates` only, or every stored one when None.

        Returns (sha256, bytes freed) of each deleted artifact. A store that other processes write at the same
        time (the CLI's, while a `register` copies a file in before its record exists) passes the candidates
        its own removal released; the master, whose artifacts all arrive after their records, sweeps them all.
        """
        removed = []
        for sha in sorted(set(self.digests() if candidates is None else candidates) - keep):
            path = self.path(sha)
            if path.is_file():
                size = path.stat().st_size
                self.remove(sha)
                removed.append((sha, size))
        return removed

    def export(self, sha256: str, dest: str | Path) -> Path:
        dest = Path(dest)
        shutil.copyfile(self.verify(sha256), dest)
        return dest


def referenced_artifacts(models: Iterable, variants: Iterable) -> set[str]:
    """The artifacts some record still uses: each model's file and validation data, each variant's file."""
    needed: set[str] = set()
    for m in models:
        needed.add(m.artifact_sha256)
        if m.validation_sha256:
            needed.add(m.validation_sha256)
    needed.update(v.artifact_sha256 for v in variants)
    return needed
