"""What both daemons share: logging set-up, signal handling, and sending protocol messages on a socket."""

from __future__ import annotations

import logging
import signal
import threading

import zmq

from infaas_cli import protocol

log = logging.getLogger("infaas")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the daemon's loop cleanly (sockets closed, LMDB closed)."""
    def handler(signum, frame):
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def step(who: str, fn, *args) -> None:
    """One step of a daemon loop: a failure is logged with its traceback, never fatal to the loop."""
    try:
        fn(*args)
    except Exception:
        log.exception("%s step %s failed", who, getattr(fn, "__name__", fn))


def send(sock: zmq.Socket, msg: protocol.Message, identity: bytes | None = None) -> None:
    frames = protocol.encode(msg)
    sock.send_multipart(frames if identity is None else [identity, *frames], zmq.NOBLOCK,
                        copy=not protocol.zero_copy(frames))


def safe_send(sock: zmq.Socket, msg: protocol.Message, identity: bytes | None = None) -> bool:
    """Send, logging instead of raising: a peer that went away must not take the daemon with it."""
    try:
        send(sock, msg, identity)
        return True
    except (zmq.ZMQError, protocol.ProtocolError) as exc:
        log.warning("could not send %s %s: %s", msg.type, msg.id, exc)
        return False
