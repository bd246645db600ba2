"""Reproducible experiments: seeded traces, the open-loop replayer, `infaas bench slo`."""
