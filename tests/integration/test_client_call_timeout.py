"""The client's per-call timeout: `remove --drain` waits the drain's timeout on top of the client's own, a plain
request only the client's, and the client's timeout is never changed by either."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from infaas_cli import protocol
from infaas_cli.client import Client, MasterUnreachableError
from infaas_cli.protocol import messages as m

CLIENT_TIMEOUT_S = 0.4
ANSWER_AFTER_S = 1.0  # past the client's own timeout, within it plus the drain's


@pytest.fixture
def slow_master():
    """A ROUTER that answers every `remove` after ANSWER_AFTER_S, as a master draining the models would."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not sock.poll(50, zmq.POLLIN):
                continue
            route, *frames = sock.recv_multipart()
            msg = protocol.decode(frames)
            time.sleep(ANSWER_AFTER_S)
            reply = protocol.Message("remove_reply", m.RemoveReplyBody(models=msg.body.models), id=msg.id)
            sock.send_multipart([route, *protocol.encode(reply)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    thread.join(5)
    sock.close(0)


def test_a_drain_waits_its_timeout_on_top_of_the_clients(slow_master):
    with Client(slow_master, timeout_s=CLIENT_TIMEOUT_S) as client:
        answer = client.remove(["m"], drain=True, timeout_s=2.0)
        assert answer["models"] == ["m"]
        assert client.timeout_s == CLIENT_TIMEOUT_S


def test_a_refusal_without_drain_waits_the_clients_timeout_only(slow_master):
    with Client(slow_master, timeout_s=CLIENT_TIMEOUT_S) as client:
        t0 = time.monotonic()
        with pytest.raises(MasterUnreachableError, match=f"within {CLIENT_TIMEOUT_S:g} s"):
            client.remove(["m"], drain=False, timeout_s=2.0)
        assert time.monotonic() - t0 < ANSWER_AFTER_S
        assert client.timeout_s == CLIENT_TIMEOUT_S
