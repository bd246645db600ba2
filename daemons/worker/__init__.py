"""The worker daemon: loads variants, batches and runs queries, reports metrics (loop.py: the door and
handlers; loading.py: eviction, fetch and load; executor.py: a loaded variant, its queue and batching)."""

from infaas_daemons.worker.loop import Worker

__all__ = ["Worker"]
