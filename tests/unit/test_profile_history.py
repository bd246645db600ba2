"""Profiles keep their history: the newest applies, older ones stay in `profile_history`, and both replicate."""

from __future__ import annotations

import pytest

from infaas_cli.catalog.records import (ProfileHistoryRecord, ProfileRecord, profile_history_key,
                                        REPLICATED_TABLES)
from infaas_cli.catalog.store import InvalidChangeError, MemoryStore
from infaas_cli.policy.profiles import applicable_profile

SOURCE = "b" * 32


def profile(at: float, p50_ms: float = 1.0, hw: str = "cpu-a", source: str = "profile",
            variant: str = "m/v") -> ProfileRecord:
    stats = {"p50_ms": p50_ms, "p95_ms": p50_ms * 1.2, "p99_ms": p50_ms * 1.5, "mean_ms": p50_ms,
             "throughput_qps": 1e3 / p50_ms, "runs": 20}
    return ProfileRecord(variant=variant, model="m", hardware_id=hw, hardware={}, load_time_ms=5.0,
                         peak_memory_bytes=100, batches={"1": stats}, measured_at=at, source=source,
                         worker_id="w1" if source == "reprofile" else None)


def test_history_keys_sort_in_time_order():
    keys = [profile_history_key("m/v", "cpu-a", t) for t in (9.5, 1712345678.25, 100.0, 0.0)]
    assert sorted(keys) == [keys[3], keys[0], keys[2], keys[1]]
    assert keys[1] == "m/v@cpu-a@1712345678.250000"


def test_a_reprofile_replaces_the_current_profile_and_keeps_the_old_one():
    store = MemoryStore()
    with store.transaction() as txn:
        txn.put_profile(profile(100.0, 1.0))
    with store.transaction() as txn:
        txn.put_profile(profile(200.0, 3.0, source="reprofile"))
    [current] = store.profiles("m")
    assert current.source == "reprofile" and current.worker_id == "w1" and current.batches["1"]["p50_ms"] == 3.0
    assert applicable_profile(store.profiles("m"), "cpu-a") == current  # newest wins, as before
    history = store.profile_history("m/v")
    assert [(h.measured_at, h.source) for h in history] == [(100.0, "profile"), (200.0, "reprofile")]
    assert all(isinstance(h, ProfileHistoryRecord) for h in history)
    # Every write is in the change log, so it replicates like any other.
    tables = [c.table for c in store.changes()]
    assert tables == ["profiles", "profile_history", "profiles", "profile_history"]


def test_history_per_hardware_and_bounded():
    store = MemoryStore()
    for i in range(7):
        with store.transaction() as txn:
            txn.put_profile(profile(float(i)), keep=3)
            txn.put_profile(profile(float(i), hw="cpu-b"), keep=3)
    assert [h.measured_at for h in store.profile_history("m/v", "cpu-a")] == [4.0, 5.0, 6.0]
    assert len(store.profile_history("m/v")) == 6
    assert store.profile_history("m/other") == []
    # Several puts in one transaction are bounded too.
    store = MemoryStore()
    with store.transaction() as txn:
        for i in range(5):
            txn.put_profile(profile(float(i)), keep=2)
    assert [h.measured_at for h in store.profile_history("m/v")] == [3.0, 4.0]


def test_old_profiles_without_the_new_fields_still_read():
    store = MemoryStore()
    raw = profile(1.0).to_dict()
    del raw["source"], raw["worker_id"]
    store._commit([("put", "profiles", "m/v@cpu-a", raw)])
    [p] = store.profiles("m")
    assert p.source == "profile" and p.worker_id is None


def _entry(seq: int, record, key: str | None = None) -> dict:
    return {"seq": seq, "ts": 0.0, "op": "put", "table": record.table, "key": key or record.key,
            "value": record.to_dict()}


def test_history_replicates_and_is_validated():
    assert "profile_history" in REPLICATED_TABLES
    source = MemoryStore()
    with source.transaction() as txn:
        txn.put_profile(profile(1.0))
        txn.put_profile(profile(2.0, 2.0, source="reprofile"))
    target = MemoryStore()
    entries = [c.to_dict() for c in source.changes()]
    assert target.apply_replicated(SOURCE, entries) == (4, 4)
    assert [h.measured_at for h in target.profile_history("m/v")] == [1.0, 2.0]
    assert target.profiles("m")[0].measured_at == 2.0

    bad = ProfileHistoryRecord.of(profile(3.0))
    with pytest.raises(InvalidChangeError, match="a record is stored under its own key"):
        MemoryStore().apply_replicated(SOURCE, [_entry(1, bad, key="m/v@cpu-a")])
    junk = _entry(1, bad)
    junk["value"]["source"] = "guess"
    with pytest.raises(InvalidChangeError, match=r"profile_history\[.*\]\.source: Invalid enum value 'guess'"):
        MemoryStore().apply_replicated(SOURCE, [junk])
