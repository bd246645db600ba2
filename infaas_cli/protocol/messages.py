"""Every message body as a typed structure with bounds, validated when a frame is decoded.

msgspec decodes msgpack straight into these structures and checks every field's type and bound on
the way, so a wrong field is refused with its path (``Expected `int`, got `str` - at `$.hardware.cores```)
before any handler sees it. docs/protocol.md documents every field; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# -- bounds ------------------------------------------------------------------------------------------

#: Largest tensor a query may carry, in bytes (a whole frame is bounded by MAX_FRAME_BYTES).
MAX_TENSOR_BYTES = 256 << 20
#: Most elements in one tensor (the product of its dimensions, computed without overflow).
MAX_TENSOR_ELEMENTS = MAX_TENSOR_BYTES
#: Most dimensions of one tensor.
MAX_RANK = 16
#: Most named tensors in one query or result.
MAX_TENSORS = 64
#: Longest name (model, variant, worker id, tensor name).
MAX_NAME = 256
#: Longest free text (error reasons).
MAX_TEXT = 8192
#: Largest artifact chunk.
MAX_CHUNK_BYTES = 8 << 20
#: Largest frame a daemon's socket accepts; ZeroMQ drops the connection of a peer that sends more.
MAX_FRAME_BYTES = 2 * MAX_TENSOR_BYTES
#: Most change-log entries in one `changes` message.
MAX_ENTRIES = 10_000

Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
# The lengths too: msgspec matches with re.search, and `$` also matches before a trailing newline.
Sha256 = Annotated[str, Meta(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]
Count = Annotated[int, Meta(ge=0, le=2**62)]
Positive = Annotated[int, Meta(ge=1, le=2**31 - 1)]
#: A model version (policy/versions.py): 1 is the model's first, `M`; V ≥ 2 its record `M@vV`.
Version = Annotated[int, Meta(ge=1, le=1_000_000)]
Finite = Annotated[float, Meta(ge=-1e300, le=1e300)]  # refuses NaN and infinities
NonNegative = Annotated[float, Meta(ge=0, le=1e300)]
Dim = Annotated[int, Meta(ge=0, le=2**31 - 1)]

DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool")
Dtype = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "bool"]
_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1,
             "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1}


class Body(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every body: unknown fields are refused (a typo is an error, not a silent default)."""


# -- tensors -----------------------------------------------------------------------------------------

class Tensor(Body):
    """A numpy array's descriptor: dtype name, shape, and which data frame of the message holds its raw C-order
    bytes (protocol 3: tensor bytes travel as their own ZeroMQ frames, never inside the msgpack envelope).

    The bytes are checked against the shape when the message is decoded (envelope.decode), so a
    daemon can forward a frame it never read.
    """

    dtype: Dtype
    shape: Annotated[list[Dim], Meta(max_length=MAX_RANK)]
    frame: Annotated[int, Meta(ge=0, lt=MAX_TENSORS)]

    def __post_init__(self) -> None:
        extent = 1
        for d in self.shape:  # Python ints: no overflow, however large the dimensions
            # numpy refuses a shape whose non-zero dimensions overflow, even when another one is 0
            extent *= max(d, 1)
            if extent > MAX_TENSOR_ELEMENTS:
                raise ValueError(f"shape {self.shape} spans more than {MAX_TENSOR_ELEMENTS} elements "
                                 "(counting a 0 dimension as 1)")

    @property
    def nbytes(self) -> int:
        """The byte count the shape and dtype call for."""
        n = _ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


Rows = Annotated[list[Any], Meta(max_length=1 << 20)]


class Output(Body):
    """One model output: a tensor, or a list (a sequence of maps, e.g. scikit-learn's ZipMap)."""

    tensor: Tensor | None = None
    list: Rows | None = None


Tensors = Annotated[dict[Annotated[str, Meta(max_length=MAX_NAME)], Tensor], Meta(max_length=MAX_TENSORS)]
Timing = Annotated[dict[Annotated[str, Meta(max_length=64)], Finite], Meta(max_length=32)]


# -- client <-> master -------------------------------------------------------------------------------

class QueryBody(Body):
    kind: Literal["variant", "model", "task"]
    inputs: Tensors
    variant: Name | None = None
    model: Name | None = None
    task: Name | None = None
    dataset: Name | None = None
    latency_ms: NonNegative | None = None
    min_accuracy: Annotated[float, Meta(ge=0, le=1)] | None = None
    objective: Literal["cost", "latency"] | None = None
    max_cost_usd: NonNegative | None = None
    slo_mode: Literal["best_effort", "strict"] | None = None


