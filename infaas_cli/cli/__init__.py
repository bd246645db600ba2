"""The `infaas` command line: a thin shell over the library, one module per command group."""

from infaas_cli.cli.app import app, main

__all__ = ["app", "main"]
