"""ONNX Runtime on CPU: fp32 at three graph optimisation levels, int8 dynamic and int8 static (QDQ)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Skipped
from infaas_cli.config import CALIBRATION_SAMPLES
from infaas_cli.errors import InfaasError
from infaas_cli.toolkit.modelio import run_dataset, take_batch

ort.set_default_logger_severity(3)  # session warnings (unused initialisers…) are not the user's concern

_LEVELS = {
    "fp32o1": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "fp32o2": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "fp32o3": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
RECIPES = {
    "fp32o1": Recipe("fp32o1", "fp32", "fp32, basic graph optimisations (constant folding, redundant nodes) saved"),
    "fp32o2": Recipe("fp32o2", "fp32", "fp32, extended optimisations (operator fusions) saved"),
    "fp32o3": Recipe("fp32o3", "fp32", "fp32, all optimisations incl. CPU layout transforms saved"),
    "int8d": Recipe("int8d", "int8", "int8 weights, activations quantised dynamically at run time"),
    "int8s": Recipe("int8s", "int8", "int8 static QDQ, activation ranges calibrated on validation inputs"),
}
#: Operators the quantisers turn into integer kernels (onnxruntime.quantization registries).
DYNAMIC_QUANT_OPS = {"MatMul", "Conv", "Attention", "LSTM", "EmbedLayerNormalization"}
STATIC_QUANT_OPS = {"MatMul", "Conv", "ConvTranspose", "Gemm"}


def graph_ops(path: Path) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs included."""
    model = onnx.load(str(path), load_external_data=False)
    found: set[tuple[str, str]] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.add((node.domain or "ai.onnx", node.op_type))
            for attr in node.attribute:
                if attr.g is not None and attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


class _CalibrationReader:
    """Feeds validation inputs to the static quantiser in batches the model accepts."""

    def __init__(self, data: dict[str, np.ndarray], batch_dim: str, max_batch: int) -> None:
        total = next(iter(data.values())).shape[0]
        n = min(total, CALIBRATION_SAMPLES)
        if batch_dim == "none":
            self._batches = [{k: v[i] for k, v in data.items()} for i in range(n)]
        else:
            step = max_batch if batch_dim == "fixed" else min(max_batch, 16)
            self._batches = [take_batch(data, s, step) for s in range(0, n, step)]
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


class OrtSession:
    """A runner over one onnxruntime.InferenceSession."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def run(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        return self.session.run(None, feeds)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice on the root logger; keep it out of the CLI's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def session_options(threads: int, level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    # A variant's thread budget is the CPU it uses: idle pool threads sleep instead of spinning, so
    # sessions that share a host's cores (and a host's CPU quota) do not burn them waiting for work.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtCpuBackend(Backend):
    name = "ort-cpu"
    hardware = "cpu"

    def availability(self) -> Availability:
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return Availability(False, f"onnxruntime {ort.__version__} lists no CPUExecutionProvider")
        return Availability(True)

    def thread_counts(self, cores: int) -> list[int]:
        counts = [1]
        while counts[-1] * 2 <= cores:
            counts.append(counts[-1] * 2)
        if counts[-1] != cores:
            counts.append(cores)
        return counts

    def recipes(self, build: BuildInput) -> tuple[list[Recipe], list[Skipped]]:
        ops = graph_ops(build.source_path)
        onnx_ops = {op for dom, op in ops if dom == "ai.onnx"}
        present = ", ".join(sorted(op for _, op in ops))
        chosen = [RECIPES["fp32o1"], RECIPES["fp32o2"], RECIPES["fp32o3"]]
        skipped: list[Skipped] = []
        if onnx_ops & DYNAMIC_QUANT_OPS:
            chosen.append(RECIPES["int8d"])
        else:
            skipped.append(Skipped(self.name, "int8d", "no operator that dynamic quantisation covers "
                                   f"({', '.join(sorted(DYNAMIC_QUANT_OPS))}); the graph has {present}"))
        if not onnx_ops & STATIC_QUANT_OPS:
            skipped.append(Skipped(self.name, "int8s", "no operator that static quantisation covers "
                                   f"({', '.join(sorted(STATIC_QUANT_OPS))}); the graph has {present}"))
        elif build.calibration is None:
            skipped.append(Skipped(self.name, "int8s", "no validation inputs to calibrate on; "
                                   "register the model with --validation"))
        else:
            chosen.append(RECIPES["int8s"])
        return chosen, skipped

    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        out = build.work_dir / f"{recipe.name}.onnx"
        src = str(build.source_path)
        if recipe.name in _LEVELS:
            opts = session_options(1, _LEVELS[recipe.name])
            opts.optimized_model_filepath = str(out)
            ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
            return out
        with _quiet_root_logger():
            return self._quantize(recipe, build, out)

    def _quantize(self, recipe: Recipe, build: BuildInput, out: Path) -> Path:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src = str(build.source_path)
        prepared = build.work_dir / "preprocessed.onnx"
        if not prepared.exists():
            try:
                quant_pre_process(src, str(prepared), skip_symbolic_shape=False)
            except Exception:  # symbolic shape inference fails on some graphs; quantise the original then
                prepared = build.source_path
        if recipe.name == "int8d":
            # Conv becomes ConvInteger, whose CPU kernel takes uint8 weights only.
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QUInt8)
        elif recipe.name == "int8s":
            if build.calibration is None:  # build() skips int8s without calibration data
                raise InfaasError(f"{build.model.name}: int8s needs calibration data (a validation set)")
            reader = _CalibrationReader(build.calibration, build.model.batch_dim, build.model.max_batch)
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=sorted(STATIC_QUANT_OPS))
        else:
            raise InfaasError(f"unknown ort-cpu recipe '{recipe.name}' (known: {', '.join(RECIPES)})")
        return out

    def load(self, artifact: Path, recipe: str, threads: int) -> OrtSession:
        # Saved fp32 graphs are already optimised at their level; quantised graphs need the
        # run-time fusions that turn Q/DQ pairs into integer kernels.
        level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if recipe in _LEVELS \
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(artifact), session_options(threads, level),
                                       providers=["CPUExecutionProvider"])
        return OrtSession(session)


def run_original(path: Path, data: dict[str, np.ndarray], batch_dim: str, max_batch: int) -> list[Any]:
    """Outputs of the registered model itself, ONNX Runtime defaults, on every sample."""
    session = ort.InferenceSession(str(path), session_options(0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                   providers=["CPUExecutionProvider"])
    return run_dataset(lambda feeds: session.run(None, feeds), data, batch_dim, max_batch)