class ReplyBody(Body):
    outputs: Annotated[list[Output], Meta(max_length=MAX_TENSORS)]
    variant: Name
    worker: Name
    decision_us: NonNegative
    timing: Timing
    needs_load: bool = False
    attempts: Positive = 1
    output_names: Annotated[list[Name], Meta(max_length=MAX_TENSORS)] = []
    latency_ms: NonNegative = 0.0
    predicted_latency_ms: NonNegative | None = None
    slo_met: bool | None = None
    model: Name | None = None
    cached: bool = False  # answered from the master's prediction cache (worker "cache"), no worker ran it
    version: Version = 1  # the version of `model` that answered (`variant` belongs to it)


#: Most workers one `status_reply` lists (a page; the summary counts them all).
MAX_STATUS_WORKERS = 10_000


class StatusBody(Body):
    """Ask for the cluster view: the master's summary, and one page of its workers (in registration order)."""

    workers_offset: Count = 0
    workers_limit: Annotated[int, Meta(ge=0, le=MAX_STATUS_WORKERS)] = 100


class StatusReplyBody(Body):
    master: dict[str, Any]
    workers: list[dict[str, Any]]



# -- client <-> master: the catalog, and loads a client asks for (the gateway's OIP metadata and repository) -

class CatalogBody(Body):
    """Ask for the catalog as clients see it: models, their variants and signatures, where variants are loaded."""

    model: Name | None = None


class CatalogVariant(Body):
    """One variant in a `catalog_reply`."""

    name: Name
    recipe: Name
    backend: Name
    hardware: Name
    threads: Annotated[int, Meta(ge=1, le=1024)]
    max_batch: Annotated[int, Meta(ge=1, le=65536)]
    accuracy: Annotated[float, Meta(ge=0, le=1)] | None = None
    latency_ms: NonNegative | None = None
    loaded_on: Annotated[list[Name], Meta(max_length=4096)] = []
    loading_on: Annotated[list[Name], Meta(max_length=4096)] = []
    pinned_on: Annotated[list[Name], Meta(max_length=4096)] = []


class CatalogModel(Body):
    """One model in a `catalog_reply`, with its input and output signature and its variants."""

    name: Name
    task: Annotated[str, Meta(max_length=MAX_NAME)]
    dataset: Annotated[str, Meta(max_length=MAX_NAME)]
    inputs: Annotated[list[TensorSpec], Meta(max_length=MAX_TENSORS)]
    outputs: Annotated[list[TensorSpec], Meta(max_length=MAX_TENSORS)]
    batch_dim: Literal["dynamic", "fixed", "none"]
    max_batch: Annotated[int, Meta(ge=1, le=65536)]
    accuracy: Annotated[float, Meta(ge=0, le=1)] | None = None
    variants: Annotated[list[CatalogVariant], Meta(max_length=MAX_ENTRIES)] = []
    version: Version = 1  # `name` is version 1 of a model, or `MODEL@vV` its version V
    serving: bool = True  # queries naming the model (or its task) reach this version now (its version policy)


class CatalogReplyBody(Body):
    models: Annotated[list[CatalogModel], Meta(max_length=MAX_ENTRIES)]
    workers_alive: Count


#: Most replicas of one variant an operator may pin (`infaas load --replicas`).
MAX_PINNED_REPLICAS = 256


class PreloadBody(Body):
    """Load a variant ahead of its queries; `pin`: keep it loaded (never evicted, unloaded or switched away)."""

    variant: Name
    pin: bool = False
    replicas: Annotated[int, Meta(ge=1, le=MAX_PINNED_REPLICAS)] | None = None
    worker: Name | None = None


#: Most models (a model and its versions) one `remove` names.
MAX_REMOVE_MODELS = 1024


class RemoveBody(Body):
    """Before a model's records are deleted: stop routing to it and, with `drain`, unload it everywhere."""

    models: Annotated[list[Name], Meta(min_length=1, max_length=MAX_REMOVE_MODELS)]
    drain: bool = False
    timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0


class RemoveReplyBody(Body):
    models: Annotated[list[Name], Meta(max_length=MAX_REMOVE_MODELS)]
    variants: Annotated[list[Name], Meta(max_length=MAX_ENTRIES)] = []
    unloaded_on: Annotated[list[Name], Meta(max_length=4096)] = []
    drained_queries: Count = 0
    waited_ms: NonNegative = 0.0

# -- master <-> worker -------------------------------------------------------------------------------

