"""Benchmark: infaas against its floor (a bare pyzmq chain) and its peer (Ray Serve), same model files, one interleaved run.

Two ONNX models, built here with the `onnx` helper API and deterministic weights (no PyTorch):

* tiny:  an MLP 64 → 256 → 256 → 10 (input x float32[N, 64], 256 bytes per sample);
* heavy: a small conv net on x float32[N, 3, 224, 224] (602,112 bytes per sample: what moving a 600 KB
  tensor costs, the convolution itself is a fraction of a millisecond).

Both are registered in a fresh INFAAS_HOME (register → generate → profile, as `infaas` does it) and pushed to a
fresh embedded cluster with one worker. Every path runs the same .onnx file with the same ONNX Runtime session
options (1 intra-op thread, sequential, all graph optimisations, no spinning: what infaas's `ort-cpu` backend
uses; infaas runs its saved `fp32o3` artifact of that file):

* `ort`        ONNX Runtime `session.run` in the driver's process: no serving at all (the "added over ORT" base);
* `bare`       the floor any ZeroMQ design can reach: a DEALER here → `zmq.proxy` (ROUTER/DEALER, C, its own
               process) → a worker process holding the sessions; tensors travel as raw frames, zero-copy;
* `infaas`     `Client.query(..., variant=MODEL/ort-cpu-fp32o3-t1-b8)`, by variant;
* `modelless`  `Client.query(..., task=..., dataset=..., latency_ms=..., min_accuracy=...)`: infaas picks;
* `ray`        Ray Serve's default path: a deployment (library defaults) called with `DeploymentHandle.remote(x)`
               from this driver, numpy arrays in and out;
* `ray-tuned`  Ray Serve's best-tuned path (below): HTTP straight to the replica, raw tensor bytes in the body.

Ray Serve settings. The default path runs on its own Ray cluster with no RAY_SERVE_* variables: a deployment
with num_replicas=1 and every other option at its default (max_ongoing_requests=5, sync `__call__` run in
the replica's thread pool, user code on a separate event loop); its HTTP proxy is disabled, as the handle
path does not go through it. The tuned path runs on a second Ray cluster started with:

* RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray ≥ 2.55) — turns on *direct ingress* (RAY_SERVE_ENABLE_DIRECT_INGRESS:
  the ingress replica runs its own uvicorn server on a port of 30000-31000 and clients reach it with no proxy
  hop), user code and the router on the replica's main event loop (no thread hop), gRPC between
  deployments, a 1000-line request-log buffer, no log copy to stderr, and the GC frozen after start-up.
  This is the proxy-less path Ray documents for "high throughput" serving; HAProxy ingress
  (RAY_SERVE_ENABLE_HA_PROXY) is not used, as it puts a proxy hop back in front of the replica.
* RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=0 — only makes the clean-up quick.
* the deployment: num_replicas=1, max_ongoing_requests=16 (≥ the 8 in flight, so none waits in the
  router), access log off, log level WARNING, an `async def __call__` that reads the raw body, runs the
  session inline (no thread-pool hop) and answers the output's raw bytes. `@serve.batch(max_batch_size=8,
  batch_wait_timeout_s=0)` was tried on top: c1 p50 doubled and c8 did not move beyond noise, so it is not used.
* the client: HTTP/1.1 keep-alive on raw sockets (TCP_NODELAY, one `sendmsg` per request, no HTTP library),
  one connection for one in flight, eight connections multiplexed with `selectors` for eight in flight.
  The replica's port comes from the Serve controller's target groups (`get_target_groups`, what Ray's own
  test utilities use; not a public API). Ray is told to use the loopback address
  (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), so no traffic leaves 127.0.0.1.

Two Ray clusters (each `ray start --head --block` with its own free ports and its session files in the run's
temporary directory), because Ray reads RAY_SERVE_* once per process: a handle path inside the tuned cluster
would not be Ray's default one.

Measurements, per model: one in flight — p50/p95/p99 over N requests after warm-up, *interleaved*: request i
visits every path in a fresh random order (seeded); eight in flight — throughput (requests / wall time) in
rounds, each round visiting every path (except `ort`) in a fresh random order with a burst of requests kept at
eight outstanding by one driver thread (a window of submits for the ZeroMQ paths and the handle, eight
connections for HTTP). After each infaas phase the master's own decision-time window is read
(`Client.status()["master"]["decision_us"]`). Ratios computed from this one run: infaas c1 p50 ÷ bare c1 p50
(target ≤ 1.25), infaas c8 ÷ ray-tuned c8 (≥ 1.3), infaas c8 ÷ bare c8 (≥ 0.5), and for the heavy model
"added over ORT" (path c1 p50 − in-process `session.run` p50): infaas added − bare added (≤ 0.5 ms). Also the
CPU time each path's serving processes spent per request served (psutil; the two infaas paths share theirs).

CPU pinning (`os.sched_setaffinity`, every thread of each process): with two or more allowed CPUs the driver
(this process: the clients, the in-process ORT run, the Ray handle's router) and the Ray clusters' control
planes (GCS, raylet with its object store, Serve controller and proxy, agents — none of them on the tuned
path's request route) share the first CPU; every serving process on a request path — the bare chain's proxy
and worker, infaas's master and worker, the two Ray replica processes of each cluster — shares the last CPU.
On this project's 2-core machine that is CPU 0 for the driver side and CPU 1 for the servers: one core
serves every path alike, and the client never competes with the server it measures. `--no-pin` leaves
scheduling to the kernel; with one allowed CPU nothing is pinned (the JSON says which).

    pip install -e '.[bench]'     # Ray Serve; never a runtime dependency of infaas (without it: exit 2)
    python benchmarks/vs_ray.py [--quick] [--requests 2000] [--c8-requests 2000] [--rounds 5] [--seed 0] \\
                                [--no-pin] [--json benchmarks/results/vs_ray.json]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import logging
import os
import platform
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS_JSON = Path(__file__).parent / "results" / "vs_ray.json"
IN_FLIGHT = 8
TASK_OF = {"tiny": ("vsray-tiny", "vsray-tiny-data"), "heavy": ("vsray-heavy", "vsray-heavy-data")}
MODEL_NAME = {"tiny": "vsray-mlp", "heavy": "vsray-cnn"}
VARIANT_VERSION = "ort-cpu-fp32o3-t1-b8"  # by-variant queries: MODEL/VARIANT_VERSION (fp32, 1 thread, as the peers)
LATENCY_SLO_MS = {"tiny": 20.0, "heavy": 50.0}  # model-less queries: generous, so the cheapest accurate variant wins
MIN_ACCURACY = 0.99  # keeps model-less on fp32-exact variants (labels are the fp32 model's own argmax)
VALIDATION_SAMPLES = {"tiny": 256, "heavy": 16}
TARGETS = {"c1_p50_vs_bare_max": 1.25, "c8_vs_ray_tuned_min": 1.3, "c8_vs_bare_min": 0.5,
           "heavy_added_minus_bare_added_max_ms": 0.5}
#: The Ray Serve tuned cluster's environment (see the docstring for why each).
RAY_TUNED_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}
#: Both Ray clusters and this driver: node address 127.0.0.1 rather than the host's interface address.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def say(msg: str) -> None:
    print(f"[vs_ray] {msg}", file=sys.stderr, flush=True)


# -- the models ------------------------------------------------------------------------------------------

def build_tiny(path: Path) -> None:
    """MLP 64 → 256 → 256 → 10 (Gemm, Relu), batch dimension dynamic, weights from a seeded generator."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    dims = [64, 256, 256, 10]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        out = "logits" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out if out == "logits" else f"g{i}"]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "vsray_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    _save(graph, path)


