"""infaas daemons (master and worker); importable as `infaas_daemons`."""
