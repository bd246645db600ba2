"""Registering a model: validate the ONNX file and its validation data, measure accuracy, store both."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from infaas_cli.backends.ort_cpu import run_original
from infaas_cli.catalog.artifacts import referenced_artifacts
from infaas_cli.errors import AlreadyExistsError, InfaasError, InvalidValidationDataError
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.modelio import inspect_model, load_validation, top1_accuracy
from infaas_cli.catalog.records import MAX_CACHE_MIB, ArtifactRecord, ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.catalog.listings import model_versions
from infaas_cli.catalog.store import MetadataStore
from infaas_cli.policy.versions import MAX_VERSION, version_id

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


def registration_target(store: MetadataStore, digest: Callable[[], str | None], name: str, version: int | None,
                        replace: bool) -> int:
    """The version a `register` of a file as `name` writes: `version` when given (refused when it exists, unless
    `replace`); else 1 for a new model, the next version for an existing one — unless the file is that of a
    registered version already, which is refused (or, with `replace`, that version is replaced), or the latest
    version never got its variants (an interrupted register: finished first, `generate.finish_hint`).
    `digest()` gives the file's sha256 (None: unreadable), asked only for the next version's check."""
    versions = model_versions(store, name)
    if version is not None:
        if isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
            raise InfaasError(f"--version {version} is out of range; versions count from 1 to {MAX_VERSION}")
        if version in versions and not replace:
            nxt = max(versions) + 1
            raise AlreadyExistsError(f"version {version} of model '{name}' is already registered; pass --replace to "
                                     f"replace it and its variants, or leave out --version to add version {nxt}")
        if version > 1 and not versions:
            raise InfaasError(f"model '{name}' is not registered, so it has no version to follow; register version 1 "
                              "first (leave out --version)")
        return version
    if not versions:
        return 1
    sha = digest()
    same = [v for v, record in versions.items() if record.artifact_sha256 == sha]
    if same:
        if replace:
            return same[-1]
        shown = "" if same[-1] == 1 else f" (version {same[-1]})"
        raise AlreadyExistsError(f"model '{name}'{shown} is already registered from this file; pass --replace to "
                                 "replace it and its variants, or choose another --name")
    if replace:
        return max(versions)
    latest = versions[max(versions)]
    if not store.variants(latest.name):  # a registration that stopped before its variants: finish it first
        raise AlreadyExistsError(f"model '{latest.name}' is registered from another file and was never completed; "
                                 f"pass --replace to replace it, or --version {max(versions) + 1} to add a version "
                                 "beside it")
    return max(versions) + 1


def _check_same_signature(previous: ModelRecord, sig, name: str, version: int) -> None:
    """A new version takes the inputs and gives the outputs its model's other versions do: queries by model name
    move between versions in a roll-out, and none may fail for it."""
    def tensors(specs) -> list[tuple]:  # dynamic dimensions compare equal, whatever the exporter named them
        rows = [(s["name"], s["dtype"], s["shape"]) if isinstance(s, dict) else (s.name, s.dtype, s.shape)
                for s in specs]
        return [(n, d, tuple(x if isinstance(x, int) else None for x in shape or ())) for n, d, shape in rows]

    old_in, new_in = tensors(previous.inputs), tensors(sig.inputs)
    old_out = [t[:2] for t in tensors(previous.outputs)]
    new_out = [t[:2] for t in tensors(sig.outputs)]
    if old_in != new_in or old_out != new_out:
        which = "inputs" if old_in != new_in else "outputs"
        have = old_in if which == "inputs" else old_out
        got = new_in if which == "inputs" else new_out
        raise InfaasError(f"version {version} of model '{name}' must have the {which} of its other versions "
                          f"({have}), not {got}, so that a roll-out between them fails no query; register it under "
                          "another --name")


def register_model(home: InfaasHome, path: str | Path, name: str, task: str | None = None,
                   dataset: str | None = None, validation: str | Path | None = None, accuracy: float | None = None,
                   replace: bool = False, cache_mib: int | None = None, version: int | None = None) -> ModelRecord:
    """Validate everything first, then write the artifacts and the model record in one transaction.

    `version` (default: 1 for a new model, the next for an existing one, see `registration_target`) is stored as
    its own record (`name` for version 1, `name@vV` after it, policy/versions.py); a later version keeps the task,
    dataset and signature of the model (task and dataset default to the model's). `cache_mib` is the master's
    prediction cache for this model (0: never cached); None leaves it to the master's
    `master.prediction_cache_mib` (a later version inherits its model's).

    The file is read and hashed once, as it is copied into the artifact store: where the next version's check
    needs its digest, or else after validation. A refused registration takes its copy out again (unless some
    record uses that very file).
    """
    stored: list[str] = []  # the model file's sha256, once it is in the artifact store
    try:
        return _register(home, Path(path), stored, name, task, dataset, validation, accuracy, replace, cache_mib,
                         version)
    except BaseException:
        if stored:
            home.artifacts.collect_garbage(referenced_artifacts(home.store.models(), home.store.variants()), stored)
        raise


def _register(home: InfaasHome, path: Path, stored: list[str], name: str, task: str | None, dataset: str | None,
              validation: str | Path | None, accuracy: float | None, replace: bool, cache_mib: int | None,
              version: int | None) -> ModelRecord:
    """register_model's work; `stored` receives the model file's sha256 as soon as it is copied in."""
    def put_model() -> str:
        if not stored:
            stored.append(home.artifacts.put_file(path))
        return stored[0]

    def digest() -> str | None:
        try:
            return put_model()
        except OSError:
            return None  # inspect_model reports the unreadable file

    check_name("model name", name)
    check_cache_mib(cache_mib)
    version = registration_target(home.store, digest, name, version, replace)
    versions = model_versions(home.store, name)
    others = {v: r for v, r in versions.items() if v != version}
    previous = others[max(others)] if others else None
    if previous is not None:
        task, dataset = task or previous.task, dataset or previous.dataset
        if (task, dataset) != (previous.task, previous.dataset):
            raise InfaasError(f"model '{name}' is for task {previous.task} on dataset {previous.dataset}; a version "
                              f"of it cannot be for {task} on {dataset} — register it under another --name")
        if cache_mib is None:
            cache_mib = previous.cache_mib
    if task is None or dataset is None:
        raise InfaasError(f"model '{name}' is new: pass --task and --dataset (e.g. --task digit-classification "
                          "--dataset digits)")
    check_name("task", task)
    check_name("dataset", dataset)
    record_name = version_id(name, version)
    existing = versions.get(version)
    if accuracy is not None and validation is not None:
        raise InfaasError("--accuracy is for models without a validation set; drop it — accuracy is "
                          "measured on --validation")
    if accuracy is not None and not 0.0 < accuracy <= 1.0:
        raise InfaasError(f"--accuracy {accuracy} is out of range; give a fraction in (0, 1], e.g. 0.97")
    sig = inspect_model(path)
    if previous is not None:
        _check_same_signature(previous, sig, name, version)

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

    model_sha = put_model()
    val_sha = home.artifacts.put_file(validation) if validation is not None else None
    record = ModelRecord(
        name=record_name, task=task, dataset=dataset, artifact_sha256=model_sha, source_file=path.name,
        size_bytes=path.stat().st_size, inputs=[vars(s) for s in sig.inputs],
        outputs=[vars(s) for s in sig.outputs], batch_dim=sig.batch_dim, max_batch=sig.max_batch,
        opset=sig.opset, producer=sig.producer, accuracy=measured, accuracy_metric=metric,
        validation_sha256=val_sha, validation_samples=samples, registered_at=time.time(), cache_mib=cache_mib)
    with home.store.transaction() as txn:
        if existing is not None:
            for v in home.store.variants(record_name):
                txn.delete(VariantRecord.table, v.key)
            for p in home.store.profiles(record_name):
                txn.delete(ProfileRecord.table, p.key)
        txn.put(ArtifactRecord(model_sha, path.stat().st_size, "model", path.name))
        if val_sha is not None:
            txn.put(ArtifactRecord(val_sha, Path(validation).stat().st_size, "validation", Path(validation).name))
        txn.put(record)
    return record
