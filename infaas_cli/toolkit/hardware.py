"""What this host has: CPU model, cores, memory, accelerators — recorded with every profile."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from infaas_cli.config import host_cores


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[str, ...]:
    """Names of the NVIDIA GPUs nvidia-smi reports; empty when there is no driver or no GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def neuron_devices() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("neuron[0-9]*"))


def host_hardware() -> dict[str, Any]:
    """The hardware description stored with profiles."""
    return {
        "cpu_model": cpu_model(),
        "cores": host_cores(),
        "physical_cores": psutil.cpu_count(logical=False) or host_cores(),
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": list(nvidia_gpus()),
        "neuron_devices": len(neuron_devices()),
        "machine": platform.machine(),
        "hostname": platform.node(),
    }


def hardware_id(hardware: str, desc: dict[str, Any]) -> str:
    """A stable id of a hardware kind: hosts with the same CPU, cores, memory and devices share it."""
    key = {k: desc.get(k) for k in ("cpu_model", "cores", "gpus", "neuron_devices", "machine")}
    key["memory_gib"] = round((desc.get("memory_bytes") or 0) / (1 << 30))
    if hardware != "cpu":
        key["hardware"] = hardware
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{hardware}-{digest}"

