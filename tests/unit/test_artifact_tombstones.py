"""The master's tombstones of freed artifacts (daemons/master/lifecycle.py): bounded oldest-first, kept in the store
(a new instance on the same store sees them), forgotten when the catalog needs a digest again. The store is the
in-memory one with the LMDB store's semantics."""

from __future__ import annotations

from infaas_cli.catalog.records import RECORD_TYPES, REPLICATED_TABLES, TombstoneRecord
from infaas_cli.catalog.store import MemoryStore
from infaas_daemons.master.lifecycle import ArtifactTombstones


def sha(i: int) -> str:
    return f"{i:064x}"


def stored(store: MemoryStore) -> list[str]:
    return [r.sha256 for r in store.scan(TombstoneRecord)]


def test_a_tombstone_is_the_master_s_own_record_never_replicated():
    assert RECORD_TYPES[TombstoneRecord.table] is TombstoneRecord
    assert TombstoneRecord.table not in REPLICATED_TABLES
    assert TombstoneRecord.from_dict({"sha256": sha(1)}).freed_at == 0.0  # the time is optional


def test_the_oldest_are_forgotten_past_the_limit_and_a_restart_keeps_the_rest():
    store = MemoryStore()
    tombs = ArtifactTombstones(store, limit=3)
    tombs.add([sha(1), sha(2)], now=10.0)
    tombs.add([sha(3), sha(4)], now=20.0)
    assert list(tombs.freed) == [sha(2), sha(3), sha(4)]
    assert stored(store) == [sha(2), sha(3), sha(4)]
    tombs.add([sha(2)], now=30.0)  # freed again (re-pushed, removed again): the newest now
    assert list(tombs.freed) == [sha(3), sha(4), sha(2)]

    again = ArtifactTombstones(store, limit=3)  # a restarted master on the same store
    assert again.freed == tombs.freed and list(again.freed) == [sha(3), sha(4), sha(2)]
    smaller = ArtifactTombstones(store, limit=1)  # restarted with a lower limit: the oldest go from the store too
    assert list(smaller.freed) == [sha(2)] and stored(store) == [sha(2)]


def test_a_digest_needed_again_is_forgotten_and_never_pending():
    store = MemoryStore()
    tombs = ArtifactTombstones(store, limit=10)
    tombs.add([sha(1), sha(2), sha(3)], now=1.0)
    assert tombs.pending({sha(2)}) == [sha(1), sha(3)]  # what the catalog needs now is never named
    assert tombs.revive({sha(2), sha(9)}) == [sha(2)]  # sha(9) never was a tombstone
    assert list(tombs.freed) == [sha(1), sha(3)] and stored(store) == [sha(1), sha(3)]
    assert tombs.revive(set()) == []


def test_limit_zero_remembers_nothing_and_writes_nothing():
    store = MemoryStore()
    tombs = ArtifactTombstones(store, limit=0)
    tombs.add([sha(1)], now=1.0)
    assert not tombs.freed and stored(store) == [] and store.last_seq() == 0
