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

import functools
import gc
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from infaas_cli import config
from infaas_cli.backends import backend as backend_named, pads_to_max_batch
from infaas_cli.errors import InfaasError
from infaas_cli.toolkit import search
from infaas_cli.toolkit.generate import load_model_validation
from infaas_cli.toolkit.hardware import hardware_id, host_hardware
from infaas_cli.catalog.home import InfaasHome
from infaas_cli.toolkit.modelio import synthetic_inputs, take_batch
from infaas_cli.catalog.records import BatchProfile, ModelRecord, ProfileRecord, VariantRecord, is_predicted, profile_key


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
    searched: list[str] = field(default_factory=list)  # models searched (`mode` search or auto) rather than measured
    predicted: int = 0  # (configuration, batch size) pairs predicted by the search


#: `profile_models` modes: measure every cell, search (measure a few, predict the rest), or search large spaces.
PROFILE_MODES = ("exhaustive", "search", "auto")


def batch_sizes_for(variant: VariantRecord, model: ModelRecord, requested: Sequence[int]) -> list[int]:
    if model.batch_dim != "dynamic" or pads_to_max_batch(variant.backend, model.batch_dim):
        return [variant.max_batch]  # it only ever runs at its max batch (padded), or one sample at a time
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
                   on_progress: Callable[[str], None] | None = None, mode: str = "exhaustive",
                   fraction: float = search.DEFAULT_FRACTION,
                   threshold: int = search.SEARCH_THRESHOLD,
                   search_measure: Callable[..., tuple[float, int, dict[int, BatchProfile]]] | None = None,
                   ) -> ProfileReport:
    """Profile every variant of the named models that this host can run; stored profiles are kept unless force.

    `mode` "exhaustive" measures every (configuration, batch size) cell; "search" measures `fraction` of a model's
    cells and predicts the rest (`toolkit.search`); "auto" searches models with more than `threshold` cells.
    `search_measure` (the signature of `_measure_isolated`) replaces the search's measurements: benchmarks/search.py
    replays a brute-force table through it, to judge the search's choices apart from run-to-run noise.
    """
    if mode not in PROFILE_MODES:
        raise InfaasError(f"profile mode must be one of {', '.join(PROFILE_MODES)}, not {mode!r}")
    settings = settings or MeasureSettings()
    hw = host_hardware()
    report = ProfileReport()
    plans = []
    searched = []
    for name in names:
        model = home.store.model(name)
        space = _space(home, model, batch_sizes) if mode != "exhaustive" else None
        if space is not None and (mode == "search" or len(space[0].cells) > threshold):
            searched.append((model, space))
            continue
        for key, members in _configurations(home, model, batch_sizes, force, report).items():
            plans.append((model, key, members))
    if on_plan:
        on_plan(sum(len(_needed(members)) for _, _, members in plans)
                + sum(search.budget_for(space, fraction) for _, (space, _) in searched))
    data_cache: dict[str, dict[str, np.ndarray]] = {}
    for model, (backend_name, sha, recipe, threads), members in plans:
        backend = backend_named(backend_name)
        hw_id = hardware_id(backend.hardware, hw)
        data = _model_data(home, model, data_cache)
        artifact = home.artifacts.verify(sha)
        needed = _needed(members)

        def store(load_ms: float, peak: int, per_batch: dict[int, BatchProfile]) -> None:
            report.measurements += len(per_batch)
            _store_group(home, model, hw_id, hw, members, load_ms, peak, per_batch, force, report)

        _measure_guarded(functools.partial(_measure_isolated, backend, artifact, recipe, threads, model, data, needed,
                                           settings),
                         f"{model.name} {backend_name}-{recipe}-t{threads}", needed, store, report, on_progress)
    for model, (space, members) in searched:  # after the measured ones: what they measured warms the search
        _search_model(home, model, space, members, force, settings, fraction, report, data_cache, on_progress,
                      search_measure or _measure_isolated)
    return report


