"""Triton's published gRPC protocol (``inference.GRPCInferenceService``), compiled for the gateway.

The generated modules register their descriptors in :data:`POOL`, a private descriptor pool, not
protobuf's default one: ``tritonclient.grpc`` registers the same ``inference.*`` names (often from
an older copy of the proto) in the default pool, and both must be importable in one process.
Regenerate with ``python -m infaas_daemons.gateway.proto.build`` (see that module).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