def build_heavy(path: Path) -> None:
    """x[N, 3, 224, 224] → Conv 3→8 (4×4, stride 4) → Relu → GlobalAveragePool → Flatten → Gemm 8→10."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(12)
    w = (rng.standard_normal((8, 3, 4, 4)) * 0.2).astype(np.float32)
    cb = (rng.standard_normal(8) * 0.1).astype(np.float32)
    fw = rng.standard_normal((8, 10)).astype(np.float32)
    fb = (rng.standard_normal(10) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "cw"), (cb, "cb"), (fw, "fw"), (fb, "fb"))]
    graph = helper.make_graph(nodes, "vsray_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    _save(graph, path)


def _save(graph, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="infaas-vs-ray")
    model.ir_version = 8  # readable by every onnxruntime infaas supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def sample_inputs(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, 64) if kind == "tiny" else (n, 3, 224, 224)
    return rng.random(shape, dtype=np.float32)


def ort_session(path: str):
    """The session every peer path uses: the options of infaas's ort-cpu backend at 1 thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


# -- CPU pinning -------------------------------------------------------------------------------------------

def pin_process(pid: int, cpus: set[int]) -> int:
    """Pin every thread of `pid` (threads it makes later inherit the mask); the number of threads pinned."""
    pinned = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            pinned += 1
        except OSError:
            pass  # a thread that ended meanwhile
    return pinned


def plan_pinning(enabled: bool) -> dict:
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not enabled:
        return {"mode": "off (--no-pin)", "allowed_cpus": allowed}
    if len(allowed) < 2:
        return {"mode": "off (one allowed CPU)", "allowed_cpus": allowed}
    return {"mode": "split", "allowed_cpus": allowed, "driver_cpus": [allowed[0]], "server_cpus": [allowed[-1]],
            "driver_side": "this driver (clients, in-process ORT, Ray handle router) and the Ray control planes",
            "server_side": "bare proxy + worker, infaas master + worker, the Ray replica processes"}


class Pinning:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.on = plan["mode"] == "split"
        self.driver = set(plan.get("driver_cpus", []))
        self.server = set(plan.get("server_cpus", []))
        self.pinned: dict[str, int] = {}

    def as_driver(self) -> None:
        if self.on:
            pin_process(os.getpid(), self.driver)

    def as_server(self) -> None:
        """This process (and what it spawns from now on) on the server CPU, until as_driver()."""
        if self.on:
            pin_process(os.getpid(), self.server)

    def server_process(self, label: str, pid: int) -> None:
        if self.on:
            self.pinned[label] = pin_process(pid, self.server)


