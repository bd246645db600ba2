"""Fuzz the doors of infaas: the master's client endpoint, the master's worker endpoint, a worker, and a slow reader.

Issue "One house": every door must be guarded. The fuzzer sends garbage and hostile-but-well-formed
messages (deterministic by seed) and checks invariants. It speaks the protocol version of the tree
(3: a message is a multipart ZeroMQ message, the msgpack envelope and then the raw tensor data frames
its descriptors name). Valid messages go out with send_multipart; the single-frame garbage (random
bytes, truncated or non-map envelopes, ...) stays single-frame; the ``frames_*`` mutations send a body
that decodes with data frames that break the frame rules (see ``mutate_frames``):

* master client door — every message gets exactly one reply (by request id; a message whose id cannot
  be read is sent alone on its own socket, so its one reply is countable), no ``internal`` error for
  a user mistake, the daemons stay alive, valid queries mixed in (every 50th message) are answered
  with the outputs ONNX Runtime gives on the original model, every ``frames_*`` query is answered
  ``malformed``, and afterwards the catalog is readable (``status`` lists the models, a fresh query
  works);
* master worker door — DEALERs with fresh identities send garbage, bad registrations, garbage
  heartbeats, results/errors for unknown ids, bad fetches and ``result``s with broken data frames; the
  master stays alive, a normal client's queries keep being answered correctly throughout, ``status``
  does not list a garbage worker as serving, and a registered worker sending broken results gets one
  ``malformed`` per result until ``master.worker_garbage_limit``, then is cut off;
* a worker — this process plays the master (a ROUTER), a real worker process registers with it and
  is sent garbage and hostile infer/load messages (infers with broken data frames among them); it
  keeps heartbeating, every ``infer`` gets exactly one reply, a failed load answers its held queries
  and does not wedge the variant;
* slow reader — a client sends a burst of queries without reading (small RCVHWM), then reads:
  every query is answered or refused explicitly (``overloaded``), none silently lost.

Every wait has a deadline and every process started here is torn down.

    .venv/bin/python benchmarks/fuzz.py --frames-client 100000 --frames-worker-endpoint 20000 \
        --frames-worker 20000 --slow-reader 20000 --seed 1 --json benchmarks/results/fuzz.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from infaas_cli import protocol  # noqa: E402
from infaas_cli.client import Client, QueryFailed  # noqa: E402
from infaas_cli.client.client import query_message  # noqa: E402
from infaas_cli.cluster import embedded  # noqa: E402

VALID_EVERY = 50  # a valid query every this many frames
MLP = "digits-mlp"
MLP_VARIANT = "digits-mlp/ort-cpu-fp32o2-t1-b8"  # fp32: outputs compared closely with onnxruntime
LOGREG_VARIANT = "digits-logreg/ort-cpu-fp32o3-t1-b8"
WRONG_VALUES: list[Any] = [[1, 2], {"a": 1}, 2 ** 64 - 1, -1, -(2 ** 63), 1.5, None, True, "x" * 3000, b"\x00\xff"]
MAX_DETAILS = 8  # evidence kept per category / invariant


def V() -> int:
    """The protocol version spoken now (read at run time: the lead moves it)."""
    return protocol.PROTOCOL_VERSION


_CURRENT = object()
Frames = list  # one message: the envelope frame, then its tensor data frames (protocol 3), all bytes


def raw_frame(type_: Any, body: Any, rid: Any, v: Any = _CURRENT, **extra: Any) -> bytes:
    """An envelope built by hand (hostile content that protocol.encode would refuse)."""
    env = {"v": V() if v is _CURRENT else v, "type": type_, "id": rid, "body": body, **extra}
    return msgpack.packb(env, use_bin_type=True)


def raw_msg(type_: Any, body: Any, rid: Any, data: Any = (), v: Any = _CURRENT) -> Frames:
    """A hand-built message: the envelope, then the given data frames."""
    return [raw_frame(type_, body, rid, v), *[bytes(d) for d in data]]


def valid_frame(type_: str, body: dict[str, Any], rid: str, data: Any = ()) -> Frames:
    """A message as the typed encoder makes it (its frames, as bytes)."""
    return [bytes(f) for f in protocol.encode(protocol.Message(type_, body, id=rid, frames=list(data)))]


def as_frames(msg: bytes | Frames) -> Frames:
    """One frame (the single-frame garbage) or a message's frames, as a list of frames."""
    return [msg] if isinstance(msg, (bytes, bytearray)) else list(msg)


def max_id() -> int:
    """Longest request id a daemon echoes (read at run time)."""
    from infaas_cli.protocol import envelope

    return int(getattr(envelope, "MAX_ID", 1 << 30))


def readable_id(msg: bytes | Frames) -> str | None:
    """The request id a peer can read from this message's envelope frame (a string of at most max_id()
    characters under "id" in a msgpack map), else None: such a message's error reply cannot echo an id."""
    frames = as_frames(msg)
    try:
        raw = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    except Exception:
        return None
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and len(raw["id"]) <= max_id():
        return raw["id"]
    return None


def preview(msg: bytes | Frames, n: int = 160) -> str:
    """A short readable form of a message (its envelope, and the sizes of its data frames), for evidence."""
    frames = as_frames(msg) or [b""]
    frame = frames[0]
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        obj = None
        text = "bytes " + frame[:48].hex()
    if obj is not None:
        try:
            text = repr(obj)
        except RecursionError:  # the 1000-deep shape: readable by msgpack, too deep for repr
            text = f"<deeply nested frame, id {readable_id(frame)!r}>"
    if len(text) > n:
        text = text[:n] + "..."
    if len(frames) > 1:
        sizes = [len(f) for f in frames[1:9]]
        text += f" + {len(frames) - 1} data frame(s) of {sizes}{'...' if len(frames) > 9 else ''} bytes"
    return text


def ptensor(arr: np.ndarray, data: list) -> dict[str, Any]:
    """A tensor descriptor as a plain map (hostile messages are packed with msgpack, not the typed encoder);
    its bytes are appended to `data`, the message's data frames."""
    arr = np.ascontiguousarray(arr)
    data.append(arr.tobytes())
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "frame": len(data) - 1}


def _descriptor_bytes(t: Any) -> int | None:
    """The bytes a well-formed descriptor's frame must hold, or None when the descriptor is not well-formed."""
    if not isinstance(t, dict) or not isinstance(t.get("frame"), int) or isinstance(t.get("frame"), bool) \
            or not 0 <= t["frame"] < 64:
        return None
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 31
                                              for d in shape):
        return None
    try:
        item = np.dtype(t.get("dtype")).itemsize if t.get("dtype") in protocol.messages.DTYPES else None
    except TypeError:
        item = None
    n = int(np.prod(shape, dtype=object)) if shape else 1
    return None if item is None or n * item > 1 << 24 else n * item


def body_tensors(type_: Any, body: Any) -> list[dict[str, Any]]:
    """The tensor descriptors (plain maps) a hand-built body carries, as the typed decoder will find them."""
    if not isinstance(body, dict):
        return []
    if type_ in ("query", "infer"):
        inputs = body.get("inputs")
        return [t for t in inputs.values() if isinstance(t, dict)] if isinstance(inputs, dict) else []
    if type_ in ("result", "reply"):
        outs = body.get("outputs")
        return [o["tensor"] for o in outs if isinstance(o, dict) and isinstance(o.get("tensor"), dict)] \
            if isinstance(outs, list) else []
    return []


def data_for(type_: Any, body: Any) -> list[bytes]:
    """Data frames that fit a hand-built body: zeros of the right length at each well-formed descriptor's
    frame, so that a body's other mistakes, not a missing frame, decide its answer."""
    frames: dict[int, bytes] = {}
    for t in body_tensors(type_, body):
        n = _descriptor_bytes(t)
        if n is not None:
            frames.setdefault(t["frame"], bytes(n))
    return [frames.get(i, b"") for i in range(max(frames) + 1)] if frames else []


def auto_msg(type_: Any, body: Any, rid: Any, v: Any = _CURRENT) -> Frames:
    """A hand-built message with the data frames its body's descriptors ask for."""
    return raw_msg(type_, body, rid, data_for(type_, body), v=v)


def _strip_route(frames: list) -> list:
    """A message as a DEALER receives it: an empty delimiter in front (when the master took the message
    for a REQ's) is dropped."""
    return frames[1:] if len(frames) > 1 and not len(frames[0]) else frames


def parse_reply(msg: bytes | Frames) -> dict[str, Any] | None:
    """The envelope of a received message, as a plain map (None when it is not a msgpack map)."""
    frames = _strip_route(as_frames(msg))
    try:
        raw = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    except Exception:
        return None
    return raw if isinstance(raw, dict) else None


def decoded_outputs(frames: Frames) -> tuple[protocol.Message, list[Any]]:
    """A received reply/result decoded as protocol (its frames checked against its descriptors), and its
    outputs as numpy arrays (or lists). Raises when the message itself is broken."""
    msg = protocol.decode(_strip_route(list(frames)))
    return msg, [protocol.unpack_output(o, msg.frames) for o in msg.body.outputs]


NEST_MARKER = "__NEST_MARKER__"


def nested_shape_frame(rid: str, depth: int, type_: str = "query", body: dict[str, Any] | None = None) -> Frames:
    """A message whose tensor shape is a `depth`-deep nested list (spliced by hand: msgpack's packer stops
    at 511 levels). `body` holds NEST_MARKER where the shape goes; one empty data frame follows."""
    if body is None:
        body = {"kind": "model", "model": MLP,
                "inputs": {"x": {"dtype": "float32", "shape": NEST_MARKER, "frame": 0}}}
    frame = raw_frame(type_, body, rid)
    return [frame.replace(msgpack.packb(NEST_MARKER), b"\x91" * depth + b"\x01", 1), b""]


# ---------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------

@dataclass
class CatStats:
    frames: int = 0
    replies: int = 0
    unanswered: int = 0
    duplicated: int = 0
    late: int = 0  # answered after the per-frame timeout
    internal: int = 0
    wrong_code: int = 0  # an error code outside the category's expected set
    bad_answer: int = 0  # a valid request answered wrongly (error, or outputs unlike onnxruntime)
    anon_id_nonempty: int = 0  # reply to an id-less frame whose id is not ""
    codes: collections.Counter = field(default_factory=collections.Counter)
    details: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.details) < MAX_DETAILS:
            self.details.append(text[:300])

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "replies": self.replies, "unanswered": self.unanswered,
                "duplicated": self.duplicated, "late": self.late, "internal": self.internal,
                "wrong_code": self.wrong_code, "bad_answer": self.bad_answer,
                "anon_id_nonempty": self.anon_id_nonempty, "codes": dict(sorted(self.codes.items())),
                "details": self.details}


class Report:
    """One door's results: per-category stats and named invariants."""

    def __init__(self, door: str) -> None:
        self.door = door
        self.cats: dict[str, CatStats] = collections.defaultdict(CatStats)
        self.invariants: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        self.started = time.monotonic()
        self.wall_s = 0.0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.invariants[name] = {"ok": bool(ok), "detail": detail[:2000]}
        return ok

    def failures(self) -> dict[str, str]:
        return {k: v["detail"] for k, v in self.invariants.items() if not v["ok"]}

    def finish(self) -> Report:
        self.wall_s = round(time.monotonic() - self.started, 2)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"door": self.door, "wall_s": self.wall_s, "info": self.info,
                "invariants": self.invariants,
                "categories": {k: v.to_dict() for k, v in sorted(self.cats.items())}}

    def table(self) -> str:
        rows = [f"== {self.door} ({self.wall_s:.1f} s)",
                f"{'category':<26}{'frames':>8}{'replies':>8}{'unans':>7}{'dup':>5}{'late':>5}{'intern':>7}"
                f"{'wrongc':>7}{'badans':>7}  codes"]
        for name, s in sorted(self.cats.items()):
            codes = ",".join(f"{c}:{n}" for c, n in s.codes.most_common(6))
            rows.append(f"{name:<26}{s.frames:>8}{s.replies:>8}{s.unanswered:>7}{s.duplicated:>5}{s.late:>5}"
                        f"{s.internal:>7}{s.wrong_code:>7}{s.bad_answer:>7}  {codes}")
        for name, inv in self.invariants.items():
            rows.append(f"  [{'ok' if inv['ok'] else 'FAIL'}] {name}" + (f": {inv['detail'][:300]}"
                                                                        if not inv["ok"] else ""))
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------
# reference outputs
# ---------------------------------------------------------------------------------------------------

