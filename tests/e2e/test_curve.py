"""CurveZMQ: with keys configured the master serves only workers and clients whose public keys it knows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infaas_cli.client import Client, MasterUnreachableError
from infaas_cli.errors import InfaasError
from infaas_cli.security import AuthorisedKeys, generate_keys, load_keypair
from support import ZOO, build_catalog, wait_for

pytestmark = pytest.mark.slow


def test_key_generation_and_authorised_directory(tmp_path):
    public, secret = generate_keys(tmp_path / "keys", "alice")
    assert oct(secret.stat().st_mode)[-3:] == "600"
    pub, sec = load_keypair(secret)
    assert len(pub) == 40 and len(sec) == 40
    with pytest.raises(InfaasError, match="already exist"):
        generate_keys(tmp_path / "keys", "alice")
    with pytest.raises(InfaasError, match="no secret key"):
        load_keypair(public)
    allowed = AuthorisedKeys(tmp_path / "keys")
    assert allowed.callback("*", pub) is True
    assert allowed.callback("*", b"x" * 40) is False
    generate_keys(tmp_path / "other", "bob")
    (tmp_path / "keys" / "bob.key").write_bytes((tmp_path / "other" / "bob.key").read_bytes())
    assert allowed.callback("*", load_keypair(tmp_path / "other" / "bob.key_secret")[0]) is True  # picked up live


def test_master_refuses_unauthorised_peers(tmp_path):
    home = build_catalog(tmp_path / "home", models=("digits-logreg",))
    keys, allowed, strangers = tmp_path / "keys", tmp_path / "allowed", tmp_path / "strangers"
    for name in ("master", "worker", "client"):
        generate_keys(keys, name)
    allowed.mkdir()
    for name in ("worker", "client"):
        (allowed / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    generate_keys(strangers, "mallory")
    env = {**os.environ, "INFAAS_HOME": str(home.path)}
    ep_file = tmp_path / "endpoints.json"
    log_path = tmp_path / "master.log"
    with open(log_path, "wb") as log:
        master = subprocess.Popen([sys.executable, "-m", "infaas_cli", "master", "--data-dir", str(tmp_path / "m"),
                                   "--client-endpoint", "tcp://127.0.0.1:0", "--worker-endpoint", "tcp://127.0.0.1:0",
                                   "--endpoints-file", str(ep_file), "--heartbeat-interval-s", "0.25",
                                   "--curve-secret-key", str(keys / "master.key_secret"),
                                   "--authorized-keys", str(allowed)], env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_for(ep_file.exists)
        ep = json.loads(ep_file.read_text())
        worker = subprocess.Popen([sys.executable, "-m", "infaas_cli", "worker",
                                   "--master-endpoint", ep["worker_endpoint"], "--worker-id", "w-curve",
                                   "--heartbeat-interval-s", "0.25",
                                   "--curve-secret-key", str(keys / "worker.key_secret"),
                                   "--master-public-key", str(keys / "master.key")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        master_pub = keys / "master.key"
        with Client(ep["client_endpoint"], timeout_s=20, curve_secret_key=keys / "client.key_secret",
                    master_public_key=master_pub) as client:
            client.push(home.store, home.artifacts)
            wait_for(lambda: [w for w in client.status()["workers"] if w["alive"]])
            x = np.load(ZOO["digits-logreg"].validation)["x"][:2]
            assert client.query({"x": x}, model="digits-logreg").variant.startswith("digits-logreg/")
        with Client(ep["client_endpoint"], timeout_s=1.5, curve_secret_key=strangers / "mallory.key_secret",
                    master_public_key=master_pub) as stranger:
            with pytest.raises(MasterUnreachableError):
                stranger.status()
        with Client(ep["client_endpoint"], timeout_s=1.5) as plain:  # no keys at all
            with pytest.raises(MasterUnreachableError):
                plain.status()
        wait_for(lambda: "refused a CurveZMQ peer" in log_path.read_text(), timeout_s=10)
    finally:
        for proc in (worker, master):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        home.close()