# -- the bare chain -----------------------------------------------------------------------------------------

def bare_proxy(front: str, back: str) -> None:
    import zmq

    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    f.bind(front)
    b.bind(back)
    zmq.proxy(f, b)


def bare_worker(back: str, models: dict[str, str]) -> None:
    """Frames in: [route…, b"", model, shape "1,64", data]; out: [route…, b"", shape, data] per output."""
    import zmq

    sessions = {name.encode(): ort_session(path) for name, path in models.items()}
    inputs = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(back)
    while True:
        frames = sock.recv_multipart(copy=False)
        model, shape, data = frames[-3].bytes, frames[-2].bytes, frames[-1]
        x = np.frombuffer(data.buffer, dtype=np.float32).reshape([int(d) for d in shape.split(b",")])
        outs = sessions[model].run(None, {inputs[model]: x})
        reply = [f.bytes for f in frames[:-3]]
        for o in outs:
            reply += [",".join(map(str, o.shape)).encode(), o]
        sock.send_multipart(reply, copy=False)


class BareChain:
    def __init__(self, models: dict[str, str]) -> None:
        import multiprocessing

        ports = [free_port(), free_port()]
        self.front, back = f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}"
        ctx = multiprocessing.get_context("spawn")
        self.procs = [ctx.Process(target=bare_proxy, args=(self.front, back), daemon=True),
                      ctx.Process(target=bare_worker, args=(back, models), daemon=True)]
        for p in self.procs:
            p.start()

    def pids(self) -> dict[str, int]:
        return {"bare-proxy": self.procs[0].pid, "bare-worker": self.procs[1].pid}

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.join(5)


class BarePath:
    name = "bare"

    def __init__(self, front: str, model: str, x: np.ndarray) -> None:
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(front)
        self.head = [b"", model.encode(), ",".join(map(str, x.shape)).encode()]
        self.x = x

    def _send(self) -> None:
        self.sock.send_multipart([*self.head, self.x], copy=False)

    def _recv(self) -> list[np.ndarray]:
        frames = self.sock.recv_multipart(copy=False)
        return [np.frombuffer(frames[i + 1].buffer, dtype=np.float32).reshape(
            [int(d) for d in frames[i].bytes.split(b",")]) for i in range(1, len(frames), 2)]

    def one(self):
        self._send()
        return self._recv()

    def c8(self, n: int) -> float:
        sent = done = 0
        t0 = time.perf_counter()
        while done < n:
            while sent < n and sent - done < IN_FLIGHT:
                self._send()
                sent += 1
            self._recv()
            done += 1
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.sock.close(linger=0)


# -- infaas -------------------------------------------------------------------------------------------------

class InfaasPath:
    def __init__(self, name: str, endpoint: str, x: np.ndarray, **slo) -> None:
        from infaas_cli.client import Client

        self.name = name
        self.client = Client(endpoint, timeout_s=60)
        self.feeds = {"x": x}
        self.slo = slo
        self.variants: collections.Counter[str] = collections.Counter()

    def one(self):
        r = self.client.query(self.feeds, **self.slo)
        self.variants[r.variant] += 1
        return r.outputs

    def c8(self, n: int) -> float:
        client, feeds, slo = self.client, self.feeds, self.slo
        pending: collections.deque[str] = collections.deque()
        done = 0
        t0 = time.perf_counter()
        while done < n:
            while len(pending) < IN_FLIGHT and done + len(pending) < n:
                pending.append(client.submit(feeds, **slo))
            rid = pending.popleft()
            result = client.gather([rid])[rid]
            if not hasattr(result, "outputs"):
                raise result
            self.variants[result.variant] += 1
            done += 1
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.client.close()


# -- Ray Serve ----------------------------------------------------------------------------------------------

