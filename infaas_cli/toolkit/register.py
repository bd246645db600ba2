"""Registering a model: validate the ONNX file and its validation data, measure accuracy, store both."""

from __future__ import annotations

import re
import time
from pathlib import Path

from infaas_cli.backends.ort_cpu import run_original
from infaas_cli.errors import AlreadyExistsError, InfaasError, InvalidValidationDataError
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.modelio import inspect_model, load_validation, top1_accuracy
from infaas_cli.catalog.records import MAX_CACHE_MIB, ArtifactRecord, ModelRecord, ProfileRecord, VariantRecord

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise InfaasError(f"{kind} '{value}' is not a valid name; use letters, digits, '.', '_' and '-' "
                          "(starting with a letter or digit, at most 128 characters)")
    return value


def check_cache_mib(cache_mib: int | None) -> int | None:
    if cache_mib is not None and (isinstance(cache_mib, bool) or not 0 <= cache_mib <= MAX_CACHE_MIB):
        raise InfaasError(f"--cache-mib {cache_mib} is out of range; give the model's prediction cache in MiB "
                          f"from 0 (never cache it) to {MAX_CACHE_MIB}, e.g. --cache-mib 64, or leave it out to "
                          "use the master's default (master.prediction_cache_mib)")
    return cache_mib


def register_model(home: InfaasHome, path: str | Path, name: str, task: str, dataset: str,
                   validation: str | Path | None = None, accuracy: float | None = None,
                   replace: bool = False, cache_mib: int | None = None) -> ModelRecord:
    """Validate everything first, then write the artifacts and the model record in one transaction.

    `cache_mib` is the master's prediction cache for this model (0: never cached); None leaves it to the
    master's `master.prediction_cache_mib`.
    """
    check_name("model name", name)
    check_name("task", task)
    check_name("dataset", dataset)
    check_cache_mib(cache_mib)
    existing = home.store.get(ModelRecord, name)
    if existing is not None and not replace:
        raise AlreadyExistsError(f"model '{name}' is already registered; pass --replace to replace it "
                                 "and its variants, or choose another --name")
    if accuracy is not None and validation is not None:
        raise InfaasError("--accuracy is for models without a validation set; drop it — accuracy is "
                          "measured on --validation")
    if accuracy is not None and not 0.0 < accuracy <= 1.0:
        raise InfaasError(f"--accuracy {accuracy} is out of range; give a fraction in (0, 1], e.g. 0.97")
    path = Path(path)
    sig = inspect_model(path)

    metric, samples, measured = "declared" if accuracy is not None else "unknown", 0, accuracy
    if validation is not None:
        vset = load_validation(validation, sig.inputs, sig.batch_dim)
        samples = vset.samples
        try:
            outputs = run_original(path, vset.inputs, sig.batch_dim, sig.max_batch)
        except Exception as exc:
            raise InvalidValidationDataError(
                f"the model fails on the validation inputs of {validation}: {' '.join(str(exc).split())[:300]}; "
                "check that the arrays hold what the model expects") from None
        if vset.labels is not None:
            measured, metric = top1_accuracy(outputs, sig.outputs, vset.labels), "top1"
        else:
            measured, metric = 1.0, "agreement"  # the original agrees with itself; variants are measured against it

    model_sha = home.artifacts.put_file(path)
    val_sha = home.artifacts.put_file(validation) if validation is not None else None
    record = ModelRecord(
        name=name, task=task, dataset=dataset, artifact_sha256=model_sha, source_file=path.name,
        size_bytes=path.stat().st_size, inputs=[vars(s) for s in sig.inputs],
        outputs=[vars(s) for s in sig.outputs], batch_dim=sig.batch_dim, max_batch=sig.max_batch,
        opset=sig.opset, producer=sig.producer, accuracy=measured, accuracy_metric=metric,
        validation_sha256=val_sha, validation_samples=samples, registered_at=time.time(), cache_mib=cache_mib)
    with home.store.transaction() as txn:
        if existing is not None:
            for v in home.store.variants(name):
                txn.delete(VariantRecord.table, v.key)
            for p in home.store.profiles(name):
                txn.delete(ProfileRecord.table, p.key)
        txn.put(ArtifactRecord(model_sha, path.stat().st_size, "model", path.name))
        if val_sha is not None:
            txn.put(ArtifactRecord(val_sha, Path(validation).stat().st_size, "validation", Path(validation).name))
        txn.put(record)
    return record
