"""Pure client-side checks: endpoints before ZeroMQ sees them, query inputs before they are packed, outputs by name."""

from __future__ import annotations

import numpy as np
import pytest

from infaas_cli.client.client import QueryResult, query_arrays, query_message
from infaas_cli.errors import InvalidInputError, NotFoundError
from infaas_cli.settings import endpoint_error


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7010", "tcp://*:0", "tcp://master.example:7011",
                                      "tcp://[::1]:7010", "tcp://127.0.0.1:*", "ipc:///run/infaas/master.sock",
                                      "inproc://results"])
def test_zeromq_endpoints_pass(endpoint):
    assert endpoint_error(endpoint) is None


@pytest.mark.parametrize("endpoint, says", [
    ("http://127.0.0.1:8000", "gateway's REST front"), ("https://h:443", "HTTP address"),
    ("127.0.0.1:7010", "not a ZeroMQ endpoint"), ("tcp://127.0.0.1", "tcp://HOST:PORT"),
    ("tcp://:7010", "tcp://HOST:PORT"), ("tcp://h:70100", "0 … 65535"), ("ipc://", "not a ZeroMQ endpoint"),
    ("tcp://h:port", "tcp://HOST:PORT"),
])
def test_other_endpoints_say_what_to_write(endpoint, says):
    problem = endpoint_error(endpoint)
    assert problem is not None and says in problem and "tcp://127.0.0.1:7010" in problem


def test_numeric_inputs_pass_unchanged():
    x = np.zeros((2, 64), np.float32)
    arrays = query_arrays({"x": x, "n": [[1, 2], [3, 4]]})
    assert arrays["x"] is x  # never copied: the query is sent from the caller's memory
    assert arrays["n"].dtype.kind == "i" and arrays["n"].shape == (2, 2)


@pytest.mark.parametrize("value, says", [
    (["a cat", "a dog"], "string array"), (np.array([b"ab"]), "bytes array"),
    (np.array([1, "a"], dtype=object), "object array"), ([[1, 2], [3]], "ragged list"), ("text", "string array"),
])
def test_text_objects_and_ragged_lists_are_invalid_input(value, says):
    with pytest.raises(InvalidInputError, match=says) as info:
        query_message({"x": value}, model="m")
    assert info.value.code == "invalid_input" and "input 'x'" in str(info.value)


def test_outputs_by_name_as_tritonclient_gives_them():
    label, probs = np.array([3]), np.array([[0.1, 0.9]], np.float32)
    result = QueryResult(outputs=[label, probs], variant="m/v", worker="w", decision_us=1.0, timing={},
                         latency_ms=1.0, model="m", output_names=["label", "probabilities"])
    assert result.as_numpy("probabilities") is probs and result.outputs[0] is label
    assert list(result.outputs_by_name) == ["label", "probabilities"]
    with pytest.raises(NotFoundError, match="its outputs: label, probabilities"):
        result.as_numpy("logits")
