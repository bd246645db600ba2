"""The Python client: queries of the three kinds (one at a time or many in flight), status, and replication push."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import msgspec
import zmq

from infaas_cli import protocol
from infaas_cli.protocol.messages import CatalogBody, ErrorBody, PreloadBody, RemoveBody, StatusBody, UnloadBody
from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.config import infaas_home
from infaas_cli.errors import ERROR_CODES, InfaasError, InvalidInputError, NotFoundError
from infaas_cli.catalog.store import MetadataStore

MASTER_ENV = "INFAAS_MASTER"
PUSH_BATCH = 500
CHUNK_BYTES = 1 << 20


def _plain(value: Any) -> Any:
    """A reply body as plain dicts and lists, every field present (the wire form leaves defaults out)."""
    if isinstance(value, msgspec.Struct):
        return {name: _plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class MasterUnreachableError(InfaasError):
    code = "unavailable"


class QueryFailed(InfaasError):
    """The master answered with an error; `code` is the protocol's stable error code."""

    def __init__(self, code: str, reason: str, body: dict[str, Any] | None = None) -> None:
        # A newer master may send a code this build does not know: it stays in body; the error says internal.
        super().__init__(reason, code=code if code in ERROR_CODES else "internal")
        self.body = body or {}


@dataclass
class QueryResult:
    outputs: list[Any]
    variant: str
    worker: str
    decision_us: float
    timing: dict[str, Any]
    latency_ms: float  # end to end at infaas's front (arrival at the master → reply leaving it): what the SLO bounds
    needs_load: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    slo_met: bool | None = None  # None: the query set no latency bound
    predicted_latency_ms: float | None = None  # what selection predicted for latency_ms
    client_latency_ms: float | None = None  # as this client saw it (network and client included)
    model: str | None = None
    output_names: list[str] = field(default_factory=list)
    cached: bool = False  # answered from the master's prediction cache (no worker ran it)
    version: int = 1  # the version of `model` that answered (its version policy's pick for a query by model name)

    @property
    def outputs_by_name(self) -> dict[str, Any]:
        """The outputs keyed by the model's output names (as tritonclient gives them)."""
        names = self.output_names or [f"output_{i}" for i in range(len(self.outputs))]
        return dict(zip(names, self.outputs))

    def as_numpy(self, name: str) -> Any:
        """One output by the model's name for it, as tritonclient's InferResult.as_numpy(name); `outputs` has
        them in the model's order. An unknown name raises NotFoundError listing the names there are."""
        by_name = self.outputs_by_name
        if name not in by_name:
            raise NotFoundError(f"{self.model or 'the model'} has no output {name!r}; its outputs: "
                                f"{', '.join(by_name) or 'none'}")
        return by_name[name]


def endpoints_file(home: str | Path | None = None) -> Path:
    return infaas_home(home) / "run" / "master.json"


def resolve_master(explicit: str | None = None, home: str | Path | None = None, settings: Any = None) -> str | None:
    """The master's client endpoint: --master, else client.master of the settings ($INFAAS_MASTER, the config
    files), else the embedded one `infaas up` recorded. `settings` are loaded when not given."""
    if explicit:
        return explicit
    if settings is None:
        from infaas_cli.settings import load_settings

        settings, _ = load_settings(home=home)
    if settings.client.master:
        return settings.client.master
    path = endpoints_file(home)
    if path.is_file():
        try:
            return json.loads(path.read_text())["client_endpoint"]
        except (ValueError, KeyError):
            return None
    return None


