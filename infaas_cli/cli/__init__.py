"""The `infaas` command line: a thin shell over the library, one module per command group."""

from infaas_cli.cli.app import app, main
from infaas_cli.cli import catalog, serving, cluster, hosts, bench, config, lifecycle  # noqa: E402,F401  (they register their commands)

__all__ = ["app", "main"]
