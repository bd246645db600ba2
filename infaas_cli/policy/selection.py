"""The variant selection policy: a pure function of a query, a precomputed catalog index and a view of the cluster.

`select(query, index, cluster) -> Decision` does no I/O and reads no clock; the master times it.
The index is built once per catalog change (`build_index`); it lays every profiled variant out in
one order sorted by (task, dataset, model, name), so that both a model's variants and a
(task, dataset)'s variants are a contiguous slice of flat numpy arrays (latency and cost per batch
bucket, accuracy, load time). A model-less query is then a dict lookup for the slice and a handful
of vectorised operations over it. The cluster side is a `ClusterView` (cluster_view.py) the master keeps
up to date event by event; it carries, per index position, the shortest queue of each loaded variant,
so that a decision costs the same however many workers there are.

Predictions are end to end, as the SLO is: the time from the query's arrival at the master to its reply
leaving it = the serving overhead of the path to the worker (learned online by the master, see
`policy/latency.py`, and handed in through `ClusterView.set_overhead`) + queueing behind the
worker's queue + the profiled model time at the batch size + the load time when the variant must load.
A query that carries its input signature only reaches models whose inputs accept it.
"""

from __future__ import annotations

import math
import tomllib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.backends import keys as backend_keys
from infaas_cli.errors import InfaasError, InvalidInputError
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, TensorSpec, VariantRecord, is_predicted
from infaas_cli.policy.latency import PRIOR_OVERHEAD_MS
from infaas_cli.policy.cluster_view import ClusterView, GroupView, check_overhead_default
from infaas_cli.policy.placement import WorkerState
from infaas_cli.policy.profiles import applicable_profiles
from infaas_cli.policy.versions import (Route, TaskSplit, canonical_id, default_routes, is_version_name, serving_rank,
                                        split_id, task_splits, version_id)

#: The bundled price table, found relative to the package like the zoo manifest (a checkout layout).
def _default_prices_path() -> Path:
    """configs/prices.toml: from the checkout, or as installed with the package (infaas_configs)."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "prices.toml"
    if checkout.is_file():
        return checkout
    try:
        from importlib.resources import files

        return Path(str(files("infaas_configs") / "prices.toml"))
    except ModuleNotFoundError:
        return checkout


PRICES_PATH = _default_prices_path()

KINDS = ("variant", "model", "task")
OBJECTIVES = ("cost", "latency")
#: best_effort: when queues make the SLO unreachable now (but not on an idle cluster), serve the fastest
#: admissible variant and mark the decision late; strict: reject early with `overloaded` (Clockwork's rule).
SLO_MODES = ("best_effort", "strict")

#: Every batch size up to this one gets its own latency column, so predictions are exact there;
#: above it, a batch size is rounded up to the next profiled or max-batch size.
EXACT_BATCH_COLUMNS = 64

#: How many names an "unknown ..." message lists before saying "and N more".
_LIST_MAX = 10

#: How many (slice, input signature) masks an index keeps before it starts over.
_ACCEPTS_CACHE_MAX = 4096

_INF = math.inf


# -- errors ------------------------------------------------------------------------------------------

class InvalidQueryError(InfaasError):
    code = "bad_request"


class UnknownModelError(InfaasError):
    code = "unknown_model"


class NoVariantError(InfaasError):
    """No variant meets the SLO; carries the best achievable numbers so a client can relax its SLO."""

    code = "no_variant"
    best_latency_ms: float | None
    best_accuracy: float | None

    def __init__(self, message: str, best_latency_ms: float | None = None,
                 best_accuracy: float | None = None) -> None:
        super().__init__(message, best_latency_ms=best_latency_ms, best_accuracy=best_accuracy)


class UnavailableError(InfaasError):
    code = "unavailable"


class OverloadedError(InfaasError):
    """A strict query whose SLO the current queues make unreachable (an idle cluster would meet it)."""

    code = "overloaded"
    predicted_latency_ms: float | None

    def __init__(self, message: str, predicted_latency_ms: float | None = None) -> None:
        super().__init__(message, predicted_latency_ms=predicted_latency_ms)


# A query's tensors that no candidate model takes raise the errors module's InvalidInputError (invalid_input),
# imported above so that callers of select find every error it raises here.


# -- prices ------------------------------------------------------------------------------------------

#: Accepted keys of prices.toml, per section; anything else is rejected with its key path.
_PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "cpu": ("usd_per_core_second",),
    "gpu": ("usd_per_device_second",),
    "inferentia": ("usd_per_device_second",),
}


@dataclass(frozen=True, slots=True)
class PriceTable:
    cpu_usd_per_core_second: float
    gpu_usd_per_device_second: float
    inferentia_usd_per_device_second: float

    def usd_per_second(self, hardware: str, threads: int) -> float:
        """What running one variant costs per second: CPU is billed per core (thread), accelerators per device."""
        if hardware == "cpu":
            return self.cpu_usd_per_core_second * max(1, int(threads))
        if hardware == "gpu":
            return self.gpu_usd_per_device_second
        if hardware == "inferentia":
            return self.inferentia_usd_per_device_second
        raise InfaasError(f"no price for hardware '{hardware}': the price table covers cpu, gpu and inferentia")


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read a price table (default: configs/prices.toml of this checkout); unknown or missing keys are errors."""
    path = Path(path) if path is not None else PRICES_PATH
    if not path.is_file():
        raise InfaasError(f"price table {path} not found; pass a prices file or run from a checkout of infaas "
                          "(configs/prices.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InfaasError(f"price table {path} is not valid TOML: {exc}") from None
    values: dict[str, float] = {}
    for section, table in data.items():
        if section not in _PRICE_KEYS:
            raise InfaasError(f"price table {path}: unknown key '{section}' "
                              f"(sections are {', '.join(_PRICE_KEYS)})")
        if not isinstance(table, dict):
            raise InfaasError(f"price table {path}: '{section}' must be a table ([{section}])")
        for key, value in table.items():
            if key not in _PRICE_KEYS[section]:
                raise InfaasError(f"price table {path}: unknown key '{section}.{key}' "
                                  f"(expected {', '.join(f'{section}.{k}' for k in _PRICE_KEYS[section])})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise InfaasError(f"price table {path}: '{section}.{key}' must be a non-negative number, "
                                  f"not {value!r}")
            values[f"{section}.{key}"] = float(value)
    missing = [f"{s}.{k}" for s, keys in _PRICE_KEYS.items() for k in keys if f"{s}.{k}" not in values]
    if missing:
        raise InfaasError(f"price table {path} lacks {', '.join(missing)}")
    return PriceTable(values["cpu.usd_per_core_second"], values["gpu.usd_per_device_second"],
                      values["inferentia.usd_per_device_second"])


# -- query -------------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: A query's input signature: one (name, numpy dtype name, shape) per tensor, sorted by name. An unnamed
#: single input ("") stands for whatever a single-input model calls its input (a .npy query).
InputSignature = tuple[tuple[str, str, tuple[int, ...]], ...]


def input_signature(feeds: Mapping[str, Any]) -> InputSignature:
    """The signature of a query's tensors (name -> numpy array), for `Query(inputs=...)`."""
    return tuple(sorted((str(name), np.asarray(arr).dtype.name, tuple(int(d) for d in np.shape(arr)))
                        for name, arr in feeds.items()))


#: Signatures already checked, by the value given (hashable ones only reach it): bounded, cleared when full.
_CHECKED: dict[Any, InputSignature] = {}
_CHECKED_MAX = 4096


def _check_signature(inputs: Any) -> InputSignature:
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (tuple, list)) or not inputs:
        raise InvalidQueryError("inputs must be a non-empty sequence of (name, dtype, shape), not "
                                f"{inputs!r}")
    out = []
    for item in inputs:
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise InvalidQueryError(f"each input is (name, dtype, shape), not {item!r}")
        name, dtype, shape = item
        if not isinstance(name, str):
            raise InvalidQueryError(f"an input name must be a string, not {name!r}")
        try:
            if not isinstance(dtype, str):
                raise TypeError(dtype)
            dtype_name = np.dtype(dtype).name
        except TypeError:
            raise InvalidQueryError(f"input '{name}': {dtype!r} is not a numpy dtype name") from None
        if not isinstance(shape, (tuple, list)) or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise InvalidQueryError(f"input '{name}': shape must be a sequence of whole numbers >= 0, not "
                                    f"{shape!r}")
        out.append((name, dtype_name, tuple(shape)))
    out.sort()
    if len({n for n, _, _ in out}) != len(out):
        raise InvalidQueryError(f"inputs name {', '.join(sorted({n for n, _, _ in out}))} more than once")
    return tuple(out)


