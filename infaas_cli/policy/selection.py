"""The variant selection policy: a pure function of a query, a precomputed catalog index and a cluster snapshot.

`select(query, index, cluster) -> Decision` does no I/O and reads no clock; the master times it.
The index is built once per catalog change (`build_index`); it lays every profiled variant out in
one order sorted by (task, dataset, model, name), so that both a model's variants and a
(task, dataset)'s variants are a contiguous slice of flat numpy arrays (latency and cost per batch
bucket, accuracy, load time). A model-less query is then a dict lookup for the slice and a handful
of vectorised operations over it; only the few variants loaded on workers are looked at one by one,
and even that is cached per cluster snapshot.

Predictions are end to end, as the SLO is: the time from the query's arrival at the master to its reply
leaving it = the serving overhead of the path to the worker (learned online by the master, see
`policy/latency.py`, and handed in through `ClusterSnapshot(overhead_ms=...)`) + queueing behind the
worker's queue + the profiled model time at the batch size + the load time when the variant must load.
A query that carries its input signature only reaches models whose inputs accept it.
"""

from __future__ import annotations

import math
import tomllib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.errors import InfaasError, InvalidInputError
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, TensorSpec, VariantRecord
from infaas_cli.policy.latency import PRIOR_OVERHEAD_MS
from infaas_cli.policy.placement import VariantNeed, WorkerState, place, rank_key
from infaas_cli.policy.profiles import applicable_profiles

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


# InvalidInputError (code invalid_input) is the errors module's: a query's tensors no candidate model takes.
__all__ = ["InvalidInputError"]  # re-exported for callers of select; the rest is imported by name


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


@dataclass(frozen=True, slots=True)
class Query:
    """What a client asks for. Constructing one validates it (InvalidQueryError names the fix)."""

    kind: str
    variant: str | None = None
    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    batch_size: int = 1
    latency_ms: float | None = None  # None: no latency bound
    min_accuracy: float | None = None  # a fraction in [0, 1]
    objective: str = "cost"
    max_cost_usd: float | None = None  # per query

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

    @classmethod
    def from_body(cls, body: Any) -> Query:
        """The query of a protocol "query" body; keys other than the query's own (inputs, ...) are ignored."""
        if not isinstance(body, Mapping):
            raise InvalidQueryError(f"a query body is a map, not {type(body).__name__}")
        if body.get("kind") is None:
            raise InvalidQueryError("the query lacks 'kind' (one of variant, model, task)")
        batch_size = body.get("batch_size")
        objective = body.get("objective")
        return cls(kind=body["kind"], variant=body.get("variant"), model=body.get("model"), task=body.get("task"),
                   dataset=body.get("dataset"), batch_size=1 if batch_size is None else batch_size,
                   latency_ms=body.get("latency_ms"), min_accuracy=body.get("min_accuracy"),
                   objective="cost" if objective is None else objective, max_cost_usd=body.get("max_cost_usd"))


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

    Arrays are indexed by position in `order` (sorted by task, dataset, model, name); `model_spans` and
    `task_spans` map a model / a (task, dataset) to its (start, end) slice. `lat_ms[j]` and `cost_usd[j]`
    hold each variant's latency / cost per query at batch bucket `buckets[j]` (inf where the bucket is
    above the variant's max batch, which doubles as the max-batch filter).
    """

    def __init__(self, infos: Iterable[VariantInfo], prices: PriceTable,
                 models: Mapping[str, tuple[str, str]] | None = None) -> None:
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
        selectable.sort(key=lambda v: (v.task or "", v.dataset or "", v.model, v.name))
        self.order: list[VariantInfo] = selectable
        self.pos: dict[str, int] = {v.name: i for i, v in enumerate(selectable)}
        n = len(selectable)

        self.model_spans: dict[str, tuple[int, int]] = {}
        self.task_spans: dict[tuple[str, str], tuple[int, int]] = {}
        for i, v in enumerate(selectable):
            self._extend(self.model_spans, v.model, i, f"model {v.model}")
            if v.task and v.dataset:
                self._extend(self.task_spans, (v.task, v.dataset), i, f"task {v.task}/{v.dataset}")

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
        self.backend_names: list[str] = sorted({v.backend for v in selectable})
        code = {b: i for i, b in enumerate(self.backend_names)}
        self.backend_code = np.asarray([code[v.backend] for v in selectable], dtype=np.intp)
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


def build_index(models: Sequence[ModelRecord], variants: Sequence[VariantRecord],
                profiles: Sequence[ProfileRecord], prices: PriceTable,
                hardware_ids: Mapping[str, str] | None = None) -> CatalogIndex:
    """Join the records into a CatalogIndex; a variant's profile is `profiles.applicable_profile`'s.

    `hardware_ids` maps a hardware kind ("cpu", "gpu", ...) to the hardware id whose profiles to prefer
    for variants of that kind; without it, a variant's newest profile applies.
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
                    batches.append((int(key), float(stats["p95_ms"])))
                except (KeyError, TypeError, ValueError):
                    continue  # a malformed entry is skipped, not fatal to the whole catalog
        infos.append(VariantInfo(
            name=v.name, model=v.model, task=m.task if m else None, dataset=m.dataset if m else None,
            backend=v.backend, hardware=v.hardware, recipe=v.recipe, threads=v.threads, max_batch=v.max_batch,
            accuracy=v.accuracy, load_time_ms=float(p.load_time_ms) if p else 0.0,
            peak_memory_bytes=int(p.peak_memory_bytes) if p else 0, batch_latency_ms=tuple(sorted(batches))))
    return CatalogIndex(infos, prices, {m.name: (m.task, m.dataset) for m in models})