def load_input_file(path: Path) -> dict[str, np.ndarray]:
    """Query inputs from a file: .npz keyed by input name, or .npy for a single-input model (named "")."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        return {"": np.load(path, allow_pickle=False)}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InvalidInputError(f"{path} holds an object array (pickled Python objects), which infaas never "
                                    "loads; save numbers instead, e.g. numpy.save(path, numpy.asarray(data, "
                                    "dtype=numpy.float32))") from None
        raise InfaasError(f"cannot read {path}: {exc}; save it with numpy.save or numpy.savez") from None
    except (OSError, EOFError) as exc:
        raise InfaasError(f"cannot read {path}: {exc}; save it with numpy.save or numpy.savez") from None


def query_arrays(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The inputs as the numeric arrays a query carries; text, bytes, objects and ragged lists are refused with
    the fix (a model takes tensors of numbers: encode text as numbers, e.g. token ids, before sending it)."""
    arrays = {}
    for name, value in inputs.items():
        label = f"input {name!r}" if name else "the input"
        try:
            arr = np.asarray(value)
        except ValueError:  # numpy refuses ragged nesting
            raise InvalidInputError(f"{label} is a ragged list (rows of different lengths); pass one rectangular "
                                    "numeric array, e.g. numpy.asarray(rows, dtype=numpy.float32), padding the "
                                    "rows to one length") from None
        if arr.dtype.kind in "USO":
            what = {"U": "a string array", "S": "a bytes array", "O": "an object array"}[arr.dtype.kind]
            raise InvalidInputError(f"{label} is {what} (dtype {arr.dtype}); infaas models take numeric tensors: "
                                    "convert it to numbers first (e.g. text to token ids, then "
                                    "numpy.asarray(ids, dtype=numpy.int64))")
        arrays[name] = arr
    return arrays


def query_message(inputs: dict[str, np.ndarray], *, variant: str | None = None, model: str | None = None,
                  task: str | None = None, dataset: str | None = None, latency_ms: float | None = None,
                  min_accuracy: float | None = None, objective: str = "cost",
                  max_cost_usd: float | None = None, slo_mode: str | None = None,
                  request_id: str | None = None) -> protocol.Message:
    """A query message: the typed body with one descriptor per input, the inputs' bytes as its data frames."""
    if variant:
        kind = "variant"
    elif model:
        kind = "model"
    elif task:
        kind = "task"
    else:
        raise InfaasError("say what to run: a variant, a model, or a task and dataset (--task T --dataset D)")
    if kind == "task" and not dataset:
        raise InfaasError("a model-less query names a dataset too (--dataset D)")
    inputs = query_arrays(inputs)
    try:
        tensors, frames = protocol.pack_tensors(inputs)
        body = protocol.body_of("query", {
            "kind": kind, "variant": variant, "model": model, "task": task, "dataset": dataset,
            "latency_ms": latency_ms, "min_accuracy": min_accuracy, "objective": objective,
            "max_cost_usd": max_cost_usd, "slo_mode": slo_mode, "inputs": tensors})
    except protocol.ProtocolError as exc:
        raise InfaasError(f"this query cannot be sent: {exc.reason}") from None
    msg = protocol.Message("query", body, frames=frames)
    if request_id is not None:
        msg.id = request_id
    return msg


def _failed(body: ErrorBody) -> QueryFailed:
    return QueryFailed(body.code, body.reason, msgspec.structs.asdict(body))