class Reference:
    """Inputs and the outputs ONNX Runtime gives on the original model files."""

    def __init__(self) -> None:
        from support import digits_x, original_outputs

        self.x = np.ascontiguousarray(digits_x(64).astype(np.float32))
        self.refs = {name: original_outputs(name, self.x) for name in ("digits-mlp", "digits-logreg",
                                                                        "digits-cnn-s")}

    def rows(self, rng: random.Random, n: int = 8) -> tuple[int, np.ndarray]:
        start = rng.randrange(0, len(self.x) - n)
        return start, self.x[start:start + n]

    def compare(self, variant: str, start: int, n: int, outputs: list[Any]) -> str | None:
        """None when `outputs` (unpacked) match the original model on rows start..start+n, else why not."""
        model = variant.split("/")[0]
        if model not in self.refs:
            return f"answered by unexpected variant {variant}"
        ref = [r[start:start + n] for r in self.refs[model]]
        if len(outputs) < 2:
            return f"{variant}: {len(outputs)} outputs, expected 2"
        labels, probs = np.asarray(outputs[0]), np.asarray(outputs[1])
        if labels.shape != ref[0].shape or probs.shape != ref[1].shape:
            return f"{variant}: shapes {labels.shape}/{probs.shape}, expected {ref[0].shape}/{ref[1].shape}"
        if "fp32" in variant:
            if not np.array_equal(labels, ref[0]) or not np.allclose(probs, ref[1], rtol=1e-4, atol=1e-5):
                return f"{variant}: outputs differ from onnxruntime (max |d| {np.abs(probs - ref[1]).max():.3g})"
        elif np.mean(labels == ref[0]) < 0.85 or not np.allclose(probs, ref[1], atol=0.05):
            return f"{variant}: quantised outputs too far from onnxruntime"
        return None

    def check_reply(self, frames: Frames, start: int, n: int) -> str | None:
        """None when a received message is a valid `reply` whose outputs match rows start..start+n."""
        raw = parse_reply(frames) or {}
        if raw.get("type") != "reply":
            body = raw.get("body") if isinstance(raw.get("body"), dict) else {}
            return f"valid query answered {raw.get('type')} {body.get('code')}: {str(body.get('reason'))[:150]}"
        try:
            msg, outputs = decoded_outputs(frames)  # the reply must be valid protocol, frames and all
        except Exception as exc:  # the reply itself is broken
            return f"reply does not decode: {type(exc).__name__}: {exc}"
        return self.compare(str(msg.body.variant), start, n, outputs)


# ---------------------------------------------------------------------------------------------------
# generators: (rng, rid) -> (message, expected codes or None). The message is one frame (bytes: the
# single-frame garbage) or a list of frames (the envelope, then data frames). Its id is readable iff
# readable_id().
# ---------------------------------------------------------------------------------------------------

Gen = Callable[[random.Random, str], tuple["bytes | Frames", "set[str] | None"]]
USER_ERRORS = None  # any code except internal


def _tensor(shape: Any, dtype: Any = "float32", frame: Any = 0) -> dict[str, Any]:
    """A descriptor as a plain map; its data frame travels separately."""
    return {"dtype": dtype, "shape": shape, "frame": frame}


def _x(n: int = 1, frame: int = 0) -> dict[str, Any]:
    """The digits input [n, 64] float32 naming data frame `frame` (data_for() makes the frame)."""
    return _tensor([n, 64], frame=frame)


def _query(inputs: Any, **kw: Any) -> dict[str, Any]:
    body = {"kind": "model", "model": MLP, "latency_ms": None, "min_accuracy": None, "objective": "cost",
            "max_cost_usd": None, "variant": None, "task": None, "dataset": None, "inputs": inputs}
    body.update(kw)
    return body


def gen_random_bytes(rng: random.Random, rid: str):
    n = rng.choice([0, 1, 2, 7, 16, 64, 200, 1000])
    return rng.randbytes(n), {"malformed"}


def gen_truncated(rng: random.Random, rid: str):
    base = rng.choice([valid_frame("status", {}, rid)[0], raw_frame("query", _query({"x": _x(1)}), rid)])
    return base[:rng.randrange(0, len(base))], {"malformed"}


def gen_non_map(rng: random.Random, rid: str):
    obj = rng.choice([1, -7, 2 ** 64 - 1, 1.5, None, True, "status", b"bytes", [1, 2, 3],
                      [V(), "status", rid, {}], [[[]]], {"v": V()}, {}, {1: 2}])
    return msgpack.packb(obj, use_bin_type=True), {"malformed"}


def gen_envelope(rng: random.Random, rid: str):
    env = {"v": V(), "type": "status", "id": rid, "body": {}}
    choice = rng.randrange(9)
    if choice < 4:  # one key missing
        del env[["v", "type", "id", "body"][choice]]
    elif choice == 4:  # id of a wrong type: unreadable
        env["id"] = rng.choice([5, None, [rid], {"id": rid}, b"raw-id", 1.5, True])
    elif choice == 5:
        env["type"] = rng.choice([5, None, ["status"], {"t": 1}, b"status", True])
    elif choice == 6:
        env["body"] = rng.choice([5, None, [1], "body", b"body", 1.5, True])
    elif choice == 7:  # extra keys: harmless, any answer but internal
        env["extra"] = "x" * rng.choice([1, 3000])
        env["trace"] = {"deep": [1, 2, {"a": None}]}
        return msgpack.packb(env, use_bin_type=True), None
    else:  # non-string keys beside the envelope
        env[7] = "seven"
        env[b"bin"] = 1
        return msgpack.packb(env, use_bin_type=True), None
    return msgpack.packb(env, use_bin_type=True), {"malformed", "bad_request"}


def gen_wrong_version(rng: random.Random, rid: str):
    v = rng.choice([0, V() - 1, V() + 1, V() + 100, -1, 2 ** 63, -(2 ** 63), str(V()), [V()], {"v": V()}, None, "x" * 3000,
                    float(V()) + 0.5, b"\x01"])
    return raw_frame("status", {}, rid, v=v), {"unsupported_version", "malformed", "bad_request"}


def gen_unknown_type(rng: random.Random, rid: str):
    t = rng.choice(["bogus", "", "QUERY", "query ", "x" * 3000, "reply", "status_reply", "registered", "heartbeat",
                    "register", "load", "unload", "loaded", "infer", "result", "fetch", "ack", "error",
                    "\x00", "é"])
    body = {"code": "internal", "reason": "fuzz"} if t == "error" else {}
    # A message type that exists but that clients may not send is refused like an unknown one.
    return raw_frame(t, body, rid), {"unknown_type", "bad_request"}


def _base_bodies(rng: random.Random) -> dict[str, dict[str, Any]]:
    sha = "%064x" % rng.getrandbits(256)
    return {
        "query": _query({"x": _x(1)}),
        "reply": {"outputs": [], "variant": "v", "worker": "w", "decision_us": 1.0, "timing": {}},
        "status": {},
        "status_reply": {"master": {}, "workers": []},
        "register": {"worker_id": "fz", "hardware": {"cores": 1}, "backends": ["onnxruntime-cpu"]},
        "registered": {"heartbeat_interval_s": 1.0},
        "heartbeat": {"worker_id": "fz", "metrics": {}},
        "load": {"variant": MLP_VARIANT},
        "unload": {"variant": MLP_VARIANT},
        "loaded": {"variant": MLP_VARIANT, "load_time_ms": 1.0},
        "infer": {"variant": MLP_VARIANT, "inputs": {"x": _x(1)}, "deadline_ms": 10.0},
        "result": {"outputs": [], "timing": {}},
        "fetch": {"sha256": sha, "offset": 0},
        "changes": {"source": f"fz-src-{rng.getrandbits(32):08x}", "entries": []},
        "artifact_chunk": {"sha256": sha, "offset": 0, "data": b"abc", "total_bytes": 10 ** 6},
        "ack": {},
        "error": {"code": "internal", "reason": "fuzz"},
    }


def gen_field_types(rng: random.Random, rid: str):
    """Every message type, each field (required or optional) replaced by a value of the wrong type."""
    bases = _base_bodies(rng)
    types_ = sorted(set(protocol.MESSAGE_TYPES) | set(bases))
    t = rng.choice(types_)
    body = dict(bases.get(t, {}))
    for f in protocol.MESSAGE_TYPES.get(t, ()):
        body.setdefault(f, "fz")
    fields = sorted(body) or ["anything"]
    f = rng.choice(fields)
    body[f] = rng.choice(WRONG_VALUES)
    return auto_msg(t, body, rid), USER_ERRORS


def gen_query_fields(rng: random.Random, rid: str):
    """Query fields with values of the right shape but the wrong meaning or type."""
    f, value = rng.choice([
        ("kind", "bogus"), ("kind", 5), ("kind", None), ("kind", ["model"]), ("kind", "x" * 3000),
        ("model", ["digits-mlp"]), ("model", {"name": MLP}), ("model", 7), ("model", None),
        ("variant", ["v"]), ("objective", "speed"), ("objective", 3), ("objective", ["cost"]),
        ("latency_ms", -5.0), ("latency_ms", float("nan")), ("latency_ms", float("inf")), ("latency_ms", "fast"),
        ("latency_ms", [1]), ("latency_ms", 2 ** 64 - 1), ("min_accuracy", "high"), ("min_accuracy", -1),
        ("min_accuracy", float("nan")), ("min_accuracy", {"a": 1}), ("max_cost_usd", "cheap"),
        ("max_cost_usd", -1.0), ("max_cost_usd", [0]), ("batch_size", "x"), ("batch_size", -3),
        ("batch_size", 2 ** 64 - 1), ("dataset", 5), ("task", ["t"]), ("inputs", None), ("inputs", []),
        ("inputs", "x"), ("inputs", {}), ("inputs", {"x": 5}), ("inputs", {"x": None}), ("inputs", {"x": [1, 2]}),
        ("inputs", {1: _x(1)}), ("inputs", {"wrong": _x(1)}), ("inputs", {"x": _x(1), "extra": _x(1, frame=1)}),
    ])
    kw = {f: value}
    if f in ("variant",):
        kw["kind"] = "variant"
    if f in ("task", "dataset"):
        kw.update(kind="task", task="digit-classification", dataset="digits")
        kw[f] = value
    return auto_msg("query", _query(kw.pop("inputs", {"x": _x(1)}), **kw), rid), USER_ERRORS


def gen_tensor_shapes(rng: random.Random, rid: str):
    """Hostile descriptors: dtype as a list, giant/negative/bool/deep/100-dim shapes, bad frame indexes, a
    protocol-2 `data` field, frames that do not fit. Each carries one data frame (`blob`)."""
    f32 = lambda n: b"\x00" * (4 * n)  # noqa: E731
    choice = rng.randrange(24)
    expect: set[str] | None = {"invalid_input", "bad_request", "malformed"}
    blob = f32(64)
    if choice == 0:
        t = _tensor([1, 64], dtype=["float32"])
    elif choice == 1:
        t, blob = _tensor([2 ** 32, 2 ** 32]), b""
    elif choice == 2:
        t = _tensor([True, 64])
        expect = USER_ERRORS  # True == 1 to Python; answered or refused, never internal
    elif choice == 3:
        t = _tensor([-1, 64])
    elif choice == 4:
        t, blob = _tensor([1, -64]), b""
    elif choice == 5:
        return nested_shape_frame(rid, 1000), expect
    elif choice == 6:
        t, blob = _tensor([1] * 100), f32(1)
    elif choice == 7:
        t, blob = _tensor([2] * 100), b""
    elif choice == 8:
        t, blob = _tensor([1, 64]), b"\x00" * 5
    elif choice == 9:
        t, blob = _tensor([1, 64]), f32(64) + b"\x00"
    elif choice == 10:  # 1-D input for a model that wants [N, 64]: invalid_input, not no_variant
        t, expect = _tensor([64]), {"invalid_input"}
    elif choice == 11:
        t, blob = _tensor([0, 64]), b""
    elif choice == 12:
        t, blob = _tensor([33, 64]), f32(33 * 64)  # over max_batch 32: no variant takes it
        expect = {"invalid_input", "bad_request", "no_variant"}
    elif choice == 13:
        t, blob = _tensor([1, 64], dtype="float64"), b"\x00" * 512
        expect = USER_ERRORS  # cast by the worker
    elif choice == 14:
        t = _tensor([1, 64], dtype=rng.choice(["object", "float128", "", "x" * 3000, None, 5, "<f4"]))
    elif choice == 15:
        t = _tensor(rng.choice([{"a": 1}, "1,64", None, 64, 1.5, b"\x01"]))
    elif choice == 16:  # the frame index of a wrong type or out of bounds (0 ... 63)
        t = _tensor([1, 64], frame=rng.choice(["0", None, 1.5, [0], {"f": 0}, True, -1, 64, 2 ** 64 - 1]))
    elif choice == 17:
        t = _tensor([1.0, 64.0])
    elif choice == 18:
        t, blob = _tensor([1, 2 ** 63 - 1]), b""
    elif choice == 19:
        t, blob = _tensor([2 ** 64 - 1, 64]), b""
    elif choice == 20:
        t = _tensor([1, 64, 1])
    elif choice == 21:  # a protocol-2 tensor: the bytes inside the descriptor (an unknown field now)
        t = {"dtype": "float32", "shape": [1, 64], "data": blob, "frame": 0}
    elif choice == 22:
        t = {"dtype": "float32", "shape": [1, 64]}  # no frame
    else:
        t = {"dtype": "float32", "frame": 0}  # no shape
    kind = rng.choice(["model", "variant", "task"])
    kw = {"model": MLP} if kind == "model" else {"variant": MLP_VARIANT, "model": None} if kind == "variant" else \
        {"task": "digit-classification", "dataset": "digits", "model": None}
    return raw_msg("query", _query({"x": t}, kind=kind, **kw), rid, [blob]), expect


