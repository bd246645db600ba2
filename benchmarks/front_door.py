"""Benchmark: the front doors (issue 10) — the same variant through the native ZeroMQ client, REST and gRPC.

One fresh `infaas up` (1 worker + the gateway) in a temporary INFAAS_HOME serves one tiny model from the
zoo (digits-logreg), queried *by variant* so every path runs the very same preloaded variant:

* native: `infaas_cli.client.Client` (msgpack over ZeroMQ, straight to the master);
* REST:   `tritonclient.http` with binary tensor data in and out (the gateway's aiohttp front);
* gRPC:   `tritonclient.grpc` (raw contents; the gateway's grpc.aio front).

Two measurements per path: one in flight (latency p50/p95/p99 over N requests after warm-up) and eight in
flight (throughput over N requests). Eight in flight is driven two ways per path and the best is reported
(both are in the JSON): native — one Client with a window of 8 `submit`/`gather`, or 8 threads with a
Client each; tritonclient — its async API (gevent greenlets for HTTP, gRPC futures for gRPC) with 8
outstanding, or 8 threads with a client each. The paths alternate in rounds (the order shuffled, seeded, every
round) so drift on a shared machine hits each alike. Ratios against native: c1 p50 (target ≤ 1.3) and c8
throughput (target ≥ 0.8).

    python benchmarks/front_door.py [--requests 2000] [--rounds 5] [--seed 0] \
                                    [--json benchmarks/results/front_door.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from infaas_cli.catalog.home import InfaasHome
from infaas_cli.client import Client
from infaas_cli.cluster import embedded
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import MeasureSettings, profile_models
from infaas_cli.toolkit.register import register_model
from infaas_cli.toolkit.zoo import load_manifest

MODEL = "digits-logreg"
VERSION = "ort-cpu-fp32o3-t1-b8"  # the variant: MODEL/VERSION
VARIANT = f"{MODEL}/{VERSION}"
IN_FLIGHT = 8
TARGET_C1_P50 = 1.3  # REST/gRPC c1 p50 ÷ native c1 p50 at most
TARGET_C8_QPS = 0.8  # REST/gRPC c8 throughput ÷ native c8 throughput at least
#: Profiling as the tests do it (tests/support.py FAST): the benchmark queries by variant, so the
#: profiles only need to exist.
FAST = MeasureSettings(warmup_runs=1, budget_ms=3.0, min_runs=5, max_runs=100)
DEFAULT_JSON = Path(__file__).parent / "results" / "front_door.json"


# -- the three paths -------------------------------------------------------------------------------------

class Native:
    name = "native"

    def __init__(self, endpoint: str, x: np.ndarray) -> None:
        self.endpoint, self.x = endpoint, x
        self.client = Client(endpoint, timeout_s=60)

    def one(self):
        return self.client.query({"x": self.x}, variant=VARIANT).outputs

    def close(self) -> None:
        self.client.close()

    def c8_async(self, n: int) -> float:
        """One Client, a window of IN_FLIGHT submitted queries, gathered oldest first."""
        client, feeds = self.client, {"x": self.x}
        pending: list[str] = []
        done = 0
        t0 = time.perf_counter()
        while done < n:
            while len(pending) < IN_FLIGHT and done + len(pending) < n:
                pending.append(client.submit(feeds, variant=VARIANT))
            rid = pending.pop(0)
            result = client.gather([rid])[rid]
            if not hasattr(result, "outputs"):
                raise result
            done += 1
        return n / (time.perf_counter() - t0)

    def thread_client(self):
        c = Client(self.endpoint, timeout_s=60)
        feeds = {"x": self.x}
        return (lambda: c.query(feeds, variant=VARIANT)), c.close


class _Triton:
    """What the two tritonclient paths share: one request on the main client, and closing it."""

    client: object
    inputs: list
    outputs: list
    output_names: list[str]

    def one(self):
        r = self.client.infer(MODEL, self.inputs, model_version=VERSION, outputs=self.outputs)
        return [r.as_numpy(o) for o in self.output_names]

    def close(self) -> None:
        self.client.close()


class Rest(_Triton):
    name = "rest"

    def __init__(self, url: str, x: np.ndarray, outputs: list[str]) -> None:
        import tritonclient.http as http

        self.http, self.url, self.x, self.output_names = http, url, x, outputs
        self.client = http.InferenceServerClient(url=url, network_timeout=60.0, concurrency=IN_FLIGHT)
        self.inputs, self.outputs = self._request()

    def _request(self):
        inp = self.http.InferInput("x", list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x, binary_data=True)
        outs = [self.http.InferRequestedOutput(o, binary_data=True) for o in self.output_names]
        return [inp], outs

    def c8_async(self, n: int) -> float:
        """tritonclient.http's async_infer (gevent greenlets, a pool of IN_FLIGHT connections), IN_FLIGHT
        outstanding, collected oldest first."""
        client = self.client
        pending = []
        done = 0
        t0 = time.perf_counter()
        while done < n:
            while len(pending) < IN_FLIGHT and done + len(pending) < n:
                pending.append(client.async_infer(MODEL, self.inputs, model_version=VERSION, outputs=self.outputs))
            pending.pop(0).get_result()
            done += 1
        return n / (time.perf_counter() - t0)

    def thread_client(self):
        c = self.http.InferenceServerClient(url=self.url, network_timeout=60.0)
        inputs, outputs = self._request()
        return (lambda: c.infer(MODEL, inputs, model_version=VERSION, outputs=outputs)), c.close


class Grpc(_Triton):
    name = "grpc"

    def __init__(self, url: str, x: np.ndarray, outputs: list[str]) -> None:
        import tritonclient.grpc as grpcclient

        self.g, self.url, self.x, self.output_names = grpcclient, url, x, outputs
        self.client = grpcclient.InferenceServerClient(url=url)
        self.inputs, self.outputs = self._request()

    def _request(self):
        inp = self.g.InferInput("x", list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x)
        return [inp], [self.g.InferRequestedOutput(o) for o in self.output_names]

    def c8_async(self, n: int) -> float:
        """tritonclient.grpc's async_infer (gRPC futures on one channel, a callback per answer), refilled so
        IN_FLIGHT are always outstanding."""
        cond = threading.Condition()
        state = {"sent": 0, "done": 0, "error": None}
        client, inputs, outputs = self.client, self.inputs, self.outputs

        def callback(result, error):
            with cond:
                state["done"] += 1
                if error is not None:
                    state["error"] = error
                cond.notify()

        t0 = time.perf_counter()
        with cond:
            while state["done"] < n:
                while state["sent"] < n and state["sent"] - state["done"] < IN_FLIGHT:
                    state["sent"] += 1
                    client.async_infer(MODEL, inputs, callback, model_version=VERSION, outputs=outputs)
                if state["error"] is not None:
                    raise state["error"]
                cond.wait(60.0)
        qps = n / (time.perf_counter() - t0)
        if state["error"] is not None:
            raise state["error"]
        return qps

    def thread_client(self):
        c = self.g.InferenceServerClient(url=self.url)
        inputs, outputs = self._request()
        return (lambda: c.infer(MODEL, inputs, model_version=VERSION, outputs=outputs)), c.close


# -- measurements ----------------------------------------------------------------------------------------

def c1_latencies(path, n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        path.one()
        lat.append((time.perf_counter() - t0) * 1e3)
    return lat


def c8_threads(path, n: int) -> float:
    """IN_FLIGHT threads, each with its own client (made in its thread: gevent's sockets stay in the thread
    that made them), blocking calls, n requests in all."""
    counter = iter(range(n))
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(IN_FLIGHT + 1)
    finish = threading.Barrier(IN_FLIGHT + 1)

    def run():
        call = close = None
        try:
            call, close = path.thread_client()
            call()  # connect and warm
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        start.wait()
        try:
            while call is not None:
                with lock:
                    if next(counter, None) is None:
                        break
                call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finish.wait()
        if close is not None:
            close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    finish.wait()
    qps = n / (time.perf_counter() - t0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return qps


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def wait_for_quiet(limit_s: float = 600.0) -> str:
    """Wait (polling every 10 s, at most limit_s) until no SLO benchmark runs beside us; say what happened."""
    import subprocess

    def busy() -> bool:
        return any(subprocess.run(["pgrep", "-f", pat], capture_output=True).stdout.strip()
                   for pat in ("runb.py", "bench slo"))

    t0 = time.monotonic()
    if not busy():
        return "quiet at start"
    while time.monotonic() - t0 < limit_s:
        time.sleep(10)
        if not busy():
            return f"quiet after waiting {time.monotonic() - t0:.0f} s"
    return f"ran anyway: another benchmark still ran after {limit_s:.0f} s"


# -- the run ---------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per path for each measurement (c1 and each c8 mode), over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the paths alternate in")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per path before the rounds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the path order of each round and the input row")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks to finish")
    args = parser.parse_args()
    if args.requests < args.rounds or args.rounds < 1:
        parser.error("--requests must be at least --rounds, and --rounds at least 1")
    rng = random.Random(args.seed)
    entry = {e.name: e for e in load_manifest()}[MODEL]
    xs = np.load(entry.validation)["x"]
    row = rng.randrange(len(xs))
    x = np.ascontiguousarray(xs[row:row + 1], dtype=np.float32)
    per_round = [args.requests // args.rounds + (1 if i < args.requests % args.rounds else 0)
                 for i in range(args.rounds)]
    quiet = "not checked (--no-wait)" if args.no_wait else wait_for_quiet()
    print(f"[front_door] {quiet}", flush=True)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="infaas-front-door-") as tmp:
        home = InfaasHome(tmp)
        try:
            register_model(home, entry.file, MODEL, entry.task, entry.dataset, entry.validation)
            generate_variants(home, MODEL)
            profile_models(home, [MODEL], batch_sizes=[1, 8], settings=FAST)
            versions = sorted(v.name for v in home.store.variants() if v.model == MODEL)
            if VARIANT not in versions:
                raise SystemExit(f"variant {VARIANT} was not generated here; the variants: {versions}")
            record = embedded.up(workers=1, home=tmp, http_port=0, grpc_port=0, gateway=True)
            try:
                endpoint = record["master"]["client_endpoint"]
                fronts = record["fronts"]
                with Client(endpoint, timeout_s=60) as c:
                    c.push(home.store, home.artifacts)
                setup_s = time.perf_counter() - t_start
                result = measure(endpoint, f"127.0.0.1:{fronts['http_port']}", f"127.0.0.1:{fronts['grpc_port']}",
                                 x, args, per_round, rng)
            finally:
                embedded.down(tmp)
        finally:
            home.close()

    result.update({"setup_s": setup_s, "total_s": time.perf_counter() - t_start, "quiet": quiet,
                   "input_row": row, "seed": args.seed, "host": {"cpus": os.cpu_count(),
                                                                  "python": platform.python_version()}})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.json} ({result['total_s']:.0f} s in all)")
    return 0


def measure(endpoint: str, http_url: str, grpc_url: str, x: np.ndarray, args, per_round: list[int],
            rng: random.Random) -> dict:
    import tritonclient.http as http

    admin = http.InferenceServerClient(url=http_url, network_timeout=60.0)
    deadline = time.monotonic() + 30
    while not admin.is_server_ready():
        if time.monotonic() > deadline:
            raise SystemExit("the gateway is not ready after 30 s")
        time.sleep(0.1)
    admin.load_model(MODEL, query_params={"version": VERSION})  # preload; waits until it serves
    outputs = [o["name"] for o in admin.get_model_metadata(MODEL, VERSION)["outputs"]]
    admin.close()

    paths = [Native(endpoint, x), Rest(http_url, x, outputs), Grpc(grpc_url, x, outputs)]
    try:
        # Every path answers the same: the same variant, the same outputs.
        ref = paths[0].one()
        for p in paths[1:]:
            got = p.one()
            for name, a, b in zip(outputs, ref, got):
                if not np.array_equal(np.asarray(a), np.asarray(b)):
                    raise SystemExit(f"{p.name} output {name!r} differs from the native client's")
        for p in paths:
            for _ in range(args.warmup):
                p.one()
            p.c8_async(max(50, args.warmup // 2))
        modes = ("c8_async", "c8_threads")
        lat: dict[str, list[float]] = {p.name: [] for p in paths}
        c8: dict[str, dict[str, list[tuple[int, float]]]] = {p.name: {mo: [] for mo in modes} for p in paths}
        orders = []
        for r, n in enumerate(per_round):
            order = paths[:]
            rng.shuffle(order)
            orders.append([p.name for p in order])
            for p in order:
                for _ in range(20):  # re-warm after the other paths ran
                    p.one()
                lat[p.name] += c1_latencies(p, n)
                c8[p.name]["c8_async"].append((n, p.c8_async(n)))
                c8[p.name]["c8_threads"].append((n, c8_threads(p, n)))
            print(f"[front_door] round {r + 1}/{len(per_round)} done ({', '.join(orders[-1])})", flush=True)
    finally:
        for p in paths:
            p.close()

    def overall(samples: list[tuple[int, float]]) -> float:
        # total requests over total time: each round's time is n / qps
        return sum(n for n, _ in samples) / sum(n / q for n, q in samples)

    out: dict = {"model": MODEL, "variant": VARIANT, "requests": args.requests, "rounds": args.rounds,
                 "warmup": args.warmup, "in_flight": IN_FLIGHT, "round_orders": orders, "paths": {}}
    for p in paths:
        c8_modes = {mo: overall(c8[p.name][mo]) for mo in modes}
        best = max(c8_modes, key=c8_modes.get)
        out["paths"][p.name] = {
            "c1_p50_ms": pct(lat[p.name], 50), "c1_p95_ms": pct(lat[p.name], 95), "c1_p99_ms": pct(lat[p.name], 99),
            "c1_mean_ms": float(np.mean(lat[p.name])),
            "c1_p50_ms_by_round": [pct(lat[p.name][sum(per_round[:i]):sum(per_round[:i + 1])], 50)
                                   for i in range(len(per_round))],
            "c8_qps": c8_modes[best], "c8_mode": best, "c8_qps_by_mode": c8_modes,
            "c8_qps_by_round": {mo: [q for _, q in c8[p.name][mo]] for mo in modes},
        }
    nat = out["paths"]["native"]
    out["ratios"] = {}
    for name in ("rest", "grpc"):
        r = out["paths"][name]
        c1 = r["c1_p50_ms"] / nat["c1_p50_ms"]
        qps = r["c8_qps"] / nat["c8_qps"]
        out["ratios"][name] = {"c1_p50": c1, "c1_p50_target_met": c1 <= TARGET_C1_P50,
                               "c8_qps": qps, "c8_qps_target_met": qps >= TARGET_C8_QPS}
    out["targets"] = {"c1_p50_ratio_max": TARGET_C1_P50, "c8_qps_ratio_min": TARGET_C8_QPS}
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['variant']}: {result['requests']} requests per path and measurement, {result['rounds']} rounds")
    print(f"{'path':<8} {'c1 p50':>8} {'c1 p95':>8} {'c1 p99':>8}   {'c8 q/s':>7} {'(mode)':<11} "
          f"{'async':>7} {'threads':>7}")
    for name, r in result["paths"].items():
        modes = r["c8_qps_by_mode"]
        print(f"{name:<8} {r['c1_p50_ms']:8.3f} {r['c1_p95_ms']:8.3f} {r['c1_p99_ms']:8.3f}   {r['c8_qps']:7.0f} "
              f"({r['c8_mode'][3:]:<9}) {modes['c8_async']:7.0f} {modes['c8_threads']:7.0f}")
    for name, r in result["ratios"].items():
        print(f"{name} vs native: c1 p50 {r['c1_p50']:.2f}× (target ≤ {TARGET_C1_P50}: "
              f"{'met' if r['c1_p50_target_met'] else 'MISSED'}), c8 throughput {r['c8_qps']:.2f}× "
              f"(target ≥ {TARGET_C8_QPS}: {'met' if r['c8_qps_target_met'] else 'MISSED'})")


if __name__ == "__main__":
    sys.exit(main())