def _measure_guarded(measure: Callable[[dict[str, Any]], tuple[float, int, dict[int, BatchProfile]]], label: str,
                     sizes: Sequence[int], store: Callable[[float, int, dict[int, BatchProfile]], None],
                     report: ProfileReport, on_progress: Callable[[str], None] | None) -> None:
    """One configuration's measurement, `measure(partial)` (`_measure_isolated` with its other arguments bound),
    handed to `store(load ms, peak bytes, {batch size: BatchProfile})`. A failure is recorded in `report` and
    the caller goes on (one broken variant must not stop the others), after storing the batch sizes measured
    before it, so that a resumed `profile` measures only those still missing; Ctrl-C stores them too and stops."""
    partial: dict[str, Any] = {}  # the batch sizes measured so far, kept when the rest fails or is interrupted
    try:
        load_ms, peak, per_batch = measure(partial)
    except BaseException as exc:
        if partial.get("batches"):
            store(partial["load_ms"], partial["peak"], partial["batches"])
        if not isinstance(exc, Exception):
            raise
        report.failed.append((label, " ".join(str(exc).split())[:300]))
        return
    finally:
        if on_progress:
            for b in sizes:
                on_progress(f"{label} b{b}")
    store(load_ms, peak, per_batch)


def _store_group(home: InfaasHome, model: ModelRecord, hw_id: str, hw: dict[str, Any], members, load_ms: float,
                 peak_bytes: int, per_batch: dict[int, BatchProfile], force: bool, report: ProfileReport) -> None:
    """Store one configuration's measurements in each member variant's profile (the batch sizes it allows)."""
    with home.store.transaction() as txn:
        for variant, stored, wanted in members:
            measured = [b for b in wanted if b in per_batch]
            if not measured:
                continue
            batches = {} if (stored is None or force) else dict(stored.batches)
            for b in measured:
                batches[str(b)] = vars(per_batch[b])
            txn.put_profile(ProfileRecord(variant=variant.name, model=model.name, hardware_id=hw_id, hardware=hw,
                                          load_time_ms=load_ms, peak_memory_bytes=peak_bytes,
                                          batches=batches, measured_at=time.time()))
            report.profiled.append(variant.name)


def _needed(members) -> list[int]:
    return sorted({b for _, _, wanted in members for b in wanted})


def _model_data(home: InfaasHome, model: ModelRecord, cache: dict[str, dict[str, np.ndarray]]):
    """The inputs a model is timed on: its validation inputs, else synthetic ones (cached per model)."""
    if model.name not in cache:
        vset = load_model_validation(home, model)
        cache[model.name] = vset.inputs if vset else synthetic_inputs(model.input_specs(), model.batch_dim, 64)
    return cache[model.name]


# -- configuration search (`profile --search`): toolkit.search chooses and predicts, this measures and stores ----

def _space(home: InfaasHome, model: ModelRecord, batch_sizes):
    """(the model's search Space, its configurations as `_configurations` groups them, a report of what cannot
    run here); None when nothing of it can run here."""
    scratch = ProfileReport()
    groups = _configurations(home, model, batch_sizes, True, scratch)
    if not groups:
        return None
    space = search.Space({(k[0], k[2], k[3]): tuple(_needed(members)) for k, members in groups.items()},
                         {(k[0], k[2], k[3]): members[0][0].accuracy for k, members in groups.items()})
    return space, (groups, scratch)


def _library(home: InfaasHome, model: str, hw_ids: set[str]):
    """Other models' profiles on these hardware ids as search cells: (measured p50s, predicted p50s) per model."""
    group_of = {v.name: (v.backend, v.recipe, v.threads) for v in home.store.variants() if v.model != model}
    measured: dict[str, dict[search.Cell, float]] = defaultdict(dict)
    predicted: dict[str, dict[search.Cell, float]] = defaultdict(dict)
    for p in home.store.profiles():
        g = group_of.get(p.variant)
        if g is None or p.hardware_id not in hw_ids:
            continue
        for b, stats in p.batches.items():
            target = predicted if is_predicted(stats) else measured
            if stats.get("p50_ms", 0) > 0:
                target[p.model][(g, int(b))] = float(stats["p50_ms"])
    return dict(measured), dict(predicted)


