"""The wire protocol (v2): a round trip per message type, validation on decode, tensors, errors, the doc in step."""

from __future__ import annotations

import copy
import random
import re

import msgpack
import msgspec
import numpy as np
import pytest

from support import REPO
from infaas_cli import protocol as p
from infaas_cli.errors import ERROR_CODES
from infaas_cli.protocol import messages as m
from infaas_cli.protocol.envelope import MAX_ID

DOC = REPO / "docs" / "protocol.md"
SHA = "3f" * 32
SPEC = {"name": "digits-cnn/ort-cpu-fp32-t1", "backend": "ort-cpu", "recipe": "fp32", "threads": 1, "max_batch": 64,
        "batch_dim": "dynamic", "artifact_sha256": SHA,
        "inputs": [{"name": "x", "type": "tensor(float)", "dtype": "float32", "shape": ["N", 3]},
                   {"name": "mask", "type": "tensor(bool)", "dtype": "bool", "shape": [None, -1]}],
        "latency_ms": {1: 0.42, 8: 1.25}, "peak_memory_bytes": 12_582_912}
X = np.arange(6, dtype=np.float32).reshape(2, 3)

#: A realistic body per message type; "inputs"/"outputs" are filled with packed arrays by `sample`.
SAMPLES = {
    "query": {"kind": "task", "task": "digit-classification", "dataset": "digits", "latency_ms": 20.0,
              "min_accuracy": 0.97, "objective": "cost", "max_cost_usd": 0.001, "inputs": None},
    "reply": {"outputs": None, "variant": "digits-cnn/ort-cpu-fp32-t1", "worker": "w1", "decision_us": 12.5,
              "timing": {"queue_ms": 0.1, "batch_size": 4, "inference_ms": 1.0, "total_ms": 1.6},
              "needs_load": True, "attempts": 2, "output_names": ["label", "probabilities"]},
    "status": {},
    "status_reply": {"master": {"endpoint": "tcp://127.0.0.1:7010", "pending": 0,
                                "decision_us": {"count": 0, "p50": None}},
                     "workers": [{"worker_id": "w1", "alive": True, "cores": 2}]},
    "register": {"worker_id": "w1", "backends": ["ort-cpu"], "pid": 4242,
                 "hardware": {"cores": 2, "cpu_model": "AMD EPYC 7R13", "physical_cores": 1,
                              "memory_bytes": 8 << 30, "gpus": [], "machine": "x86_64", "hostname": "node-1"}},
    "registered": {"heartbeat_interval_s": 1.0},
    "heartbeat": {"worker_id": "w1",
                  "metrics": {"cores": 2, "free_cores": 1, "cpu_percent": 37.5, "process_cpu_percent": 80.0,
                              "memory_total_bytes": 8 << 30, "free_memory_bytes": 5 << 30,
                              "variants": {"digits-cnn/ort-cpu-fp32-t1": {
                                  "state": "loaded", "queue": 3, "qps": 120.5, "samples_per_s": 480.0,
                                  "latency_ms": 2.5, "threads": 1, "replicas": 1, "idle_s": 0.25}}}},
    "load": {"variant": "digits-cnn/ort-cpu-fp32-t1", "spec": SPEC, "replicas": 2, "pinned": True},
    "unload": {"variant": "digits-cnn/ort-cpu-fp32-t1", "worker": "w1"},
    "drop_artifacts": {"artifacts": [SHA, "a0" * 32]},
    "loaded": {"variant": "digits-cnn/ort-cpu-fp32-t1", "load_time_ms": 35.2, "worker_id": "w1"},
    "infer": {"variant": "digits-cnn/ort-cpu-fp32-t1", "inputs": None, "spec": SPEC, "deadline_ms": 20.0},
    "result": {"outputs": None, "timing": {"queue_ms": 0.1, "inference_ms": 1.0, "batch_size": 4}},
    "fetch": {"sha256": SHA, "offset": 1 << 20, "worker_id": "w1"},
    "reprofile": {"variant": "digits-cnn/ort-cpu-fp32-t1", "spec": SPEC, "batch_sizes": [1, 8], "budget_ms": 50.0},
    "reprofiled": {"variant": "digits-cnn/ort-cpu-fp32-t1", "hardware_id": "cpu-1a2b3c4d5e", "worker_id": "w1",
                   "batches": {1: {"p50_ms": 0.4, "p95_ms": 0.5, "p99_ms": 0.7, "mean_ms": 0.45,
                                   "throughput_qps": 2222.2, "runs": 120}},
                   "load_time_ms": 31.5, "peak_memory_bytes": 1 << 20,
                   "hardware": {"cores": 2, "cpu_model": "AMD EPYC 7R13", "machine": "x86_64"}},
    "changes": {"source": "store-1", "entries": [
        {"seq": 1, "op": "put", "table": "models", "key": "digits-cnn", "value": {"name": "digits-cnn"}, "ts": 1.0},
        {"seq": 2, "op": "delete", "table": "variants", "key": "digits-cnn/old", "ts": 2.0}]},
    "artifact_chunk": {"sha256": SHA, "offset": 0, "data": b"\x00\x01", "total_bytes": 2},
    "ack": {"last_seq": 3, "applied": 2, "missing_artifacts": [SHA]},
    "error": {"code": "no_variant", "reason": "nothing meets 1 ms", "best_latency_ms": 3.1, "best_accuracy": 0.99},
    "catalog": {"model": "digits-cnn"},
    "catalog_reply": {"workers_alive": 1, "models": [{
        "name": "digits-cnn", "task": "digit-classification", "dataset": "digits", "inputs": SPEC["inputs"],
        "outputs": [{"name": "label", "type": "tensor(int64)", "dtype": "int64", "shape": ["N"]}],
        "batch_dim": "dynamic", "max_batch": 64, "accuracy": 0.98,
        "variants": [{"name": "digits-cnn/ort-cpu-fp32-t1", "recipe": "fp32", "backend": "ort-cpu",
                      "hardware": "cpu", "threads": 1, "max_batch": 64, "accuracy": 0.98, "latency_ms": 0.42,
                      "loaded_on": ["w1"], "loading_on": ["w2"], "pinned_on": ["w1"]}]}]},
    "preload": {"variant": "digits-cnn/ort-cpu-fp32-t1", "pin": True, "replicas": 2, "worker": "w1"},
    "remove": {"models": ["digits-cnn", "digits-cnn@v2"], "drain": True, "timeout_s": 10.0},
    "remove_reply": {"models": ["digits-cnn"], "variants": ["digits-cnn/ort-cpu-fp32-t1"], "unloaded_on": ["w1"],
                     "drained_queries": 3, "waited_ms": 12.5},
}