class Client:
    """A DEALER connection to the master's client endpoint. Not thread-safe: one per thread."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0, curve_secret_key: str | Path | None = None,
                 master_public_key: str | Path | None = None) -> None:
        """CurveZMQ keys come from the arguments or from INFAAS_CURVE_SECRET_KEY / INFAAS_MASTER_PUBLIC_KEY."""
        from infaas_cli.security import client_keys_from_env, make_client
        from infaas_cli.settings import endpoint_error

        problem = endpoint_error(endpoint)
        if problem is not None:
            raise InfaasError(f"the master's client endpoint {problem}; pass it as --master, INFAAS_MASTER or "
                              "client.master", code="bad_config")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        keys = client_keys_from_env(curve_secret_key, master_public_key)
        if keys:
            make_client(self._sock, *keys)
        self._sock.connect(endpoint)
        self._sent_at: dict[str, float] = {}
        self._done: dict[str, QueryResult | QueryFailed] = {}

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- low level -------------------------------------------------------------------------------------
    def _send(self, msg: protocol.Message, timeout_s: float | None = None) -> str:
        # Zero-copy above ZeroMQ's copy threshold: the arrays must not change until the reply arrives.
        frames = protocol.encode(msg)
        # A DEALER with no usable connection (the master down, or refusing our keys) would block the send for
        # ever: wait as long as for an answer (`timeout_s`, default this client's), then say so.
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        if not self._sock.poll(int(wait_s * 1e3), zmq.POLLOUT):
            raise MasterUnreachableError(
                f"cannot send to the master at {self.endpoint} within {wait_s:g} s; is it running, and does "
                "it accept this client's keys? Start one with `infaas up`, or point --master / INFAAS_MASTER at it")
        self._sock.send_multipart(frames, zmq.NOBLOCK, copy=not protocol.zero_copy(frames))
        self._sent_at[msg.id] = time.monotonic()
        return msg.id

    def _receive_one(self, deadline: float, timeout_s: float) -> protocol.Message:
        """The next message, waiting until `deadline`; `timeout_s` is the whole wait, named in the error."""
        remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1e3)
        if not self._sock.poll(remaining_ms, zmq.POLLIN):
            raise MasterUnreachableError(
                f"no answer from the master at {self.endpoint} within {timeout_s:g} s; is it running? "
                "Start one with `infaas up`, or point --master / INFAAS_MASTER at it")
        return protocol.decode(self._sock.recv_multipart(copy=False))

    def _request(self, msg: protocol.Message, timeout_s: float | None = None) -> protocol.Message:
        """Send and wait for the answer to `msg`, up to `timeout_s` (default this client's timeout) for the send
        and again for the answer; other answers arriving meanwhile are kept for gather()."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        self._send(msg, wait_s)
        deadline = time.monotonic() + wait_s
        while True:
            reply = self._receive_one(deadline, wait_s)
            if reply.id == msg.id:
                self._sent_at.pop(msg.id, None)
                if reply.type == "error":
                    raise _failed(reply.body)
                return reply
            self._store_reply(reply)

    def _store_reply(self, reply: protocol.Message) -> None:
        sent = self._sent_at.pop(reply.id, None)
        if sent is None:
            return  # an answer to a request given up on
        if reply.type == "error":
            self._done[reply.id] = _failed(reply.body)
            return
        if reply.type != "reply":
            self._done[reply.id] = QueryFailed("internal", f"the master answered a query with {reply.type}")
            return
        b = reply.body
        self._done[reply.id] = QueryResult(
            outputs=[protocol.unpack_output(o, reply.frames) for o in b.outputs], variant=b.variant, worker=b.worker,
            decision_us=b.decision_us, timing=dict(b.timing), latency_ms=b.latency_ms,
            needs_load=b.needs_load, extra={"attempts": b.attempts, "output_names": list(b.output_names)},
            slo_met=b.slo_met, predicted_latency_ms=b.predicted_latency_ms,
            client_latency_ms=(time.monotonic() - sent) * 1e3, model=b.model, output_names=list(b.output_names),
            cached=b.cached, version=b.version)

    # -- queries ---------------------------------------------------------------------------------------
    def submit(self, inputs: dict[str, np.ndarray], **slo: Any) -> str:
        """Send a query without waiting; collect it with gather(). Large inputs are sent from their own memory
        (zero-copy): leave the arrays unchanged until the query's answer is gathered."""
        return self._send(query_message(inputs, **slo))

    def gather(self, ids: list[str], timeout_s: float | None = None) -> dict[str, QueryResult | QueryFailed]:
        """Wait for the answers to submitted queries (each a QueryResult or a QueryFailed)."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        while any(i not in self._done for i in ids):
            self._store_reply(self._receive_one(deadline, wait_s))
        return {i: self._done.pop(i) for i in ids}

    def query(self, inputs: dict[str, np.ndarray], **slo: Any) -> QueryResult:
        """One query, synchronously. Raises QueryFailed with the master's error code and reason."""
        rid = self.submit(inputs, **slo)
        result = self.gather([rid])[rid]
        if isinstance(result, QueryFailed):
            raise result
        return result

    def status(self, workers_offset: int = 0, workers_limit: int = 100) -> dict[str, Any]:
        """The master's summary and one page of its workers (`master.workers_total` counts them all)."""
        body = self._request(protocol.Message("status", StatusBody(workers_offset=workers_offset,
                                                                    workers_limit=workers_limit))).body
        return {"master": body.master, "workers": body.workers}

    # -- the catalog and the model lifecycle ---------------------------------------------------------------
    def catalog(self, model: str | None = None) -> dict[str, Any]:
        """The catalog as the master serves it: models, variants, and where each is loaded or pinned."""
        return _plain(self._request(protocol.Message("catalog", CatalogBody(model=model))).body)

    def pin(self, variant: str, replicas: int = 1, worker: str | None = None) -> dict[str, Any]:
        """Keep `replicas` copies of a variant loaded and warm (on `worker`, or where the master places them):
        never evicted or unloaded by autoscaling until `unpin`. Answered at once; the loads go on."""
        body = PreloadBody(variant=variant, pin=True, replicas=replicas, worker=worker)
        return _plain(self._request(protocol.Message("preload", body)).body)

    def unpin(self, variant: str, worker: str | None = None) -> dict[str, Any]:
        """Drop a variant's pin (or its share on `worker`) and unload it there; a later query loads it again."""
        body = UnloadBody(variant=variant, worker=worker)
        return _plain(self._request(protocol.Message("unload", body)).body)

    def remove(self, models: list[str], drain: bool = False, timeout_s: float = 30.0) -> dict[str, Any]:
        """Before deleting models' records: the master refuses while they serve, or (drain) stops routing to them,
        waits for their queries and unloads them everywhere. Waits up to `timeout_s` (plus this client's own)."""
        body = RemoveBody(models=models, drain=drain, timeout_s=timeout_s)
        wait_s = self.timeout_s + timeout_s if drain else self.timeout_s
        return _plain(self._request(protocol.Message("remove", body), timeout_s=wait_s).body)

    # -- replication -------------------------------------------------------------------------------------
    def push(self, store: MetadataStore, artifacts: ArtifactStore) -> dict[str, Any]:
        """Ship the store's change log and the artifacts the master lacks; safe to repeat."""
        source = store.store_id()
        ack = self._request(protocol.Message("changes", {"source": source, "entries": []})).body
        last, sent = ack.last_seq or 0, 0
        while True:
            entries = [c.to_dict() for c in store.changes(after_seq=last, limit=PUSH_BATCH)]
            if not entries:
                break
            try:
                ack = self._request(protocol.Message("changes", {"source": source, "entries": entries})).body
            except QueryFailed as exc:
                if exc.code == "sequence_gap" and exc.body.get("last_seq") is not None:
                    last = exc.body["last_seq"]
                    continue
                raise
            sent += ack.applied or 0
            last = ack.last_seq or 0
        missing = ack.missing_artifacts or []
        uploaded = 0
        for sha in missing:
            if artifacts.has(sha):
                self._upload(artifacts.verify(sha), sha)
                uploaded += 1
        return {"source": source, "last_seq": last, "applied": sent, "artifacts_uploaded": uploaded,
                "missing_here": [s for s in missing if not artifacts.has(s)]}

    def _upload(self, path: Path, sha: str) -> None:
        total = path.stat().st_size
        with open(path, "rb") as fh:
            offset = 0
            while True:
                data = fh.read(CHUNK_BYTES)
                ack = self._request(protocol.Message("artifact_chunk", {"sha256": sha, "offset": offset, "data": data,
                                                                        "total_bytes": total})).body
                offset += len(data)
                if ack.complete or not data:
                    return
