"""Tensors on the wire: numpy arrays as Tensor structures (dtype, shape, raw C-order bytes), never pickled."""

from __future__ import annotations

from typing import Any

import numpy as np

from infaas_cli.protocol.envelope import ProtocolError
from infaas_cli.protocol.messages import DTYPES, Output, Tensor

_ALLOWED_DTYPES = frozenset(DTYPES)


def pack_tensor(arr: np.ndarray) -> Tensor:
    arr = np.asarray(arr, order="C")  # not ascontiguousarray, which turns a 0-d array into shape (1,)
    if arr.dtype.name not in _ALLOWED_DTYPES:
        raise ProtocolError("invalid_input", f"dtype {arr.dtype} cannot travel; use a numeric or bool array")
    return Tensor(dtype=arr.dtype.name, shape=list(arr.shape), data=arr.tobytes())


def unpack_tensor(tensor: Tensor) -> np.ndarray:
    """The array of a decoded (so already validated: dtype known, bytes match the shape) tensor."""
    return np.frombuffer(tensor.data, dtype=tensor.dtype).reshape(tensor.shape)


def pack_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {k: pack_tensor(v) for k, v in arrays.items()}


def unpack_tensors(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: unpack_tensor(v) for k, v in tensors.items()}


def pack_output(value: Any) -> Output:
    """An ONNX Runtime output for the wire: tensors packed, sequences of maps as lists of maps."""
    if isinstance(value, np.ndarray):
        return Output(tensor=pack_tensor(value))
    if isinstance(value, list):
        return Output(list=[{str(k): float(v) for k, v in row.items()} if isinstance(row, dict) else row
                            for row in value])
    raise ProtocolError("internal", f"output of type {type(value).__name__} cannot travel")


def unpack_output(output: Output) -> Any:
    if output.tensor is not None:
        return unpack_tensor(output.tensor)
    if output.list is not None:
        return output.list
    raise ProtocolError("bad_request", "output is neither a tensor nor a list")
