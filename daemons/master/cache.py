"""The master's prediction cache (Clipper-style): per model, an LRU map from a query's inputs to its answer.

Opt-in per model: a model has a cache only once `configure(model, mib)` gave it a capacity (its catalog record's
`cache_mib`, else `master.prediction_cache_mib`; see `effective_mib`). A key is the model and a 16-byte BLAKE2b digest
of the inputs' names, dtypes, shapes and bytes in name order; the bytes are hashed through memoryviews, never copied.
A value is opaque here: whatever the master needs to answer a hit without a worker, with its size as the caller
counts it. Each model's entries are bounded by its own capacity; `get` and `put` are O(1) (an OrderedDict per model).

Not thread-safe: the master's loop thread owns it. Counters are kept per model name across `configure(model, 0)`, so
they only ever grow (Prometheus counters) even when a model's cache is switched off and on again.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MIB = 1 << 20
#: Counted against a model's capacity for every entry besides the caller's bytes: the key, the digest and the
#: OrderedDict node. It bounds the number of entries even when the values themselves are tiny.
ENTRY_OVERHEAD_BYTES = 256
#: Versions the digest: a change of the hashed layout gives different keys rather than colliding with old ones.
_PERSON = b"infaas.pcache.1"

#: One input as the master has it: (name, dtype name, shape, C-contiguous bytes: bytes, memoryview, a zmq.Frame's
#: `.buffer`, a numpy array).
Input = tuple[str, str, Sequence[int], Any]


class CacheKey(NamedTuple):
    model: str
    digest: bytes  # 16 bytes of BLAKE2b over the inputs (and the scope)


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # entries pushed out to make room (a put, or a smaller capacity)
    invalidations: int = 0  # invalidate() calls on a cached model
    refused: int = 0  # puts larger than the model's whole capacity, not stored


@dataclass
class _ModelCache:
    capacity_bytes: int
    entries: OrderedDict[bytes, tuple[Any, int]] = field(default_factory=OrderedDict)  # digest -> (value, size)
    bytes: int = 0  # sizes of the entries, ENTRY_OVERHEAD_BYTES included


def effective_mib(model_mib: int | None, default_mib: int) -> int:
    """A model's cache in MiB: its record's `cache_mib` when set (0: never cached), else the master's default."""
    return default_mib if model_mib is None else model_mib


def _header(name: str, dtype: str, shape: Sequence[int], nbytes: int) -> bytes:
    """An input's descriptor, every variable-length part prefixed by its length so that no two descriptors collide."""
    name_b, dtype_b = name.encode(), str(dtype).encode()
    dims = [int(d) for d in shape]
    return struct.pack(f"<I{len(name_b)}sI{len(dtype_b)}sI{len(dims)}qQ", len(name_b), name_b, len(dtype_b), dtype_b,
                       len(dims), *dims, nbytes)


