"""infaas: model-less inference serving — toolkit, CLI and client library."""

__version__ = "0.1.0.dev0"
