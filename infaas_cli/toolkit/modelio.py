"""ONNX model inspection, validation data, batched execution and accuracy — shared by register, generate, profile."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from infaas_cli.config import AGREEMENT_ATOL, AGREEMENT_RTOL, MAX_BATCH_CHOICES
from infaas_cli.errors import InfaasError, InvalidInputError, InvalidModelError, InvalidValidationDataError
from infaas_cli.catalog.records import TensorSpec

_ORT_TO_NUMPY = {
    "float": "float32", "double": "float64", "float16": "float16",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "bool": "bool", "string": "str",
}

#: Profiling and agreement use this size for a dynamic non-batch dimension when no validation data says otherwise.
DEFAULT_DYNAMIC_DIM = 16


def spec_from_node_arg(arg: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg."""
    type_str = arg.type
    dtype = None
    shape = None
    if type_str.startswith("tensor(") and type_str.endswith(")"):
        dtype = _ORT_TO_NUMPY.get(type_str[len("tensor("):-1])
        shape = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None)
                 for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, type=type_str, dtype=dtype, shape=shape)


@dataclass
class ModelSignature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_dim: str  # "dynamic", "fixed" or "none"
    max_batch: int
    opset: int
    producer: str


def inspect_model(path: str | Path) -> ModelSignature:
    """Validate an ONNX file with onnx.checker and an ONNX Runtime session; return its signature."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path} does not exist or is not a file; pass the path of an .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise InvalidModelError(f"{path} is not an ONNX model ({_one_line(exc)}); "
                                "export the model to ONNX first (e.g. torch.onnx.export or skl2onnx)") from None
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise InvalidModelError(f"{path} fails the ONNX checker: {_one_line(exc)}; "
                                "re-export the model with a supported opset") from None
    ort.set_default_logger_severity(3)  # warnings about unused initialisers are not the user's concern
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModelError(f"ONNX Runtime cannot load {path}: {_one_line(exc)}; "
                                "re-export the model with operators ONNX Runtime supports") from None
    inputs = [spec_from_node_arg(a) for a in session.get_inputs()]
    outputs = [spec_from_node_arg(a) for a in session.get_outputs()]
    if not inputs:
        raise InvalidModelError(f"{path} has no inputs; infaas serves models that take at least one tensor")
    for spec in inputs:
        if not spec.is_tensor:
            raise InvalidModelError(f"input '{spec.name}' of {path} is a {spec.type}; infaas serves tensor inputs only")
        if spec.dtype is None:
            raise InvalidModelError(f"input '{spec.name}' of {path} has element type {spec.type}, "
                                    "which infaas cannot feed; use a numeric or bool input")
    batch_dim, max_batch = batch_semantics(inputs)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return ModelSignature(inputs, outputs, batch_dim, max_batch, opset, producer)


def batch_semantics(inputs: Sequence[TensorSpec]) -> tuple[str, int]:
    """How the leading dimension batches: dynamic (cap 32), fixed at B (max batch B), or none (1)."""
    fixed: list[int] = []
    for spec in inputs:
        if not spec.shape:
            return "none", 1
        lead = spec.shape[0]
        if isinstance(lead, int):
            fixed.append(lead)
    if fixed:
        return "fixed", max(1, min(fixed))
    return "dynamic", max(MAX_BATCH_CHOICES)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")


# -- validation data ---------------------------------------------------------------------------


@dataclass
class ValidationSet:
    inputs: dict[str, np.ndarray]  # input name -> array whose leading axis is the sample axis
    labels: np.ndarray | None
    samples: int


def load_validation(path: str | Path, inputs: Sequence[TensorSpec], batch_dim: str) -> ValidationSet:
    """Read an .npz validation file (one array per input name, or `x` for one input, plus optional `y`)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidValidationDataError(f"validation file {path} does not exist; pass an .npz file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidValidationDataError(
            f"{path} is not a readable .npz archive ({_one_line(exc)}); "
            "write it with numpy.savez(path, <input name>=array, y=labels)") from None
    names = [s.name for s in inputs]
    if len(inputs) == 1 and names[0] not in arrays and "x" in arrays:
        arrays[names[0]] = arrays.pop("x")
    missing = [n for n in names if n not in arrays]
    if missing:
        hint = " (or 'x' for a single-input model)" if len(names) == 1 else ""
        raise InvalidValidationDataError(
            f"validation file {path} lacks arrays for input(s) {', '.join(missing)}; it has "
            f"{', '.join(sorted(arrays)) or 'none'} — save one array per input name{hint}")
    feeds: dict[str, np.ndarray] = {}
    counts = set()
    for spec in inputs:
        arr = arrays[spec.name]
        feeds[spec.name] = conform_array(arr, spec, f"validation array '{spec.name}' in {path}", batch_dim)
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise InvalidValidationDataError(
            f"validation arrays in {path} disagree on the number of samples ({sorted(counts)}); "
            "give every input the same leading dimension")
    samples = counts.pop()
    if samples == 0:
        raise InvalidValidationDataError(f"validation file {path} has no samples; add at least one")
    labels = arrays.get("y")
    if labels is not None:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != samples:
            raise InvalidValidationDataError(
                f"labels 'y' in {path} have shape {list(labels.shape)}; expected [{samples}] "
                "(one class label per sample)")
    return ValidationSet(feeds, labels, samples)


