"""What the master knows: its workers, the queries in flight, each client's ledger, its view of the catalog."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from infaas_cli import protocol
from infaas_cli.catalog.artifacts import referenced_artifacts
from infaas_cli.catalog.listings import pick_profile
from infaas_cli.catalog.records import VariantRecord
from infaas_cli.catalog.store import MetadataStore
from infaas_cli.policy.selection import PriceTable, Query, build_index
from infaas_cli.policy.versions import Route
from infaas_cli.protocol.messages import Hardware, Tensor, VariantSpec, WorkerMetrics
from infaas_cli.toolkit.modelio import SignatureChecks

#: Input signatures whose verdict the master remembers (cleared when full, and on catalog changes).
MAX_CHECKED = 4096


@dataclass
class WorkerEntry:
    worker_id: str
    identity: bytes
    hardware: Hardware
    backends: list[str]
    last_seen: float
    alive: bool = True
    metrics: WorkerMetrics | None = None
    loaded: dict[str, int] = field(default_factory=dict)  # variant -> queued samples (heartbeat + in flight)
    inflight: set[str] = field(default_factory=set)

    @property
    def variant_metrics(self) -> dict[str, Any]:
        return self.metrics.variants if self.metrics is not None else {}


@dataclass
class PendingQuery:
    route: tuple[bytes, ...]  # the client's routing frames (identity, and b"" for a REQ client)
    client_request_id: str
    inputs: dict[str, Tensor]
    frames: list  # the inputs' data frames, forwarded untouched (kept for a re-route)
    query: Query
    variant: str
    worker_id: str
    batch: int
    decision_us: float
    started: float  # when it was sent to its worker (time.monotonic())
    needs_load: bool
    attempts: int = 1
    output_names: list[str] = field(default_factory=list)
    arrived: float = 0.0  # when its frame reached the master's door: the SLO clock starts here
    predicted_latency_ms: float | None = None
    model: str = ""
    cache_key: Any = None  # where its answer goes in the prediction cache (None: not cached)


@dataclass(slots=True)
class CachedAnswer:
    """A query's answer kept by the prediction cache: the result's outputs and their frames, as the worker sent them."""

    outputs: list
    frames: list
    variant: str
    output_names: list[str]


def slo_class(query: Query) -> str:
    """A query class for SLO accounting: what it asks for and how tightly (bounded label set)."""
    what = query.variant if query.kind == "variant" else query.model if query.kind == "model" \
        else f"{query.task}@{query.dataset}"
    parts = [what]
    if query.latency_ms is not None:
        parts.append(f"<={query.latency_ms:g}ms")
    if query.min_accuracy:
        parts.append(f">={query.min_accuracy:g}")
    return " ".join(parts)


class SloLedger:
    """SLO attainment over the last `window_s`, per model and per query class (bounded memory).

    Counts are kept as entries arrive and leave the window, so a summary costs the number of models
    and classes, not the number of queries in the window.
    """

    def __init__(self, window_s: float = 60.0, max_entries: int = 200_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.entries: collections.deque[tuple[float, str, str, bool]] = collections.deque()
        self.by_model: dict[str, list[int]] = {}
        self.by_class: dict[str, list[int]] = {}
        self.met_total = 0
        self.missed_total = 0

    def record(self, now: float, model: str, klass: str, met: bool) -> None:
        if len(self.entries) >= self.max_entries:
            self._drop()
        self.entries.append((now, model, klass, met))
        for table, key in ((self.by_model, model), (self.by_class, klass)):
            counts = table.get(key)
            if counts is None:
                counts = table[key] = [0, 0]
            counts[0 if met else 1] += 1
        if met:
            self.met_total += 1
        else:
            self.missed_total += 1

    def _drop(self) -> None:
        _, model, klass, met = self.entries.popleft()
        for table, key in ((self.by_model, model), (self.by_class, klass)):
            counts = table[key]
            counts[0 if met else 1] -= 1
            if counts == [0, 0]:
                del table[key]

    def summary(self, now: float) -> dict[str, Any]:
        while self.entries and self.entries[0][0] < now - self.window_s:
            self._drop()

        def rows(table: dict[str, list[int]]) -> dict[str, Any]:
            return {k: {"met": m, "missed": x, "attainment": m / (m + x)} for k, (m, x) in sorted(table.items())}

        met = sum(m for m, _ in self.by_model.values())
        n = len(self.entries)
        return {"window_s": self.window_s, "queries": n, "attainment": met / n if n else None,
                "met_total": self.met_total, "missed_total": self.missed_total,
                "by_model": rows(self.by_model), "by_class": rows(self.by_class)}


class ClientLedger:
    """Per client: queries in flight and replies its socket could not take yet (sent, in order, when it reads).

    Nothing is dropped by a full socket: a reply that does not fit waits here, and a client whose
    in-flight queries plus waiting replies reach the per-client bound has further queries refused
    at once with `overloaded`.
    """

    def __init__(self) -> None:
        self.in_flight: collections.Counter[bytes] = collections.Counter()
        self.outbox: dict[bytes, collections.deque[list[bytes]]] = {}
        self.waiting = 0  # replies in all outboxes

    def load(self, identity: bytes) -> int:
        box = self.outbox.get(identity)
        return self.in_flight[identity] + (len(box) if box else 0)

    def started(self, identity: bytes) -> None:
        self.in_flight[identity] += 1

    def finished(self, identity: bytes) -> None:
        n = self.in_flight[identity] - 1
        if n > 0:
            self.in_flight[identity] = n
        else:
            del self.in_flight[identity]


class CatalogView:
    """The master's cached reading of its store: the selection index, model records, variant specs.

    Rebuilt lazily after a catalog change (replication), never on the query path otherwise.
    """

    def __init__(self, store: MetadataStore, prices: PriceTable) -> None:
        self.store = store
        self.prices = prices
        self._index = None
        self._models: dict[str, Any] = {}
        self._specs: dict[str, VariantSpec] = {}
        self._checks = SignatureChecks(MAX_CHECKED)
        self._task_models: dict[tuple, list[str]] | None = None
        #: Models selection must not route to (being removed); their records stay readable until deleted.
        self.hidden: set[str] = set()
        #: Which version answers each model's queries (the master's roll-outs set it, daemons/master/rollout.py).
        self.routes: dict[str, Route] = {}

    def changed(self) -> None:
        self._task_models = None
        self._index = None
        self._models.clear()
        self._specs.clear()
        self._checks.clear()

    def set_routes(self, routes: dict[str, Route]) -> None:
        """A roll-out moved a model's route: only the index (its model and task spans) depends on it; the records,
        variant specs and input checks cached for the query path stay."""
        self.routes = dict(routes)
        self._index = None
        self._task_models = None

    def task_models(self, task: str | None, dataset: str | None) -> list[str]:
        """The models a model-less query for (task, dataset) may run, by name."""
        if self._task_models is None:
            by_task: dict[tuple, list[str]] = collections.defaultdict(list)
            for name, pair in sorted(self.index().models.items()):
                by_task[pair].append(name)
            self._task_models = dict(by_task)
        return self._task_models.get((task, dataset), [])

    def check_inputs(self, model_name: str, signature: tuple) -> int:
        """The batch size of a query with these tensor descriptors (a Query's `inputs` signature) for model
        `model_name`, after the worker's renaming and casts; InvalidInputError when the model refuses them."""
        model = self.model(model_name)
        return self._checks.check(model_name, signature, model.input_specs(), model.batch_dim, model.max_batch,
                                  label=model_name)[0]

    def index(self):
        if self._index is None:
            hidden = self.hidden
            self._index = build_index([r for r in self.store.models() if r.name not in hidden],
                                      [v for v in self.store.variants() if v.model not in hidden],
                                      self.store.profiles(), self.prices, routes=self.routes)
        return self._index

    def model(self, name: str):
        record = self._models.get(name)
        if record is None:
            record = self._models[name] = self.store.model(name)
        return record

    def variant_spec(self, name: str) -> VariantSpec:
        spec = self._specs.get(name)
        if spec is None:
            variant = self.store.get(VariantRecord, name)
            if variant is None:
                raise protocol.ProtocolError("unknown_model", f"unknown variant '{name}'")
            model = self.model(variant.model)
            profile = pick_profile(variant, [p for p in self.store.profiles(variant.model) if p.variant == name])
            latency = {int(b): float(s["p95_ms"]) for b, s in profile.batches.items()} if profile else {}
            spec = protocol.body_of("load", {"variant": name, "spec": {
                "name": name, "backend": variant.backend, "recipe": variant.recipe, "threads": variant.threads,
                "peak_memory_bytes": profile.peak_memory_bytes if profile else 0, "max_batch": variant.max_batch,
                "batch_dim": model.batch_dim, "artifact_sha256": variant.artifact_sha256,
                "inputs": [{"name": s.name, "type": s.type, "dtype": s.dtype, "shape": s.shape}
                           for s in model.input_specs()],
                "latency_ms": latency}}).spec
            self._specs[name] = spec
        return spec

    def threads_of(self, variant: str) -> int:
        try:
            return self.variant_spec(variant).threads
        except Exception:  # a variant the catalog no longer has holds no threads we can count
            return 0

    def needed_artifacts(self) -> set[str]:
        return referenced_artifacts(self.store.models(), self.store.variants())
