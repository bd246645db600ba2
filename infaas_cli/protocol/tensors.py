"""Tensors on the wire: numpy arrays as Tensor descriptors (dtype, shape, frame) plus raw C-order data frames.

Never pickled, and never copied here: packing appends a byte view of the array to the message's
frames (ZeroMQ sends it zero-copy above its copy threshold), unpacking views the received frame's
memory as an array (read-only, alive as long as the array is).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infaas_cli.protocol.envelope import ProtocolError
from infaas_cli.protocol.messages import DTYPES, Output, Tensor

_ALLOWED_DTYPES = frozenset(DTYPES)


#: Frames from this size up are sent from their own memory (ZeroMQ's copy threshold, zmq.COPY_THRESHOLD);
#: a message whose frames are all smaller is sent copying, which costs less than wrapping each frame.
ZERO_COPY_BYTES = 65536


def zero_copy(frames: list) -> bool:
    """Whether a message should be sent without copying (`copy=False`): one of its frames is large."""
    for f in frames:
        if len(f) >= ZERO_COPY_BYTES:
            return True
    return False


def frame_buffer(frame: Any) -> Any:
    """The memory of a data frame: a zmq.Frame's buffer, else the object itself (bytes, memoryview, array)."""
    return getattr(frame, "buffer", frame)


def pack_tensor(arr: np.ndarray, frames: list) -> Tensor:
    """The descriptor of `arr`; its bytes are appended to `frames` (a view when `arr` is C-contiguous)."""
    arr = np.asarray(arr, order="C")  # not ascontiguousarray, which turns a 0-d array into shape (1,)
    if arr.dtype.name not in _ALLOWED_DTYPES:
        raise ProtocolError("invalid_input", f"dtype {arr.dtype} cannot travel; use a numeric or bool array")
    frames.append(arr.reshape(-1).view(np.uint8))  # len() is the byte count, whatever the dtype
    return Tensor(dtype=arr.dtype.name, shape=list(arr.shape), frame=len(frames) - 1)


def unpack_tensor(tensor: Tensor, frames: list) -> np.ndarray:
    """The array of a decoded (so already checked: its frame holds exactly its bytes) tensor, viewing the frame."""
    return np.frombuffer(frame_buffer(frames[tensor.frame]), dtype=tensor.dtype).reshape(tensor.shape)


def pack_tensors(arrays: dict[str, np.ndarray], frames: list | None = None) -> tuple[dict[str, Tensor], list]:
    """Descriptors keyed like `arrays`, and the frames (appended to `frames` when given)."""
    frames = [] if frames is None else frames
    return {k: pack_tensor(v, frames) for k, v in arrays.items()}, frames


def unpack_tensors(tensors: dict[str, Tensor], frames: list) -> dict[str, np.ndarray]:
    return {k: unpack_tensor(v, frames) for k, v in tensors.items()}


def pack_output(value: Any, frames: list) -> Output:
    """An ONNX Runtime output for the wire: tensors as frames, sequences of maps as lists of maps."""
    if isinstance(value, np.ndarray):
        return Output(tensor=pack_tensor(value, frames))
    if isinstance(value, list):
        return Output(list=[{str(k): float(v) for k, v in row.items()} if isinstance(row, dict) else row
                            for row in value])
    raise ProtocolError("internal", f"output of type {type(value).__name__} cannot travel")


def unpack_output(output: Output, frames: list) -> Any:
    if output.tensor is not None:
        return unpack_tensor(output.tensor, frames)
    if output.list is not None:
        return output.list
    raise ProtocolError("bad_request", "output is neither a tensor nor a list")
