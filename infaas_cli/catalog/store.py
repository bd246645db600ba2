"""The metadata store: a small interface, an LMDB implementation, and the change log replication ships."""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack

from infaas_cli.config import LMDB_MAP_SIZE_BYTES
from infaas_cli.errors import InfaasError, NotFoundError, StoreError, StoreFormatError
from infaas_cli.catalog.records import (
    RECORD_TYPES,
    REPLICATED_TABLES,
    ArtifactRecord,
    ModelRecord,
    ProfileRecord,
    Record,
    ReplicationRecord,
    VariantRecord,
)

#: Bump when the layout of the LMDB file or of a record changes incompatibly (say so in CHANGELOG.md).
STORE_FORMAT_VERSION = 1

TABLES = tuple(RECORD_TYPES)
R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Change:
    """One change-log entry: what a write did, with its strictly increasing sequence number."""

    seq: int
    ts: float
    op: str  # "put" or "delete"
    table: str
    key: str
    value: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "op": self.op, "table": self.table,
                "key": self.key, "value": self.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        return cls(d["seq"], d["ts"], d["op"], d["table"], d["key"], d.get("value"))


class SequenceGapError(InfaasError):
    code = "sequence_gap"

    def __init__(self, source: str, last_seq: int, got_seq: int) -> None:
        super().__init__(f"change {got_seq} from {source} does not follow {last_seq}; resend from {last_seq + 1}")
        self.last_seq = last_seq


class Transaction:
    """Writes collected here are applied together, as one store transaction, on exit."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str, str, dict[str, Any] | None]] = []

    def put(self, record: Record) -> None:
        self.ops.append(("put", record.table, record.key, record.to_dict()))

    def delete(self, table: str, key: str) -> None:
        self.ops.append(("delete", table, key, None))


class MetadataStore(ABC):
    """Tables of msgpack-able dicts; every write is one transaction that appends to the change log."""

    # -- primitives an implementation provides -------------------------------------------------
    @abstractmethod
    def get_raw(self, table: str, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def scan_raw(self, table: str, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]: ...

    @abstractmethod
    def _commit(self, ops: list[tuple[str, str, str, dict[str, Any] | None]]) -> int:
        """Apply ops atomically, appending one change per op; return the last sequence number."""

    @abstractmethod
    def changes(self, after_seq: int = 0, limit: int | None = None) -> list[Change]: ...

    @abstractmethod
    def last_seq(self) -> int: ...

    @abstractmethod
    def store_id(self) -> str:
        """A random id given to the store at creation: the name of its change log on a master."""

    def close(self) -> None:
        pass

    # -- replication -----------------------------------------------------------------------------
    def replicated_seq(self, source: str) -> int:
        record = self.get(ReplicationRecord, source)
        return 0 if record is None else record.last_seq

    def apply_replicated(self, source: str, entries: list[dict[str, Any]]) -> tuple[int, int]:
        """Apply another store's change-log entries in order, idempotently; return (applied, last_seq).

        Entries at or below the source's last applied sequence number are skipped (a repeated
        push duplicates nothing); the rest must continue it without a gap. The entries and the
        new position are written in one transaction, so a crash loses or repeats nothing.
        """
        last = self.replicated_seq(source)
        ops: list[tuple[str, str, str, dict[str, Any] | None]] = []
        for raw in entries:
            change = Change.from_dict(raw)
            if change.seq <= last:
                continue
            if change.seq != last + 1:
                raise SequenceGapError(source, last, change.seq)
            if change.table not in REPLICATED_TABLES or change.op not in ("put", "delete"):
                raise StoreError(f"change {change.seq} from {source} targets {change.op} on table "
                                 f"'{change.table}', which is not replicated")
            ops.append((change.op, change.table, change.key, change.value))
            last = change.seq
        if ops:
            ops.append(("put", ReplicationRecord.table, source,
                        ReplicationRecord(source, last, time.time()).to_dict()))
            self._commit(ops)
        return len(ops) - 1 if ops else 0, last

    # -- writes ----------------------------------------------------------------------------------
    def transaction(self) -> _TxnContext:
        return _TxnContext(self)

    def put(self, record: Record) -> int:
        with self.transaction() as txn:
            txn.put(record)
        return self.last_seq()

    # -- typed reads -----------------------------------------------------------------------------
    def get(self, cls: type[R], key: str) -> R | None:
        raw = self.get_raw(cls.table, key)
        return None if raw is None else cls.from_dict(raw)  # type: ignore[return-value]

    def scan(self, cls: type[R], prefix: str = "") -> list[R]:
        return [cls.from_dict(v) for _, v in self.scan_raw(cls.table, prefix)]  # type: ignore[misc]

    def model(self, name: str) -> ModelRecord:
        record = self.get(ModelRecord, name)
        if record is None:
            known = ", ".join(m.name for m in self.models()) or "none registered yet"
            raise NotFoundError(f"unknown model '{name}' (known: {known}); register it with `infaas register`")
        return record

    def models(self) -> list[ModelRecord]:
        return self.scan(ModelRecord)

    def variants(self, model: str | None = None) -> list[VariantRecord]:
        return self.scan(VariantRecord, "" if model is None else f"{model}/")

    def profiles(self, model: str | None = None) -> list[ProfileRecord]:
        return self.scan(ProfileRecord, "" if model is None else f"{model}/")

    def artifact(self, sha256: str) -> ArtifactRecord | None:
        return self.get(ArtifactRecord, sha256)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TxnContext:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.txn = Transaction()

    def __enter__(self) -> Transaction:
        return self.txn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.txn.ops:
            self.store._commit(self.txn.ops)


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise StoreError(f"unknown table '{table}' (tables: {', '.join(TABLES)})")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class MemoryStore(MetadataStore):
    """A dict-backed store with the same semantics, for pure-logic tests."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TABLES}
        self._log: list[Change] = []
        self._id = uuid.uuid4().hex

    def store_id(self):
        return self._id

    def get_raw(self, table, key):
        _check_table(table)
        value = self._tables[table].get(key)
        return None if value is None else _unpack(_pack(value))

    def scan_raw(self, table, prefix=""):
        _check_table(table)
        for key in sorted(self._tables[table]):
            if key.startswith(prefix):
                yield key, _unpack(_pack(self._tables[table][key]))

    def _commit(self, ops):
        for _, table, _, _ in ops:
            _check_table(table)
        now = time.time()
        for op, table, key, value in ops:
            if op == "put":
                self._tables[table][key] = _unpack(_pack(value))
            else:
                self._tables[table].pop(key, None)
            self._log.append(Change(self.last_seq() + 1, now, op, table, key, value))
        return self.last_seq()

    def changes(self, after_seq=0, limit=None):
        out = [c for c in self._log if c.seq > after_seq]
        return out if limit is None else out[:limit]

    def last_seq(self):
        return self._log[-1].seq if self._log else 0