#: Structures nested in bodies, each with its own table in the doc.
NESTED = {"Tensor": m.Tensor, "Output": m.Output, "Hardware": m.Hardware, "WorkerMetrics": m.WorkerMetrics,
          "VariantMetrics": m.VariantMetrics, "VariantSpec": m.VariantSpec, "TensorSpec": m.TensorSpec,
          "ChangeEntry": m.ChangeEntry, "BatchLatency": m.BatchLatency, "CatalogModel": m.CatalogModel,
          "CatalogVariant": m.CatalogVariant}


def sample(type_: str) -> tuple[dict, list]:
    """A sample body of the type, and its tensor data frames."""
    body = copy.deepcopy(SAMPLES[type_])
    frames: list = []
    if "inputs" in body:
        body["inputs"], _ = p.pack_tensors({"x": X, "mask": np.array([[True, False, True]] * 2)}, frames)
    if "outputs" in body:
        body["outputs"] = [p.pack_output(np.array([1, 2], np.int64), frames),
                           p.pack_output([{0: 0.25, 1: 0.75}], frames)]
    return body, frames


def frame(type_: str = "status", body=None, **envelope) -> bytes:
    env = {"v": p.PROTOCOL_VERSION, "type": type_, "id": "req-1", "body": {} if body is None else body}
    env.update(envelope)
    return msgpack.packb(env)


