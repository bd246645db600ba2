"""The `infaas` command line: a thin shell over the toolkit's library functions."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infaas_cli import __version__
from infaas_cli.errors import InfaasError

app = typer.Typer(help="infaas: model-less inference serving.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
zoo_app = typer.Typer(help="The bundled example model zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
bench_app = typer.Typer(help="Reproducible experiments.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Data on stdout; piped output gets a wide table rather than rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
err = Console(stderr=True)  # diagnostics, progress
_state: dict[str, Any] = {"debug": False, "home": None, "master": None}


def _guard(fn):
    """Domain errors become one red line on stderr and exit 1; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except InfaasError as exc:
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/red]")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:400]} "
                      "(rerun with --debug for the traceback, and report it)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def command(*args, **kwargs):
    def deco(fn):
        return app.command(*args, **kwargs)(_guard(fn))
    return deco


def _home():
    from infaas_cli.catalog.home import InfaasHome

    return InfaasHome(_state["home"])


def _progress(quiet: bool) -> Progress:
    """The progress bar on stderr; none with --json."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=quiet, disable=quiet)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"infaas {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    home: Annotated[Optional[Path], typer.Option("--home", help="Data directory (default $INFAAS_HOME or ~/.infaas).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    master: Annotated[Optional[str], typer.Option("--master", help="Master client endpoint (default $INFAAS_MASTER or the one `infaas up` started).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    _state["home"] = home
    _state["debug"] = debug
    _state["master"] = master


def _maybe_push(home, quiet: bool = False) -> None:
    """Replicate the local catalog to the master when one is known; unreachable is a warning, not an error."""
    from infaas_cli.client import Client, resolve_master

    endpoint = resolve_master(_state["master"], _state["home"])
    if endpoint is None:
        return
    try:
        with Client(endpoint, timeout_s=10.0) as client:
            result = client.push(home.store, home.artifacts)
    except InfaasError as exc:
        err.print(f"[yellow]warning:[/yellow] catalog kept locally, not replicated: {exc}; run `infaas push` later",
                  highlight=False, soft_wrap=True)
        return
    if not quiet:
        err.print(f"replicated to {endpoint}: {result['applied']} change(s), {result['artifacts_uploaded']} "
                  "artifact(s)", highlight=False)


# -- register / generate -----------------------------------------------------------------------


def _generate_and_report(home, name: str, as_json: bool) -> dict[str, Any]:
    from infaas_cli.toolkit.generate import generate_variants

    with err.status(f"generating variants of {name}…") as status:
        report = generate_variants(home, name, on_step=lambda s: status.update(f"generating {s}…"))
    summary = {
        "model": name, "variants": len(report.variants),
        "recipes": sorted({f"{v.backend}-{v.recipe}" for v in report.variants}),
        "skipped": [{"backend": s.backend, "recipe": s.recipe, "reason": s.reason} for s in report.skipped],
        "unavailable": [{"backend": b, "reason": r} for b, r in report.unavailable],
    }
    if not as_json:
        err.print(f"[green]{name}[/green]: {len(report.variants)} variants "
                  f"({', '.join(summary['recipes']) or 'none'})", highlight=False)
        for s in report.skipped:
            err.print(f"  skipped {s.backend} {s.recipe}: {s.reason}", highlight=False, soft_wrap=True)
        for b, r in report.unavailable:
            err.print(f"  [dim]{b}: not available on this host: {r}[/dim]", highlight=False, soft_wrap=True)
    return summary


@command()
def register(
    path: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    name: Annotated[str, typer.Option(help="Model name, e.g. digits-cnn-l.")],
    task: Annotated[str, typer.Option(help="Task, e.g. digit-classification.")],
    dataset: Annotated[str, typer.Option(help="Dataset, e.g. digits.")],
    validation: Annotated[Optional[Path], typer.Option(help=".npz with one array per input (or x) and optional y labels.")] = None,
    accuracy: Annotated[Optional[float], typer.Option(help="Known accuracy (0-1), only when no validation set exists.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace a model of the same name and its variants.")] = False,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="Register only; run `infaas generate` later.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Register an ONNX model: validate it, measure its accuracy, store it, generate its variants."""
    from infaas_cli.catalog.listings import model_view
    from infaas_cli.toolkit.register import register_model

    with _home() as home:
        record = register_model(home, path, name, task, dataset, validation, accuracy, replace)
        result: dict[str, Any] = {"model": model_view(record, 0)}
        if not as_json:
            acc = "unknown" if record.accuracy is None else f"{record.accuracy:.4f} ({record.accuracy_metric})"
            err.print(f"registered [bold]{name}[/bold]: {len(record.inputs)} input(s), batch "
                      f"{record.batch_dim} (max {record.max_batch}), accuracy {acc}", highlight=False)
            if record.accuracy is None:
                err.print("[yellow]warning:[/yellow] no validation set and no --accuracy: queries with a "
                          "minimum accuracy will never pick this model", highlight=False)
        if not no_generate:
            result["generate"] = _generate_and_report(home, name, as_json)
        _maybe_push(home, quiet=as_json)
    if as_json:
        _print_json(result)


