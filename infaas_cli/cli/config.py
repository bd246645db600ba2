"""`infaas config`: the effective configuration and where each value came from."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from infaas_cli.cli.app import InfaasGroup, app, command, out, print_json, settings

config_app = typer.Typer(cls=InfaasGroup, help="The configuration: defaults < config files < environment < options.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")


@command(config_app, "show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print every setting's effective value and its source (default, a file, an environment variable, cli)."""
    from infaas_cli.settings import config_files

    current, sources = settings()
    values = current.to_dict()
    if as_json:
        print_json({section: {key: {"value": value, "source": sources[f"{section}.{key}"]}
                              for key, value in keys.items()} for section, keys in values.items()})
        return
    from infaas_cli.cli.app import _state, home_dir

    files = config_files(_state["config"], home_dir())
    table = Table(title=f"infaas configuration (files: {', '.join(map(str, files)) or 'none'})")
    for col in ("key", "value", "source"):
        table.add_column(col, no_wrap=col == "key")
    for section, keys in values.items():
        for key, value in keys.items():
            source = sources[f"{section}.{key}"]
            table.add_row(f"{section}.{key}", "-" if value is None else str(value),
                          source if source != "default" else "[dim]default[/dim]")
    out.print(table)
