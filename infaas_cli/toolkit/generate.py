"""Variant generation: every applicable recipe of every backend on this host, each variant's accuracy measured."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infaas_cli.backends import BACKENDS, Backend, BuildInput, Recipe, Skipped
from infaas_cli.backends.ort_cpu import run_original
from infaas_cli.config import MAX_BATCH_CHOICES, host_cores
from infaas_cli.errors import InfaasError
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.modelio import ValidationSet, agreement, load_validation, run_dataset, top1_accuracy
from infaas_cli.catalog.records import ArtifactRecord, ModelRecord, ProfileRecord, VariantRecord


def variant_name(model: str, backend: str, recipe: str, threads: int, max_batch: int) -> str:
    """MODEL/BACKEND-RECIPE-tTHREADS-bMAXBATCH, e.g. digits-cnn-l/ort-cpu-int8s-t2-b8."""
    return f"{model}/{backend}-{recipe}-t{threads}-b{max_batch}"


def max_batch_choices(model: ModelRecord) -> list[int]:
    if model.batch_dim == "dynamic":
        return [b for b in MAX_BATCH_CHOICES if b <= model.max_batch]
    return [model.max_batch]  # fixed batch B: only B; no batch dimension: 1


@dataclass
class GenerateReport:
    model: str
    variants: list[VariantRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)  # (backend, reason)


def unfinished_registration(home: InfaasHome, path: str | Path, name: str, task: str, dataset: str,
                            validation: str | Path | None = None) -> ModelRecord | None:
    """The model record an interrupted `register` of this very file (and validation set) left under `name`:
    written, but its variants never generated, so that registering it again resumes with the generation."""
    from infaas_cli.catalog.artifacts import sha256_file

    existing = home.store.get(ModelRecord, name)
    if existing is None or (existing.task, existing.dataset) != (task, dataset) or home.store.variants(name):
        return None
    try:
        same = sha256_file(path) == existing.artifact_sha256 and \
            (None if validation is None else sha256_file(validation)) == existing.validation_sha256
    except OSError:
        return None
    return existing if same else None


def finish_hint(name: str) -> str:
    """What finishes a model whose registration stopped before its variants were generated."""
    return f"its variants were never generated (an interrupted register?): `infaas generate {name}` finishes it"


def load_model_validation(home: InfaasHome, model: ModelRecord) -> ValidationSet | None:
    if model.validation_sha256 is None:
        return None
    path = home.artifacts.verify(model.validation_sha256)
    return load_validation(path, model.input_specs(), model.batch_dim)


def measure_accuracy(backend: Backend, artifact: Path, recipe: str, model: ModelRecord,
                     vset: ValidationSet | None, reference: list[Any] | None) -> tuple[float | None, str]:
    """Accuracy of one variant artifact on the model's validation set (labels, else agreement)."""
    if vset is None:
        return (model.accuracy, "declared") if recipe.startswith("fp32") else (None, "unmeasured")
    runner = backend.load(artifact, recipe, 1)
    try:
        outputs = run_dataset(runner.run, vset.inputs, model.batch_dim, model.max_batch)
    finally:
        runner.close()
    if vset.labels is not None:
        return top1_accuracy(outputs, model.output_specs(), vset.labels), "top1"
    if reference is None:  # the caller computes it whenever the validation set has no labels
        raise InfaasError(f"{model.name}: no labels and no fp32 reference outputs to measure agreement against")
    return agreement(outputs, reference), "agreement"


def generate_variants(home: InfaasHome, name: str,
                      on_step: Callable[[str], None] | None = None) -> GenerateReport:
    """Build every variant this host can build for a registered model and store them in one transaction."""
    model = home.store.model(name)
    registered = home.artifacts.verify(model.artifact_sha256)
    vset = load_model_validation(home, model)
    reference = None
    if vset is not None and vset.labels is None:
        reference = run_original(registered, vset.inputs, model.batch_dim, model.max_batch)
    report = GenerateReport(model=name)
    artifacts: list[ArtifactRecord] = []
    cores = host_cores()
    with tempfile.TemporaryDirectory(prefix="infaas-generate-") as tmp:
        source = normalise_graph(registered, Path(tmp) / "source.onnx")
        for backend in BACKENDS:
            avail = backend.availability()
            if not avail.available:
                report.unavailable.append((backend.name, avail.reason))
                continue
            work = Path(tmp) / backend.name
            work.mkdir()
            build = BuildInput(model, source, vset.inputs if vset else None, work)
            recipes, skipped = backend.recipes(build)
            report.skipped.extend(skipped)
            for recipe in recipes:
                if on_step:
                    on_step(f"{name}: {backend.name} {recipe.name}")
                built = _build_one(backend, recipe, build, vset, reference, report)
                if built is None:
                    continue
                path, accuracy, metric, build_ms = built
                sha = home.artifacts.put_file(path)
                artifacts.append(ArtifactRecord(sha, path.stat().st_size, "variant",
                                                f"{name}/{backend.name}-{recipe.name}"))
                now = time.time()
                for threads in backend.thread_counts(cores):
                    for max_batch in max_batch_choices(model):
                        report.variants.append(VariantRecord(
                            name=variant_name(name, backend.name, recipe.name, threads, max_batch),
                            model=name, backend=backend.name, hardware=backend.hardware, recipe=recipe.name,
                            precision=recipe.precision, threads=threads, max_batch=max_batch,
                            artifact_sha256=sha, accuracy=accuracy, accuracy_metric=metric,
                            build_time_ms=build_ms, created_at=now))
    _store(home, model, report, artifacts)
    return report


def normalise_graph(path: Path, out: Path) -> Path:
    """The graph the recipes start from: initialisers no longer double as graph inputs.

    Old exporters (IR < 4) list every initialiser as an input too; ONNX Runtime then treats them
    as overridable inputs, and a saved optimised graph may keep them as required ones.
    """
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    overridable = [i for i in model.graph.input if i.name in inits]
    if not overridable:
        return path
    for value in overridable:
        model.graph.input.remove(value)
    model.ir_version = max(model.ir_version, 4)
    onnx.save(model, str(out))
    return out


def _build_one(backend: Backend, recipe: Recipe, build: BuildInput, vset: ValidationSet | None,
               reference: list[Any] | None, report: GenerateReport):
    t0 = time.perf_counter()
    try:
        path = backend.build(recipe, build)
        build_ms = (time.perf_counter() - t0) * 1e3
        accuracy, metric = measure_accuracy(backend, path, recipe.name, build.model, vset, reference)
    except Exception as exc:  # a recipe that cannot apply is skipped with its reason, never fatal
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        report.skipped.append(Skipped(backend.name, recipe.name, f"build or check failed: {reason}"))
        return None
    return path, accuracy, metric, build_ms


def _store(home: InfaasHome, model: ModelRecord, report: GenerateReport, artifacts: list[ArtifactRecord]) -> None:
    """Replace the model's variants; keep a profile only where its variant kept the same artifact."""
    new = {v.name: v for v in report.variants}
    old = {v.name: v for v in home.store.variants(model.name)}
    with home.store.transaction() as txn:
        for art in artifacts:
            txn.put(art)
        for v in report.variants:
            txn.put(v)
        for vname, v in old.items():
            if vname not in new:
                txn.delete(VariantRecord.table, vname)
        for p in home.store.profiles(model.name):
            kept = new.get(p.variant)
            if kept is None or old.get(p.variant) is None or old[p.variant].artifact_sha256 != kept.artifact_sha256:
                txn.delete(ProfileRecord.table, p.key)
