"""Lets `python -m infaas_cli` run the CLI."""

from infaas_cli.cli import main

main()
