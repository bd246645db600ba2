"""The metadata store: a small interface, an LMDB implementation, and the change log replication ships."""

from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack
import msgspec

from infaas_cli.config import LMDB_MAP_SIZE_BYTES
from infaas_cli.errors import InfaasError, NotFoundError, StoreError, StoreFormatError
from infaas_cli.catalog.records import (
    RECORD_TYPES,
    REPLICATED_TABLES,
    ArtifactRecord,
    InvalidRecordError,
    ModelRecord,
    ProfileHistoryRecord,
    ProfileRecord,
    Record,
    ReplicationRecord,
    VariantRecord,
    describe_invalid,
    profile_history_key_prefix,
)

#: Bump when the layout of the LMDB file or of a record changes incompatibly (say so in CHANGELOG.md).
STORE_FORMAT_VERSION = 1

TABLES = tuple(RECORD_TYPES)
R = TypeVar("R", bound=Record)

#: LMDB refuses keys over 511 bytes; record keys stay well below, with room for a profile's "@hardware".
MAX_KEY_BYTES = 400
#: A replication source is another store's id (32 hex characters); it also keys the replication table.
MAX_SOURCE_CHARS = 128
#: Past profiles kept per (variant, hardware id) in `profile_history`; older ones are deleted as new ones come.
MAX_PROFILE_HISTORY = 100

log = logging.getLogger("infaas")


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
    last_seq: int

    def __init__(self, source: str, last_seq: int, got_seq: int) -> None:
        super().__init__(f"change {got_seq} from {source} does not follow {last_seq}; resend from {last_seq + 1}",
                         last_seq=last_seq)


class InvalidChangeError(InfaasError):
    """A replicated batch that is refused whole: the message names the entry and the bad field's path."""

    code = "bad_request"


def check_key(key: Any, what: str) -> str:
    """A record key or replication source that LMDB can store and a log line can show; else InvalidChangeError."""
    if not isinstance(key, str):
        raise InvalidChangeError(f"{what} must be a string, not {type(key).__name__}")
    if not key or not key.isprintable() or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidChangeError(f"{what} must be 1 to {MAX_KEY_BYTES} bytes of printable text, not "
                                 f"{len(key)} characters starting {key[:40]!r}")
    return key


class Transaction:
    """Writes collected here are applied together, as one store transaction, on exit."""

    def __init__(self, store: MetadataStore | None = None) -> None:
        self.ops: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.store = store

    def put(self, record: Record) -> None:
        self.ops.append(("put", record.table, record.key, record.to_dict()))

    def put_profile(self, profile: ProfileRecord, keep: int = MAX_PROFILE_HISTORY) -> None:
        """A new profile: it replaces the current one of its (variant, hardware id) in `profiles`, and a copy
        joins `profile_history`, which keeps the newest `keep` of that pair (the oldest are deleted)."""
        self.put(profile)
        entry = ProfileHistoryRecord.of(profile)
        self.put(entry)
        if self.store is None:
            return
        prefix = profile_history_key_prefix(profile.variant, profile.hardware_id)
        keys = {k for k, _ in self.store.scan_raw(ProfileHistoryRecord.table, prefix)}
        for op, table, key, _ in self.ops:  # this transaction's own writes, in order
            if table == ProfileHistoryRecord.table and key.startswith(prefix):
                (keys.add if op == "put" else keys.discard)(key)
        for key in sorted(keys)[:max(0, len(keys) - keep)]:
            self.delete(ProfileHistoryRecord.table, key)

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
        check_key(source, "the replication source")
        if len(source) > MAX_SOURCE_CHARS:
            raise InvalidChangeError(f"the replication source must be at most {MAX_SOURCE_CHARS} characters, "
                                     f"not {len(source)}")
        if not isinstance(entries, (list, tuple)):
            raise InvalidChangeError(f"the entries from {source} must be a list, not {type(entries).__name__}")
        changes = [_check_change(i, raw) for i, raw in enumerate(entries)]  # all of them before writing any
        last = self.replicated_seq(source)
        ops: list[tuple[str, str, str, dict[str, Any] | None]] = []
        for change in changes:
            if change.seq <= last:
                continue
            if change.seq != last + 1:
                raise SequenceGapError(source, last, change.seq)
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
    # A record this build cannot read (an older build's, or corrupt) is logged and skipped, so that
    # one bad record does not fail every query and status.
    def get(self, cls: type[R], key: str) -> R | None:
        raw = self.get_raw(cls.table, key)
        return None if raw is None else _read(cls, key, raw)

    def scan(self, cls: type[R], prefix: str = "") -> list[R]:
        records = (_read(cls, key, raw) for key, raw in self.scan_raw(cls.table, prefix))
        return [r for r in records if r is not None]

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

    def profile_history(self, variant: str, hardware_id: str | None = None) -> list[ProfileHistoryRecord]:
        """Every kept profile of a variant (on one hardware id, or on all), oldest first."""
        prefix = profile_history_key_prefix(variant, hardware_id) if hardware_id else f"{variant}@"
        records = [r for r in self.scan(ProfileHistoryRecord, prefix) if r.variant == variant]
        return sorted(records, key=lambda r: r.measured_at)

    def artifact(self, sha256: str) -> ArtifactRecord | None:
        return self.get(ArtifactRecord, sha256)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TxnContext:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.txn = Transaction(store)

    def __enter__(self) -> Transaction:
        return self.txn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.txn.ops:
            self.store._commit(self.txn.ops)


