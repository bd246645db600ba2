"""Variant backends, listed explicitly: each says whether this host can run it, and why not.

The runtimes are imported on first use of `BACKENDS` or `backend()`, not with the package: the master
and the policies need the placement keys (`keys.py`) and must not pay for, or depend on, a runtime.
"""

from __future__ import annotations

import functools

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Runner, Skipped
from infaas_cli.backends.keys import provided_keys
from infaas_cli.errors import NotFoundError


@functools.cache
def all_backends() -> tuple[Backend, ...]:
    """Every backend, in the order generate tries them (imports the runtimes' modules, once)."""
    from infaas_cli.backends.neuron import NeuronBackend
    from infaas_cli.backends.ort_cpu import OrtCpuBackend
    from infaas_cli.backends.ort_gpu import OrtCudaBackend, OrtTensorrtBackend
    from infaas_cli.backends.ov_cpu import OvCpuBackend
    from infaas_cli.backends.tensorrt import TensorrtBackend

    return (OrtCpuBackend(), OvCpuBackend(), OrtCudaBackend(), OrtTensorrtBackend(), TensorrtBackend(),
            NeuronBackend())


def __getattr__(name: str):
    if name == "BACKENDS":  # `from infaas_cli.backends import BACKENDS` imports the runtimes here, not before
        return all_backends()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backend(name: str) -> Backend:
    for b in all_backends():
        if b.name == name:
            return b
    raise NotFoundError(f"unknown backend '{name}' (known: {', '.join(b.name for b in all_backends())})")


def pads_to_max_batch(backend_name: str, batch_dim: str) -> bool:
    """Whether a variant runs every batch padded to its max batch: a fixed-batch model's always, a dynamic one's on
    a fixed-shape backend (`Backend.fixed_shape`)."""
    return batch_dim == "fixed" or (batch_dim == "dynamic" and backend(backend_name).fixed_shape)


def advertised_keys() -> list[str]:
    """The placement keys this host provides: each available backend, and its capability keys (what a worker
    advertises to the master)."""
    return [key for b in all_backends() for key in provided_by(b) or ()]


def provided_by(b: Backend, available: bool | None = None) -> list[str] | None:
    """The placement keys backend `b` provides on this host; None when it is not available here (`available`: its
    availability when the caller has asked already)."""
    if available is None:
        available = b.availability().available
    return provided_keys(b.name, b.capabilities()) if available else None


__all__ = ["BACKENDS", "Availability", "Backend", "BuildInput", "Recipe", "Runner", "Skipped", "advertised_keys",
           "all_backends", "backend", "pads_to_max_batch", "provided_by"]