def ray_deployments(serve):
    """The two deployment classes (defined here so Ray pickles them by value into its workers)."""

    class OrtHandleModel:
        """The default path: numpy in, numpy out through a DeploymentHandle; a plain sync method."""

        def __init__(self, path: str) -> None:
            self.session = ort_session(path)
            self.input = self.session.get_inputs()[0].name

        def __call__(self, x: np.ndarray) -> list[np.ndarray]:
            return self.session.run(None, {self.input: x})

    class OrtHttpModel:
        """The tuned path: the raw float32 body in (shape in a header), the first output's raw bytes out."""

        def __init__(self, path: str) -> None:
            self.session = ort_session(path)
            self.input = self.session.get_inputs()[0].name

        async def __call__(self, request):
            from starlette.responses import Response

            body = await request.body()
            shape = [int(d) for d in request.headers["x-shape"].split(",")]
            out = self.session.run(None, {self.input: np.frombuffer(body, dtype=np.float32).reshape(shape)})[0]
            return Response(out.tobytes(), media_type="application/octet-stream",
                            headers={"x-shape": ",".join(map(str, out.shape))})

    default = serve.deployment(num_replicas=1)(OrtHandleModel)
    tuned = serve.deployment(num_replicas=1, max_ongoing_requests=16,
                             logging_config={"enable_access_log": False, "log_level": "WARNING"})(OrtHttpModel)
    return default, tuned


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """`ray start --head --block` in its own session, on loopback, with free ports; stop() ends all it started."""

    def __init__(self, label: str, env: dict[str, str], log_dir: Path) -> None:
        import psutil

        self.psutil = psutil
        self.label = label
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**clean, **RAY_LOOPBACK_ENV, **env}
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={self.gcs_port}",
               "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--object-store-memory={200 << 20}",
               f"--temp-dir={log_dir / ('ray-' + label)}"]  # its session files go with the run's temporary directory
        self.log_path = log_dir / f"ray-{label}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ray start ({self.label}) exited: see {self.log_path}")
            if b"Ray runtime started" in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise SystemExit(f"ray start ({self.label}) not ready in {timeout_s:.0f} s: see {self.log_path}")

    def stop(self) -> None:
        try:
            procs = [self.psutil.Process(self.proc.pid), *self.psutil.Process(self.proc.pid).children(recursive=True)]
        except self.psutil.NoSuchProcess:
            procs = []
        self.proc.send_signal(signal.SIGTERM)  # raylet, GCS and agents stop with it; actors notice their raylet
        gone, alive = self.psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except self.psutil.NoSuchProcess:
                pass
        self.psutil.wait_procs(alive, timeout=5)


