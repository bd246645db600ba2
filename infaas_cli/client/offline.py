"""Offline (batch) queries: a directory of inputs through spare capacity, throttled by online load, resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infaas_cli.client import Client, QueryFailed, load_input_file
from infaas_cli.config import MAX_BATCH_CHOICES
from infaas_cli.errors import InfaasError

#: Rows per query: offline files are split so every chunk fits the largest max batch.
CHUNK_ROWS = max(MAX_BATCH_CHOICES)
#: Worker CPU above which the offline window shrinks (online traffic needs the cores).
BUSY_CPU_PERCENT = 85.0


def next_window(window: int, online_pending: int, busiest_cpu_percent: float, max_in_flight: int) -> int:
    """Additive increase, multiplicative decrease of the offline in-flight window.

    Online queries waiting at the master, or a worker near saturation, halve the window (never
    below 1: the job still progresses); otherwise it grows by one up to max_in_flight.
    """
    if online_pending > 0 or busiest_cpu_percent >= BUSY_CPU_PERCENT:
        return max(1, window // 2)
    return min(max_in_flight, window + 1)


@dataclass
class OfflineReport:
    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0  # done by an earlier, interrupted run
    files_failed: list[tuple[str, str]] = field(default_factory=list)
    queries: int = 0
    variants: dict[str, int] = field(default_factory=dict)
    throttled: int = 0  # times the window shrank
    max_window: int = 0  # the most queries it let be in flight
    elapsed_s: float = 0.0


def _chunks(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    rows = next(iter(feeds.values())).shape[0] if feeds else 0
    return [{k: v[i:i + CHUNK_ROWS] for k, v in feeds.items()} for i in range(0, max(rows, 1), CHUNK_ROWS)]


def _write_atomic(path: Path, names: list[str], parts: list[list[Any]]) -> None:
    """Outputs of all chunks, concatenated per output; a temp file renamed so a crash leaves no half file."""
    arrays = {}
    for i, name in enumerate(names):
        pieces = [p[i] for p in parts]
        if isinstance(pieces[0], np.ndarray):
            arrays[name] = np.concatenate(pieces, axis=0)
        else:  # sequences of maps: rows of values in key order
            rows = [row for piece in pieces for row in piece]
            arrays[name] = np.asarray([[row[k] for k in sorted(row)] for row in rows])
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def run_offline(client: Client, model: str, input_dir: Path, output_dir: Path, *, min_accuracy: float | None = None,
                max_in_flight: int = 8, status_interval_s: float = 0.5,
                on_progress: Callable[[str], None] | None = None,
                status_fn: Callable[[], dict[str, Any]] | None = None) -> OfflineReport:
    """Send every .npy/.npz in input_dir as queries for `model`; write OUTPUT_DIR/<stem>.npz per file.

    Files whose output exists are skipped, so an interrupted run resumes where it stopped.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InfaasError(f"--input-dir {input_dir} is not a directory of .npy/.npz files")
    output_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in input_dir.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise InfaasError(f"{input_dir} holds no .npy or .npz files")
    status_fn = status_fn or client.status
    report = OfflineReport(files_total=len(files))
    started = time.monotonic()
    todo: list[tuple[Path, list[dict[str, np.ndarray]]]] = []
    for path in files:
        if (output_dir / f"{path.stem}.npz").exists():
            report.files_skipped += 1
            if on_progress:
                on_progress(f"{path.name} (done earlier)")
            continue
        todo.append((path, []))
    window, next_status = 1, 0.0
    in_flight: dict[str, tuple[int, int]] = {}  # request id -> (file index, chunk index)
    results: dict[int, dict[int, Any]] = {}
    names: dict[int, list[str]] = {}
    chunk_counts: dict[int, int] = {}
    queue: list[tuple[int, int, dict[str, np.ndarray]]] = []
    for fi, (path, _) in enumerate(todo):
        try:
            chunks = _chunks(load_input_file(path))
        except InfaasError as exc:
            report.files_failed.append((path.name, str(exc)))
            continue
        chunk_counts[fi] = len(chunks)
        queue.extend((fi, ci, c) for ci, c in enumerate(chunks))
    queue.reverse()  # pop() from the end keeps file order
    failed_files: set[int] = set()
    while queue or in_flight:
        now = time.monotonic()
        if now >= next_status:
            st = status_fn()
            online = max(0, st["master"]["pending"] - len(in_flight))
            busiest = max((w.get("cpu_percent") or 0.0 for w in st["workers"] if w.get("alive")), default=0.0)
            new = next_window(window, online, busiest, max_in_flight)
            report.throttled += new < window
            window, next_status = new, now + status_interval_s
            report.max_window = max(report.max_window, window)
        while queue and len(in_flight) < window:
            fi, ci, chunk = queue.pop()
            if fi in failed_files:
                continue
            rid = client.submit(chunk, model=model, min_accuracy=min_accuracy, objective="cost")
            in_flight[rid] = (fi, ci)
            report.queries += 1
        if not in_flight:
            continue
        rid = next(iter(in_flight))
        answer = client.gather([rid])[rid]
        fi, ci = in_flight.pop(rid)
        if isinstance(answer, QueryFailed):
            if fi not in failed_files:
                failed_files.add(fi)
                report.files_failed.append((todo[fi][0].name, f"{answer.code}: {answer}"))
            continue
        report.variants[answer.variant] = report.variants.get(answer.variant, 0) + 1
        names[fi] = answer.extra.get("output_names") or [f"output_{i}" for i in range(len(answer.outputs))]
        results.setdefault(fi, {})[ci] = answer.outputs
        if len(results[fi]) == chunk_counts[fi] and fi not in failed_files:
            path = todo[fi][0]
            _write_atomic(output_dir / f"{path.stem}.npz", names[fi], [results[fi][i] for i in range(chunk_counts[fi])])
            del results[fi]
            report.files_done += 1
            if on_progress:
                on_progress(path.name)
    report.elapsed_s = time.monotonic() - started
    return report
