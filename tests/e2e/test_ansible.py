"""The Ansible playbooks: they parse, and site.yml / scale-in.yml really provision and stop daemons on
this host (connection local, `common_supervisor: direct`, since systemd is not PID 1 here)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from support import REPO
from infaas_cli.client import Client
from infaas_cli.settings import load_settings
from support import ZOO, build_catalog, wait_for

ANSIBLE = REPO / "ansible"
PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or shutil.which("ansible-playbook")
pytestmark = pytest.mark.skipif(PLAYBOOK is None, reason="ansible-core is not installed (it is in the test extra)")


def run_playbook(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PLAYBOOK, *args], cwd=ANSIBLE, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", **(env or {})})


@pytest.mark.parametrize("playbook", ["site.yml", "scale-out.yml", "scale-in.yml", "upgrade.yml"])
def test_playbooks_parse(playbook):
    done = run_playbook("--syntax-check", playbook)
    assert done.returncode == 0, done.stdout + done.stderr


def test_roles_have_the_expected_shape():
    for role in ("common", "infaas_master", "infaas_worker"):
        for part in ("defaults/main.yml", "tasks/main.yml", "handlers/main.yml"):
            assert (ANSIBLE / "roles" / role / part).is_file(), (role, part)
        first = (ANSIBLE / "roles" / role / "tasks" / "main.yml").read_text().split("- name:")[1]
        assert "Preflight" in first, f"{role}: preflight asserts come first"
    assert (ANSIBLE / "inventories" / "example" / "group_vars" / "all.yml").is_file()


def _free_ports(n: int) -> list[int]:
    ports = []
    socks = [zmq.Context.instance().socket(zmq.ROUTER) for _ in range(n)]
    for s in socks:
        ports.append(s.bind_to_random_port("tcp://127.0.0.1"))
    for s in socks:
        s.close(linger=0)
    return ports


@pytest.mark.slow
def test_site_then_scale_in_on_this_host(tmp_path):
    client_port, worker_port = _free_ports(2)
    state = tmp_path / "state"
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"""
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
    common_supervisor: direct
    common_python: {sys.executable}
    common_install_dir: {tmp_path}/opt
    common_venv: {tmp_path}/opt/venv
    common_config_dir: {tmp_path}/etc
    common_state_dir: {state}
    common_wheel_dir: {tmp_path}/wheel
    common_source: {REPO}
    common_keys_dir: ""
    infaas_master_host: localhost
    infaas_master_address: 127.0.0.1
    infaas_master_bind: 127.0.0.1
    infaas_master_client_port: {client_port}
    infaas_master_worker_port: {worker_port}
    infaas_master_metrics_port: 0
    infaas_gateway_bind: 127.0.0.1
    infaas_gateway_http_port: 0
    infaas_gateway_grpc_port: 0
  children:
    infaas_master: {{hosts: {{localhost: {{}}}}}}
    infaas_worker: {{hosts: {{localhost: {{}}}}}}
""")
    try:
        done = run_playbook("-i", str(inventory), "site.yml")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        # One config file, assembled from the roles' fragments, that infaas loads: the daemons' command lines are short.
        settings, sources = load_settings(tmp_path / "etc" / "infaas.toml", env={}, home=state,
                                          system_file=tmp_path / "none.toml")
        assert settings.master.client_endpoint == f"tcp://127.0.0.1:{client_port}"
        assert settings.worker.master_endpoint == f"tcp://127.0.0.1:{worker_port}"
        assert sources["master.policy"] == str(tmp_path / "etc" / "infaas.toml")
        assert settings.master.data_dir == str(state / "master")
        home = build_catalog(tmp_path / "home", models=("digits-logreg",))
        with Client(f"tcp://127.0.0.1:{client_port}", timeout_s=30) as client:
            wait_for(lambda: [w for w in client.status()["workers"] if w["alive"]], timeout_s=30)
            client.push(home.store, home.artifacts)
            x = np.load(ZOO["digits-logreg"].validation)["x"][:2]
            assert client.query({"x": x}, model="digits-logreg").worker == "localhost-0"
            done = run_playbook("-i", str(inventory), "scale-in.yml", "-e", "infaas_drain_s=0",
                                env={"INFAAS_WORKER_ID": "localhost-0"})
            assert done.returncode == 0, done.stdout[-3000:]
            wait_for(lambda: not any(w["alive"] for w in client.status()["workers"]), timeout_s=15)
        home.close()
    finally:
        for pid_file in state.glob("*.pid") if state.exists() else []:
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
