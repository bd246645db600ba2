"""Native TensorRT: serialised engines built from the ONNX graph (needs tensorrt, cuda-python and a GPU).

No GPU is present where infaas is developed and tested; this backend reports itself unavailable
there and is exercised only on hosts with the toolchain.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Skipped
from infaas_cli.errors import BackendUnavailableError
from infaas_cli.toolkit.hardware import nvidia_gpus

FP32 = Recipe("fp32", "fp32", "TensorRT engine, fp32")
FP16 = Recipe("fp16", "fp16", "TensorRT engine, fp16 kernels allowed")


class TensorrtBackend(Backend):
    name = "trt"
    hardware = "gpu"

    def availability(self) -> Availability:
        problems = []
        if importlib.util.find_spec("tensorrt") is None:
            problems.append("the tensorrt Python package is not installed (install the 'tensorrt' extra)")
        if importlib.util.find_spec("cuda") is None:
            problems.append("cuda-python is not installed (pip install cuda-python)")
        if not nvidia_gpus():
            problems.append("no NVIDIA GPU found (nvidia-smi missing or reports none)")
        return Availability(not problems, "; ".join(problems))

    def recipes(self, build: BuildInput) -> tuple[list[Recipe], list[Skipped]]:
        skipped = [Skipped(self.name, "int8", "TensorRT int8 needs an entropy calibrator; use ort-cpu int8s")]
        return [FP32, FP16], skipped

    def build(self, recipe: Recipe, build: BuildInput) -> Path:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(build.source_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailableError(f"TensorRT cannot parse {build.model.name}: {errors}")
        config = builder.create_builder_config()
        if recipe.name == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for spec in build.model.input_specs():
            dims = [d if isinstance(d, int) else 1 for d in spec.shape or []]
            if build.model.batch_dim == "dynamic":
                lo, hi = [1, *dims[1:]], [build.model.max_batch, *dims[1:]]
                profile.set_shape(spec.name, lo, hi, hi)
            else:
                profile.set_shape(spec.name, dims, dims, dims)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise BackendUnavailableError(f"TensorRT failed to build an engine for {build.model.name}")
        out = build.work_dir / f"{self.name}-{recipe.name}.engine"
        out.write_bytes(bytes(engine))
        return out

    def load(self, artifact: Path, recipe: str, threads: int) -> _TrtRunner:
        return _TrtRunner(artifact)


class _TrtRunner:
    """Runs a TensorRT engine; device buffers through cuda-python's runtime bindings."""

    def __init__(self, artifact: Path) -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self.trt, self.cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(artifact.read_bytes())
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        _, self.stream = cudart.cudaStreamCreate()

    def _check(self, result: Any) -> Any:
        err = result[0]
        if int(err) != 0:
            raise BackendUnavailableError(f"CUDA call failed: {err}")
        return result[1] if len(result) > 1 else None

    def run(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        trt, cudart = self.trt, self.cudart
        allocations, outputs = [], []
        try:
            for name in self.names:
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    arr = np.ascontiguousarray(feeds[name])
                    self.context.set_input_shape(name, arr.shape)
                    ptr = self._check(cudart.cudaMalloc(arr.nbytes))
                    allocations.append(ptr)
                    self._check(cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes,
                                                  cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                    self.context.set_tensor_address(name, ptr)
            for name in self.names:
                if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                    shape = tuple(self.context.get_tensor_shape(name))
                    host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                    ptr = self._check(cudart.cudaMalloc(max(host.nbytes, 1)))
                    allocations.append(ptr)
                    self.context.set_tensor_address(name, ptr)
                    outputs.append((host, ptr))
            self.context.execute_async_v3(self.stream)
            for host, ptr in outputs:
                self._check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                                   cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            self._check(cudart.cudaStreamSynchronize(self.stream))
            return [host for host, _ in outputs]
        finally:
            for ptr in allocations:
                cudart.cudaFree(ptr)

    def close(self) -> None:
        self.cudart.cudaStreamDestroy(self.stream)
