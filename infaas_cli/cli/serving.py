"""Serving commands: the daemons (master, worker, up, down) and the client side (push, status, query)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from infaas_cli.cli.app import (LogLevel, Objective, Policy, SloMode, _state, choice, client, command, err, fmt,
                                home_dir, maybe_push, open_home, out, print_json, progress, settings)
from infaas_cli.errors import InfaasError

# Options that override a config key: None means "not given", so the config files and env keep precedence.
HeartbeatOpt = Annotated[Optional[float], typer.Option(help="Worker heartbeat interval in seconds; 3 missed = dead (master.heartbeat_interval_s).")]
PolicyOpt = Annotated[Optional[Policy], typer.Option(help="infaas (the full system), fixed-peak or fixed-autoscale (fixed-variant baselines; static and replicate are their former names) (master.policy).")]
WindowOpt = Annotated[Optional[float], typer.Option(help="Pressure must last this long before scaling up (autoscale.window_s).")]
HoldOpt = Annotated[Optional[float], typer.Option(help="Low load must last this long before scaling down, > window (autoscale.hold_s).")]
CooldownOpt = Annotated[Optional[float], typer.Option(help="Back-off after an action on a variant (autoscale.cooldown_s).")]
IdleUnloadOpt = Annotated[Optional[float], typer.Option(help="Unload a variant idle this long (autoscale.idle_unload_s).")]
LogLevelOpt = Annotated[Optional[LogLevel], typer.Option(case_sensitive=False, help="How much the daemon logs (master.log_level / worker.log_level).")]
LogFileOpt = Annotated[Optional[Path], typer.Option(help="Log to this file, rotated at log_max_bytes with log_backups old files kept (default: stderr, e.g. systemd's journal).")]


def _autoscale(window_s, hold_s, cooldown_s, idle_unload_s) -> dict[str, Any]:
    return {"autoscale.window_s": window_s, "autoscale.hold_s": hold_s, "autoscale.cooldown_s": cooldown_s,
            "autoscale.idle_unload_s": idle_unload_s}


@command(name="master")
def master_cmd(
    data_dir: Annotated[Optional[Path], typer.Option(help="The master's own data directory (master.data_dir; default $INFAAS_HOME/master).")] = None,
    client_endpoint: Annotated[Optional[str], typer.Option(help="Where clients connect; port 0 picks a free one (master.client_endpoint).")] = None,
    worker_endpoint: Annotated[Optional[str], typer.Option(help="Where workers connect (master.worker_endpoint).")] = None,
    endpoints_file: Annotated[Optional[Path], typer.Option(help="Write the bound endpoints here as JSON.")] = None,
    heartbeat_interval_s: HeartbeatOpt = None,
    policy: PolicyOpt = None,
    autoscale_window_s: WindowOpt = None,
    autoscale_hold_s: HoldOpt = None,
    autoscale_cooldown_s: CooldownOpt = None,
    autoscale_idle_unload_s: IdleUnloadOpt = None,
    cluster_scale_out_utilisation: Annotated[Optional[float], typer.Option(help="Scale out when every host is above this (cluster.scale_out_utilisation).")] = None,
    cluster_scale_in_utilisation: Annotated[Optional[float], typer.Option(help="Scale in when every host is below this (cluster.scale_in_utilisation).")] = None,
    cluster_out_window_s: Annotated[Optional[float], typer.Option(help="How long all hosts must be busy (cluster.out_window_s).")] = None,
    cluster_in_window_s: Annotated[Optional[float], typer.Option(help="How long all hosts must be idle, > out window (cluster.in_window_s).")] = None,
    cluster_backoff_s: Annotated[Optional[float], typer.Option(help="Nothing more for this long after a scaling action (cluster.backoff_s).")] = None,
    scale_out_command: Annotated[Optional[str], typer.Option(help="Run to add a worker host, e.g. ansible-playbook … scale-out.yml (cluster.scale_out_command, $INFAAS_SCALE_OUT_COMMAND).")] = None,
    scale_in_command: Annotated[Optional[str], typer.Option(help="Run to remove the drained host $INFAAS_WORKER_ID (cluster.scale_in_command, $INFAAS_SCALE_IN_COMMAND).")] = None,
    curve_secret_key: Annotated[Optional[Path], typer.Option(help="The master's .key_secret: turns CurveZMQ on (security.curve_secret_key).")] = None,
    authorized_keys: Annotated[Optional[Path], typer.Option(help="Directory of the public .key files allowed in (security.authorized_keys).")] = None,
    log_level: LogLevelOpt = None,
    log_file: LogFileOpt = None,
) -> None:
    """Run the master daemon in the foreground (SIGTERM stops it); every option overrides a config key."""
    from infaas_cli.settings import with_home_defaults
    from infaas_daemons.common import setup_logging, stop_on_signals
    from infaas_daemons.master import Master

    current, _ = settings({
        "master.data_dir": data_dir, "master.client_endpoint": client_endpoint,
        "master.worker_endpoint": worker_endpoint, "master.heartbeat_interval_s": heartbeat_interval_s,
        "master.policy": choice(policy), "master.log_level": choice(log_level),
        **_autoscale(autoscale_window_s, autoscale_hold_s, autoscale_cooldown_s, autoscale_idle_unload_s),
        "cluster.scale_out_utilisation": cluster_scale_out_utilisation,
        "cluster.scale_in_utilisation": cluster_scale_in_utilisation, "cluster.out_window_s": cluster_out_window_s,
        "cluster.in_window_s": cluster_in_window_s, "cluster.backoff_s": cluster_backoff_s,
        "cluster.scale_out_command": scale_out_command, "cluster.scale_in_command": scale_in_command,
        "security.curve_secret_key": curve_secret_key, "security.authorized_keys": authorized_keys})
    home = home_dir()
    current = with_home_defaults(current, home)
    setup_logging(current.master.log_level, log_file, current.master.log_max_bytes, current.master.log_backups)
    daemon = Master.from_settings(current, home, endpoints_file)
    stop_on_signals(daemon.stop_event)
    daemon.run()


@command(name="worker")
def worker_cmd(
    master_endpoint: Annotated[Optional[str], typer.Option(help="The master's worker endpoint, e.g. tcp://10.0.0.1:7011 (worker.master_endpoint).")] = None,
    master_alias: Annotated[Optional[str], typer.Option("--master", hidden=True, help="Deprecated: --master-endpoint (--master names the client endpoint elsewhere).")] = None,
    worker_id: Annotated[Optional[str], typer.Option(help="Stable id; default a random one (worker.worker_id).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Artifact cache (worker.cache_dir; default $INFAAS_HOME/worker-cache).")] = None,
    cores: Annotated[Optional[int], typer.Option(help="Cores to offer (worker.cores; default those this process may use).")] = None,
    heartbeat_interval_s: Annotated[Optional[float], typer.Option(help="Seconds between heartbeats (worker.heartbeat_interval_s).")] = None,
    curve_secret_key: Annotated[Optional[Path], typer.Option(help="This worker's .key_secret, CurveZMQ (security.curve_secret_key).")] = None,
    master_public_key: Annotated[Optional[Path], typer.Option(help="The master's public .key, CurveZMQ (security.master_public_key).")] = None,
    log_level: LogLevelOpt = None,
    log_file: LogFileOpt = None,
    master_grace_s: Annotated[Optional[float], typer.Option(help="Exit (status 3) once the master has been out of reach this long; 0: never (worker.master_grace_s).")] = None,
) -> None:
    """Run a worker daemon in the foreground (SIGTERM stops it); every option overrides a config key.

    A worker whose master is gone longer than worker.master_grace_s exits by itself (systemd restarts it).
    """
    from infaas_cli.settings import with_home_defaults
    from infaas_daemons.common import setup_logging, stop_on_signals
    from infaas_daemons.worker import Worker

    if master_alias is not None:
        err.print("[yellow]warning:[/yellow] `infaas worker --master` is deprecated: it is --master-endpoint "
                  "(the top-level --master is the client endpoint)", highlight=False)
    current, _ = settings({
        "worker.master_endpoint": master_endpoint or master_alias, "worker.worker_id": worker_id,
        "worker.cache_dir": cache_dir, "worker.cores": cores, "worker.heartbeat_interval_s": heartbeat_interval_s,
        "worker.log_level": choice(log_level), "worker.master_grace_s": master_grace_s,
        "security.curve_secret_key": curve_secret_key, "security.master_public_key": master_public_key})
    current.security.client_keys()  # both keys or neither, before anything starts
    current = with_home_defaults(current, home_dir())
    setup_logging(current.worker.log_level, log_file, current.worker.log_max_bytes, current.worker.log_backups)
    daemon = Worker.from_settings(current)
    stop_on_signals(daemon.stop_event)
    daemon.run()
    if daemon.exit_reason:
        raise InfaasError(daemon.exit_reason, code="unavailable")


@command(name="gateway")
def gateway_cmd(
    master: Annotated[Optional[str], typer.Option("--master", help="The master's client endpoint (gateway.master; default client.master, else the one `infaas up` started).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Interface for the HTTP and gRPC listeners (gateway.host).")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="REST (Open Inference Protocol) port; 0 picks a free one (gateway.http_port).")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="gRPC (GRPCInferenceService) port; 0 picks a free one (gateway.grpc_port).")] = None,
    tls_cert_file: Annotated[Optional[Path], typer.Option(help="PEM certificate: TLS on HTTP and gRPC (gateway.tls_cert_file).")] = None,
    tls_key_file: Annotated[Optional[Path], typer.Option(help="Its PEM private key (gateway.tls_key_file).")] = None,
    curve_secret_key: Annotated[Optional[Path], typer.Option(help="The gateway's .key_secret, CurveZMQ to the master (security.curve_secret_key).")] = None,
    master_public_key: Annotated[Optional[Path], typer.Option(help="The master's public .key, CurveZMQ (security.master_public_key).")] = None,
    endpoints_file: Annotated[Optional[Path], typer.Option(help="Write the bound ports here as JSON.")] = None,
    log_level: LogLevelOpt = None,
    log_file: LogFileOpt = None,
) -> None:
    """Run the gateway in the foreground: REST and gRPC (the Open Inference Protocol, KServe v2) in front of the
    master, so tritonclient, curl or any OIP client can query infaas (SIGTERM stops it)."""
    from infaas_daemons.common import setup_logging
    from infaas_daemons.gateway import main as gateway

    current, _ = settings({
        "gateway.master": master, "gateway.host": host, "gateway.http_port": http_port,
        "gateway.grpc_port": grpc_port, "gateway.tls_cert_file": tls_cert_file, "gateway.tls_key_file": tls_key_file,
        "security.curve_secret_key": curve_secret_key, "security.master_public_key": master_public_key})
    current.security.client_keys()  # both keys or neither, before anything starts
    setup_logging(choice(log_level) or current.master.log_level, log_file, current.master.log_max_bytes,
                  current.master.log_backups)
    gateway.run(current, endpoints_file=endpoints_file, home=home_dir())


@command()
def up(
    workers: Annotated[int, typer.Option(help="Local workers to start.")] = 1,
    heartbeat_interval_s: Annotated[Optional[float], typer.Option(help="Heartbeat interval of the master and workers (master/worker.heartbeat_interval_s).")] = None,
    policy: PolicyOpt = None,
    autoscale_window_s: WindowOpt = None,
    autoscale_hold_s: HoldOpt = None,
    autoscale_cooldown_s: CooldownOpt = None,
    autoscale_idle_unload_s: IdleUnloadOpt = None,
    http_port: Annotated[Optional[int], typer.Option(help="The gateway's REST (Open Inference Protocol) port; 0 picks a free one (gateway.http_port, default 8000).")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="The gateway's gRPC port; 0 picks a free one (gateway.grpc_port, default 8001).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="The master's Prometheus /metrics port; 0 picks a free one (master.metrics_port).")] = None,
    gateway: Annotated[bool, typer.Option("--gateway/--no-gateway", help="Start the gateway (REST and gRPC) beside the master.")] = True,
) -> None:
    """Start a master, local workers and the gateway in the background, then replicate the local catalog to it.

    The daemons read one generated config file, $INFAAS_HOME/run/infaas.toml: the effective settings here, so
    every knob the options below leave out is set with --set KEY=VALUE, --config FILE or $INFAAS_HOME/config.toml
    (e.g. infaas --set autoscale.idle_unload_s=120 --set worker.master_grace_s=30 up; `infaas config show` lists
    them). Logs rotate in $INFAAS_HOME/run; `infaas down` stops everything started here.
    """
    from infaas_cli.cluster import embedded

    current, _ = settings({"master.heartbeat_interval_s": heartbeat_interval_s,
                           "worker.heartbeat_interval_s": heartbeat_interval_s, "master.policy": choice(policy),
                           "gateway.http_port": http_port, "gateway.grpc_port": grpc_port,
                           "master.metrics_port": metrics_port,
                           **_autoscale(autoscale_window_s, autoscale_hold_s, autoscale_cooldown_s,
                                        autoscale_idle_unload_s)})
    record = embedded.up(workers, _state["home"], settings=current, gateway=gateway)
    if record.get("stopped_stale"):
        err.print(f"[yellow]note:[/yellow] the last cluster's master had died; stopped what was left of it (pids "
                  f"{', '.join(map(str, record['stopped_stale']))})", highlight=False)
    fronts = record.get("fronts") or {}
    shown = ", ".join(f"{k} {v}" for k, v in (("REST", fronts.get("http")), ("gRPC", fronts.get("grpc")),
                                               ("metrics", fronts.get("metrics"))) if v)
    err.print(f"infaas up: master pid {record['master']['pid']} at {record['master']['client_endpoint']}, "
              f"{len(record['workers'])} worker(s){'; ' + shown if shown else ''}; config and logs in "
              f"{embedded.run_dir(_state['home'])}", highlight=False)
    with open_home() as home:
        if home.store.last_seq():
            maybe_push(home)


@command()
def down() -> None:
    """Stop the daemons `infaas up` started."""
    from infaas_cli.cluster import embedded

    recorded = embedded.read_cluster(_state["home"]) is not None
    pids = embedded.down(_state["home"])
    err.print(f"infaas down: stopped {len(pids)} process(es)" if pids else
              "infaas down: nothing was running (its record is removed)" if recorded else "infaas is not up",
              highlight=False)


@command()
def push(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Replicate the local catalog (change log and artifacts) to the master; safe to repeat."""
    with open_home() as home, client() as master:
        result = master.push(home.store, home.artifacts)
    if as_json:
        print_json(result)
    else:
        err.print(f"pushed to {master.endpoint}: {result['applied']} change(s) applied, master at sequence "
                  f"{result['last_seq']}, {result['artifacts_uploaded']} artifact(s) uploaded", highlight=False)


