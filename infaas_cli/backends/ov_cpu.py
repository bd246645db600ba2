"""OpenVINO on CPU: fp32, bf16 where the CPU computes it, and int8 by NNCF post-training quantisation."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Skipped
from infaas_cli.backends.keys import BF16
from infaas_cli.backends.ort_cpu import OrtCpuBackend, graph_ops
from infaas_cli.config import CALIBRATION_SAMPLES
from infaas_cli.errors import BackendUnavailableError, InfaasError
from infaas_cli.toolkit.modelio import take_batch

RECIPES = {
    "fp32": Recipe("fp32", "fp32", "OpenVINO IR, fp32 weights and kernels (precision hint f32)"),
    "bf16": Recipe("bf16", "bf16", "OpenVINO IR, fp32 weights, bf16 kernels (precision hint bf16; CPUs with BF16)"),
    "int8": Recipe("int8", "int8", "NNCF int8 post-training quantisation calibrated on validation inputs"),
}
#: The CPU plugin's INFERENCE_PRECISION_HINT per recipe. It is set at every load: the plugin picks
#: bf16 by itself on CPUs that have it, and an exported compiled blob forgets the hint.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: ONNX operators NNCF turns into int8 kernels on CPU; without one an "int8" variant would be fp32.
NNCF_QUANT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
NOT_INSTALLED = "the openvino package is not installed; pip install 'infaas[openvino]'"
#: The artifact is one file for the content-addressed store: the IR's two files in an uncompressed zip.
IR_XML, IR_BIN = "model.xml", "model.bin"
#: Names OpenVINO makes up (type + a process-wide counter, e.g. "Constant_2499"): renumbered per
#: graph so that the same model converts to the same bytes, hence the same artifact digest.
_MADE_UP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*_[0-9]+")


def _openvino():
    """The openvino module, imported on first use: it costs ~250 ms, paid by whoever needs it."""
    import openvino

    return openvino


@functools.cache
def _core():
    return _openvino().Core()


def cpu_capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES, e.g. ['BF16', 'FP32', 'INT8', …]."""
    return [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def nncf_installed() -> bool:
    return importlib.util.find_spec("nncf") is not None


def choose_recipes(backend: str, ops: set[tuple[str, str]], capabilities: Sequence[str], calibrated: bool,
                   has_nncf: bool) -> tuple[list[Recipe], list[Skipped]]:
    """The recipes that apply, given the graph's (domain, op) pairs and what the host offers."""
    ml_ops = sorted(op for dom, op in ops if dom == "ai.onnx.ml")
    if ml_ops:
        reason = (f"the graph has ai.onnx.ml operators ({', '.join(ml_ops)}); OpenVINO's ONNX frontend "
                  "lacks most of them (scikit-learn exports do not convert)")
        return [], [Skipped(backend, name, reason) for name in RECIPES]
    chosen = [RECIPES["fp32"]]
    skipped: list[Skipped] = []
    if "BF16" in capabilities:
        chosen.append(RECIPES["bf16"])
    else:
        skipped.append(Skipped(backend, "bf16", "this CPU does not compute bf16 (OpenVINO's "
                               f"OPTIMIZATION_CAPABILITIES: {', '.join(capabilities) or 'none'})"))
    onnx_ops = {op for dom, op in ops if dom == "ai.onnx"}
    if not onnx_ops & NNCF_QUANT_OPS:
        present = ", ".join(sorted(op for _, op in ops))
        skipped.append(Skipped(backend, "int8", "no operator that NNCF quantises "
                               f"({', '.join(sorted(NNCF_QUANT_OPS))}); the graph has {present}"))
    elif not has_nncf:
        skipped.append(Skipped(backend, "int8", "the nncf package is not installed; pip install 'infaas[openvino]'"))
    elif not calibrated:
        skipped.append(Skipped(backend, "int8", "no validation inputs to calibrate on; "
                               "register the model with --validation"))
    else:
        chosen.append(RECIPES["int8"])
    return chosen, skipped


def calibration_batches(data: dict[str, np.ndarray], batch_dim: str, max_batch: int) -> list[dict[str, np.ndarray]]:
    """Validation inputs in batches the model accepts, CALIBRATION_SAMPLES at most (as ORT's int8s)."""
    total = next(iter(data.values())).shape[0]
    n = min(total, CALIBRATION_SAMPLES)
    if batch_dim == "none":
        return [{k: v[i] for k, v in data.items()} for i in range(n)]
    step = max_batch if batch_dim == "fixed" else min(max_batch, 16)
    return [take_batch(data, s, step) for s in range(0, n, step)]


def stable_names(model) -> None:
    """Renumber the node names OpenVINO made up, in graph order (inputs and outputs keep theirs)."""
    for i, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        if _MADE_UP_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")


def pack_ir(model, out: Path) -> Path:
    """Save an ov.Model as IR (fp32 weights kept) and pack its .xml and .bin into one reproducible zip."""
    ov = _openvino()
    with tempfile.TemporaryDirectory(prefix="infaas-ov-") as tmp:
        xml = Path(tmp) / IR_XML
        ov.save_model(model, str(xml), compress_to_fp16=False)  # the default halves the weights
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for name in (IR_XML, IR_BIN):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # no clock in the digest
                zf.writestr(info, (Path(tmp) / name).read_bytes())
    return out


def unpack_ir(artifact: Path) -> tuple[bytes, bytes]:
    if not zipfile.is_zipfile(artifact):
        raise InfaasError(f"{artifact} is not an ov-cpu artifact (a zip of {IR_XML} and {IR_BIN})")
    with zipfile.ZipFile(artifact) as zf:
        return zf.read(IR_XML), zf.read(IR_BIN)


class OvRunner:
    """A runner over one compiled model and its one infer request (requests are not thread-safe)."""

    def __init__(self, compiled: Any, weights: np.ndarray) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._outputs = list(compiled.outputs)
        self._weights = weights  # the IR's constants may point into it: keep it as long as the model
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        with self._lock:
            result = self._request.infer(feeds)  # share_outputs=False: the arrays are copies, ours to keep
            return [result[out] for out in self._outputs]

    def close(self) -> None:
        with self._lock:
            self._request = None
            self.compiled = None
            self._weights = None  # type: ignore[assignment]


@contextlib.contextmanager
def _env(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _nncf_quietly():
    """NNCF logs and draws progress bars on stdout, which carries the CLI's data: send them to stderr."""
    with contextlib.redirect_stdout(sys.stderr), _env("NNCF_CI", "1"):
        # NNCF_CI is NNCF's own switch to its telemetry stub, read at import: infaas reports no usage.
        import nncf
        from nncf.common.logging.logger import nncf_logger

        nncf.set_log_level(logging.ERROR)
        for handler in nncf_logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stdout__:
                handler.setStream(sys.stderr)
        with contextlib.redirect_stdout(io.StringIO()):
            yield nncf


class OvCpuBackend(Backend):
    name = "ov-cpu"
    hardware = "cpu"

    def availability(self) -> Availability:
        try:
            ov = _openvino()
        except ImportError:
            return Availability(False, NOT_INSTALLED)
        devices = _core().available_devices
        if "CPU" not in devices:
            return Availability(False, f"openvino {ov.__version__} lists no CPU device (it has: "
                                f"{', '.join(devices) or 'none'})")
        return Availability(True)

    def capabilities(self) -> frozenset[str]:
        return frozenset({BF16}) if "BF16" in cpu_capabilities() else frozenset()

    def thread_counts(self, cores: int) -> list[int]:
        return OrtCpuBackend().thread_counts(cores)  # the same budgets, so the two compare at equal cores

    def recipes(self, build: BuildInput) -> tuple[list[Recipe], list[Skipped]]:
        ops = graph_ops(build.source_path)
        if any(dom == "ai.onnx.ml" for dom, _ in ops):  # decided without paying for the import
            return choose_recipes(self.name, ops, [], False, False)
        return choose_recipes(self.name, ops, cpu_capabilities(), build.calibration is not None, nncf_installed())

    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        if recipe.name not in RECIPES:
            raise InfaasError(f"unknown ov-cpu recipe '{recipe.name}' (known: {', '.join(RECIPES)})")
        if recipe.name in ("fp32", "bf16"):
            # One IR serves both: bf16 is a compile-time hint, so the two share one artifact.
            out = build.work_dir / f"{self.name}-fp32.zip"
            if not out.exists():
                pack_ir(self._convert(build), out)
            return out
        if build.calibration is None:  # recipes() skips int8 without calibration data
            raise InfaasError(f"{build.model.name}: ov-cpu int8 needs calibration data (a validation set)")
        model = self._convert(build)
        batches = calibration_batches(build.calibration, build.model.batch_dim, build.model.max_batch)
        with _nncf_quietly() as nncf:
            quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                                      target_device=nncf.TargetDevice.CPU)
        stable_names(quantized)
        return pack_ir(quantized, build.work_dir / f"{self.name}-int8.zip")

    def _convert(self, build: BuildInput):
        """The ONNX graph as an ov.Model: dynamic dimensions (the batch) stay dynamic.

        The runtime's ONNX reader, not ov.convert_model: the same frontend, without the conversion
        tool's usage telemetry.
        """
        model = _core().read_model(str(build.source_path))
        expected = [spec.name for spec in build.model.output_specs()]
        got = [out.get_any_name() if out.get_names() else "" for out in model.outputs]
        if expected and got != expected:  # runners return outputs in this order: it must be the model's
            raise InfaasError(f"{build.model.name}: OpenVINO reorders or renames the outputs "
                              f"({', '.join(got)} instead of {', '.join(expected)})")
        stable_names(model)
        return model

    def load(self, artifact: Path, recipe: str, threads: int) -> OvRunner:
        # Everything a cold load costs is counted by the caller: the import, reading, compiling.
        ov = _openvino()
        if recipe not in PRECISION_HINTS:
            raise InfaasError(f"unknown ov-cpu recipe '{recipe}' (known: {', '.join(RECIPES)})")
        if recipe == "bf16" and "BF16" not in (caps := cpu_capabilities()):
            # The plugin would quietly run fp32 kernels, and the variant's profile would lie.
            raise BackendUnavailableError(f"this CPU does not compute bf16 (OPTIMIZATION_CAPABILITIES: "
                                          f"{', '.join(caps) or 'none'}); load an fp32 or int8 variant")
        xml, data = unpack_ir(artifact)
        weights = np.frombuffer(data, dtype=np.uint8)
        core = _core()
        model = core.read_model(xml, ov.Tensor(weights))
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[recipe],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Variants share a worker's cores; pinning would put every variant's threads on the same ones.
            "ENABLE_CPU_PINNING": False,
        }
        return OvRunner(core.compile_model(model, "CPU", config), weights)
