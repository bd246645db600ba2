"""Variant backends, listed explicitly: each says whether this host can run it, and why not."""

from __future__ import annotations

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Runner, Skipped
from infaas_cli.backends.neuron import NeuronBackend
from infaas_cli.backends.ort_cpu import OrtCpuBackend
from infaas_cli.backends.ort_gpu import OrtCudaBackend, OrtTensorrtBackend
from infaas_cli.backends.ov_cpu import OvCpuBackend
from infaas_cli.backends.tensorrt import TensorrtBackend
from infaas_cli.errors import NotFoundError

BACKENDS: tuple[Backend, ...] = (
    OrtCpuBackend(),
    OvCpuBackend(),
    OrtCudaBackend(),
    OrtTensorrtBackend(),
    TensorrtBackend(),
    NeuronBackend(),
)


def backend(name: str) -> Backend:
    for b in BACKENDS:
        if b.name == name:
            return b
    raise NotFoundError(f"unknown backend '{name}' (known: {', '.join(b.name for b in BACKENDS)})")


__all__ = ["BACKENDS", "Availability", "Backend", "BuildInput", "Recipe", "Runner", "Skipped", "backend"]
