"""Pure decisions: selection, placement, eviction, batching, autoscaling, baselines. No sockets, no store."""
