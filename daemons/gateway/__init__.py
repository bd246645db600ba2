"""The gateway: Open Inference Protocol fronts (REST, gRPC) over the master's native protocol."""
