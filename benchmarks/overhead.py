"""Benchmark: what infaas adds end to end, against a bare pyzmq client → proxy → worker → ONNX Runtime chain.

Both chains run in this one run on the same tiny model (digits-logreg from the zoo) with the
same process layout (client here; proxy/master and worker as separate processes). Target
(issue 3): infaas p50 ≤ 1.25 × the bare chain's p50. Also throughput with 8 queries in flight.

    python benchmarks/overhead.py [--queries 2000] [--output benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from infaas_cli.cluster import embedded
from infaas_cli.client import Client
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from infaas_cli.toolkit.zoo import load_manifest

MODEL = "digits-logreg"
VARIANT = f"{MODEL}/ort-cpu-fp32o3-t1-b8"


# -- the bare chain ------------------------------------------------------------------------------------


def bare_proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    f.bind(front)
    b.bind(back)
    zmq.proxy(f, b)


def bare_worker(back: str, model_path: str) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(back)
    while True:
        frames = sock.recv_multipart()
        req = msgpack.unpackb(frames[-1])
        x = np.frombuffer(req["data"], dtype=req["dtype"]).reshape(req["shape"])
        outs = session.run(None, {"x": x})
        reply = {"outputs": [{"dtype": o.dtype.name, "shape": list(o.shape), "data": o.tobytes()} for o in outs]}
        sock.send_multipart([*frames[:-1], msgpack.packb(reply)])


def run_bare(model_path: str, x: np.ndarray, queries: int, in_flight: int) -> tuple[list[float], float]:
    ctx = multiprocessing.get_context("spawn")
    with zmq.Context.instance().socket(zmq.ROUTER) as probe:
        p1 = probe.bind_to_random_port("tcp://127.0.0.1")
        p2 = probe.bind_to_random_port("tcp://127.0.0.1")
    front, back = f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}"
    procs = [ctx.Process(target=bare_proxy, args=(front, back), daemon=True),
             ctx.Process(target=bare_worker, args=(back, model_path), daemon=True)]
    for p in procs:
        p.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(front)
    payload = msgpack.packb({"dtype": x.dtype.name, "shape": list(x.shape), "data": x.tobytes()})
    try:
        for _ in range(200):  # warm-up, and waits for the chain to come up
            sock.send_multipart([b"", payload])
            sock.recv_multipart()
        lat = []
        for _ in range(queries):
            t0 = time.perf_counter()
            sock.send_multipart([b"", payload])
            sock.recv_multipart()
            lat.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        sent = done = 0
        while done < queries:
            while sent < queries and sent - done < in_flight:
                sock.send_multipart([b"", payload])
                sent += 1
            sock.recv_multipart()
            done += 1
        qps = queries / (time.perf_counter() - t0)
        return lat, qps
    finally:
        sock.close()
        for p in procs:
            p.kill()


# -- infaas ----------------------------------------------------------------------------------------------


def run_infaas(client: Client, x: np.ndarray, queries: int, in_flight: int, **slo) -> tuple[list[float], float, list[float]]:
    for _ in range(200):
        client.query({"x": x}, **slo)
    lat, decisions = [], []
    for _ in range(queries):
        t0 = time.perf_counter()
        r = client.query({"x": x}, **slo)
        lat.append((time.perf_counter() - t0) * 1e3)
        decisions.append(r.decision_us)
    t0 = time.perf_counter()
    pending: list[str] = []
    done = 0
    while done < queries:
        while len(pending) < in_flight and done + len(pending) < queries:
            pending.append(client.submit({"x": x}, **slo))
        rid = pending.pop(0)
        client.gather([rid])
        done += 1
    return lat, queries / (time.perf_counter() - t0), decisions


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = parser.parse_args()
    entry = {e.name: e for e in load_manifest()}[MODEL]
    x = np.load(entry.validation)["x"][:1]

    bare_lat, bare_qps = run_bare(str(entry.file), x, args.queries, args.in_flight)
    with tempfile.TemporaryDirectory(prefix="infaas-overhead-") as tmp, InfaasHome(tmp) as home:
        register_model(home, entry.file, MODEL, entry.task, entry.dataset, entry.validation)
        generate_variants(home, MODEL)
        profile_models(home, [MODEL], batch_sizes=[1, 8])
        record = embedded.up(workers=1, home=tmp)
        try:
            with Client(record["master"]["client_endpoint"], timeout_s=60) as client:
                client.push(home.store, home.artifacts)
                v_lat, v_qps, v_dec = run_infaas(client, x, args.queries, args.in_flight, variant=VARIANT)
                m_lat, m_qps, m_dec = run_infaas(client, x, args.queries, args.in_flight, task=entry.task,
                                                 dataset=entry.dataset, latency_ms=50.0, min_accuracy=0.9)
        finally:
            embedded.down(tmp)

    def summary(lat, qps, dec=None):
        d = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "throughput_qps_in_flight": qps}
        if dec is not None:
            d["decision_us_p50"], d["decision_us_p99"] = pct(dec, 50), pct(dec, 99)
        return d

    result = {
        "model": MODEL, "queries": args.queries, "in_flight": args.in_flight,
        "bare": summary(bare_lat, bare_qps),
        "infaas_variant_query": summary(v_lat, v_qps, v_dec),
        "infaas_modelless_query": summary(m_lat, m_qps, m_dec),
    }
    result["ratio_p50_variant"] = result["infaas_variant_query"]["p50_ms"] / result["bare"]["p50_ms"]
    result["ratio_p50_modelless"] = result["infaas_modelless_query"]["p50_ms"] / result["bare"]["p50_ms"]
    result["target"] = "infaas p50 ≤ 1.25 × bare p50"
    result["target_met"] = result["ratio_p50_modelless"] <= 1.25
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("bare", "infaas_variant_query", "infaas_modelless_query"):
        r = result[name]
        print(f"{name:<24} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"{args.in_flight} in flight: {r['throughput_qps_in_flight']:.0f} q/s"
              + (f"  decision p50 {r['decision_us_p50']:.1f} µs" if "decision_us_p50" in r else ""))
    print(f"p50 ratio vs bare: variant {result['ratio_p50_variant']:.2f}×, model-less "
          f"{result['ratio_p50_modelless']:.2f}× (target ≤ 1.25×) — wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
