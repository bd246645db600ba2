"""The REST front: the Open Inference Protocol (KServe v2) over HTTP, on aiohttp, calling a `Front`.

Routes (every `/v2/models/{name}` route also as `/v2/models/{name}/versions/{version}`):

    GET  /v2                           server metadata (name, version, extensions)
    GET  /v2/health/live               200 while the gateway runs
    GET  /v2/health/ready              200 when the master has its catalog and a live worker, else 503
    GET  /v2/models/{name}             model metadata (a model, a variant, or TASK@DATASET)
    GET  /v2/models/{name}/ready       200 ready, 503 not now, 404 unknown
    POST /v2/models/{name}/infer       inference: JSON tensors and the binary tensor data extension
    POST /v2/repository/index          [{name, version, state, reason}]
    POST /v2/repository/models/{name}/load | /unload   the model repository extension

Errors are ``{"error": "..."}`` with the status of `core.STATUS`: 400 bad input or an SLO no variant meets,
404 unknown model, 429 overloaded, 503 no capacity. Only a failure inside infaas is a 500.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import struct
from typing import Any

import numpy as np
from aiohttp import web

from infaas_cli.protocol.messages import MAX_FRAME_BYTES
from infaas_daemons.gateway import core
from infaas_daemons.gateway.core import Front, FrontError

log = logging.getLogger("infaas.gateway.rest")

#: The binary tensor data extension's header: the length of the JSON part of a body.
HEADER_LENGTH = "Inference-Header-Content-Length"
FRONT_KEY = web.AppKey("front", Front)
#: Request parameters that steer the response, not the query.
_RESPONSE_PARAMETERS = frozenset({"binary_data_output"})


class BadRequest(FrontError):
    def __init__(self, message: str) -> None:
        super().__init__("bad_request", message)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """FrontError -> its status and {"error"}; aiohttp's own 404/405/413 as JSON; anything else a logged 500."""
    try:
        return await handler(request)
    except FrontError as exc:
        return _error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            reason = f"no such endpoint: {request.method} {request.path}; the Open Inference Protocol's live under /v2"
        elif exc.status == 405:
            reason = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            reason = f"the request body is larger than {MAX_FRAME_BYTES} bytes"
        return _error(exc.status, reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "an unexpected failure in the gateway; it is logged there")


def _names(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["model"], request.match_info.get("version") or None


# -- health and metadata ---------------------------------------------------------------------------------

async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[FRONT_KEY].server_metadata())


async def live(request: web.Request) -> web.Response:
    ok = await request.app[FRONT_KEY].live()
    return _json({"live": ok}, 200 if ok else 503)


async def ready(request: web.Request) -> web.Response:
    ok = await request.app[FRONT_KEY].ready()
    return _json({"ready": ok}, 200 if ok else 503)


async def model_metadata(request: web.Request) -> web.Response:
    return _json(await request.app[FRONT_KEY].model_metadata(*_names(request)))


