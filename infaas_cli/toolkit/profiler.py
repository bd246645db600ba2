"""Profiling: load time, peak memory and the latency distribution per batch size of every runnable variant.

Variants that differ only in their max batch run the same artifact with the same session
options, so they share one measurement: the profiler measures each (backend, artifact, recipe,
threads) configuration once, at every requested batch size up to the largest max batch among
them, and gives each variant the batch sizes it allows.

Each configuration is measured in a child process (from a fork server), so that its load is cold for the
session, its memory delta is not hidden by memory an earlier session freed, and a variant that
crashes the runtime costs only its own profile.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import psutil

from infaas_cli import config
from infaas_cli.backends import backend as backend_named
from infaas_cli.errors import InfaasError
from infaas_cli.toolkit.generate import load_model_validation
from infaas_cli.toolkit.hardware import hardware_id, host_hardware
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.modelio import synthetic_inputs, take_batch
from infaas_cli.catalog.records import BatchProfile, ModelRecord, ProfileRecord, VariantRecord, profile_key


@dataclass
class MeasureSettings:
    warmup_runs: int = config.PROFILE_WARMUP_RUNS
    budget_ms: float = config.PROFILE_BUDGET_MS
    min_runs: int = config.PROFILE_MIN_RUNS
    max_runs: int = config.PROFILE_MAX_RUNS


@dataclass
class ProfileReport:
    profiled: list[str] = field(default_factory=list)  # variant names with new measurements
    skipped_stored: int = 0  # variants whose requested batch sizes were all stored already
    not_runnable: list[tuple[str, str]] = field(default_factory=list)  # (variant, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (configuration, error)
    measurements: int = 0  # (configuration, batch size) pairs measured


def batch_sizes_for(variant: VariantRecord, model: ModelRecord, requested: Sequence[int]) -> list[int]:
    if model.batch_dim != "dynamic":
        return [variant.max_batch]  # a fixed-batch model only ever runs at its batch size
    return sorted({b for b in requested if 1 <= b <= variant.max_batch})


def latency_stats(samples_ms: Sequence[float], batch_size: int) -> BatchProfile:
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    mean = float(arr.mean())
    return BatchProfile(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), mean_ms=mean,
                        throughput_qps=batch_size / (mean / 1e3) if mean > 0 else 0.0, runs=int(arr.size))


def time_runs(run: Callable[[], object], settings: MeasureSettings) -> list[float]:
    """Warm up, then time runs until the budget is spent (within the min/max run counts)."""
    for _ in range(settings.warmup_runs):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + settings.budget_ms / 1e3
    while len(samples) < settings.max_runs and (len(samples) < settings.min_runs or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def profile_models(home: InfaasHome, names: Sequence[str], batch_sizes: Sequence[int] = config.DEFAULT_PROFILE_BATCH_SIZES,
                   force: bool = False, settings: MeasureSettings | None = None,
                   on_plan: Callable[[int], None] | None = None,
                   on_progress: Callable[[str], None] | None = None) -> ProfileReport:
    """Profile every variant of the named models that this host can run; stored profiles are kept unless force."""
    settings = settings or MeasureSettings()
    hw = host_hardware()
    report = ProfileReport()
    plans = []
    for name in names:
        model = home.store.model(name)
        for key, members in _configurations(home, model, batch_sizes, force, report).items():
            plans.append((model, key, members))
    if on_plan:
        on_plan(sum(len(_needed(members)) for _, _, members in plans))
    data_cache: dict[str, dict[str, np.ndarray]] = {}
    for model, (backend_name, sha, recipe, threads), members in plans:
        backend = backend_named(backend_name)
        hw_id = hardware_id(backend.hardware, hw)
        if model.name not in data_cache:
            vset = load_model_validation(home, model)
            data_cache[model.name] = vset.inputs if vset else synthetic_inputs(
                model.input_specs(), model.batch_dim, 64)
        data = data_cache[model.name]
        artifact = home.artifacts.verify(sha)
        needed = _needed(members)
        label = f"{model.name} {backend_name}-{recipe}-t{threads}"
        try:
            load_ms, peak_bytes, per_batch = _measure_isolated(
                backend, artifact, recipe, threads, model, data, needed, settings)
        except Exception as exc:  # one broken variant must not stop the others
            report.failed.append((label, " ".join(str(exc).split())[:300]))
            continue
        finally:
            if on_progress:
                for b in needed:
                    on_progress(f"{label} b{b}")
        report.measurements += len(needed)
        with home.store.transaction() as txn:
            for variant, stored, wanted in members:
                batches = {} if (stored is None or force) else dict(stored.batches)
                for b in wanted:
                    batches[str(b)] = vars(per_batch[b])
                txn.put_profile(ProfileRecord(variant=variant.name, model=model.name, hardware_id=hw_id, hardware=hw,
                                              load_time_ms=load_ms, peak_memory_bytes=peak_bytes,
                                              batches=batches, measured_at=time.time()))
                report.profiled.append(variant.name)
    return report


def _needed(members) -> list[int]:
    return sorted({b for _, _, wanted in members for b in wanted})


def _configurations(home: InfaasHome, model: ModelRecord, batch_sizes, force: bool, report: ProfileReport):
    """Group runnable variants by what they execute; keep, per variant, the batch sizes still to measure."""
    hw = host_hardware()
    groups: dict[tuple, list] = defaultdict(list)
    available: dict[str, tuple[bool, str]] = {}
    for variant in home.store.variants(model.name):
        if variant.backend not in available:
            try:
                avail = backend_named(variant.backend).availability()
                available[variant.backend] = (avail.available, avail.reason)
            except Exception as exc:
                available[variant.backend] = (False, str(exc))
        ok, why = available[variant.backend]
        if not ok:
            report.not_runnable.append((variant.name, f"{variant.backend} not available on this host: {why}"))
            continue
        hw_id = hardware_id(backend_named(variant.backend).hardware, hw)
        stored = home.store.get(ProfileRecord, profile_key(variant.name, hw_id))
        wanted = batch_sizes_for(variant, model, batch_sizes)
        if stored is not None and not force:
            wanted = [b for b in wanted if str(b) not in stored.batches]
        if not wanted:
            report.skipped_stored += 1
            continue
        groups[(variant.backend, variant.artifact_sha256, variant.recipe, variant.threads)].append(
            (variant, stored, wanted))
    return groups


def _measure_isolated(backend, artifact, recipe: str, threads: int, model: ModelRecord, data,
                      batch_sizes: list[int], settings: MeasureSettings):
    """Run measure_session in a child process (see the module docstring); in-process where none can be started.

    The child comes from a fork server (a single-threaded process started once, that forks the children), not
    from forking this process: forking a process that runs threads — ZeroMQ's, gRPC's, ONNX Runtime's, as a
    test session or a daemon does — can copy a lock some thread held and hang the child on it.
    """
    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "fork" if "fork" in methods else None
    if method is None:
        return measure_session(backend, artifact, recipe, threads, model.batch_dim, data, batch_sizes, settings)
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])  # children start with this module (numpy, the backends) imported
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure_child, daemon=True,
                       args=(child_end, backend, artifact, recipe, threads, model.batch_dim, data, batch_sizes,
                             settings))
    proc.start()
    child_end.close()
    try:
        if not parent_end.poll(_CHILD_TIMEOUT_S):
            raise TimeoutError(f"measuring took longer than {_CHILD_TIMEOUT_S} s")
        status, payload = parent_end.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"the measuring process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent_end.close()
    if status != "ok":
        raise RuntimeError(payload)
    load_ms, peak, per_batch = payload
    return load_ms, peak, {int(b): BatchProfile(**p) for b, p in per_batch.items()}


_CHILD_TIMEOUT_S = 600


def _measure_child(conn, *args) -> None:
    try:
        load_ms, peak, per_batch = measure_session(*args)
        conn.send(("ok", (load_ms, peak, {b: vars(p) for b, p in per_batch.items()})))
    except BaseException as exc:  # reported to the parent, which records the failure
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class MeasureInterrupted(InfaasError):
    """A measurement stopped between batch sizes because `interrupted` gave a reason: try later."""

    code = "overloaded"


def measure_session(backend, artifact, recipe: str, threads: int, batch_dim: str, data, batch_sizes: list[int],
                    settings: MeasureSettings, interrupted: Callable[[], str | None] | None = None):
    """Open one session of an artifact, then time it at each batch size: (load ms, peak memory bytes,
    {batch size: BatchProfile}). The profiler runs it in a child; a worker's re-profile runs it in-process.

    `interrupted` is asked before each batch size; a reason it returns stops the measurement with
    MeasureInterrupted (a worker yields to queries that arrive meanwhile).
    """
    proc = psutil.Process()
    gc.collect()
    rss_before = proc.memory_info().rss

    def feeds_for(b: int):
        if batch_dim == "none":
            return {k: v[0] for k, v in data.items()}
        return take_batch(data, 0, b)

    first = feeds_for(batch_sizes[0])
    t0 = time.perf_counter()
    runner = backend.load(artifact, recipe, threads)
    runner.run(first)
    load_ms = (time.perf_counter() - t0) * 1e3
    peak = proc.memory_info().rss
    per_batch: dict[int, BatchProfile] = {}
    try:
        for b in batch_sizes:
            why = interrupted() if interrupted is not None else None
            if why:
                raise MeasureInterrupted(why)
            feeds = feeds_for(b)
            samples = time_runs(lambda: runner.run(feeds), settings)
            per_batch[b] = latency_stats(samples, b)
            peak = max(peak, proc.memory_info().rss)
    finally:
        runner.close()
    return load_ms, max(0, peak - rss_before), per_batch
