"""The master's Prometheus endpoint: counters move exactly with the queries, worker gauges arrive, labels stay bounded.

An in-process master with a metrics port of 0 (a free one), FakeWorkers speaking the real protocol, and
a scrape of /metrics over real HTTP, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from infaas_cli import protocol
from infaas_cli.client import QueryFailed
from infaas_cli.protocol import messages as m
from infaas_daemons.master.metrics import LABEL_CAPS, OTHER, MasterMetrics
from support import REPO, FakeWorker, build_catalog, catalog_outputs, digits_x, start_master, wait_for

pytestmark = pytest.mark.timeout(60)

MODEL = "digits-logreg"
TASK = "digit-classification"
DASHBOARD = REPO / "configs" / "grafana-infaas.json"
#: Every label name a metric may carry: none of them holds a request id or another unbounded value.
BOUNDED_LABELS = {"model", "variant", "task", "code", "reason", "kind", "worker", "hostname", "hardware", "state",
                  "le"}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    home = build_catalog(tmp_path_factory.mktemp("metrics") / "home", (MODEL,))
    yield home
    home.close()


def scrape(endpoint: str) -> tuple[dict[tuple[str, frozenset], float], set[str]]:
    """(sample name, its labels) -> value, and every family and sample name, from one GET of the endpoint."""
    with urllib.request.urlopen(endpoint, timeout=5.0) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for fam in families for s in fam.samples}
    names = {fam.name for fam in families} | {n for n, _ in samples}
    for fam in families:
        names |= {fam.name + suffix for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
                  .get(fam.type, ())}
    return samples, names


def value(samples, name: str, **labels) -> float:
    """The sample with exactly these labels (0 when absent: a counter never bumped is not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name: str, **labels) -> float:
    """The sum over every sample of `name` whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _queries(node) -> list[str]:
    """Every PromQL expression in a Grafana dashboard (panel targets and template variable queries)."""
    if isinstance(node, dict):
        own = [v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str)]
        return own + [q for v in node.values() for q in _queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in _queries(v)]
    return []


def raw_worker(endpoint: str, worker_id: str, rss_bytes: int) -> zmq.Socket:
    """A worker that registers and sends one heartbeat reporting `rss_bytes` (a backend no variant uses)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, worker_id.encode())
    sock.connect(endpoint)
    sock.send_multipart(protocol.encode(protocol.Message("register", m.RegisterBody(
        worker_id=worker_id, hardware=m.Hardware(cores=2, hostname="raw-host"), backends=["none"]))))
    assert sock.poll(5000), "the master did not answer the registration"
    assert protocol.decode(sock.recv_multipart()).type == "registered"
    metrics = m.WorkerMetrics(cores=2, free_cores=2, cpu_percent=50.0, process_cpu_percent=100.0,
                              process_rss_bytes=rss_bytes, memory_total_bytes=8 << 30, free_memory_bytes=4 << 30)
    sock.send_multipart(protocol.encode(protocol.Message("heartbeat", m.HeartbeatBody(worker_id=worker_id, metrics=metrics))))
    return sock


