"""The systemd units verify cleanly: `systemd-analyze verify` prints nothing for them (it may warn and exit 0)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

UNITS = sorted((REPO / "systemd").glob("*.service"))
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")


def _verify(unit_dir: Path, names: list[str]) -> str:
    done = subprocess.run([ANALYZE, "verify", *[str(unit_dir / n) for n in names]], capture_output=True, text=True,
                          timeout=60)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f"\n(exit {done.returncode})")


def _install(tmp_path: Path) -> list[str]:
    """The units as Ansible installs them, with this checkout's `infaas` as the executable."""
    exe = Path(sys.executable).with_name("infaas")
    names = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/infaas/venv/bin/infaas", str(exe))
        name = unit.name.replace("@.service", "@verify.service")  # a template is verified through an instance
        (tmp_path / name).write_text(text)
        names.append(name)
    return names


def test_units_exist():
    assert {u.name for u in UNITS} == {"infaas-master.service", "infaas-worker@.service", "infaas-gateway.service"}


def test_units_verify_without_any_output(tmp_path):
    assert _verify(tmp_path, _install(tmp_path)) == ""


def test_hardening_is_in_place():
    for unit in UNITS:
        text = unit.read_text()
        for directive in ("User=infaas", "StateDirectory=", "RuntimeDirectory=", "ProtectSystem=strict",
                          "NoNewPrivileges=yes", "RestrictAddressFamilies=", "Restart=on-failure", "Documentation=",
                          "EnvironmentFile=-/etc/infaas/"):
            assert directive in text, (unit.name, directive)
    worker = (REPO / "systemd" / "infaas-worker@.service").read_text()
    assert "PrivateDevices=" not in worker and "DeviceAllow=" in worker  # GPU workers keep their devices


def test_units_start_the_daemons_from_the_config_file():
    for unit in UNITS:
        exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
        role = next(r for r in ("master", "gateway", "worker") if r in unit.name)
        assert f"/bin/infaas --config /etc/infaas/infaas.toml {role}" in exec_start, exec_start
        assert "--policy" not in exec_start and "--client-endpoint" not in exec_start  # those live in the file


def test_the_check_itself_catches_mistakes(tmp_path):
    names = _install(tmp_path)
    broken = (tmp_path / names[0]).read_text().replace("Restart=on-failure", "Restart=on-failur\nNoSuchDirective=1")
    (tmp_path / names[0]).write_text(broken)
    assert _verify(tmp_path, names[:1]) != ""
