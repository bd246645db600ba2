"""The gateway's gRPC door (Triton's inference.GRPCInferenceService) as tritonclient.grpc sees it.

Two halves: the servicer over a fake Front (every status code and tensor encoding, no cluster), and
the real stack — `infaas up` with its gateway process — queried by model, variant and TASK@DATASET.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import struct
import subprocess
import threading

import grpc
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from infaas_daemons.gateway import core  # noqa: E402
from infaas_daemons.gateway.core import FrontError, InferResult  # noqa: E402
from infaas_daemons.gateway.grpc_server import serve_grpc  # noqa: E402

pytestmark = pytest.mark.timeout(90)


# -- helpers ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def grpc_door(make_front, tls: tuple[str, str] | None = None):
    """serve_grpc on its own event loop in a thread, on an ephemeral port; yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-door", daemon=True)
    thread.start()

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(20)

    async def start():
        front = make_front()
        if hasattr(front, "start"):
            await front.start()
        server, port = await serve_grpc(front, "127.0.0.1", 0, tls)
        return front, server, port

    async def stop(front, server):
        await server.stop(0)
        if hasattr(front, "close"):
            await front.close()

    front, server, port = call(start())
    try:
        yield port
    finally:
        call(stop(front, server))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@contextlib.contextmanager
def triton(port: int):
    client = InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        yield client
    finally:
        client.close()


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def infer_input(name: str, arr: np.ndarray, datatype: str) -> InferInput:
    inp = InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def params_of(response) -> dict:
    return {k: getattr(p, p.WhichOneof("parameter_choice")) for k, p in response.parameters.items()}


# -- the servicer over a fake Front ----------------------------------------------------------------------

class FakeFront:
    """Echoes inputs back and fails on demand: the model name picks the infaas error code."""

    FAILING = {"busy": "overloaded", "empty": "unavailable", "nope": "unknown_model", "strict": "no_variant",
               "wrong": "invalid_input"}

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return False

    def server_metadata(self) -> dict:
        return {"name": "infaas", "version": "9.9", "extensions": ["model_repository"]}

    def _fail(self, name: str) -> None:
        if name in self.FAILING:
            raise FrontError(self.FAILING[name], f"{self.FAILING[name]}: {name}")
        if name == "boom":
            raise RuntimeError("a bug, not the user's mistake")

    async def model_metadata(self, name, version):
        self._fail(name)
        return {"name": name, "versions": ["v1"], "platform": core.PLATFORM,
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}]}

    async def model_ready(self, name, version):
        self._fail(name)
        return version != "cold"

    async def infer(self, name, version, inputs, parameters):
        self.calls.append(("infer", name, version, inputs, parameters))
        self._fail(name)
        outputs = [(f"{k}_out", v) for k, v in inputs.items()] + [("labels", ["a", "bc"]),
                                                                  ("zipmap", [{"0": 0.25, "1": 0.75}])]
        return InferResult(model_name=name, model_version=version or "chosen-recipe", outputs=outputs,
                           parameters={"variant": f"{name}/chosen-recipe", "worker": "local-0", "slo_met": True,
                                       "latency_ms": 1.25})

    async def repository_index(self):
        return [{"name": "m", "version": "a", "state": "READY", "reason": "loaded on local-0"},
                {"name": "m", "version": "b", "state": "UNAVAILABLE", "reason": "not loaded"}]

    async def load(self, name, version):
        self.calls.append(("load", name, version))
        self._fail(name)

    async def unload(self, name, version):
        self.calls.append(("unload", name, version))
        self._fail(name)


@pytest.fixture(scope="module")
def fake():
    front = FakeFront()
    with grpc_door(lambda: front) as port:
        yield front, port