def gen_unknown_model(rng: random.Random, rid: str):
    tag = f"{rng.getrandbits(24):06x}"
    kw = rng.choice([{"kind": "model", "model": f"nope-{tag}"},
                     {"kind": "variant", "variant": f"nope/{tag}", "model": None},
                     {"kind": "variant", "variant": f"{MLP}/nope-{tag}", "model": None},
                     {"kind": "task", "task": f"nope-{tag}", "dataset": "digits", "model": None},
                     {"kind": "task", "task": "digit-classification", "dataset": f"nope-{tag}", "model": None},
                     {"kind": "model", "model": "x" * 3000}])
    # A 3000-character name may be refused as too long instead (names are bounded).
    return auto_msg("query", _query({"x": _x(1)}, **kw), rid), {"unknown_model", "bad_request"}


def gen_impossible_slo(rng: random.Random, rid: str):
    kw, expect = rng.choice([
        ({"latency_ms": 0.0001, "min_accuracy": 0.999}, {"no_variant"}),
        ({"latency_ms": 1e-9}, {"no_variant"}),
        ({"min_accuracy": 0.9999}, {"no_variant"}),
        ({"min_accuracy": 1.01}, {"no_variant", "bad_request"}),
        ({"max_cost_usd": 1e-30}, {"no_variant"}),
        ({"max_cost_usd": 0.0}, {"no_variant", "bad_request"}),
    ])
    if rng.random() < 0.5:
        kw = {**kw, "kind": "task", "task": "digit-classification", "dataset": "digits", "model": None}
    return auto_msg("query", _query({"x": _x(1)}, **kw), rid), expect


def gen_status(rng: random.Random, rid: str):
    if rng.random() < 0.7:
        return valid_frame("status", {}, rid), {"status_reply"}
    return raw_frame("status", {"junk": "x" * rng.choice([1, 3000]), "n": [1, 2]}, rid), {"status_reply",
                                                                                         "bad_request"}


def gen_changes(rng: random.Random, rid: str):
    """Replication frames with garbage records (phase B: these may corrupt the catalog if accepted)."""
    src = f"fz-src-{rng.getrandbits(40):010x}"

    def entry(**kw):
        e = {"seq": 1, "ts": 0.0, "op": "put", "table": "models", "key": f"fz-{rng.getrandbits(24):06x}",
             "value": {"junk": 1}}
        e.update(kw)
        return e

    choice = rng.randrange(16)
    body: Any
    if choice == 0:
        body = {"source": src, "entries": [{"table": "models", "value": {"junk": 1}}]}
    elif choice == 1:
        body = {"source": src, "entries": [entry()]}  # a complete entry whose record is junk
    elif choice == 2:
        body = {"source": src, "entries": [entry(table="variants")]}
    elif choice == 3:
        body = {"source": src, "entries": [entry(table="profiles", value={"variant": 5})]}
    elif choice == 4:
        body = {"source": src, "entries": [entry(table="no-such-table")]}
    elif choice == 5:
        body = {"source": src, "entries": [entry(op="drop")]}
    elif choice == 6:
        body = {"source": "s" * 3000, "entries": []}
    elif choice == 7:
        body = {"source": "s" * 3000, "entries": [entry()]}
    elif choice == 8:
        body = {"source": src, "entries": [entry(seq=2 ** 63 - 1)]}
    elif choice == 9:
        body = {"source": src, "entries": [entry(seq=-5)]}
    elif choice == 10:
        body = {"source": src, "entries": [entry(seq=rng.choice(["1", 1.5, None, [1]]))]}
    elif choice == 11:
        body = {"source": src, "entries": [entry(key=rng.choice([5, None, ["k"], "k" * 3000]))]}
    elif choice == 12:
        body = {"source": src, "entries": [entry(value=rng.choice([[1], "v", 5, {"name": 5}]))]}
    elif choice == 13:
        body = {"source": src, "entries": rng.choice([[1, 2], ["x"], [None], [[]], {"a": 1}, "entries"])}
    elif choice == 14:
        body = {"source": rng.choice([5, None, ["s"], b"s"]), "entries": []}
    else:
        body = {"source": src, "entries": [entry(seq=i + 1) for i in range(rng.choice([2, 50]))]}
    return raw_frame("changes", body, rid), {"bad_request", "sequence_gap", "not_found"}


def gen_artifact_chunk(rng: random.Random, rid: str):
    sha = "%064x" % rng.getrandbits(256)
    body = {"sha256": sha, "offset": 0, "data": b"abc", "total_bytes": 3}
    choice = rng.randrange(10)
    expect = {"bad_request", "checksum", "sequence_gap", "not_found"}
    if choice == 0:
        body["sha256"] = rng.getrandbits(64)
    elif choice == 1:
        body["sha256"] = "zz" * 32
    elif choice == 2:
        body["sha256"] = "../" * 20 + "etc/passwd"
    elif choice == 3:
        body["offset"] = -rng.choice([1, 2 ** 63])
    elif choice == 4:
        body["offset"] = 2 ** 63 - 1
    elif choice == 5:
        body["data"] = rng.choice(["abc", [1], None, 5])
    elif choice == 6:
        body["total_bytes"] = rng.choice([-1, "3", None, 2 ** 64 - 1])
    elif choice == 7:
        body["sha256"] = "A" * 64  # upper-case hex is not the store's form
    elif choice == 8:
        body["sha256"] = "f" * 3000
    # else: a well-formed chunk whose content does not hash to its name -> checksum
    return raw_frame("artifact_chunk", body, rid), expect


# -- multi-frame mutations (protocol 3): a body that decodes, with data frames that break the frame rules.
# Every one is `malformed`, answered exactly once, with the message's id.

FRAME_MUTATIONS = ("past_end", "short", "long", "extra", "missing", "shared", "tensorless", "empty")


