"""ONNX Runtime on NVIDIA GPUs: the CUDA and the TensorRT execution providers (need onnxruntime-gpu)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnxruntime as ort

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Skipped
from infaas_cli.backends.ort_cpu import OrtSession, session_options
from infaas_cli.toolkit.hardware import nvidia_gpus

FP32 = Recipe("fp32", "fp32", "fp32 as registered")
FP16 = Recipe("fp16", "fp16", "fp16 weights and activations")


def _gpu_reason(provider: str) -> str | None:
    problems = []
    if provider not in ort.get_available_providers():
        problems.append(f"onnxruntime {ort.__version__} was built without {provider} "
                        "(install the 'tensorrt' extra, which brings onnxruntime-gpu)")
    if not nvidia_gpus():
        problems.append("no NVIDIA GPU found (nvidia-smi missing or reports none)")
    return "; ".join(problems) or None


class OrtCudaBackend(Backend):
    name = "ort-cuda"
    hardware = "gpu"
    provider = "CUDAExecutionProvider"

    def availability(self) -> Availability:
        reason = _gpu_reason(self.provider)
        return Availability(reason is None, reason or "")

    def recipes(self, build: BuildInput) -> tuple[list[Recipe], list[Skipped]]:
        return [FP32, FP16], []

    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        out = build.work_dir / f"{self.name}-{recipe.name}.onnx"
        if recipe.name == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(build.source_path)), keep_io_types=True)
            onnx.save(model, str(out))
        else:
            shutil.copyfile(build.source_path, out)
        return out

    def providers(self, recipe: str) -> list:
        return [(self.provider, {}), "CPUExecutionProvider"]

    def load(self, artifact: Path, recipe: str, threads: int) -> OrtSession:
        opts = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        return OrtSession(ort.InferenceSession(str(artifact), opts, providers=self.providers(recipe)))


class OrtTensorrtBackend(OrtCudaBackend):
    """TensorRT through ONNX Runtime: engines are built on first load and cached beside the artifact."""

    name = "ort-trt"
    provider = "TensorrtExecutionProvider"

    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        # The engine is device-specific and built at load time; the artifact is the ONNX graph.
        out = build.work_dir / f"{self.name}-{recipe.name}.onnx"
        shutil.copyfile(build.source_path, out)
        return out

    def providers(self, recipe: str) -> list:
        from infaas_cli.config import infaas_home

        cache = infaas_home() / "trt-engines"
        cache.mkdir(parents=True, exist_ok=True)
        options = {"trt_fp16_enable": recipe == "fp16", "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(cache)}
        return [(self.provider, options), ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