@command()
def generate(
    name: Annotated[str, typer.Argument(help="A registered model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the variants of a model with every backend available on this host."""
    with _home() as home:
        summary = _generate_and_report(home, name, as_json)
        _maybe_push(home, quiet=as_json)
    if as_json:
        _print_json(summary)


# -- profile -----------------------------------------------------------------------------------


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise InfaasError(f"--batch-sizes '{text}' is not a comma-separated list of integers, e.g. 1,4,8") from None
    if not sizes or sizes[0] < 1:
        raise InfaasError(f"--batch-sizes '{text}' must list positive integers, e.g. 1,4,8")
    return sizes


@command()
def profile(
    names: Annotated[Optional[list[str]], typer.Argument(help="Models to profile.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Profile every registered model.")] = False,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8,16,32",
    force: Annotated[bool, typer.Option(help="Measure again even where a profile is stored.")] = False,
    budget_ms: Annotated[float, typer.Option(help="Measuring time per variant and batch size (ms).")] = 150.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a summary as JSON.")] = False,
) -> None:
    """Measure latency per batch size, load time and memory of every variant this host can run."""
    from infaas_cli.toolkit.profiler import MeasureSettings, profile_models

    sizes = _parse_batch_sizes(batch_sizes)
    if budget_ms <= 0:
        raise InfaasError("--budget-ms must be positive, e.g. 150")
    with _home() as home:
        targets = [m.name for m in home.store.models()] if all_models else list(names or [])
        if not targets:
            raise InfaasError("name a model to profile, or pass --all")
        with _progress(quiet=as_json) as progress:
            task = progress.add_task("profiling", total=None)
            report = profile_models(
                home, targets, sizes, force, MeasureSettings(budget_ms=budget_ms),
                on_plan=lambda total: progress.update(task, total=total),
                on_progress=lambda what: progress.update(task, advance=1, description=f"profiling {what}"))
            progress.update(task, description="profiled")
        _maybe_push(home, quiet=as_json)
    summary = {"profiled_variants": len(report.profiled), "already_stored": report.skipped_stored,
               "measurements": report.measurements,
               "not_runnable": [{"variant": v, "reason": r} for v, r in report.not_runnable],
               "failed": [{"configuration": c, "error": e} for c, e in report.failed]}
    if as_json:
        _print_json(summary)
    else:
        err.print(f"profiled {len(report.profiled)} variants ({report.measurements} measurements); "
                  f"{report.skipped_stored} already stored (use --force to redo)", highlight=False)
        for c, e in report.failed:
            err.print(f"[red]failed[/red] {c}: {e}", highlight=False, soft_wrap=True)
        if report.not_runnable:
            err.print(f"{len(report.not_runnable)} variants cannot run here, e.g. {report.not_runnable[0][1]}",
                      highlight=False)


# -- listings ----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


@command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List registered models."""
    from infaas_cli.catalog.listings import models_view

    with _home() as home:
        rows = models_view(home.store)
    if as_json:
        _print_json(rows)
        return
    table = Table(title="models")
    for col in ("name", "task", "dataset", "inputs", "batch", "accuracy", "variants"):
        table.add_column(col)
    for m in rows:
        ins = ", ".join(f"{i['name']}:{i['dtype']}" for i in m["inputs"])
        acc = "-" if m["accuracy"] is None else f"{m['accuracy'] * 100:.2f}% ({m['accuracy_metric']})"
        table.add_row(m["name"], m["task"], m["dataset"], ins, f"{m['batch_dim']} ≤{m['max_batch']}", acc,
                      str(m["variants"]))
    out.print(table)


@command()
def variants(
    name: Annotated[Optional[str], typer.Argument(help="A registered model.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Variants of every model.")] = False,
    batch_size: Annotated[int, typer.Option(help="Batch size whose p99 the table shows.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a model's variants with measured accuracy, load time, memory and latency per batch size."""
    from infaas_cli.catalog.listings import variants_view

    if name is None and not all_models:
        raise InfaasError("name a model, or pass --all")
    with _home() as home:
        rows = variants_view(home.store, None if all_models else name)
    if as_json:
        _print_json(rows)
        return
    sizes = sorted({int(b) for r in rows for b in r["profiles"]})
    table = Table(title=f"variants — p50 ms per batch size, p99 at batch {batch_size}")
    for col in ("variant", "acc %", "load ms", "mem MiB", *[f"b{b}" for b in sizes], f"p99 b{batch_size}",
                f"qps b{batch_size}"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for r in rows:
        prof = r["profiles"]
        at = prof.get(str(batch_size), {})
        mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / (1 << 20)
        acc = None if r["accuracy"] is None else r["accuracy"] * 100
        table.add_row(r["name"], _fmt(acc, ".2f"), _fmt(r["load_time_ms"], ".1f"), _fmt(mem, ".1f"),
                      *[_fmt(prof.get(str(b), {}).get("p50_ms")) for b in sizes],
                      _fmt(at.get("p99_ms")), _fmt(at.get("throughput_qps"), ".0f"))
    out.print(table)


@command()
def plot(
    name: Annotated[str, typer.Argument(help="A registered, profiled model.")],
    output: Annotated[Path, typer.Option(help="PNG file to write.")],
    batch_size: Annotated[int, typer.Option(help="Batch size whose p50 latency is plotted.")] = 8,
) -> None:
    """Plot latency against accuracy of a model's variants, Pareto front marked."""
    from infaas_cli.catalog.listings import variants_view
    from infaas_cli.toolkit.plot import plot_variants

    with _home() as home:
        rows = variants_view(home.store, name)
    n = plot_variants(rows, batch_size, output, f"{name}: variants at batch {batch_size}")
    err.print(f"wrote {output} ({n} variants)", highlight=False)


@command()
def backends(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Which variant backends this host can run, and why not where it cannot."""
    from infaas_cli.backends import BACKENDS

    rows = []
    for b in BACKENDS:
        a = b.availability()
        rows.append({"backend": b.name, "hardware": b.hardware, "available": a.available, "reason": a.reason})
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        state = "[green]available[/green]" if r["available"] else f"not available on this host: {r['reason']}"
        out.print(f"{r['backend']:<9} {r['hardware']:<11} {state}", highlight=False, soft_wrap=True)


@zoo_app.command("register")
@_guard
def zoo_register(
    manifest: Annotated[Optional[Path], typer.Option(help="Zoo manifest (default configs/zoo.toml).")] = None,
    replace: Annotated[bool, typer.Option(help="Re-register models already present.")] = False,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="Register only.")] = False,
) -> None:
    """Register (and generate variants of) every model in the example zoo."""
    from infaas_cli.toolkit.register import register_model
    from infaas_cli.catalog.records import ModelRecord
    from infaas_cli.toolkit.zoo import load_manifest

    entries = load_manifest(manifest)
    with _home() as home:
        for e in entries:
            if home.store.get(ModelRecord, e.name) is not None and not replace:
                err.print(f"{e.name}: already registered (use --replace)", highlight=False)
                continue
            record = register_model(home, e.file, e.name, e.task, e.dataset, e.validation, None, replace)
            err.print(f"registered [bold]{e.name}[/bold] ({e.task}/{e.dataset}), accuracy "
                      f"{record.accuracy * 100:.2f}%" if record.accuracy is not None else
                      f"registered [bold]{e.name}[/bold]", highlight=False)
            if not no_generate:
                _generate_and_report(home, e.name, False)
        _maybe_push(home)


# -- serving ---------------------------------------------------------------------------------------


@command("master")
def master_cmd(
    data_dir: Annotated[Optional[Path], typer.Option(help="The master's own data directory (default $INFAAS_HOME/master).")] = None,
    client_endpoint: Annotated[str, typer.Option(help="Where clients connect (port 0: pick a free one).")] = "tcp://127.0.0.1:7010",
    worker_endpoint: Annotated[str, typer.Option(help="Where workers connect.")] = "tcp://127.0.0.1:7011",
    endpoints_file: Annotated[Optional[Path], typer.Option(help="Write the bound endpoints here as JSON.")] = None,
    heartbeat_interval_s: Annotated[float, typer.Option(help="Worker heartbeat interval; 3 missed = dead.")] = 1.0,
    policy: Annotated[str, typer.Option(help="infaas (full system), static or replicate (fixed-variant baselines).")] = "infaas",
    autoscale_window_s: Annotated[float, typer.Option(help="Pressure must last this long before scaling up.")] = 5.0,
    autoscale_hold_s: Annotated[float, typer.Option(help="Low load must last this long before scaling down (> window).")] = 15.0,
    autoscale_cooldown_s: Annotated[float, typer.Option(help="Back-off after an action on a variant.")] = 3.0,
    autoscale_idle_unload_s: Annotated[float, typer.Option(help="Unload a variant idle this long.")] = 30.0,
    cluster_scale_out_utilisation: Annotated[float, typer.Option(help="Scale out when every host is above this.")] = 0.8,
    cluster_scale_in_utilisation: Annotated[float, typer.Option(help="Scale in when every host is below this.")] = 0.2,
    cluster_out_window_s: Annotated[float, typer.Option(help="How long all hosts must be busy.")] = 10.0,
    cluster_in_window_s: Annotated[float, typer.Option(help="How long all hosts must be idle (> out window).")] = 30.0,
    cluster_backoff_s: Annotated[float, typer.Option(help="Nothing more for this long after a scaling action.")] = 30.0,
    scale_out_command: Annotated[Optional[str], typer.Option(envvar="INFAAS_SCALE_OUT_COMMAND", help="Run to add a worker host (e.g. ansible-playbook … scale-out.yml).")] = None,
    scale_in_command: Annotated[Optional[str], typer.Option(envvar="INFAAS_SCALE_IN_COMMAND", help="Run to remove the drained host $INFAAS_WORKER_ID.")] = None,
    curve_secret_key: Annotated[Optional[Path], typer.Option(help="The master's .key_secret: turns CurveZMQ on.")] = None,
    authorized_keys: Annotated[Optional[Path], typer.Option(help="Directory of the public .key files allowed in.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Run the master daemon in the foreground (SIGTERM stops it)."""
    from infaas_cli.policy.autoscale import AutoscaleConfig
    from infaas_cli.policy.cluster_autoscale import ClusterAutoscaleConfig
    from infaas_cli.config import infaas_home
    from infaas_daemons.common import setup_logging, stop_on_signals
    from infaas_daemons.master import Master

    setup_logging(log_level)
    autoscale = AutoscaleConfig(window_s=autoscale_window_s, hold_s=autoscale_hold_s, cooldown_s=autoscale_cooldown_s,
                                idle_unload_s=autoscale_idle_unload_s)
    daemon = Master(data_dir or infaas_home(_state["home"]) / "master", client_endpoint, worker_endpoint,
                    heartbeat_interval_s, endpoints_file, policy=policy, autoscale=autoscale,
                    curve_secret_key=curve_secret_key, authorized_keys=authorized_keys,
                    scale_out_command=scale_out_command, scale_in_command=scale_in_command,
                    cluster=ClusterAutoscaleConfig(scale_out_utilisation=cluster_scale_out_utilisation,
                                                   scale_in_utilisation=cluster_scale_in_utilisation,
                                                   out_window_s=cluster_out_window_s, in_window_s=cluster_in_window_s,
                                                   backoff_s=cluster_backoff_s))
    stop_on_signals(daemon.stop_event)
    daemon.run()


@command("worker")
def worker_cmd(
    master: Annotated[str, typer.Option("--master", help="The master's worker endpoint, e.g. tcp://10.0.0.1:7011.")],
    worker_id: Annotated[Optional[str], typer.Option(help="Stable id (default: random).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Artifact cache (default under $INFAAS_HOME).")] = None,
    heartbeat_interval_s: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 1.0,
    curve_secret_key: Annotated[Optional[Path], typer.Option(help="This worker's .key_secret (CurveZMQ).")] = None,
    master_public_key: Annotated[Optional[Path], typer.Option(help="The master's public .key (CurveZMQ).")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Run a worker daemon in the foreground (SIGTERM stops it)."""
    from infaas_cli.config import infaas_home
    from infaas_daemons.common import setup_logging, stop_on_signals
    from infaas_daemons.worker import Worker

    setup_logging(log_level)
    if bool(curve_secret_key) != bool(master_public_key):
        raise InfaasError("CurveZMQ needs both --curve-secret-key and --master-public-key")
    curve = (str(curve_secret_key), str(master_public_key)) if curve_secret_key else None
    daemon = Worker(master, worker_id, cache_dir or infaas_home(_state["home"]) / "worker-cache", heartbeat_interval_s,
                    curve=curve)
    stop_on_signals(daemon.stop_event)
    daemon.run()


@command()
def up(
    workers: Annotated[int, typer.Option(help="Local workers to start.")] = 1,
    heartbeat_interval_s: Annotated[float, typer.Option(help="Worker heartbeat interval.")] = 1.0,
    policy: Annotated[str, typer.Option(help="infaas, static or replicate.")] = "infaas",
) -> None:
    """Start a master and local workers in the background, then replicate the local catalog to it."""
    from infaas_cli.cluster import embedded

    record = embedded.up(workers, _state["home"], heartbeat_interval_s, policy=policy)
    err.print(f"infaas up: master pid {record['master']['pid']} at {record['master']['client_endpoint']}, "
              f"{len(record['workers'])} worker(s); logs in {embedded.run_dir(_state['home'])}", highlight=False)
    with _home() as home:
        if home.store.last_seq():
            _maybe_push(home)


@command()
def down() -> None:
    """Stop the daemons `infaas up` started."""
    from infaas_cli.cluster import embedded

    pids = embedded.down(_state["home"])
    err.print(f"infaas down: stopped {len(pids)} process(es)" if pids else "infaas is not up", highlight=False)


def _client(timeout_s: float = 30.0):
    from infaas_cli.client import Client, resolve_master

    endpoint = resolve_master(_state["master"], _state["home"])
    if endpoint is None:
        raise InfaasError("no master known: start one with `infaas up`, or pass --master / set INFAAS_MASTER")
    return Client(endpoint, timeout_s=timeout_s)


@command()
def push(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Replicate the local catalog (change log and artifacts) to the master; safe to repeat."""
    with _home() as home, _client() as client:
        result = client.push(home.store, home.artifacts)
    if as_json:
        _print_json(result)
    else:
        err.print(f"pushed to {client.endpoint}: {result['applied']} change(s) applied, master at sequence "
                  f"{result['last_seq']}, {result['artifacts_uploaded']} artifact(s) uploaded", highlight=False)


@command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for the master.")] = 5.0,
) -> None:
    """The master's endpoint, workers, loaded variants, queues, QPS, utilisation and decision times."""
    with _client(timeout_s) as client:
        st = client.status()
    if as_json:
        _print_json(st)
        return
    m = st["master"]
    d = m["decision_us"]
    dec = "-" if not d["count"] else f"p50 {d['p50']:.1f} µs, p99 {d['p99']:.1f} µs over {d['count']}"
    out.print(f"master {m['endpoint']} (pid {m['pid']}, up {m['uptime_s']} s): {m['models']} models, "
              f"{m['variants']} variants, {m['pending']} pending, {m['queries_served']} served, "
              f"{m['queries_failed']} failed; decisions {dec}", highlight=False)
    table = Table(title="workers")
    for col in ("worker", "alive", "cores free", "cpu %", "variant", "state", "autoscale", "replicas", "queue",
                "qps", "latency ms"):
        table.add_column(col)
    for w in st["workers"]:
        variants = w["variants"] or {"-": {}}
        for i, (name, v) in enumerate(sorted(variants.items())):
            head = [w["worker_id"], str(w["alive"]), f"{_fmt(w['free_cores'], 'g')}/{w['cores']}",
                    _fmt(w["cpu_percent"], ".0f")] if i == 0 else ["", "", "", ""]
            table.add_row(*head, name, v.get("state", "-"), (w.get("autoscale") or {}).get(name, "-"),
                          str(v.get("replicas", "-")), str(v.get("queue", "-")), _fmt(v.get("qps"), ".1f"),
                          _fmt(v.get("latency_ms"), ".2f"))
    out.print(table)
    actions = m.get("autoscale_actions") or []
    if actions:
        out.print(f"policy {m.get('policy')}; last autoscaling actions:", highlight=False)
        for a in actions[-5:]:
            target = f" -> {a['target']}" if a.get("target") else ""
            out.print(f"  {a['kind']} {a['variant']}{target} on {a['worker']}: {a['reason']}", highlight=False)


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
    objective: Annotated[str, typer.Option(help="cost or latency.")] = "cost",
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="Maximum cost per query (USD).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the outputs here (.npz).")] = None,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for the answer.")] = 30.0,
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
    with _client(timeout_s) as client:
        result = client.query(feeds, variant=variant, model=model, task=task, dataset=dataset, latency_ms=latency_ms,
                              min_accuracy=min_accuracy, objective=objective, max_cost_usd=max_cost)
    names = result.extra.get("output_names") or [f"output_{i}" for i in range(len(result.outputs))]
    outputs = dict(zip(names, result.outputs))
    if output is not None:
        arrays = {k: (v if isinstance(v, np.ndarray) else np.asarray(
            [[row[c] for c in sorted(row)] for row in v])) for k, v in outputs.items()}
        np.savez(output, **arrays)
    if as_json:
        _print_json({"variant": result.variant, "worker": result.worker, "decision_us": result.decision_us,
                     "latency_ms": result.latency_ms, "timing": result.timing, "needs_load": result.needs_load,
                     **({"output": str(output)} if output is not None else
                        {"outputs": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in outputs.items()}})})
        return
    t = result.timing
    out.print(f"variant {result.variant} on {result.worker}: {result.latency_ms:.2f} ms end to end "
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
    with _client(timeout_s) as client, _progress(quiet=as_json) as progress:
        files = [p for p in input_dir.iterdir() if p.suffix in (".npy", ".npz")] if input_dir.is_dir() else []
        task = progress.add_task(f"offline {model}", total=len(files))
        report = run_offline(client, model, input_dir, output_dir, min_accuracy=min_accuracy,
                             max_in_flight=max_in_flight,
                             on_progress=lambda name: progress.update(task, advance=1, description=f"offline {name}"))
    summary = {"files": report.files_total, "done": report.files_done, "skipped_done_earlier": report.files_skipped,
               "failed": [{"file": f, "error": e} for f, e in report.files_failed], "queries": report.queries,
               "variants": report.variants, "throttled": report.throttled, "elapsed_s": round(report.elapsed_s, 3),
               "output_dir": str(output_dir)}
    if as_json:
        _print_json(summary)
    else:
        err.print(f"offline {model}: {report.files_done} file(s) done, {report.files_skipped} done earlier, "
                  f"{len(report.files_failed)} failed, {report.queries} queries in {report.elapsed_s:.1f} s "
                  f"(window shrank {report.throttled}×); outputs in {output_dir}", highlight=False)
        for f, e in report.files_failed:
            err.print(f"  [red]failed[/red] {f}: {e}", highlight=False, soft_wrap=True)
    if report.files_failed:
        raise typer.Exit(1)


keys_app = typer.Typer(help="CurveZMQ key pairs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
@_guard
def keys_generate(
    name: Annotated[str, typer.Option(help="Key pair name, e.g. master, worker-1, client-app.")],
    directory: Annotated[Optional[Path], typer.Option("--dir", help="Where to write (default $INFAAS_HOME/keys).")] = None,
) -> None:
    """Make a CurveZMQ key pair: NAME.key (public, hand it out) and NAME.key_secret (keep it)."""
    from infaas_cli.config import infaas_home
    from infaas_cli.security import generate_keys

    public, secret = generate_keys(directory or infaas_home(_state["home"]) / "keys", name)
    out.print(f"public key: {public}\nsecret key: {secret} (mode 0600)", highlight=False)


cluster_app = typer.Typer(help="The worker hosts and horizontal autoscaling.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("status")
@_guard
def cluster_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for the master.")] = 5.0,
) -> None:
    """Hosts, their hardware and state, and the horizontal autoscaler's last decisions."""
    with _client(timeout_s) as client:
        st = client.status()
    hosts = [{"worker_id": w["worker_id"], "state": w.get("state"), "hardware": w.get("hardware"),
              "cpu_percent": w.get("cpu_percent"), "variants": len(w.get("variants") or {})} for w in st["workers"]]
    decisions = st["master"].get("cluster_decisions", [])
    if as_json:
        _print_json({"master": st["master"]["endpoint"], "hosts": hosts, "decisions": decisions})
        return
    table = Table(title=f"cluster of {st['master']['endpoint']}")
    for col in ("worker", "host", "state", "cores", "memory GiB", "GPUs", "cpu %", "variants"):
        table.add_column(col)
    for h in hosts:
        hw = h["hardware"] or {}
        table.add_row(h["worker_id"], str(hw.get("hostname")), str(h["state"]), str(hw.get("cores")),
                      _fmt((hw.get("memory_bytes") or 0) / (1 << 30), ".1f"), str(len(hw.get("gpus") or [])),
                      _fmt(h["cpu_percent"], ".0f"), str(h["variants"]))
    out.print(table)
    for d in decisions[-5:]:
        out.print(f"  {d['kind']} ({d['hardware']}): {d['reason']}" + (f" — ran {d['command']}" if d["command"] else ""),
                  highlight=False)


@bench_app.command("slo")
@_guard
def bench_slo(
    duration_s: Annotated[float, typer.Option(help="Length of the replayed trace.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Trace seed: the same seed replays the same arrivals.")] = 0,
    workers: Annotated[int, typer.Option(help="Local workers per policy run.")] = 2,
    base_qps: Annotated[float, typer.Option(help="Load at the trough of the diurnal swell.")] = 40.0,
    peak_qps: Annotated[float, typer.Option(help="Load at its crest (bursts go above it).")] = 240.0,
    policies: Annotated[str, typer.Option(help="Comma-separated policies to compare.")] = "infaas,static,replicate",
    output_dir: Annotated[Path, typer.Option(help="Where bench_slo.json and bench_slo.png go.")] = Path("benchmarks/results"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Replay one seeded bursty trace against each policy; print violations, cost and latency side by side."""
    from infaas_cli.experiments.bench_slo import run_bench

    if duration_s <= 0:
        raise InfaasError("--duration-s must be positive, e.g. 60")
    chosen = [p.strip() for p in policies.split(",") if p.strip()]
    report = run_bench(duration_s, seed, workers, base_qps, peak_qps, chosen, output_dir, _state["home"],
                       on_step=lambda s: err.print(s, highlight=False))
    if as_json:
        _print_json(report)
        return
    table = Table(title=f"bench slo: {report['trace']['queries']} queries over {duration_s:g} s, seed {seed}")
    for col in ("policy", "SLO violations", "cost USD", "p50 ms", "p99 ms", "completed", "failed", "goodput q/s"):
        table.add_column(col, justify="right")
    for name, r in report["policies"].items():
        table.add_row(name, f"{r['slo_violation_rate']:.2%}", f"{r['cost_usd']:.6f}", _fmt(r["p50_ms"], ".2f"),
                      _fmt(r["p99_ms"], ".2f"), str(r["completed"]), str(r["failed"]), _fmt(r["goodput_qps"], ".1f"))
    out.print(table)
    err.print(f"wrote {output_dir / 'bench_slo.json'} and {output_dir / 'bench_slo.png'}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
