"""The worker daemon: loads variants, batches and runs queries, reports metrics."""

from infaas_daemons.worker.daemon import Worker

__all__ = ["Worker"]