def conform_array(arr: np.ndarray, spec: TensorSpec, what: str, batch_dim: str) -> np.ndarray:
    """Check samples-first data against a tensor spec (dtype kind, rank, fixed dims); cast within the dtype kind.

    With a batch dimension the leading axis of `arr` stands in for it; without one ("none") each
    sample has the spec's full shape and `arr` has one more axis.
    """
    if spec.dtype is None or spec.shape is None:
        raise InvalidValidationDataError(f"{what} is given for {spec.name}, a {spec.type} input; only tensor "
                                         "inputs take data")
    want = np.dtype(spec.dtype) if spec.dtype != "str" else np.dtype(object)
    if arr.dtype.kind != want.kind and not (want.kind in "iu" and arr.dtype.kind in "iu"):
        raise InvalidValidationDataError(
            f"{what} has dtype {arr.dtype}, the model expects {spec.dtype}; convert it with .astype('{spec.dtype}')")
    per_sample = list(spec.shape) if batch_dim == "none" else list(spec.shape[1:])
    expected = "[N" + "".join(", " + ("?" if not isinstance(d, int) else str(d)) for d in per_sample) + "]"
    if arr.ndim != len(per_sample) + 1:
        raise InvalidValidationDataError(
            f"{what} has shape {list(arr.shape)}, the model expects {expected} (N samples first); reshape it")
    for i, (d, g) in enumerate(zip(per_sample, arr.shape[1:])):
        if isinstance(d, int) and d != g:
            raise InvalidValidationDataError(
                f"{what} has shape {list(arr.shape)}, the model expects {expected} "
                f"(dimension {i + 1} must be {d}); reshape it")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def synthetic_inputs(inputs: Sequence[TensorSpec], batch_dim: str, samples: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the signature, sample axis first; used when a model has no validation data."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        per_sample = list(spec.shape or []) if batch_dim == "none" else list(spec.shape or [])[1:]
        dims = [d if isinstance(d, int) else DEFAULT_DYNAMIC_DIM for d in per_sample]
        shape = [samples, *dims]
        dt = np.dtype(spec.dtype) if spec.dtype != "str" else np.dtype(object)
        if dt.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[spec.name] = np.full(shape, "a", dtype=object)
    return feeds


def take_batch(data: dict[str, np.ndarray], start: int, size: int) -> dict[str, np.ndarray]:
    """Rows start..start+size of every input, wrapping around (so any batch size can be built)."""
    out = {}
    for name, arr in data.items():
        idx = (np.arange(start, start + size) % arr.shape[0])
        out[name] = np.ascontiguousarray(arr[idx])
    return out


# -- batched execution -------------------------------------------------------------------------

RunFn = Callable[[dict[str, np.ndarray]], list[Any]]


def run_dataset(run: RunFn, data: dict[str, np.ndarray], batch_dim: str, max_batch: int) -> list[Any]:
    """Run every sample through `run`, batching by the model's rules; return outputs concatenated per output."""
    total = next(iter(data.values())).shape[0]
    chunks: list[list[Any]] = []
    if batch_dim == "none":
        for i in range(total):
            outs = run({k: v[i] for k, v in data.items()})
            chunks.append([_add_sample_axis(o) for o in outs])
    else:
        step = max_batch
        for start in range(0, total, step):
            n = min(step, total - start)
            feeds = take_batch(data, start, step if batch_dim == "fixed" else n)
            outs = run(feeds)
            chunks.append([o[:n] for o in outs])
    merged = []
    for i in range(len(chunks[0])):
        parts = [c[i] for c in chunks]
        if isinstance(parts[0], np.ndarray):
            merged.append(np.concatenate(parts, axis=0))
        else:
            merged.append([item for p in parts for item in p])
    return merged


def _add_sample_axis(out: Any) -> Any:
    return out[np.newaxis] if isinstance(out, np.ndarray) else [out]


def as_array(output: Any) -> np.ndarray:
    """An output as an array with the sample axis first; a sequence of maps becomes [samples, sorted keys]."""
    if isinstance(output, np.ndarray):
        return output
    if isinstance(output, list) and output and isinstance(output[0], dict):
        keys = sorted(output[0])
        return np.array([[row[k] for k in keys] for row in output])
    return np.asarray(output)


# -- accuracy ----------------------------------------------------------------------------------


def top1_predictions(outputs: list[Any], specs: Sequence[TensorSpec], samples: int) -> np.ndarray:
    """The predicted class per sample: an integer label output if there is one, else argmax of scores."""
    for out in outputs:
        if isinstance(out, np.ndarray) and out.dtype.kind in "iu" and out.shape[:1] == (samples,):
            if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
                return out.reshape(samples)
    for out in outputs:
        if isinstance(out, np.ndarray) and out.dtype.kind == "f" and out.shape[:1] == (samples,) and out.ndim >= 2:
            return out.reshape(samples, -1).argmax(axis=1)
    for out in outputs:
        if isinstance(out, list) and out and isinstance(out[0], dict):
            return np.array([max(row, key=row.get) for row in out])
    names = ", ".join(s.describe() for s in specs)
    raise InvalidValidationDataError(
        f"cannot derive a top-1 class from the outputs ({names}); drop 'y' from the validation file to "
        "measure agreement with the original model instead, or register with --accuracy")


def top1_accuracy(outputs: list[Any], specs: Sequence[TensorSpec], labels: np.ndarray) -> float:
    pred = top1_predictions(outputs, specs, labels.shape[0])
    if labels.dtype.kind in "iu" and pred.dtype.kind in "iu":
        return float(np.mean(pred.astype(np.int64) == labels.astype(np.int64)))
    return float(np.mean(pred.astype(str) == labels.astype(str)))


def agreement(outputs: list[Any], reference: list[Any]) -> float:
    """Fraction of samples whose every output matches the reference within the documented tolerance.

    Integer, bool and string outputs must be equal; float outputs must satisfy
    |out - ref| <= AGREEMENT_ATOL + AGREEMENT_RTOL * max|ref of that sample| element-wise.
    """
    ok: np.ndarray | None = None
    for out, ref in zip(outputs, reference):
        a, b = as_array(out), as_array(ref)
        if a.shape != b.shape:
            return 0.0
        n = a.shape[0]
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            a2 = a.reshape(n, -1).astype(np.float64)
            b2 = b.reshape(n, -1).astype(np.float64)
            scale = np.abs(b2).max(axis=1, keepdims=True) if b2.shape[1] else np.zeros((n, 1))
            row_ok = (np.abs(a2 - b2) <= AGREEMENT_ATOL + AGREEMENT_RTOL * scale).all(axis=1)
        else:
            row_ok = (a.reshape(n, -1) == b.reshape(n, -1)).all(axis=1)
        ok = row_ok if ok is None else ok & row_ok
    return float(ok.mean()) if ok is not None and ok.size else 0.0


# -- query inputs ------------------------------------------------------------------------------


def check_query_inputs(feeds: dict[str, np.ndarray], specs: Sequence[TensorSpec], batch_dim: str,
                       max_batch: int) -> int:
    """Check a query's tensors against the model's inputs; return the query's batch size.

    Raises InvalidInputError naming what is wrong and the fix. A fixed-batch model accepts up to
    its batch size (the worker pads); a model without a batch axis takes one sample, as-is.
    """
    return check_query_signature({k: (v.dtype.name, v.shape) for k, v in feeds.items()}, specs, batch_dim, max_batch)


def check_query_signature(feeds: Mapping[str, tuple[str, Sequence[int]]], specs: Sequence[TensorSpec],
                          batch_dim: str, max_batch: int) -> int:
    """check_query_inputs on the tensors' descriptors alone ({name: (dtype name, shape)}): what the master
    checks without reading a byte of the data."""
    from infaas_cli.errors import InvalidInputError

    want = [s.name for s in specs]
    if set(feeds) != set(want):
        missing = [n for n in want if n not in feeds]
        extra = [n for n in feeds if n not in want]
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise InvalidInputError(f"inputs do not match the model ({'; '.join(parts)}); it takes "
                                f"{', '.join(s.describe() for s in specs)} — key the .npz by these names")
    batches = set()
    for spec in specs:
        dtype, got = feeds[spec.name]
        if dtype != spec.dtype:
            raise InvalidInputError(f"input '{spec.name}' has dtype {dtype}, the model expects {spec.dtype}; "
                                    f"convert it with .astype('{spec.dtype}')")
        shape = list(spec.shape or [])
        if len(got) != len(shape):
            raise InvalidInputError(f"input '{spec.name}' has shape {list(got)}, the model expects "
                                    f"{spec.describe().split(': ', 1)[1]}; reshape it (batch first)")
        for i, (d, g) in enumerate(zip(shape, got)):
            if i == 0 and batch_dim != "none":
                continue
            if isinstance(d, int) and d != g:
                raise InvalidInputError(f"input '{spec.name}' has shape {list(got)}, dimension {i} must be "
                                        f"{d} ({spec.describe()}); reshape it")
        if batch_dim != "none":
            batches.add(got[0])
    if batch_dim == "none":
        return 1
    if len(batches) != 1:
        raise InvalidInputError(f"inputs disagree on the batch size ({sorted(batches)}); give every input "
                                "the same leading dimension")
    batch = batches.pop()
    if batch < 1:
        raise InvalidInputError("the batch is empty; send at least one sample")
    if batch > max_batch and batch_dim == "fixed":
        raise InvalidInputError(f"batch of {batch} exceeds the model's fixed batch size {max_batch}; "
                                "split the query")
    return batch


def castable(have: str, want: str | None) -> bool:
    """Whether a query's dtype `have` is cast to the model's `want` on the way (same kind: float64 → float32,
    int32 → int64, uint8 → int64), rather than refused."""
    if want in (None, "str") or have == want:
        return False
    a, b = np.dtype(have), np.dtype(want)
    return a.kind == b.kind or (a.kind in "iu" and b.kind in "iu")


def coerce_query_signature(feeds: Mapping[str, tuple[str, Sequence[int]]], specs: Sequence[TensorSpec]
                           ) -> dict[str, tuple[str, Sequence[int]]]:
    """coerce_query_inputs on descriptors: the signature the worker's cast and renaming will produce."""
    if set(feeds) == {""} and len(specs) == 1:
        feeds = {specs[0].name: feeds[""]}
    by_name = {s.name: s for s in specs}
    out = {}
    for name, (dtype, shape) in feeds.items():
        spec = by_name.get(name)
        out[name] = (spec.dtype, shape) if spec is not None and castable(dtype, spec.dtype) else (dtype, shape)
    return out


class SignatureChecks:
    """check_query_signature's verdicts on input signatures — ((name, dtype, shape), ...) — remembered per caller's
    key (a model, a variant): a client sends the same shapes again and again, and a daemon checks them without
    reading a byte of the data. Bounded: cleared when full."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._verdicts: dict[tuple, tuple[int, bool] | str] = {}  # (batch, needs coercion), or why refused

    def clear(self) -> None:
        self._verdicts.clear()

    def check(self, key: Any, signature: tuple, specs: Sequence[TensorSpec], batch_dim: str, max_batch: int,
              label: str = "") -> tuple[int, bool]:
        """(batch size, whether coerce_query_inputs must rename or cast) of tensors with this signature;
        InvalidInputError (its reason prefixed with `label`) when the inputs `specs` refuse them."""
        verdict = self._verdicts.get((key, signature))
        if verdict is None:
            want = coerce_query_signature({n: (d, shape) for n, d, shape in signature}, specs)
            coerce = set(want) != {n for n, _, _ in signature} or any(want[n][0] != d for n, d, _ in signature)
            try:
                verdict = (check_query_signature(want, specs, batch_dim, max_batch), coerce)
            except InfaasError as exc:  # kept as the reason: a fresh error per raise (a raised one keeps its traceback)
                verdict = f"{label}: {exc}" if label else str(exc)
            if len(self._verdicts) >= self.limit:
                self._verdicts.clear()
            self._verdicts[(key, signature)] = verdict
        if isinstance(verdict, str):
            raise InvalidInputError(verdict)
        return verdict


def coerce_query_inputs(feeds: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], bool]:
    """Name an unnamed single input after the model's only input, and cast within a dtype kind.

    A query from a .npy file has one input named "" (the client cannot know the name of a
    model-less query's input); float64 data for a float32 input is cast, int32 for int64 too.
    Returns the feeds and whether anything changed.
    """
    changed = False
    if set(feeds) == {""} and len(specs) == 1:
        feeds = {specs[0].name: feeds[""]}
        changed = True
    by_name = {s.name: s for s in specs}
    out = {}
    for name, arr in feeds.items():
        spec = by_name.get(name)
        if spec is not None and castable(arr.dtype.name, spec.dtype):
            arr = arr.astype(spec.dtype)
            changed = True
        out[name] = arr
    return out, changed
