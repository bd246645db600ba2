"""Replicated records are checked down to their fields before anything touches the store."""

from __future__ import annotations

import logging

import pytest

from infaas_cli.catalog.records import MAX_CACHE_MIB, InvalidRecordError, ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.catalog.store import MAX_KEY_BYTES, InvalidChangeError, MemoryStore
from infaas_cli.errors import wire_error

SOURCE = "a" * 32


def _model(name: str = "m") -> dict:
    return dict(name=name, task="t", dataset="d", artifact_sha256="0" * 64, source_file="m.onnx", size_bytes=10,
                inputs=[{"name": "x", "type": "tensor(float)", "dtype": "float32", "shape": [None, 4]}],
                outputs=[], batch_dim="dynamic", max_batch=32, opset=17, producer="test", accuracy=0.9,
                accuracy_metric="top1", validation_sha256=None, validation_samples=0, registered_at=1.0)


def _profile(variant: str = "m/v") -> dict:
    return dict(variant=variant, model="m", hardware_id="cpu-a", hardware={}, load_time_ms=1.0,
                peak_memory_bytes=10, batches={"1": {"p50_ms": 1, "p95_ms": 2, "p99_ms": 3, "mean_ms": 1.5,
                                                     "throughput_qps": 500.0, "runs": 10}}, measured_at=1.0)


def _entry(seq: int, value: dict | None, table: str = "models", key: str | None = None, op: str = "put") -> dict:
    if key is None:
        key = value["name"] if table == "models" else f"{value['variant']}@{value['hardware_id']}"
    return {"seq": seq, "ts": 0.0, "op": op, "table": table, "key": key, "value": value}


def _refused(store: MemoryStore, entries: list, match: str, source: str = SOURCE) -> InvalidChangeError:
    with pytest.raises(InvalidChangeError, match=match) as info:
        store.apply_replicated(source, entries)
    assert store.last_seq() == 0 and store.models() == [] and store.replicated_seq(SOURCE) == 0  # nothing written
    return info.value


def test_good_batch_is_applied():
    store = MemoryStore()
    entries = [_entry(1, _model("m")), _entry(2, _profile(), table="profiles")]
    assert store.apply_replicated(SOURCE, entries) == (2, 2)
    assert store.model("m").input_specs()[0].shape == [None, 4]
    assert store.profiles("m")[0].batches["1"]["runs"] == 10


def test_junk_record_is_refused_with_its_path():
    store = MemoryStore()
    exc = _refused(store, [_entry(1, _model("ok")), _entry(2, {"junk": 1}, key="x")],
                   r"change-log entry 1 \(seq 2\): models\['x'\]: Object missing required field name")
    assert wire_error(exc)[0] == "bad_request"


@pytest.mark.parametrize("change, path", [
    ({"size_bytes": "10"}, r"models\['m'\]\.size_bytes: Expected int, got str"),
    ({"inputs": [{"name": "x", "type": "tensor(float)", "dtype": "float32", "shape": "4"}]},
     r"models\['m'\]\.inputs\[0\]\.shape: Expected array \| null, got str"),
    ({"outputs": [{"name": "y"}]}, r"models\['m'\]\.outputs\[0\]: Object missing required field type"),
    ({"accuracy": True}, r"models\['m'\]\.accuracy: Expected float \| null, got bool"),
])
def test_wrong_field_names_its_path(change, path):
    _refused(MemoryStore(), [_entry(1, {**_model(), **change})], path)


def test_profile_batches_are_checked_to_their_keys():
    bad_key = _profile()
    bad_key["batches"] = {"one": bad_key["batches"]["1"]}
    _refused(MemoryStore(), [_entry(1, bad_key, table="profiles")],
             r"profiles\['m/v@cpu-a'\]\.batches \(a key\): Expected str matching")
    bad_value = _profile()
    bad_value["batches"]["1"]["p95_ms"] = "fast"
    _refused(MemoryStore(), [_entry(1, bad_value, table="profiles")],
             r"\.batches\[\.\.\.\]\.p95_ms: Expected float, got str")


def test_key_must_be_the_records_own():
    _refused(MemoryStore(), [_entry(1, _model("m"), key="other")], r"models\['other'\] holds the record of 'm'")