def refused(data: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(data)
    assert info.value.reason
    return info.value


def wire(type_: str) -> dict:
    """The sample as plain msgpack-ready builtins (what a foreign peer would send)."""
    return msgspec.to_builtins(p.body_of(type_, sample(type_)[0]), builtin_types=(bytes,))


# -- every type, both ways ----------------------------------------------------------------------------

def test_every_message_type_has_a_sample_and_a_direction():
    assert set(SAMPLES) == set(p.BODIES) == set(p.MESSAGE_TYPES) == set(m.DIRECTIONS)


def test_every_structure_is_a_body_or_documented_nested():
    structs = {cls for cls in vars(m).values()
               if isinstance(cls, type) and issubclass(cls, m.Body) and cls is not m.Body}
    assert structs == set(p.BODIES.values()) | set(NESTED.values())


@pytest.mark.parametrize("type_", sorted(p.BODIES))
def test_round_trip(type_):
    body, frames = sample(type_)
    msg = p.Message(type_, body, frames=frames)
    wire_frames = [bytes(f) for f in p.encode(msg)]  # as a peer receives them
    back = p.decode(wire_frames)
    assert (back.type, back.id, back.v) == (type_, msg.id, p.PROTOCOL_VERSION)
    assert isinstance(back.body, p.BODIES[type_])
    assert back.body == p.body_of(type_, body)
    assert msgspec.to_builtins(back.body, builtin_types=(bytes,)) == wire(type_)
    # a typed body encodes to the same envelope as its dict; the data frames follow it unchanged
    assert p.encode(p.Message(type_, back.body, id=msg.id))[0] == wire_frames[0]
    assert len(wire_frames) == 1 + len(frames)
    if "inputs" in body:
        arrays = p.unpack_tensors(back.body.inputs, back.frames)
        np.testing.assert_array_equal(arrays["x"], X)
        assert arrays["mask"].dtype == np.bool_ and arrays["mask"].tolist() == [[True, False, True]] * 2
    if "outputs" in body:
        outs = [p.unpack_output(o, back.frames) for o in back.body.outputs]
        np.testing.assert_array_equal(outs[0], [1, 2])
        assert outs[1] == [{"0": 0.25, "1": 0.75}]


def test_a_foreign_peer_frame_decodes():
    """Built with plain msgpack, as another implementation would: defaults may be left out."""
    msg = p.decode(frame("register", {"worker_id": "w9", "hardware": {"cores": 4}, "backends": []}, id="r"))
    assert msg.body.hardware.memory_bytes == 0 and msg.body.hardware.gpus == [] and msg.body.pid is None


def test_encode_checks_the_body():
    with pytest.raises(p.ProtocolError) as info:
        p.encode(p.Message("register", {"worker_id": "w1", "hardware": {"cores": "2"}, "backends": []}))
    assert info.value.code == "bad_request" and "`$.hardware.cores`" in info.value.reason
    with pytest.raises(p.ProtocolError) as info:
        p.encode(p.Message("nope", {}))
    assert info.value.code == "unknown_type"


# -- decode refuses -----------------------------------------------------------------------------------

DEEP = b"\x91" * 1000 + b"\xc0"  # a 1,000-deep [[[...]]]


@pytest.mark.parametrize("data,code", [
    (b"\xc1\xc1garbage", "malformed"),
    (b"", "malformed"),
    (b"\xff" * 64, "malformed"),
    (msgpack.packb([1, 2, 3]), "malformed"),
    (msgpack.packb("a string"), "malformed"),
    (msgpack.packb({"v": 2, "type": "status", "id": "x"}), "malformed"),  # no body
    (msgpack.packb({"v": 2, "type": "status", "body": {}}), "malformed"),  # no id
    (msgpack.packb({"type": "status", "id": "x", "body": {}}), "malformed"),  # no v
    (msgpack.packb({"v": 2, "id": "x", "body": {}}), "malformed"),  # no type
    (frame(id=5), "malformed"),
    (frame(v="2"), "malformed"),
    (frame(v=True), "malformed"),
    (frame(id="x" * (MAX_ID + 1)), "malformed"),
    (frame(v=99), "unsupported_version"),
    (frame(v=1), "unsupported_version"),
    (frame("nope", v=1), "unsupported_version"),  # the version is checked before the type
    (frame("nope"), "unknown_type"),
    (frame("load", {}), "bad_request"),
    (b"\x84\xa1v\x02\xa4type\xa6status\xa2id\xa1x\xa4body" + DEEP, "malformed"),
    (DEEP, "malformed"),
    (b"\x91" * 100_000 + b"\xc0", "malformed"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_frames_are_refused_with_their_code(data, code):
    assert refused(data).code == code


@pytest.mark.parametrize("type_,body,path", [
    ("register", {"worker_id": "w1", "hardware": {"cores": "2"}, "backends": []}, "$.hardware.cores"),
    ("register", {"worker_id": "w1", "hardware": {"cores": True}, "backends": []}, "$.hardware.cores"),
    ("register", {"worker_id": "w1", "hardware": {"cores": 0}, "backends": []}, "$.hardware.cores"),
    ("register", {"worker_id": "", "hardware": {"cores": 1}, "backends": []}, "$.worker_id"),
    ("register", {"worker_id": "w" * (m.MAX_NAME + 1), "hardware": {"cores": 1}, "backends": []}, "$.worker_id"),
    ("registered", {"heartbeat_interval_s": float("nan")}, "$.heartbeat_interval_s"),
    ("loaded", {"variant": "v", "load_time_ms": float("inf")}, "$.load_time_ms"),
    ("loaded", {"variant": "v", "load_time_ms": -1.0}, "$.load_time_ms"),
    ("result", {"outputs": [], "timing": {"queue_ms": float("nan")}}, "$.timing[...]"),
    ("changes", {"source": "s", "entries": [{"seq": 1, "op": "put", "table": "m", "key": "k", "ts": float("-inf")}]},
     "$.entries[0].ts"),
    ("fetch", {"sha256": "A" * 64, "offset": 0}, "$.sha256"),
    ("fetch", {"sha256": "a" * 63, "offset": 0}, "$.sha256"),
    ("fetch", {"sha256": "a" * 65, "offset": 0}, "$.sha256"),
    ("fetch", {"sha256": "a" * 64 + "\n", "offset": 0}, "$.sha256"),
    ("fetch", {"sha256": "g" * 64, "offset": 0}, "$.sha256"),
    ("fetch", {"sha256": SHA, "offset": -1}, "$.offset"),
    ("ack", {"missing_artifacts": ["../../etc/passwd"]}, "$.missing_artifacts[0]"),
    ("query", {"kind": "model", "model": "m", "inputs": {}, "latency": 5}, None),  # unknown field
    ("query", {"kind": "anything", "inputs": {}}, "$.kind"),
    ("query", {"kind": "model", "inputs": {}, "min_accuracy": 1.5}, "$.min_accuracy"),
    ("status", {"extra": 1}, None),
    ("error", {"code": "", "reason": "r"}, "$.code"),
    ("error", {"code": "internal", "reason": "r" * (m.MAX_TEXT + 1)}, "$.reason"),
    ("changes", {"source": "s", "entries": [{"seq": 0, "op": "put", "table": "m", "key": "k"}]}, "$.entries[0].seq"),
    ("changes", {"source": "s", "entries": [{"seq": 1, "op": "put", "table": "m", "key": "k"}] * (m.MAX_ENTRIES + 1)},
     "$.entries"),
    ("artifact_chunk", {"sha256": SHA, "offset": 0, "data": b"\0" * (m.MAX_CHUNK_BYTES + 1), "total_bytes": 1},
     "$.data"),
])
def test_bad_bodies_are_refused_with_the_field_path(type_, body, path):
    err = refused(frame(type_, body))
    assert err.code == "bad_request"
    assert err.reason.startswith(f"{type_} body: ")
    if path is None:
        assert "unknown field" in err.reason
    else:
        assert f"- at `{path}`" in err.reason, err.reason


def test_the_documented_example_reason():
    err = refused(frame("register", {"worker_id": "w1", "hardware": {"cores": "2"}, "backends": ["ort-cpu"]}))
    assert err.reason == "register body: Expected `int`, got `str` - at `$.hardware.cores`"


def test_unknown_fields_are_refused_in_nested_structures_too():
    body = wire("heartbeat")
    body["metrics"]["variants"]["digits-cnn/ort-cpu-fp32-t1"]["typo"] = 1
    err = refused(frame("heartbeat", body))
    assert err.code == "bad_request" and "unknown field `typo`" in err.reason
    assert "$.metrics.variants[...]" in err.reason


#: Fields typed Any (free maps and lists): their contents are not checked against a structure.
FREE = {("status_reply", "master"), ("status_reply", "workers"), ("changes", "value"), ("reply", "list"),
        ("result", "list")}


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path, value


def _replace(body, path, value):
    body = copy.deepcopy(body)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def _typed_leaves(kind):
    for type_ in sorted(SAMPLES):
        body = wire(type_)
        for path, value in _leaves(body):
            if any((type_, key) in FREE for key in path if isinstance(key, str)):
                continue
            if type(value) is kind:
                yield type_, body, path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_float_field_refuses_nan_and_infinities(bad):
    checked = 0
    for type_, body, path in _typed_leaves(float):
        err = refused(frame(type_, _replace(body, path, bad)))
        assert err.code == "bad_request" and "- at `$." in err.reason, (type_, path, err.reason)
        checked += 1
    assert checked > 20


def test_every_int_field_refuses_a_bool():
    checked = 0
    for type_, body, path in _typed_leaves(int):
        err = refused(frame(type_, _replace(body, path, True)))
        assert err.code == "bad_request" and "got `bool`" in err.reason, (type_, path, err.reason)
        checked += 1
    assert checked > 20


def _query_with(tensor: dict, *data: bytes) -> list[bytes]:
    return [frame("query", {"kind": "model", "model": "m", "inputs": {"x": tensor}}), *data]


@pytest.mark.parametrize("tensor,data,code,needle", [
    ({"dtype": "float32", "shape": [2 ** 32, 2 ** 32], "frame": 0}, b"", "bad_request", "$.inputs[...].shape[0]"),
    ({"dtype": "float32", "shape": [2 ** 31 - 1, 2 ** 31 - 1], "frame": 0}, b"", "bad_request", "elements"),
    ({"dtype": "uint8", "shape": [2 ** 31 - 1] * m.MAX_RANK, "frame": 0}, b"", "bad_request", "elements"),
    ({"dtype": "float32", "shape": [True, 64], "frame": 0}, b"", "bad_request", "got `bool`"),
    ({"dtype": "float32", "shape": [1] * (m.MAX_RANK + 1), "frame": 0}, b"\0" * 4, "bad_request", "$.inputs[...].shape"),
    ({"dtype": "float32", "shape": [-1, 3], "frame": 0}, b"", "bad_request", "$.inputs[...].shape[0]"),
    ({"dtype": "float32", "shape": [2], "frame": -1}, b"\0" * 8, "bad_request", "$.inputs[...].frame"),
    ({"dtype": "float32", "shape": [2], "frame": True}, b"\0" * 8, "bad_request", "$.inputs[...].frame"),
    # a frame shorter (or longer) than its shape
    ({"dtype": "float32", "shape": [2], "frame": 0}, b"\0" * 4, "malformed", "needs 8"),
    ({"dtype": "int64", "shape": [2, 3], "frame": 0}, b"\0" * 47, "malformed", "needs 48"),
    ({"dtype": "float32", "shape": [], "frame": 0}, b"", "malformed", "needs 4"),
    ({"dtype": "object", "shape": [1], "frame": 0}, b"\0" * 8, "bad_request", "$.inputs[...].dtype"),
    ({"dtype": "float32", "shape": [2], "data": b"\0" * 8}, b"\0" * 8, "bad_request", "unknown field"),
    ({"dtype": "float32", "shape": [2], "frame": 0, "strides": [4]}, b"\0" * 8, "bad_request", "unknown field"),
])
def test_bad_tensors_are_refused(tensor, data, code, needle):
    err = refused(_query_with(tensor, data))
    assert err.code == code and needle in err.reason, err.reason


def test_multi_frame_messages_are_checked_against_their_descriptors():
    x = {"dtype": "float32", "shape": [2], "frame": 0}
    # a descriptor pointing past the frames
    err = refused(_query_with({**x, "frame": 1}, b"\0" * 8, b""))
    assert err.code == "malformed" and "needs 8" not in err.reason
    err = refused(_query_with({**x, "frame": 3}, b"\0" * 8))
    assert err.code == "malformed" and "names data frame 3" in err.reason, err.reason
    # no data frame at all, or one more than the descriptors name
    assert "carries 0 data frame" in refused(_query_with(x)).reason
    assert "carries 2 data frame" in refused(_query_with(x, b"\0" * 8, b"\0" * 8)).reason
    # two tensors naming one frame
    two = frame("query", {"kind": "model", "model": "m", "inputs": {"a": x, "b": x}})
    assert "two tensors name data frame 0" in refused([two, b"\0" * 8, b"\0" * 8]).reason
    # a message that carries no tensors carries no data frames either
    assert refused([frame("status"), b"stray"]).code == "malformed"
    # every failure still echoes the request id
    assert p.peek_id(_query_with(x)) == "req-1"


def test_data_frames_are_viewed_not_copied():
    arr = np.arange(1 << 16, dtype=np.float32)
    frames: list = []
    t = p.pack_tensor(arr, frames)
    assert np.shares_memory(frames[0], arr)  # packing takes a view
    back = p.unpack_tensor(t, frames)
    assert np.shares_memory(back, arr)  # and so does unpacking
    zmq = pytest.importorskip("zmq")
    received = zmq.Frame(arr.tobytes())
    view = p.unpack_tensor(t, [received])
    np.testing.assert_array_equal(view, arr)
    assert np.shares_memory(view, np.frombuffer(received.buffer, np.uint8))  # the received frame's own memory


def test_tensor_bounds_hold_at_the_edges():
    ok = p.decode(_query_with({"dtype": "float32", "shape": [0, 2 ** 14, 2 ** 14], "frame": 0}, b""))
    assert p.unpack_tensors(ok.body.inputs, ok.frames)["x"].shape == (0, 2 ** 14, 2 ** 14)
    # numpy cannot even make an empty array whose other dimensions overflow: such a shape is refused
    err = refused(_query_with({"dtype": "float32", "shape": [0] + [2 ** 31 - 1] * (m.MAX_RANK - 1), "frame": 0},
                              b""))
    assert err.code == "bad_request" and "spans more than" in err.reason
    assert p.decode(_query_with({"dtype": "uint8", "shape": [1] * m.MAX_RANK, "frame": 0}, b"\x07")).body.inputs
    assert m.MAX_TENSOR_ELEMENTS * 8 > m.MAX_TENSOR_BYTES  # so the byte bound is what stops big float64s
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"dtype": "uint8", "shape": [m.MAX_TENSOR_ELEMENTS + 1], "frame": 0}, m.Tensor)


def test_deep_nesting_never_raises_recursion_error():
    nested = b"\x81\xa6master\x81\xa1a" + DEEP  # {"master": {"a": [[[...]]]}} as a status_reply body
    for data in (b"\x84\xa1v\x02\xa4type\xacstatus_reply\xa2id\xa1x\xa4body" + nested, DEEP * 3):
        assert refused(data).code in ("malformed", "bad_request")
    assert p.peek_id(DEEP) == ""


def test_a_long_id_is_refused_and_the_longest_accepted():
    assert p.decode(frame(id="i" * MAX_ID)).id == "i" * MAX_ID
    assert "request id" in refused(frame(id="i" * (MAX_ID + 1))).reason


# -- peek_id and error() ------------------------------------------------------------------------------

def test_peek_id_recovers_request_id_for_error_replies():
    assert p.peek_id(msgpack.packb({"v": 7, "id": "abc"})) == "abc"
    assert p.peek_id(frame("nope", id="r-9")) == "r-9"
    assert p.peek_id(b"\xff") == ""
    # only the top-level map is read: a deep or odd body before the id does not hide it
    deep_first = b"\x82\xa4body" + DEEP + b"\xa2id\xa3r-7"
    assert refused(deep_first).code == "malformed" and p.peek_id(deep_first) == "r-7"
    assert p.peek_id(msgpack.packb({"body": {1: [2]}, "id": "r-8"}, strict_types=False)) == "r-8"


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"\xc1", b"\x91" * 100_000 + b"\xc0", DEEP, msgpack.packb([1, 2]), msgpack.packb(None),
    msgpack.packb({"id": 5}), msgpack.packb({"id": None}), msgpack.packb({"id": ["a"]}), msgpack.packb({"id": b"x"}),
    msgpack.packb({"id": "x" * (MAX_ID + 1)}), msgpack.packb({1: 2, "id": "ok"}), b"\xdf\xff\xff\xff\xff",
])
def test_peek_id_never_raises(data):
    assert p.peek_id(data) in ("", "ok")


