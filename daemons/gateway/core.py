"""The gateway's protocol-independent front: what the REST and the gRPC servers both call.

`Front` holds one ZeroMQ DEALER to the master's client endpoint, read from the event loop's selector
(CurveZMQ when the settings name client keys), many requests in flight on it, replies matched by
request id. It maps the Open Inference Protocol's words onto infaas's:

* a model name that is an infaas model is a ``kind=model`` query (the SLO picks the variant);
* a model name plus a version is a ``kind=variant`` query; the version is the variant's name without
  its ``MODEL/`` prefix (e.g. ``ort-cpu-int8s-t1-b32``), which is unique within the model;
* ``TASK@DATASET`` is a model-less (``kind=task``) query;
* a model's version V ≥ 2 is the model name ``MODEL@vV`` (version 1: ``MODEL``): a model name answers with the
  version its version policy routes to, and every response's ``version`` parameter says which answered.

The SLO travels in the request's parameters (`SLO_PARAMETERS`). Failures are `FrontError`s carrying an
infaas error code; `http_status` and `grpc_code` come from one table (`STATUS`). Catalog knowledge
(models, variants, signatures, where variants are loaded) comes from the master's `catalog` message,
cached for `CATALOG_TTL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import zmq

from infaas_cli import __version__ as INFAAS_VERSION
from infaas_cli import protocol
from infaas_cli.errors import ERROR_CODES
from infaas_cli.policy.versions import canonical_id
from infaas_cli.protocol import messages as m

log = logging.getLogger("infaas.gateway")

#: How long a catalog reading is reused before the master is asked again.
CATALOG_TTL_S = 1.0
#: The OIP extensions this front implements (GET /v2 lists them).
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters",
              "infaas_model_less"]
#: Request parameters that carry the SLO, with their types (validated here, again by the master).
SLO_PARAMETERS: dict[str, tuple[type, ...]] = {
    "latency_ms": (int, float), "min_accuracy": (int, float), "objective": (str,), "max_cost_usd": (int, float),
    "slo_mode": (str,)}
#: The platform reported in model metadata (every infaas variant is an ONNX model).
PLATFORM = "onnxruntime_onnx"


# -- errors ----------------------------------------------------------------------------------------------

#: infaas error code -> (HTTP status, grpc.StatusCode member name). One table for both fronts.
STATUS: dict[str, tuple[int, str]] = {
    "malformed": (400, "INVALID_ARGUMENT"),
    "unsupported_version": (503, "UNAVAILABLE"),
    "unknown_type": (501, "UNIMPLEMENTED"),
    "bad_request": (400, "INVALID_ARGUMENT"),
    "unknown_model": (404, "NOT_FOUND"),
    "no_variant": (400, "INVALID_ARGUMENT"),
    "invalid_input": (400, "INVALID_ARGUMENT"),
    "not_found": (404, "NOT_FOUND"),
    "checksum": (500, "DATA_LOSS"),
    "sequence_gap": (409, "ABORTED"),
    "worker_lost": (503, "UNAVAILABLE"),
    "overloaded": (429, "RESOURCE_EXHAUSTED"),
    "unavailable": (503, "UNAVAILABLE"),
    "internal": (500, "INTERNAL"),
    "failed": (400, "FAILED_PRECONDITION"),
    "bad_config": (400, "INVALID_ARGUMENT"),
    "already_exists": (409, "ALREADY_EXISTS"),
    "invalid_model": (400, "INVALID_ARGUMENT"),
    "invalid_validation": (400, "INVALID_ARGUMENT"),
    "backend_unavailable": (503, "UNAVAILABLE"),
    "artifact": (500, "INTERNAL"),
    "store": (500, "INTERNAL"),
    "store_format": (500, "INTERNAL"),
}
if set(STATUS) != set(ERROR_CODES):  # a code added to the vocabulary must be given its statuses here
    raise ImportError(f"daemons/gateway/core.py STATUS lacks {sorted(set(ERROR_CODES) - set(STATUS))} "
                      f"and has extra {sorted(set(STATUS) - set(ERROR_CODES))}")


class FrontError(Exception):
    """A failure to report to an OIP client: an infaas error code, a message for people, extra fields."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code if code in ERROR_CODES else "internal"
        self.message = message
        self.extra = {k: v for k, v in extra.items() if v is not None}

    @property
    def http_status(self) -> int:
        return STATUS[self.code][0]

    @property
    def grpc_code(self) -> str:
        """The name of a `grpc.StatusCode` member, e.g. ``"INVALID_ARGUMENT"``."""
        return STATUS[self.code][1]

    def __str__(self) -> str:
        return self.message