class PredictionCache:
    """Per-model LRU caches of query answers, each bounded by its model's capacity in bytes."""

    def __init__(self) -> None:
        self._models: dict[str, _ModelCache] = {}
        self._counters: dict[str, _Counters] = {}

    # -- keys -------------------------------------------------------------------------------------------------

    @staticmethod
    def key(model: str, inputs: Iterable[Input], scope: str = "") -> CacheKey:
        """The key of a query to `model` with these inputs, whatever their order.

        `scope` is hashed too: anything besides the inputs that changes the answer (e.g. a query that names one
        variant) keeps its own entries. Raises BufferError for a non-contiguous buffer (frames always are).
        """
        h = hashlib.blake2b(digest_size=16, person=_PERSON)
        scope_b = scope.encode()
        h.update(struct.pack("<I", len(scope_b)))
        h.update(scope_b)
        for name, dtype, shape, buffer in sorted(inputs, key=lambda i: i[0]):
            view = memoryview(buffer)  # a view: the bytes are hashed in place
            h.update(_header(name, dtype, shape, view.nbytes))
            h.update(view)
        return CacheKey(model, h.digest())

    # -- configuration ----------------------------------------------------------------------------------------

    def configure(self, model: str, mib: int) -> None:
        """Give `model` a cache of `mib` MiB (shrinking evicts its least recently used entries); 0 removes it."""
        if isinstance(mib, bool) or not isinstance(mib, int) or mib < 0:
            raise ValueError(f"a prediction cache is a whole number of MiB >= 0, not {mib!r}")
        if mib == 0:
            self._models.pop(model, None)
            return
        self._counters.setdefault(model, _Counters())
        cache = self._models.get(model)
        if cache is None:
            self._models[model] = _ModelCache(mib * MIB)
            return
        cache.capacity_bytes = mib * MIB
        self._evict_to(model, cache, cache.capacity_bytes)

    def enabled(self, model: str) -> bool:
        """Whether `model` has a cache: when not, a query need not be hashed at all."""
        return model in self._models

    def invalidate(self, model: str) -> int:
        """Drop every entry of `model` (its variants changed, so its answers may too); the number dropped."""
        cache = self._models.get(model)
        if cache is None:
            return 0
        dropped = len(cache.entries)
        cache.entries.clear()
        cache.bytes = 0
        self._counters[model].invalidations += 1
        return dropped

    # -- the query path ---------------------------------------------------------------------------------------

    def get(self, key: CacheKey) -> Any | None:
        """The value stored under `key` (now the model's most recently used), or None; only cached models count."""
        cache = self._models.get(key.model)
        if cache is None:
            return None
        entry = cache.entries.get(key.digest)
        if entry is None:
            self._counters[key.model].misses += 1
            return None
        cache.entries.move_to_end(key.digest)
        self._counters[key.model].hits += 1
        return entry[0]

    def put(self, key: CacheKey, value: Any, nbytes: int) -> bool:
        """Store `value` (`nbytes` as the caller counts it) as the model's most recently used entry, evicting its
        least recently used ones to make room. False when the model has no cache or the entry alone exceeds it."""
        cache = self._models.get(key.model)
        if cache is None:
            return False
        if nbytes < 0:
            raise ValueError(f"an entry's size is >= 0 bytes, not {nbytes}")
        size = nbytes + ENTRY_OVERHEAD_BYTES
        old = cache.entries.pop(key.digest, None)  # a newer answer replaces it, stored or not
        if old is not None:
            cache.bytes -= old[1]
        if size > cache.capacity_bytes:
            self._counters[key.model].refused += 1
            return False
        self._evict_to(key.model, cache, cache.capacity_bytes - size)
        cache.entries[key.digest] = (value, size)
        cache.bytes += size
        return True

    def _evict_to(self, model: str, cache: _ModelCache, limit_bytes: int) -> None:
        counters = self._counters[model]
        while cache.bytes > limit_bytes and cache.entries:
            _, (_, size) = cache.entries.popitem(last=False)
            cache.bytes -= size
            counters.evictions += 1

    # -- reporting --------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """JSON-able numbers for `status` and the metrics: per model (every model ever configured) and in total."""
        models: dict[str, dict[str, Any]] = {}
        for model, counters in sorted(self._counters.items()):
            cache = self._models.get(model)
            capacity = cache.capacity_bytes if cache is not None else 0
            lookups = counters.hits + counters.misses
            models[model] = {
                "capacity_mib": capacity // MIB, "capacity_bytes": capacity,
                "bytes": cache.bytes if cache is not None else 0,
                "entries": len(cache.entries) if cache is not None else 0,
                "hits": counters.hits, "misses": counters.misses, "evictions": counters.evictions,
                "invalidations": counters.invalidations, "refused": counters.refused,
                "hit_ratio": counters.hits / lookups if lookups else None,
            }
        totals = {k: sum(m[k] for m in models.values())
                  for k in ("capacity_bytes", "bytes", "entries", "hits", "misses", "evictions", "invalidations",
                            "refused")}
        lookups = totals["hits"] + totals["misses"]
        totals["hit_ratio"] = totals["hits"] / lookups if lookups else None
        return {"models": models, "totals": totals}