def test_peek_id_never_raises_on_random_bytes():
    rng = random.Random(7)
    for _ in range(2000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        assert isinstance(p.peek_id(data), str)
        try:
            p.decode(data)
        except p.ProtocolError:
            pass


def test_error_message_echoes_id_and_carries_extras():
    msg = p.decode(p.encode(p.error("no_variant", "relax the SLO", "req-1", best_latency_ms=3.0, best_accuracy=None,
                                    not_a_field="dropped")))
    assert (msg.type, msg.id, msg.body.code, msg.body.best_latency_ms) == ("error", "req-1", "no_variant", 3.0)
    assert msg.body.best_accuracy is None and not hasattr(msg.body, "not_a_field")


def test_error_clips_long_reasons_and_maps_unknown_codes_to_internal():
    msg = p.error("no_such_code", "x" * (m.MAX_TEXT * 3))
    assert msg.body.code == "internal" and len(msg.body.reason) == m.MAX_TEXT
    assert msg.id == ""  # the answer to a frame whose id could not be read
    assert p.decode(p.encode(msg)).body.reason == "x" * m.MAX_TEXT
    for code in ERROR_CODES:
        assert p.error(code, "r").body.code == code


# -- tensors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", m.DTYPES)
@pytest.mark.parametrize("shape", [(2, 3), (), (0, 4), (1, 1, 2, 1)])
def test_tensor_round_trip_for_every_dtype(dtype, shape):
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 100).astype(dtype)
    tensors, frames = p.pack_tensors({"a": arr})
    back = p.decode([bytes(f) for f in p.encode(p.Message("query", {"kind": "model", "model": "m", "inputs": tensors},
                                                          frames=frames))])
    out = p.unpack_tensors(back.body.inputs, back.frames)["a"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_pack_tensor_handles_non_contiguous_arrays():
    arr = np.arange(24, dtype=np.int32).reshape(4, 6)
    for view in (arr.T, arr[:, ::2], np.asfortranarray(arr), np.array(7, np.int32), np.int32(7)):
        frames: list = []
        t = p.pack_tensor(view, frames)
        back = p.unpack_tensor(p.body_of("query", {"kind": "model", "inputs": {"v": t}}).inputs["v"], frames)
        assert back.shape == np.shape(view)  # a 0-d array stays 0-d
        np.testing.assert_array_equal(back, view)


def test_tensor_checks():
    with pytest.raises(p.ProtocolError) as info:
        p.pack_tensor(np.array(["a"], dtype=object), [])
    assert info.value.code == "invalid_input"
    with pytest.raises(p.ProtocolError):
        p.pack_tensor(np.array([1 + 2j]), [])
    with pytest.raises(ValueError, match="spans more than"):
        m.Tensor(dtype="int64", shape=[2 ** 31 - 1] * 3, frame=0)  # a wrong tensor cannot even be built
    with pytest.raises(p.ProtocolError) as info:
        p.unpack_output(m.Output(), [])
    assert info.value.code == "bad_request"
    with pytest.raises(p.ProtocolError):
        p.pack_output("not an output", [])


# -- the doc ------------------------------------------------------------------------------------------

def _sections(doc: str) -> dict[str, str]:
    parts = re.split(r"^#{2,3} (.+)$", doc, flags=re.M)
    return {title.strip().strip("`"): text for title, text in zip(parts[1::2], parts[2::2])}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _table(text: str, header: list[str]) -> list[list[str]]:
    """The rows of the first table in `text`, which must have `header`."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    assert start is not None, f"no table (want {header})"
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append(_cells(ln))
    assert table[0] == header, (header, table[0])
    assert set(table[1]) == {"---"}
    return table[2:]


def _default(field) -> str:
    value = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
    return f"`{msgspec.json.encode(value).decode()}`"


@pytest.fixture(scope="module")
def doc_sections() -> dict[str, str]:
    return _sections(DOC.read_text())


def test_doc_version_matches_protocol():
    version = re.search(r"Protocol version: \*\*(\d+)\*\*", DOC.read_text())
    assert version and int(version.group(1)) == p.PROTOCOL_VERSION


def _check_fields(title: str, cls, sections: dict[str, str]) -> None:
    assert title in sections, f"docs/protocol.md has no section for {title}"
    rows = _table(sections[title], ["field", "type", "required", "meaning"])
    documented = {r[0].strip("`"): r for r in rows}
    assert len(documented) == len(rows), f"{title}: a field is documented twice"
    fields = msgspec.inspect.type_info(cls).fields
    assert set(documented) == {f.name for f in fields}, title
    for f in fields:
        _, type_, required, meaning = documented[f.name]
        assert type_ and meaning, (title, f.name)
        if f.required:
            assert required == "required", (title, f.name, required)
        else:
            assert required == _default(f), (title, f.name, required, _default(f))


@pytest.mark.parametrize("type_", sorted(p.BODIES))
def test_doc_documents_every_field_of_every_message(type_, doc_sections):
    _check_fields(type_, p.BODIES[type_], doc_sections)


@pytest.mark.parametrize("name", sorted(NESTED))
def test_doc_documents_every_field_of_every_nested_structure(name, doc_sections):
    _check_fields(name, NESTED[name], doc_sections)


def test_doc_lists_every_message_type_with_its_direction(doc_sections):
    rows = _table(doc_sections["Messages"], ["type", "direction", "body"])
    assert {r[0].strip("`"): r[1] for r in rows} == m.DIRECTIONS


def test_doc_error_codes_match(doc_sections):
    rows = _table(doc_sections["Error codes"], ["code", "meaning"])
    documented = {r[0].strip("`"): r[1] for r in rows}
    assert len(documented) == len(rows)
    assert set(documented) == set(ERROR_CODES)
    for code, meaning in ERROR_CODES.items():
        assert documented[code].startswith(meaning), code


def test_doc_bounds_match_the_constants(doc_sections):
    rows = _table(doc_sections["Bounds"], ["constant", "value", "bounds"])
    documented = {r[0].strip("`"): int(r[1].split()[0]) for r in rows}
    constants = {name: getattr(m, name) for name in dir(m) if name.startswith("MAX_")} | {"MAX_ID": MAX_ID}
    assert documented == constants


def test_doc_envelope_keys(doc_sections):
    rows = _table(doc_sections["Envelope"], ["key", "type", "meaning"])
    assert [r[0].strip("`") for r in rows] == ["v", "type", "id", "body"]