@pytest.mark.parametrize("entry, match", [
    ({"seq": "1", "ts": 0.0, "op": "put", "table": "models", "key": "m", "value": None},
     r"^change-log entry 0\.seq: Expected int, got str$"),
    ({"seq": 1, "ts": 0.0, "op": "put", "table": "replication", "key": "x", "value": {}}, "not replicated"),
    ({"seq": 1, "ts": 0.0, "op": "put", "table": "nope", "key": "x", "value": {}}, "not replicated"),
    ({"seq": 1, "ts": 0.0, "op": "drop", "table": "models", "key": "m", "value": _model()}, "op must be"),
    ({"seq": 1, "ts": 0.0, "op": "put", "table": "models", "key": "m", "value": None}, "without a value"),
    ({"seq": 1, "ts": 0.0, "op": "delete", "table": "models", "key": "m", "value": {"x": 1}}, "carries a value"),
    ("not a map", r"entry 0: Expected object, got str"),
])
def test_malformed_entries_are_refused(entry, match):
    _refused(MemoryStore(), [entry], match)


def test_overlong_or_unprintable_keys_are_refused():
    long_name = "m" * 3000
    _refused(MemoryStore(), [_entry(1, _model(long_name))], f"the key must be 1 to {MAX_KEY_BYTES} bytes")
    _refused(MemoryStore(), [_entry(1, None, key=long_name, op="delete")], "the key must be")
    _refused(MemoryStore(), [_entry(1, _model("bad\nname"))], "printable")
    _refused(MemoryStore(), [_entry(1, _model(""))], "the key must be")


@pytest.mark.parametrize("source, match", [
    ("s" * 3000, "replication source must be"),
    ("s" * 200, "at most 128 characters"),
    ("", "replication source must be"),
    ("src\x00", "replication source must be"),
    (42, "replication source must be a string"),
])
def test_bad_sources_are_refused(source, match):
    _refused(MemoryStore(), [_entry(1, _model())], match, source=source)


def test_a_bad_entry_below_the_applied_position_still_refuses_the_batch():
    store = MemoryStore()
    store.apply_replicated(SOURCE, [_entry(1, _model("m"))])
    with pytest.raises(InvalidChangeError, match="entry 0"):
        store.apply_replicated(SOURCE, [_entry(1, {"junk": 1}, key="m"), _entry(2, _model("n"))])
    assert [m.name for m in store.models()] == ["m"] and store.replicated_seq(SOURCE) == 1


def test_from_dict_checks_every_field_and_ignores_unknown_ones():
    assert ModelRecord.from_dict({**_model(), "added_later": 1}).name == "m"
    with pytest.raises(InvalidRecordError, match=r"^variants\.threads: Expected int, got str"):
        VariantRecord.from_dict({"name": "m/v", "model": "m", "backend": "ort-cpu", "hardware": "cpu",
                                 "recipe": "fp32o1", "precision": "fp32", "threads": "1", "max_batch": 8,
                                 "artifact_sha256": "1" * 64, "accuracy": None, "accuracy_metric": "top1",
                                 "build_time_ms": 1.0, "created_at": 1.0})
    assert ProfileRecord.from_dict(_profile()).key == "m/v@cpu-a"


def test_an_unreadable_stored_record_is_skipped_with_a_log_line(caplog):
    store = MemoryStore()
    store.put(ModelRecord.from_dict(_model("good")))
    with store.transaction() as txn:  # as an older build might have written it
        txn.ops.append(("put", "models", "old", {"name": "old", "inputs": "x"}))
    with caplog.at_level(logging.ERROR, logger="infaas"):
        assert [m.name for m in store.models()] == ["good"]
        assert store.get(ModelRecord, "old") is None
    assert "models['old']" in caplog.text and "skipping" in caplog.text


def test_cache_mib_is_optional_so_older_records_still_load():
    old = ModelRecord.from_dict(_model())  # written before the field existed
    assert old.cache_mib is None
    assert ModelRecord.from_dict({**_model(), "cache_mib": 64}).cache_mib == 64
    assert ModelRecord.from_dict(old.to_dict()) == old
    store = MemoryStore()
    store.apply_replicated(SOURCE, [_entry(1, _model("old")), _entry(2, {**_model("new"), "cache_mib": 0})])
    assert (store.model("old").cache_mib, store.model("new").cache_mib) == (None, 0)


@pytest.mark.parametrize("value, message", [
    (-1, r"Expected int >= 0"),
    (MAX_CACHE_MIB + 1, rf"Expected int <= {MAX_CACHE_MIB}"),
    ("64", r"Expected int \| null, got str"),
    (True, r"Expected int \| null, got bool"),
])
def test_bad_cache_mib_is_refused_with_its_path(value, message):
    _refused(MemoryStore(), [_entry(1, {**_model(), "cache_mib": value})], rf"models\['m'\]\.cache_mib: {message}")
