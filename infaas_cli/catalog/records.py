"""Typed metadata records (models, variants, profiles, artifacts) and their dict/msgpack form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from infaas_cli.errors import InfaasError


class InvalidRecordError(InfaasError):
    """A dict that is not its table's record; the message names the record and the bad field's path."""

    code = "bad_request"


@dataclass
class TensorSpec:
    """One input or output of a model, as ONNX Runtime reports it."""

    name: str
    type: str  # ONNX Runtime type string, e.g. "tensor(float)" or "seq(map(int64,tensor(float)))"
    dtype: str | None  # numpy dtype name for tensors, None for sequences and maps
    shape: list[int | str | None] | None  # None entries / strings are dynamic dimensions

    @property
    def is_tensor(self) -> bool:
        return self.type.startswith("tensor(")

    def describe(self) -> str:
        if not self.is_tensor:
            return f"{self.name}: {self.type}"
        dims = ",".join("?" if d is None else str(d) for d in (self.shape or []))
        return f"{self.name}: {self.dtype}[{dims}]"


class Record:
    """Base of every stored record: a table name, a key, and a plain-dict form for msgpack."""

    table: ClassVar[str]
    #: Typed shapes of the fields a record keeps as plain dicts: checked on decode, kept as given.
    nested: ClassVar[dict[str, Any]] = {}

    @property
    def key(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Any, label: str | None = None):
        """The record a stored or replicated dict holds, every field checked (unknown keys are ignored).

        Raises InvalidRecordError naming the field's path under `label` (default: the table), e.g.
        ``models['x'].inputs[0].shape: Expected array | null, got str``.
        """
        label = label or cls.table
        try:
            record = msgspec.convert(data, cls, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidRecordError(describe_invalid(label, exc)) from None
        for name, shape in cls.nested.items():
            try:
                msgspec.convert(getattr(record, name), shape, strict=True)
            except msgspec.ValidationError as exc:
                raise InvalidRecordError(describe_invalid(f"{label}.{name}", exc)) from None
        return record


def describe_invalid(label: str, exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.size_bytes`" as "LABEL.size_bytes: Expected int, got str"."""
    message, sep, where = str(exc).replace("`", "").rpartition(" - at ")
    if not sep:
        message, where = where, "$"
    kind = ""
    if where.startswith("key in "):  # a dict key: "at `key` in `$.batches`"
        kind, where = " (a key)", where[len("key in "):]
    return f"{label}{where.removeprefix('$')}{kind}: {message}"


#: The largest per-model prediction cache, in MiB (1 TiB): a bound on a replicated field, not a sizing hint.
MAX_CACHE_MIB = 1 << 20
#: A model's prediction cache on the master, in MiB (0: never cache its results).
CacheMiB = Annotated[int, msgspec.Meta(ge=0, le=MAX_CACHE_MIB)]


@dataclass
class ModelRecord(Record):
    table: ClassVar[str] = "models"

    name: str
    task: str
    dataset: str
    artifact_sha256: str
    source_file: str
    size_bytes: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    batch_dim: str  # "dynamic", "fixed" or "none"
    max_batch: int
    opset: int
    producer: str
    accuracy: float | None
    accuracy_metric: str  # "top1", "agreement" or "declared"
    validation_sha256: str | None
    validation_samples: int
    registered_at: float
    #: The master's prediction cache for this model (`register --cache-mib`); None: the master's
    #: `master.prediction_cache_mib`. Absent from records written before it existed, which load as None.
    cache_mib: CacheMiB | None = None

    nested: ClassVar[dict[str, Any]] = {"inputs": list[TensorSpec], "outputs": list[TensorSpec]}

    @property
    def key(self) -> str:
        return self.name

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(**d) for d in self.inputs]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec(**d) for d in self.outputs]


@dataclass
class VariantRecord(Record):
    table: ClassVar[str] = "variants"

    name: str  # MODEL/BACKEND-RECIPE-tTHREADS-bMAXBATCH
    model: str
    backend: str  # e.g. "ort-cpu"
    hardware: str  # "cpu", "gpu" or "inferentia"
    recipe: str  # e.g. "fp32o1", "int8d", "int8s"
    precision: str  # "fp32", "fp16", "bf16" or "int8"
    threads: int
    max_batch: int
    artifact_sha256: str
    accuracy: float | None
    accuracy_metric: str
    build_time_ms: float
    created_at: float

    @property
    def key(self) -> str:
        return self.name


@dataclass
class BatchProfile:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_qps: float
    runs: int  # timed runs; 0 for a predicted entry
    #: False: predicted by `profile --search` from other measurements (toolkit.search), not timed. Entries written
    #: before predictions existed lack the field and load as measured.
    measured: bool = True
    #: A predicted entry's stated relative error (0.15: within ±15 %), which selection adds to its latency.
    predicted_error: float | None = None


