"""The gateway's gRPC door: Triton's `inference.GRPCInferenceService` translated onto the Front.

Only translation lives here (protobuf <-> numpy and plain values); every decision — which model,
variant and worker, whether an SLO can be met — is the Front's. A `FrontError` becomes its gRPC
status (`err.grpc_code`) with its message; anything else is logged and answered INTERNAL with no
traceback on the wire. Tensors come in as `raw_input_contents` (one little-endian buffer per
input, in order; BYTES elements length-prefixed as Triton does) or typed `contents`, and go out as
`raw_output_contents`, which is what `tritonclient.grpc` reads.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from infaas_cli.errors import ConfigError
from infaas_cli.protocol.messages import MAX_FRAME_BYTES
from infaas_daemons.gateway import core
# Triton's published `inference.GRPCInferenceService` as compiled in the tritonclient package (PyPI): the
# server speaks exactly the messages tritonclient.grpc sends, with no protoc step and no copy of the proto here.
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

log = logging.getLogger("infaas.gateway.grpc")

#: Largest request or response message: what the master accepts in one frame, so a request that
#: passes this door is not refused one hop later for its size.
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES

#: The typed `InferTensorContents` field that carries each OIP datatype (FP16/BF16 travel raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

#: Parameters Triton's own clients set that mean nothing to infaas; dropped, not passed to the Front.
TRITON_ONLY_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority",
                                    "timeout", "binary_data_output"})


class _BadRequest(Exception):
    """A request this module cannot translate; answered INVALID_ARGUMENT with its message."""


# ---------------------------------------------------------------------------------------------
# Translation: pure functions, no gRPC context.


def parameter_value(param: pb.InferParameter | Any) -> Any:
    """The Python value of an `InferParameter` (or `ModelRepositoryParameter`); None when unset."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def set_parameter(param: pb.InferParameter, value: Any) -> None:
    """Store a plain value in an `InferParameter`; bool before int, anything else as a string."""
    if isinstance(value, (bool, np.bool_)):
        param.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        param.int64_param = int(value)
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, str):
        param.string_param = value
    elif value is not None:
        param.string_param = str(value)


def request_parameters(params) -> dict[str, Any]:
    """A request's `parameters` map as plain values, without the Triton-only keys.

    A numeric SLO parameter (latency_ms, min_accuracy, max_cost_usd) may come as a string_param:
    tritonclient can only send str, bool and int parameters, so "2.5" is how it says 2.5 ms.
    """
    out: dict[str, Any] = {}
    for key, param in params.items():
        value = parameter_value(param)
        if key in TRITON_ONLY_PARAMETERS or value is None:
            continue
        if isinstance(value, str) and float in core.SLO_PARAMETERS.get(key, ()):
            try:
                value = float(value)
            except ValueError:
                raise _BadRequest(f"parameter {key!r} must be a number, not {value!r}") from None
        out[key] = value
    return out


def _shape(tensor) -> tuple[int, ...]:
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise _BadRequest(f"input {tensor.name!r}: shape {list(shape)} has a negative dimension")
    return shape


def _bytes_of(item: Any) -> bytes:
    """One BYTES element: bytes as they are, text UTF-8, anything else (a ZipMap's dict) as JSON text."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, default=lambda o: o.item() if hasattr(o, "item") else str(o)).encode()


def _encode_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        data = _bytes_of(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's tensors as numpy arrays, from raw contents or typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise _BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
                          f"send raw contents for every input or for none")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype.upper()
        if not name:
            raise _BadRequest(f"input #{i} has no name")
        if name in inputs:
            raise _BadRequest(f"input {name!r} is given twice")
        shape = _shape(tensor)
        count = math.prod(shape)
        if datatype == "BYTES":
            if raw:
                arr = core.decode_bytes(raw[i], count, name)
            else:
                arr = np.empty(len(tensor.contents.bytes_contents), dtype=object)
                arr[:] = list(tensor.contents.bytes_contents)
        else:
            dtype = core.numpy_dtype(datatype)  # FrontError (invalid_input) for an unknown one
            if raw:
                if len(raw[i]) != count * dtype.itemsize:
                    raise _BadRequest(f"input {name!r}: {len(raw[i])} bytes of raw contents for shape "
                                      f"{list(shape)} of {datatype} ({count * dtype.itemsize} expected)")
                arr = np.frombuffer(raw[i], dtype=dtype.newbyteorder("<")).astype(dtype, copy=True)
            else:
                field = CONTENTS_FIELD.get(datatype)
                if field is None:
                    raise _BadRequest(f"input {name!r}: {datatype} has no typed contents; "
                                      f"send it in raw_input_contents")
                values = getattr(tensor.contents, field)
                try:
                    arr = np.asarray(values, dtype=dtype)
                except OverflowError as exc:
                    raise _BadRequest(f"input {name!r}: a value does not fit {datatype}: {exc}") from None
        if arr.size != count:
            raise _BadRequest(f"input {name!r}: {arr.size} values for shape {list(shape)} "
                              f"({count} expected)")
        inputs[name] = arr.reshape(shape)
    return inputs


def _as_array(value: np.ndarray | list) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind in "US":  # fixed-width strings travel as BYTES, element by element
        arr = arr.astype(object)
    return arr


def encode_result(result: core.InferResult, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """The response for a Front result: raw output contents, the chosen model and the SLO outcome."""
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version or "",
                                     id=request.id)
    outputs = [(name, _as_array(value)) for name, value in result.outputs]
    wanted = [o.name for o in request.outputs]
    if wanted:
        by_name = dict(outputs)
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise _BadRequest(f"requested output(s) {', '.join(map(repr, missing))} not produced by "
                              f"{result.model_name}; it has {', '.join(map(repr, by_name))}")
        outputs = [(n, by_name[n]) for n in wanted]
    for name, arr in outputs:
        datatype = core.oip_datatype(arr.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            response.raw_output_contents.append(_encode_bytes(arr))
        else:
            response.raw_output_contents.append(
                np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    for key, value in (result.parameters or {}).items():
        set_parameter(response.parameters[key], value)
    return response


def _dims(shape) -> list[int]:
    """A metadata shape as int64 dims; a symbolic or unknown dimension is -1, as in Triton."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (shape or [])]