def test_counters_move_exactly_with_the_queries_and_worker_gauges_arrive(tmp_path, catalog):
    variant = next(v.name for v in catalog.store.variants() if v.model == MODEL and v.threads == 1)
    # heartbeat_interval_s 1 s: the raw worker below stays alive (3 s) without heartbeating again.
    with start_master(tmp_path, catalog, metrics_port=0, heartbeat_interval_s=1.0) as (master, client):
        endpoint = client.status()["master"]["metrics_endpoint"]
        assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/metrics")
        assert endpoint == master.metrics_endpoint
        # Every answer takes 50 ms: 1 s SLOs are met, 20 ms ones are late.
        fake = FakeWorker(master.worker_endpoint, "fake-a", preload=[variant], delay_s=0.05,
                          outputs=catalog_outputs(catalog.store))
        try:
            wait_for(lambda: any(w["worker_id"] == "fake-a" and w["free_memory_bytes"] is not None
                                 for w in client.status()["workers"]), 10.0)
            x = digits_x(1)
            sent: list[str] = []  # request ids: none may become a label value

            def query(**slo):
                sent.append(client.submit({"x": x}, variant=variant, **slo))
                return client.gather([sent[-1]])[sent[-1]]
            met = [query(latency_ms=1000.0) for _ in range(4)]
            no_slo = [query() for _ in range(2)]
            late = [query(latency_ms=20.0) for _ in range(3)]
            assert [r.slo_met for r in met + no_slo + late] == [True] * 4 + [None] * 2 + [False] * 3
            impossible = []
            for _ in range(2):  # no variant answers in a nanosecond: refused at the door
                with pytest.raises(QueryFailed) as failed:
                    client.query({"x": x}, model=MODEL, latency_ms=1e-6)
                impossible.append(failed.value.code)
            assert impossible == ["no_variant", "no_variant"]
            with pytest.raises(QueryFailed) as typo:  # a name the catalog lacks: not a label value of its own
                client.query({"x": x}, model="no-such-model-3f9a")
            garbage = zmq.Context.instance().socket(zmq.DEALER)  # one unreadable frame
            garbage.setsockopt(zmq.LINGER, 0)
            garbage.connect(master.client_endpoint)
            garbage.send(b"\x00 not msgpack")
            assert garbage.poll(5000)
            bad_code = protocol.decode(garbage.recv_multipart()).body.code
            garbage.close()
            raw = raw_worker(master.worker_endpoint, "raw-b", rss_bytes=123_456_789)
            try:
                wait_for(lambda: len(client.status()["workers"]) == 2 and all(
                    w["free_memory_bytes"] is not None for w in client.status()["workers"]), 3.0)
                samples, names = scrape(endpoint)
            finally:
                raw.close()
        finally:
            fake.kill()

    served = len(met) + len(no_slo) + len(late)
    ok = {"model": MODEL, "variant": variant, "task": TASK}
    assert value(samples, "infaas_requests_total", **ok, code="ok") == served
    assert total(samples, "infaas_requests_total", code="ok") == served
    assert value(samples, "infaas_requests_total", model=MODEL, variant="", task=TASK, code="no_variant") == 2
    assert value(samples, "infaas_requests_total", model="", variant="", task="", code=bad_code) == 1
    assert value(samples, "infaas_requests_total", model="unknown", variant="", task="", code=typo.value.code) == 1
    assert total(samples, "infaas_requests_total") == served + 4
    # SLO attainment: the met and the late answers, and the refused queries (they had a bound) as violations.
    assert value(samples, "infaas_slo_met_total", **ok) == len(met)
    assert value(samples, "infaas_slo_violations_total", **ok, reason="late") == len(late)
    assert value(samples, "infaas_slo_violations_total", model=MODEL, variant="", task=TASK, reason="failed") == 2
    assert total(samples, "infaas_slo_violations_total") == len(late) + 2
    # One decision per query dispatched; one latency (door to reply) and worker queue time per answer.
    assert value(samples, "infaas_decision_duration_seconds_count") == served
    assert value(samples, "infaas_decision_duration_seconds_bucket", le="+Inf") == served
    assert value(samples, "infaas_request_duration_seconds_count", **ok) == served
    assert value(samples, "infaas_queue_duration_seconds_count", **ok) == served
    assert value(samples, "infaas_request_duration_seconds_sum", **ok) >= served * 0.05
    assert value(samples, "infaas_request_duration_seconds_bucket", **ok, le="0.025") == 0  # each took >= 50 ms
    # The workers' numbers, through the master's one endpoint.
    assert value(samples, "infaas_worker_up", worker="fake-a") == 1
    assert value(samples, "infaas_worker_up", worker="raw-b") == 1
    assert value(samples, "infaas_worker_resident_memory_bytes", worker="raw-b") == 123_456_789
    assert value(samples, "infaas_worker_cpu_ratio", worker="raw-b") == pytest.approx(0.5)
    assert value(samples, "infaas_worker_host_cpu_ratio", worker="raw-b") == pytest.approx(0.5)
    assert value(samples, "infaas_worker_cores", worker="fake-a") == 4
    assert value(samples, "infaas_worker_info", worker="raw-b", hostname="raw-host", hardware="cpu") == 1
    assert value(samples, "infaas_workers", state="serving") == 2
    assert value(samples, "infaas_hosts") == 2  # raw-host, and the fake's own name (it reports no hostname)
    assert value(samples, "infaas_variant_replicas", **ok) == 1
    assert value(samples, "infaas_variant_workers", **ok) == 1
    assert value(samples, "infaas_pending_queries") == 0
    assert ("infaas_master_process_resident_memory_bytes", frozenset()) in samples
    # Bounded labels only: no request id anywhere.
    for name, labels in samples:
        assert {k for k, _ in labels} <= BOUNDED_LABELS, (name, labels)
        assert not (set(sent) | {"no-such-model-3f9a"}) & {v for _, v in labels}, (name, labels)
    # The shipped Grafana dashboard asks only for metrics the master exports.
    wanted = {name for q in _queries(json.loads(DASHBOARD.read_text()))
              for name in re.findall(r"\b(infaas_[a-z_]+)", q)}
    assert wanted and wanted <= names, wanted - names


def test_label_values_past_the_cap_count_as_other():
    metrics = MasterMetrics()
    models = LABEL_CAPS["model"] + 10
    for i in range(models):
        metrics.on_reply(f"m{i}", f"m{i}/ort-cpu-fp32-t1-b1", "task", 0.001, None, None, True)
    seen = {key[0] for key in metrics.requests}
    assert len(seen) == LABEL_CAPS["model"] + 1 and OTHER in seen
    assert sum(n for key, n in metrics.requests.items() if key[0] == OTHER) == 10
    assert sum(metrics.requests.values()) == models
    metrics.on_action("replicate")
    metrics.on_action("something-new")
    assert metrics.actions == {("replicate",): 1, (OTHER,): 1}