def is_predicted(stats: dict[str, Any]) -> bool:
    """Whether a stored batch entry (a ProfileRecord's `batches[b]`, a plain dict) was predicted rather than timed;
    entries written before predictions existed have no `measured` and count as measured."""
    return stats.get("measured", True) is False


#: A batch size as a profile's key: the selector reads it back with int().
BatchSizeKey = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,5}$")]


@dataclass
class ProfileRecord(Record):
    """Measured numbers of one variant on one hardware kind."""

    table: ClassVar[str] = "profiles"

    variant: str
    model: str
    hardware_id: str
    hardware: dict[str, Any]
    load_time_ms: float
    peak_memory_bytes: int
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch size (str) -> BatchProfile
    measured_at: float = 0.0
    #: "profile": `infaas profile`; "reprofile": a worker re-measured it when its latency drifted.
    source: Literal["profile", "reprofile"] = "profile"
    worker_id: str | None = None  # the worker that re-measured it (source "reprofile")

    nested: ClassVar[dict[str, Any]] = {"batches": dict[BatchSizeKey, BatchProfile]}

    @property
    def key(self) -> str:
        return profile_key(self.variant, self.hardware_id)


def profile_key(variant: str, hardware_id: str) -> str:
    return f"{variant}@{hardware_id}"


@dataclass
class ProfileHistoryRecord(ProfileRecord):
    """A profile as it was measured, kept after newer ones replace it in `profiles` (oldest first by key)."""

    table: ClassVar[str] = "profile_history"

    @property
    def key(self) -> str:
        return profile_history_key(self.variant, self.hardware_id, self.measured_at)

    @classmethod
    def of(cls, profile: ProfileRecord) -> ProfileHistoryRecord:
        return cls(**dataclasses.asdict(profile))


def profile_history_key(variant: str, hardware_id: str, measured_at: float) -> str:
    """`variant@hardware_id@measured_at`, the time zero-padded so that keys sort in time order."""
    return f"{profile_key(variant, hardware_id)}@{max(0.0, measured_at):017.6f}"


def profile_history_key_prefix(variant: str, hardware_id: str) -> str:
    return f"{profile_key(variant, hardware_id)}@"


@dataclass
class ArtifactRecord(Record):
    table: ClassVar[str] = "artifacts"

    sha256: str
    size_bytes: int
    kind: str  # "model", "variant" or "validation"
    origin: str  # what it was made from: a file name or a variant name

    @property
    def key(self) -> str:
        return self.sha256


@dataclass
class ReplicationRecord(Record):
    """On a master: the last change-log sequence number applied from one source store."""

    table: ClassVar[str] = "replication"

    source: str
    last_seq: int
    updated_at: float

    @property
    def key(self) -> str:
        return self.source


@dataclass
class PinRecord(Record):
    """On a master: a variant an operator pinned (`infaas load`), kept so that a restarted master pins it again."""

    table: ClassVar[str] = "pins"

    variant: str
    replicas: int
    worker: str | None = None  # all replicas on this worker; None: the master places them
    pinned_at: float = 0.0

    @property
    def key(self) -> str:
        return self.variant


@dataclass
class TombstoneRecord(Record):
    """On a master: an artifact its own sweep freed after a removal, kept so that a worker away at the time (dead,
    partitioned, stopped) is told to drop its cached copy when it comes back. Only what the master itself freed is
    ever named: a master that merely does not know a digest (a fresh one, before a push) drops nothing."""

    table: ClassVar[str] = "artifact_tombstones"

    sha256: str
    freed_at: float = 0.0

    @property
    def key(self) -> str:
        return self.sha256


@dataclass
class VersionPolicyRecord(Record):
    """Which versions of a model answer the queries naming it or its task (policy/versions.py): `latest` (the
    default when none is stored), `pinned` `version`, or `canary` `version` for `percent` % of them. Replicated, so
    the master follows it (through a roll-out) and a restarted master resumes it."""

    table: ClassVar[str] = "version_policies"

    model: str  # the model's name (version 1's record name)
    mode: Literal["latest", "pinned", "canary"] = "latest"
    version: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    percent: Annotated[float, msgspec.Meta(gt=0, lt=100)] | None = None
    set_at: float = 0.0

    def __post_init__(self) -> None:
        if (self.mode == "latest") != (self.version is None) or (self.mode == "canary") != (self.percent is not None):
            raise ValueError(f"a {self.mode} policy {'takes no' if self.mode == 'latest' else 'names a'} version"
                             f"{' and a percent' if self.mode == 'canary' else ''}")

    @property
    def key(self) -> str:
        return self.model


RECORD_TYPES: dict[str, type[Record]] = {
    cls.table: cls for cls in (ModelRecord, VariantRecord, ProfileRecord, ArtifactRecord, ReplicationRecord,
                               ProfileHistoryRecord, PinRecord, VersionPolicyRecord, TombstoneRecord)
}
#: Tables a source store may replicate to a master (never the master's own bookkeeping).
REPLICATED_TABLES = ("models", "variants", "profiles", "artifacts", "profile_history", "version_policies")
