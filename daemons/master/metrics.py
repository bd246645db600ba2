"""The master's Prometheus metrics: counters bumped on its loop, gauges read from its state at scrape time.

One scrape target per cluster: the master serves `/metrics` (prometheus_client's HTTP server in a
thread) with its own counters and histograms and, read from the last heartbeats, every worker's numbers.
The loop's side is plain dict increments (no prometheus_client lock on the query path); a custom
collector turns them into metric families when Prometheus scrapes. Each master has its own
`CollectorRegistry`, so tests can run several masters in one process.

Labels stay bounded: no request ids, error codes from the protocol's fixed vocabulary, and model,
variant, task and worker values capped per master (values past the cap are counted as `other`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from infaas_cli.errors import ERROR_CODES, InfaasError

#: Label value for everything past a label's cap.
OTHER = "other"
#: Label value for a model, variant or task a query named that the catalog does not have (a client's
#: typos must not use up the label's cap).
UNKNOWN = "unknown"
#: Distinct values each label may take per master before new ones count as `other`.
LABEL_CAPS = {"model": 64, "variant": 256, "task": 32, "worker": 512}
#: Request, queue and compute time buckets, in seconds (100 µs … 60 s).
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Selection decision time buckets, in seconds (1 µs … 100 ms).
DECISION_BUCKETS_S = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1)
#: Control actions counted by kind (anything else counts as `other`).
ACTION_KINDS = frozenset({"load", "unload", "replicate", "remove_replica", "upgrade", "downgrade", "scale_out",
                          "scale_in", "reprofile"})

RequestLabels = tuple[str, str, str]  # (model, variant, task)


class _Bounded:
    """A label's values: the first `cap` distinct ones as they are, later ones as `other`."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = value or ""
        if value in self.seen:
            return value
        if len(self.seen) < self.cap:
            self.seen.add(value)
            return value
        return OTHER