def describe_signature(inputs: InputSignature) -> str:
    """A query's tensors as the model listings write inputs: "x: float64[1,64]"."""
    return ", ".join(f"{name or '(unnamed)'}: {dtype}[{','.join(map(str, shape))}]" for name, dtype, shape in inputs)


@dataclass(frozen=True, slots=True)
class Query:
    """What a client asks for. Constructing one validates it (InvalidQueryError names the fix)."""

    kind: str
    variant: str | None = None
    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    batch_size: int = 1
    latency_ms: float | None = None  # None: no latency bound; else arrival at the master to reply, end to end
    min_accuracy: float | None = None  # a fraction in [0, 1]
    objective: str = "cost"
    max_cost_usd: float | None = None  # per query
    slo_mode: str = "best_effort"  # one of SLO_MODES: what happens when queues make latency_ms unreachable
    #: The query's tensors as (name, dtype, shape) (`input_signature(feeds)`); None: not checked by selection.
    inputs: InputSignature | None = None
    #: Its place in [0, 100) for a canary's split (`policy.versions.route_draw` of its request id); None: the
    #: stable version answers a query by model name or task.
    route_draw: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidQueryError(f"query kind must be 'variant', 'model' or 'task', not {self.kind!r}")
        for name in ("variant", "model", "task", "dataset"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidQueryError(f"{name} must be a string, not {type(value).__name__}")
        if self.kind == "variant" and not self.variant:
            raise InvalidQueryError("a query of kind 'variant' names the variant (MODEL/BACKEND-RECIPE-tT-bB); "
                                    "pass --variant")
        if self.kind == "model" and not self.model:
            raise InvalidQueryError("a query of kind 'model' names the model; pass --model")
        if self.kind == "task" and not (self.task and self.dataset):
            raise InvalidQueryError("a model-less query (kind 'task') names both the task and the dataset; "
                                    "pass --task T --dataset D")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidQueryError(f"batch_size must be a whole number >= 1, not {self.batch_size!r}")
        if self.latency_ms is not None:
            if not _is_number(self.latency_ms) or self.latency_ms <= 0:
                raise InvalidQueryError(f"latency_ms must be a positive number of milliseconds (or absent for no "
                                        f"bound), not {self.latency_ms!r}")
            object.__setattr__(self, "latency_ms", float(self.latency_ms))
        if self.min_accuracy is not None:
            if not _is_number(self.min_accuracy) or not 0 <= self.min_accuracy <= 1:
                raise InvalidQueryError(f"min_accuracy must be a fraction between 0 and 1 (0.97 means 97%), "
                                        f"not {self.min_accuracy!r}")
            object.__setattr__(self, "min_accuracy", float(self.min_accuracy))
        if self.objective not in OBJECTIVES:
            raise InvalidQueryError(f"objective must be 'cost' or 'latency', not {self.objective!r}")
        if self.max_cost_usd is not None:
            if not _is_number(self.max_cost_usd) or self.max_cost_usd < 0:
                raise InvalidQueryError(f"max_cost_usd must be a non-negative number of US dollars per query "
                                        f"(or absent for no bound), not {self.max_cost_usd!r}")
            object.__setattr__(self, "max_cost_usd", float(self.max_cost_usd))
        if self.slo_mode not in SLO_MODES:
            raise InvalidQueryError(f"slo_mode must be 'best_effort' or 'strict', not {self.slo_mode!r}")
        if self.inputs is not None:
            try:  # the master sees the same few signatures again and again
                checked = _CHECKED.get(self.inputs)
            except TypeError:  # a list: not hashable, checked every time
                checked = _check_signature(self.inputs)
            if checked is None:
                checked = _check_signature(self.inputs)
                if len(_CHECKED) >= _CHECKED_MAX:
                    _CHECKED.clear()
                _CHECKED[self.inputs] = checked
            object.__setattr__(self, "inputs", checked)

    @classmethod
    def from_body(cls, body: Any) -> Query:
        """The query of a protocol "query" body; keys other than the query's own (inputs, ...) are ignored.

        The tensors themselves are not read here: the caller that unpacks them passes
        `dataclasses.replace(query, inputs=input_signature(feeds))` when selection should check them.
        """
        if not isinstance(body, Mapping):
            raise InvalidQueryError(f"a query body is a map, not {type(body).__name__}")
        if body.get("kind") is None:
            raise InvalidQueryError("the query lacks 'kind' (one of variant, model, task)")
        batch_size = body.get("batch_size")
        objective = body.get("objective")
        slo_mode = body.get("slo_mode")
        return cls(kind=body["kind"], variant=body.get("variant"), model=body.get("model"), task=body.get("task"),
                   dataset=body.get("dataset"), batch_size=1 if batch_size is None else batch_size,
                   latency_ms=body.get("latency_ms"), min_accuracy=body.get("min_accuracy"),
                   objective="cost" if objective is None else objective, max_cost_usd=body.get("max_cost_usd"),
                   slo_mode="best_effort" if slo_mode is None else slo_mode)


# -- input signatures --------------------------------------------------------------------------------

_DTYPE_KIND: dict[str, str] = {}


def _dtype_kind(name: str) -> str:
    kind = _DTYPE_KIND.get(name)
    if kind is None:
        try:
            kind = np.dtype(name).kind
        except TypeError:
            kind = "?"
        _DTYPE_KIND[name] = kind
    return kind


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input as selection matches it: dtype None for a non-tensor, None dims are dynamic."""

    name: str
    dtype: str | None
    dims: tuple[int | None, ...]
    type: str  # the ONNX Runtime type string, for non-tensor inputs' descriptions

    def describe(self) -> str:
        if self.dtype is None:
            return f"{self.name}: {self.type}"
        return f"{self.name}: {self.dtype}[{','.join('?' if d is None else str(d) for d in self.dims)}]"


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The inputs a model accepts, compiled once per catalog change for `check_query_inputs`'s rules.

    A query matches when its tensors' names are the model's (an unnamed single tensor matches a single-input
    model), each dtype is the input's or castable within its kind (float64 → float32, int32 → int64, as
    `coerce_query_inputs` casts), each rank is the input's and each fixed dimension agrees (the batch axis,
    dimension 0 unless the model has none, is free: the batch size is checked apart).
    """

    inputs: tuple[InputSpec, ...]
    batch_dim: str  # "dynamic", "fixed" or "none", as ModelRecord.batch_dim

    @classmethod
    def from_specs(cls, specs: Sequence[TensorSpec], batch_dim: str) -> ModelSignature:
        inputs = []
        for spec in specs:
            dtype = spec.dtype if spec.is_tensor else None
            dims = tuple(d if isinstance(d, int) and not isinstance(d, bool) else None for d in (spec.shape or []))
            inputs.append(InputSpec(spec.name, dtype, dims, spec.type))
        return cls(tuple(inputs), batch_dim)

    def describe(self) -> str:
        return ", ".join(i.describe() for i in self.inputs)

    def mismatch(self, inputs: InputSignature) -> str | None:
        """Why a query with these tensors cannot run on the model, or None when it can."""
        specs = self.inputs
        if len(inputs) == 1 and inputs[0][0] == "" and len(specs) == 1:
            pairs = [(specs[0], inputs[0])]
        else:
            by_name = {i[0]: i for i in inputs}
            want = [s.name for s in specs]
            if set(by_name) != set(want):
                missing = [n for n in want if n not in by_name]
                extra = [n or "(unnamed)" for n in by_name if n not in want]
                parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                        ([f"unexpected {', '.join(extra)}"] if extra else [])
                return "; ".join(parts)
            pairs = [(s, by_name[s.name]) for s in specs]
        for spec, (name, dtype, shape) in pairs:
            label = name or spec.name
            if spec.dtype is None:
                return f"input '{spec.name}' is {spec.type}, not a tensor"
            if dtype != spec.dtype:
                have, want_kind = _dtype_kind(dtype), _dtype_kind(spec.dtype)
                castable = spec.dtype != "str" and (have == want_kind or (have in "iu" and want_kind in "iu"))
                if not castable or want_kind == "?":
                    return f"input '{label}' has dtype {dtype}, the model expects {spec.dtype}"
            if len(shape) != len(spec.dims):
                return f"input '{label}' has rank {len(shape)} ({list(shape)}), the model expects {spec.describe()}"
            for i, (d, g) in enumerate(zip(spec.dims, shape)):
                if i == 0 and self.batch_dim != "none":
                    continue
                if d is not None and d != g:
                    return f"input '{label}' dimension {i} is {g}, the model expects {spec.describe()}"
        return None


def model_signature(model: ModelRecord) -> ModelSignature | None:
    """The compiled input signature of a model; None when its record lists no inputs (then nothing is filtered)."""
    try:
        specs = model.input_specs()
    except TypeError:  # a record whose inputs are not TensorSpecs: do not filter on it
        return None
    return ModelSignature.from_specs(specs, model.batch_dim) if specs else None


# -- catalog -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VariantInfo:
    """What selection needs to know of one variant (a VariantRecord joined with its model and profile)."""

    name: str
    model: str
    task: str | None
    dataset: str | None
    backend: str
    hardware: str
    recipe: str
    threads: int
    max_batch: int
    accuracy: float | None
    load_time_ms: float
    peak_memory_bytes: int
    #: (batch size, p95 latency ms), ascending by batch size; empty when the variant is not profiled.
    batch_latency_ms: tuple[tuple[int, float], ...] = ()
    #: What a worker must advertise to run it: its backend, plus the host capabilities its recipe needs
    #: ("ov-cpu+bf16"); workers, rankings and placement are matched on it, never on the backend alone. Derived once
    #: (a query that must load a variant reads it).
    placement_key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement_key", backend_keys.placement_key(self.backend, self.recipe))

    @property
    def profiled(self) -> bool:
        return bool(self.batch_latency_ms)

    def latency_ms(self, batch_size: int) -> float | None:
        """Latency at the smallest profiled batch >= batch_size; beyond the largest, scaled linearly from it.

        None when the variant takes no batch that large or is not profiled.
        """
        if batch_size > self.max_batch or not self.batch_latency_ms:
            return None
        for b, ms in self.batch_latency_ms:
            if b >= batch_size:
                return ms
        b, ms = self.batch_latency_ms[-1]
        return ms * batch_size / b  # linear: pessimistic, since batching is sub-linear


class CatalogIndex:
    """Profiled variants laid out for vectorised filtering, plus name lookups for errors and kind="variant".

    Arrays are indexed by position in `order` (sorted by task, dataset, serving rank, model, name); `model_spans`
    and `task_spans` map a model record / a (task, dataset) to its (start, end) slice. Of a model's versions only the
    one its route serves (`routes`, policy/versions.py) is in its task's span: the others sort after it, reachable
    by their own names — a canary version right after the span, so that `task_splits` slides the span over it for
    the draws its percent takes (`versions.serving_rank`). `lat_ms[j]` and `cost_usd[j]` hold each variant's
    latency / cost per query at batch bucket `buckets[j]` (inf where the bucket is above the variant's max batch,
    which doubles as the max-batch filter).
    """

    def __init__(self, infos: Iterable[VariantInfo], prices: PriceTable,
                 models: Mapping[str, tuple[str, str]] | None = None,
                 signatures: Mapping[str, ModelSignature | None] | None = None,
                 routes: Mapping[str, Route] | None = None) -> None:
        self.prices = prices
        self.infos: dict[str, VariantInfo] = {}
        for info in infos:
            self.infos[info.name] = info
        # Known models and task pairs (for messages), also those with nothing profiled yet.
        self.models: dict[str, tuple[str | None, str | None]] = dict(models or {})
        for info in self.infos.values():
            self.models.setdefault(info.model, (info.task, info.dataset))
        self.task_pairs: set[tuple[str, str]] = {(t, d) for t, d in self.models.values() if t and d}

        usd_per_s: dict[str, float] = {}
        selectable = []
        for info in self.infos.values():
            if not info.profiled:
                continue  # reachable by name only
            try:
                usd_per_s[info.name] = prices.usd_per_second(info.hardware, info.threads)
            except InfaasError:
                continue  # unpriceable hardware: by name only, rather than breaking every query
            selectable.append(info)
        # Versions: queries naming a model (or its task) go to the version its route picks. A route the master did
        # not give, or one naming a version with nothing profiled, is the default policy's: the highest profiled.
        profiled: dict[str, set[int]] = {}
        for v in selectable:
            base, version = split_id(v.model)
            profiled.setdefault(base, set()).add(version)
        self.profiled_versions: dict[str, set[int]] = profiled
        self.routes: dict[str, Route] = default_routes(profiled)
        for base, route in (routes or {}).items():
            if all(version in profiled.get(base, ()) for version in route.versions):
                self.routes[base] = route
        #: The model records whose variants answer queries by model name and by task (each model's routed version).
        self.serving_models: set[str] = {version_id(base, route.stable) for base, route in self.routes.items()}
        stable = self.serving_models
        self._routed = {base: version_id(base, r.stable) for base, r in self.routes.items() if r.canary is None}
        routes_now = self.routes
        selectable.sort(key=lambda v: (v.task or "", v.dataset or "", *serving_rank(v.model, routes_now), v.model,
                                       v.name))
        self.order: list[VariantInfo] = selectable
        self.pos: dict[str, int] = {v.name: i for i, v in enumerate(selectable)}
        n = len(selectable)

        self.model_spans: dict[str, tuple[int, int]] = {}
        self.task_spans: dict[tuple[str, str], tuple[int, int]] = {}
        for i, v in enumerate(selectable):
            self._extend(self.model_spans, v.model, i, f"model {v.model}")
            if v.task and v.dataset and v.model in stable:
                self._extend(self.task_spans, (v.task, v.dataset), i, f"task {v.task}/{v.dataset}")
        #: Tasks with a canaried model: the span a task query's draw selects (empty without canaries).
        self.task_splits: dict[tuple[str, str], TaskSplit] = task_splits(self.routes, self.model_spans, self.models,
                                                                         self.task_spans)

        max_batch_top = max((v.max_batch for v in selectable), default=1)
        bucket_set = set(range(1, min(max_batch_top, EXACT_BATCH_COLUMNS) + 1))
        for v in selectable:
            bucket_set.add(v.max_batch)
            bucket_set.update(b for b, _ in v.batch_latency_ms if b <= max_batch_top)
        self.buckets: tuple[int, ...] = tuple(sorted(bucket_set))
        #: column of lat_ms / cost_usd for each batch size 1..buckets[-1] (index 0 unused)
        self.column: list[int] = [0] + [bisect_left(self.buckets, b) for b in range(1, self.buckets[-1] + 1)]

        bucket_arr = np.asarray(self.buckets, dtype=np.float64)
        lat = np.empty((len(self.buckets), n), dtype=np.float64)
        for i, v in enumerate(selectable):
            pb = np.asarray([b for b, _ in v.batch_latency_ms], dtype=np.float64)
            pl = np.asarray([ms for _, ms in v.batch_latency_ms], dtype=np.float64)
            at = np.searchsorted(pb, bucket_arr)  # smallest profiled batch >= bucket
            col = np.where(at < pb.size, pl[np.minimum(at, pb.size - 1)], pl[-1] * bucket_arr / pb[-1])
            col[bucket_arr > v.max_batch] = _INF
            lat[:, i] = col
        self.lat_ms = lat
        usd_per_ms = np.asarray([usd_per_s[v.name] / 1e3 for v in selectable], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            self.cost_usd = np.where(np.isfinite(lat), lat * usd_per_ms, _INF)
        self.usd_per_ms = usd_per_ms
        self.lat1_ms = lat[0].copy() if n else np.zeros(0)  # bucket 0 is batch 1: the queueing unit
        self.load_time_ms = np.asarray([v.load_time_ms for v in selectable], dtype=np.float64)
        self.accuracy = np.asarray([np.nan if v.accuracy is None else v.accuracy for v in selectable],
                                   dtype=np.float64)
        self.max_batch = np.asarray([v.max_batch for v in selectable], dtype=np.int64)
        self.peak_memory_bytes = np.asarray([v.peak_memory_bytes for v in selectable], dtype=np.float64)
        # Input signatures: one code per distinct signature (-1: unknown, accepts anything), so that a query's
        # mask over a slice is a few signature matches (one per distinct signature), cached per signature.
        self.signatures: dict[str, ModelSignature] = {m: sig for m, sig in (signatures or {}).items()
                                                      if sig is not None}
        distinct: dict[ModelSignature, int] = {}
        for sig in self.signatures.values():
            distinct.setdefault(sig, len(distinct))
        self.signature_list: list[ModelSignature] = list(distinct)
        self.signature_code = np.asarray(
            [distinct[self.signatures[v.model]] if v.model in self.signatures else -1 for v in selectable],
            dtype=np.intp)
        self._accepts_cache: dict[tuple[int, int, InputSignature], np.ndarray | None] = {}
        # Per variant its placement key (backend + needed capabilities), coded: what a live worker must advertise.
        self._span_keys: dict[tuple[int, int], list[tuple[int, np.ndarray | None, float]]] = {}
        keys = [v.placement_key for v in selectable]
        self.key_names: list[str] = sorted(set(keys))
        code = {k: i for i, k in enumerate(self.key_names)}
        self.key_code = np.asarray([code[k] for k in keys], dtype=np.intp)
        # The final deterministic tie-break: among variants that differ only in max batch (they share
        # one measurement, so they tie exactly) the largest max batch, which can batch under load;
        # then the name.
        self.name_rank = np.empty(n, dtype=np.int64)
        order = sorted(range(n), key=lambda i: (-selectable[i].max_batch, selectable[i].name))
        self.name_rank[np.asarray(order, dtype=np.intp)] = np.arange(n)

    @staticmethod
    def _extend(spans: dict, key: Any, i: int, what: str) -> None:
        span = spans.get(key)
        if span is None:
            spans[key] = (i, i + 1)
        elif span[1] == i:
            spans[key] = (span[0], i + 1)
        else:
            raise InfaasError(f"{what}: its variants disagree on task/dataset; re-register the model")

    def __len__(self) -> int:
        return len(self.order)

    def model_id(self, name: str, draw: float | None = None) -> str:
        """The model record a query naming `name` runs: a version named as such (`M@vV`; `M@v1` is `M`) itself, a
        model's name the version its route picks (the canary for a `draw` below its percent)."""
        found = self._routed.get(name)  # the common case, a dict lookup: a model's name, no canary
        if found is not None:
            return found
        if is_version_name(name):
            return canonical_id(name)
        route = self.routes.get(name)
        return name if route is None else version_id(name, route.pick(draw))

    def span_keys(self, start: int, end: int) -> list[tuple[int, np.ndarray | None, float]]:
        """Per placement key in the slice: (key code, its mask over the slice or None when it is the only one,
        the largest peak memory among its variants); cached per slice."""
        found = self._span_keys.get((start, end))
        if found is None:
            codes = self.key_code[start:end]
            memory = self.peak_memory_bytes[start:end]
            present = np.flatnonzero(np.bincount(codes, minlength=len(self.key_names))).tolist()
            if len(present) == 1:
                found = [(present[0], None, float(memory.max()))]
            else:
                found = []
                for code in present:
                    mask = codes == code
                    found.append((code, mask, float(memory[mask].max())))
            self._span_keys[(start, end)] = found
        return found

    def accepts(self, start: int, end: int, inputs: InputSignature) -> np.ndarray | None:
        """Which variants of the slice take a query with these tensors; None when all of them do."""
        key = (start, end, inputs)
        try:
            return self._accepts_cache[key]
        except KeyError:
            pass
        codes = self.signature_code[start:end]
        refused = [c for c in np.unique(codes).tolist()
                   if c >= 0 and self.signature_list[c].mismatch(inputs) is not None]
        mask = ~np.isin(codes, refused) if refused else None
        if len(self._accepts_cache) >= _ACCEPTS_CACHE_MAX:
            self._accepts_cache.clear()  # many distinct shapes (e.g. batch sizes): start over, stay bounded
        self._accepts_cache[key] = mask
        return mask


def build_index(models: Sequence[ModelRecord], variants: Sequence[VariantRecord],
                profiles: Sequence[ProfileRecord], prices: PriceTable,
                hardware_ids: Mapping[str, str] | None = None,
                routes: Mapping[str, Route] | None = None) -> CatalogIndex:
    """Join the records into a CatalogIndex; a variant's profile is `profiles.applicable_profile`'s.

    `hardware_ids` maps a hardware kind ("cpu", "gpu", ...) to the hardware id whose profiles to prefer
    for variants of that kind; without it, a variant's newest profile applies. `routes`: which version serves each
    model (policy/versions.py; default: the highest profiled).
    """
    model_by_name = {m.name: m for m in models}
    prefer = None
    if hardware_ids:
        prefer = {v.name: hardware_ids.get(v.hardware) for v in variants}
    applicable = applicable_profiles(profiles, prefer)
    infos = []
    for v in variants:
        m = model_by_name.get(v.model)
        p = applicable.get(v.name)
        batches: list[tuple[int, float]] = []
        if p is not None:
            for key, stats in p.batches.items():
                try:
                    ms = float(stats["p95_ms"])
                    if is_predicted(stats):  # predicted (`profile --search`): its error bound added
                        ms *= 1.0 + max(0.0, float(stats.get("predicted_error") or 0.0))
                    batches.append((int(key), ms))
                except (KeyError, TypeError, ValueError):
                    continue  # a malformed entry is skipped, not fatal to the whole catalog
        infos.append(VariantInfo(
            name=v.name, model=v.model, task=m.task if m else None, dataset=m.dataset if m else None,
            backend=v.backend, hardware=v.hardware, recipe=v.recipe, threads=v.threads, max_batch=v.max_batch,
            accuracy=v.accuracy, load_time_ms=float(p.load_time_ms) if p else 0.0,
            peak_memory_bytes=int(p.peak_memory_bytes) if p else 0, batch_latency_ms=tuple(sorted(batches))))
    return CatalogIndex(infos, prices, {m.name: (m.task, m.dataset) for m in models},
                        {m.name: model_signature(m) for m in models}, routes)


# -- cluster -----------------------------------------------------------------------------------------

# WorkerState (one worker as the master sees it) lives in placement.py, with the rule that places loads on it;
# ClusterView (the cluster kept up to date event by event, what select reads) in cluster_view.py.


class ClusterSnapshot:
    """The workers as the master last saw them, frozen: for the control path, tests and one-off decisions.

    `overhead_ms` maps a worker id to its learned overhead (ms, `policy.latency.WorkerOverheads.snapshot()`);
    a worker without an entry — and any worker when the map is absent — counts `overhead_ms_default`
    (the estimator's prior, `PRIOR_OVERHEAD_MS`, unless the caller knows better). `overhead_floor_ms`: see
    ClusterView. `select` reads the ClusterView of these workers, built on first use (O(workers)); the
    master keeps a ClusterView up to date instead, so that no query pays for the whole cluster.
    """

    __slots__ = ("workers", "overhead_ms", "overhead_ms_default", "overhead_floor_ms", "_view")

    def __init__(self, workers: Sequence[WorkerState] = (), overhead_ms: Mapping[str, float] | None = None,
                 overhead_ms_default: float = PRIOR_OVERHEAD_MS, overhead_floor_ms: float | None = None) -> None:
        self.workers: tuple[WorkerState, ...] = tuple(workers)
        self.overhead_ms: Mapping[str, float] = overhead_ms or {}
        self.overhead_ms_default = check_overhead_default(overhead_ms_default)
        self.overhead_floor_ms = overhead_floor_ms
        self._view: ClusterView | None = None

    def overhead_of(self, worker_id: str) -> float:
        """The serving overhead (ms) of the path to `worker_id`: its estimate, else the default."""
        value = self.overhead_ms.get(worker_id)
        return self.overhead_ms_default if value is None else float(value)

    def view(self) -> ClusterView:
        """These workers as a ClusterView (built once)."""
        if self._view is None:
            view = ClusterView(self.overhead_ms_default, self.overhead_floor_ms)
            for worker_id, overhead_ms in self.overhead_ms.items():
                view.set_overhead(worker_id, overhead_ms)
            for state in self.workers:
                view.put(state)
            self._view = view
        return self._view


# -- decision ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decision:
    variant: str
    worker_id: str
    needs_load: bool
    #: End to end (arrival at the master to reply): the chosen worker's serving overhead + queue wait or load
    #: time + model time at the batch size. None: the variant was asked for by name and is not profiled.
    predicted_latency_ms: float | None
    cost_usd: float | None
    model: str
    accuracy: float | None
    #: False when a best_effort query is served although the prediction misses its latency bound (the
    #: current queues are to blame: an idle cluster would meet it); the master marks such replies late.
    slo_met_predicted: bool = True


def select(query: Query, index: CatalogIndex, cluster: ClusterView | ClusterSnapshot) -> Decision:
    """Pick the variant and the worker for one query. Raises an InfaasError subclass when none fits.

    Reads O(the query's candidate variants) of a ClusterView, plus O(log workers); a ClusterSnapshot is read
    through its view.

    NoVariantError: no variant meets the bounds even on an idle cluster (it names the best achievable
    end-to-end figure); OverloadedError: a strict query whose latency bound only the queues make
    unreachable; InvalidInputError: no candidate model takes the query's tensors.
    """
    if not isinstance(cluster, ClusterView):
        cluster = cluster.view()
    if query.kind == "variant":
        return _select_variant(query, index, cluster)
    model = None
    if query.kind == "model":
        model = index.model_id(query.model, query.route_draw)
        span = index.model_spans.get(model)
        label = f"model {model}"
    else:
        pair = (query.task, query.dataset)
        split = index.task_splits.get(pair)  # a canary splits its model's task queries as it does those by name
        span = index.task_spans.get(pair) if split is None else split.span(query.route_draw)
        label = f"task {query.task}/{query.dataset}"
    if span is None:
        raise _unknown(query, index)
    start, end = span
    accept = None
    if query.inputs is not None:
        accept = index.accepts(start, end, query.inputs)
        if accept is not None and not accept.any():
            raise _refused_inputs(query, index, model)
    group = cluster.group(index, start, end)
    if not group.any_runnable:
        raise _unavailable({v.placement_key for v in index.order[start:end]}, cluster.live_backends(),
                           f"any variant of {label}")
    b = query.batch_size
    column = index.column
    if b >= len(column):
        raise _batch_too_large(label, b, index, start, end)
    j = column[b]
    lat = index.lat_ms[j, start:end]
    cost = index.cost_usd[j, start:end]
    pred = lat + group.extra_ms
    latency_bound = query.latency_ms
    # inf latency marks a batch above the variant's max batch: the bound test also filters those out.
    ok = pred <= latency_bound if latency_bound is not None else pred < _INF
    if accept is not None:
        ok &= accept
    if query.min_accuracy:
        ok &= index.accuracy[start:end] >= query.min_accuracy  # NaN (no accuracy) fails
    if query.max_cost_usd is not None:
        ok &= cost <= query.max_cost_usd
    meets = ok
    if group.runnable is not None:
        ok = ok & group.runnable
    if group.loaded is not None:
        # INFaaS looks at running variants first: a loaded variant that meets the SLO wins.
        ok_loaded = ok & group.loaded
        if ok_loaded.any():
            ok = ok_loaded
    primary, secondary = (cost, pred) if query.objective == "cost" else (pred, cost)
    keyed = np.where(ok, primary, _INF)
    k = int(keyed.argmin())
    slo_met = True
    if not ok[k]:
        k = _queued_out(query, index, start, end, pred, cost, group, accept,  # raises when it is not the queues
                        cluster.overhead_floor_ms)
        if k is None:
            if group.runnable is not None and meets.any():
                raise _unavailable({index.order[start + int(i)].placement_key for i in np.flatnonzero(meets)},
                                   cluster.live_backends(), f"the variants of {label} that meet the bounds")
            raise _no_variant(query, label, index, start, end, pred, cost, group, accept)
        slo_met = False
    else:
        best = keyed[k]
        if np.count_nonzero(keyed == best) > 1:
            k = _break_tie(np.flatnonzero(keyed == best), secondary, index.name_rank[start:end])
    info = index.order[start + k]
    if group.loaded is not None and group.loaded[k]:
        worker_id = cluster.least_loaded_holder(info.name)[1]
        needs_load = False
    else:
        worker_id = _place(cluster, info)
        needs_load = True
    return Decision(info.name, worker_id, needs_load, float(pred[k]), float(cost[k]), info.model, info.accuracy,
                    slo_met)


def _queued_out(query: Query, index: CatalogIndex, start: int, end: int, pred: np.ndarray, cost: np.ndarray,
                group: GroupView, accept: np.ndarray | None, floor_ms: float = 0.0) -> int | None:
    """When only the current queues keep every admissible variant from the latency bound, the fastest one.

    Admissible: takes the batch and the inputs, meets the accuracy and cost bounds, runnable. If one of them
    would meet the bound on an idle cluster (no queue; loads still count), a best_effort query is served by
    the admissible variant with the lowest predicted latency now (the decision is marked late) and a strict
    query is refused with OverloadedError. Otherwise None: the SLO is out of reach, not the cluster busy.
    """
    bound = query.latency_ms
    if bound is None:
        return None

    def admissible(at: np.ndarray | slice) -> np.ndarray:
        mask = pred[at] < _INF
        if accept is not None:
            mask &= accept[at]
        if query.min_accuracy:
            mask &= index.accuracy[start:end][at] >= query.min_accuracy
        if query.max_cost_usd is not None:
            mask &= cost[at] <= query.max_cost_usd
        if group.runnable is not None:
            mask &= group.runnable[at]
        return mask

    # On an idle cluster a variant pays no queue and only the floor of the serving overhead (the learned
    # figure is a high quantile that grows with load); loads still count.
    excess = np.maximum(np.broadcast_to(np.asarray(group.load_overhead_ms, dtype=np.float64), pred.shape) - floor_ms,
                        0.0)
    if group.loaded_local is not None:
        excess = excess.copy()
        held = np.broadcast_to(np.asarray(group.held_overhead_ms, dtype=np.float64), group.loaded_local.shape)
        excess[group.loaded_local] = np.maximum(held - floor_ms, 0.0) + group.wait_ms
    idle_all = pred - excess
    reachable = admissible(slice(None)) & (idle_all <= bound)
    if not reachable.any():
        return None
    keyed = np.where(admissible(slice(None)), pred, _INF)
    k = int(keyed.argmin())
    tied = np.flatnonzero(keyed == keyed[k])
    if tied.size > 1:
        k = _break_tie(tied, cost, index.name_rank[start:end])
    predicted = float(pred[k])
    if query.slo_mode == "strict":
        idle = float(idle_all[reachable].min())
        raise OverloadedError(
            f"the queues make latency ≤ {_fmt_ms(bound)} ms unreachable now: the fastest admissible variant "
            f"({index.order[start + k].name}) is predicted at {_fmt_ms(predicted)} ms end to end (one would take "
            f"{_fmt_ms(idle)} ms on an idle cluster); retry later, relax --latency-ms or use best-effort mode",
            predicted_latency_ms=predicted)
    return k


def _break_tie(tied: np.ndarray, secondary: np.ndarray, name_rank: np.ndarray) -> int:
    values = secondary[tied]
    tied = tied[values == values.min()]
    if tied.size > 1:
        tied = tied[[int(name_rank[tied].argmin())]]
    return int(tied[0])


def _select_variant(query: Query, index: CatalogIndex, cluster: ClusterView) -> Decision:
    info = index.infos.get(query.variant)
    if info is None:
        raise _unknown(query, index)
    if query.inputs is not None:
        sig = index.signatures.get(info.model)
        why = sig.mismatch(query.inputs) if sig is not None else None
        if why is not None:
            raise InvalidInputError(f"variant {info.name} does not take these inputs ({why}); model {info.model} "
                                    f"takes {sig.describe()}")
    if query.batch_size > info.max_batch:
        raise NoVariantError(f"variant {info.name} takes batches of at most {info.max_batch}, not "
                             f"{query.batch_size}; send at most {info.max_batch} samples or query by model")
    lat = info.latency_ms(query.batch_size)
    holder = cluster.least_loaded_holder(info.name)
    if holder is not None:
        queued, worker_id = holder
        needs_load = False
        lat1 = info.latency_ms(1)
        overhead = cluster.overhead_of(worker_id)
        idle = None if lat is None else overhead + lat
        pred = None if lat is None else idle + queued * (lat1 or 0.0)
    else:
        worker_id = _place(cluster, info)
        needs_load = True
        overhead = cluster.overhead_of(worker_id)
        # Asked for by name, the variant has no alternative: its load is a transient like a queue (else a
        # bound below its load time could never be met, since nothing would ever load it).
        idle = None if lat is None else overhead + lat
        pred = None if lat is None else idle + info.load_time_ms
    bound = query.latency_ms
    slo_met = True
    if bound is not None and pred is not None and pred > bound:
        idle = min(idle, lat + cluster.overhead_floor_ms)  # idle: the path's floor, not its figure under load
        if idle > bound:
            raise NoVariantError(
                f"variant {info.name} cannot meet latency ≤ {_fmt_ms(bound)} ms: it takes {_fmt_ms(idle)} ms end to "
                f"end ({_fmt_ms(lat)} ms model time + {_fmt_ms(overhead)} ms serving overhead) even when loaded "
                "and idle — relax --latency-ms or query by model or task", best_latency_ms=idle,
                best_accuracy=info.accuracy)
        if query.slo_mode == "strict":
            why = f"its {_fmt_ms(info.load_time_ms)} ms load" if needs_load else "its queue"
            raise OverloadedError(
                f"{why} makes latency ≤ {_fmt_ms(bound)} ms unreachable now for variant {info.name}: predicted "
                f"{_fmt_ms(pred)} ms end to end ({_fmt_ms(idle)} ms when loaded and idle); retry later, relax "
                "--latency-ms or use best-effort mode", predicted_latency_ms=pred)
        slo_met = False
    cost = None
    if lat is not None:
        try:
            cost = index.prices.usd_per_second(info.hardware, info.threads) * lat / 1e3
        except InfaasError:
            cost = None
    return Decision(info.name, worker_id, needs_load, pred, cost, info.model, info.accuracy, slo_met)


def _place(cluster: ClusterView, info: VariantInfo) -> str:
    """The worker to load `info` on (`placement.place`, purpose "query")."""
    worker_id = cluster.place_query(info.placement_key, info.peak_memory_bytes)
    if worker_id is None:
        raise _unavailable([info.placement_key], cluster.live_backends(), info.name)
    return worker_id


# -- error messages (the slow path: vectorised where it is cheap, plain otherwise) -------------------

def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    if not names:
        return "none"
    shown = ", ".join(names[:_LIST_MAX])
    return shown + (f" (and {len(names) - _LIST_MAX} more)" if len(names) > _LIST_MAX else "")


def _unknown(query: Query, index: CatalogIndex) -> InfaasError:
    if query.kind == "variant":
        model = query.variant.split("/", 1)[0]
        if model in index.models:
            names = [v.name for v in index.infos.values() if v.model == model]
            return UnknownModelError(f"unknown variant '{query.variant}'; variants of model {model}: "
                                     f"{_listing(names)} — see `infaas variants {model}`")
        return UnknownModelError(f"unknown variant '{query.variant}'; known models: {_listing(index.models)}")
    if query.kind == "model":
        model = canonical_id(query.model)
        if model in index.models:
            return NoVariantError(f"model {model} has no profiled variant yet; run "
                                  f"`infaas profile {model}` (or query a variant by name)")
        base, version = split_id(model)
        if version > 1 and base in index.models:
            known = sorted(split_id(m)[1] for m in index.models if split_id(m)[0] == base)
            return UnknownModelError(f"model {base} has no version {version}; its versions: "
                                     f"{', '.join(map(str, known))} — see `infaas versions {base}`")
        return UnknownModelError(f"unknown model '{query.model}'; known models: {_listing(index.models)} — "
                                 "register it with `infaas register`")
    if (query.task, query.dataset) in index.task_pairs:
        models = [m for m, (t, d) in index.models.items() if (t, d) == (query.task, query.dataset)]
        return NoVariantError(f"no variant of task {query.task}/{query.dataset} is profiled yet; run "
                              f"`infaas profile` for {_listing(models)}")
    return UnknownModelError(f"no model is registered for task/dataset '{query.task}/{query.dataset}'; known "
                             f"task/dataset pairs: {_listing(f'{t}/{d}' for t, d in index.task_pairs)}")


def _refused_inputs(query: Query, index: CatalogIndex, model: str | None = None) -> InvalidInputError:
    """No candidate model takes the query's tensors (`model`: the record a query by model runs): name the
    signatures that exist."""
    given = describe_signature(query.inputs)
    if query.kind == "model":
        model = model or query.model
        sig = index.signatures[model]
        return InvalidInputError(f"model {model} does not take these inputs ({sig.mismatch(query.inputs)}); "
                                 f"it takes {sig.describe()} — you sent {given}")
    by_signature: dict[str, list[str]] = {}
    for model, (task, dataset) in index.models.items():
        sig = index.signatures.get(model)
        if sig is not None and (task, dataset) == (query.task, query.dataset):
            by_signature.setdefault(sig.describe(), []).append(model)
    listing = "; ".join(f"{desc} ({_listing(models)})" for desc, models in sorted(by_signature.items()))
    return InvalidInputError(f"no model of task {query.task}/{query.dataset} takes inputs {given}; its models take: "
                             f"{listing} — send tensors of one of these signatures (an unnamed tensor fits a "
                             "single-input model)")


def _unavailable(keys: Iterable[str], live: Iterable[str], what: str) -> UnavailableError:
    return UnavailableError(backend_keys.unavailable_reason(keys, live, what))


def _batch_too_large(label: str, b: int, index: CatalogIndex, start: int, end: int) -> NoVariantError:
    largest = int(index.max_batch[start:end].max())
    return NoVariantError(f"no variant of {label} takes batches of {b}: the largest max batch is {largest} — "
                          f"send at most {largest} samples per query")


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _fmt_pct(acc: float) -> str:
    return f"{acc * 100:.1f}%"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _warm_only(bound: float, index: CatalogIndex, start: int, end: int, pred: np.ndarray, group: GroupView,
               admissible: np.ndarray) -> str | None:
    """When a cold variant meets the latency bound only once loaded, say so: its load is why the query fails, and
    pinning it (`infaas load`) is the fix. None when no such variant exists."""
    load_ms = index.load_time_ms[start:end]
    warm_ms = pred - load_ms
    cold = admissible & (load_ms > 0) & (warm_ms <= bound)
    if group.loaded is not None:
        cold &= ~group.loaded
    if not cold.any():
        return None
    i = int(np.where(cold, warm_ms, _INF).argmin())
    name = index.order[start + i].name
    model_ms = float(pred[i] - group.extra_ms[i])
    overhead_ms = float(group.extra_ms[i] - load_ms[i])
    overhead = f" + {_fmt_ms(overhead_ms)} ms serving overhead" if overhead_ms > 0.0005 else ""
    return (f"{name} meets it only warm: it takes {_fmt_ms(float(pred[i]))} ms = {_fmt_ms(model_ms)} ms inference + "
            f"{_fmt_ms(float(load_ms[i]))} ms load{overhead}; `infaas load {name}` keeps it warm")


def _no_variant(query: Query, label: str, index: CatalogIndex, start: int, end: int, pred: np.ndarray,
                cost: np.ndarray, group: GroupView, accept: np.ndarray | None = None) -> NoVariantError:
    b = query.batch_size
    usable = np.isfinite(pred)
    if group.runnable is not None:
        usable &= group.runnable
    if accept is not None:
        usable &= accept
    if not usable.any():
        return _batch_too_large(label, b, index, start, end)
    acc = index.accuracy[start:end]
    lat_bound, acc_bound, cost_bound = query.latency_ms, query.min_accuracy, query.max_cost_usd
    with np.errstate(invalid="ignore"):
        acc_ok = usable & (acc >= acc_bound) if acc_bound else usable
    lat_ok = usable & (pred <= lat_bound) if lat_bound is not None else usable
    cost_ok = cost <= cost_bound if cost_bound is not None else np.ones_like(usable)

    def name(i: int) -> str:
        return index.order[start + i].name

    def fastest(mask: np.ndarray) -> int:
        return int(np.where(mask, pred, _INF).argmin())

    def most_accurate(mask: np.ndarray) -> int | None:
        scores = np.where(mask & ~np.isnan(acc), acc, -_INF)
        i = int(scores.argmax())
        return i if scores[i] > -_INF else None

    conditions, flags = [], []
    if lat_bound is not None:
        conditions.append(f"latency ≤ {_fmt_ms(lat_bound)} ms")
        flags.append("--latency-ms")
    if acc_bound:
        conditions.append(f"accuracy ≥ {_fmt_pct(acc_bound)}")
        flags.append("--min-accuracy")
    if cost_bound is not None:
        conditions.append(f"cost ≤ ${cost_bound:.3g} per query")
    head = f"no variant of {label} meets {' with '.join(conditions) if len(conditions) == 2 else _join(conditions)}"
    if b > 1:
        head += f" at batch size {b}"

    clauses = []
    best_latency_ms: float | None = None
    best_accuracy: float | None = None
    if acc_bound:
        mask = acc_ok & cost_ok
        if mask.any():
            i = fastest(mask)
            best_latency_ms = float(pred[i])
            clauses.append(f"the fastest with enough accuracy takes {_fmt_ms(best_latency_ms)} ms ({name(i)})")
        else:
            i = most_accurate(usable & cost_ok)
            top = "none has a measured accuracy" if i is None else f"the most accurate reaches {_fmt_pct(acc[i])}"
            clauses.append(f"none reaches {_fmt_pct(acc_bound)} ({top})")
    if lat_bound is not None:
        mask = lat_ok & cost_ok
        if mask.any():
            i = most_accurate(mask)
            if i is not None:
                best_accuracy = float(acc[i])
                clauses.append(f"the most accurate within {_fmt_ms(lat_bound)} ms reaches {_fmt_pct(best_accuracy)}"
                               f" ({name(i)})")
            elif acc_bound:
                clauses.append(f"none of those within {_fmt_ms(lat_bound)} ms has a measured accuracy")
        else:
            i = fastest(usable & cost_ok) if (usable & cost_ok).any() else fastest(usable)
            clauses.append(f"none runs within {_fmt_ms(lat_bound)} ms (the fastest takes {_fmt_ms(float(pred[i]))} "
                           f"ms: {name(i)})")
    if cost_bound is not None:
        both = acc_ok & lat_ok
        if both.any():
            i = int(np.where(both, cost, _INF).argmin())
            clauses.append(f"the cheapest meeting {'the other bounds' if flags else 'them'} costs "
                           f"${float(cost[i]):.3g} per query ({name(i)})")
            flags = ["--max-cost"]
        else:
            flags.append("--max-cost")
    if best_latency_ms is None:
        best_latency_ms = float(pred[fastest(usable & cost_ok if (usable & cost_ok).any() else usable)])
    if best_accuracy is None:
        i = most_accurate(usable)
        best_accuracy = None if i is None else float(acc[i])
    if lat_bound is not None:
        warm = _warm_only(lat_bound, index, start, end, pred, group, acc_ok & cost_ok)
        if warm is not None:
            clauses.append(warm)
    message = head + (": " + "; ".join(clauses) if clauses else "")
    if lat_bound is not None:
        load_ov, held_ov = group.load_overhead_ms, group.held_overhead_ms
        if not isinstance(load_ov, np.ndarray) and (held_ov is None or (not isinstance(held_ov, np.ndarray)
                                                                         and held_ov == load_ov)):
            overhead_i = float(load_ov)  # one overhead for the whole slice
        else:  # paths differ: the fastest variant's
            overhead_i = group.overhead_at(fastest(usable & cost_ok if (usable & cost_ok).any() else usable))
        if overhead_i > 0:
            # Say why a model profiled below the bound is still too slow: the SLO is end to end.
            message += f" (times are end to end: model time + {_fmt_ms(overhead_i)} ms serving overhead + " \
                       "queueing or load)"
    if flags:
        message += " — relax " + " or ".join(flags)
    return NoVariantError(message, best_latency_ms=best_latency_ms, best_accuracy=best_accuracy)
