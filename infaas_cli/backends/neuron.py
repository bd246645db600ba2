"""AWS Inferentia through the Neuron SDK (torch-neuronx): detection, and why an ONNX model cannot use it yet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Skipped
from infaas_cli.errors import BackendUnavailableError
from infaas_cli.toolkit.hardware import neuron_devices


class NeuronBackend(Backend):
    name = "neuron"
    hardware = "inferentia"

    def availability(self) -> Availability:
        problems = []
        if importlib.util.find_spec("torch_neuronx") is None:
            problems.append("torch-neuronx is not installed (install the 'neuron' extra on an Inferentia host)")
        if not neuron_devices():
            problems.append("no Inferentia device (/dev/neuron*) found")
        return Availability(not problems, "; ".join(problems))

    def recipes(self, build: BuildInput) -> tuple[list[Recipe], list[Skipped]]:
        # torch_neuronx.trace compiles PyTorch modules; the Neuron SDK has no ONNX importer.
        return [], [Skipped(self.name, "neuron", "the Neuron compiler takes PyTorch modules "
                            "(torch_neuronx.trace), and this model was registered as ONNX")]

    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        raise BackendUnavailableError("Neuron variants need a PyTorch source model; none is registered")

    def load(self, artifact: Path, recipe: str, threads: int):
        import torch
        import torch_neuronx  # noqa: F401  registers the Neuron ops with torch.jit

        module = torch.jit.load(str(artifact))

        class _Runner:
            def run(self, feeds):
                with torch.no_grad():
                    out = module(*[torch.from_numpy(v) for v in feeds.values()])
                outs = out if isinstance(out, (tuple, list)) else [out]
                return [o.numpy() for o in outs]

            def close(self):
                pass

        return _Runner()