def test_health_metadata_and_repository_over_a_fake_front(fake):
    front, port = fake
    with triton(port) as client:
        assert client.is_server_live() and not client.is_server_ready()
        meta = client.get_server_metadata(as_json=True)
        assert meta["name"] == "infaas" and meta["version"] == "9.9" and meta["extensions"] == ["model_repository"]
        mm = client.get_model_metadata("m", as_json=True)
        assert mm["platform"] == "onnxruntime_onnx" and mm["versions"] == ["v1"]
        assert mm["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
        assert client.is_model_ready("m") and not client.is_model_ready("m", "cold")
        config = client.get_model_config("m", as_json=True)["config"]
        assert config.get("max_batch_size", 0) == 0  # the dims are the full shape, batch included
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"] + config["output"]] == \
            [("x", "TYPE_FP32", ["-1", "4"]), ("y", "TYPE_INT64", ["-1"])]
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(e["name"], e["version"], e["state"]) for e in index] == \
            [("m", "a", "READY"), ("m", "b", "UNAVAILABLE")]
        client.load_model("m")
        client.unload_model("m")
        assert front.calls[-2:] == [("load", "m", None), ("unload", "m", None)]

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready_only = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
        assert [(e.name, e.version) for e in ready_only.models] == [("m", "a")]
        load = service_pb2.RepositoryModelLoadRequest(model_name="m")
        load.parameters["version"].string_param = "ort-cpu-fp32o1-t1-b8"
        stub.RepositoryModelLoad(load)
        assert front.calls[-1] == ("load", "m", "ort-cpu-fp32o1-t1-b8")
        upload = service_pb2.RepositoryModelLoadRequest(model_name="m")
        upload.parameters["config"].string_param = "{}"
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(upload)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "infaas register" in err.value.details()


def test_raw_contents_round_trip_every_datatype(fake):
    front, port = fake
    arrays = {"f32": (np.arange(6, dtype=np.float32).reshape(2, 3), "FP32"),
              "f16": (np.array([[0.5, -2.0]], dtype=np.float16), "FP16"),
              "i64": (np.array([[1, -2, 3]], dtype=np.int64), "INT64"),
              "u8": (np.array([0, 255], dtype=np.uint8), "UINT8"),
              "b": (np.array([True, False]), "BOOL"),
              "s": (np.array([b"hi", b"", "\u00e9".encode()], dtype=object), "BYTES")}
    with triton(port) as client:
        result = client.infer("m", [infer_input(k, a, dt) for k, (a, dt) in arrays.items()],
                              parameters={"latency_ms": 20, "min_accuracy": "0.9", "objective": "latency"},
                              request_id="r-7")
    _, name, version, inputs, parameters = front.calls[-1]
    assert (name, version) == ("m", None)
    assert parameters == {"latency_ms": 20, "min_accuracy": 0.9, "objective": "latency"}  # "0.9": tritonclient's float
    for key, (arr, datatype) in arrays.items():
        assert inputs[key].dtype == arr.dtype and inputs[key].shape == arr.shape
        np.testing.assert_array_equal(inputs[key], arr)
        out = result.as_numpy(f"{key}_out")
        assert result.get_output(f"{key}_out").datatype == datatype
        np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(result.as_numpy("labels"), np.array([b"a", b"bc"], dtype=object))
    assert json.loads(result.as_numpy("zipmap")[0]) == {"0": 0.25, "1": 0.75}  # a map travels as JSON text
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("m", "chosen-recipe", "r-7")
    assert params_of(response) == {"variant": "m/chosen-recipe", "worker": "local-0", "slo_met": True,
                                   "latency_ms": 1.25}


