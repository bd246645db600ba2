"""The master daemon: catalog owner, router, autoscaler."""

from infaas_daemons.master.daemon import Master

__all__ = ["Master"]
