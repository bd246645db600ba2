"""What the daemons share: logging set-up, signal handling, and sending protocol messages on a socket."""

from __future__ import annotations

import logging
import os
import signal
import threading
from logging.handlers import RotatingFileHandler

import zmq

from infaas_cli import protocol
from infaas_cli.settings import LOG_BACKUPS, LOG_MAX_BYTES

log = logging.getLogger("infaas")


def setup_logging(level: str = "INFO", log_file: str | os.PathLike[str] | None = None, max_bytes: int = LOG_MAX_BYTES,
                  backups: int = LOG_BACKUPS) -> None:
    """Log to stderr (systemd's journal), or to `log_file`, rotated at `max_bytes` with `backups` old files
    kept: a daemon that runs for months never fills the disk."""
    handler: logging.Handler = logging.StreamHandler() if log_file is None else RotatingFileHandler(
        log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True,
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