def test_typed_contents_and_requested_outputs(fake):
    front, port = fake
    request = service_pb2.ModelInferRequest(model_name="m", model_version="v1")
    x = request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    x.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    ids = request.inputs.add(name="ids", datatype="INT32", shape=[3])
    ids.contents.int_contents.extend([7, -8, 9])
    words = request.inputs.add(name="w", datatype="BYTES", shape=[1])
    words.contents.bytes_contents.append(b"ok")
    request.outputs.add(name="ids_out")
    request.outputs.add(name="x_out")
    request.parameters["latency_ms"].double_param = 2.5
    request.parameters["priority"].uint64_param = 3  # Triton's own; never reaches the Front
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        _, _, version, inputs, parameters = front.calls[-1]
        assert version == "v1" and parameters == {"latency_ms": 2.5}
        np.testing.assert_array_equal(inputs["x"], np.array([[1, 2], [3, 4]], dtype=np.float32))
        assert inputs["ids"].dtype == np.int32 and inputs["w"].tolist() == [b"ok"]
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == \
            [("ids_out", "INT32", [3]), ("x_out", "FP32", [2, 2])]
        assert np.frombuffer(response.raw_output_contents[0], "<i4").tolist() == [7, -8, 9]
        assert response.model_version == "v1"

        def bad(mutate) -> tuple[grpc.StatusCode, str]:
            req = service_pb2.ModelInferRequest()
            req.CopyFrom(request)
            mutate(req)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req)
            return err.value.code(), err.value.details()

        code, msg = bad(lambda r: r.inputs[0].contents.fp32_contents.append(5.0))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "5 values for shape [2, 2]" in msg
        code, msg = bad(lambda r: r.raw_input_contents.append(b"\0" * 16))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw contents for every input" in msg
        code, msg = bad(lambda r: setattr(r.inputs[0], "datatype", "BF16"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "BF16" in msg
        code, msg = bad(lambda r: r.outputs.add(name="nope"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'nope'" in msg
        code, msg = bad(lambda r: setattr(r.parameters["latency_ms"], "string_param", "fast"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "latency_ms" in msg
        raw = service_pb2.ModelInferRequest(model_name="m")
        raw.inputs.add(name="s", datatype="BYTES", shape=[2])
        raw.raw_input_contents.append(struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"b")
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(raw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "past the end" in err.value.details()


def test_front_errors_become_their_grpc_status(fake):
    _, port = fake
    x = infer_input("x", np.zeros((1, 4), np.float32), "FP32")
    with triton(port) as client:
        for name, status in [("busy", "StatusCode.RESOURCE_EXHAUSTED"), ("empty", "StatusCode.UNAVAILABLE"),
                             ("nope", "StatusCode.NOT_FOUND"), ("strict", "StatusCode.INVALID_ARGUMENT"),
                             ("wrong", "StatusCode.INVALID_ARGUMENT")]:
            got, message = status_of(lambda: client.infer(name, [x]))
            assert got == status and name in message
        assert status_of(lambda: client.get_model_metadata("nope"))[0] == "StatusCode.NOT_FOUND"
        assert status_of(lambda: client.load_model("busy"))[0] == "StatusCode.RESOURCE_EXHAUSTED"
        got, message = status_of(lambda: client.infer("boom", [x]))
        assert got == "StatusCode.INTERNAL" and "Traceback" not in message and "bug" not in message
        assert status_of(lambda: client.get_inference_statistics("m"))[0] == "StatusCode.UNIMPLEMENTED"


def test_tls_and_a_port_in_use(tmp_path):
    from infaas_cli.errors import ConfigError

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    with grpc_door(FakeFront, tls=(str(cert), str(key))) as port:
        client = InferenceServerClient(url=f"localhost:{port}", ssl=True, root_certificates=str(cert))
        try:
            assert client.is_server_live()
        finally:
            client.close()
        with triton(port) as plain:  # a plaintext client cannot talk to a TLS port
            assert status_of(plain.is_server_live)[0] == "StatusCode.UNAVAILABLE"

        async def second_on_same_port():
            await serve_grpc(FakeFront(), "127.0.0.1", port, None)

        with pytest.raises(ConfigError, match="choose another --grpc-port"):
            asyncio.run(second_on_same_port())

    async def missing_key():
        await serve_grpc(FakeFront(), "127.0.0.1", 0, (str(cert), str(tmp_path / "missing.pem")))

    with pytest.raises(ConfigError, match="gateway.tls_key_file .*missing.pem cannot be read"):
        asyncio.run(missing_key())


# -- the real stack: `infaas up` with the gateway process -------------------------------------------------

LIVE_MODELS = ("digits-logreg", "digits-mlp")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`infaas up` with its gateway: one worker serving two digits models, an integer-input and a
    two-input model; yields (the gateway's gRPC port, the catalog home, {model: ONNX file})."""
    from infaas_cli.client import Client
    from infaas_cli.cluster import embedded
    from infaas_cli.toolkit.generate import generate_variants
    from infaas_cli.toolkit.profiler import profile_models
    from infaas_cli.toolkit.register import register_model
    from support import FAST, ZOO, build_catalog, make_int_input_model, make_two_input_model

    root = tmp_path_factory.mktemp("front_grpc")
    home = build_catalog(root / "home", models=LIVE_MODELS)
    files = {name: ZOO[name].file for name in LIVE_MODELS}
    rng = np.random.default_rng(7)
    files["ids"] = make_int_input_model(root / "ids.onnx")
    np.savez(root / "ids.npz", ids=rng.integers(0, 10, size=(40, 5)))
    files["pair"] = make_two_input_model(root / "pair.onnx")
    np.savez(root / "pair.npz", a=rng.normal(size=(40, 4)).astype(np.float32),
             b=rng.normal(size=(40, 4)).astype(np.float32))
    for name in ("ids", "pair"):
        register_model(home, files[name], name, "toy", f"{name}set", root / f"{name}.npz")
        generate_variants(home, name)
    profile_models(home, ["ids", "pair"], batch_sizes=[1, 8], settings=FAST)

    record = embedded.up(workers=1, home=home.path, heartbeat_interval_s=0.25, grpc_port=0, http_port=0)
    try:
        with Client(record["master"]["client_endpoint"], timeout_s=30.0) as client:
            client.push(home.store, home.artifacts)
        yield record["fronts"]["grpc_port"], home, files
    finally:
        embedded.down(home.path)
        home.close()


def reference(files, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(files[name]))
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def variant_versions(home, model: str) -> list[str]:
    return sorted(v.name.split("/", 1)[1] for v in home.store.variants() if v.model == model)


def fp32_version(home, model: str, batch: int) -> str:
    """An fp32 variant taking `batch` samples: its outputs match ONNX Runtime's on the original closely."""
    return next(v.name.split("/", 1)[1] for v in home.store.variants()
                if v.model == model and v.precision == "fp32" and v.max_batch >= batch)


def assert_matches(result, want: dict[str, np.ndarray], version: str) -> None:
    """Every output as ONNX Runtime gives it: closely for an fp32 variant; shapes only for a quantised one,
    whose numbers legitimately differ."""
    for name, arr in want.items():
        got = result.as_numpy(name)
        assert got.shape == arr.shape
        if "fp32" in version:
            np.testing.assert_allclose(got, arr, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_live_health_and_metadata(live):
    from support import wait_for

    port, home, _ = live
    with triton(port) as client:
        assert client.is_server_live()
        wait_for(client.is_server_ready, timeout_s=20)
        meta = client.get_server_metadata(as_json=True)
        assert meta["name"] == "infaas" and "infaas_model_less" in meta["extensions"]

        mlp = client.get_model_metadata("digits-mlp", as_json=True)
        assert sorted(mlp["versions"]) == variant_versions(home, "digits-mlp")
        assert mlp["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "64"]}]
        version = mlp["versions"][0]
        one = client.get_model_metadata("digits-mlp", version, as_json=True)
        assert one["versions"] == [version]
        assert client.is_model_ready("digits-mlp") and client.is_model_ready("digits-mlp", version)
        config = client.get_model_config("digits-mlp", as_json=True)["config"]
        assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "64"]}]

        task = client.get_model_metadata("digit-classification@digits", as_json=True)
        assert {v.split("/")[0] for v in task["versions"]} == set(LIVE_MODELS)
        assert task["inputs"][0]["name"] == "x"
        ids = client.get_model_metadata("ids", as_json=True)
        assert ids["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": ["-1", "5"]}]
        assert not client.is_model_ready("no-such-model")


@pytest.mark.slow
def test_live_infer_by_model_variant_and_task(live):
    from support import digits_x

    port, home, files = live
    x = digits_x(4)
    want = reference(files, "digits-mlp", {"x": x})
    with triton(port) as client:
        by_model = client.infer("digits-mlp", [infer_input("x", x, "FP32")],
                                parameters={"latency_ms": 1000, "objective": "latency"})
        response = by_model.get_response()
        params = params_of(response)
        assert response.model_name == "digits-mlp" and response.model_version in variant_versions(home, "digits-mlp")
        assert params["variant"] == f"digits-mlp/{response.model_version}"
        assert params["worker"] == "local-0" and params["slo_met"] is True and params["latency_ms"] > 0
        assert_matches(by_model, want, response.model_version)

        fp32 = fp32_version(home, "digits-mlp", len(x))
        by_variant = client.infer("digits-mlp", [infer_input("x", x, "FP32")], model_version=fp32,
                                  outputs=[InferRequestedOutput(next(iter(want)))])
        assert by_variant.get_response().model_version == fp32
        assert [o.name for o in by_variant.get_response().outputs] == [next(iter(want))]
        np.testing.assert_allclose(by_variant.as_numpy(next(iter(want))), next(iter(want.values())),
                                   rtol=1e-3, atol=1e-4)

        modelless = client.infer("digit-classification@digits", [infer_input("x", x, "FP32")],
                                 parameters={"latency_ms": 1000, "min_accuracy": "0.9", "objective": "cost"})
        response = modelless.get_response()
        assert response.model_name in LIVE_MODELS
        assert params_of(response)["variant"] == f"{response.model_name}/{response.model_version}"

    # typed contents (no raw), straight on Triton's stub
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits-mlp", model_version=fp32)
        tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
        request.parameters["latency_ms"].double_param = 1000.0
        typed = stub.ModelInfer(request)
        assert typed.model_name == "digits-mlp" and typed.model_version == fp32
        first = typed.outputs[0]
        got = np.frombuffer(typed.raw_output_contents[0],
                            core.numpy_dtype(first.datatype).newbyteorder("<")).reshape(list(first.shape))
        np.testing.assert_allclose(got, want[first.name], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_live_integer_and_multi_input_models(live):
    port, home, files = live
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 10, size=(3, 5)).astype(np.int64)
    a, b = (rng.normal(size=(2, 4)).astype(np.float32) for _ in range(2))
    ids_want, pair_want = reference(files, "ids", {"ids": ids}), reference(files, "pair", {"a": a, "b": b})
    with triton(port) as client:
        got = client.infer("ids", [infer_input("ids", ids, "INT64")], parameters={"latency_ms": 1000})
        assert_matches(got, ids_want, got.get_response().model_version)
        got = client.infer("pair", [infer_input("a", a, "FP32"), infer_input("b", b, "FP32")])
        assert_matches(got, pair_want, got.get_response().model_version)
        pair_fp32 = fp32_version(home, "pair", len(a))
        got = client.infer("pair", [infer_input("a", a, "FP32"), infer_input("b", b, "FP32")],
                           model_version=pair_fp32)
        assert_matches(got, pair_want, pair_fp32)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # typed int64 contents
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="ids", model_version=fp32_version(home, "ids", len(ids)))
        request.inputs.add(name="ids", datatype="INT64", shape=[3, 5]).contents.int64_contents.extend(
            ids.reshape(-1).tolist())
        typed = stub.ModelInfer(request)
        np.testing.assert_allclose(np.frombuffer(typed.raw_output_contents[0], "<f4").reshape(3, 3),
                                   ids_want["scores"], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_live_errors_carry_their_status(live):
    from support import digits_x

    port, _, _ = live
    x = digits_x(1)
    with triton(port) as client:
        status, message = status_of(lambda: client.infer("no-such-model", [infer_input("x", x, "FP32")]))
        assert status == "StatusCode.NOT_FOUND" and "no-such-model" in message
        status, _ = status_of(lambda: client.infer("digits-mlp", [infer_input("x", x, "FP32")], model_version="v9"))
        assert status == "StatusCode.NOT_FOUND"
        status, message = status_of(lambda: client.infer("digits-mlp", [infer_input("x", x[:, :10], "FP32")]))
        assert status == "StatusCode.INVALID_ARGUMENT" and "x" in message
        status, message = status_of(lambda: client.infer(
            "digit-classification@digits", [infer_input("x", x, "FP32")], parameters={"min_accuracy": "0.9999"}))
        assert status == "StatusCode.INVALID_ARGUMENT" and "accuracy" in message  # names the best figure
        status, message = status_of(lambda: client.infer("digits-mlp", [infer_input("x", x, "FP32")],
                                                         parameters={"objective": "speed"}))
        assert status == "StatusCode.INVALID_ARGUMENT" and "objective" in message


@pytest.mark.slow
def test_live_repository_index_load_and_unload(live):
    from support import wait_for

    port, home, _ = live
    versions = variant_versions(home, "pair")
    with triton(port) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {(e["name"], e["version"]) for e in index} >= {("pair", v) for v in versions}

        def state(version: str) -> str:
            for e in client.get_model_repository_index(as_json=True)["models"]:
                if (e["name"], e["version"]) == ("pair", version):
                    return e.get("state", "")
            return "missing"

        client.load_model(f"pair/{versions[0]}")  # tritonclient has no version argument: the variant's full name
        assert state(versions[0]) == "READY"
        client.unload_model(f"pair/{versions[0]}")
        wait_for(lambda: state(versions[0]) != "READY", timeout_s=10)
        assert status_of(lambda: client.load_model("no-such-model"))[0] == "StatusCode.NOT_FOUND"