def mutate_frames(rng: random.Random, kind: str, type_: str, body: dict[str, Any], data: list[bytes],
                  tensorless: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any], list[bytes]]:
    """Break a valid message with tensors (query/infer inputs, result outputs; every descriptor well-formed
    and every frame non-empty) in one way of `kind`:

    * past_end — a descriptor names a frame past the last one (the frame count still matches);
    * short / long — a data frame holds fewer / more bytes than its shape needs;
    * extra — data frames beyond the descriptors (1 … 70 more);
    * missing — a data frame left out (with one tensor: no data frame at all);
    * shared — two descriptors name the same frame (the count matching, mostly);
    * tensorless — data frames on a message type without tensors (one of `tensorless`);
    * empty — a data frame of 0 bytes where its shape needs some.
    """
    body = json_copy(body)
    data = list(data)
    descs = body_tensors(type_, body)
    assert descs and len(descs) == len(data) and all(data), "mutate a valid message with tensors"
    if kind == "past_end":
        t = rng.choice(descs)
        t["frame"] = min(63, rng.choice([len(data), len(data) + 1, len(data) + 7, 63]))
    elif kind in ("short", "empty"):
        i = rng.randrange(len(data))
        n = len(data[i])
        data[i] = b"" if kind == "empty" else data[i][:rng.choice([n - 1, n // 2, max(1, n // 4), 1])]
    elif kind == "long":
        i = rng.randrange(len(data))
        data[i] = data[i] + rng.randbytes(rng.choice([1, 3, 4, 64, 4096]))
    elif kind == "extra":
        data += [rng.randbytes(rng.choice([0, 1, 4, 256])) for _ in range(rng.choice([1, 1, 2, 5, 70]))]
    elif kind == "missing":
        if rng.random() < 0.5:
            data = []
        else:
            data.pop(rng.randrange(len(data)))
    elif kind == "shared":
        t = dict(rng.choice(descs))
        if type_ in ("query", "infer"):
            body["inputs"]["fz_twin"] = t
        else:
            body["outputs"].append({"tensor": t})
        if rng.random() < 0.75:  # as many frames as descriptors: the duplicate itself is the fault
            data.append(data[t["frame"]])
    elif kind == "tensorless":
        type_, body = rng.choice(tensorless)
        body = json_copy(body)
        data = [rng.randbytes(rng.choice([0, 1, 4, 256])) for _ in range(rng.choice([1, 1, 2, 3]))]
    else:
        raise ValueError(kind)
    return type_, body, data


def json_copy(obj: Any) -> Any:
    """A deep copy of a plain body (maps, lists, scalars, bytes)."""
    if isinstance(obj, dict):
        return {k: json_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_copy(v) for v in obj]
    return obj


def valid_query_parts(rng: random.Random) -> tuple[dict[str, Any], list[bytes]]:
    """A query body that decodes, and its data frames (non-zero bytes): one input, sometimes two."""
    n = rng.choice([1, 3, 8])
    kind = rng.choice(["model", "variant", "task"])
    kw = {"model": MLP} if kind == "model" else {"variant": MLP_VARIANT, "model": None} if kind == "variant" else \
        {"task": "digit-classification", "dataset": "digits", "model": None}
    data: list[bytes] = []
    inputs = {"x": ptensor(np.full((n, 64), 0.5, np.float32), data)}
    if rng.random() < 0.3:
        inputs["mask"] = ptensor(np.ones((n, 64), bool), data)
    return _query(inputs, kind=kind, **kw), data


def client_tensorless(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """Client messages without tensors, each valid on its own."""
    return [("status", {}), ("catalog", {}), ("catalog", {"model": MLP}),
            ("changes", {"source": f"fz-src-{rng.getrandbits(32):08x}", "entries": []}),
            ("artifact_chunk", {"sha256": "%064x" % rng.getrandbits(256), "offset": 0, "data": b"abc",
                                "total_bytes": 3})]


def gen_frames(kind: str) -> Gen:
    def gen(rng: random.Random, rid: str):
        body, data = valid_query_parts(rng)
        type_, body, data = mutate_frames(rng, kind, "query", body, data, client_tensorless(rng))
        return raw_msg(type_, body, rid, data), {"malformed"}

    gen.__name__ = f"gen_frames_{kind}"
    return gen


CLIENT_PHASE_A: dict[str, Gen] = {
    "random_bytes": gen_random_bytes, "truncated": gen_truncated, "non_map": gen_non_map,
    "envelope_keys": gen_envelope, "wrong_version": gen_wrong_version, "unknown_type": gen_unknown_type,
    "field_types": gen_field_types, "query_fields": gen_query_fields, "tensor_shapes": gen_tensor_shapes,
    "unknown_model": gen_unknown_model, "impossible_slo": gen_impossible_slo, "status": gen_status,
    **{f"frames_{kind}": gen_frames(kind) for kind in FRAME_MUTATIONS},
}
# Replication frames go last: if the master accepts a junk record the catalog breaks, and that must
# not hide what the other categories found. Valid queries and the final checks still run after them.
CLIENT_PHASE_B: dict[str, Gen] = {"changes_garbage": gen_changes, "artifact_chunk": gen_artifact_chunk}


# ---------------------------------------------------------------------------------------------------
# the client door driver: id-bearing messages in a window, id-less ones one per socket
# ---------------------------------------------------------------------------------------------------

@dataclass
class Outstanding:
    cat: str
    sent: float
    expect: set[str] | None
    check: Callable[[Frames], str | None] | None = None  # given the reply's frames
    frame: Frames = field(default_factory=list)  # the message sent, for evidence


class ClientDoor:
    def __init__(self, endpoint: str, report: Report, window: int = 32, anon_sockets: int = 4,
                 timeout_s: float = 5.0, pids: list[int] | None = None) -> None:
        self.ctx = zmq.Context.instance()
        self.endpoint = endpoint
        self.report = report
        self.window = window
        self.timeout_s = timeout_s
        self.pids = pids or []
        self.main = self._socket()
        self.anon: list[zmq.Socket] = [self._socket() for _ in range(anon_sockets)]
        self.anon_out: list[Outstanding | None] = [None] * anon_sockets
        self.anon_last_cat: list[str] = ["?"] * anon_sockets
        self.inflight: dict[str, Outstanding] = {}
        self.ids: dict[str, list] = {}  # rid -> [cat, replies, timed_out]
        self.unattributed = 0
        self.unattributed_examples: list[str] = []
        self.consecutive_timeouts = 0
        self.aborted: str | None = None

    def _socket(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        return s

    def close(self) -> None:
        self.main.close(0)
        for s in self.anon:
            s.close(0)

    # -- receiving ---------------------------------------------------------------------------------
    def _record(self, cat: str, out: Outstanding, frames: Frames, anon: bool) -> None:
        raw = parse_reply(frames)
        s = self.report.cats[cat]
        s.replies += 1
        if raw is None:
            s.bad_answer += 1
            s.note("reply is not a msgpack map")
            return
        body = raw.get("body") if isinstance(raw.get("body"), dict) else {}
        kind = raw.get("type")
        code = body.get("code") if kind == "error" else kind
        s.codes[str(code)] += 1
        if anon and raw.get("id") != "":
            s.anon_id_nonempty += 1
        if code == "internal":
            s.internal += 1
            s.note(f"internal: {str(body.get('reason'))[:200]}")
        if out.check is not None:
            problem = out.check(frames)
            if problem:
                s.bad_answer += 1
                s.note(problem)
        elif out.expect is not None and code not in out.expect:
            s.wrong_code += 1
            s.note(f"got {code} ({str(body.get('reason'))[:100]}), expected one of {sorted(out.expect)}; "
                   f"message {preview(out.frame, 120)}")

    def pump(self, timeout_ms: int) -> None:
        socks = [self.main, *self.anon]
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        for sock, _ in poller.poll(timeout_ms):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                raw = parse_reply(frames)
                if sock is self.main:
                    rid = raw.get("id") if raw else None
                    entry = self.ids.get(rid) if isinstance(rid, str) else None
                    if entry is None:
                        self.unattributed += 1
                        if len(self.unattributed_examples) < MAX_DETAILS:
                            self.unattributed_examples.append(preview(frames, 200))
                        continue
                    entry[1] += 1
                    if entry[1] > 1:
                        self.report.cats[entry[0]].duplicated += 1
                        continue
                    out = self.inflight.pop(rid, None)
                    if out is None:  # answered after its timeout
                        self.report.cats[entry[0]].late += 1
                        self.report.cats[entry[0]].unanswered -= 1
                        self.report.cats[entry[0]].replies += 1
                        continue
                    self.consecutive_timeouts = 0
                    self._record(entry[0], out, frames, anon=False)
                else:
                    i = self.anon.index(sock)
                    out = self.anon_out[i]
                    if out is None:
                        self.report.cats[self.anon_last_cat[i]].duplicated += 1
                        continue
                    self.anon_out[i] = None
                    self.consecutive_timeouts = 0
                    self._record(out.cat, out, frames, anon=True)
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for rid in [r for r, o in self.inflight.items() if now - o.sent > self.timeout_s]:
            out = self.inflight.pop(rid)
            self.report.cats[out.cat].unanswered += 1
            self.report.cats[out.cat].note(f"no reply to id {rid[:40]} within {self.timeout_s:g} s; "
                                           f"message {preview(out.frame)}")
            self.consecutive_timeouts += 1
        for i, out in enumerate(self.anon_out):
            if out is not None and now - out.sent > self.timeout_s:
                self.report.cats[out.cat].unanswered += 1
                self.report.cats[out.cat].note(f"no reply to an id-less message within {self.timeout_s:g} s; "
                                               f"message {preview(out.frame)}")
                self.anon_out[i] = None
                self.consecutive_timeouts += 1
                self.anon[i].close(0)  # a late reply must not be taken for the next frame's
                self.anon[i] = self._socket()

    # -- sending -----------------------------------------------------------------------------------
    def _send_on(self, sock: zmq.Socket, frames: Frames) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)  # one message, atomically: envelope + data frames
                return True
            except zmq.Again:
                self.pump(10)
        return False

    def send(self, cat: str, msg: bytes | Frames, expect: set[str] | None,
             check: Callable[[Frames], str | None] | None = None) -> None:
        """Send one message (one frame, or the envelope and its data frames); its one reply is awaited."""
        frame = as_frames(msg)
        rid = readable_id(frame)
        stats = self.report.cats[cat]
        if rid is not None and rid in self.ids:
            raise AssertionError(f"generator reused id {rid}")
        deadline = time.monotonic() + self.timeout_s * 2 + 5
        if rid is not None:
            while len(self.inflight) >= self.window and time.monotonic() < deadline:
                self.pump(5)
            if not self._send_on(self.main, frame):
                stats.note("could not send (socket full)")
                return
            stats.frames += 1
            self.ids[rid] = [cat, 0]
            self.inflight[rid] = Outstanding(cat, time.monotonic(), expect, check, frame)
        else:
            while all(o is not None for o in self.anon_out) and time.monotonic() < deadline:
                self.pump(5)
            free = [i for i, o in enumerate(self.anon_out) if o is None]
            if not free:
                stats.note("no free id-less lane")
                return
            i = free[0]
            if not self._send_on(self.anon[i], frame):
                stats.note("could not send (socket full)")
                return
            stats.frames += 1
            self.anon_out[i] = Outstanding(cat, time.monotonic(), expect, check, frame)
            self.anon_last_cat[i] = cat
        self.pump(0)

    def drain(self, grace_s: float = 0.5) -> None:
        deadline = time.monotonic() + self.timeout_s + 1
        while (self.inflight or any(self.anon_out)) and time.monotonic() < deadline:
            self.pump(20)
        end = time.monotonic() + grace_s  # late duplicates
        while time.monotonic() < end:
            self.pump(20)
        self._expire()

    def health(self) -> str | None:
        """Why the door cannot go on (a daemon died, the master stopped answering), or None."""
        dead = [p for p in self.pids if not embedded._alive(p)]
        if dead:
            return f"daemon process(es) {dead} died"
        if self.consecutive_timeouts >= 2 * self.window:
            probe = probe_status(self.endpoint, 5.0)
            if probe is None:
                return f"master stopped answering ({self.consecutive_timeouts} timeouts in a row, status unanswered)"
            self.consecutive_timeouts = 0
        return None


def probe_status(endpoint: str, timeout_s: float) -> dict[str, Any] | None:
    try:
        with Client(endpoint, timeout_s=timeout_s) as c:
            return c.status()
    except Exception:
        return None


def fresh_query(endpoint: str, ref: Reference, rng: random.Random, variant: str | None = MLP_VARIANT,
                timeout_s: float = 15.0) -> str | None:
    """A normal client's query on a fresh connection; None when answered like onnxruntime, else what went wrong."""
    kw = {"variant": variant} if variant else {"model": MLP, "latency_ms": 1000.0}
    with Client(endpoint, timeout_s=timeout_s) as c:
        return _checked_query(c, ref, rng, kw)


def valid_query_frame(ref: Reference, rng: random.Random, rid: str):
    start, x = ref.rows(rng)
    kind = rng.choice(["variant", "model"])
    kw = {"variant": MLP_VARIANT} if kind == "variant" else {"model": MLP, "latency_ms": 1000.0}
    return query_frames(rid, {"x": x}, **kw), (lambda frames: ref.check_reply(frames, start, len(x)))


def query_frames(rid: str, inputs: dict[str, np.ndarray], **slo: Any) -> Frames:
    """A valid query as the client library builds it: the envelope, then one data frame per input."""
    return [bytes(f) for f in protocol.encode(query_message(inputs, request_id=rid, **slo))]


def catalog_counts(catalog) -> tuple[int, int]:
    return len(catalog.store.models()), len(catalog.store.variants())


def check_catalog_readable(report: Report, endpoint: str, catalog, ref: Reference, rng: random.Random) -> None:
    st = probe_status(endpoint, 10.0)
    want_models, want_variants = catalog_counts(catalog)
    if st is None:
        report.check("catalog readable after (status answers, lists the models)", False, "status unanswered")
    else:
        m = st.get("master", {})
        report.check("catalog readable after (status answers, lists the models)",
                     m.get("models") == want_models and m.get("variants") == want_variants,
                     f"status lists {m.get('models')} models / {m.get('variants')} variants, catalog has "
                     f"{want_models} / {want_variants}")
    problem = fresh_query(endpoint, ref, rng)
    report.check("a fresh query works after", problem is None, problem or "")


# ---------------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------------

class Cluster:
    """A master + workers (embedded.up) under their own home, the catalog pushed; always taken down."""

    def __init__(self, catalog, home: Path, workers: int = 1, heartbeat_interval_s: float = 0.25) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog
        self.workers = workers
        self.hb = heartbeat_interval_s
        self.record: dict[str, Any] = {}

    def __enter__(self) -> Cluster:
        try:
            self.record = embedded.up(workers=self.workers, home=self.home, heartbeat_interval_s=self.hb)
            with Client(self.client_endpoint, timeout_s=30.0) as c:
                c.push(self.catalog.store, self.catalog.artifacts)
        except BaseException:
            embedded.down(self.home)
            raise
        return self

    def __exit__(self, *exc) -> None:
        embedded.down(self.home)

    @property
    def client_endpoint(self) -> str:
        return self.record["master"]["client_endpoint"]

    @property
    def worker_endpoint(self) -> str:
        return self.record["master"]["worker_endpoint"]

    @property
    def pids(self) -> list[int]:
        return [self.record["master"]["pid"]] + [w["pid"] for w in self.record["workers"]]

    def log_tail(self, name: str = "master.log", n: int = 4000) -> str:
        p = self.home / "run" / name
        return p.read_text(errors="replace")[-n:] if p.is_file() else ""

    def count_in_log(self, needle: str, name: str = "master.log") -> int:
        p = self.home / "run" / name
        return p.read_text(errors="replace").count(needle) if p.is_file() else 0


# ---------------------------------------------------------------------------------------------------
# door 1: the master's client endpoint
# ---------------------------------------------------------------------------------------------------

def fuzz_master_client(catalog, workdir: Path, frames: int, seed: int, ref: Reference, timeout_s: float = 5.0,
                       window: int = 32, max_wall_s: float = 900.0) -> Report:
    report = Report("master client endpoint")
    rng = random.Random(seed)
    phase_b = max(1, frames // 8)
    with Cluster(catalog, workdir / "client-door") as cluster:
        door = ClientDoor(cluster.client_endpoint, report, window=window, timeout_s=timeout_s, pids=cluster.pids)
        deadline = time.monotonic() + max_wall_s
        try:
            names_a, names_b = sorted(CLIENT_PHASE_A), sorted(CLIENT_PHASE_B)
            for i in range(frames):
                rid = f"fz-{seed}-{i}"
                if i % VALID_EVERY == VALID_EVERY - 1:
                    frame, check = valid_query_frame(ref, rng, rid)
                    door.send("valid_query" if i < frames - phase_b else "valid_query_after_B", frame, None, check)
                else:
                    cat = rng.choice(names_a if i < frames - phase_b else names_b)
                    gen = (CLIENT_PHASE_A | CLIENT_PHASE_B)[cat]
                    frame, expect = gen(rng, rid)
                    door.send(cat, frame, expect)
                if i % 500 == 0:
                    why = door.health()
                    if why or time.monotonic() > deadline:
                        door.aborted = why or f"wall-clock limit {max_wall_s:.0f} s reached"
                        report.info["aborted_at_frame"] = i
                        break
            door.drain()
            why = door.aborted or door.health()
        finally:
            door.close()
        total = sum(s.frames for s in report.cats.values())
        report.info.update(frames_sent=total, unattributed_replies=door.unattributed,
                           unattributed_examples=door.unattributed_examples,
                           master_tracebacks=cluster.count_in_log("Traceback"))
        report.check("all frames sent", total == frames and door.aborted is None,
                     f"sent {total} of {frames}; aborted: {door.aborted}")
        report.check("daemons alive", all(embedded._alive(p) for p in cluster.pids),
                     f"dead: {[p for p in cluster.pids if not embedded._alive(p)]}")
        unans = {k: s.unanswered for k, s in report.cats.items() if s.unanswered}
        report.check("every frame gets a reply", not unans, f"unanswered per category: {unans}")
        dups = {k: s.duplicated for k, s in report.cats.items() if s.duplicated}
        report.check("no frame gets two replies", not dups, f"duplicated: {dups}")
        report.check("replies echo the request id", door.unattributed == 0,
                     f"{door.unattributed} replies carry an id never sent (the readable id of an unanswered "
                     f"frame was not echoed); e.g. {door.unattributed_examples[:2]}")
        internal = {k: s.internal for k, s in report.cats.items() if s.internal and not k.startswith("valid")}
        report.check("no `internal` for user mistakes", not internal, f"internal per category: {internal}")
        wrong = {k: s.wrong_code for k, s in report.cats.items() if s.wrong_code}
        report.check("error codes as documented", not wrong,
                     "; ".join(f"{k}: {report.cats[k].wrong_code} e.g. {report.cats[k].details[:1]}"
                               for k in wrong))
        for cat, label in (("valid_query", "valid queries mixed in answered correctly"),
                           ("valid_query_after_B", "valid queries after the replication garbage answered correctly")):
            s = report.cats[cat]
            report.check(label, s.bad_answer == 0 and s.unanswered == 0 and s.replies > 0,
                         f"{s.bad_answer} wrong, {s.unanswered} unanswered of {s.frames}; e.g. {s.details[:3]}")
        check_catalog_readable(report, cluster.client_endpoint, catalog, ref, rng)
        if report.failures():
            report.info["master_log_tail"] = cluster.log_tail(n=2500)
    return report.finish()


# ---------------------------------------------------------------------------------------------------
# door 2: the master's worker endpoint
# ---------------------------------------------------------------------------------------------------

def _bad_register(rng: random.Random, wid: str) -> dict[str, Any]:
    hw = {"cores": 1, "memory_bytes": 1 << 30, "hostname": "fz"}
    body = {"worker_id": wid, "hardware": hw, "backends": ["onnxruntime-cpu"]}
    f, value = rng.choice([
        ("hardware", {"cores": "x"}), ("hardware", {"cores": -5}), ("hardware", {"cores": 2 ** 64 - 1}),
        ("hardware", {"cores": None}), ("hardware", {"cores": [4]}), ("hardware", {"cores": 1.5}),
        ("hardware", {"memory_bytes": "lots", "cores": 1}), ("hardware", {"cores": 1, "memory_bytes": -1}),
        ("hardware", ["cores", 4]), ("hardware", "big"), ("hardware", None),
        ("backends", "onnxruntime-cpu"), ("backends", [{"b": 1}]), ("backends", None), ("backends", 5),
        ("backends", [None]), ("worker_id", 5), ("worker_id", None), ("worker_id", ["w"]),
    ])
    body[f] = value
    return body


def _garbage_metrics(rng: random.Random) -> Any:
    return rng.choice([
        {"cores": "x"}, {"cores": -1}, {"cores": None}, {"cores": 2 ** 64 - 1}, {"free_cores": "x"},
        {"free_cores": [1]}, {"free_memory_bytes": "lots"}, {"free_memory_bytes": None},
        {"process_cpu_percent": "x"}, {"cpu_percent": {"a": 1}}, {"variants": [1, 2]}, {"variants": "v"},
        {"variants": {"fz/v": "loaded"}}, {"variants": {"fz/v": {"state": "loaded", "replicas": "x", "queue": "q"}}},
        {"variants": {"fz/v": {"state": "loaded", "queue": -5, "qps": "fast", "latency_ms": None}}},
        {"variants": {5: {}}}, [1, 2], "metrics", None, 5, {"x" * 3000: 1},
    ])


def valid_result_parts(rng: random.Random) -> tuple[dict[str, Any], list[bytes]]:
    """A `result` body that decodes, and its data frames (non-empty): labels and probabilities, sometimes
    with a list output between them."""
    n = rng.choice([1, 3, 8])
    data: list[bytes] = []
    outputs: list[dict[str, Any]] = [{"tensor": ptensor(np.arange(n, dtype=np.int64), data)},
                                     {"tensor": ptensor(np.full((n, 10), 0.1, np.float32), data)}]
    if rng.random() < 0.3:
        outputs.insert(1, {"list": [{"0": 0.5, "1": 0.5}] * n})
    return {"outputs": outputs, "timing": {"inference_ms": 1.0, "queue_ms": 0.1}}, data


def worker_tensorless(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Worker messages without tensors, each valid on its own (results without a tensor output first)."""
    return [("result", {"outputs": [], "timing": {}}),
            ("result", {"outputs": [{"list": [{"0": 1.0}]}], "timing": {"inference_ms": 1.0}}),
            ("heartbeat", {"worker_id": name, "metrics": {"cores": 1, "free_cores": 1}}),
            ("loaded", {"variant": "fz/none", "load_time_ms": 1.0}),
            ("fetch", {"sha256": "a" * 64, "offset": 0}),
            ("error", {"code": "internal", "reason": "fz"})]


def result_frames_msg(rng: random.Random, kind: str, name: str, rid: str) -> Frames:
    """A `result` from worker `name` whose data frames break the frame rules in one way of `kind`."""
    body, data = valid_result_parts(rng)
    type_, body, data = mutate_frames(rng, kind, "result", body, data, worker_tensorless(name))
    return raw_msg(type_, body, rid, data)


def garbage_limit(cluster: Cluster) -> int:
    """master.worker_garbage_limit as the cluster's master reads it (its generated config), else the default."""
    from infaas_cli.settings import MasterSettings, load_settings

    try:
        cfg = cluster.home / "run" / "infaas.toml"
        return int(load_settings(cfg if cfg.is_file() else None, env={}, home=cluster.home)[0]
                   .master.worker_garbage_limit)
    except Exception:
        return MasterSettings.worker_garbage_limit


def probe_worker_garbage_limit(cluster: Cluster, sock: zmq.Socket, name: str, report: Report, rng: random.Random,
                               extra: int = 5, timeout_s: float = 3.0) -> None:
    """A registered worker (`sock`, identity `name`, heartbeating) sends `result`s with broken data frames,
    one at a time: each is answered `malformed` with its id until master.worker_garbage_limit of them, then
    the worker is cut off: no more answers, and it leaves `status` at once (a worker that merely stopped
    heartbeating would stay listed, dead, for master.forget_dead_worker_s)."""
    cat = "result_frames_probe"
    st = report.cats[cat]
    limit = garbage_limit(cluster)
    heartbeat = valid_frame("heartbeat", {"worker_id": name, "metrics": {"cores": 1, "free_cores": 1}}, "hb")
    kinds = [FRAME_MUTATIONS[i % len(FRAME_MUTATIONS)] for i in range(limit + extra)]
    rng.shuffle(kinds)
    answered: list[tuple[str, Any, bool]] = []  # (kind, code, id echoed)
    per_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    late = other = 0

    def listed_alive() -> bool | None:
        stat = probe_status(cluster.client_endpoint, 10.0)
        if stat is None:
            return None
        return any(w.get("worker_id") == name and w.get("alive") for w in stat.get("workers", []))

    sock.send_multipart(heartbeat)
    time.sleep(0.05)
    alive_before = listed_alive()
    for i, kind in enumerate(kinds):
        rid = f"fzf-{i}"
        sock.send_multipart(heartbeat)  # keeps it alive: gone from status afterwards means cut off
        sock.send_multipart(result_frames_msg(rng, kind, name, rid))
        st.frames += 1
        if i >= limit:
            continue
        end = time.monotonic() + timeout_s
        got = False
        while not got and sock.poll(max(1, int((end - time.monotonic()) * 1000))):
            raw = parse_reply(sock.recv_multipart()) or {}
            if raw.get("id") != rid:
                other += 1
                continue
            got = True
            body = raw.get("body") if isinstance(raw.get("body"), dict) else {}
            code = body.get("code") if raw.get("type") == "error" else raw.get("type")
            answered.append((kind, code, True))
            per_kind[kind][str(code)] += 1
            st.replies += 1
            st.codes[str(code)] += 1
            if code == "internal":
                st.internal += 1
            if code != "malformed":
                st.wrong_code += 1
                st.note(f"{kind}: got {code} ({str(body.get('reason'))[:120]}), expected malformed")
        if not got:
            st.unanswered += 1
            st.note(f"{kind}: no reply to {rid} within {timeout_s:g} s (frame {i + 1} of the limit {limit})")
    end = time.monotonic() + 1.0  # past the limit: silence
    while sock.poll(max(1, int((end - time.monotonic()) * 1000))):
        raw = parse_reply(sock.recv_multipart()) or {}
        late += 1
        st.note(f"a reply after the cut-off: {raw.get('type')} {raw.get('id')!r}")
    alive_after = listed_alive()
    report.info["result_frames_probe"] = {
        "garbage_limit": limit, "sent": len(kinds), "answered": len(answered), "after_cutoff_replies": late,
        "other_replies": other, "listed_alive_before": alive_before, "listed_alive_after": alive_after,
        "codes_per_kind": {k: dict(v) for k, v in sorted(per_kind.items())}}
    report.check("multi-frame results: one `malformed` reply each, id echoed, up to the garbage limit",
                 len(answered) == limit and st.wrong_code == 0 and st.unanswered == 0,
                 f"{len(answered)} of {limit} answered; codes {dict(st.codes)}; e.g. {st.details[:3]}")
    report.check("past the garbage limit the worker is cut off (no reply, gone from status)",
                 late == 0 and alive_before is True and alive_after is False,
                 f"{late} replies after the cut-off; listed alive before {alive_before}, after {alive_after}")


def fuzz_master_worker_endpoint(catalog, workdir: Path, frames: int, seed: int, ref: Reference,
                                query_every: int = 25, max_wall_s: float = 600.0) -> Report:
    report = Report("master worker endpoint")
    rng = random.Random(seed + 1)
    ctx = zmq.Context.instance()
    with Cluster(catalog, workdir / "worker-endpoint-door") as cluster:
        ep = cluster.worker_endpoint

        def dealer(identity: str) -> zmq.Socket:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.IDENTITY, identity.encode())
            s.connect(ep)
            return s

        n_ident = [0]

        def fresh() -> tuple[str, zmq.Socket]:
            n_ident[0] += 1
            name = f"fzg-{seed}-{n_ident[0]}"
            return name, dealer(name)

        garbage = [fresh() for _ in range(16)]
        # Registered impostors (a backend no query can use), then sent garbage heartbeats.
        registered: list[tuple[str, zmq.Socket]] = []
        for k in range(4):
            name = f"fzr-{seed}-{k}" if k < 3 else f"fzf-{seed}"
            s = dealer(name)
            s.send_multipart(valid_frame("register", {"worker_id": name, "hardware": {"cores": 1,
                                                                                      "memory_bytes": 1 << 30},
                                                      "backends": ["fz-none"]}, f"reg-{k}"))
            registered.append((name, s))
        for name, s in registered:
            if s.poll(5000):
                s.recv_multipart()
        # First, on a fresh master: the garbage counter against multi-frame results from a registered worker.
        probe_name, probe_sock = registered.pop()
        try:
            probe_worker_garbage_limit(cluster, probe_sock, probe_name, report, rng)
        finally:
            probe_sock.close(0)
        client = Client(cluster.client_endpoint, timeout_s=5.0)
        queries_ok = queries_bad = timeouts_in_row = 0
        deadline = time.monotonic() + max_wall_s
        cats = ["random_bytes", "truncated", "non_map", "envelope_keys", "wrong_version", "unknown_type",
                "register_bad", "heartbeat_unregistered", "heartbeat_garbage", "result_unknown_id",
                "error_unknown_id", "fetch_bad", "loaded_unknown", "field_types",
                *(f"result_frames_{kind}" for kind in FRAME_MUTATIONS)]
        sent_ids: dict[str, str] = {}
        try:
            for i in range(frames):
                cat = rng.choice(cats)
                rid = f"fzw-{seed}-{i}"
                if i % 200 == 199:  # retire an identity, bring a fresh one
                    j = rng.randrange(len(garbage))
                    garbage[j][1].close(0)
                    garbage[j] = fresh()
                name, sock = rng.choice(garbage)
                if cat in ("random_bytes", "truncated", "non_map", "envelope_keys", "wrong_version"):
                    frame = {"random_bytes": gen_random_bytes, "truncated": gen_truncated, "non_map": gen_non_map,
                             "envelope_keys": gen_envelope, "wrong_version": gen_wrong_version}[cat](rng, rid)[0]
                elif cat == "unknown_type":
                    frame = raw_frame(rng.choice(["query", "status", "changes", "bogus", "infer", "load", "reply",
                                                  "x" * 3000]), {}, rid)
                elif cat == "register_bad":
                    frame = raw_frame("register", _bad_register(rng, name), rid)
                elif cat == "heartbeat_unregistered":
                    frame = raw_frame("heartbeat", {"worker_id": name, "metrics": {"cores": 1}}, rid)
                elif cat == "heartbeat_garbage":
                    name, sock = rng.choice(registered)
                    frame = raw_frame("heartbeat", {"worker_id": name, "metrics": _garbage_metrics(rng)}, rid)
                elif cat == "result_unknown_id":
                    if rng.random() < 0.5:
                        name, sock = rng.choice(registered)
                    frame = raw_frame("result", {"outputs": rng.choice([[], [{"tensor": 5}], None, "x"]),
                                                 "timing": rng.choice([{}, None, [1]])},
                                      rng.choice([rid, "", "x" * 3000]))
                elif cat == "error_unknown_id":
                    if rng.random() < 0.5:
                        name, sock = rng.choice(registered)
                    frame = raw_frame("error", {"code": rng.choice(["internal", "bogus", 5, None]),
                                                "reason": rng.choice(["r", None, ["x"]])}, rng.choice([rid, ""]))
                elif cat == "fetch_bad":
                    if rng.random() < 0.5:
                        name, sock = rng.choice(registered)
                    sha, off = rng.choice([(12345, 0), ("zz" * 32, 0), ("%064x" % rng.getrandbits(256), 0),
                                           ("../../etc/passwd", 0), (None, 0), ("a" * 64, -1),
                                           ("a" * 64, 2 ** 63 - 1), ("a" * 64, "0"), ("f" * 3000, 0)])
                    frame = raw_frame("fetch", {"sha256": sha, "offset": off}, rid)
                elif cat == "loaded_unknown":
                    if rng.random() < 0.5:
                        name, sock = rng.choice(registered)
                    frame = raw_frame("loaded", {"variant": rng.choice(["fz/none", 5, None, ["v"], MLP_VARIANT]),
                                                 "load_time_ms": rng.choice([1.0, "x", None])}, rid)
                elif cat.startswith("result_frames_"):  # a valid result body, broken data frames
                    if rng.random() < 0.5:
                        name, sock = rng.choice(registered)
                    frame = result_frames_msg(rng, cat[len("result_frames_"):], name, rid)
                else:
                    t = rng.choice(["register", "heartbeat", "result", "error", "loaded", "fetch"])
                    body = dict(_base_bodies(rng)[t])
                    body["worker_id"] = name
                    f = rng.choice(sorted(body))
                    body[f] = rng.choice(WRONG_VALUES)
                    if t == "register" and f not in ("hardware", "backends", "worker_id"):
                        body["hardware"] = {"cores": "x"}  # never a valid registration from a garbage identity
                    frame = auto_msg(t, body, rid)
                report.cats[cat].frames += 1
                sent_ids[rid] = cat
                try:
                    sock.send_multipart(as_frames(frame), zmq.NOBLOCK)
                except zmq.Again:
                    report.cats[cat].note("send would block")
                if i % 8 == 0:
                    _drain_sockets([s for _, s in garbage + registered], report, sent_ids)
                if i % query_every == query_every - 1:
                    problem = _one_query(client, ref, rng)
                    if problem:
                        queries_bad += 1
                        report.cats["valid_query"].note(f"after frame {i}: {problem}")
                    else:
                        queries_ok += 1
                    report.cats["valid_query"].frames += 1
                    timeouts_in_row = timeouts_in_row + 1 if problem and problem.startswith("timeout") else 0
                    if timeouts_in_row >= 5 or not embedded._alive(cluster.pids[0]):
                        # the invariant has failed already; more 5-s timeouts would only burn the budget
                        report.info["aborted_at_frame"] = i
                        report.info["aborted"] = "5 client queries in a row unanswered" \
                            if timeouts_in_row >= 5 else "master died"
                        break
                if time.monotonic() > deadline:
                    report.info["aborted_at_frame"] = i
                    break
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                _drain_sockets([s for _, s in garbage + registered], report, sent_ids)
                time.sleep(0.02)
        finally:
            client.close()
            for _, s in garbage + registered:
                s.close(0)
        vq = report.cats["valid_query"]
        vq.replies, vq.bad_answer = queries_ok + queries_bad, queries_bad
        report.info.update(valid_queries=queries_ok + queries_bad, valid_queries_bad=queries_bad,
                           master_tracebacks=cluster.count_in_log("Traceback"))
        report.check("master alive", embedded._alive(cluster.pids[0]), "the master process died")
        report.check("client queries answered correctly throughout", queries_bad == 0 and queries_ok > 0,
                     f"{queries_bad} of {queries_ok + queries_bad} failed; e.g. {vq.details[:3]}")
        st = probe_status(cluster.client_endpoint, 10.0)
        report.check("status works after", st is not None, "status unanswered")
        if st is not None:
            workers = st.get("workers", [])
            serving_garbage = [w.get("worker_id") for w in workers if str(w.get("worker_id", "")).startswith("fzg-")
                               and (w.get("state") == "serving" or w.get("alive"))]
            listed_garbage = [w.get("worker_id") for w in workers if str(w.get("worker_id", "")).startswith("fzg-")]
            report.info["status_workers"] = [(w.get("worker_id"), w.get("state")) for w in workers][:40]
            report.check("no garbage worker listed as serving", not serving_garbage,
                         f"{len(serving_garbage)} garbage identities serving (e.g. {serving_garbage[:5]}); "
                         f"{len(listed_garbage)} listed at all")
            real = [w for w in workers if w.get("worker_id") == "local-0"]
            report.check("the real worker still serving", bool(real) and real[0].get("state") == "serving",
                         f"local-0: {real[0].get('state') if real else 'not listed'}")
        report.check("catalog intact", st is not None and st.get("master", {}).get("models") ==
                     catalog_counts(catalog)[0], "")
        bad = {k: (s.wrong_code, s.internal) for k, s in report.cats.items()
               if k.startswith("result_frames_") and (s.wrong_code or s.internal)}
        report.check("multi-frame results answered `malformed` (or not at all, once cut off)", not bad,
                     "(wrong code, internal) per category: " + "; ".join(
                         f"{k}: {v} e.g. {report.cats[k].details[:1]}" for k, v in bad.items()))
        if report.failures():
            report.info["master_log_tail"] = cluster.log_tail(n=2500)
    return report.finish()


def _drain_sockets(socks: list[zmq.Socket], report: Report, sent_ids: dict[str, str]) -> None:
    for s in socks:
        while True:
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            raw = parse_reply(frames) or {}
            cat = sent_ids.get(raw.get("id")) if isinstance(raw.get("id"), str) else None
            body = raw.get("body") if isinstance(raw.get("body"), dict) else {}
            code = body.get("code") if raw.get("type") == "error" else raw.get("type")
            st = report.cats[cat or "unattributed_replies"]
            st.replies += 1
            st.codes[str(code)] += 1
            if code == "internal":
                st.internal += 1
            if cat is not None and cat.startswith("result_frames_") and code != "malformed":
                st.wrong_code += 1
                st.note(f"got {code} ({str(body.get('reason'))[:120]}), expected malformed")


def _one_query(client: Client, ref: Reference, rng: random.Random) -> str | None:
    kw = rng.choice([{"variant": MLP_VARIANT}, {"model": MLP, "latency_ms": 1000.0},
                     {"task": "digit-classification", "dataset": "digits", "min_accuracy": 0.97,
                      "latency_ms": 1000.0}])
    return _checked_query(client, ref, rng, kw)


def _checked_query(client: Client, ref: Reference, rng: random.Random, kw: dict) -> str | None:
    """One valid query of random reference rows: None when answered like onnxruntime, else what went wrong."""
    start, x = ref.rows(rng)
    try:
        r = client.query({"x": x}, **kw)
    except QueryFailed as exc:
        return f"query failed: {exc.code}: {str(exc)[:150]}"
    except Exception as exc:
        # a timed-out client's late replies would confuse the next query: this one is stored and ignored
        return f"timeout/{type(exc).__name__}: {str(exc)[:150]}"
    return ref.compare(r.variant, start, len(x), r.outputs)


# ---------------------------------------------------------------------------------------------------
# door 3: a worker, with this process as its master
# ---------------------------------------------------------------------------------------------------

def real_spec(catalog, variant: str) -> dict[str, Any]:
    """The spec the master sends with load/infer: the master's own variant_spec run against the catalog."""
    try:
        import msgspec
        from infaas_daemons.master.state import CatalogView

        return msgspec.to_builtins(CatalogView(catalog.store, None).variant_spec(variant))
    except Exception:
        pass
    try:
        from infaas_daemons.master.daemon import Master

        fake = types.SimpleNamespace(_specs={}, store=catalog.store, model=catalog.store.model)
        return dict(Master.variant_spec(fake, variant))
    except Exception:  # the daemon moved on: build the spec from its documented fields
        from infaas_cli.catalog.listings import pick_profile
        from infaas_cli.catalog.records import VariantRecord

        v = catalog.store.get(VariantRecord, variant)
        m = catalog.store.model(v.model)
        profile = pick_profile(v, [p for p in catalog.store.profiles(v.model) if p.variant == variant])
        return {"name": variant, "backend": v.backend, "recipe": v.recipe, "threads": v.threads,
                "peak_memory_bytes": profile.peak_memory_bytes if profile else 0, "max_batch": v.max_batch,
                "batch_dim": m.batch_dim, "artifact_sha256": v.artifact_sha256, "inputs": m.inputs,
                "latency_ms": {b: s["p95_ms"] for b, s in profile.batches.items()} if profile else {}}


class FakeMaster:
    """A ROUTER playing the master for one real worker process."""

    def __init__(self, catalog, home: Path, report: Report, heartbeat_interval_s: float = 0.25) -> None:
        self.catalog = catalog
        self.report = report
        self.hb = heartbeat_interval_s
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.identity = b"fz"
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "worker.log"
        self.proc: subprocess.Popen | None = None
        self.heartbeats: list[float] = []
        self.registers = 0
        self.fetches = 0
        self.loaded: list[str] = []
        self.infers: dict[str, list] = {}  # rid -> [cat, replies, sent_at, expect, check, timed_out]
        self.other: dict[str, str] = {}  # rid -> cat (frames that need no reply)
        self.unattributed = 0

    def start(self, timeout_s: float = 30.0) -> None:
        env = {**os.environ, "INFAAS_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infaas_cli", "worker", "--master-endpoint", f"tcp://127.0.0.1:{self.port}",
                 "--worker-id", "fz", "--cache-dir", str(self.home / "cache"),
                 "--heartbeat-interval-s", str(self.hb)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.registers and time.monotonic() < deadline:
            self.pump(50)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited at start; see {self.log_path}")
        if not self.registers:
            raise RuntimeError(f"the worker did not register within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close(0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, msg: bytes | Frames, timeout_s: float = 5.0) -> bool:
        """One message to the worker: its identity, then the envelope and the data frames."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.sock.send_multipart([self.identity, *as_frames(msg)], zmq.NOBLOCK)
                return True
            except zmq.Again:
                self.pump(10)
            except zmq.ZMQError:  # EHOSTUNREACH: not connected (yet / any more)
                self.pump(50)
        return False

    def pump(self, timeout_ms: int) -> None:
        if not self.sock.poll(timeout_ms):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_frame(frames[0], frames[1:])

    def _on_frame(self, identity: bytes, message: Frames) -> None:
        """One message from the worker (after its identity): the envelope, then the data frames."""
        raw = parse_reply(message) if message else None
        if raw is None:
            self.report.cats["worker_sent_garbage"].frames += 1
            return
        t, rid, body = raw.get("type"), raw.get("id"), raw.get("body") if isinstance(raw.get("body"), dict) else {}
        if t == "register":
            self.identity = identity
            self.registers += 1
            self.sock.send_multipart([identity, *valid_frame("registered", {"heartbeat_interval_s": self.hb}, rid)])
            return
        if t == "heartbeat":
            self.heartbeats.append(time.monotonic())
            return
        if t == "fetch":
            self.fetches += 1
            self._serve_fetch(identity, rid, body)
            return
        if t == "loaded":
            self.loaded.append(str(body.get("variant")))
            return
        entry = self.infers.get(rid) if isinstance(rid, str) else None
        if entry is None:
            cat = self.other.get(rid) if isinstance(rid, str) else None
            st = self.report.cats[cat or "unattributed_replies"]
            st.replies += 1
            code = body.get("code") if t == "error" else t
            st.codes[str(code)] += 1
            if code == "internal":
                st.internal += 1
                st.note(f"internal: {str(body.get('reason'))[:200]}")
            if cat is None:
                self.unattributed += 1
            return
        cat, n, sent, expect, check, timed_out, _ = entry
        st = self.report.cats[cat]
        entry[1] += 1
        if entry[1] > 1:
            st.duplicated += 1
            st.note(f"second reply ({t} {body.get('code')}) for infer {rid[:40]}")
            return
        st.replies += 1
        if timed_out:
            st.late += 1
            st.unanswered -= 1
        code = body.get("code") if t == "error" else t
        st.codes[str(code)] += 1
        if code == "internal":
            st.internal += 1
            st.note(f"internal: {str(body.get('reason'))[:200]}")
        if check is not None:
            problem = check(message)
            if problem:
                st.bad_answer += 1
                st.note(problem)
        elif expect is not None and code not in expect:
            st.wrong_code += 1
            st.note(f"got {code} ({str(body.get('reason'))[:120]}), expected {sorted(expect)}; "
                    f"message {preview(entry[6], 120)}")

    def _serve_fetch(self, identity: bytes, rid: Any, body: dict[str, Any]) -> None:
        sha, offset = body.get("sha256"), body.get("offset", 0)
        path = None
        if isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) \
                and self.catalog.artifacts.has(sha):
            path = self.catalog.artifacts.path(sha)
        if path is None or not isinstance(offset, int) or offset < 0:
            # As helpful as a master can be: the sha is echoed so the worker can fail what waits on it.
            extra = {"sha256": sha} if isinstance(sha, str) and len(sha) <= 128 else {}
            reply = [bytes(f) for f in protocol.encode(protocol.error(
                "not_found", f"artifact {str(sha)[:16]} is not here", rid if isinstance(rid, str) else "", **extra))]
        else:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(1 << 20)
            reply = valid_frame("artifact_chunk", {"sha256": sha, "offset": offset, "data": data,
                                                   "total_bytes": path.stat().st_size}, rid)
        try:
            self.sock.send_multipart([identity, *reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def send_infer(self, cat: str, msg: bytes | Frames, expect: set[str] | None, check=None) -> None:
        """A message that must get exactly one reply (an infer, or any message a worker must answer)."""
        frame = as_frames(msg)
        rid = readable_id(frame)
        self.report.cats[cat].frames += 1
        if rid is None:
            self.send(frame)
            return
        self.infers[rid] = [cat, 0, time.monotonic(), expect, check, False, frame]
        if not self.send(frame):
            self.report.cats[cat].note("could not send")

    def send_other(self, cat: str, msg: bytes | Frames) -> None:
        frame = as_frames(msg)
        rid = readable_id(frame)
        self.report.cats[cat].frames += 1
        if rid is not None:
            self.other[rid] = cat
        self.send(frame)

    def outstanding(self) -> int:
        return sum(1 for e in self.infers.values() if e[1] == 0 and not e[5])

    def expire(self, timeout_s: float) -> None:
        now = time.monotonic()
        for rid, e in self.infers.items():
            if e[1] == 0 and not e[5] and now - e[2] > timeout_s:
                e[5] = True
                self.report.cats[e[0]].unanswered += 1
                self.report.cats[e[0]].note(f"no reply to infer {rid[:40]} within {timeout_s:g} s; "
                                            f"frame {preview(e[6])}")

    def max_heartbeat_gap(self, since: float) -> float:
        beats = [since] + [b for b in self.heartbeats if b >= since] + [time.monotonic()]
        return max(b - a for a, b in zip(beats, beats[1:]))


def _infer_body(spec: Any, inputs: Any, variant: Any = None, deadline_ms: Any = None) -> dict[str, Any]:
    name = spec.get("name") if isinstance(spec, dict) else "fz/none"
    return {"variant": name if variant is None else variant, "inputs": inputs, "deadline_ms": deadline_ms,
            "spec": spec}


def _bad_spec(rng: random.Random, good: dict[str, Any]) -> tuple[Any, str]:
    spec = dict(good)
    spec["name"] = f"fz/bad-{rng.getrandbits(20):05x}"  # a name of its own: a bad spec must not poison others
    f, value = rng.choice([
        ("artifact_sha256", 12345), ("artifact_sha256", "zz" * 32), ("artifact_sha256", ""),
        ("artifact_sha256", "f" * 3000), ("artifact_sha256", None), ("artifact_sha256", ["a" * 64]),
        ("artifact_sha256", "../../etc/passwd"), ("artifact_sha256", "%064x" % rng.getrandbits(256)),
        ("threads", 0), ("threads", -1), ("threads", 10 ** 6), ("threads", "x"), ("max_batch", 0),
        ("max_batch", -1), ("max_batch", "x"), ("batch_dim", 5), ("batch_dim", "sideways"), ("backend", "nope"),
        ("backend", None), ("recipe", 5), ("inputs", "x"), ("inputs", [{"bogus": 1}]), ("inputs", None),
        ("inputs", [5]), ("latency_ms", {"x": "y"}), ("latency_ms", [1]), ("peak_memory_bytes", 2 ** 64 - 1),
        ("peak_memory_bytes", "lots"), ("name", 5), ("name", None), ("name", ["n"]),
    ])
    spec[f] = value
    if rng.random() < 0.1:
        return rng.choice([None, "spec", 5, [spec], {}]), "not_a_map"
    return spec, f


def fuzz_worker(catalog, workdir: Path, frames: int, seed: int, ref: Reference, timeout_s: float = 10.0,
                window: int = 16, max_wall_s: float = 600.0) -> Report:
    report = Report("worker")
    rng = random.Random(seed + 2)
    good = real_spec(catalog, MLP_VARIANT)
    victim = LOGREG_VARIANT  # fails to load first, then must load and serve
    victim_good = real_spec(catalog, victim)
    fm = FakeMaster(catalog, workdir / "worker-door", report)
    try:
        fm.start()
        t_registered = time.monotonic()

        def valid_infer(rid: str, spec: dict[str, Any], cat: str) -> None:
            start, x = ref.rows(rng)
            fm.send_infer(cat, infer_msg(spec, x, rid), None,
                          lambda frames, s=start, n=len(x), name=spec["name"]: _check_result(frames, ref, name, s, n))

        def wait_all(limit_s: float) -> None:
            end = time.monotonic() + limit_s
            while fm.outstanding() and time.monotonic() < end:
                fm.pump(20)
                fm.expire(timeout_s)

        # 1. a failed load answers the queries held for it (the victim's first specs are broken)
        for k, bad_sha in enumerate(["%064x" % rng.getrandbits(256), "zz-not-hex", 12345]):
            spec = {**victim_good, "artifact_sha256": bad_sha}
            x = ref.x[:1]
            fm.send_infer("victim_failed_load", infer_msg(spec, x, f"victim-bad-{k}", valid=False),
                {"not_found", "bad_request", "checksum", "unavailable", "invalid_input", "internal"})
            wait_all(timeout_s + 1)
        fm.send_other("victim_failed_load", raw_frame("load", {"variant": victim, "spec": {
            **victim_good, "artifact_sha256": "%064x" % rng.getrandbits(256)}}, "victim-bad-load"))
        wait_all(2.0)

        # 2. the fuzz proper, valid infers of the mlp mixed in
        cats = ["random_bytes", "truncated", "non_map", "envelope_keys", "wrong_version", "unknown_type",
                "infer_bad_spec", "infer_bad_tensors", "infer_fields", "load_bad", "unload_garbage",
                "chunk_garbage", "error_garbage", "field_types", *(f"infer_frames_{k}" for k in FRAME_MUTATIONS)]
        deadline = time.monotonic() + max_wall_s
        for i in range(frames):
            rid = f"fzk-{seed}-{i}"
            while fm.outstanding() >= window and time.monotonic() < deadline:
                fm.pump(5)
                fm.expire(timeout_s)
            if i % VALID_EVERY == VALID_EVERY - 1:
                valid_infer(rid, good, "valid_infer")
            else:
                cat = rng.choice(cats)
                _worker_frame(fm, rng, cat, rid, good, ref)
            fm.pump(0)
            if i % 200 == 0:
                fm.expire(timeout_s)
                if not fm.alive() or time.monotonic() > deadline:
                    report.info["aborted_at_frame"] = i
                    break
        wait_all(timeout_s + 1)

        # 3. the victim loads for real now and serves
        fm.send_other("victim_recovers", valid_frame("load", {"variant": victim, "spec": victim_good}, "victim-load"))
        for k in range(3):
            start, x = ref.rows(rng)
            fm.send_infer("victim_recovers", infer_msg(victim_good, x, f"victim-ok-{k}"), None,
                          lambda frames, s=start, n=len(x): _check_result(frames, ref, victim, s, n))
        valid_infer(f"fzk-{seed}-final", good, "valid_infer")
        wait_all(timeout_s + 1)
        end = time.monotonic() + 1.0  # late duplicates and a last heartbeat
        while time.monotonic() < end:
            fm.pump(20)
        fm.expire(timeout_s)
        gap = fm.max_heartbeat_gap(t_registered)
        report.info.update(heartbeats=len(fm.heartbeats), max_heartbeat_gap_s=round(gap, 3),
                           registers=fm.registers, fetches=fm.fetches, loaded=sorted(set(fm.loaded)),
                           unattributed_replies=fm.unattributed,
                           worker_tracebacks=fm.log_path.read_text(errors="replace").count("Traceback"))
        report.check("worker alive", fm.alive(), f"exit code {fm.proc.returncode if fm.proc else None}")
        report.check("keeps heartbeating", gap <= max(2.0, 8 * fm.hb),
                     f"longest gap between heartbeats {gap:.2f} s (interval {fm.hb} s)")
        unans = {k: s.unanswered for k, s in report.cats.items() if s.unanswered}
        report.check("every infer gets a reply", not unans, f"unanswered per category: {unans}")
        dups = {k: s.duplicated for k, s in report.cats.items() if s.duplicated}
        report.check("no infer gets two replies", not dups,
                     "; ".join(f"{k}: {n} e.g. {report.cats[k].details[:2]}" for k, n in dups.items()))
        vf = report.cats["victim_failed_load"]
        report.check("a failed load answers its held queries with an error",
                     vf.replies >= 3 and vf.unanswered == 0 and vf.codes.get("result", 0) == 0,
                     f"victim: {vf.replies} replies of 3, codes {dict(vf.codes)}")
        vr = report.cats["victim_recovers"]
        report.check("a failed load does not wedge the variant (later valid load + infer works)",
                     vr.replies == 3 and vr.bad_answer == 0 and vr.unanswered == 0,
                     f"{vr.replies} of 3 answered, {vr.bad_answer} wrong; {vr.details[:2]}")
        vi = report.cats["valid_infer"]
        report.check("valid infers mixed in answered correctly", vi.bad_answer == 0 and vi.replies > 0,
                     f"{vi.bad_answer} of {vi.frames} wrong; e.g. {vi.details[:3]}")
        internal = {k: s.internal for k, s in report.cats.items() if s.internal and k != "victim_failed_load"}
        report.check("no `internal` for a malformed request", not internal, f"internal per category: {internal}")
        if report.failures():
            report.info["worker_log_tail"] = fm.log_path.read_text(errors="replace")[-2500:]
    finally:
        fm.stop()
    return report.finish()


def _check_result(frames: Frames, ref: Reference, variant: str, start: int, n: int) -> str | None:
    raw = parse_reply(frames) or {}
    if raw.get("type") != "result":
        body = raw.get("body") if isinstance(raw.get("body"), dict) else {}
        return f"{variant}: answered {raw.get('type')} {body.get('code')}: {str(body.get('reason'))[:150]}"
    try:
        _, outputs = decoded_outputs(frames)  # valid protocol: frames checked against the descriptors
    except Exception as exc:
        return f"result does not decode: {type(exc).__name__}: {exc}"
    return ref.compare(variant, start, n, outputs)


def infer_msg(spec: Any, x: np.ndarray, rid: str, valid: bool = True) -> Frames:
    """An infer of `x` (input "x", one data frame); `valid` False packs it by hand (a spec the encoder refuses)."""
    data: list[bytes] = []
    body = _infer_body(spec, {"x": ptensor(x, data)})
    return valid_frame("infer", body, rid, data) if valid else raw_msg("infer", body, rid, data)


def master_tensorless() -> list[tuple[str, dict[str, Any]]]:
    """Master -> worker messages without tensors, each valid on its own and harmless if it were taken."""
    return [("unload", {"variant": "fz/none"}), ("registered", {"heartbeat_interval_s": 0.25}),
            ("artifact_chunk", {"sha256": "a" * 64, "offset": 0, "data": b"", "total_bytes": 0})]


def _worker_frame(fm: FakeMaster, rng: random.Random, cat: str, rid: str, good: dict[str, Any],
                  ref: Reference) -> None:
    data1: list[bytes] = []
    x1 = {"x": ptensor(ref.x[:1], data1)}  # its one data frame: data1
    anyerr = USER_ERRORS
    if cat in ("random_bytes", "truncated", "non_map", "envelope_keys", "wrong_version"):
        gen = {"random_bytes": gen_random_bytes, "truncated": gen_truncated, "non_map": gen_non_map,
               "envelope_keys": gen_envelope, "wrong_version": gen_wrong_version}[cat]
        fm.send_other(cat, gen(rng, rid)[0])
    elif cat == "unknown_type":
        fm.send_other(cat, raw_frame(rng.choice(["query", "status", "bogus", "heartbeat", "register", "x" * 3000,
                                                 "fetch", "reply"]), {}, rid))
    elif cat == "infer_bad_spec":
        spec, _ = _bad_spec(rng, good)
        fm.send_infer(cat, raw_msg("infer", _infer_body(spec, x1), rid, data1), anyerr)
    elif cat == "infer_bad_tensors":
        frames, _ = gen_tensor_shapes(rng, rid)
        if b"\x91" * 1000 in frames[0]:  # the 1000-deep shape, spliced into an infer
            body = _infer_body(good, {"x": {"dtype": "float32", "shape": NEST_MARKER, "frame": 0}})
            fm.send_infer(cat, nested_shape_frame(rid, 1000, "infer", body), anyerr)
            return
        inputs = parse_reply(frames)["body"]["inputs"]
        fm.send_infer(cat, raw_msg("infer", _infer_body(good, inputs), rid, frames[1:]), anyerr)
    elif cat.startswith("infer_frames_"):  # a valid infer, broken data frames: one `malformed` reply
        data: list[bytes] = []
        body = _infer_body(good, {"x": ptensor(ref.x[:rng.choice([1, 3, 8])], data)})
        if rng.random() < 0.3:
            body["inputs"]["mask"] = ptensor(np.ones((1, 64), bool), data)
        t, body, data = mutate_frames(rng, cat[len("infer_frames_"):], "infer", body, data, master_tensorless())
        fm.send_infer(cat, raw_msg(t, body, rid, data), {"malformed"})
    elif cat == "infer_fields":
        f, value = rng.choice([("deadline_ms", "soon"), ("deadline_ms", -5), ("deadline_ms", [1]),
                               ("deadline_ms", 2 ** 64 - 1), ("deadline_ms", float("nan")), ("deadline_ms", 1e-9),
                               ("variant", 5), ("variant", None), ("variant", ["v"]), ("inputs", None),
                               ("inputs", []), ("inputs", {}), ("inputs", {"x": 5}), ("inputs", {"wrong": x1["x"]}),
                               ("spec", None), ("spec", {})])
        body = _infer_body(good, x1)
        body[f] = value
        expect = anyerr
        if f == "deadline_ms" and value == 1e-9:
            expect = {"overloaded", "result"}
        fm.send_infer(cat, auto_msg("infer", body, rid), expect)
    elif cat == "load_bad":
        spec, _ = _bad_spec(rng, good)
        body: dict[str, Any] = {"variant": spec.get("name") if isinstance(spec, dict) else "fz/none", "spec": spec}
        if rng.random() < 0.3:
            body = {"variant": good["name"], "spec": good, "replicas": rng.choice([-1, 0, "x", 2 ** 63, None, [2]])}
        fm.send_other(cat, raw_frame("load", body, rid))
    elif cat == "unload_garbage":
        fm.send_other(cat, raw_frame("unload", {"variant": rng.choice(["fz/none", 5, None, ["v"], {"v": 1},
                                                                       "x" * 3000])}, rid))
    elif cat == "chunk_garbage":
        body = {"sha256": rng.choice([12345, "zz", None, ["a"], {"s": 1}, "%064x" % rng.getrandbits(256)]),
                "offset": rng.choice([0, -1, "0", None, 2 ** 63]), "data": rng.choice([b"abc", "abc", None, 5]),
                "total_bytes": rng.choice([3, -1, None, "x"])}
        fm.send_other(cat, raw_frame("artifact_chunk", body, rid))
    elif cat == "error_garbage":
        body = {"code": rng.choice(["not_found", "internal", 5, None]), "reason": rng.choice(["r", None, [1]]),
                "sha256": rng.choice([None, {"s": 1}, ["a"], "a" * 64, 5]),
                "worker_id": rng.choice([None, "someone-else", 5, ["fz"]])}
        fm.send_other(cat, raw_frame("error", body, rid))
    else:  # field_types on every master -> worker message
        t = rng.choice(["infer", "load", "unload", "artifact_chunk", "registered", "error"])
        base = {"infer": _infer_body(good, x1), "load": {"variant": good["name"], "spec": good},
                "unload": {"variant": "fz/none"},
                "artifact_chunk": {"sha256": "a" * 64, "offset": 0, "data": b"", "total_bytes": 0},
                "registered": {"heartbeat_interval_s": 0.25}, "error": {"code": "internal", "reason": "r"}}[t]
        body = dict(base)
        f = rng.choice(sorted(body))
        body[f] = rng.choice(WRONG_VALUES)
        if t == "infer" and f == "variant":
            body["spec"] = {**good, "name": f"fz/ft-{rng.getrandbits(16):04x}"}  # keep the real variant clean
        if t == "unload" or (t == "load" and f != "spec"):
            body["variant"] = "fz/none" if f != "variant" else body["variant"]
            if t == "load":
                body["spec"] = {**good, "name": "fz/none-load", "artifact_sha256": "%064x" % rng.getrandbits(256)}
        frame = auto_msg(t, body, rid)
        if t == "infer":
            fm.send_infer("field_types", frame, anyerr)
        else:
            fm.send_other("field_types", frame)


# ---------------------------------------------------------------------------------------------------
# door 4: a slow reader's burst
# ---------------------------------------------------------------------------------------------------

def slow_reader(catalog, workdir: Path, queries: int, seed: int, ref: Reference, rcvhwm: int = 100,
                drain_s: float = 120.0, quiet_s: float = 20.0) -> Report:
    report = Report("slow reader burst")
    rng = random.Random(seed + 3)
    with Cluster(catalog, workdir / "slow-reader") as cluster:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SNDTIMEO, 10_000)
        sock.connect(cluster.client_endpoint)
        # Warm the variant first, so the burst measures the queueing and not one load.
        problem = fresh_query(cluster.client_endpoint, ref, rng, LOGREG_VARIANT)
        report.info["warmup"] = problem or "ok"
        sent: dict[str, int] = {}
        t0 = time.monotonic()
        try:
            for i in range(queries):
                start = i % (len(ref.x) - 1)
                rid = f"sr-{seed}-{i}"
                frames = query_frames(rid, {"x": ref.x[start:start + 1]}, variant=LOGREG_VARIANT,
                                      latency_ms=rng.choice([None, 50.0, 1000.0]))
                try:
                    sock.send_multipart(frames)
                except zmq.Again:
                    report.info["send_blocked_at"] = i
                    break
                sent[rid] = start
            report.info["send_s"] = round(time.monotonic() - t0, 2)
            answers: dict[str, int] = collections.Counter()
            codes: collections.Counter = collections.Counter()
            wrong = 0
            deadline = time.monotonic() + drain_s
            last = time.monotonic()
            while len(answers) < len(sent) and time.monotonic() < deadline and time.monotonic() - last < quiet_s:
                if not sock.poll(200):
                    continue
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    last = time.monotonic()
                    raw = parse_reply(frames) or {}
                    rid = raw.get("id")
                    if rid not in sent:
                        codes["unattributed"] += 1
                        continue
                    answers[rid] += 1
                    if answers[rid] > 1:
                        continue
                    body = raw.get("body") if isinstance(raw.get("body"), dict) else {}
                    code = body.get("code") if raw.get("type") == "error" else raw.get("type")
                    codes[str(code)] += 1
                    if raw.get("type") == "reply" and (len(answers) % 97 == 0):
                        s = sent[rid]
                        p = ref.check_reply(frames, s, 1)
                        if p:
                            wrong += 1
                            report.cats["burst"].note(p)
            report.info["drain_s"] = round(time.monotonic() - t0, 2)
        finally:
            sock.close(0)
        st = report.cats["burst"]
        st.frames = len(sent)
        st.replies = sum(1 for v in answers.values() if v)
        st.unanswered = len(sent) - st.replies
        st.duplicated = sum(v - 1 for v in answers.values() if v > 1)
        st.codes = codes
        st.internal = codes.get("internal", 0)
        st.bad_answer = wrong
        report.check("all queries sent", len(sent) == queries, f"sent {len(sent)} of {queries}")
        report.check("every query answered or refused explicitly (none silently lost)", st.unanswered == 0,
                     f"{st.unanswered} of {len(sent)} got no reply within {drain_s:.0f} s "
                     f"(quiet {quiet_s:.0f} s); codes {dict(codes)}")
        report.check("no query answered twice", st.duplicated == 0, f"{st.duplicated} duplicates")
        report.check("no `internal` under load", st.internal == 0, f"{st.internal} internal")
        report.check("answers are correct", wrong == 0, f"{wrong} sampled answers wrong: {st.details[:2]}")
        report.check("master alive", embedded._alive(cluster.pids[0]), "")
        after = probe_status(cluster.client_endpoint, 10.0)
        report.check("master answers afterwards", after is not None, "status unanswered after the burst")
        report.info["master_dropped_logs"] = cluster.count_in_log("could not send")
    return report.finish()


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------

def build_catalog_at(path: Path):
    from support import build_catalog

    return build_catalog(path)


def run_all(args: argparse.Namespace) -> list[Report]:
    ref = Reference()
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="infaas-fuzz-") as tmp:
        tmp = Path(tmp)
        catalog = build_catalog_at(tmp / "catalog")
        try:
            if args.frames_client:
                reports.append(fuzz_master_client(catalog, tmp, args.frames_client, args.seed, ref,
                                                  timeout_s=args.timeout_s))
                print(reports[-1].table(), flush=True)
            if args.frames_worker_endpoint:
                reports.append(fuzz_master_worker_endpoint(catalog, tmp, args.frames_worker_endpoint, args.seed, ref))
                print(reports[-1].table(), flush=True)
            if args.frames_worker:
                reports.append(fuzz_worker(catalog, tmp, args.frames_worker, args.seed, ref,
                                           timeout_s=max(args.timeout_s, 5.0)))
                print(reports[-1].table(), flush=True)
            if args.slow_reader:
                reports.append(slow_reader(catalog, tmp, args.slow_reader, args.seed, ref))
                print(reports[-1].table(), flush=True)
        finally:
            catalog.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames-client", type=int, default=100_000)
    p.add_argument("--frames-worker-endpoint", type=int, default=20_000)
    p.add_argument("--frames-worker", type=int, default=20_000)
    p.add_argument("--slow-reader", type=int, default=20_000, help="queries in the slow reader's burst (0: skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=5.0, help="per-frame reply timeout")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    reports = run_all(args)
    failed = {r.door: r.failures() for r in reports if r.failures()}
    result = {"seed": args.seed, "protocol_version": V(), "wall_s": round(time.monotonic() - t0, 1),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "doors": [r.to_dict() for r in reports], "failed_invariants": failed}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{sum(len(f) for f in failed.values())} invariant(s) failed" if failed else "\nall invariants hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
