"""Versions and roll-outs on real daemons (`infaas up` and the CLI as processes) under a steady stream of queries by
model name: a second version registered and profiled takes traffic by itself (policy `latest`), `infaas rollout
--to 1` rolls back and `--to 2` forward again — every query answered, none failed, each by version 1 or 2, and the
switch points visible in `status` and the Prometheus metrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from infaas_cli.client import Client, QueryFailed
from infaas_cli.cluster import embedded
from support import ZOO, build_catalog, cli_json, digits_x, retrained_logreg, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "digits-logreg"


class Stream:
    """Queries by model name, a few in flight, from a thread: (sent at, answered at, version or error code)."""

    def __init__(self, endpoint: str, in_flight: int = 4) -> None:
        self.endpoint, self.in_flight = endpoint, in_flight
        self.rows: list[tuple[float, float, int | str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = digits_x(1)
        with Client(self.endpoint, timeout_s=60.0) as client:
            while not self.stop.is_set():
                sent = {client.submit({"x": x}, model=MODEL): time.time() for _ in range(self.in_flight)}
                for rid, result in client.gather(list(sent), timeout_s=60.0).items():
                    got = result.code if isinstance(result, QueryFailed) else result.version
                    self.rows.append((sent[rid], time.time(), got))

    def since(self, t: float) -> list[tuple[float, float, int | str]]:
        return [r for r in list(self.rows) if r[0] >= t]


def all_on(stream: Stream, version: int, since: float) -> float | None:
    """When (seconds after `since`, by send time) every later query was answered by `version`; None: not yet."""
    rows = stream.since(since)
    other = [r[0] for r in rows if r[2] != version]
    later = [r for r in rows if r[0] > max(other, default=since)]
    if len(later) < 20:
        return None
    return max(other, default=since) - since


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    build_catalog(path, (MODEL,)).close()
    yield path
    embedded.down(path)


def test_roll_out_and_back_under_load_fails_no_query(home, tmp_path):
    up = run_cli(home, "up", "--workers", "1", "--heartbeat-interval-s", "0.25", "--metrics-port", "0",
                 "--http-port", "0", "--grpc-port", "0")
    assert up.returncode == 0, up.stderr
    record = embedded.read_cluster(home)
    stream = Stream(record["master"]["client_endpoint"])
    stream.thread.start()
    figures: dict[str, object] = {}
    try:
        t0 = time.time()
        time.sleep(1.0)
        assert {r[2] for r in stream.since(t0)} == {1}

        # A new version: registered (the next version, 2), then profiled — only then does it take traffic.
        v2 = str(retrained_logreg(tmp_path / "logreg-v2.onnx"))
        registered = cli_json(run_cli(home, "register", v2, "--name", MODEL, "--validation", str(ZOO[MODEL].validation),
                                   "--json"))
        assert registered["model"]["name"] == f"{MODEL}@v2" and registered["model"]["version"] == 2
        time.sleep(1.0)
        assert 2 not in {r[2] for r in stream.since(t0)}, "an unprofiled version took traffic"
        t_profile = time.time()
        profiled = run_cli(home, "profile", f"{MODEL}@v2", "--batch-sizes", "1,8", "--budget-ms", "20", "--json",
                           timeout_s=120.0)
        assert profiled.returncode == 0, profiled.stderr
        t_pushed = time.time()
        moved = time_until(lambda: all_on(stream, 2, t_profile), 60.0)
        figures["latest_v2"] = {"profile_command_s": round(t_pushed - t_profile, 3),
                                "all_traffic_on_new_after_profile_start_s": round(moved, 3)}

        listing = cli_json(run_cli(home, "versions", MODEL, "--json"))
        assert [(r["version"], r["profiled"], r["serving"]) for r in listing["versions"]] == [(1, True, False),
                                                                                            (2, True, True)]
        assert listing["policy"]["mode"] == "latest"

        for to in (1, 2):  # roll back, then forward again: the same command
            t_cmd = time.time()
            result = cli_json(run_cli(home, "rollout", MODEL, "--to", str(to), "--json"))
            ro = result["rollout"]
            assert (ro["to_version"], ro["state"]) == (to, "done") and result["policy"] == f"pinned {to}"
            moved = time_until(lambda: all_on(stream, to, t_cmd), 30.0)
            figures[f"rollout_to_v{to}"] = {
                "all_traffic_on_new_s": round(moved, 3),
                "master_switch_after_s": round(ro["switched_at"] - ro["started_at"], 3),
                "master_done_after_s": round(ro["finished_at"] - ro["started_at"], 3),
                "warmed": ro["warmed"], "drained_queries": ro["drained_queries"], "unloaded": ro["unloaded"]}
        time.sleep(0.5)
    finally:
        stream.stop.set()
        stream.thread.join(90.0)

    rows = list(stream.rows)
    failures = [r for r in rows if not isinstance(r[2], int)]
    figures.update(queries=len(rows), failures=len(failures), by_version={
        v: sum(1 for r in rows if r[2] == v) for v in (1, 2)}, seconds=round(rows[-1][1] - rows[0][0], 1))
    print("ROLLOUT FIGURES", json.dumps(figures))
    assert not failures, failures[:5]
    assert {r[2] for r in rows} == {1, 2}

    status = cli_json(run_cli(home, "status", "--json"))["master"]
    assert status["queries_failed"] == 0
    view = status["versions"][MODEL]
    assert view["policy"] == "pinned 2" and view["serving"]["version"] == 2 and view["versions"] == [1, 2]
    moves = [(r["from_version"], r["to_version"], r["state"]) for r in status["rollouts"]]
    assert moves == [(1, 2, "done"), (2, 1, "done"), (1, 2, "done")]
    assert all(r["switched_at"] >= r["started_at"] for r in status["rollouts"])
    text = urllib.request.urlopen(record["fronts"]["metrics"] + "/metrics", timeout=10).read().decode()
    assert metric(text, "infaas_model_serving_version", model=MODEL) == 2.0
    assert metric(text, "infaas_rollout_switches_total", model=MODEL, version="2") == 2.0
    assert metric(text, "infaas_rollout_switches_total", model=MODEL, version="1") == 1.0
    human = run_cli(home, "status").stdout
    assert f"model {MODEL}: versions 1, 2, policy pinned 2, serving v2; roll-out v1 → v2: done" in human

    # At the gateway (Open Inference Protocol): the model's name answers with its policy's version, `M@v1` with v1.
    def rest(name: str) -> dict:
        body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": digits_x(1)[0].tolist()}]}
        request = urllib.request.Request(f"{record['fronts']['http']}/v2/models/{name}/infer",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    served = rest(MODEL)
    assert (served["model_name"], served["parameters"]["version"]) == (f"{MODEL}@v2", 2)
    assert served["parameters"]["variant"] == f"{MODEL}@v2/{served['model_version']}"
    first = rest(f"{MODEL}@v1")
    assert (first["model_name"], first["parameters"]["version"]) == (MODEL, 1)


def time_until(predicate, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s")