@command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for the master.")] = 5.0,
    workers: Annotated[int, typer.Option("--workers", min=0, max=10_000,
                                         help="List at most this many workers (0: the summary only).")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="The first worker listed (paging).")] = 0,
) -> None:
    """The master's endpoint, workers, loaded variants, queues, QPS, utilisation and decision times."""
    with client(timeout_s) as master:
        st = master.status(workers_offset=offset, workers_limit=workers)
    fronts = _local_fronts(st)
    if fronts:
        st["fronts"] = fronts
    if as_json:
        print_json(st)
        return
    m = st["master"]
    d = m["decision_us"]
    dec = "-" if not d["count"] else f"p50 {d['p50']:.1f} µs, p99 {d['p99']:.1f} µs over {d['count']}"
    out.print(f"master {m['endpoint']} (pid {m['pid']}, up {m['uptime_s']} s): {m['models']} models, "
              f"{m['variants']} variants, {m['pending']} pending, {m['queries_served']} served, "
              f"{m['queries_failed']} failed; decisions {dec}", highlight=False)
    if fronts:
        out.print("fronts: " + ", ".join(f"{k} {v}" for k, v in fronts.items() if v and not k.endswith("_port")),
                  highlight=False)
    table = Table(title="workers")
    for col in ("worker", "alive", "cores free", "cpu %", "variant", "state", "autoscale", "replicas", "queue",
                "qps", "latency ms"):
        table.add_column(col)
    for w in st["workers"]:
        variants = w["variants"] or {"-": {}}
        for i, (name, v) in enumerate(sorted(variants.items())):
            head = [w["worker_id"], str(w["alive"]), f"{fmt(w['free_cores'], 'g')}/{w['cores']}",
                    fmt(w["cpu_percent"], ".0f")] if i == 0 else ["", "", "", ""]
            state = v.get("state", "-") + (", pinned" if v.get("pinned") else "")
            table.add_row(*head, name, state, (w.get("autoscale") or {}).get(name, "-"),
                          str(v.get("replicas", "-")), str(v.get("queue", "-")), fmt(v.get("qps"), ".1f"),
                          fmt(v.get("latency_ms"), ".2f"))
    out.print(table)
    total = m.get("workers_total", len(st["workers"]))
    if total > len(st["workers"]):
        out.print(f"{len(st['workers'])} of {total} workers listed ({m.get('workers_alive')} alive); page with "
                  f"--offset {offset + len(st['workers'])}", highlight=False)
    slo = m.get("slo") or {}
    if slo.get("queries"):
        att = Table(title=f"SLO attainment, last {slo['window_s']:.0f} s: {slo['attainment']:.1%} of "
                          f"{slo['queries']} queries with a latency SLO")
        for col in ("model / query class", "met", "missed", "attainment"):
            att.add_column(col)
        for key, rows in (("model", slo["by_model"]), ("class", slo["by_class"])):
            for name, r in rows.items():
                att.add_row(f"{key} {name}", str(r["met"]), str(r["missed"]), f"{r['attainment']:.1%}")
        out.print(att)
    for name, v in (m.get("versions") or {}).items():  # models with several versions, a version policy or a roll-out
        serving = v.get("serving") or {}
        route = "nothing profiled" if not serving else f"v{serving['version']}" + (
            f" + canary v{serving['canary']} ({serving['percent']:g}%)" if serving.get("canary") else "")
        ro = v.get("rollout")
        moved = "" if not ro else f"; roll-out {ro['from']} → {ro['to']}: {ro['state']}" + (
            f", switched after {(ro['switched_at'] - ro['started_at']) * 1e3:.0f} ms" if ro.get("switched_at") else "")
        out.print(f"model {name}: versions {', '.join(map(str, v['versions']))}, policy {v['policy']}, serving "
                  f"{route}{moved}", highlight=False)
    actions = m.get("autoscale_actions") or []
    if actions:
        out.print(f"policy {m.get('policy')}; last autoscaling actions:", highlight=False)
        for a in actions[-5:]:
            target = f" -> {a['target']}" if a.get("target") else ""
            out.print(f"  {a['kind']} {a['variant']}{target} on {a['worker']}: {a['reason']}", highlight=False)