# -- datatypes -------------------------------------------------------------------------------------------

#: OIP datatype -> numpy dtype (BYTES: object arrays of bytes).
OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
#: numpy dtype name -> OIP datatype.
NUMPY_TO_OIP: dict[str, str] = {dt.name: name for name, dt in OIP_TO_NUMPY.items() if name != "BYTES"}
#: ONNX element type (as in "tensor(float)") -> OIP datatype.
ONNX_TO_OIP: dict[str, str] = {
    "float": "FP32", "double": "FP64", "float16": "FP16", "int8": "INT8", "int16": "INT16", "int32": "INT32",
    "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "bool": "BOOL", "string": "BYTES"}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype; a 400 naming the supported ones for anything else."""
    dt = OIP_TO_NUMPY.get(datatype)
    if dt is None:
        raise FrontError("invalid_input", f"datatype {datatype!r} is not supported; use one of "
                                          f"{', '.join(OIP_TO_NUMPY)}")
    return dt


def oip_datatype(dtype: np.dtype) -> str:
    """The OIP datatype of a numpy dtype (object and string arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return NUMPY_TO_OIP[dtype.name]
    except KeyError:
        raise FrontError("internal", f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def spec_datatype(spec: dict[str, Any]) -> str:
    """The OIP datatype of a catalog tensor spec ({name, type, dtype, shape})."""
    if spec.get("dtype") in NUMPY_TO_OIP:
        return NUMPY_TO_OIP[spec["dtype"]]
    onnx = str(spec.get("type", ""))
    if onnx.startswith("tensor(") and onnx.endswith(")"):
        return ONNX_TO_OIP.get(onnx[7:-1], "BYTES")
    return "BYTES"  # a sequence or a map (e.g. scikit-learn's ZipMap): travels as JSON text


def spec_shape(spec: dict[str, Any]) -> list[int]:
    """OIP shape of a catalog tensor spec: -1 for a dynamic or symbolic dimension."""
    shape = spec.get("shape")
    if shape is None:
        return [-1]
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


# -- results ---------------------------------------------------------------------------------------------

@dataclass
class InferResult:
    model_name: str  # the infaas model that ran the query
    model_version: str  # the variant's version (its name without the "MODEL/" prefix)
    outputs: list[tuple[str, np.ndarray | list]]
    parameters: dict[str, Any] = field(default_factory=dict)  # variant, worker, slo_met, latency_ms, version, ...


@dataclass(frozen=True)
class Target:
    """What an OIP (name, version) addresses: the query kind and its names."""

    kind: str  # "model", "variant" or "task"
    model: str | None = None  # the model (kind model / variant)
    variant: str | None = None  # the full variant name (kind variant)
    task: str | None = None
    dataset: str | None = None
    named: str | None = None  # the model as the query names it when that is not `model` (`M@v1`: version 1 itself)


def version_of(variant: str, model: str) -> str:
    """A variant's OIP version: its name without the model prefix."""
    prefix = f"{model}/"
    return variant[len(prefix):] if variant.startswith(prefix) else variant


# -- the front -------------------------------------------------------------------------------------------

class Front:
    """The gateway's connection to the master and the OIP operations over it (asyncio; one event loop)."""

    def __init__(self, endpoint: str, *, timeout_s: float = 30.0, curve_keys: tuple[str, str] | None = None,
                 load_timeout_s: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self.curve_keys = curve_keys
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._catalog: dict[str, Any] | None = None
        self._catalog_at = 0.0
        self._targets: dict[tuple[str, str | None], Target] = {}  # resolutions in self._catalog
        self._targets_of: dict[str, Any] | None = None  # the catalog self._targets were found in
        self._catalog_lock: asyncio.Lock | None = None
        self._started = False

    @classmethod
    def from_settings(cls, settings: Any, endpoint: str | None = None) -> Front:
        """A front for `settings` (infaas_cli.settings.Settings): the master from gateway.master, else
        client.master; CurveZMQ with security's client keys."""
        gateway = getattr(settings, "gateway", None)
        master = endpoint or (gateway.master if gateway is not None else None) or settings.client.master
        if not master:
            raise FrontError("bad_config", "the gateway needs the master's client endpoint: set gateway.master "
                                           "(--master, $INFAAS_MASTER) or start the cluster with `infaas up`")
        return cls(master, timeout_s=settings.client.timeout_s, curve_keys=settings.security.client_keys())

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        from infaas_cli.security import make_client

        # A plain socket read from the event loop's own selector (add_reader on its FD) rather than
        # zmq.asyncio: one request costs ~0.1 ms less on its round trip to the master.
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_FRAME_BYTES)
        if self.curve_keys:
            make_client(sock, *self.curve_keys)
        sock.connect(self.endpoint)
        self._sock = sock
        self._catalog_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._loop is not None and self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._fd = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(FrontError("unavailable", "the gateway is shutting down"))
        self._waiting.clear()
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()

    def _drain(self) -> None:
        """Read every frame waiting on the socket and resolve its request's future.

        The socket's FD is edge-triggered: it signals once for whatever arrived, so this reads until
        zmq.EVENTS says nothing is left (and `_request` calls it after a send that may have swallowed
        the edge)."""
        sock = self._sock
        while sock is not None and not sock.closed:
            try:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("reading from the master failed: %s", exc)
                return
            try:
                msg = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                rid = protocol.peek_id(frames)
                fut = self._waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(FrontError("internal", f"the master's answer cannot be read: {exc.reason}"))
                else:
                    log.warning("unreadable frame from the master: %s", exc.reason)
                continue
            fut = self._waiting.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _request(self, type_: str, body: Any, timeout_s: float | None = None,
                       frames: list | None = None) -> protocol.Message:
        """Send one request (with its tensor data frames) and await its answer; an `error` answer raises
        FrontError with its code."""
        if not self._started or self._sock is None:
            raise FrontError("unavailable", "the gateway's connection to the master is not open")
        msg = protocol.Message(type_, body, frames=frames or [])
        try:
            parts = protocol.encode(msg)
        except protocol.ProtocolError as exc:
            raise FrontError(exc.code, exc.reason) from None
        loop = self._loop
        fut: asyncio.Future = loop.create_future()
        self._waiting[msg.id] = fut
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        # A timer rather than asyncio.wait_for: the same deadline without a wrapper future per request.
        timer = loop.call_later(timeout_s, _expire, fut)
        try:
            while True:  # SNDHWM 0: a send only waits when no pipe to the master exists yet
                try:
                    self._sock.send_multipart(parts, zmq.NOBLOCK, copy=not protocol.zero_copy(parts))
                    break
                except zmq.Again:
                    if fut.done():
                        break
                    await asyncio.sleep(0.005)
            if self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                loop.call_soon(self._drain)  # the send may have taken the FD's edge: read what waits
            reply = await fut
        except asyncio.TimeoutError:
            raise FrontError("unavailable", f"no answer from the master at {self.endpoint} within {timeout_s:g} s; "
                                            "is it running?") from None
        finally:
            timer.cancel()
            self._waiting.pop(msg.id, None)
        if reply.type == "error":
            raise _front_error(reply.body)
        return reply

    # -- health ----------------------------------------------------------------------------------------------
    async def live(self) -> bool:
        """The gateway itself is up and can answer (it does not depend on the master)."""
        return self._started

    async def ready(self) -> bool:
        """The master answers, has its catalog loaded (at least one model) and at least one live worker."""
        try:
            catalog = await self._fetch_catalog(timeout_s=min(self.timeout_s, 2.0))
        except FrontError:
            return False
        return bool(catalog["models"]) and catalog["workers_alive"] > 0

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "infaas", "version": INFAAS_VERSION, "extensions": list(EXTENSIONS)}

    # -- the catalog -----------------------------------------------------------------------------------------
    async def _fetch_catalog(self, timeout_s: float | None = None) -> dict[str, Any]:
        if self._catalog_lock is None:
            raise FrontError("unavailable", "the gateway's connection to the master is not open")
        asked = time.monotonic()
        async with self._catalog_lock:
            if self._catalog is not None and self._catalog_at >= asked:
                return self._catalog  # fetched while this caller waited for the lock: one request serves all
            reply = await self._request("catalog", m.CatalogBody(), timeout_s)
            self._catalog = _catalog_of(reply.body)
            self._catalog_at = time.monotonic()
            return self._catalog

    async def catalog(self, fresh: bool = False) -> dict[str, Any]:
        """{"models": {name: model map with its "variants"}, "workers_alive": n}, at most CATALOG_TTL_S old."""
        if fresh or self._catalog is None or time.monotonic() - self._catalog_at > CATALOG_TTL_S:
            return await self._fetch_catalog()
        return self._catalog

    async def resolve(self, name: str, version: str | None) -> Target:
        """The query target an OIP model name (and version) addresses; 404 when there is none."""
        for fresh in (False, True):  # a name not known yet may have just been pushed
            catalog = await self.catalog(fresh=fresh)
            if self._targets_of is not catalog:  # a new catalog reading: resolve afresh
                self._targets, self._targets_of = {}, catalog
            target = self._targets.get((name, version))
            if target is None:
                target = self._resolve_in(catalog, name, version)
                if target is not None:
                    self._targets[(name, version)] = target
            if target is not None:
                return target
        if "@" in name:
            task, _, dataset = name.partition("@")
            raise FrontError("unknown_model", f"no model of task '{task}' on dataset '{dataset}' is registered; "
                                              "`infaas models` lists them")
        model = self._model_of(catalog, name)
        if model is not None and version:
            versions = ", ".join(version_of(v["name"], model["name"]) for v in model["variants"]) or "none"
            raise FrontError("unknown_model", f"model '{model['name']}' has no version '{version}'; "
                                              f"its versions: {versions}")
        raise FrontError("unknown_model", f"unknown model '{name}'; `infaas models` lists them, and "
                                          "TASK@DATASET queries a task model-lessly")

    @staticmethod
    def _model_of(catalog: dict[str, Any], name: str) -> dict[str, Any] | None:
        return catalog["models"].get(name)

    def _resolve_in(self, catalog: dict[str, Any], name: str, version: str | None) -> Target | None:
        models = catalog["models"]
        named = name
        if canonical_id(name) in models:  # `M@v1` is version 1's record `M`, but asks for version 1 itself
            name = canonical_id(name)
        if name in models:
            if not version:
                return Target("model", model=name, named=named if named != name else None)
            for v in models[name]["variants"]:
                if version in (version_of(v["name"], name), v["name"]):
                    return Target("variant", model=name, variant=v["name"])
            return None
        if "@" in name and not version:
            task, _, dataset = name.partition("@")
            if any(mod["task"] == task and mod["dataset"] == dataset for mod in models.values()):
                return Target("task", task=task, dataset=dataset)
        for mod in models.values():  # a full variant name as the model name (gRPC clients send one; `M@v2/…` too)
            for v in mod["variants"]:
                if v["name"] == name and (not version or version == version_of(name, mod["name"])):
                    return Target("variant", model=mod["name"], variant=name)
        return None

    def _models_of(self, catalog: dict[str, Any], target: Target) -> list[dict[str, Any]]:
        if target.kind == "task":
            return [mod for mod in catalog["models"].values()
                    if mod["task"] == target.task and mod["dataset"] == target.dataset]
        return [catalog["models"][target.model]]

    # -- metadata --------------------------------------------------------------------------------------------
    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        target = await self.resolve(name, version)
        catalog = await self.catalog()
        models = self._models_of(catalog, target)
        if target.kind == "task":
            versions = sorted(v["name"] for mod in models for v in mod["variants"])
            inputs = _common_signature([mod["inputs"] for mod in models])
            outputs = _common_signature([mod["outputs"] for mod in models])
        else:
            mod = models[0]
            versions = [version_of(v["name"], mod["name"]) for v in mod["variants"]]
            if target.kind == "variant":
                versions = [version_of(target.variant, mod["name"])]
            inputs = [_tensor_meta(s) for s in mod["inputs"]]
            outputs = [_tensor_meta(s) for s in mod["outputs"]]
        meta = {"name": name, "versions": versions, "platform": PLATFORM, "inputs": inputs, "outputs": outputs}
        if target.kind == "task":
            meta["parameters"] = {"models": sorted(mod["name"] for mod in models)}
        return meta

    async def model_ready(self, name: str, version: str | None) -> bool:
        """Whether queries to it can be served now: a live worker and (for a variant) it is in the catalog.

        infaas loads variants on demand, so a model is ready whenever the cluster is; a variant that is
        loaded somewhere is ready at once, any other after its cold start."""
        try:
            await self.resolve(name, version)
            catalog = await self.catalog()
        except FrontError:
            return False
        return catalog["workers_alive"] > 0

    # -- inference -------------------------------------------------------------------------------------------
    async def infer(self, name: str, version: str | None, inputs: dict[str, np.ndarray],
                    parameters: dict[str, Any]) -> InferResult:
        target = await self.resolve(name, version)
        slo = slo_from_parameters(parameters)
        catalog = await self.catalog()
        models = self._models_of(catalog, target)
        data: list = []
        feeds = self._check_inputs(name, models, inputs, data)
        body = {"kind": target.kind, "variant": target.variant,
                "model": (target.named or target.model) if target.kind == "model" else None,
                "task": target.task, "dataset": target.dataset, "inputs": feeds, **slo}
        try:
            query = protocol.body_of("query", body)
        except protocol.ProtocolError as exc:
            raise FrontError("bad_request", exc.reason) from None
        reply = await self._request("query", query, frames=data)
        b: m.ReplyBody = reply.body
        if reply.type != "reply":
            raise FrontError("internal", f"the master answered a query with {reply.type}")
        names = list(b.output_names) or [f"output_{i}" for i in range(len(b.outputs))]
        outputs = [(n, protocol.unpack_output(o, reply.frames)) for n, o in zip(names, b.outputs)]
        # The model record that ran it (`M`, or `M@vV` for its version V): with the OIP version (the variant) it
        # addresses that variant again; `version` says which version of the model answered.
        model = b.variant.split("/", 1)[0] if "/" in b.variant else (b.model or target.model or "")
        params = {"variant": b.variant, "worker": b.worker, "slo_met": b.slo_met, "latency_ms": b.latency_ms,
                  "predicted_latency_ms": b.predicted_latency_ms, "needs_load": b.needs_load,
                  "decision_us": b.decision_us, "version": b.version}
        return InferResult(model_name=model, model_version=version_of(b.variant, model), outputs=outputs,
                           parameters={k: v for k, v in params.items() if v is not None})

    def _check_inputs(self, name: str, models: list[dict[str, Any]],
                      inputs: dict[str, np.ndarray], frames: list) -> dict[str, m.Tensor]:
        """The inputs as wire tensor descriptors, their bytes appended to `frames`; BYTES (object) inputs to a
        numeric model are refused with the fix."""
        if not inputs:
            raise FrontError("invalid_input", f"the request for '{name}' carries no inputs")
        specs = {s["name"]: s for mod in models for s in mod["inputs"]}
        out: dict[str, m.Tensor] = {}
        for key, arr in inputs.items():
            arr = np.asarray(arr)
            if arr.dtype.kind in "OSU":
                spec = specs.get(key)
                want = spec_datatype(spec) if spec else "a numeric datatype"
                raise FrontError("invalid_input", f"input '{key}' of '{name}' is BYTES, but the model takes {want}; "
                                                  f"send it as {want} numbers")
            if arr.dtype.name not in m.DTYPES:
                raise FrontError("invalid_input", f"input '{key}': datatype {arr.dtype} cannot be served")
            try:
                out[key] = protocol.pack_tensor(arr, frames)
            except protocol.ProtocolError as exc:
                raise FrontError("invalid_input", f"input '{key}': {exc.reason}") from None
        return out

    # -- repository ------------------------------------------------------------------------------------------
    async def repository_index(self) -> list[dict[str, Any]]:
        """One entry per variant: {name: model, version, state, reason}. READY: loaded on a worker now;
        LOADING: being loaded; UNAVAILABLE: in the catalog, loaded on demand (the reason says so)."""
        catalog = await self.catalog(fresh=True)
        entries = []
        for mod in sorted(catalog["models"].values(), key=lambda x: x["name"]):
            for v in mod["variants"]:
                if v["loaded_on"]:
                    state, reason = "READY", f"loaded on {', '.join(v['loaded_on'])}"
                elif v["loading_on"]:
                    state, reason = "LOADING", f"loading on {', '.join(v['loading_on'])}"
                else:
                    state, reason = "UNAVAILABLE", "not loaded; it loads on its first query or on a load request"
                entries.append({"name": mod["name"], "version": version_of(v["name"], mod["name"]),
                                "state": state, "reason": reason})
        return entries

    async def _variants_for(self, name: str, version: str | None) -> tuple[Target, list[dict[str, Any]]]:
        target = await self.resolve(name, version)
        if target.kind == "task":
            raise FrontError("bad_request", f"'{name}' is a task, not a model; load a model or one of its versions")
        variants = (await self.catalog())["models"][target.model]["variants"]
        if target.kind == "variant":
            variants = [v for v in variants if v["name"] == target.variant]
        return target, variants

    async def load(self, name: str, version: str | None) -> None:
        """Pre-load a variant on a worker the master places it on, and wait until it serves (at most
        `load_timeout_s`). A model without a version: its variant already loaded somewhere, else its
        fastest profiled one."""
        target, variants = await self._variants_for(name, version)
        if not variants:
            raise FrontError("not_found", f"model '{target.model}' has no variants; `infaas generate` makes some")
        if target.kind == "model":
            if any(v["loaded_on"] for v in variants):
                return
            profiled = [v for v in variants if v["latency_ms"] is not None]
            variants = [min(profiled or variants, key=lambda v: (v["latency_ms"] or 0.0, v["name"]))]
        chosen = variants[0]["name"]
        await self._request("preload", m.PreloadBody(variant=chosen))
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            catalog = await self.catalog(fresh=True)
            for v in catalog["models"].get(target.model, {}).get("variants", []):
                if v["name"] == chosen and v["loaded_on"]:
                    return
            if time.monotonic() > deadline:
                raise FrontError("unavailable", f"variant {chosen} did not finish loading within "
                                                f"{self.load_timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def unload(self, name: str, version: str | None) -> None:
        """Unload a variant (a model without a version: all its variants) from every worker holding it.
        infaas loads variants on demand, so a later query loads it again."""
        _, variants = await self._variants_for(name, version)
        for v in variants:
            await self._request("unload", m.UnloadBody(variant=v["name"]))
        self._catalog = None


# -- helpers ---------------------------------------------------------------------------------------------

def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


def _tensor_meta(spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": spec["name"], "datatype": spec_datatype(spec), "shape": spec_shape(spec)}


def _common_signature(signatures: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The tensors all models of a task share (dimensions that differ become -1; the first model's order)."""
    if not signatures:
        return []
    metas = [{t["name"]: _tensor_meta(t) for t in sig} for sig in signatures]
    common = []
    for name, meta in metas[0].items():
        others = [mm.get(name) for mm in metas[1:]]
        if any(o is None or o["datatype"] != meta["datatype"] for o in others):
            continue
        shape = list(meta["shape"])
        for o in others:
            if len(o["shape"]) != len(shape):
                shape = [-1]
                break
            shape = [a if a == b else -1 for a, b in zip(shape, o["shape"])]
        common.append({**meta, "shape": shape})
    return common


def _catalog_of(body: m.CatalogReplyBody) -> dict[str, Any]:
    """A catalog_reply as plain data: {"models": {name: model map with "variants"}, "workers_alive": n}."""
    models = {}
    for mod in body.models:
        entry = msgspec.to_builtins(mod)
        entry.setdefault("variants", [])
        entry.setdefault("accuracy", None)
        for v in entry["variants"]:
            for key, default in (("accuracy", None), ("latency_ms", None), ("loaded_on", []), ("loading_on", [])):
                v.setdefault(key, default)
        models[mod.name] = entry
    return {"models": models, "workers_alive": body.workers_alive}


def slo_from_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """The SLO fields of a query from the request's parameters; wrong types are 400s naming the parameter."""
    slo: dict[str, Any] = {}
    for key, types in SLO_PARAMETERS.items():
        value = (parameters or {}).get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            want = "a number" if float in types else "a string"
            raise FrontError("bad_request", f"parameter '{key}' must be {want}, not {value!r}")
        slo[key] = float(value) if float in types else value
    if "objective" in slo and slo["objective"] not in ("cost", "latency"):
        raise FrontError("bad_request", f"parameter 'objective' is 'cost' or 'latency', not {slo['objective']!r}")
    if "slo_mode" in slo and slo["slo_mode"] not in ("best_effort", "strict"):
        raise FrontError("bad_request", f"parameter 'slo_mode' is 'best_effort' or 'strict', not {slo['slo_mode']!r}")
    return slo


def _front_error(body: m.ErrorBody) -> FrontError:
    """A master `error` as a FrontError; no_variant names the best achievable figures."""
    message = body.reason
    if body.code == "no_variant":
        best = []
        if body.best_latency_ms is not None and f"{body.best_latency_ms:g}" not in message:
            best.append(f"best latency {body.best_latency_ms:.3g} ms")
        if body.best_accuracy is not None and "accuracy" not in message:
            best.append(f"best accuracy {body.best_accuracy:.4g}")
        if best:
            message = f"{message} ({'; '.join(best)})"
    return FrontError(body.code, message, best_latency_ms=body.best_latency_ms, best_accuracy=body.best_accuracy,
                      predicted_latency_ms=body.predicted_latency_ms)


def decode_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    """Triton's BYTES serialisation (REST binary data and gRPC raw contents): each element a 4-byte
    little-endian length, then its bytes. A malformed buffer is a `bad_request` naming the input."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise FrontError("bad_request", f"input '{name}': BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise FrontError("bad_request", f"input '{name}': a BYTES element runs past the end of the data")
        items.append(raw[at:at + n])
        at += n
    if len(items) != count:
        raise FrontError("bad_request", f"input '{name}': {len(items)} BYTES elements for a shape of {count}")
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr
