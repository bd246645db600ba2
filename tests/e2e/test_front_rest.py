"""End to end: the REST front (Open Inference Protocol) of `infaas up`, driven by tritonclient.http and curl.

One cluster for the module (`infaas up` with the gateway on free ports): metadata, health, inference by
model, by variant (model + version) and model-less (TASK@DATASET), JSON and binary tensors, integer and
multi-input models, SLO parameters in and the SLO outcome out, every error status, the repository extension.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from infaas_cli.client import Client  # noqa: E402
from infaas_cli.cluster import embedded  # noqa: E402
from infaas_cli.toolkit.generate import generate_variants  # noqa: E402
from infaas_cli.toolkit.profiler import profile_models  # noqa: E402
from infaas_cli.toolkit.register import register_model  # noqa: E402
from support import FAST, build_catalog, digits_x, make_int_input_model, make_two_input_model, wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MODEL = "digits-mlp"
TASK = "digit-classification@digits"
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("front-rest") / "home"
    home = build_catalog(path, models=(MODEL,))
    files = tmp_path_factory.mktemp("front-rest-models")
    register_model(home, make_int_input_model(files / "ids.onnx"), "toy-ids", "scoring", "toy", accuracy=0.9)
    register_model(home, make_two_input_model(files / "two.onnx"), "toy-two", "summing", "toy", accuracy=0.9)
    for name in ("toy-ids", "toy-two"):
        generate_variants(home, name)
    profile_models(home, ["toy-ids", "toy-two"], batch_sizes=[1, 8], settings=FAST)
    old_home = os.environ.get("INFAAS_HOME")
    os.environ["INFAAS_HOME"] = str(home.path)
    record = embedded.up(workers=1, home=home.path, heartbeat_interval_s=0.25, http_port=0, grpc_port=0,
                         overrides={"master.max_pending_per_client": 2})
    try:
        with Client(record["master"]["client_endpoint"], timeout_s=30.0) as client:
            client.push(home.store, home.artifacts)
        url = f"127.0.0.1:{record['fronts']['http_port']}"
        triton = httpclient.InferenceServerClient(url=url, network_timeout=30.0, concurrency=8)
        wait_for(triton.is_server_ready, 15.0)
        yield {"record": record, "url": url, "triton": triton, "home": home, "files": files}
        triton.close()
    finally:
        embedded.down(home.path)
        home.close()
        if old_home is None:
            os.environ.pop("INFAAS_HOME", None)
        else:
            os.environ["INFAAS_HOME"] = old_home


def _versions(cluster, model: str) -> list[str]:
    return cluster["triton"].get_model_metadata(model)["versions"]


def _fp32_version(cluster, model: str) -> str:
    """An fp32 variant's version (exact outputs), the one taking the largest batches (…-bN)."""
    return max((v for v in _versions(cluster, model) if "fp32" in v), key=lambda v: int(v.rsplit("-b", 1)[1]))


