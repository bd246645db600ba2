"""Catalog commands: register, generate, profile, the listings, plot, backends and the example zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.markup import escape

from infaas_cli.cli.app import app, command, err, fmt, maybe_push, open_home, out, print_json, progress
from infaas_cli.errors import InfaasError

zoo_app = typer.Typer(help="The bundled example model zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


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
            err.print(f"  skipped {s.backend} {s.recipe}: {escape(s.reason)}", highlight=False, soft_wrap=True)
        for b, r in report.unavailable:
            if b not in _told_unavailable:  # the same for every model: said once per command
                _told_unavailable.add(b)
                err.print(f"  [dim]{b}: not available on this host: {escape(r)}[/dim]", highlight=False,
                          soft_wrap=True)
    return summary


#: Backends whose unavailability this command has already reported.
_told_unavailable: set[str] = set()


@command()
def register(
    path: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    name: Annotated[str, typer.Option(help="Model name, e.g. digits-cnn-l.")],
    task: Annotated[str, typer.Option(help="Task, e.g. digit-classification.")],
    dataset: Annotated[str, typer.Option(help="Dataset, e.g. digits.")],
    validation: Annotated[Optional[Path], typer.Option(help=".npz with one array per input (or x) and optional y labels.")] = None,
    accuracy: Annotated[Optional[float], typer.Option(help="Known accuracy (0-1), only when no validation set exists.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace a model of the same name and its variants.")] = False,
    cache_mib: Annotated[Optional[int], typer.Option(
        "--cache-mib",
        help="Cache this model's results on the master in up to this many MiB (least recently used out first): "
             "a repeated identical input is answered without a worker. 0: never cache it. Left out: the "
             "master's master.prediction_cache_mib (default 0: off), so caching is opt-in per model.")] = None,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="Register only; run `infaas generate` later.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Register an ONNX model: validate it, measure its accuracy, store it, generate its variants."""
    from infaas_cli.catalog.listings import model_view
    from infaas_cli.toolkit.register import register_model

    with open_home() as home:
        record = register_model(home, path, name, task, dataset, validation, accuracy, replace, cache_mib)
        result: dict[str, Any] = {"model": model_view(record, 0)}
        if not as_json:
            acc = "unknown" if record.accuracy is None else f"{record.accuracy:.4f} ({record.accuracy_metric})"
            cache = "" if record.cache_mib is None else f", prediction cache {record.cache_mib} MiB"
            err.print(f"registered [bold]{name}[/bold]: {len(record.inputs)} input(s), batch "
                      f"{record.batch_dim} (max {record.max_batch}), accuracy {acc}{cache}", highlight=False)
            if record.accuracy is None:
                err.print("[yellow]warning:[/yellow] no validation set and no --accuracy: queries with a "
                          "minimum accuracy will never pick this model", highlight=False)
        if not no_generate:
            result["generate"] = _generate_and_report(home, name, as_json)
        maybe_push(home, quiet=as_json)
    if as_json:
        print_json(result)


@command()
def generate(
    name: Annotated[str, typer.Argument(help="A registered model.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the variants of a model with every backend available on this host."""
    with open_home() as home:
        summary = _generate_and_report(home, name, as_json)
        maybe_push(home, quiet=as_json)
    if as_json:
        print_json(summary)


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
    with open_home() as home:
        targets = [m.name for m in home.store.models()] if all_models else list(names or [])
        if not targets:
            raise InfaasError("name a model to profile, or pass --all")
        with progress(quiet=as_json) as bar:
            task = bar.add_task("profiling", total=None)
            report = profile_models(
                home, targets, sizes, force, MeasureSettings(budget_ms=budget_ms),
                on_plan=lambda total: bar.update(task, total=total),
                on_progress=lambda what: bar.update(task, advance=1, description=f"profiling {what}"))
            bar.update(task, description="profiled")
        maybe_push(home, quiet=as_json)
    summary = {"profiled_variants": len(report.profiled), "already_stored": report.skipped_stored,
               "measurements": report.measurements,
               "not_runnable": [{"variant": v, "reason": r} for v, r in report.not_runnable],
               "failed": [{"configuration": c, "error": e} for c, e in report.failed]}
    if as_json:
        print_json(summary)
    else:
        err.print(f"profiled {len(report.profiled)} variants ({report.measurements} measurements); "
                  f"{report.skipped_stored} already stored (use --force to redo)", highlight=False)
        for c, e in report.failed:
            err.print(f"[red]failed[/red] {c}: {e}", highlight=False, soft_wrap=True)
        if report.not_runnable:
            err.print(f"{len(report.not_runnable)} variants cannot run here, e.g. {report.not_runnable[0][1]}",
                      highlight=False)


# -- listings ----------------------------------------------------------------------------------


@command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List registered models."""
    from infaas_cli.catalog.listings import models_view

    with open_home() as home:
        rows = models_view(home.store)
    if as_json:
        print_json(rows)
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
    with open_home() as home:
        rows = variants_view(home.store, None if all_models else name)
    if as_json:
        print_json(rows)
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
        table.add_row(r["name"], fmt(acc, ".2f"), fmt(r["load_time_ms"], ".1f"), fmt(mem, ".1f"),
                      *[fmt(prof.get(str(b), {}).get("p50_ms")) for b in sizes],
                      fmt(at.get("p99_ms")), fmt(at.get("throughput_qps"), ".0f"))
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

    with open_home() as home:
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
        print_json(rows)
        return
    for r in rows:
        state = "[green]available[/green]" if r["available"] else f"not available on this host: {escape(r['reason'])}"
        out.print(f"{r['backend']:<9} {r['hardware']:<11} {state}", highlight=False, soft_wrap=True)


@command(zoo_app, "register")
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
    with open_home() as home:
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
        maybe_push(home)
