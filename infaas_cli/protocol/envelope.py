"""The infaas wire envelope: `{v, type, id, body}` over msgpack, typed bodies, tensor data frames, error codes.

No sockets here. A message on the wire is a multipart ZeroMQ message: the first frame holds a msgpack
map ``{"v": PROTOCOL_VERSION, "type": TYPE, "id": REQUEST_ID, "body": {...}}``; each type's body is a
structure in infaas_cli.protocol.messages, validated with its bounds when the frame is decoded. The
frames after it, if any, are raw tensor bytes: each Tensor descriptor in the body names its frame, and
decoding checks every frame against its descriptor (so a daemon may forward frames it never read).
The protocol is documented in docs/protocol.md; a test keeps the two in step.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack
import msgspec

from infaas_cli.errors import ERROR_CODES, ProtocolError  # noqa: F401  (re-exported; defined with every error)
from infaas_cli.protocol.messages import BODIES, DECODERS, MAX_TEXT, Body, ErrorBody, Tensor, struct_fields

#: Bump on any incompatible change to the envelope or a message body (say so in CHANGELOG.md).
#: 2: every body is a typed structure; unknown fields are refused; `load`/`infer` carry a `spec`.
#: 3: tensor bytes travel as their own frames after the envelope; a Tensor is a descriptor naming its frame.
PROTOCOL_VERSION = 3

#: Message types and the body fields each one requires (derived from the typed bodies).
MESSAGE_TYPES: dict[str, tuple[str, ...]] = {
    t: tuple(name for name, _, required in struct_fields(cls) if required) for t, cls in BODIES.items()}


@dataclass(slots=True)
class Message:
    type: str
    body: Any  # the type's Body structure (a dict is converted, and checked, when encoded)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    v: int = PROTOCOL_VERSION
    #: The tensor data frames after the envelope, in the order the body's descriptors index them: bytes,
    #: memoryviews, numpy buffers to send; zmq.Frame (or bytes) as received.
    frames: list = field(default_factory=list)


def new_id() -> str:
    return uuid.uuid4().hex


class _Envelope(msgspec.Struct):
    v: int
    type: str
    id: str
    body: msgspec.Raw


_ENVELOPE = msgspec.msgpack.Decoder(_Envelope)
_ENCODER = msgspec.msgpack.Encoder()
#: Longest request id accepted (ids are echoed in replies).
MAX_ID = 128


def body_of(type_: str, body: Any) -> Body:
    """The typed body for `type_`: a Body passes as is, a mapping is converted and checked."""
    cls = BODIES.get(type_)
    if cls is None:
        raise ProtocolError("unknown_type", f"message type {type_!r} is not part of protocol {PROTOCOL_VERSION}")
    if isinstance(body, cls):
        return body
    try:
        return msgspec.convert(body, cls)
    except (msgspec.ValidationError, TypeError) as exc:
        raise ProtocolError("bad_request", f"{type_} body: {exc}") from None


def encode(msg: Message) -> list:
    """The message's frames: the envelope, then its tensor data frames (sent as they are: zero-copy when
    the socket sends with copy=False). Raises ProtocolError for an unknown type or a body that is not its
    type's structure."""
    body = body_of(msg.type, msg.body)
    return [_ENCODER.encode({"v": msg.v, "type": msg.type, "id": msg.id, "body": body}), *msg.frames]


