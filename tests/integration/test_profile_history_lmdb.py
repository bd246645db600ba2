"""Profile history in the real LMDB store: kept across reopen, in time order, bounded, replicated."""

from __future__ import annotations

from infaas_cli.catalog.records import ProfileRecord
from infaas_cli.catalog.store import LmdbStore


def _profile(at: float, source: str = "profile") -> ProfileRecord:
    return ProfileRecord(variant="m/v", model="m", hardware_id="cpu-a", hardware={"cores": 2}, load_time_ms=5.0,
                         peak_memory_bytes=100, batches={"1": {"p50_ms": at, "p95_ms": at, "p99_ms": at,
                                                               "mean_ms": at, "throughput_qps": 1.0, "runs": 5}},
                         measured_at=at, source=source)


def test_history_survives_reopen_and_replicates(tmp_path):
    store = LmdbStore(tmp_path / "a")
    for at in (1712000000.5, 1712000100.25, 1712000200.0):
        with store.transaction() as txn:
            txn.put_profile(_profile(at, "reprofile" if at > 1712000000.5 else "profile"), keep=2)
    store.close()
    store = LmdbStore(tmp_path / "a")
    assert [h.measured_at for h in store.profile_history("m/v", "cpu-a")] == [1712000100.25, 1712000200.0]
    [current] = store.profiles("m")
    assert current.measured_at == 1712000200.0 and current.source == "reprofile"
    target = LmdbStore(tmp_path / "b")
    target.apply_replicated(store.store_id(), [c.to_dict() for c in store.changes()])
    assert [h.measured_at for h in target.profile_history("m/v")] == [1712000100.25, 1712000200.0]
    assert target.profiles("m") == store.profiles("m")
    store.close()
    target.close()