_META_VERSION = b"format_version"
_META_STORE_ID = b"store_id"
_META_LAST_SEQ = b"last_seq"


class LmdbStore(MetadataStore):
    """The metadata store in one LMDB environment: a named database per table, plus meta and changelog."""

    def __init__(self, path: str | Path, map_size_bytes: int = LMDB_MAP_SIZE_BYTES) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(self.path), map_size=map_size_bytes, max_dbs=len(TABLES) + 2,
                                 subdir=True, lock=True)
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open the metadata store at {self.path}: {exc}; "
                             "check the path and its permissions (INFAAS_HOME)") from None
        self._dbs = {t: self.env.open_db(t.encode()) for t in TABLES}
        self._meta = self.env.open_db(b"meta")
        self._log = self.env.open_db(b"changelog")
        self._check_format()

    def _check_format(self) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(_META_VERSION, db=self._meta)
            if raw is None:
                populated = any(txn.stat(db)["entries"] for db in self._dbs.values())
                if populated:
                    self.env.close()
                    raise StoreFormatError(f"the metadata store at {self.path} has records but no format "
                                           "version; it was not written by infaas — move it aside")
                txn.put(_META_VERSION, _pack(STORE_FORMAT_VERSION), db=self._meta)
                txn.put(_META_STORE_ID, _pack(uuid.uuid4().hex), db=self._meta)
                return
            version = _unpack(raw)
        if version != STORE_FORMAT_VERSION:
            self.env.close()
            raise StoreFormatError(
                f"the metadata store at {self.path} has format version {version}, but this infaas reads "
                f"version {STORE_FORMAT_VERSION}; use a matching infaas release or move the directory aside")

    def close(self) -> None:
        self.env.close()

    def store_id(self):
        with self.env.begin(db=self._meta) as txn:
            return _unpack(txn.get(_META_STORE_ID))

    def get_raw(self, table, key):
        _check_table(table)
        with self.env.begin(db=self._dbs[table]) as txn:
            data = txn.get(key.encode())
        return None if data is None else _unpack(data)

    def scan_raw(self, table, prefix=""):
        _check_table(table)
        start = prefix.encode()
        out = []
        with self.env.begin(db=self._dbs[table]) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for key, data in cursor:
                    if not key.startswith(start):
                        break
                    out.append((key.decode(), _unpack(data)))
        yield from out

    def _commit(self, ops):
        for _, table, _, _ in ops:
            _check_table(table)
        now = time.time()
        try:
            with self.env.begin(write=True) as txn:
                raw = txn.get(_META_LAST_SEQ, db=self._meta)
                seq = 0 if raw is None else _unpack(raw)
                for op, table, key, value in ops:
                    db = self._dbs[table]
                    if op == "put":
                        txn.put(key.encode(), _pack(value), db=db)
                    else:
                        txn.delete(key.encode(), db=db)
                    seq += 1
                    change = Change(seq, now, op, table, key, value)
                    txn.put(seq.to_bytes(8, "big"), _pack(change.to_dict()), db=self._log)
                txn.put(_META_LAST_SEQ, _pack(seq), db=self._meta)
        except lmdb.MapFullError:
            raise StoreError(f"the metadata store at {self.path} is full; raise the map size") from None
        return seq

    def changes(self, after_seq=0, limit=None):
        out: list[Change] = []
        with self.env.begin(db=self._log) as txn:
            cursor = txn.cursor()
            if cursor.set_range((after_seq + 1).to_bytes(8, "big")):
                for _, data in cursor:
                    out.append(Change.from_dict(_unpack(data)))
                    if limit is not None and len(out) >= limit:
                        break
        return out

    def last_seq(self):
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(_META_LAST_SEQ)
        return 0 if raw is None else _unpack(raw)


def open_store(home: Path) -> LmdbStore:
    """The metadata store of an infaas home directory."""
    return LmdbStore(home / "metadata.lmdb")
