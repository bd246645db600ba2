"""The typer app: global options, the error guard and the output helpers every command group shares."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infaas_cli import __version__
from infaas_cli.errors import InfaasError, exit_code

app = typer.Typer(help="infaas: model-less inference serving.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

# Data on stdout; piped output gets a wide table rather than rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
err = Console(stderr=True)  # diagnostics, progress
_state: dict[str, Any] = {"debug": False, "home": None, "master": None, "config": None, "set": {}}


def guard(fn):
    """Errors become one red line on stderr and the exit status of infaas_cli.errors.exit_code; tracebacks
    only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as exc:
            err.print("[red]interrupted[/red]")
            raise typer.Exit(exit_code(exc)) from None
        except InfaasError as exc:
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code(exc)) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:400]} "
                      "(rerun with --debug for the traceback, and report it)", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code(exc)) from None

    return wrapper


def command(target: typer.Typer = app, *args, **kwargs):
    """`@command()` registers a guarded command on the app, `@command(group, "name")` on a group."""
    def deco(fn):
        return target.command(*args, **kwargs)(guard(fn))
    return deco


def home_dir() -> Path:
    from infaas_cli.config import infaas_home

    return infaas_home(_state["home"])


def open_home():
    from infaas_cli.catalog.home import InfaasHome

    return InfaasHome(_state["home"])


def settings(overrides: Mapping[str, Any] | None = None):
    """The effective settings: defaults < config files < --config < env < `--set` < this command's options."""
    from infaas_cli.settings import load_settings

    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    return load_settings(_state["config"], os.environ, {**_state["set"], **given}, home=home_dir())


def progress(quiet: bool) -> Progress:
    """The progress bar on stderr; none with --json."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=quiet, disable=quiet)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def client(timeout_s: float | None = None):
    """A client of the master named by --master, the settings (client.master) or `infaas up`."""
    from infaas_cli.client import Client, resolve_master

    current, _ = settings()
    endpoint = resolve_master(_state["master"], home_dir(), settings=current)
    if endpoint is None:
        raise InfaasError("no master known: start one with `infaas up`, or pass --master / set INFAAS_MASTER "
                          "(or client.master in the config file)")
    return Client(endpoint, timeout_s=current.client.timeout_s if timeout_s is None else timeout_s,
                  curve_secret_key=current.security.curve_secret_key,
                  master_public_key=current.security.master_public_key)


def maybe_push(home, quiet: bool = False) -> None:
    """Replicate the local catalog to the master when one is known; unreachable is a warning, not an error."""
    from infaas_cli.client import resolve_master

    if resolve_master(_state["master"], home_dir(), settings=settings()[0]) is None:
        return
    try:
        with client(timeout_s=10.0) as c:
            result = c.push(home.store, home.artifacts)
    except InfaasError as exc:
        err.print(f"[yellow]warning:[/yellow] catalog kept locally, not replicated: {exc}; run `infaas push` later",
                  highlight=False, soft_wrap=True)
        return
    if not quiet:
        err.print(f"replicated to {c.endpoint}: {result['applied']} change(s), {result['artifacts_uploaded']} "
                  "artifact(s)", highlight=False)


def _version(value: bool) -> None:
    if value:
        out.print(f"infaas {__version__}")
        raise typer.Exit()


def _parse_sets(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"'{item}' is not KEY=VALUE, e.g. --set autoscale.window_s=2", param_hint="--set")
        pairs[key.strip()] = value
    return pairs


@app.callback()
def _main(
    home: Annotated[Optional[Path], typer.Option("--home", help="Data directory (default $INFAAS_HOME or ~/.infaas).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="A config file (TOML) over /etc/infaas/infaas.toml and $INFAAS_HOME/config.toml; see configs/infaas.toml.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Set any config key, e.g. --set autoscale.overload_slack_fraction=0.4 (repeatable).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    master: Annotated[Optional[str], typer.Option("--master", help="Master client endpoint (default client.master: $INFAAS_MASTER, the config file, or the one `infaas up` started).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    _state.update(home=home, debug=debug, master=master, config=config, set=_parse_sets(set_ or []))


def main() -> None:
    app()