def ray_target_port(app: str) -> int:
    """The HTTP port of the app's ingress replica under direct ingress (the controller's target groups)."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for group in ray.get(controller.get_target_groups.remote(app)):
            if str(getattr(group.protocol, "value", group.protocol)).upper() == "HTTP":
                ports = [t.port for t in group.targets if t.name.startswith("SERVE_REPLICA")]
                if ports:
                    return ports[0]
        time.sleep(0.2)
    raise SystemExit(f"Ray Serve: no direct-ingress replica port for app {app!r}: is RAY_SERVE_THROUGHPUT_OPTIMIZED "
                     "(direct ingress) supported by this Ray version?")


def ray_replica_pid(app: str) -> int:
    """The process id of the app's one replica (the controller's serve details; handles may need an event loop)."""
    from ray.serve.context import _get_global_client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        details = _get_global_client().get_serve_details()
        for dep in details["applications"].get(app, {}).get("deployments", {}).values():
            pids = [r.get("pid") for r in dep.get("replicas", []) if r.get("pid")]
            if pids:
                return int(pids[0])
        time.sleep(0.2)
    raise SystemExit(f"Ray Serve: no running replica for app {app!r}")


def deploy_tuned(address: str, models: dict[str, str]) -> dict:
    """Run in a subprocess with RAY_TUNED_ENV: deploy the tuned apps, report their replica ports and pids."""
    import ray
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no "Application ... is ready" lines

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    _, tuned = ray_deployments(serve)
    out = {}
    for kind, path in models.items():
        serve.run(tuned.bind(path), name=kind, route_prefix=f"/{kind}")
        out[kind] = {"port": ray_target_port(kind), "pid": ray_replica_pid(kind)}
    return out


class RayHandlePath:
    name = "ray"

    def __init__(self, handle, x: np.ndarray) -> None:
        self.handle, self.x = handle, x

    def one(self):
        return self.handle.remote(self.x).result()

    def c8(self, n: int) -> float:
        handle, x = self.handle, self.x
        pending: collections.deque = collections.deque()
        done = 0
        t0 = time.perf_counter()
        while done < n:
            while len(pending) < IN_FLIGHT and done + len(pending) < n:
                pending.append(handle.remote(x))
            pending.popleft().result()
            done += 1
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        pass


class HttpConnection:
    """HTTP/1.1 keep-alive over a raw socket: one request out with sendmsg, a Content-Length answer back."""

    def __init__(self, port: int, path: str, x: np.ndarray) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
                     f"x-shape: {','.join(map(str, x.shape))}\r\nContent-Length: {x.nbytes}\r\n\r\n").encode()
        self.body = memoryview(x).cast("B")
        self.buf = bytearray()

    def send(self) -> None:
        sent = self.sock.sendmsg([self.head, self.body])
        total = len(self.head) + len(self.body)
        if sent < total:  # a partial write (large body): finish it
            rest = (self.head + bytes(self.body))[sent:]
            self.sock.sendall(rest)

    def feed(self) -> bytes | None:
        """Read what is there; the body once a whole response arrived (blocking sockets: waits for data)."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the replica closed the connection")
        self.buf += chunk
        return self._take()

    def _take(self) -> bytes | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        if not head[0].startswith("HTTP/1.1 200"):
            raise RuntimeError(f"Ray Serve answered {head[0]!r}: {bytes(self.buf[end + 4:end + 300])!r}")
        length = None
        for line in head[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        if length is None:
            raise RuntimeError("Ray Serve answered without Content-Length")
        if len(self.buf) < end + 4 + length:
            return None
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        return body

    def one(self) -> bytes:
        self.send()
        while (body := self.feed()) is None:
            pass
        return body

    def close(self) -> None:
        self.sock.close()


class RayHttpPath:
    name = "ray-tuned"

    def __init__(self, port: int, kind: str, x: np.ndarray) -> None:
        self.port, self.route, self.x = port, f"/{kind}", x
        self.conns = [HttpConnection(port, self.route, x) for _ in range(IN_FLIGHT)]

    def one(self):
        return [np.frombuffer(self.conns[0].one(), dtype=np.float32)]

    def c8(self, n: int) -> float:
        sel = selectors.DefaultSelector()
        for c in self.conns:
            sel.register(c.sock, selectors.EVENT_READ, c)
        sent = done = 0
        t0 = time.perf_counter()
        for c in self.conns[:min(IN_FLIGHT, n)]:
            c.send()
            sent += 1
        while done < n:
            for key, _ in sel.select():
                c = key.data
                if c.feed() is not None:
                    done += 1
                    if sent < n:
                        c.send()
                        sent += 1
        qps = n / (time.perf_counter() - t0)
        sel.close()
        return qps

    def close(self) -> None:
        for c in self.conns:
            c.close()


class OrtPath:
    name = "ort"

    def __init__(self, path: str, x: np.ndarray) -> None:
        self.session = ort_session(path)
        self.feeds = {self.session.get_inputs()[0].name: x}

    def one(self):
        return self.session.run(None, self.feeds)

    def close(self) -> None:
        pass


# -- measurement --------------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def decision_window(endpoint: str) -> dict:
    from infaas_cli.client import Client

    with Client(endpoint, timeout_s=30) as c:
        master = c.status(workers_limit=0)["master"]
    # Wall time (what a query waits) and the master thread's own CPU time (without preemption by the
    # worker sharing its core).
    return {**master["decision_us"], "cpu_p50": master.get("decision_cpu_us", {}).get("p50"),
            "cpu_p99": master.get("decision_cpu_us", {}).get("p99")}


def check_outputs(paths: list, reference: np.ndarray) -> None:
    """Every path answers what in-process ONNX Runtime answers (to float tolerance: infaas runs the o3 artifact)."""
    for p in paths:
        got = np.asarray(p.one()[0], dtype=np.float32).reshape(reference.shape)
        if not np.allclose(got, reference, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"{p.name}: output differs from in-process ONNX Runtime "
                             f"(max |diff| {np.max(np.abs(got - reference)):.3g})")


def measure_model(kind: str, paths: list, args, rng: random.Random, endpoint: str) -> dict:
    say(f"{kind}: warm-up ({args.warmup} per path)")
    for p in paths:
        for _ in range(args.warmup):
            p.one()
        if hasattr(p, "c8"):
            p.c8(max(IN_FLIGHT * 4, args.warmup))
    lat: dict[str, list[float]] = {p.name: [] for p in paths}
    say(f"{kind}: one in flight, {args.requests} requests per path, interleaved")
    for _ in range(args.requests):
        order = paths[:]
        rng.shuffle(order)
        for p in order:
            t0 = time.perf_counter()
            p.one()
            lat[p.name].append((time.perf_counter() - t0) * 1e3)
    decisions = {"after_c1": decision_window(endpoint)}
    c8_paths = [p for p in paths if hasattr(p, "c8")]
    per_round = [args.c8_requests // args.rounds + (1 if i < args.c8_requests % args.rounds else 0)
                 for i in range(args.rounds)]
    samples: dict[str, list[tuple[int, float]]] = {p.name: [] for p in c8_paths}
    orders = []
    say(f"{kind}: {IN_FLIGHT} in flight, {args.c8_requests} requests per path in {args.rounds} rounds")
    for n in per_round:
        order = c8_paths[:]
        rng.shuffle(order)
        orders.append([p.name for p in order])
        for p in order:
            p.c8(IN_FLIGHT * 2)  # re-warm the pipeline after the other paths ran
            samples[p.name].append((n, p.c8(n)))
    decisions["after_c8"] = decision_window(endpoint)

    c8_extra = max(IN_FLIGHT * 4, args.warmup) + args.rounds * IN_FLIGHT * 2 + args.c8_requests
    served = {p.name: args.warmup + args.requests + (c8_extra if hasattr(p, "c8") else 0) for p in paths}
    out: dict = {"paths": {}, "c8_round_orders": orders, "infaas_decision_us": decisions, "requests_served": served}
    for p in paths:
        v = lat[p.name]
        r = {"c1_p50_ms": pct(v, 50), "c1_p95_ms": pct(v, 95), "c1_p99_ms": pct(v, 99), "c1_mean_ms": float(np.mean(v))}
        if p.name in samples:
            s = samples[p.name]
            r["c8_qps"] = sum(n for n, _ in s) / sum(n / q for n, q in s)
            r["c8_qps_by_round"] = [q for _, q in s]
        if isinstance(p, InfaasPath):
            r["variants_served"] = dict(p.variants)
        out["paths"][p.name] = r
    P = out["paths"]
    ratios: dict = {}
    for name in ("infaas", "modelless"):
        c1 = P[name]["c1_p50_ms"] / P["bare"]["c1_p50_ms"]
        vs_ray = P[name]["c8_qps"] / P["ray-tuned"]["c8_qps"]
        vs_bare = P[name]["c8_qps"] / P["bare"]["c8_qps"]
        ratios[name] = {
            "c1_p50_vs_bare": c1, "c1_p50_vs_bare_met": c1 <= TARGETS["c1_p50_vs_bare_max"],
            "c8_vs_ray_tuned": vs_ray, "c8_vs_ray_tuned_met": vs_ray >= TARGETS["c8_vs_ray_tuned_min"],
            "c8_vs_bare": vs_bare, "c8_vs_bare_met": vs_bare >= TARGETS["c8_vs_bare_min"],
        }
    out["added_over_ort_ms"] = {name: P[name]["c1_p50_ms"] - P["ort"]["c1_p50_ms"] for name in P if name != "ort"}
    if kind == "heavy":
        for name in ("infaas", "modelless"):
            d = out["added_over_ort_ms"][name] - out["added_over_ort_ms"]["bare"]
            ratios[name]["added_minus_bare_added_ms"] = d
            ratios[name]["added_minus_bare_added_met"] = d <= TARGETS["heavy_added_minus_bare_added_max_ms"]
    out["ratios"] = ratios
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each serving process has used so far."""
    import psutil

    out = {}
    for label, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[label] = t.user + t.system
        except psutil.Error:
            pass
    return out


def server_cpu_per_request(kind: str, m: dict) -> dict[str, float]:
    """CPU the serving processes of each path spent per request it served (the two infaas paths share theirs;
    the handle path's router and object store run on the driver side and are not counted)."""
    cpu, served = m["server_cpu_s"], m["requests_served"]
    groups = {"bare": (["bare-proxy", "bare-worker"], ["bare"]),
              "infaas+modelless": ([k for k in cpu if k.startswith("infaas-")], ["infaas", "modelless"]),
              "ray": ([f"ray-default-{kind}"], ["ray"]), "ray-tuned": ([f"ray-tuned-{kind}"], ["ray-tuned"])}
    return {name: sum(cpu.get(p, 0.0) for p in procs) / sum(served[q] for q in paths) * 1e6
            for name, (procs, paths) in groups.items()}


def show_infaas_logs(home_dir: str, lines: int = 15) -> None:
    for path in sorted((Path(home_dir) / "run").glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        say(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))


# -- the run ------------------------------------------------------------------------------------------------

def prepare_infaas(home_dir: str, files: dict[str, Path], validation: dict[str, Path]) -> dict:
    from infaas_cli.catalog.home import InfaasHome
    from infaas_cli.toolkit.generate import generate_variants
    from infaas_cli.toolkit.profiler import MeasureSettings, profile_models
    from infaas_cli.toolkit.register import register_model

    fast = MeasureSettings(warmup_runs=1, budget_ms=3.0, min_runs=5, max_runs=100)  # as front_door.py
    info = {}
    home = InfaasHome(home_dir)
    try:
        for kind, path in files.items():
            task, dataset = TASK_OF[kind]
            name = MODEL_NAME[kind]
            register_model(home, path, name, task, dataset, validation[kind], cache_mib=0)
            generate_variants(home, name)
            variants = sorted(v.name for v in home.store.variants() if v.model == name)
            if f"{name}/{VARIANT_VERSION}" not in variants:
                raise SystemExit(f"variant {name}/{VARIANT_VERSION} was not generated here; the variants: {variants}")
            info[kind] = {"model": name, "task": task, "dataset": dataset, "variant": f"{name}/{VARIANT_VERSION}",
                          "variants": len(variants),
                          "accuracy": {v.name.split("/", 1)[1]: v.accuracy for v in home.store.variants()
                                       if v.model == name and "-t1-b8" in v.name}}
        profile_models(home, [MODEL_NAME[k] for k in files], batch_sizes=[1, 8], settings=fast)
    finally:
        home.close()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run (300 c1 and 400 c8 requests per path and model, 2 rounds, 50 warm-up)")
    parser.add_argument("--requests", type=int, default=2000, help="one-in-flight requests per path and model")
    parser.add_argument("--c8-requests", type=int, default=2000, help="eight-in-flight requests per path and model")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the eight-in-flight measurement alternates in")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per path and model")
    parser.add_argument("--seed", type=int, default=0, help="seeds the path orders and the inputs")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the driver and the servers to CPUs")
    parser.add_argument("--json", type=Path, default=RESULTS_JSON)
    parser.add_argument("--deploy-tuned", nargs=2, metavar=("ADDRESS", "MODELS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    ray_spec = importlib.util.find_spec("ray")  # not imported yet: its settings are read from the environment below
    if ray_spec is None or not (Path(ray_spec.origin).parent / "serve").is_dir():
        print("vs_ray: Ray Serve is not installed; install the benchmark extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    if args.deploy_tuned:  # the helper process for the tuned cluster (RAY_TUNED_ENV is in its environment)
        address, models = args.deploy_tuned
        print(json.dumps(deploy_tuned(address, json.loads(models))), flush=True)
        return 0
    if args.quick:
        args.requests, args.c8_requests, args.rounds, args.warmup = 300, 400, 2, 50
    if args.c8_requests < args.rounds or args.rounds < 1 or args.requests < 1:
        parser.error("--c8-requests must be at least --rounds, and --rounds and --requests at least 1")
    # The default Ray path runs with Ray's defaults: no RAY_SERVE_* from the caller's environment.
    for k in [k for k in os.environ if k.startswith("RAY_SERVE_")]:
        os.environ.pop(k)
    os.environ.update(RAY_LOOPBACK_ENV)

    import ray
    from ray import serve

    from infaas_cli.cluster import embedded

    rng = random.Random(args.seed)
    pinning = Pinning(plan_pinning(not args.no_pin))
    t_start = time.perf_counter()
    heads: list[RayHead] = []
    bare = None
    infaas_up = False
    paths_by_kind: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="infaas-vs-ray-") as tmp:
        tmpd = Path(tmp)
        files = {"tiny": tmpd / "vsray-mlp.onnx", "heavy": tmpd / "vsray-cnn.onnx"}
        build_tiny(files["tiny"])
        build_heavy(files["heavy"])
        validation, xs, refs = {}, {}, {}
        for i, (kind, path) in enumerate(files.items()):
            sess = ort_session(str(path))
            vx = sample_inputs(kind, VALIDATION_SAMPLES[kind], seed=args.seed * 100 + i)
            vy = np.argmax(sess.run(None, {"x": vx})[0], axis=1).astype(np.int64)
            validation[kind] = tmpd / f"{kind}-val.npz"
            np.savez(validation[kind], x=vx, y=vy)
            xs[kind] = sample_inputs(kind, 1, seed=args.seed * 100 + 50 + i)
            refs[kind] = sess.run(None, {"x": xs[kind]})[0]
        say("infaas: register, generate and profile both models")
        home_dir = str(tmpd / "home")
        infaas_info = prepare_infaas(home_dir, files, validation)
        setup: dict[str, float] = {"infaas_catalog_s": time.perf_counter() - t_start}

        try:
            # Ray: both clusters start on the driver CPU (their control planes stay there); replicas move below.
            pinning.as_driver()
            say("ray: starting the default and the tuned cluster")
            t0 = time.perf_counter()
            heads = [RayHead("default", {}, tmpd), RayHead("tuned", RAY_TUNED_ENV, tmpd)]
            for h in heads:
                h.wait_ready()
            models = {k: str(v) for k, v in files.items()}
            deploy = subprocess.run([sys.executable, __file__, "--deploy-tuned", heads[1].address, json.dumps(models)],
                                    env=heads[1].env, capture_output=True, text=True, timeout=300)
            if deploy.returncode != 0:
                raise SystemExit(f"deploying the tuned Ray Serve apps failed:\n{deploy.stderr[-3000:]}")
            tuned = json.loads(deploy.stdout.strip().splitlines()[-1])
            ray.init(address=heads[0].address, logging_level=logging.ERROR, log_to_driver=False)
            serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1", "port": free_port()})
            default_dep, _ = ray_deployments(serve)
            handles = {kind: serve.run(default_dep.bind(str(path)), name=kind, route_prefix=None)
                       for kind, path in files.items()}
            ray_pids = {f"ray-default-{k}": ray_replica_pid(k) for k in handles}
            ray_pids.update({f"ray-tuned-{k}": v["pid"] for k, v in tuned.items()})
            setup["ray_s"] = time.perf_counter() - t0

            # The servers on a request path: started from the server CPU, so they and their threads inherit it.
            t0 = time.perf_counter()
            pinning.as_server()
            bare = BareChain(models)
            say("infaas: starting an embedded cluster (1 worker)")
            record = embedded.up(workers=1, home=home_dir)
            infaas_up = True
            pinning.as_driver()
            endpoint = record["master"]["client_endpoint"]
            server_pids = {**bare.pids(), "infaas-master": record["master"]["pid"],
                           **{f"infaas-{w['worker_id']}": w["pid"] for w in record["workers"]}, **ray_pids}
            for label, pid in server_pids.items():
                pinning.server_process(label, pid)
            from infaas_cli.catalog.home import InfaasHome
            from infaas_cli.client import Client

            with InfaasHome(home_dir) as home, Client(endpoint, timeout_s=120) as c:
                c.push(home.store, home.artifacts)
            setup["servers_s"] = time.perf_counter() - t0

            results: dict = {}
            for kind in ("tiny", "heavy"):
                x = xs[kind]
                info = infaas_info[kind]
                paths = [OrtPath(str(files[kind]), x), BarePath(bare.front, kind, x),
                         InfaasPath("infaas", endpoint, x, variant=info["variant"]),
                         InfaasPath("modelless", endpoint, x, task=info["task"], dataset=info["dataset"],
                                    latency_ms=LATENCY_SLO_MS[kind], min_accuracy=MIN_ACCURACY),
                         RayHandlePath(handles[kind], x), RayHttpPath(tuned[kind]["port"], kind, x)]
                paths_by_kind[kind] = paths
                try:
                    check_outputs(paths, refs[kind])
                    cpu_before = cpu_seconds(server_pids)
                    results[kind] = measure_model(kind, paths, args, rng, endpoint)
                except Exception:
                    show_infaas_logs(home_dir)  # others may be mid-change on the infaas side: say what it said
                    raise
                cpu_after = cpu_seconds(server_pids)
                results[kind]["server_cpu_s"] = {k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before}
                results[kind]["server_cpu_us_per_request"] = server_cpu_per_request(kind, results[kind])
                results[kind].update({"input_bytes": int(x.nbytes), "input_shape": list(x.shape),
                                      "model_file_bytes": files[kind].stat().st_size, "infaas": info,
                                      "modelless_slo": {"latency_ms": LATENCY_SLO_MS[kind],
                                                        "min_accuracy": MIN_ACCURACY}})
                for p in paths:
                    p.close()
                paths_by_kind.pop(kind)
        finally:
            for paths in paths_by_kind.values():
                for p in paths:
                    try:
                        p.close()
                    except Exception:  # noqa: BLE001 - closing on the way out
                        pass
            if infaas_up:
                embedded.down(home_dir)
            if bare is not None:
                bare.close()
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - the cluster goes next anyway
                pass
            for h in heads:
                h.stop()

    result = {
        "benchmark": "vs_ray", "models": results, "in_flight": IN_FLIGHT, "requests": args.requests,
        "c8_requests": args.c8_requests, "rounds": args.rounds, "warmup": args.warmup, "seed": args.seed,
        "quick": args.quick, "targets": TARGETS, "pinning": {**pinning.plan, "threads_pinned": pinning.pinned},
        "ray": {"version": ray.__version__, "default": "library defaults, DeploymentHandle from the driver",
                "tuned_env": RAY_TUNED_ENV, "loopback_env": RAY_LOOPBACK_ENV,
                "tuned_deployment": {"max_ongoing_requests": 16, "access_log": False, "handler": "async, inline",
                                     "transport": "HTTP/1.1 keep-alive straight to the replica (direct ingress)"}},
        "setup_s": setup, "total_s": time.perf_counter() - t_start,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.json} ({result['total_s']:.0f} s in all)")
    return 0


def print_table(result: dict) -> None:
    pin = result["pinning"]
    where = (f"driver on CPU {pin['driver_cpus']}, servers on CPU {pin['server_cpus']}" if pin["mode"] == "split"
             else pin["mode"])
    print(f"\nvs_ray: Ray {result['ray']['version']}, {result['requests']} c1 / {result['c8_requests']} c8 requests "
          f"per path and model ({result['rounds']} rounds), {where}")
    for kind, m in result["models"].items():
        print(f"\n{kind} ({m['input_bytes']:,} B input)")
        print(f"{'path':<10} {'c1 p50':>8} {'p95':>8} {'p99':>8} {'+ORT p50':>9} {'c8 q/s':>8}")
        for name, r in m["paths"].items():
            added = "" if name == "ort" else f"{m['added_over_ort_ms'][name]:9.3f}"
            qps = f"{r['c8_qps']:8.0f}" if "c8_qps" in r else f"{'-':>8}"
            print(f"{name:<10} {r['c1_p50_ms']:8.3f} {r['c1_p95_ms']:8.3f} {r['c1_p99_ms']:8.3f} {added:>9} {qps}")
        if "server_cpu_us_per_request" in m:
            print("server CPU µs/request: " + ", ".join(f"{k} {v:.0f}" for k, v in m["server_cpu_us_per_request"].items()))
        d = m["infaas_decision_us"]
        print("master decision µs p99 wall / cpu: " + ", ".join(
            f"{phase} {w['p99']:.1f} / {w['cpu_p99']:.1f}" if w.get("cpu_p99") is not None else
            f"{phase} {w['p99']:.1f}" if w.get("p99") is not None else f"{phase} -" for phase, w in d.items())
              + f"; model-less chose {', '.join(m['paths']['modelless'].get('variants_served', {}))}")
        for name, r in m["ratios"].items():
            line = (f"{name}: c1 p50 {r['c1_p50_vs_bare']:.2f}× bare (≤ {TARGETS['c1_p50_vs_bare_max']}: "
                    f"{_met(r['c1_p50_vs_bare_met'])}), c8 {r['c8_vs_ray_tuned']:.2f}× ray-tuned "
                    f"(≥ {TARGETS['c8_vs_ray_tuned_min']}: {_met(r['c8_vs_ray_tuned_met'])}), c8 {r['c8_vs_bare']:.2f}× "
                    f"bare (≥ {TARGETS['c8_vs_bare_min']}: {_met(r['c8_vs_bare_met'])})")
            if "added_minus_bare_added_ms" in r:
                line += (f", added − bare added {r['added_minus_bare_added_ms']:+.3f} ms "
                         f"(≤ {TARGETS['heavy_added_minus_bare_added_max_ms']}: {_met(r['added_minus_bare_added_met'])})")
            print(line)


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
