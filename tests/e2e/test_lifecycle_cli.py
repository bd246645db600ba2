"""Pin and remove through the CLI on real daemons (`infaas up`): load / unload a variant, remove a serving model
(refused, then --drain), and remove with no master running."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.cluster import embedded
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.register import register_model
from support import ZOO, build_catalog

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL, COPY = "digits-logreg", "logreg-copy"
V = f"{MODEL}/ort-cpu-fp32o1-t1-b8"


def _infaas(home, *args: str, timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    return subprocess.run([sys.executable, "-m", "infaas_cli", "--home", str(home), *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def home(tmp_path):
    """digits-logreg profiled, and the same file as logreg-copy (generated only: its artifacts are shared)."""
    path = tmp_path / "home"
    catalog = build_catalog(path, (MODEL,))
    e = ZOO[MODEL]
    register_model(catalog, e.file, COPY, e.task, e.dataset, e.validation)
    generate_variants(catalog, COPY)
    catalog.close()
    yield path
    embedded.down(path)


def test_load_unload_and_remove_with_drain_on_real_daemons(home):
    r = _infaas(home, "up", "--no-gateway", "--workers", "1", "--heartbeat-interval-s", "0.25")
    assert r.returncode == 0, r.stderr

    pinned = _json(_infaas(home, "load", V, "--timeout-s", "60", "--json"))
    assert pinned["ready"] and pinned["placed"] == {"local-0": 1}
    status = _json(_infaas(home, "status", "--json"))
    row = status["workers"][0]["variants"][V]
    assert row["state"] == "loaded" and row["pinned"] is True
    assert ", pinned" in _infaas(home, "status").stdout

    refused = _infaas(home, "remove", MODEL)
    assert refused.returncode == 1
    assert f"{MODEL} is serving on 1 worker (local-0) and pinned" in refused.stderr
    assert "pass --drain to stop routing, drain and unload it first" in refused.stderr
    assert _json(_infaas(home, "models", "--json"))  # nothing was deleted

    unloaded = _infaas(home, "unload", V)
    assert unloaded.returncode == 0 and "not pinned" in unloaded.stdout, unloaded.stderr
    assert _json(_infaas(home, "status", "--json"))["master"]["pinned"] == {}

    _json(_infaas(home, "load", V, "--json"))  # pinned again: --drain takes it down anyway
    removed = _json(_infaas(home, "remove", MODEL, "--drain", "--json"))
    assert removed["models"] == [MODEL] and removed["master"]["unloaded_on"] == ["local-0"]
    assert removed["records"]["variants"] > 0  # its artifacts are the copy's too: collected only with the copy
    assert [m["name"] for m in _json(_infaas(home, "models", "--json"))] == [COPY]
    master = _json(_infaas(home, "status", "--json"))["master"]
    assert master["models"] == 1 and master["pinned"] == {} and master["removing"] == []
    assert all(not name.startswith(f"{MODEL}/") for name in _json(_infaas(home, "status", "--json"))
               ["workers"][0]["variants"])
    # The master's store has what the copy uses and nothing else (its variants share the removed model's builds).
    local = set(ArtifactStore(home / "artifacts").digests())
    assert set(ArtifactStore(home / "master" / "artifacts").digests()) == local

    r = _infaas(home, "down")
    assert r.returncode == 0, r.stderr
    alone = _infaas(home, "remove", COPY)  # no master: removed here alone
    assert alone.returncode == 0, alone.stderr
    assert _json(_infaas(home, "models", "--json")) == []
    assert list(ArtifactStore(home / "artifacts").digests()) == []
