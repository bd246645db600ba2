"""The master's prediction cache: keys over names, dtypes, shapes and bytes; per-model LRU caps; counters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from infaas_daemons.master.cache import ENTRY_OVERHEAD_BYTES, MIB, PredictionCache, effective_mib

X = np.arange(12, dtype=np.float32)


def _inputs(x: np.ndarray = X, name: str = "x") -> list:
    return [(name, x.dtype.name, list(x.shape), memoryview(x))]


def _value_bytes(n_entries: int) -> int:
    """A value size such that exactly n_entries of them fill 1 MiB."""
    return MIB // n_entries - ENTRY_OVERHEAD_BYTES


def test_hit_and_miss_are_counted():
    cache = PredictionCache()
    cache.configure("m", 1)
    key = cache.key("m", _inputs())
    assert cache.get(key) is None
    assert cache.put(key, {"outputs": [b"y"]}, 1)
    assert cache.get(key) == {"outputs": [b"y"]}
    assert cache.get(cache.key("m", _inputs(X + 1))) is None
    stats = cache.stats()["models"]["m"]
    assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 2, 1)
    assert stats["bytes"] == 1 + ENTRY_OVERHEAD_BYTES and stats["hit_ratio"] == pytest.approx(1 / 3)


def test_unconfigured_model_is_neither_stored_nor_counted():
    cache = PredictionCache()
    key = cache.key("m", _inputs())
    assert not cache.enabled("m")
    assert cache.put(key, "v", 1) is False
    assert cache.get(key) is None
    assert cache.stats() == {"models": {}, "totals": {"capacity_bytes": 0, "bytes": 0, "entries": 0, "hits": 0,
                                                      "misses": 0, "evictions": 0, "invalidations": 0,
                                                      "refused": 0, "hit_ratio": None}}


def test_eviction_by_bytes_in_lru_order_and_get_refreshes_recency():
    cache = PredictionCache()
    cache.configure("m", 1)
    size = _value_bytes(4)
    keys = [cache.key("m", _inputs(X + i)) for i in range(6)]
    for k in keys[:4]:
        assert cache.put(k, k.digest, size)
    assert cache.stats()["models"]["m"]["bytes"] == MIB  # exactly full: nothing evicted yet
    assert cache.get(keys[0]) == keys[0].digest  # 0 is now the most recently used; 1 is the oldest
    cache.put(keys[4], "e", size)
    assert cache.get(keys[1]) is None
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3], keys[4]))
    # recency now: 0, 2, 3, 4 (oldest first); an entry of two slots pushes out 0 and 2
    cache.put(keys[5], "big", 2 * size + ENTRY_OVERHEAD_BYTES)
    assert [cache.get(k) is not None for k in keys] == [False, False, False, True, True, True]
    stats = cache.stats()["models"]["m"]
    assert stats["evictions"] == 3 and stats["bytes"] <= MIB


def test_caps_are_per_model():
    cache = PredictionCache()
    cache.configure("small", 1)
    cache.configure("large", 2)
    size = _value_bytes(2)
    for i in range(4):
        cache.put(cache.key("small", _inputs(X + i)), i, size)
        cache.put(cache.key("large", _inputs(X + i)), i, size)
    stats = cache.stats()
    assert (stats["models"]["small"]["entries"], stats["models"]["large"]["entries"]) == (2, 4)
    assert stats["models"]["small"]["evictions"] == 2 and stats["models"]["large"]["evictions"] == 0
    assert stats["totals"]["entries"] == 6 and stats["totals"]["capacity_bytes"] == 3 * MIB


def test_entry_over_the_cap_is_refused():
    cache = PredictionCache()
    cache.configure("m", 1)
    small, big = cache.key("m", _inputs()), cache.key("m", _inputs(X + 1))
    cache.put(small, "s", 10)
    assert cache.put(big, "b", MIB - ENTRY_OVERHEAD_BYTES + 1) is False
    assert cache.get(big) is None and cache.get(small) == "s"  # nothing evicted for it
    assert cache.put(big, "b", MIB - ENTRY_OVERHEAD_BYTES)  # exactly the cap fits, evicting the rest
    stats = cache.stats()["models"]["m"]
    assert (stats["refused"], stats["evictions"], stats["entries"]) == (1, 1, 1)


def test_put_replaces_an_entry_and_a_refused_replacement_drops_the_old_one():
    cache = PredictionCache()
    cache.configure("m", 1)
    key = cache.key("m", _inputs())
    cache.put(key, "old", 100)
    cache.put(key, "new", 200)
    assert cache.get(key) == "new" and cache.stats()["models"]["m"]["bytes"] == 200 + ENTRY_OVERHEAD_BYTES
    assert cache.put(key, "huge", 2 * MIB) is False
    assert cache.get(key) is None and cache.stats()["models"]["m"]["bytes"] == 0


def test_invalidate_drops_the_models_entries_only():
    cache = PredictionCache()
    cache.configure("a", 1)
    cache.configure("b", 1)
    ka, kb = cache.key("a", _inputs()), cache.key("b", _inputs())
    cache.put(ka, "a", 10)
    cache.put(kb, "b", 10)
    assert cache.invalidate("a") == 1 and cache.invalidate("never-configured") == 0
    assert cache.get(ka) is None and cache.get(kb) == "b"
    assert cache.enabled("a")  # still cached from now on
    assert cache.put(ka, "a2", 10) and cache.get(ka) == "a2"
    stats = cache.stats()["models"]
    assert stats["a"]["invalidations"] == 1 and stats["a"]["entries"] == 1 and stats["b"]["invalidations"] == 0


def test_configure_zero_drops_the_cache_and_keeps_the_counters():
    cache = PredictionCache()
    cache.configure("m", 1)
    key = cache.key("m", _inputs())
    cache.put(key, "v", 10)
    assert cache.get(key) == "v"
    cache.configure("m", 0)
    assert not cache.enabled("m") and cache.get(key) is None and cache.put(key, "v", 10) is False
    stats = cache.stats()["models"]["m"]
    assert (stats["capacity_bytes"], stats["entries"], stats["bytes"], stats["hits"]) == (0, 0, 0, 1)
    cache.configure("m", 1)  # back on: empty, counters carried on (Prometheus counters never go down)
    assert cache.get(key) is None and cache.stats()["models"]["m"]["hits"] == 1


def test_shrinking_evicts_the_least_recently_used():
    cache = PredictionCache()
    cache.configure("m", 2)
    size = _value_bytes(2)
    keys = [cache.key("m", _inputs(X + i)) for i in range(4)]
    for k in keys:
        cache.put(k, "v", size)
    cache.get(keys[0])
    cache.configure("m", 2)  # unchanged: nothing happens
    assert cache.stats()["models"]["m"]["entries"] == 4
    cache.configure("m", 1)
    assert [cache.get(k) is not None for k in keys] == [True, False, False, True]


@pytest.mark.parametrize("mib", [-1, 1.5, True, "2"])
def test_configure_refuses_a_bad_size(mib):
    with pytest.raises(ValueError, match="MiB"):
        PredictionCache().configure("m", mib)


def test_keys_differ_for_the_same_bytes_with_another_shape_dtype_or_name():
    raw = np.arange(8, dtype=np.int32)
    base = PredictionCache.key("m", [("x", "int32", [8], raw)])
    assert base == PredictionCache.key("m", [("x", "int32", (8,), bytes(raw))])  # the same query, other buffer types
    others = [
        PredictionCache.key("m", [("x", "int32", [2, 4], raw)]),
        PredictionCache.key("m", [("x", "float32", [8], raw)]),
        PredictionCache.key("m", [("y", "int32", [8], raw)]),
        PredictionCache.key("m", [("x", "int32", [8], raw)], scope="m/ort-cpu-fp32o1-t1-b8"),
        PredictionCache.key("m", [("x", "int32", [7], raw[:7]), ("y", "int32", [1], raw[7:])]),
        PredictionCache.key("m", [("x", "int32", [8], raw + 1)]),
    ]
    assert len({k.digest for k in [base, *others]}) == 1 + len(others)
    assert PredictionCache.key("other", [("x", "int32", [8], raw)]).model == "other"
    assert len(base.digest) == 16


def test_key_is_in_name_order_and_reads_frames_in_place():
    a, b = np.zeros((2, 3), np.float32), np.ones(4, np.int64)
    frame_a, frame_b = zmq.Frame(a), zmq.Frame(b)
    one = PredictionCache.key("m", [("a", "float32", [2, 3], a), ("b", "int64", [4], b)])
    other = PredictionCache.key("m", [("b", "int64", [4], frame_b.buffer), ("a", "float32", [2, 3], frame_a.buffer)])
    assert one == other


def test_key_refuses_a_non_contiguous_buffer():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)[:, ::2]
    with pytest.raises(BufferError):
        PredictionCache.key("m", [("x", "float32", [4, 2], x)])


def test_stats_are_json():
    cache = PredictionCache()
    cache.configure("m", 3)
    key = cache.key("m", _inputs())
    cache.get(key)
    cache.put(key, object(), 10)  # values are opaque: never in the stats
    cache.get(key)
    stats = json.loads(json.dumps(cache.stats()))
    assert stats["models"]["m"]["capacity_mib"] == 3 and stats["totals"]["hit_ratio"] == 0.5


@pytest.mark.parametrize("model_mib, default_mib, expected", [(None, 0, 0), (None, 16, 16), (0, 16, 0), (8, 0, 8)])
def test_effective_mib_model_setting_wins(model_mib, default_mib, expected):
    assert effective_mib(model_mib, default_mib) == expected
