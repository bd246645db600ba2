"""The metadata store: typed records, one transaction per write, a strictly increasing change log."""

from __future__ import annotations

import logging

import lmdb
import msgpack
import pytest

from infaas_cli.errors import NotFoundError, StoreError, StoreFormatError
from infaas_cli.catalog.records import ArtifactRecord, ModelRecord, VariantRecord
from infaas_cli.catalog.store import (STORE_FORMAT_VERSION, InvalidChangeError, LmdbStore, MemoryStore,
                                      SequenceGapError)


def _model(name: str) -> ModelRecord:
    return ModelRecord(name=name, task="t", dataset="d", artifact_sha256="0" * 64, source_file="m.onnx",
                       size_bytes=10, inputs=[{"name": "x", "type": "tensor(float)", "dtype": "float32",
                                               "shape": [None, 4]}],
                       outputs=[], batch_dim="dynamic", max_batch=32, opset=17, producer="test",
                       accuracy=0.9, accuracy_metric="top1", validation_sha256=None, validation_samples=0,
                       registered_at=1.0)


def _variant(model: str, suffix: str) -> VariantRecord:
    return VariantRecord(name=f"{model}/{suffix}", model=model, backend="ort-cpu", hardware="cpu",
                         recipe="fp32o1", precision="fp32", threads=1, max_batch=8, artifact_sha256="1" * 64,
                         accuracy=0.9, accuracy_metric="top1", build_time_ms=1.0, created_at=1.0)


@pytest.fixture(params=["lmdb", "memory"])
def store(request, tmp_path):
    s = LmdbStore(tmp_path / "db") if request.param == "lmdb" else MemoryStore()
    yield s
    s.close()


def test_typed_round_trip(store):
    store.put(_model("m1"))
    got = store.model("m1")
    assert got == _model("m1")
    assert got.input_specs()[0].shape == [None, 4]


def test_transaction_writes_all_and_logs_each(store):
    with store.transaction() as txn:
        txn.put(_model("m1"))
        txn.put(_variant("m1", "a"))
        txn.put(_variant("m1", "b"))
        txn.put(ArtifactRecord("1" * 64, 5, "variant", "m1/a"))
    changes = store.changes()
    assert [c.seq for c in changes] == [1, 2, 3, 4]
    assert [(c.table, c.key) for c in changes][:2] == [("models", "m1"), ("variants", "m1/a")]
    assert changes[0].value["name"] == "m1"
    assert [v.name for v in store.variants("m1")] == ["m1/a", "m1/b"]


def test_failed_transaction_writes_nothing(store):
    store.put(_model("m1"))
    before = store.last_seq()
    with pytest.raises(RuntimeError):
        with store.transaction() as txn:
            txn.put(_model("m2"))
            raise RuntimeError("boom")
    assert store.get(ModelRecord, "m2") is None
    assert store.last_seq() == before


def test_unknown_table_rejects_whole_transaction(store):
    with pytest.raises(StoreError):
        with store.transaction() as txn:
            txn.put(_model("m1"))
            txn.delete("nope", "k")
    assert store.models() == []
    assert store.last_seq() == 0


def test_delete_is_logged(store):
    store.put(_model("m1"))
    with store.transaction() as txn:
        txn.delete(ModelRecord.table, "m1")
    assert store.get(ModelRecord, "m1") is None
    last = store.changes()[-1]
    assert (last.op, last.key, last.value) == ("delete", "m1", None)


def test_prefix_scan_does_not_leak_into_similar_names(store):
    with store.transaction() as txn:
        txn.put(_variant("digits", "a"))
        txn.put(_variant("digits-x", "a"))
    assert [v.name for v in store.variants("digits")] == ["digits/a"]


def test_unknown_model_names_the_fix(store):
    store.put(_model("known"))
    with pytest.raises(NotFoundError, match="unknown model 'nope' .*known.*infaas register"):
        store.model("nope")


def test_changes_after_and_limit(store):
    for i in range(5):
        store.put(_model(f"m{i}"))
    assert [c.seq for c in store.changes(after_seq=2)] == [3, 4, 5]
    assert [c.seq for c in store.changes(after_seq=1, limit=2)] == [2, 3]


def test_sequence_strictly_increases_across_reopen(tmp_path):
    path = tmp_path / "db"
    s = LmdbStore(path)
    for i in range(3):
        s.put(_model(f"m{i}"))
    with s.transaction() as txn:
        txn.delete(ModelRecord.table, "m0")
    s.close()
    s = LmdbStore(path)
    s.put(_model("m9"))
    seqs = [c.seq for c in s.changes()]
    s.close()
    assert seqs == [1, 2, 3, 4, 5]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))


