"""Where infaas keeps its data and the defaults it runs with (precedence: CLI > env > default)."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the data directory (metadata LMDB + artifacts).
HOME_ENV = "INFAAS_HOME"
DEFAULT_HOME = Path("~/.infaas")

#: Batch sizes a variant may be capped at, and those profiled by default.
MAX_BATCH_CHOICES = (1, 4, 8, 16, 32)
DEFAULT_PROFILE_BATCH_SIZES = MAX_BATCH_CHOICES

#: Per-batch-size measuring budget of the profiler.
PROFILE_WARMUP_RUNS = 3
PROFILE_BUDGET_MS = 150.0
PROFILE_MIN_RUNS = 20
PROFILE_MAX_RUNS = 1000

#: Validation samples used to calibrate int8 static quantisation.
CALIBRATION_SAMPLES = 128

#: Agreement tolerance when a validation set has no labels (see accuracy.py).
AGREEMENT_RTOL = 1e-2
AGREEMENT_ATOL = 1e-3

#: LMDB map size: a sparse upper bound, not an allocation.
LMDB_MAP_SIZE_BYTES = 1 << 30


def infaas_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: an explicit path, else $INFAAS_HOME, else ~/.infaas."""
    raw = explicit if explicit is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


def host_cores() -> int:
    """Cores this process may use (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