def _check_change(index: int, raw: Any) -> Change:
    """One replicated change-log entry, checked down to its record's fields; else InvalidChangeError."""
    where = f"change-log entry {index}"
    try:
        change = msgspec.convert(raw, Change, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidChangeError(describe_invalid(where, exc)) from None
    where = f"{where} (seq {change.seq})"
    if change.table not in REPLICATED_TABLES:
        raise InvalidChangeError(f"{where} targets table {change.table[:40]!r}, which is not replicated "
                                 f"(replicated: {', '.join(REPLICATED_TABLES)})")
    check_key(change.key, f"{where}: the key")
    if change.op == "delete":
        if change.value is not None:
            raise InvalidChangeError(f"{where} deletes {change.table}[{change.key!r}] but carries a value")
        return change
    if change.op != "put":
        raise InvalidChangeError(f"{where}: op must be 'put' or 'delete', not {change.op[:40]!r}")
    if change.value is None:
        raise InvalidChangeError(f"{where} puts {change.table}[{change.key!r}] without a value")
    cls = RECORD_TYPES[change.table]
    try:
        record = cls.from_dict(change.value, f"{change.table}[{change.key!r}]")
    except InvalidRecordError as exc:
        raise InvalidChangeError(f"{where}: {exc}") from None
    if record.key != change.key:
        raise InvalidChangeError(f"{where}: {change.table}[{change.key!r}] holds the record of "
                                 f"{record.key[:80]!r}; a record is stored under its own key")
    return change


def _read(cls: type[R], key: str, raw: Any) -> R | None:
    try:
        return cls.from_dict(raw, f"{cls.table}[{key!r}]")
    except InvalidRecordError as exc:
        log.error("skipping an unreadable record (written by another build, or corrupt): %s", exc)
        return None


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise StoreError(f"unknown table '{table}' (tables: {', '.join(TABLES)})")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _unpack_stored(table: str, key: bytes, data: bytes) -> Any:
    """A stored value, or None (logged) when its bytes are not msgpack."""
    try:
        return _unpack(data)
    except Exception as exc:  # msgpack raises several types for garbage
        log.error("skipping an unreadable record %s[%r]: its bytes are not msgpack (%s)", table,
                  key[:80].decode("utf-8", "replace"), type(exc).__name__)
        return None


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
        encoded = key.encode()
        if not encoded or len(encoded) > MAX_KEY_BYTES:
            return None  # no such key can have been stored
        with self.env.begin(db=self._dbs[table]) as txn:
            data = txn.get(encoded)
        return None if data is None else _unpack_stored(table, encoded, data)

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
                    value = _unpack_stored(table, key, data)
                    if value is not None:
                        out.append((key.decode("utf-8", "replace"), value))
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
        except lmdb.BadValsizeError:
            raise StoreError(f"a key is longer than the metadata store at {self.path} takes "
                             f"({MAX_KEY_BYTES} bytes); use a shorter name") from None
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