def decode(frames: Sequence[Any] | bytes) -> Message:
    """Parse and validate a message (its frames, or one envelope frame); every failure is a ProtocolError
    (the daemon answers it, never dies). Data frames are checked against the descriptors, not copied."""
    if isinstance(frames, (bytes, bytearray, memoryview)):
        frames = (frames,)
    if not frames:
        raise ProtocolError("malformed", "the message has no frames")
    first, data = frames[0], list(frames[1:])
    buf = getattr(first, "buffer", first)  # a zmq.Frame: read its memory in place
    try:
        env = _ENVELOPE.decode(buf)
    except msgspec.ValidationError as exc:
        raise ProtocolError("malformed", f"the frame is not an envelope {{v, type, id, body}}: {exc}") from None
    except (msgspec.DecodeError, RecursionError, ValueError, TypeError) as exc:
        raise ProtocolError("malformed", f"the frame is not msgpack ({type(exc).__name__})") from None
    if env.v != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {env.v!r} is not spoken here (this side speaks {PROTOCOL_VERSION}); "
                            "upgrade the older side")
    if len(env.id) > MAX_ID:
        raise ProtocolError("malformed", f"the request id is longer than {MAX_ID} characters")
    decoder = DECODERS.get(env.type)
    if decoder is None:
        raise ProtocolError("unknown_type", f"message type {env.type[:64]!r} is not part of protocol "
                                            f"{PROTOCOL_VERSION}")
    try:
        body = decoder.decode(env.body)
    except msgspec.ValidationError as exc:
        raise ProtocolError("bad_request", f"{env.type} body: {exc}") from None
    except (msgspec.DecodeError, RecursionError, ValueError, TypeError) as exc:
        raise ProtocolError("bad_request", f"{env.type} body cannot be read ({type(exc).__name__})") from None
    check_frames(env.type, body, data)
    return Message(type=env.type, body=body, id=env.id, v=env.v, frames=data)


def tensors_of(type_: str, body: Any) -> list[Tensor]:
    """The tensor descriptors a body carries (inputs of query/infer, tensor outputs of result/reply)."""
    if type_ in ("query", "infer"):
        return list(body.inputs.values())
    if type_ in ("result", "reply"):
        return [o.tensor for o in body.outputs if o.tensor is not None]
    return []


def check_frames(type_: str, body: Any, data: Sequence[Any]) -> None:
    """Every descriptor names its own data frame, each frame holds exactly its descriptor's bytes, and no
    frame goes unnamed: anything else is `malformed`, said with the tensor and the byte counts."""
    tensors = tensors_of(type_, body)
    if len(tensors) != len(data):
        raise ProtocolError("malformed", f"{type_} describes {len(tensors)} tensor(s) but carries {len(data)} data "
                                         "frame(s); send one frame per tensor, after the envelope")
    seen = set()
    for t in tensors:
        if t.frame >= len(data):
            raise ProtocolError("malformed", f"a tensor names data frame {t.frame}, but the message has "
                                             f"{len(data)} (numbered from 0 after the envelope)")
        if t.frame in seen:
            raise ProtocolError("malformed", f"two tensors name data frame {t.frame}; give each its own frame")
        seen.add(t.frame)
        got, want = len(data[t.frame]), t.nbytes
        if got != want:
            raise ProtocolError("malformed", f"data frame {t.frame} holds {got} bytes; shape {t.shape} of "
                                             f"{t.dtype} needs {want}")


def peek_id(frame: Any) -> str:
    """The request id of a frame that failed to decode, when it can be found (for the error reply).

    Reads only the top-level map, skipping every other value unparsed, so neither a body nested a
    thousand deep nor an odd key elsewhere hides the id.
    """
    if isinstance(frame, (list, tuple)):
        frame = frame[0] if frame else b""
    frame = getattr(frame, "bytes", frame)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(frame), 1))
    try:
        unpacker.feed(frame)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "id":
                rid = unpacker.unpack()
                return rid if isinstance(rid, str) and len(rid) <= MAX_ID else ""
            unpacker.skip()
    except Exception:  # garbage of any kind: no id to echo
        pass
    return ""


_ERROR_EXTRAS = frozenset(name for name, _, _ in struct_fields(ErrorBody)) - {"code", "reason"}


def error(code: str, reason: str, request_id: str = "", **extra: Any) -> Message:
    """An error reply: stable code, human reason (bounded), the request id echoed, known extra fields."""
    if code not in ERROR_CODES:
        code = "internal"
    fields = {k: v for k, v in extra.items() if k in _ERROR_EXTRAS and v is not None}
    return Message("error", ErrorBody(code=code, reason=str(reason)[:MAX_TEXT], **fields), id=request_id)
