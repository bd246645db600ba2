"""The typer app: global options, the error guard and the output helpers every command group shares."""

from __future__ import annotations

import enum
import functools
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infaas_cli import __version__
from infaas_cli.errors import InfaasError, exit_code


# -- how options look in --help: conventional metavars ------------------------------------------------------

#: String options whose value is a name in the catalog or the cluster.
_NAME_OPTIONS = frozenset({"name", "model", "variant", "task", "dataset", "worker_id", "worker"})


def _metavar(param: Any) -> str | None:
    """The metavar click's convention gives an option (nothing for a flag, [a|b] for choices, NAME, PATH,
    ENDPOINT, INTEGER …) where this typer would print its own <bool>/<str>; None where typer prints one already."""
    desc = getattr(param, "type_descriptor", None)  # typer >= 0.29; older ones print click's metavars themselves
    if desc is None or param.metavar is not None:
        return None
    if getattr(param, "is_flag", False):
        return ""
    if desc.is_choice and desc.choices:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    name = param.name or ""
    if desc.is_path:
        return "DIR" if name.endswith("dir") else "PATH"
    annotation = desc.annotation
    element = typer.core.get_args(annotation)[0] if typer.core.get_origin(annotation) is list else annotation
    if element is int:
        return "INTEGER"
    if element is float:
        return "FLOAT"
    if name in _NAME_OPTIONS or name.endswith("name"):
        return "NAME"
    if name == "master" or "endpoint" in name:
        return "ENDPOINT"
    return "COMMAND" if name.endswith("command") else "TEXT"


class _Argument(typer.core.TyperArgument):
    """An argument as click shows one: its metavar (PATH, NAME) in the usage line and the help, no <type>."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def _conventional(params: list) -> None:
    for param in params:
        if isinstance(param, typer.core.TyperArgument) and hasattr(param, "type_descriptor"):
            param.metavar = param.metavar or (param.name or "").upper()
            param.__class__ = _Argument  # only the display differs
        elif isinstance(param, typer.core.TyperOption):
            metavar = _metavar(param)
            if metavar is not None:
                param.metavar = metavar


class _ConventionalParams:
    """Mixed into a click command or group (before it in the bases): its parameters, --help included (click adds
    it in get_params), shown with conventional metavars."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        _conventional(params)
        return params


class InfaasCommand(_ConventionalParams, typer.core.TyperCommand):
    """A command whose --help uses conventional metavars (--help itself included)."""


class InfaasGroup(_ConventionalParams, typer.core.TyperGroup):
    """The app's group: its global options (--install-completion …) with conventional metavars too."""


# -- enumerations: choices that --help lists, shell completion offers and a wrong value is a usage error -------

def choices(name: str, values: list[str]) -> type[enum.Enum]:
    """A str enumeration of `values`: typer makes a choice option of it."""
    return enum.Enum(name, [(v, v) for v in values], type=str)


# Spelled out rather than imported, so that a command (and each shell completion, which runs the CLI) does not
# import the policies first; tests/unit/test_cli_choices.py checks them against infaas_cli.policy.baselines
# and infaas_cli.settings.
Policy = choices("Policy", ["infaas", "fixed-peak", "fixed-autoscale", "static", "replicate"])
LogLevel = choices("LogLevel", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
Objective = choices("Objective", ["cost", "latency"])
SloMode = choices("SloMode", ["best_effort", "strict"])


def choice(value: enum.Enum | None) -> str | None:
    """The string an enumeration option stands for (None: not given)."""
    return None if value is None else str(value.value)


app = typer.Typer(help="infaas: model-less inference serving.", no_args_is_help=True, cls=InfaasGroup,
                  pretty_exceptions_enable=False, add_completion=True)

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
        return target.command(*args, cls=InfaasCommand, **kwargs)(guard(fn))
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
