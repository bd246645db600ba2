"""The Python client of infaas: queries, status and catalog replication over the master's ZeroMQ front."""

from infaas_cli.client.client import (Client, MasterUnreachableError, QueryFailed, QueryResult, endpoints_file,
                                      load_input_file, query_message, resolve_master)

__all__ = ["Client", "MasterUnreachableError", "QueryFailed", "QueryResult", "endpoints_file", "load_input_file",
           "query_message", "resolve_master"]
