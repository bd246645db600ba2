"""The wire protocol: a round trip per message type, tensors, errors, and the doc in step."""

from __future__ import annotations

import re

import msgpack
import numpy as np
import pytest

from support import REPO
from infaas_cli import protocol as p

SAMPLES = {
    "query": {"kind": "task", "task": "digit-classification", "dataset": "digits", "latency_ms": 20.0,
              "min_accuracy": 0.97, "objective": "cost", "inputs": {"x": None}},
    "reply": {"outputs": [], "variant": "m/v", "worker": "w1", "decision_us": 12.5,
              "timing": {"queue_ms": 0.1, "batch_size": 4, "inference_ms": 1.0}},
    "status": {},
    "status_reply": {"master": {"endpoint": "tcp://127.0.0.1:1"}, "workers": []},
    "register": {"worker_id": "w1", "hardware": {"cores": 2}, "backends": ["ort-cpu"]},
    "registered": {"heartbeat_interval_s": 1.0},
    "heartbeat": {"worker_id": "w1", "metrics": {"cpu_percent": 3.0, "queues": {"m/v": 2}}},
    "load": {"variant": "m/v"},
    "unload": {"variant": "m/v"},
    "loaded": {"variant": "m/v", "load_time_ms": 3.2},
    "infer": {"variant": "m/v", "inputs": {}, "deadline_ms": 20.0},
    "result": {"outputs": [], "timing": {"inference_ms": 1.0}},
    "fetch": {"sha256": "a" * 64, "offset": 0},
    "changes": {"source": "store-1", "entries": [{"seq": 1, "op": "put", "table": "models", "key": "m",
                                                 "value": {"name": "m"}, "ts": 1.0}]},
    "artifact_chunk": {"sha256": "a" * 64, "offset": 0, "data": b"\x00\x01", "total_bytes": 2},
    "ack": {"last_seq": 3},
    "error": {"code": "no_variant", "reason": "nothing meets 1 ms"},
}


def test_every_message_type_has_a_sample():
    assert set(SAMPLES) == set(p.MESSAGE_TYPES)


@pytest.mark.parametrize("type_", sorted(p.MESSAGE_TYPES))
def test_round_trip(type_):
    body = dict(SAMPLES[type_])
    if "inputs" in body:
        body["inputs"] = p.pack_tensors({"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    if "outputs" in body:
        body["outputs"] = [p.pack_output(np.array([1, 2], np.int64)), p.pack_output([{0: 0.25, 1: 0.75}])]
    msg = p.Message(type_, body)
    back = p.decode(p.encode(msg))
    assert (back.type, back.id, back.v) == (type_, msg.id, p.PROTOCOL_VERSION)
    assert back.body == body
    if "inputs" in body:
        np.testing.assert_array_equal(p.unpack_tensors(back.body["inputs"])["x"],
                                      np.arange(6, dtype=np.float32).reshape(2, 3))
    if "outputs" in body:
        outs = [p.unpack_output(o) for o in back.body["outputs"]]
        np.testing.assert_array_equal(outs[0], [1, 2])
        assert outs[1] == [{"0": 0.25, "1": 0.75}]


@pytest.mark.parametrize("frame,code", [
    (b"\xc1\xc1garbage", "malformed"),
    (b"", "malformed"),
    (msgpack.packb([1, 2, 3]), "malformed"),
    (msgpack.packb({"v": 99, "type": "status", "id": "x", "body": {}}), "unsupported_version"),
    (msgpack.packb({"v": 1, "type": "nope", "id": "x", "body": {}}), "unknown_type"),
    (msgpack.packb({"v": 1, "type": "load", "id": "x", "body": {}}), "bad_request"),
    (msgpack.packb({"v": 1, "type": "load", "id": 5, "body": {}}), "malformed"),
])
def test_bad_frames_raise_protocol_errors(frame, code):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frame)
    assert info.value.code == code and info.value.reason


def test_peek_id_recovers_request_id_for_error_replies():
    assert p.peek_id(msgpack.packb({"v": 7, "id": "abc"})) == "abc"
    assert p.peek_id(b"\xff") == ""


def test_tensor_checks():
    t = p.pack_tensor(np.zeros((2, 3), np.int64))
    with pytest.raises(p.ProtocolError, match="needs"):
        p.unpack_tensor({**t, "data": t["data"][:-1]})
    with pytest.raises(p.ProtocolError, match="dtype"):
        p.unpack_tensor({**t, "dtype": "object"})
    with pytest.raises(p.ProtocolError, match="shape"):
        p.unpack_tensor({**t, "shape": [-1, 3]})
    with pytest.raises(p.ProtocolError):
        p.pack_tensor(np.array(["a"], dtype=object))


def test_error_message_echoes_id():
    msg = p.decode(p.encode(p.error("no_variant", "relax the SLO", "req-1", best_latency_ms=3.0)))
    assert (msg.type, msg.id, msg.body["code"], msg.body["best_latency_ms"]) == ("error", "req-1", "no_variant", 3.0)


def test_doc_matches_protocol():
    doc = (REPO / "docs" / "protocol.md").read_text()
    version = re.search(r"Protocol version: \*\*(\d+)\*\*", doc)
    assert version and int(version.group(1)) == p.PROTOCOL_VERSION
    documented_types = set(re.findall(r"^\| `(\w+)` \| [^|]*→", doc, re.M))
    assert documented_types == set(p.MESSAGE_TYPES)
    for type_, fields in p.MESSAGE_TYPES.items():
        row = re.search(rf"^\| `{type_}` \|[^|]*\|([^\n]*)$", doc, re.M)
        assert row, type_
        for f in fields:
            assert f"`{f}`" in row.group(1), (type_, f)
    documented_codes = set(re.findall(r"^\| `(\w+)` \| (?![^|]*→)", doc, re.M)) - set(p.MESSAGE_TYPES)
    assert documented_codes == set(p.ERROR_CODES)