def _http(cluster, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict | list | None, bytes]:
    req = urllib.request.Request(f"http://{cluster['url']}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None, raw
    except ValueError:
        return status, None, raw


def _infer_json(cluster, model: str, inputs: list[dict], parameters: dict | None = None,
                version: str | None = None) -> tuple[int, dict]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = json.dumps({"inputs": inputs, **({"parameters": parameters} if parameters else {})}).encode()
    status, data, _ = _http(cluster, "POST", path, body, {"Content-Type": "application/json"})
    return status, data


def _x_input(x: np.ndarray, binary: bool = True):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


# -- health and metadata ----------------------------------------------------------------------------------

def test_live_ready_and_server_metadata(cluster):
    triton = cluster["triton"]
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "infaas" and "binary_tensor_data" in meta["extensions"]
    assert cluster["record"]["fronts"]["http"].startswith("http://127.0.0.1:")
    if CURL:
        out = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{cluster['url']}/v2/health/ready"], capture_output=True, text=True, timeout=10)
        assert out.stdout == "200"


def test_status_json_shows_the_fronts(cluster):
    from typer.testing import CliRunner

    from infaas_cli.cli import app

    result = CliRunner().invoke(app, ["status", "--json"], env={"INFAAS_HOME": str(cluster["home"].path)})
    assert result.exit_code == 0, result.output
    fronts = json.loads(result.stdout)["fronts"]
    assert fronts["http_port"] == cluster["record"]["fronts"]["http_port"]
    assert fronts["grpc_port"]


def test_model_metadata_for_a_model_a_variant_and_a_task(cluster):
    triton = cluster["triton"]
    meta = triton.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["platform"] == "onnxruntime_onnx" and len(meta["versions"]) >= 2
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("label", "INT64"), ("probabilities", "FP32")]
    version = meta["versions"][0]
    assert triton.get_model_metadata(MODEL, model_version=version)["versions"] == [version]
    assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, model_version=version)
    task = triton.get_model_metadata(TASK)
    assert task["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert task["parameters"]["models"] == [MODEL]
    ids = triton.get_model_metadata("toy-ids")
    assert ids["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [-1, 5]}]


# -- inference --------------------------------------------------------------------------------------------

def test_infer_by_variant_binary_matches_the_model(cluster):
    triton, x = cluster["triton"], digits_x(4)
    version = _fp32_version(cluster, MODEL)
    outputs = [httpclient.InferRequestedOutput("label", binary_data=True),
               httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    result = triton.infer(MODEL, [_x_input(x)], model_version=version, outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == version
    assert response["parameters"]["variant"] == f"{MODEL}/{version}"
    assert response["parameters"]["worker"] == "local-0"
    probs = result.as_numpy("probabilities")
    assert probs.shape == (4, 10) and probs.dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("label"), probs.argmax(1))


def test_infer_by_model_json_and_binary_agree(cluster):
    triton, x = cluster["triton"], digits_x(3)
    version = _fp32_version(cluster, MODEL)
    binary = triton.infer(MODEL, [_x_input(x, binary=True)], model_version=version)
    status, data = _infer_json(cluster, MODEL, [{"name": "x", "shape": [3, 64], "datatype": "FP32",
                                                 "data": x.tolist()}], version=version)
    assert status == 200, data
    by_name = {o["name"]: o for o in data["outputs"]}
    assert by_name["label"]["datatype"] == "INT64" and by_name["label"]["shape"] == [3]
    np.testing.assert_array_equal(by_name["label"]["data"], binary.as_numpy("label"))
    np.testing.assert_allclose(np.asarray(by_name["probabilities"]["data"]).reshape(3, 10),
                               binary.as_numpy("probabilities"), rtol=1e-5)
    # the model alone: the SLO picks the variant; the reply names it
    result = triton.infer(MODEL, [_x_input(x)], parameters={"latency_ms": 5000.0})
    params = result.get_response()["parameters"]
    assert params["variant"].startswith(f"{MODEL}/") and params["slo_met"] is True
    assert result.get_response()["model_version"] == params["variant"].split("/", 1)[1]
    assert params["version"] == 1  # the model's version that answered (its only one here)


def test_model_less_query_with_slo_parameters(cluster):
    triton, x = cluster["triton"], digits_x(2)
    result = triton.infer(TASK, [_x_input(x)], parameters={"latency_ms": 5000.0, "min_accuracy": 0.5,
                                                           "objective": "latency", "slo_mode": "best_effort"})
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["parameters"]["slo_met"] is True and response["parameters"]["latency_ms"] > 0
    assert response["parameters"]["variant"] == f"{MODEL}/{response['model_version']}"
    assert result.as_numpy("label").shape == (2,)
    if CURL:
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x[0].tolist()}],
                           "parameters": {"latency_ms": 5000}})
        out = subprocess.run([CURL, "-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                              f"http://{cluster['url']}/v2/models/{TASK}/infer"], capture_output=True, text=True,
                             timeout=30)
        reply = json.loads(out.stdout)
        assert reply["model_name"] == MODEL and reply["parameters"]["slo_met"] is True


def test_integer_and_multi_input_models(cluster):
    triton = cluster["triton"]
    ids = np.random.default_rng(0).integers(0, 10, size=(3, 5)).astype(np.int64)
    inp = httpclient.InferInput("ids", [3, 5], "INT64")
    inp.set_data_from_numpy(ids, binary_data=True)
    version = _fp32_version(cluster, "toy-ids")
    got = triton.infer("toy-ids", [inp], model_version=version).as_numpy("scores")
    want = ort.InferenceSession(str(make_int_input_model(cluster["files"] / "ids-check.onnx"))).run(None, {"ids": ids})
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-6)
    # JSON integers too
    status, data = _infer_json(cluster, "toy-ids", [{"name": "ids", "shape": [3, 5], "datatype": "INT64",
                                                    "data": ids.reshape(-1).tolist()}], version=version)
    assert status == 200, data
    np.testing.assert_allclose(np.asarray(data["outputs"][0]["data"]).reshape(3, 3), want[0], rtol=1e-5, atol=1e-6)
    a = np.ones((2, 4), np.float32)
    b = np.arange(8, dtype=np.float32).reshape(2, 4)
    ia, ib = httpclient.InferInput("a", [2, 4], "FP32"), httpclient.InferInput("b", [2, 4], "FP32")
    ia.set_data_from_numpy(a, binary_data=True)
    ib.set_data_from_numpy(b, binary_data=False)  # one binary, one JSON in the same request
    result = triton.infer("toy-two", [ia, ib], model_version=_fp32_version(cluster, "toy-two"))
    want = ort.InferenceSession(str(make_two_input_model(cluster["files"] / "two-check.onnx"))).run(
        None, {"a": a, "b": b})
    np.testing.assert_allclose(result.as_numpy("logits"), want[0], rtol=1e-5, atol=1e-5)