def test_other_format_version_is_a_clear_error(tmp_path):
    path = tmp_path / "db"
    LmdbStore(path).close()
    env = lmdb.open(str(path), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format_version", msgpack.packb(STORE_FORMAT_VERSION + 1), db=meta)
    env.close()
    with pytest.raises(StoreFormatError, match=f"format version {STORE_FORMAT_VERSION + 1}.*reads version"):
        LmdbStore(path)


def test_records_survive_reopen(tmp_path):
    s = LmdbStore(tmp_path / "db")
    s.put(_model("m1"))
    s.close()
    s = LmdbStore(tmp_path / "db")
    assert s.model("m1").accuracy == 0.9
    s.close()


def test_replication_is_idempotent_and_ordered(tmp_path):
    source = LmdbStore(tmp_path / "src")
    for i in range(4):
        source.put(_model(f"m{i}"))
    with source.transaction() as txn:
        txn.delete(ModelRecord.table, "m0")
    entries = [c.to_dict() for c in source.changes()]
    master = LmdbStore(tmp_path / "master")
    assert master.apply_replicated(source.store_id(), entries[:2]) == (2, 2)
    assert master.apply_replicated(source.store_id(), entries[:2]) == (0, 2)  # a repeated push duplicates nothing
    with pytest.raises(SequenceGapError) as gap:
        master.apply_replicated(source.store_id(), entries[3:])
    assert gap.value.last_seq == 2
    assert master.apply_replicated(source.store_id(), entries) == (3, 5)
    assert sorted(m.name for m in master.models()) == ["m1", "m2", "m3"]
    master.close()
    master = LmdbStore(tmp_path / "master")  # resumes from the last applied sequence number
    assert master.replicated_seq(source.store_id()) == 5
    assert master.apply_replicated(source.store_id(), entries) == (0, 5)
    master.close()
    source.close()


def test_replication_refuses_foreign_tables(tmp_path):
    master = LmdbStore(tmp_path / "master")
    bad = {"seq": 1, "ts": 0.0, "op": "put", "table": "replication", "key": "x", "value": {}}
    with pytest.raises(InvalidChangeError, match="not replicated"):
        master.apply_replicated("src", [bad])
    assert master.last_seq() == 0
    master.close()


def test_store_ids_differ_and_persist(tmp_path):
    a, b = LmdbStore(tmp_path / "a"), LmdbStore(tmp_path / "b")
    ida = a.store_id()
    assert ida != b.store_id()
    a.close()
    b.close()
    assert LmdbStore(tmp_path / "a").store_id() == ida


def test_a_record_this_build_cannot_read_is_skipped_with_a_log_line(tmp_path, caplog):
    path = tmp_path / "db"
    store = LmdbStore(path)
    store.put(_model("a"))
    store.put(_variant("a", "v1"))
    store.close()
    env = lmdb.open(str(path), max_dbs=8)  # as an older build, or a bad disk, left it
    models, variants = env.open_db(b"models"), env.open_db(b"variants")
    with env.begin(write=True) as txn:
        txn.put(b"junk", msgpack.packb({"junk": 1}), db=models)
        txn.put(b"b", msgpack.packb({**_model("b").to_dict(), "inputs": [{"name": "x", "shape": "4"}]}), db=models)
        txn.put(b"a/garbled", b"\xc1\xc1 not msgpack", db=variants)
    env.close()
    store = LmdbStore(path)
    with caplog.at_level(logging.ERROR, logger="infaas"):
        assert [m.name for m in store.models()] == ["a"]
        assert [v.name for v in store.variants("a")] == ["a/v1"]
        assert store.get(ModelRecord, "junk") is None and store.get(VariantRecord, "a/garbled") is None
        assert store.model("a") == _model("a")
    assert "models['junk']: Object missing required field name" in caplog.text
    assert "models['b'].inputs[0].shape: Expected array | null, got str" in caplog.text
    assert "variants['a/garbled']: its bytes are not msgpack" in caplog.text
    store.close()


def test_garbage_from_a_peer_never_reaches_lmdb(tmp_path):
    path = tmp_path / "master"
    master = LmdbStore(path)
    junk = {"seq": 1, "ts": 0.0, "op": "put", "table": "models", "key": "x", "value": {"junk": 1}}
    with pytest.raises(InvalidChangeError, match=r"models\['x'\]: Object missing required field name"):
        master.apply_replicated("a" * 32, [junk])
    long = {**junk, "key": "m" * 3000, "value": _model("m" * 3000).to_dict()}
    with pytest.raises(InvalidChangeError, match="the key must be 1 to 400 bytes"):
        master.apply_replicated("a" * 32, [long])
    with pytest.raises(InvalidChangeError, match="replication source"):
        master.apply_replicated("s" * 3000, [{**junk, "value": _model("x").to_dict()}])
    master.close()
    master = LmdbStore(path)  # nothing of it survived the restart either
    assert (master.last_seq(), master.models(), master.replicated_seq("a" * 32)) == (0, [], 0)
    master.close()


def test_an_overlong_local_key_is_a_store_error_not_a_crash(tmp_path):
    store = LmdbStore(tmp_path / "db")
    with pytest.raises(StoreError, match="shorter name"):
        store.put(_model("m" * 3000))
    assert store.last_seq() == 0 and store.get(ModelRecord, "m" * 3000) is None
    store.close()