class Hardware(Body):
    """What a worker reports of its host when it registers."""

    cores: Positive
    cpu_model: Text = ""
    physical_cores: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 0
    memory_bytes: Count = 0
    gpus: Annotated[list[Text], Meta(max_length=64)] = []
    neuron_devices: Annotated[int, Meta(ge=0, le=4096)] = 0
    machine: Text = ""
    hostname: Text = ""


class RegisterBody(Body):
    worker_id: Name
    hardware: Hardware
    backends: Annotated[list[Name], Meta(max_length=32)]
    pid: Count | None = None


class RegisteredBody(Body):
    heartbeat_interval_s: Annotated[float, Meta(gt=0, le=3600)]


class VariantMetrics(Body):
    """One variant on a worker, over the worker's metrics window."""

    state: Literal["loaded", "loading", "retiring"]
    queue: Count = 0
    qps: NonNegative = 0.0
    samples_per_s: NonNegative = 0.0
    latency_ms: NonNegative = 0.0
    threads: Annotated[int, Meta(ge=0, le=4096)] = 0
    replicas: Annotated[int, Meta(ge=0, le=4096)] = 1
    idle_s: NonNegative = 0.0


class WorkerMetrics(Body):
    cores: Positive
    free_cores: Annotated[int, Meta(ge=-4096, le=4096)]
    cpu_percent: NonNegative = 0.0
    process_cpu_percent: NonNegative = 0.0
    process_rss_bytes: Count = 0
    memory_total_bytes: Count = 0
    free_memory_bytes: Count = 0
    variants: Annotated[dict[Name, VariantMetrics], Meta(max_length=4096)] = {}


class HeartbeatBody(Body):
    worker_id: Name
    metrics: WorkerMetrics


class TensorSpec(Body):
    """A model input as the worker needs it to check queries (names, dtype, shape; None: dynamic)."""

    name: Name
    type: Annotated[str, Meta(max_length=MAX_NAME)]
    dtype: Annotated[str, Meta(max_length=32)] | None
    shape: Annotated[list[Annotated[int, Meta(ge=-1, le=2**31 - 1)] | Annotated[str, Meta(max_length=MAX_NAME)] | None],
                     Meta(max_length=MAX_RANK)] | None


class VariantSpec(Body):
    """What the master tells a worker about a variant so the worker can fetch, load and run it."""

    name: Name
    backend: Name
    recipe: Name
    threads: Annotated[int, Meta(ge=1, le=1024)]
    max_batch: Annotated[int, Meta(ge=1, le=65536)]
    batch_dim: Literal["dynamic", "fixed", "none"]
    artifact_sha256: Sha256
    inputs: Annotated[list[TensorSpec], Meta(max_length=MAX_TENSORS)]
    latency_ms: Annotated[dict[Annotated[int, Meta(ge=1, le=65536)], NonNegative], Meta(max_length=64)] = {}
    peak_memory_bytes: Count = 0


class LoadBody(Body):
    variant: Name
    spec: VariantSpec
    replicas: Annotated[int, Meta(ge=1, le=256)] | None = None
    replaces: Name | None = None
    pinned: bool = False


class UnloadBody(Body):
    variant: Name
    worker: Name | None = None


class DropArtifactsBody(Body):
    """Artifacts the catalog no longer uses (their models were removed): a worker deletes its cached copies."""

    artifacts: Annotated[list[Sha256], Meta(min_length=1, max_length=MAX_ENTRIES)]


class LoadedBody(Body):
    variant: Name
    load_time_ms: NonNegative
    worker_id: Name | None = None


class InferBody(Body):
    variant: Name
    inputs: Tensors
    spec: VariantSpec
    deadline_ms: NonNegative | None = None


class ResultBody(Body):
    outputs: Annotated[list[Output], Meta(max_length=MAX_TENSORS)]
    timing: Timing


class FetchBody(Body):
    sha256: Sha256
    offset: Count
    worker_id: Name | None = None


BatchSize = Annotated[int, Meta(ge=1, le=65536)]


class ReprofileBody(Body):
    """Re-measure a variant on the worker's hardware, at low priority (the master saw its latency drift)."""

    variant: Name
    spec: VariantSpec
    batch_sizes: Annotated[list[BatchSize], Meta(min_length=1, max_length=64)]
    budget_ms: Annotated[float, Meta(gt=0, le=60_000)] = 100.0


class BatchLatency(Body):
    """The measured latency distribution of one batch size (the profiler's BatchProfile)."""

    p50_ms: NonNegative
    p95_ms: NonNegative
    p99_ms: NonNegative
    mean_ms: NonNegative
    throughput_qps: NonNegative
    runs: Count


