"""Catalog commands: register, generate, profile, the listings, plot, backends and the example zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.markup import escape

from infaas_cli.cli.app import InfaasGroup, app, command, err, fmt, maybe_push, open_home, out, print_json, progress
from infaas_cli.errors import AlreadyExistsError, InfaasError

zoo_app = typer.Typer(cls=InfaasGroup, help="The bundled example model zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


# -- register / generate -----------------------------------------------------------------------


def _generate_and_report(home, name: str, as_json: bool, told_unavailable: set[str]) -> dict[str, Any]:
    """Generate a model's variants and report them. `told_unavailable`: the backends whose unavailability this
    command has reported already (the same for every model, so said once; each command brings its own set)."""
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
        # One line per backend and reason: a graph OpenVINO cannot read skips all its recipes for one reason.
        recipes_by_reason: dict[tuple[str, str], list[str]] = {}
        for s in report.skipped:
            recipes_by_reason.setdefault((s.backend, s.reason), []).append(s.recipe)
        for (backend, reason), recipes in recipes_by_reason.items():
            err.print(f"  skipped {backend} {', '.join(recipes)}: {escape(reason)}", highlight=False, soft_wrap=True)
        for b, r in report.unavailable:
            if b not in told_unavailable:
                told_unavailable.add(b)
                err.print(f"  [dim]{b}: not available on this host: {escape(r)}[/dim]", highlight=False,
                          soft_wrap=True)
    return summary



@command()
def register(
    path: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    name: Annotated[str, typer.Option(help="Model name, e.g. digits-cnn-l.")],
    task: Annotated[Optional[str], typer.Option(help="Task, e.g. digit-classification (a new version: the model's).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset, e.g. digits (a new version: the model's).")] = None,
    version: Annotated[Optional[int], typer.Option(
        min=1, help="Register this version of the model (default: 1 for a new model, the next for an existing "
                    "one). It takes traffic once profiled, as its version policy says (`infaas versions`).")] = None,
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
    """Register an ONNX model, or a new version of one: validate it, measure its accuracy, store it, generate its
    variants.

    A different file under a registered name is the model's next version (`--version` to choose it); registering the
    same file under the same name again finishes a registration that was interrupted before its variants were
    generated.
    """
    from infaas_cli.catalog.listings import model_view
    from infaas_cli.policy.versions import version_id
    from infaas_cli.toolkit.generate import finish_hint, unfinished_registration
    from infaas_cli.catalog.listings import model_versions
    from infaas_cli.toolkit.register import register_model

    with open_home() as home:
        known = model_versions(home.store, name)
        target = version_id(name, version if version is not None else max(known, default=1))
        previous = known.get(version if version is not None else max(known, default=1))
        resumed = None if replace else unfinished_registration(
            home, path, target, task or (previous.task if previous else None),
            dataset or (previous.dataset if previous else None), validation)
        if resumed is not None:
            record = resumed
            if not as_json:
                err.print(f"{name}: registered from this file already, its variants not generated yet: "
                          f"{f'run `infaas generate {name}`' if no_generate else 'generating them'}",
                          highlight=False)
        else:
            try:
                record = register_model(home, path, name, task, dataset, validation, accuracy, replace, cache_mib,
                                        version)
            except AlreadyExistsError as exc:
                if home.store.variants(target):
                    raise
                raise AlreadyExistsError(f"{exc}; {finish_hint(target)}") from None
        result: dict[str, Any] = {"model": model_view(record, 0), "resumed": resumed is not None}
        if resumed is None and not as_json:
            acc = "unknown" if record.accuracy is None else f"{record.accuracy:.4f} ({record.accuracy_metric})"
            cache = "" if record.cache_mib is None else f", prediction cache {record.cache_mib} MiB"
            shown = name if record.name == name else f"{name} version {model_view(record, 0)['version']} " \
                f"({record.name})"
            err.print(f"registered [bold]{shown}[/bold]: {len(record.inputs)} input(s), batch "
                      f"{record.batch_dim} (max {record.max_batch}), accuracy {acc}{cache}", highlight=False)
            if record.accuracy is None:
                err.print("[yellow]warning:[/yellow] no validation set and no --accuracy: queries with a "
                          "minimum accuracy will never pick this model", highlight=False)
        if not no_generate:
            result["generate"] = _generate_and_report(home, record.name, as_json, set())
            if record.name != name and not as_json:
                err.print(f"profile it with `infaas profile {record.name}`: it takes traffic once profiled, as "
                          f"the version policy of {name} says (`infaas versions {name}`)", highlight=False)
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
        summary = _generate_and_report(home, name, as_json, set())
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


def _every_version(store, names: list[str]) -> list[str]:
    """The record names to profile: `M@vV` is that version; a model's plain name is every version of it (stored
    profiles are kept, so the versions already profiled cost nothing), as a user who registered v2 expects."""
    from infaas_cli.catalog.listings import model_versions
    from infaas_cli.policy.versions import canonical_id, is_version_name

    targets: list[str] = []
    for name in names:
        if is_version_name(name):
            targets.append(canonical_id(name))
        else:  # the plain name first, so that an unknown model is reported as the user spelled it
            targets += [name, *(r.name for v, r in model_versions(store, name).items() if v > 1)]
    return list(dict.fromkeys(targets))


@command()
def profile(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="Models to profile: a model's name covers every version of it, M@vV one version.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Profile every registered model.")] = False,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8,16,32",
    force: Annotated[bool, typer.Option(help="Measure again even where a profile is stored.")] = False,
    budget_ms: Annotated[float, typer.Option(help="Measuring time per variant and batch size (ms).")] = 150.0,
    search: Annotated[bool, typer.Option(
        "--search", help="Measure a tenth of the configurations (at least the anchors), predict the rest.")] = False,
    exhaustive: Annotated[bool, typer.Option(
        "--exhaustive", help="Measure every configuration at every batch size.")] = False,
    search_threshold: Annotated[int, typer.Option(
        metavar="CELLS", help="Without --search/--exhaustive: search models with more (configuration, batch size) "
        "cells than this.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print a summary as JSON.")] = False,
) -> None:
    """Measure latency per batch size, load time and memory of every variant this host can run.

    A model with more than --search-threshold (configuration, batch size) cells is searched rather than measured
    cell by cell: the cells that could win a selection are measured, the others predicted from them and from the
    models already profiled on this hardware, each with its stated error (`variants` marks them '~').
    """
    from infaas_cli.toolkit.profiler import MeasureSettings, profile_models

    sizes = _parse_batch_sizes(batch_sizes)
    if budget_ms <= 0:
        raise InfaasError("--budget-ms must be positive, e.g. 150")
    if search and exhaustive:
        raise InfaasError("--search and --exhaustive exclude each other; pass one (neither: search models with "
                          "more than --search-threshold cells)")
    if search_threshold < 0:
        raise InfaasError("--search-threshold must be >= 0 cells, e.g. 100")
    mode = "search" if search else "exhaustive" if exhaustive else "auto"
    with open_home() as home:
        targets = [m.name for m in home.store.models()] if all_models else _every_version(home.store, names or [])
        if not targets:
            raise InfaasError("name a model to profile, or pass --all")
        with progress(quiet=as_json) as bar:
            task = bar.add_task("profiling", total=None)
            report = profile_models(
                home, targets, sizes, force, MeasureSettings(budget_ms=budget_ms),
                on_plan=lambda total: bar.update(task, total=total),
                on_progress=lambda what: bar.update(task, advance=1, description=f"profiling {what}"),
                mode=mode, threshold=search_threshold)
            bar.update(task, description="profiled")
        maybe_push(home, quiet=as_json)
    summary = {"profiled_variants": len(report.profiled), "already_stored": report.skipped_stored,
               "measurements": report.measurements, "searched_models": report.searched,
               "predicted": report.predicted,
               "not_runnable": [{"variant": v, "reason": r} for v, r in report.not_runnable],
               "failed": [{"configuration": c, "error": e} for c, e in report.failed]}
    if as_json:
        print_json(summary)
    else:
        err.print(f"profiled {len(report.profiled)} variants ({report.measurements} measurements); "
                  f"{report.skipped_stored} already stored (use --force to redo)", highlight=False)
        if report.searched:
            err.print(f"searched {', '.join(report.searched)}: {report.predicted} (configuration, batch size) "
                      "figures predicted, not measured (marked '~' in `infaas variants`)", highlight=False)
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
    for row in rows:  # a model without variants cannot serve: its registration stopped before generating them
        row["complete"] = row["variants"] > 0
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
                      str(m["variants"]) if m["complete"] else f"0 [yellow](incomplete: infaas generate {m['name']})"
                                                               "[/yellow]")
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
    from infaas_cli.catalog.records import is_predicted

    if name is None and not all_models:
        raise InfaasError("name a model, or pass --all")
    with open_home() as home:
        rows = variants_view(home.store, None if all_models else name)
    if as_json:
        print_json(rows)
        return
    sizes = sorted({int(b) for r in rows for b in r["profiles"]})

    def cell(stats: dict[str, Any], key: str, spec: str = ".3g") -> str:
        """A figure, marked '~' where it was predicted (`profile --search`) rather than measured."""
        text = fmt(stats.get(key), spec)
        return f"~{text}" if stats and is_predicted(stats) else text

    predicted = any(is_predicted(s) for r in rows for s in r["profiles"].values())
    table = Table(title=f"variants — p50 ms per batch size, p99 at batch {batch_size}",
                  caption="~ predicted (profile --search), not measured" if predicted else None)
    for col in ("variant", "acc %", "load ms", "mem MiB", *[f"b{b}" for b in sizes], f"p99 b{batch_size}",
                f"qps b{batch_size}"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for r in rows:
        prof = r["profiles"]
        at = prof.get(str(batch_size), {})
        mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / (1 << 20)
        acc = None if r["accuracy"] is None else r["accuracy"] * 100
        table.add_row(r["name"], fmt(acc, ".2f"), fmt(r["load_time_ms"], ".1f"), fmt(mem, ".1f"),
                      *[cell(prof.get(str(b), {}), "p50_ms") for b in sizes],
                      cell(at, "p99_ms"), cell(at, "throughput_qps", ".0f"))
    out.print(table)


@command()
def plot(
    output: Annotated[Path, typer.Option(help="PNG file to write.")],
    name: Annotated[Optional[str], typer.Argument(
        help="A registered, profiled model, or TASK@DATASET for all models of a task (as model-less queries name "
             "it at the gateway).")] = None,
    task: Annotated[Optional[str], typer.Option(
        help="All models of this task (with --dataset), as `infaas query` names it.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="…and dataset.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size whose p50 latency is plotted.")] = 8,
) -> None:
    """Plot latency against accuracy of a model's variants, or of every model of a task; Pareto front drawn.

    Colour is the backend, marker the precision; variants that differ only in max batch share one measurement
    and are drawn once.
    """
    from infaas_cli.catalog.listings import variants_view
    from infaas_cli.toolkit.plot import plot_variants

    if name is not None and "@" in name:
        task, _, dataset = name.partition("@")
        name = None
    if (name is None) == (task is None and dataset is None) or (task is None) != (dataset is None):
        raise InfaasError("name a model, or a task: TASK@DATASET or --task T --dataset D")
    with open_home() as home:
        if name is not None:
            rows = variants_view(home.store, name)
            title = f"{name}: variants at batch {batch_size}"
        else:
            models = [m.name for m in home.store.models() if (m.task, m.dataset) == (task, dataset)]
            if not models:
                pairs = sorted({f"{m.task}@{m.dataset}" for m in home.store.models() if m.task and m.dataset})
                raise InfaasError(f"no model is registered for task {task}@{dataset}; known: "
                                  f"{', '.join(pairs) or 'none'}", code="unknown_model")
            rows = [r for model in models for r in variants_view(home.store, model)]
            title = f"{task}@{dataset}: {len(models)} models' variants at batch {batch_size}"
    n = plot_variants(rows, batch_size, output, title, by_model=name is None)
    err.print(f"wrote {output} ({n} variants)", highlight=False)


@command()
def backends(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for the master's view of its workers.")] = 2.0,
) -> None:
    """What each host can run and why not: this host's backends, then each live worker's (when a master answers).

    A recipe that needs more than its backend (ov-cpu bf16: a CPU with BF16) runs only on hosts that have it;
    the master places its variants on those workers only.
    """
    from infaas_cli.backends.report import host_backends, worker_backends
    from infaas_cli.cli.app import client

    host = host_backends()
    try:
        with client(timeout_s) as master:
            st = master.status(workers_limit=10_000)
        view: dict[str, Any] = {"reachable": True, "endpoint": st["master"].get("endpoint"),
                                "workers": [worker_backends(w) for w in st["workers"]]}
    except InfaasError as exc:  # no master known, or none answering within the timeout: said, not fatal
        view = {"reachable": False, "reason": str(exc)}
    if as_json:
        print_json({"host": host, "master": view})
        return

    def verdict(row: dict[str, Any], subject: str) -> str:
        has = {True: f"{subject} has it", False: f"{subject} lacks it", None: ""}[row["met"]]
        return f"{row['recipe']} recipe {row['why']}" + (f" — {has}" if has else "")

    out.print(f"this host ({escape(host['hostname'])}, {escape(host['cpu_model'])}):", highlight=False)
    for r in host["backends"]:
        state = "[green]available[/green]" if r["available"] else f"not available on this host: {escape(r['reason'])}"
        out.print(f"  {r['backend']:<9} {r['hardware']:<11} {state}", highlight=False, soft_wrap=True)
        for recipe in r["recipes"]:
            out.print(f"  {'':<9} {'':<11} {escape(verdict(recipe, 'this CPU'))}", highlight=False, soft_wrap=True)
    if not view["reachable"]:
        out.print(f"workers: no master reachable ({escape(view['reason'])})", highlight=False, soft_wrap=True)
        return
    out.print(f"workers of the master at {view['endpoint']}: {len(view['workers'])}", highlight=False)
    for w in view["workers"]:
        where = ", ".join(escape(x) for x in (w["hostname"], w["cpu_model"]) if x)
        out.print(f"  {w['worker_id']} ({w['state']}{', ' + where if where else ''}): "
                  f"{', '.join(w['backends']) or 'no backend'}", highlight=False, soft_wrap=True)
        for name, recipes in w["recipes"].items():
            for recipe in recipes:
                out.print(f"    {name} {escape(verdict(recipe, 'its CPU'))}", highlight=False, soft_wrap=True)


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
    told_unavailable: set[str] = set()
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
                _generate_and_report(home, e.name, False, told_unavailable)
        maybe_push(home)
