"""Tensors on the wire: numpy arrays as {dtype, shape, data} maps (raw C-order bytes), never pickled."""

from __future__ import annotations

from typing import Any

import numpy as np

from infaas_cli.protocol.envelope import ProtocolError

_ALLOWED_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                   "uint8", "uint16", "uint32", "uint64", "bool"}


def pack_tensor(arr: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.name not in _ALLOWED_DTYPES:
        raise ProtocolError("invalid_input", f"dtype {arr.dtype} cannot travel; use a numeric or bool array")
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_tensor(obj: Any, name: str = "tensor") -> np.ndarray:
    if not isinstance(obj, dict) or not {"dtype", "shape", "data"} <= set(obj):
        raise ProtocolError("bad_request", f"{name} is not a tensor map with dtype, shape and data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if dtype not in _ALLOWED_DTYPES:
        raise ProtocolError("invalid_input", f"{name} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError("bad_request", f"{name} has an invalid shape {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError("bad_request", f"{name} data must be raw bytes")
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(data) != want:
        raise ProtocolError("invalid_input", f"{name} carries {len(data)} bytes, shape {shape} of {dtype} "
                            f"needs {want}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def pack_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: pack_tensor(v) for k, v in arrays.items()}


def unpack_tensors(obj: Any) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "inputs must be a map of name -> tensor")
    return {str(k): unpack_tensor(v, f"input '{k}'") for k, v in obj.items()}


def pack_output(value: Any) -> Any:
    """An ONNX Runtime output for the wire: tensors packed, sequences of maps as lists of maps."""
    if isinstance(value, np.ndarray):
        return {"tensor": pack_tensor(value)}
    if isinstance(value, list):
        return {"list": [{str(k): float(v) for k, v in row.items()} if isinstance(row, dict) else row
                         for row in value]}
    raise ProtocolError("internal", f"output of type {type(value).__name__} cannot travel")


def unpack_output(obj: Any) -> Any:
    if isinstance(obj, dict) and "tensor" in obj:
        return unpack_tensor(obj["tensor"], "output")
    if isinstance(obj, dict) and "list" in obj:
        return obj["list"]
    raise ProtocolError("bad_request", "output is neither a tensor nor a list")