# -- cluster -----------------------------------------------------------------------------------------

# WorkerState (one worker as the master sees it) lives in placement.py, with the rule that places loads on it.


class _GroupView:
    """One index slice as this cluster sees it: extra latency (queue or load), loaded and runnable masks."""

    __slots__ = ("extra_ms", "loaded", "runnable", "any_runnable")

    def __init__(self, extra_ms: np.ndarray, loaded: np.ndarray | None, runnable: np.ndarray | None,
                 any_runnable: bool) -> None:
        self.extra_ms = extra_ms
        self.loaded = loaded  # None: nothing in the slice is loaded
        self.runnable = runnable  # None: every variant's backend has a live worker
        self.any_runnable = any_runnable


class _IndexView:
    """A cluster snapshot projected onto one index; group views are computed on first use."""

    __slots__ = ("index", "loaded_pos", "loaded_queue", "backend_ok", "groups")

    def __init__(self, index: CatalogIndex, snapshot: ClusterSnapshot) -> None:
        self.index = index
        # One pass over the loaded maps with C-level iteration (map/extend): the master builds a fresh
        # snapshot after every dispatch, so this cost is paid on most queries.
        pos_get = index.pos.get
        positions: list[int] = []
        queues: list[int] = []
        for w in snapshot.workers:
            if w.alive and w.loaded:
                positions.extend(map(pos_get, w.loaded, repeat(-1)))
                queues.extend(w.loaded.values())
        pos = np.asarray(positions, dtype=np.intp)
        queue = np.asarray(queues, dtype=np.float64)
        keep = pos >= 0  # unprofiled variants are not in the arrays
        pos, queue = pos[keep], queue[keep]
        order = np.lexsort((queue, pos))  # by position, shortest queue first
        pos, queue = pos[order], queue[order]
        first = np.ones(pos.size, dtype=bool)
        first[1:] = pos[1:] != pos[:-1]
        self.loaded_pos = pos[first]  # sorted, unique
        self.loaded_queue = queue[first]  # the shortest queue of each
        live = snapshot.live_backends()
        ok = np.asarray([b in live for b in index.backend_names], dtype=bool)
        self.backend_ok = None if ok.all() else ok
        self.groups: dict[tuple[int, int], _GroupView] = {}

    def group(self, start: int, end: int) -> _GroupView:
        view = self.groups.get((start, end))
        if view is None:
            view = self.groups[(start, end)] = self._group(start, end)
        return view

    def _group(self, start: int, end: int) -> _GroupView:
        index = self.index
        extra = index.load_time_ms[start:end].copy()  # not loaded anywhere: pay the load first
        lo, hi = self.loaded_pos.searchsorted((start, end))
        loaded = None
        if hi > lo:
            local = self.loaded_pos[lo:hi] - start
            queue = self.loaded_queue[lo:hi]
            # Loaded: wait behind the shortest queue, each queued query taking about a batch-1 run.
            extra[local] = queue * index.lat1_ms[start:end][local]
            loaded = np.zeros(end - start, dtype=bool)
            loaded[local] = True
        runnable = None
        any_runnable = True
        if self.backend_ok is not None:
            runnable = self.backend_ok[index.backend_code[start:end]]
            if loaded is not None:
                runnable |= loaded
            any_runnable = bool(runnable.any())
        return _GroupView(extra, loaded, runnable, any_runnable)