class ReprofiledBody(Body):
    variant: Name
    hardware_id: Name
    batches: Annotated[dict[BatchSize, BatchLatency], Meta(min_length=1, max_length=64)]
    load_time_ms: NonNegative
    peak_memory_bytes: Count
    hardware: Hardware
    worker_id: Name | None = None


# -- CLI -> master replication -----------------------------------------------------------------------

class ChangeEntry(Body):
    """One change-log entry; `value` is validated as the table's record type before it is stored."""

    seq: Annotated[int, Meta(ge=1, le=2**62)]
    op: Literal["put", "delete"]
    table: Annotated[str, Meta(min_length=1, max_length=64)]
    key: Annotated[str, Meta(min_length=1, max_length=400)]
    ts: Finite = 0.0
    value: dict[str, Any] | None = None


class ChangesBody(Body):
    source: Annotated[str, Meta(min_length=1, max_length=128)]
    entries: Annotated[list[ChangeEntry], Meta(max_length=MAX_ENTRIES)]


class ArtifactChunkBody(Body):
    sha256: Sha256
    offset: Count
    data: Annotated[bytes, Meta(max_length=MAX_CHUNK_BYTES)]
    total_bytes: Annotated[int, Meta(ge=0, le=2**44)]


class AckBody(Body):
    """The answer to `changes` (last_seq, applied, missing_artifacts) or to `artifact_chunk` (sha256,
    offset, complete)."""

    last_seq: Count | None = None
    applied: Count | None = None
    missing_artifacts: list[Sha256] | None = None
    sha256: Sha256 | None = None
    offset: Count | None = None
    complete: bool | None = None


# -- any direction -----------------------------------------------------------------------------------

class ErrorBody(Body):
    """A refusal: a stable code (docs/protocol.md), a human reason, and fields some codes add."""

    code: Annotated[str, Meta(min_length=1, max_length=64)]
    reason: Text
    best_latency_ms: NonNegative | None = None
    predicted_latency_ms: NonNegative | None = None
    best_accuracy: Annotated[float, Meta(ge=0, le=1)] | None = None
    last_seq: Count | None = None
    worker_id: Name | None = None
    sha256: Annotated[str, Meta(max_length=128)] | None = None
    variant: Name | None = None


#: Message type -> its body structure, and who sends it (documentation and the doc test use this).
BODIES: dict[str, type[Body]] = {
    "query": QueryBody, "reply": ReplyBody, "status": StatusBody, "status_reply": StatusReplyBody,
    "register": RegisterBody, "registered": RegisteredBody, "heartbeat": HeartbeatBody, "load": LoadBody,
    "unload": UnloadBody, "loaded": LoadedBody, "infer": InferBody, "result": ResultBody, "fetch": FetchBody,
    "reprofile": ReprofileBody, "reprofiled": ReprofiledBody, "drop_artifacts": DropArtifactsBody,
    "changes": ChangesBody, "artifact_chunk": ArtifactChunkBody, "ack": AckBody, "error": ErrorBody,
    "catalog": CatalogBody, "catalog_reply": CatalogReplyBody, "preload": PreloadBody,
    "remove": RemoveBody, "remove_reply": RemoveReplyBody,
}

DIRECTIONS: dict[str, str] = {
    "query": "client → master", "reply": "master → client", "status": "client → master",
    "status_reply": "master → client", "register": "worker → master", "registered": "master → worker",
    "heartbeat": "worker → master", "load": "master → worker", "unload": "master → worker, client → master",
    "loaded": "worker → master", "infer": "master → worker", "result": "worker → master", "fetch": "worker → master",
    "reprofile": "master → worker", "reprofiled": "worker → master", "drop_artifacts": "master → worker",
    "changes": "CLI → master", "artifact_chunk": "CLI → master, master → worker", "ack": "master → CLI",
    "error": "any → its peer", "catalog": "client → master", "catalog_reply": "master → client",
    "preload": "client → master", "remove": "client → master", "remove_reply": "master → client",
}

DECODERS: dict[str, msgspec.msgpack.Decoder] = {t: msgspec.msgpack.Decoder(cls) for t, cls in BODIES.items()}


def struct_fields(cls: type[Body]) -> list[tuple[str, Any, bool]]:
    """(name, type, required) of each field of a body structure, in order."""
    info = msgspec.inspect.type_info(cls)
    return [(f.name, f.type, f.required) for f in info.fields]