async def model_ready(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    name, version = _names(request)
    await front.resolve(name, version)  # 404 for an unknown one
    ok = await front.model_ready(name, version)
    return _json({"name": name, "ready": ok}, 200 if ok else 503)


# -- inference -------------------------------------------------------------------------------------------

async def infer(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    name, version = _names(request)
    body = await request.read()
    header, binary = _split(body, request.headers.get(HEADER_LENGTH))
    inputs = decode_inputs(header, binary)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be a JSON object")
    result = await front.infer(name, version, inputs,
                               {k: v for k, v in parameters.items() if k not in _RESPONSE_PARAMETERS})
    return encode_result(result, header)


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON request header and the binary part after it (the binary tensor data extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {n}, but the body holds {len(body)} bytes")
        json_part, binary = body[:n], body[n:]
    try:
        header = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request is not JSON: {exc}; send an inference request object, with "
                         f"{HEADER_LENGTH} when binary tensor data follows it") from None
    if not isinstance(header, dict):
        raise BadRequest("the request must be a JSON object with 'inputs'")
    return header, binary


def _shape_of(spec: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers, not {shape!r}")
    return tuple(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def decode_inputs(header: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    """The request's input tensors as numpy arrays, from JSON data or binary data after the header."""
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise BadRequest("the request has no 'inputs'; send a list of {name, shape, datatype, data}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise BadRequest(f"input #{i} must be an object {{name, shape, datatype, data}}")
        name, datatype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"input #{i} has no 'name'")
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        if not isinstance(datatype, str):
            raise BadRequest(f"input '{name}' has no 'datatype' (FP32, INT64, BOOL, BYTES, ...)")
        dtype = core.numpy_dtype(datatype.upper())
        shape = _shape_of(spec, name)
        count = math.prod(shape)
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(f"input '{name}': binary_data_size {size} runs past the {len(binary)} bytes of "
                                 "binary data")
            raw = binary[offset:offset + size]
            offset += size
            if dtype == object:
                arr = core.decode_bytes(raw, count, name)
            else:
                if size != count * dtype.itemsize:
                    raise BadRequest(f"input '{name}': {size} bytes of binary data for shape {list(shape)} of "
                                     f"{datatype} ({count * dtype.itemsize} expected)")
                arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        else:
            if "data" not in spec:
                raise BadRequest(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
            values = _flatten(spec["data"])
            if len(values) != count:
                raise BadRequest(f"input '{name}': {len(values)} values for shape {list(shape)} ({count} expected)")
            arr = _from_json(values, dtype, datatype, name)
        inputs[name] = arr.reshape(shape)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input; give every binary input "
                         "its binary_data_size")
    return inputs


def _from_json(values: list[Any], dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    if dtype == object:
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"input '{name}': BYTES data must be strings")
        arr = np.empty(len(values), dtype=object)
        arr[:] = [v.encode() for v in values]
        return arr
    if dtype == np.bool_:
        if not all(isinstance(v, bool) for v in values):
            raise BadRequest(f"input '{name}': BOOL data must be true or false")
    elif any(isinstance(v, (bool, str)) or v is None for v in values):
        raise BadRequest(f"input '{name}': {datatype} data must be numbers")
    elif dtype.kind in "iu" and any(isinstance(v, float) and not v.is_integer() for v in values):
        raise BadRequest(f"input '{name}': {datatype} data must be integers")
    try:
        arr = np.asarray(values, dtype=dtype) if dtype.kind not in "iu" else np.asarray(
            [int(v) for v in values], dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise BadRequest(f"input '{name}': a value does not fit {datatype}: {exc}") from None
    return arr


def _as_array(value: np.ndarray | list) -> np.ndarray:
    """An output as an array; a list output (e.g. scikit-learn's ZipMap) as BYTES of JSON rows."""
    if isinstance(value, list):
        arr = np.empty(len(value), dtype=object)
        arr[:] = [json.dumps(row).encode() for row in value]
        return arr
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    if arr.dtype == object:
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        arr = out.reshape(arr.shape)
    return arr


def _binary(arr: np.ndarray) -> bytes:
    if arr.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in arr.reshape(-1))
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _json_data(arr: np.ndarray) -> list[Any]:
    if arr.dtype == object:
        return [v.decode(errors="replace") for v in arr.reshape(-1)]
    return arr.reshape(-1).tolist()


def encode_result(result: core.InferResult, header: dict[str, Any]) -> web.Response:
    """The inference response: JSON outputs, or binary ones after the JSON (the binary tensor data extension)."""
    params = header.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    produced = [(n, _as_array(v)) for n, v in result.outputs]
    wanted = header.get("outputs")
    binary_of: dict[str, bool] = {}
    if wanted:
        if not isinstance(wanted, list):
            raise BadRequest("'outputs' must be a list of {name, parameters}")
        by_name = dict(produced)
        chosen = []
        for o in wanted:
            oname = o.get("name") if isinstance(o, dict) else None
            if oname not in by_name:
                raise BadRequest(f"requested output {oname!r} is not an output of {result.model_name}; it has "
                                 f"{', '.join(repr(n) for n in by_name)}")
            op = o.get("parameters") or {}
            binary_of[oname] = bool(op.get("binary_data", binary_default)) if isinstance(op, dict) else binary_default
            chosen.append((oname, by_name[oname]))
        produced = chosen
    outputs, chunks = [], []
    for oname, arr in produced:
        entry: dict[str, Any] = {"name": oname, "datatype": core.oip_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary_of.get(oname, binary_default):
            raw = _binary(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(arr)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version,
                                "outputs": outputs, "parameters": result.parameters}
    if "id" in header:
        response["id"] = header["id"]
    body = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return web.Response(body=body, content_type="application/json")
    return web.Response(body=body + b"".join(chunks), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(body))})


# -- the model repository extension ----------------------------------------------------------------------

async def repository_index(request: web.Request) -> web.Response:
    body = await _optional_json(request)
    entries = await request.app[FRONT_KEY].repository_index()
    if body.get("ready"):
        entries = [e for e in entries if e["state"] == "READY"]
    return _json(entries)


async def _optional_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _repository_version(body: dict[str, Any]) -> str | None:
    """The variant a load/unload names: the `version` parameter (the variant's version, e.g. ort-cpu-fp32-t1-b32);
    tritonclient's load_model can name it as a query parameter instead (query_params={"version": ...})."""
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    for key in params:
        if key == "config" or key.startswith("file:"):
            raise BadRequest(f"parameter '{key}': infaas models are registered with `infaas register` and pushed, "
                             "not uploaded with a load; name a registered model (and optionally a `version`)")
    value = params.get("version", params.get("model_version"))
    return None if value in (None, "") else str(value)


async def load(request: web.Request) -> web.Response:
    version = _repository_version(await _optional_json(request)) or request.query.get("version") or None
    await request.app[FRONT_KEY].load(request.match_info["model"], version)
    return web.Response(status=200)


async def unload(request: web.Request) -> web.Response:
    version = _repository_version(await _optional_json(request)) or request.query.get("version") or None
    await request.app[FRONT_KEY].unload(request.match_info["model"], version)
    return web.Response(status=200)


# -- the app ---------------------------------------------------------------------------------------------

def make_app(front: Front) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=MAX_FRAME_BYTES)
    app[FRONT_KEY] = front
    r = app.router
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_post(base + "/infer", infer)
    r.add_post("/v2/repository/index", repository_index)
    r.add_post("/v2/repository/models/{model}/load", load)
    r.add_post("/v2/repository/models/{model}/unload", unload)
    return app


def ssl_context(tls: tuple[str, str] | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(*tls)
    except (OSError, ssl.SSLError) as exc:
        raise FrontError("bad_config", f"cannot load the TLS certificate {tls[0]} and key {tls[1]}: {exc}") from None
    return ctx


async def serve_rest(front: Front, host: str, port: int,
                     tls: tuple[str, str] | None = None) -> tuple[web.AppRunner, int]:
    """Start the REST front on host:port (0: a free port); returns the runner (await .cleanup()) and the port."""
    runner = web.AppRunner(make_app(front), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context(tls), reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("REST (Open Inference Protocol) on %s://%s:%d", "https" if tls else "http", host, bound)
    return runner, bound