class ClusterSnapshot:
    """The workers as the master last saw them; derived lookups are computed lazily and cached."""

    __slots__ = ("workers", "_holders", "_live_backends", "_load_order", "_view")

    def __init__(self, workers: Sequence[WorkerState] = ()) -> None:
        self.workers: tuple[WorkerState, ...] = tuple(workers)
        self._holders: dict[str, list[tuple[int, str]]] | None = None
        self._live_backends: frozenset[str] | None = None
        self._load_order: dict[str, list[WorkerState]] = {}
        self._view: _IndexView | None = None

    def holders(self) -> dict[str, list[tuple[int, str]]]:
        """variant -> [(queue length, worker_id)] over alive workers holding it, shortest queue first."""
        if self._holders is None:
            holders: dict[str, list[tuple[int, str]]] = {}
            for w in self.workers:
                if w.alive:
                    for name, queued in w.loaded.items():
                        holders.setdefault(name, []).append((queued, w.worker_id))
            for entries in holders.values():
                entries.sort()
            self._holders = holders
        return self._holders

    def least_loaded_holder(self, variant: str) -> tuple[int, str] | None:
        """(queue length, worker_id) of the alive worker holding `variant` with the shortest queue, or None."""
        if self._holders is not None:
            entries = self._holders.get(variant)
            return entries[0] if entries else None
        # Scanning the few workers beats building the whole holders map for one answer.
        best = None
        for w in self.workers:
            if w.alive:
                queued = w.loaded.get(variant)
                if queued is not None and (best is None or (queued, w.worker_id) < best):
                    best = (queued, w.worker_id)
        return best

    def live_backends(self) -> frozenset[str]:
        if self._live_backends is None:
            self._live_backends = frozenset(b for w in self.workers if w.alive for b in w.backends)
        return self._live_backends

    def load_order(self, backend: str) -> list[WorkerState]:
        """Alive workers that run `backend`, best place for a load first: most free cores, then memory."""
        order = self._load_order.get(backend)
        if order is None:
            order = sorted((w for w in self.workers if w.alive and backend in w.backends), key=rank_key)
            self._load_order[backend] = order
        return order

    def _index_view(self, index: CatalogIndex) -> _IndexView:
        view = self._view
        if view is None or view.index is not index:
            view = self._view = _IndexView(index, self)
        return view


# -- decision ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decision:
    variant: str
    worker_id: str
    needs_load: bool
    predicted_latency_ms: float | None  # None: the variant was asked for by name and is not profiled
    cost_usd: float | None
    model: str
    accuracy: float | None


def select(query: Query, index: CatalogIndex, cluster: ClusterSnapshot) -> Decision:
    """Pick the variant and the worker for one query. Raises an InfaasError subclass when none fits."""
    if query.kind == "variant":
        return _select_variant(query, index, cluster)
    if query.kind == "model":
        span = index.model_spans.get(query.model)
        label = f"model {query.model}"
    else:
        span = index.task_spans.get((query.task, query.dataset))
        label = f"task {query.task}/{query.dataset}"
    if span is None:
        raise _unknown(query, index)
    start, end = span
    group = cluster._index_view(index).group(start, end)
    if not group.any_runnable:
        raise _unavailable(sorted({v.backend for v in index.order[start:end]}))
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
    if query.min_accuracy:
        ok &= index.accuracy[start:end] >= query.min_accuracy  # NaN (no accuracy) fails
    if query.max_cost_usd is not None:
        ok &= cost <= query.max_cost_usd
    if group.runnable is not None:
        meets = ok
        ok = ok & group.runnable
    if group.loaded is not None:
        # INFaaS looks at running variants first: a loaded variant that meets the SLO wins.
        ok_loaded = ok & group.loaded
        if ok_loaded.any():
            ok = ok_loaded
    primary, secondary = (cost, pred) if query.objective == "cost" else (pred, cost)
    keyed = np.where(ok, primary, _INF)
    k = int(keyed.argmin())
    if not ok[k]:
        if group.runnable is not None and meets.any():
            raise _unavailable(sorted({index.order[start + int(i)].backend for i in np.flatnonzero(meets)}))
        raise _no_variant(query, label, index, start, end, pred, cost, group)
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
    return Decision(info.name, worker_id, needs_load, float(pred[k]), float(cost[k]), info.model, info.accuracy)