def _search_model(home: InfaasHome, model: ModelRecord, space: search.Space, configured, force: bool,
                  settings: MeasureSettings, fraction: float, report: ProfileReport, data_cache,
                  on_progress: Callable[[str], None] | None, measure_group: Callable | None = None) -> None:
    """Measure the cells the search asks for (each configuration's in one session, stored as soon as measured, so
    an interrupted search resumes where it stopped), then store every other cell predicted. `measure_group` (the
    signature of `_measure_isolated`, which it defaults to) takes the measurements: a benchmark replays a table."""
    groups, scratch = configured
    report.not_runnable.extend(scratch.not_runnable)
    hw = host_hardware()
    key_of = {(k[0], k[2], k[3]): k for k in groups}
    hw_id = {g: hardware_id(backend_named(g[0]).hardware, hw) for g in key_of}
    measured: dict[search.Cell, dict[str, Any]] = {}
    stored_cells = set()
    for g, k in key_of.items():
        for _, stored, wanted in groups[k]:
            for b in wanted if stored is not None and not force else ():
                stats = stored.batches.get(str(b))
                if stats is not None:
                    stored_cells.add((g, b))
                    if not is_predicted(stats):
                        measured[(g, b)] = stats
    if not force and all(c in stored_cells for c in space.cells):
        report.skipped_stored += sum(len(members) for members in groups.values())
        return
    loads: dict[search.Group, tuple[float, int]] = {}

    def store(g: search.Group, load_ms: float, peak: int, per_batch: dict[int, BatchProfile]) -> None:
        report.measurements += len(per_batch)
        loads[g] = (load_ms, peak)
        for b, profile in per_batch.items():
            measured[(g, b)] = vars(profile)
        members = [(v, home.store.get(ProfileRecord, profile_key(v.name, hw_id[g])), wanted)
                   for v, _, wanted in groups[key_of[g]]]
        _store_group(home, model, hw_id[g], hw, members, load_ms, peak, per_batch, False, report)

    def measure(cells: list[search.Cell]) -> dict[search.Cell, float]:
        by_group: dict[search.Group, list[int]] = defaultdict(list)
        for g, b in cells:
            by_group[g].append(b)
        for g, sizes in by_group.items():
            _measure_guarded(  # the artifact's check and the inputs inside the guard: their failure is g's alone
                lambda partial: (measure_group or _measure_isolated)(
                    backend_named(g[0]), home.artifacts.verify(key_of[g][1]), g[1], g[2], model,
                    _model_data(home, model, data_cache), sorted(sizes), settings, partial),
                f"{model.name} {g[0]}-{g[1]}-t{g[2]}", sizes, functools.partial(store, g), report, on_progress)
        return {c: float(measured[c]["p50_ms"]) for c in cells if c in measured}

    library, library_predicted = _library(home, model.name, set(hw_id.values()))
    prediction = search.run_search(space, library, search.budget_for(space, fraction), measure,
                                   {c: float(stats["p50_ms"]) for c, stats in measured.items()}, library_predicted)
    _store_predicted(home, model, groups, key_of, hw_id, hw, prediction, measured, loads, report)


def _store_predicted(home: InfaasHome, model: ModelRecord, groups, key_of, hw_id, hw, prediction: search.Prediction,
                     measured: dict[search.Cell, dict[str, Any]], loads, report: ProfileReport) -> None:
    """Every cell not measured, stored predicted (`measured: false`, its `predicted_error`); a configuration never
    measured borrows the load time and memory of its nearest measured relative (same backend and recipe first)."""
    tails = search.tail_ratios(measured.values())
    report.searched.append(model.name)
    report.predicted += len(prediction.error)
    with home.store.transaction() as txn:
        for g, k in key_of.items():
            for variant, _, wanted in groups[k]:
                key = profile_key(variant.name, hw_id[g])
                stored = home.store.get(ProfileRecord, key)
                batches = dict(stored.batches) if stored is not None else {}
                for b in wanted:
                    if (g, b) in measured or (g, b) not in prediction.error:
                        continue
                    p50 = prediction.ms[(g, b)]
                    mean = p50 * tails["mean_ms"]
                    batches[str(b)] = vars(BatchProfile(
                        p50_ms=p50, p95_ms=p50 * tails["p95_ms"], p99_ms=p50 * tails["p99_ms"], mean_ms=mean,
                        throughput_qps=b / (mean / 1e3), runs=0, measured=False,
                        predicted_error=prediction.error[(g, b)]))
                if stored is not None:
                    load_ms, peak = stored.load_time_ms, stored.peak_memory_bytes
                elif loads:
                    near = min(loads, key=lambda h: (h[:2] != g[:2], h[0] != g[0], abs(h[2] - g[2]), h))
                    load_ms, peak = loads[near]
                else:
                    continue  # nothing measured at all (every measurement failed): nothing to predict from
                txn.put_profile(ProfileRecord(variant=variant.name, model=model.name, hardware_id=hw_id[g],
                                              hardware=hw, load_time_ms=load_ms, peak_memory_bytes=peak,
                                              batches=batches, measured_at=time.time()))


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
        if stored is not None and not force:  # a predicted figure (`--search`) is not a measurement: measure it
            wanted = [b for b in wanted if str(b) not in stored.batches or is_predicted(stored.batches[str(b)])]
        if not wanted:
            report.skipped_stored += 1
            continue
        groups[(variant.backend, variant.artifact_sha256, variant.recipe, variant.threads)].append(
            (variant, stored, wanted))
    return groups


