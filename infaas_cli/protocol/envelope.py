"""The infaas wire protocol: one envelope, every message type, msgpack encode/decode, stable error codes.

No sockets here. A message on the wire is one ZeroMQ frame holding a msgpack map
``{"v": PROTOCOL_VERSION, "type": TYPE, "id": REQUEST_ID, "body": {...}}``. Tensors travel as
``{"dtype": "float32", "shape": [8, 64], "data": <raw bytes, C order>}`` — never pickled.
The protocol is documented in docs/protocol.md; a test keeps the two in step.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

#: Bump on any incompatible change to the envelope or a message body (say so in CHANGELOG.md).
PROTOCOL_VERSION = 1

#: Message types and the body fields each one requires.
MESSAGE_TYPES: dict[str, tuple[str, ...]] = {
    # client <-> master
    "query": ("kind", "inputs"),  # kind: "variant" | "model" | "task"
    "reply": ("outputs", "variant", "worker", "decision_us", "timing"),
    "status": (),
    "status_reply": ("master", "workers"),
    # master <-> worker
    "register": ("worker_id", "hardware", "backends"),
    "registered": ("heartbeat_interval_s",),
    "heartbeat": ("worker_id", "metrics"),
    "load": ("variant",),
    "unload": ("variant",),
    "loaded": ("variant", "load_time_ms"),
    "infer": ("variant", "inputs", "deadline_ms"),
    "result": ("outputs", "timing"),
    "fetch": ("sha256", "offset"),
    # CLI -> master replication
    "changes": ("source", "entries"),
    "artifact_chunk": ("sha256", "offset", "data", "total_bytes"),
    "ack": (),
    # any direction
    "error": ("code", "reason"),
}

#: Stable error codes (never renumbered or renamed) and what each means.
ERROR_CODES: dict[str, str] = {
    "malformed": "the frame is not a msgpack map with v, type, id and body",
    "unsupported_version": "the peer speaks another protocol version",
    "unknown_type": "the message type is not part of this protocol",
    "bad_request": "a required field is missing or has the wrong type",
    "unknown_model": "no such model, variant or task/dataset",
    "no_variant": "no variant meets the SLO",
    "invalid_input": "input names, dtype or shape do not match the model",
    "not_found": "a record or artifact is missing",
    "checksum": "an artifact's sha256 does not match",
    "sequence_gap": "replication entries arrived out of order",
    "worker_lost": "the worker serving the query died and no other could take it",
    "overloaded": "the query's deadline passed before it could run",
    "unavailable": "no worker can serve the query",
    "internal": "an unexpected failure in the daemon (logged there)",
}


class ProtocolError(Exception):
    """A message that cannot be accepted; carries a stable code and a human reason."""

    def __init__(self, code: str, reason: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Message:
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    v: int = PROTOCOL_VERSION


def new_id() -> str:
    return uuid.uuid4().hex


def encode(msg: Message) -> bytes:
    """One frame. Raises ProtocolError for an unknown type or a body missing a required field."""
    _check_body(msg.type, msg.body)
    return msgpack.packb({"v": msg.v, "type": msg.type, "id": msg.id, "body": msg.body}, use_bin_type=True)


def decode(frame: bytes) -> Message:
    """Parse and check one frame; every failure is a ProtocolError (the daemon answers it, never dies)."""
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError("malformed", f"frame is not msgpack ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or not {"v", "type", "id", "body"} <= set(raw):
        raise ProtocolError("malformed", "frame is not a map with keys v, type, id and body")
    if raw["v"] != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {raw['v']!r} is not spoken here (this side speaks {PROTOCOL_VERSION}); "
                            "upgrade the older side")
    if not isinstance(raw["type"], str) or not isinstance(raw["id"], str) or not isinstance(raw["body"], dict):
        raise ProtocolError("malformed", "type and id must be strings and body a map")
    _check_body(raw["type"], raw["body"])
    return Message(type=raw["type"], body=raw["body"], id=raw["id"], v=raw["v"])


def peek_id(frame: bytes) -> str:
    """The request id of a frame that failed to decode, when it can be found (for the error reply)."""
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            return raw["id"]
    except Exception:
        pass
    return ""


def _check_body(type_: str, body: dict[str, Any]) -> None:
    required = MESSAGE_TYPES.get(type_)
    if required is None:
        raise ProtocolError("unknown_type", f"message type {type_!r} is not part of protocol {PROTOCOL_VERSION}")
    missing = [f for f in required if f not in body]
    if missing:
        raise ProtocolError("bad_request", f"{type_} message lacks {', '.join(missing)}")


def error(code: str, reason: str, request_id: str = "", **extra: Any) -> Message:
    """An error reply: stable code, human reason, the request id echoed."""
    return Message("error", {"code": code, "reason": reason, **extra}, id=request_id or new_id())