def _break_tie(tied: np.ndarray, secondary: np.ndarray, name_rank: np.ndarray) -> int:
    values = secondary[tied]
    tied = tied[values == values.min()]
    if tied.size > 1:
        tied = tied[[int(name_rank[tied].argmin())]]
    return int(tied[0])


def _select_variant(query: Query, index: CatalogIndex, cluster: ClusterSnapshot) -> Decision:
    info = index.infos.get(query.variant)
    if info is None:
        raise _unknown(query, index)
    if query.batch_size > info.max_batch:
        raise NoVariantError(f"variant {info.name} takes batches of at most {info.max_batch}, not "
                             f"{query.batch_size}; send at most {info.max_batch} samples or query by model")
    lat = info.latency_ms(query.batch_size)
    holder = cluster.least_loaded_holder(info.name)
    if holder is not None:
        queued, worker_id = holder
        needs_load = False
        lat1 = info.latency_ms(1)
        pred = None if lat is None else lat + queued * (lat1 or 0.0)
    else:
        worker_id = _place(cluster, info)
        needs_load = True
        pred = None if lat is None else lat + info.load_time_ms
    cost = None
    if lat is not None:
        try:
            cost = index.prices.usd_per_second(info.hardware, info.threads) * lat / 1e3
        except InfaasError:
            cost = None
    return Decision(info.name, worker_id, needs_load, pred, cost, info.model, info.accuracy)


def _place(cluster: ClusterSnapshot, info: VariantInfo) -> str:
    """The worker to load `info` on (`placement.place`, purpose "query")."""
    where = place(cluster.load_order(info.backend),
                  VariantNeed(info.name, info.backend, info.threads, info.peak_memory_bytes), "query")
    if not where:
        raise _unavailable([info.backend])
    return where[0]


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
        if query.model in index.models:
            return NoVariantError(f"model {query.model} has no profiled variant yet; run "
                                  f"`infaas profile {query.model}` (or query a variant by name)")
        return UnknownModelError(f"unknown model '{query.model}'; known models: {_listing(index.models)} — "
                                 "register it with `infaas register`")
    if (query.task, query.dataset) in index.task_pairs:
        models = [m for m, (t, d) in index.models.items() if (t, d) == (query.task, query.dataset)]
        return NoVariantError(f"no variant of task {query.task}/{query.dataset} is profiled yet; run "
                              f"`infaas profile` for {_listing(models)}")
    return UnknownModelError(f"no model is registered for task/dataset '{query.task}/{query.dataset}'; known "
                             f"task/dataset pairs: {_listing(f'{t}/{d}' for t, d in index.task_pairs)}")


def _unavailable(backends: Sequence[str]) -> UnavailableError:
    which = f"backend {backends[0]}" if len(backends) == 1 else f"backends {', '.join(backends)}"
    return UnavailableError(f"no live worker runs {which}; start one with `infaas worker` or `infaas up`")


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


def _no_variant(query: Query, label: str, index: CatalogIndex, start: int, end: int, pred: np.ndarray,
                cost: np.ndarray, group: _GroupView) -> NoVariantError:
    b = query.batch_size
    usable = np.isfinite(pred)
    if group.runnable is not None:
        usable &= group.runnable
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
    message = head + (": " + "; ".join(clauses) if clauses else "")
    if flags:
        message += " — relax " + " or ".join(flags)
    return NoVariantError(message, best_latency_ms=best_latency_ms, best_accuracy=best_accuracy)
