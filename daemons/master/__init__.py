"""The master daemon: catalog owner, router, autoscaler (loop.py: doors and timers; state.py: what it knows;
handlers.py: one function per message; apply.py: autoscaling actions)."""

from infaas_daemons.master.loop import Master

__all__ = ["Master"]