def test_many_in_flight_on_one_connection(cluster):
    triton, x = cluster["triton"], digits_x(1)
    pending = [triton.async_infer(MODEL, [_x_input(x)]) for _ in range(2)]  # the master allows 2 here
    assert all(p.get_result().as_numpy("label").shape == (1,) for p in pending)


# -- errors -----------------------------------------------------------------------------------------------

def _refused(fn) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn()
    return info.value


def test_bad_input_is_400_never_500(cluster):
    triton = cluster["triton"]
    wrong = np.zeros((1, 7), np.float32)
    exc = _refused(lambda: triton.infer(MODEL, [_x_input(wrong)]))
    assert exc.status() == "400" and "x" in exc.message()
    status, data = _infer_json(cluster, MODEL, [{"name": "x", "shape": [1, 64], "datatype": "BYTES",
                                                 "data": ["a"] * 64}])
    assert status == 400 and "FP32" in data["error"]
    for body in (b"not json", b'{"inputs": 3}', b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", '
                                                b'"data": [1]}]}',
                 b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}]}'):
        status, data, _ = _http(cluster, "POST", f"/v2/models/{MODEL}/infer", body)
        assert status == 400 and data["error"], body
    # the binary extension, inconsistent: the header says more JSON than the body holds
    status, data, _ = _http(cluster, "POST", f"/v2/models/{MODEL}/infer", b"{}",
                            {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "Inference-Header-Content-Length" in data["error"]
    status, data = _infer_json(cluster, MODEL, [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                                 "data": [0.0] * 64}], parameters={"latency_ms": "fast"})
    assert status == 400 and "latency_ms" in data["error"]


def test_an_slo_no_variant_meets_is_400_with_the_best_figures(cluster):
    x = digits_x(1)
    exc = _refused(lambda: cluster["triton"].infer(TASK, [_x_input(x)], parameters={"min_accuracy": 1.0}))
    assert exc.status() == "400" and "accuracy" in exc.message()
    exc = _refused(lambda: cluster["triton"].infer(MODEL, [_x_input(x)],
                                                   parameters={"latency_ms": 0.0001, "slo_mode": "strict"}))
    assert exc.status() in ("400", "429") and "ms" in exc.message()


def test_unknown_model_and_version_are_404(cluster):
    triton, x = cluster["triton"], digits_x(1)
    assert _refused(lambda: triton.infer("no-such-model", [_x_input(x)])).status() == "404"
    exc = _refused(lambda: triton.infer(MODEL, [_x_input(x)], model_version="no-such-version"))
    assert exc.status() == "404" and "versions" in exc.message()
    assert _refused(lambda: triton.get_model_metadata("nothing@nowhere")).status() == "404"
    assert not triton.is_model_ready("no-such-model")
    status, data, _ = _http(cluster, "GET", "/v2/nothing")
    assert status == 404 and data["error"]
    if CURL:
        out = subprocess.run([CURL, "-s", "-w", "\n%{http_code}", f"http://{cluster['url']}/v2/models/no-such-model"],
                             capture_output=True, text=True, timeout=10)
        body, code = out.stdout.rsplit("\n", 1)
        assert code == "404" and "no-such-model" in json.loads(body)["error"]


def test_overload_is_429(cluster):
    """The master allows 2 queries in flight per client here, and the gateway is one client: a burst of
    concurrent requests gets some 429s (and the rest are served)."""
    import aiohttp

    x = digits_x(32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [32, 64], "datatype": "FP32", "data": x.tolist()}],
                       "parameters": {"latency_ms": 10000.0}})

    async def burst() -> list[tuple[int, dict]]:
        async with aiohttp.ClientSession() as session:
            async def one():
                async with session.post(f"http://{cluster['url']}/v2/models/{MODEL}/infer", data=body) as resp:
                    return resp.status, await resp.json()
            return await asyncio.gather(*(one() for _ in range(64)))

    answers = asyncio.run(burst())
    statuses = {status for status, _ in answers}
    assert statuses == {200, 429}, answers[:3]
    refusal = next(data for status, data in answers if status == 429)
    assert "in flight" in refusal["error"]