def encode_model_metadata(meta: dict) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name=meta.get("name", ""),
                                        versions=[str(v) for v in meta.get("versions", [])],
                                        platform=meta.get("platform", ""))
    for key, field in (("inputs", response.inputs), ("outputs", response.outputs)):
        for t in meta.get(key, []):
            field.add(name=t["name"], datatype=t["datatype"], shape=_dims(t.get("shape")))
    return response


def encode_model_config(meta: dict) -> pb.ModelConfigResponse:
    """A minimal Triton model config from the metadata (what perf_analyzer and similar tools read).

    max_batch_size is 0: infaas shapes already carry the batch dimension (-1 when dynamic), which
    Triton reads as "the dims are the full shape"."""
    config = mc.ModelConfig(name=meta.get("name", ""), platform=meta.get("platform", ""), max_batch_size=0)
    for key, field in (("inputs", config.input), ("outputs", config.output)):
        for t in meta.get(key, []):
            datatype = "STRING" if t["datatype"] == "BYTES" else t["datatype"]
            field.add(name=t["name"], data_type=mc.DataType.Value(f"TYPE_{datatype}"), dims=_dims(t.get("shape")))
    return pb.ModelConfigResponse(config=config)


def _repository_version(params) -> str | None:
    """The variant a load/unload names: a `version` (or `model_version`) string parameter."""
    for key in params:
        if key == "config" or key.startswith("file:"):
            raise _BadRequest(f"parameter {key!r}: infaas models are registered with `infaas register`, "
                              f"not uploaded with a load; name a registered model (and optionally a "
                              f"`version`, the variant's recipe)")
    for key in ("version", "model_version"):
        if key in params:
            value = parameter_value(params[key])
            return None if value in (None, "") else str(value)
    return None


# ---------------------------------------------------------------------------------------------
# The servicer: each call translates, awaits the Front, translates back.


def _guarded(method):
    """FrontError -> its status, a bad request -> INVALID_ARGUMENT, anything else -> INTERNAL (logged)."""
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except core.FrontError as err:
            code = getattr(grpc.StatusCode, str(err.grpc_code), None) or grpc.StatusCode.UNKNOWN
            await context.abort(code, err.message)
        except _BadRequest as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"{method.__name__} failed inside the gateway; the reason is in its log")
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Triton's service over a Front; RPCs not listed here answer UNIMPLEMENTED."""

    def __init__(self, front) -> None:
        self._front = front

    @_guarded
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=bool(await self._front.live()))

    @_guarded
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=bool(await self._front.ready()))

    @_guarded
    async def ServerMetadata(self, request, context):
        meta = self._front.server_metadata()
        return pb.ServerMetadataResponse(name=meta.get("name", ""), version=str(meta.get("version", "")),
                                         extensions=list(meta.get("extensions", [])))

    @_guarded
    async def ModelReady(self, request, context):
        ready = await self._front.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=bool(ready))

    @_guarded
    async def ModelMetadata(self, request, context):
        return encode_model_metadata(await self._front.model_metadata(request.name, request.version or None))

    @_guarded
    async def ModelConfig(self, request, context):
        return encode_model_config(await self._front.model_metadata(request.name, request.version or None))

    @_guarded
    async def ModelInfer(self, request, context):
        if not request.model_name:
            raise _BadRequest("model_name is empty; name a model, a variant's model, or TASK@DATASET")
        inputs = decode_inputs(request)
        result = await self._front.infer(request.model_name, request.model_version or None, inputs,
                                         request_parameters(request.parameters))
        return encode_result(result, request)

    @_guarded
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for entry in await self._front.repository_index():
            state = str(entry.get("state", ""))
            if request.ready and state.upper() != "READY":
                continue
            response.models.add(name=entry.get("name", ""), version=str(entry.get("version") or ""),
                                state=state, reason=str(entry.get("reason") or ""))
        return response

    @_guarded
    async def RepositoryModelLoad(self, request, context):
        await self._front.load(request.model_name, _repository_version(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_guarded
    async def RepositoryModelUnload(self, request, context):
        await self._front.unload(request.model_name, _repository_version(request.parameters))
        return pb.RepositoryModelUnloadResponse()


def _tls_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials:
    pems = []
    for key, path in (("gateway.tls_key_file", key_path), ("gateway.tls_cert_file", cert_path)):
        try:
            pems.append(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"{key} {path} cannot be read: {exc.strerror or exc}") from None
    return grpc.ssl_server_credentials([(pems[0], pems[1])])


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve_grpc(front, host: str, port: int,
                     tls: tuple[str, str] | None) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC door on host:port (0: any free port) and return the server and its bound port.

    `tls` is (certificate file, private key file), both PEM; None serves plaintext.
    The caller stops it with `await server.stop(grace_s)`.
    """
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(front), server)
    address = _address(host, port)
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, _tls_credentials(*tls))
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    else:
        reason = "the address is in use or not local"
    if not bound:
        raise ConfigError(f"cannot serve gRPC on {address}: {reason}; choose another --grpc-port")
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s%s", _address(host, bound),
             " with TLS" if tls else "")
    return server, bound
