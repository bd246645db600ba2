"""What every variant backend declares: availability, recipes, how to build and how to load a variant."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from infaas_cli.catalog.records import ModelRecord


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # why not, when not available

    def describe(self, backend: str) -> str:
        return f"{backend}: available" if self.available else f"{backend}: not available on this host: {self.reason}"


@dataclass(frozen=True)
class Recipe:
    """One way a backend turns a model into a variant artifact (precision, optimisation)."""

    name: str  # token in variant names, e.g. "int8s"
    precision: str  # "fp32", "fp16", "bf16" or "int8"
    description: str


@dataclass(frozen=True)
class Skipped:
    backend: str
    recipe: str
    reason: str


@dataclass
class BuildInput:
    model: ModelRecord
    source_path: Path  # the registered ONNX file
    calibration: dict[str, np.ndarray] | None  # validation inputs, samples first
    work_dir: Path


class Runner(Protocol):
    """A loaded variant: feeds by input name in, outputs in the model's output order out."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[Any]: ...

    def close(self) -> None: ...


class Backend(ABC):
    name: str  # e.g. "ort-cpu"; the first part of a variant's suffix
    hardware: str  # "cpu", "gpu" or "inferentia"
    #: Its sessions run one input shape: a worker pads every batch to the variant's max batch (as for a fixed-batch
    #: model), and the variant is profiled, and so predicted, at its max batch only. For runtimes to which a change
    #: of input shape costs far more than the rows padding adds (see OrtCudaBackend). Only the batch axis is padded:
    #: a model with another dynamic dimension (a sequence length) still changes shape with its queries.
    fixed_shape: bool = False

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this host has the toolchain and the hardware, and if not, why not."""

    @abstractmethod
    def recipes(self, build: BuildInput) -> tuple[list[Recipe], list[Skipped]]:
        """The recipes that apply to this model, and those that do not with the reason."""

    @abstractmethod
    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        """Make the variant artifact for a recipe in build.work_dir; return its path."""

    @abstractmethod
    def load(self, artifact: Path, recipe: str, threads: int) -> Runner:
        """Open a variant for execution (session creation only; the caller times the first run)."""

    def capabilities(self) -> frozenset[str]:
        """The host capabilities this backend detects that some of its recipes need beyond the backend itself
        (`keys.RECIPE_NEEDS`, e.g. "bf16"); asked only where the backend is available."""
        return frozenset()

    def thread_counts(self, cores: int) -> list[int]:
        """Intra-op thread budgets worth a variant each on a host with `cores` cores."""
        return [1]