# -- the repository extension -----------------------------------------------------------------------------

def test_repository_index_load_and_unload(cluster):
    triton = cluster["triton"]
    index = triton.get_model_repository_index()
    names = {(e["name"], e["version"]) for e in index}
    version = _fp32_version(cluster, "toy-two")
    assert ("toy-two", version) in names and all(e["state"] in ("READY", "UNAVAILABLE", "LOADING") for e in index)
    triton.load_model("toy-two", query_params={"version": version})
    entry = next(e for e in triton.get_model_repository_index() if (e["name"], e["version"]) == ("toy-two", version))
    assert entry["state"] == "READY" and "local-0" in entry["reason"]
    triton.unload_model("toy-two", query_params={"version": version})

    def unloaded():
        e = next(e for e in triton.get_model_repository_index() if (e["name"], e["version"]) == ("toy-two", version))
        return e["state"] == "UNAVAILABLE"
    wait_for(unloaded, 10.0)
    # a model alone loads its fastest variant; a task cannot be loaded; a config upload is refused
    triton.load_model("toy-ids")
    assert any(e["name"] == "toy-ids" and e["state"] == "READY" for e in triton.get_model_repository_index())
    assert _refused(lambda: triton.load_model(TASK)).status() == "400"
    assert _refused(lambda: triton.load_model("toy-ids", config='{"backend": "onnxruntime"}')).status() == "400"
    assert _refused(lambda: triton.load_model("no-such-model")).status() == "404"


# -- no capacity: last, since it stops the worker -----------------------------------------------------------

def test_no_live_worker_is_503_and_not_ready(cluster):
    triton, x = cluster["triton"], digits_x(1)
    os.kill(cluster["record"]["workers"][0]["pid"], signal.SIGKILL)
    wait_for(lambda: not triton.is_server_ready(), 10.0)
    exc = _refused(lambda: triton.infer(MODEL, [_x_input(x)]))
    assert exc.status() == "503", exc.message()
    assert triton.is_server_live()


# -- TLS (no cluster needed: server metadata and liveness come from the gateway itself) -----------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_rest_over_tls(tmp_path):
    import ssl

    import aiohttp

    from infaas_daemons.gateway.core import Front
    from infaas_daemons.gateway.rest import serve_rest

    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)

    async def check() -> tuple[int, dict, int]:
        front = Front("tcp://127.0.0.1:9", timeout_s=0.5)  # no master there: ready is false, live is true
        await front.start()
        runner, port = await serve_rest(front, "127.0.0.1", 0, (str(cert), str(key)))
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://127.0.0.1:{port}/v2", ssl=ctx) as resp:
                    meta = (resp.status, await resp.json())
                async with session.get(f"https://127.0.0.1:{port}/v2/health/ready", ssl=ctx) as resp:
                    return meta[0], meta[1], resp.status
        finally:
            await runner.cleanup()
            await front.close()

    status, meta, ready = asyncio.run(check())
    assert status == 200 and meta["name"] == "infaas" and ready == 503