def _measure_isolated(backend, artifact, recipe: str, threads: int, model: ModelRecord, data,
                      batch_sizes: list[int], settings: MeasureSettings, partial: dict[str, Any] | None = None):
    """Run measure_session in a child process (see the module docstring); in-process where none can be started.

    `partial` receives each batch size as soon as it is measured ({"load_ms", "peak", "batches"}), so that what
    was measured survives an interrupt or a later failure.

    The child comes from a fork server (a single-threaded process started once, that forks the children), not
    from forking this process: forking a process that runs threads — ZeroMQ's, gRPC's, ONNX Runtime's, as a
    test session or a daemon does — can copy a lock some thread held and hang the child on it.
    """
    partial = {} if partial is None else partial

    def measured(load_ms: float, peak: int, batch: int, profile: BatchProfile) -> None:
        partial.update(load_ms=load_ms, peak=peak)
        partial.setdefault("batches", {})[batch] = profile

    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "fork" if "fork" in methods else None
    if method is None:
        return measure_session(backend, artifact, recipe, threads, model.batch_dim, data, batch_sizes, settings,
                               on_batch=measured)
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([__name__])  # children start with this module (numpy, the backends) imported
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure_child, daemon=True,
                       args=(child_end, backend, artifact, recipe, threads, model.batch_dim, data, batch_sizes,
                             settings))
    proc.start()
    child_end.close()
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    try:
        while True:
            if not parent_end.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"measuring took longer than {_CHILD_TIMEOUT_S} s")
            status, payload = parent_end.recv()
            if status != "batch":
                break
            load_ms, peak, batch, profile = payload
            measured(load_ms, peak, batch, BatchProfile(**profile))
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
    def measured(load_ms: float, peak: int, batch: int, profile: BatchProfile) -> None:
        conn.send(("batch", (load_ms, peak, batch, vars(profile))))

    try:
        load_ms, peak, per_batch = measure_session(*args, on_batch=measured)
        conn.send(("ok", (load_ms, peak, {b: vars(p) for b, p in per_batch.items()})))
    except BaseException as exc:  # reported to the parent, which records the failure
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class MeasureInterrupted(InfaasError):
    """A measurement stopped between batch sizes because `interrupted` gave a reason: try later."""

    code = "overloaded"


def measure_session(backend, artifact, recipe: str, threads: int, batch_dim: str, data, batch_sizes: list[int],
                    settings: MeasureSettings, interrupted: Callable[[], str | None] | None = None,
                    on_batch: Callable[[float, int, int, BatchProfile], None] | None = None):
    """Open one session of an artifact, then time it at each batch size: (load ms, peak memory bytes,
    {batch size: BatchProfile}). The profiler runs it in a child; a worker's re-profile runs it in-process.

    `interrupted` is asked before each batch size; a reason it returns stops the measurement with
    MeasureInterrupted (a worker yields to queries that arrive meanwhile). `on_batch(load ms, peak memory bytes
    so far, batch size, its BatchProfile)` is told of each batch size as soon as it is measured.
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
            if on_batch is not None:
                on_batch(load_ms, max(0, peak - rss_before), b, per_batch[b])
    finally:
        runner.close()
    return load_ms, max(0, peak - rss_before), per_batch