class _Histogram:
    """Per label tuple: non-cumulative bucket counts and the sum; observing is a bisect and two adds."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0] * (len(self.bounds) + 2)  # buckets, +Inf, then the sum
        s[bisect_left(self.bounds, value)] += 1  # bisect_left: a value equal to a bound is in its `le` bucket
        s[-1] += value

    def count(self, labels: tuple[str, ...] = ()) -> int:
        s = self.series.get(labels)
        return int(sum(s[:-1])) if s else 0

    def family(self, name: str, doc: str, labelnames: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=labelnames)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, s in list(self.series.items()):
            s = list(s)  # one consistent copy: the loop may be observing while Prometheus scrapes
            cumulative, buckets = 0, []
            for le, n in zip(les, s[:-1]):
                cumulative += n
                buckets.append((le, cumulative))
            fam.add_metric(list(labels), buckets, sum_value=s[-1])
        return fam


def _counter(name: str, doc: str, labelnames: list[str], values: dict[tuple[str, ...], float]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labelnames)
    for labels, n in list(values.items()):
        fam.add_metric(list(labels), n)
    return fam


def _gauge(name: str, doc: str, labelnames: list[str], values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=labelnames)
    for labels, v in values.items():
        fam.add_metric(list(labels), v)
    return fam


class MasterMetrics:
    """What one master counts, and the registry Prometheus reads it from.

    The `on_*` methods run on the master's loop thread. `collect()` runs on the HTTP server's thread
    and only reads: it copies the dicts it walks, so a scrape never blocks or breaks the loop.
    """

    def __init__(self, master: Any = None) -> None:
        self.master = master  # read at scrape time for the gauges (workers, pending queries)
        self.model = _Bounded(LABEL_CAPS["model"])
        self.variant = _Bounded(LABEL_CAPS["variant"])
        self.task = _Bounded(LABEL_CAPS["task"])
        self.worker = _Bounded(LABEL_CAPS["worker"])
        self.requests: dict[tuple[str, str, str, str], int] = {}  # (model, variant, task, code) -> answered queries
        self.slo_met: dict[RequestLabels, int] = {}
        self.slo_violations: dict[tuple[str, str, str, str], int] = {}  # (..., reason: late | failed)
        self.actions: dict[tuple[str], int] = {}
        self.route_switches: dict[tuple[str, str], int] = {}  # (model, version) -> roll-out switches to it
        self.request_s = _Histogram(LATENCY_BUCKETS_S)
        self.queue_s = _Histogram(LATENCY_BUCKETS_S)
        self.compute_s = _Histogram(LATENCY_BUCKETS_S)
        self.decision_s = _Histogram(DECISION_BUCKETS_S)
        self._tasks: dict[str, str] = {}  # model -> task, from the last catalog index seen
        self._known_variants: Any = {}
        self._known_tasks: set[str] = set()
        self._index = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        # The master process itself (CPU seconds, resident memory, open fds) as infaas_master_process_*.
        ProcessCollector(namespace="infaas_master", registry=self.registry)

    # -- labels ------------------------------------------------------------------------------------------
    def learn_tasks(self, index: Any) -> None:
        """Model -> task from the catalog index (called with the index selection used; cheap when unchanged)."""
        if index is not self._index:
            self._index = index
            self._tasks = {name: pair[0] or "" for name, pair in index.models.items()}
            self._known_tasks = set(self._tasks.values())
            self._known_variants = index.infos

    def task_of(self, model: str | None) -> str:
        return self._tasks.get(model or "", "")

    def _labels(self, model: str | None, variant: str | None, task: str | None, *,
                on_loop: bool = False) -> RequestLabels:
        if not model and variant:
            model = variant.split("/", 1)[0]
        if on_loop and self.master is not None and (model or task):
            try:
                self.learn_tasks(self.master.catalog.index())  # cached by the master; only the loop may build it
            except Exception:  # counting must never cost a query its reply
                pass
            # What a query named but the catalog lacks is one value, not one per typo.
            if model and model not in self._tasks:
                model = UNKNOWN
            if variant and variant not in self._known_variants:
                variant = UNKNOWN
            if task and task not in self._known_tasks:
                task = UNKNOWN
        return self.model(model), self.variant(variant), self.task(task or self.task_of(model))

    # -- the loop's side ---------------------------------------------------------------------------------
    def on_reply(self, model: str, variant: str, task: str | None, latency_s: float, queue_s: float | None,
                 compute_s: float | None, slo_met: bool | None) -> None:
        """A query answered with its outputs: latency from the master's door to the reply."""
        labels = self._labels(model, variant, task, on_loop=True)
        key = (*labels, "ok")
        self.requests[key] = self.requests.get(key, 0) + 1
        self.request_s.observe(labels, latency_s)
        if queue_s is not None:
            self.queue_s.observe(labels, queue_s)
        if compute_s is not None:
            self.compute_s.observe(labels, compute_s)
        if slo_met is True:
            self.slo_met[labels] = self.slo_met.get(labels, 0) + 1
        elif slo_met is False:
            vkey = (*labels, "late")
            self.slo_violations[vkey] = self.slo_violations.get(vkey, 0) + 1

    def on_error(self, code: str, model: str | None = "", variant: str | None = "", task: str | None = "",
                 *, slo: bool = False) -> None:
        """A query answered with an error (refused at the door, or failed later); `slo`: it had a latency bound,
        so it also counts as an SLO violation (a failed query never met its SLO)."""
        labels = self._labels(model, variant, task, on_loop=True)
        key = (*labels, code if code in ERROR_CODES else "internal")
        self.requests[key] = self.requests.get(key, 0) + 1
        if slo:
            vkey = (*labels, "failed")
            self.slo_violations[vkey] = self.slo_violations.get(vkey, 0) + 1

    def on_query_refused(self, code: str, body: Any) -> None:
        """A query frame refused at the door (its body decoded, so what it asked for is known)."""
        self.on_error(code, getattr(body, "model", None), getattr(body, "variant", None),
                      getattr(body, "task", None), slo=getattr(body, "latency_ms", None) is not None)

    def on_decision(self, seconds: float, index: Any = None) -> None:
        self.decision_s.observe((), seconds)
        if index is not None:
            self.learn_tasks(index)

    def on_action(self, kind: str) -> None:
        key = (kind if kind in ACTION_KINDS else OTHER,)
        self.actions[key] = self.actions.get(key, 0) + 1

    def on_switch(self, model: str, version: int) -> None:
        """A roll-out switched a model's queries to `version` (its stable version, for a canary)."""
        key = (self.model(model), str(version))
        self.route_switches[key] = self.route_switches.get(key, 0) + 1

    # -- the scrape's side -------------------------------------------------------------------------------
    def describe(self) -> list:
        return []  # families are known only when collected (auto_describe is off)

    def collect(self):
        req = ["model", "variant", "task"]
        yield _counter("infaas_requests_total", "Queries answered, by model, variant, task and code "
                       "(ok, or the protocol error code).", [*req, "code"], self.requests)
        yield _counter("infaas_slo_met_total", "Queries with a latency SLO answered within it (goodput).",
                       req, self.slo_met)
        yield _counter("infaas_slo_violations_total", "Queries with a latency SLO that missed it: answered late, "
                       "or failed.", [*req, "reason"], self.slo_violations)
        yield self.request_s.family("infaas_request_duration_seconds", "Query latency from the master's door to "
                                    "its reply, in seconds.", req)
        yield self.queue_s.family("infaas_queue_duration_seconds", "Time a query waited in its worker's queue, "
                                  "in seconds.", req)
        yield self.compute_s.family("infaas_compute_duration_seconds", "Inference time of the batch that ran a "
                                    "query, in seconds.", req)
        yield self.decision_s.family("infaas_decision_duration_seconds", "Time selection took to pick a variant "
                                     "and a worker, in seconds.", [])
        yield _counter("infaas_actions_total", "Control actions sent: load, unload, replicate, remove_replica, "
                       "upgrade, downgrade (switches), scale_out, scale_in, reprofile.", ["kind"], self.actions)
        yield _counter("infaas_rollout_switches_total", "Roll-outs that switched a model's queries to a version "
                       "(`infaas rollout`, or a new version under the latest policy).", ["model", "version"],
                       self.route_switches)
        if self.master is not None:
            yield from self._state_families(self.master)

    def _state_families(self, master: Any):
        """Gauges from the master's state, read now. Copies first: the loop thread keeps mutating it."""
        workers = list(master.workers.values())
        draining = set(master.draining)
        pending = GaugeMetricFamily("infaas_pending_queries", "Queries sent to workers and not yet answered.")
        pending.add_metric([], len(master.pending))
        yield pending
        waiting = GaugeMetricFamily("infaas_replies_waiting", "Replies held for clients that do not read yet.")
        waiting.add_metric([], master.ledger.waiting)
        yield waiting
        dropped = CounterMetricFamily("infaas_replies_dropped", "Replies dropped for clients that never read.")
        dropped.add_metric([], master.replies_dropped)
        yield dropped
        states: dict[tuple[str, ...], float] = {("serving",): 0, ("draining",): 0, ("dead",): 0}
        up, cpu, host_cpu, rss, cores, free_cores, in_flight, info = {}, {}, {}, {}, {}, {}, {}, {}
        mem_avail, mem_total = {}, {}
        replicas: dict[RequestLabels, float] = {}
        holders: dict[RequestLabels, float] = {}
        queued: dict[RequestLabels, float] = {}
        hosts: set[str] = set()
        for w in workers:
            state = "dead" if not w.alive else "draining" if w.worker_id in draining else "serving"
            states[(state,)] += 1
            key = (self.worker(w.worker_id),)
            up[key] = 1.0 if w.alive else 0.0
            hostname = w.hardware.hostname or w.worker_id
            info[(*key, hostname[:128], "gpu" if w.hardware.gpus else "cpu")] = 1.0
            in_flight[key] = in_flight.get(key, 0) + len(w.inflight)
            mt = w.metrics
            if w.alive:
                hosts.add(hostname)
            if mt is None:
                continue
            cores[key] = mt.cores
            free_cores[key] = mt.free_cores
            cpu[key] = mt.process_cpu_percent / 100.0 / max(1, mt.cores)
            host_cpu[key] = mt.cpu_percent / 100.0
            rss[key] = mt.process_rss_bytes
            mem_avail[key] = mt.free_memory_bytes
            mem_total[key] = mt.memory_total_bytes
            if not w.alive:
                continue
            for name, vm in dict(mt.variants).items():
                if vm.state not in ("loaded", "retiring"):
                    continue
                labels = self._labels(None, name, None)
                replicas[labels] = replicas.get(labels, 0) + vm.replicas
                holders[labels] = holders.get(labels, 0) + 1
                queued[labels] = queued.get(labels, 0) + vm.queue
        yield _gauge("infaas_workers", "Workers the master knows, by state.", ["state"], states)
        cache = master.cache_stats["models"]  # the control tick's copy: the loop thread owns the cache
        for field, doc, family in (
                ("hits", "Queries answered from the prediction cache.", _counter),
                ("misses", "Queries to a cached model that the cache could not answer.", _counter),
                ("evictions", "Prediction cache entries pushed out to make room.", _counter),
                ("bytes", "Bytes the prediction cache holds.", _gauge)):
            values: dict[tuple[str, ...], float] = {}
            for name, c in cache.items():  # summed: models past the label cap share one label
                key = (self.model(name),)
                values[key] = values.get(key, 0.0) + c[field]
            suffix = "_total" if family is _counter else ""
            yield family(f"infaas_prediction_cache_{field}{suffix}", doc, ["model"], values)
        host_count = GaugeMetricFamily("infaas_hosts", "Distinct hosts with a live worker.")
        host_count.add_metric([], len(hosts))
        yield host_count
        yield _gauge("infaas_worker_up", "1 while the worker heartbeats, 0 once declared dead.", ["worker"], up)
        yield _gauge("infaas_worker_info", "A worker's host and hardware kind (always 1).",
                     ["worker", "hostname", "hardware"], info)
        yield _gauge("infaas_worker_cpu_ratio", "The worker process's CPU use over its cores (0 to 1).",
                     ["worker"], cpu)
        yield _gauge("infaas_worker_host_cpu_ratio", "The worker's host's CPU use (0 to 1).", ["worker"], host_cpu)
        yield _gauge("infaas_worker_resident_memory_bytes", "The worker process's resident memory.", ["worker"], rss)
        yield _gauge("infaas_worker_host_memory_available_bytes", "Memory available on the worker's host.",
                     ["worker"], mem_avail)
        yield _gauge("infaas_worker_host_memory_total_bytes", "Memory of the worker's host.", ["worker"], mem_total)
        yield _gauge("infaas_worker_cores", "Cores the worker may use.", ["worker"], cores)
        yield _gauge("infaas_worker_free_cores", "Cores not taken by the worker's variants.", ["worker"], free_cores)
        yield _gauge("infaas_worker_in_flight_queries", "Queries sent to the worker and not yet answered.",
                     ["worker"], in_flight)
        yield _gauge("infaas_variant_replicas", "Replicas of a variant loaded across live workers.",
                     ["model", "variant", "task"], replicas)
        yield _gauge("infaas_variant_workers", "Live workers holding a variant.", ["model", "variant", "task"],
                     holders)
        yield _gauge("infaas_variant_queued_samples", "Samples queued for a variant across live workers.",
                     ["model", "variant", "task"], queued)
        pinned: dict[RequestLabels, float] = {}
        for name, pin in dict(getattr(master, "pinned", {})).items():  # a copy: the loop thread mutates it
            labels = self._labels(None, name, None)
            pinned[labels] = pinned.get(labels, 0) + pin.replicas
        yield _gauge("infaas_variant_pinned_replicas", "Replicas of a variant an operator pinned (`infaas load`, "
                     "master.min_loaded): kept loaded, never evicted or autoscaled away.",
                     ["model", "variant", "task"], pinned)
        serving: dict[tuple[str, ...], float] = {}
        canary: dict[tuple[str, ...], float] = {}
        for name, route in dict(getattr(master, "routes", {})).items():
            serving[(self.model(name),)] = route.stable
            if route.canary is not None:
                canary[(self.model(name), str(route.canary))] = route.percent
        yield _gauge("infaas_model_serving_version", "The version answering a model's queries by name or task "
                     "(the stable one during a canary).", ["model"], serving)
        yield _gauge("infaas_model_canary_percent", "Percent of a model's queries a canary version answers.",
                     ["model", "version"], canary)
        yield _gauge("infaas_rollouts_in_progress", "Roll-outs warming a new version or draining the old one.", [],
                     {(): len(getattr(master, "rollouts", {}))})


def metrics_host(client_endpoint: str) -> str:
    """Where the metrics server listens: the client door's interface (loopback for an ipc:// door)."""
    if client_endpoint.startswith("tcp://"):
        host = client_endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        return "0.0.0.0" if host in ("*", "") else host
    return "127.0.0.1"


def start_server(metrics: MasterMetrics, host: str, port: int):
    """Serve `metrics` at http://host:port/metrics in a daemon thread; returns (server, endpoint URL)."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise InfaasError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another "
                          "master.metrics_port (0: a free one) or leave it empty for none", code="bad_config") from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{bound}/metrics"
