"""ONNX Runtime on NVIDIA GPUs: the CUDA and the TensorRT execution providers (need onnxruntime-gpu)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import shutil
from pathlib import Path

import onnxruntime as ort

from infaas_cli.backends.base import Availability, Backend, BuildInput, Recipe, Skipped
from infaas_cli.backends.ort_cpu import OrtSession, session_options
from infaas_cli.errors import BackendUnavailableError
from infaas_cli.toolkit.hardware import nvidia_gpus

FP32 = Recipe("fp32", "fp32", "fp32 as registered")
FP16 = Recipe("fp16", "fp16", "fp16 weights and activations")


#: The provider's own library in onnxruntime/capi, whose load fails, naming the missing library, where the CUDA or
#: TensorRT libraries it links are absent (onnxruntime itself then falls back to the CPU with a log line only).
_PROVIDER_LIBRARY = {"CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
                     "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so"}


@functools.cache
def _preload() -> None:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu links from the nvidia-* wheels (PyTorch's, say) wherever
    they are installed, once: onnxruntime's own preload_dlls looks only in the directory holding onnxruntime. The
    libraries it needs are its own list (for the CUDA version it was built with); a no-op without either."""
    needed = getattr(ort, "_get_nvidia_dll_paths", None)
    try:
        import nvidia  # the namespace package of the nvidia-* wheels, across every site directory
    except ImportError:
        return
    if needed is None:
        return
    for relative in needed(False, True, True):
        for root in nvidia.__path__:
            lib = Path(root).parent.joinpath(*relative)
            if lib.is_file():
                with contextlib.suppress(OSError):
                    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                break


@functools.cache
def _gpu_reason(provider: str) -> str | None:
    """Why `provider` cannot run here, or None: it is compiled in, an NVIDIA GPU is present, its libraries load
    and a one-node session opened with it keeps it (checked once per process)."""
    problems = []
    if provider not in ort.get_available_providers():
        problems.append(f"onnxruntime {ort.__version__} was built without {provider} "
                        "(install the 'tensorrt' extra, which brings onnxruntime-gpu)")
    if not nvidia_gpus():
        problems.append("no NVIDIA GPU found (nvidia-smi missing or reports none)")
    if problems:
        return "; ".join(problems)
    _preload()
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / _PROVIDER_LIBRARY[provider]))
    except OSError as e:
        cuda = getattr(getattr(ort.capi, "build_and_package_info", None), "cuda_version", "")
        built = f" (it was built for CUDA {cuda})" if cuda else ""
        hint = "install TensorRT 10 (its libnvinfer)" if provider.startswith("Tensorrt") else \
            f"install the CUDA and cuDNN libraries onnxruntime-gpu needs{built}, e.g. onnxruntime-gpu[cuda,cudnn]"
        return f"{provider}'s libraries do not load ({e}): {hint}"
    return _probe_session(provider)


def _probe_session(provider: str) -> str | None:
    """A one-node graph opened with `provider`: None when the session keeps the provider."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)
    try:
        providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
        session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    except Exception as e:  # noqa: BLE001 - the provider's own failure is the reason to report
        return f"a session with {provider} fails: {e}"
    if provider not in session.get_providers():
        return f"onnxruntime falls back to {session.get_providers()} when asked for {provider}"
    return None


def kept_provider(session: ort.InferenceSession, provider: str, variant: str) -> ort.InferenceSession:
    """The session, once it is known to run on `provider`: onnxruntime falls back to the CPU silently, and a
    GPU variant served by the CPU would be a lie in every profile and reply."""
    if session.get_providers()[0] != provider:
        raise BackendUnavailableError(f"{variant}: onnxruntime opened it on {session.get_providers()}, not "
                                      f"{provider}; `infaas backends` says what this host lacks")
    return session


class OrtCudaBackend(Backend):
    name = "ort-cuda"
    hardware = "gpu"
    provider = "CUDAExecutionProvider"
    # Measured on an H100 (onnxruntime-gpu 1.31, cuDNN 9, digits-cnn-l): every change of a session's input shape,
    # to a batch size seen before or not, costs 31-47 ms (cuDNN's algorithm search, redone at each change; 7 ms with
    # the heuristic search, 3 ms with none, whose runs are 2.5x slower), while padding batch 1 to 32 costs nothing
    # measurable (0.25 ms either way). A dynamic batch would pay the change on most queries: run one shape.
    fixed_shape = True

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
        session = ort.InferenceSession(str(artifact), opts, providers=self.providers(recipe))
        return OrtSession(kept_provider(session, self.provider, f"{self.name}-{recipe}"))


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