def _local_fronts(st: dict[str, Any]) -> dict[str, Any] | None:
    """The gateway's and metrics' bound endpoints `infaas up` recorded, when this master is that cluster's."""
    from infaas_cli.cluster import embedded

    record = embedded.read_cluster(_state["home"])
    if not record or record.get("master", {}).get("pid") != st.get("master", {}).get("pid"):
        return None
    return record.get("fronts")


def _load_inputs(path: Path) -> dict[str, Any]:
    from infaas_cli.client import load_input_file

    if not path.is_file():
        raise InfaasError(f"input file {path} does not exist; pass a .npy (one input) or .npz (keyed by input name)")
    return load_input_file(path)


@command()
def query(
    input: Annotated[Optional[Path], typer.Option("--input", help=".npy for a single-input model, .npz keyed by input name.")] = None,
    variant: Annotated[Optional[str], typer.Option(help="Run exactly this variant.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Any variant of this model meeting the SLO.")] = None,
    task: Annotated[Optional[str], typer.Option(help="Model-less: any model for this task…")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="…and dataset.")] = None,
    latency_ms: Annotated[Optional[float], typer.Option(help="Latency SLO in milliseconds.")] = None,
    min_accuracy: Annotated[Optional[float], typer.Option(help="Minimum accuracy (0-1).")] = None,
    objective: Annotated[Objective, typer.Option(help="Rank the variants that meet the SLO by cost or by latency.")] = Objective.cost,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="Maximum cost per query (USD).")] = None,
    slo_mode: Annotated[SloMode, typer.Option(help="best_effort: serve and mark a late reply; strict: refuse "
                                                   "(overloaded) when the SLO cannot be met.")] = SloMode.best_effort,
    output: Annotated[Optional[Path], typer.Option(help="Write the outputs here (.npz).")] = None,
    timeout_s: Annotated[Optional[float], typer.Option(help="How long to wait for the answer (default client.timeout_s, 30).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Batch job: every file of --input-dir, with spare capacity.")] = False,
    input_dir: Annotated[Optional[Path], typer.Option(help="Offline: a directory of .npy/.npz inputs.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Offline: where OUTPUT_DIR/<stem>.npz go.")] = None,
    max_in_flight: Annotated[int, typer.Option(help="Offline: most queries in flight when nothing else runs.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send one query: by variant, by model + SLO, or model-less by task + dataset + SLO (or --offline)."""
    import numpy as np

    if offline:
        _offline(model, input_dir, output_dir, min_accuracy, max_in_flight, timeout_s, as_json)
        return
    if input is None:
        raise InfaasError("pass --input FILE (.npy or .npz), or --offline with --input-dir and --output-dir")
    feeds = _load_inputs(input)
    with client(timeout_s) as master:
        result = master.query(feeds, variant=variant, model=model, task=task, dataset=dataset, latency_ms=latency_ms,
                              min_accuracy=min_accuracy, objective=choice(objective), max_cost_usd=max_cost,
                              slo_mode=choice(slo_mode))
    outputs = result.outputs_by_name
    if result.slo_met is False:
        predicted = f" (predicted {result.predicted_latency_ms:.2f} ms)" if result.predicted_latency_ms else ""
        err.print(f"[yellow]warning:[/yellow] late: answered in {result.latency_ms:.2f} ms, over the "
                  f"{latency_ms:g} ms SLO{predicted}; --slo-mode strict refuses work that would be late",
                  highlight=False)
    if output is not None:
        arrays = {k: (v if isinstance(v, np.ndarray) else np.asarray(
            [[row[c] for c in sorted(row)] for row in v])) for k, v in outputs.items()}
        np.savez(output, **arrays)
    if as_json:
        print_json({"variant": result.variant, "model": result.model, "version": result.version,
                     "worker": result.worker, "decision_us": result.decision_us, "latency_ms": result.latency_ms,
                     "predicted_latency_ms": result.predicted_latency_ms, "slo_met": result.slo_met,
                     "client_latency_ms": result.client_latency_ms, "timing": result.timing,
                     "needs_load": result.needs_load,
                     **({"output": str(output)} if output is not None else
                        {"outputs": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in outputs.items()}})})
        return
    t = result.timing
    met = "" if result.slo_met is None else (", SLO met" if result.slo_met else ", SLO MISSED")
    out.print(f"variant {result.variant} (version {result.version}) on {result.worker}: "
              f"{result.latency_ms:.2f} ms end to end{met} "
              f"(decision {result.decision_us:.1f} µs, queue {t.get('queue_ms', 0):.2f} ms, batch {t.get('batch_size')}, "
              f"inference {t.get('inference_ms', 0):.2f} ms{', cold load' if result.needs_load else ''})", highlight=False)
    for k, v in outputs.items():
        if isinstance(v, np.ndarray):
            out.print(f"  {k}: {v.dtype}{list(v.shape)} {np.array2string(v.reshape(-1)[:8], precision=4)}"
                      f"{' …' if v.size > 8 else ''}", highlight=False)
        else:
            out.print(f"  {k}: list of {len(v)}", highlight=False)
    if output is not None:
        err.print(f"wrote {output}", highlight=False)


def _offline(model, input_dir, output_dir, min_accuracy, max_in_flight, timeout_s, as_json) -> None:
    from infaas_cli.client.offline import run_offline

    if not model or input_dir is None or output_dir is None:
        raise InfaasError("an offline query needs --model, --input-dir and --output-dir")
    if max_in_flight < 1:
        raise InfaasError("--max-in-flight must be at least 1")
    with client(timeout_s) as master, progress(quiet=as_json) as bar:
        files = [p for p in input_dir.iterdir() if p.suffix in (".npy", ".npz")] if input_dir.is_dir() else []
        task = bar.add_task(f"offline {model}", total=len(files))
        report = run_offline(master, model, input_dir, output_dir, min_accuracy=min_accuracy,
                             max_in_flight=max_in_flight,
                             on_progress=lambda name: bar.update(task, advance=1, description=f"offline {name}"))
    summary = {"files": report.files_total, "done": report.files_done, "skipped_done_earlier": report.files_skipped,
               "failed": [{"file": f, "error": e} for f, e in report.files_failed], "queries": report.queries,
               "variants": report.variants, "throttled": report.throttled, "elapsed_s": round(report.elapsed_s, 3),
               "output_dir": str(output_dir)}
    if as_json:
        print_json(summary)
    else:
        err.print(f"offline {model}: {report.files_done} file(s) done, {report.files_skipped} done earlier, "
                  f"{len(report.files_failed)} failed, {report.queries} queries in {report.elapsed_s:.1f} s "
                  f"(window shrank {report.throttled}×); outputs in {output_dir}", highlight=False)
        for f, e in report.files_failed:
            err.print(f"  [red]failed[/red] {f}: {e}", highlight=False, soft_wrap=True)
    if report.files_failed:
        raise typer.Exit(1)
