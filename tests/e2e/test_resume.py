"""Interrupted work resumes: `register` and `profile` stopped for real (SIGINT to the process group, as Ctrl-C
sends it, or SIGKILL) mid-way, then finished by the next command without redoing what was done."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import psutil
import pytest

from infaas_cli.catalog.home import InfaasHome
from infaas_cli.catalog.records import VariantRecord
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.register import register_model
from support import ZOO, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CNN = ZOO["digits-cnn-s"]
REGISTER = ("register", str(CNN.file), "--name", "cnn", "--task", CNN.task, "--dataset", CNN.dataset,
            "--validation", str(CNN.validation))


def _env(home) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}, "INFAAS_HOME": str(home)}


def _infaas(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infaas_cli", *args], env=_env(home), capture_output=True,
                          text=True, timeout=120)


def _start(home, *args: str) -> subprocess.Popen:
    # A session of its own, so that a signal to its process group reaches it and its children as Ctrl-C would.
    return subprocess.Popen([sys.executable, "-m", "infaas_cli", *args], env=_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            if needle in line:
                return
            assert line or proc.poll() is None, f"exited ({proc.returncode}) before printing {needle!r}"
    raise AssertionError(f"{needle!r} not printed within {timeout_s} s")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_register_interrupted_while_generating_resumes(tmp_path, sig, code):
    home = tmp_path / "home"
    proc = _start(home, *REGISTER)
    _wait_for_line(proc, "registered cnn")  # the model record is written; generation has begun
    os.killpg(proc.pid, sig)
    assert proc.wait(30) == code

    models = json.loads(_infaas(home, "models", "--json").stdout)
    assert [(m["name"], m["variants"], m["complete"]) for m in models] == [("cnn", 0, False)]
    table = _infaas(home, "models").stdout
    assert "incomplete" in table and "infaas generate cnn" in table

    # Another file under that name: the error says how to finish the first.
    r = _infaas(home, "register", str(ZOO["digits-logreg"].file), "--name", "cnn", "--task", CNN.task,
                "--dataset", CNN.dataset)
    assert r.returncode == 1 and "infaas generate cnn" in r.stderr, r.stderr

    # The same file again: it resumes (no --replace), generating the variants.
    r = _infaas(home, *REGISTER, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["resumed"] is True and result["generate"]["variants"] > 0
    models = json.loads(_infaas(home, "models", "--json").stdout)
    assert models[0]["complete"] and models[0]["variants"] == result["generate"]["variants"]
    # Complete now: registering it again is refused as before.
    assert _infaas(home, *REGISTER).returncode == 1


def _measuring_child(cli: psutil.Process) -> psutil.Process | None:
    """The process measuring a configuration: a child of the profiler's fork server, itself the CLI's child."""
    try:
        return next((g for c in cli.children() for g in c.children()), None)
    except psutil.Error:
        return None


def test_profile_interrupted_mid_configuration_keeps_what_it_measured(tmp_path):
    home_dir = tmp_path / "home"
    home = InfaasHome(home_dir)
    try:
        register_model(home, CNN.file, "cnn", CNN.task, CNN.dataset, CNN.validation)
        generate_variants(home, "cnn")
        # One configuration (its five max-batch variants share one measuring session): the interrupt lands in it.
        with home.store.transaction() as txn:
            for v in home.store.variants("cnn"):
                if not v.name.startswith("cnn/ort-cpu-fp32o1-t1-"):
                    txn.delete(VariantRecord.table, v.key)
        wanted = {v.name: [b for b in range(1, 33) if b <= v.max_batch] for v in home.store.variants("cnn")}
    finally:
        home.close()
    sizes = ",".join(str(b) for b in range(1, 33))  # 32 batch sizes: a few seconds in one session

    proc = _start(home_dir, "profile", "cnn", "--batch-sizes", sizes, "--json")
    cli = psutil.Process(proc.pid)
    child = wait_for(lambda: _measuring_child(cli), 60.0)
    wait_for(lambda: time.time() - child.create_time() > 1.0, 10.0)  # batch size 1 takes ≤ 0.2 s: some are done
    assert proc.poll() is None, "the configuration finished before the interrupt; make it longer"
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(30) == 130

    home = InfaasHome(home_dir)
    try:
        kept = {p.variant: dict(p.batches) for p in home.store.profiles("cnn")}
    finally:
        home.close()
    assert kept, "nothing measured before the interrupt was kept"
    partial = {v: b for v, b in kept.items() if len(b) < len(wanted[v])}
    assert partial, "the interrupt did not land inside the configuration"
    stored_sizes = {int(b) for batches in kept.values() for b in batches}

    r = _infaas(home_dir, "profile", "cnn", "--batch-sizes", sizes, "--json")
    assert r.returncode == 0, r.stderr
    # Only the batch sizes missing were measured; the ones kept were not measured again.
    assert json.loads(r.stdout)["measurements"] == 32 - len(stored_sizes)
    home = InfaasHome(home_dir)
    try:
        final = {p.variant: p for p in home.store.profiles("cnn")}
    finally:
        home.close()
    for variant, sizes_wanted in wanted.items():
        assert sorted(map(int, final[variant].batches)) == sizes_wanted
        for b, measured in kept.get(variant, {}).items():
            assert final[variant].batches[b] == measured
