"""Pin and remove through the CLI on real daemons (`infaas up`): load / unload a variant, remove a serving model
(refused, then --drain), and remove with no master running."""

from __future__ import annotations


import pytest

from infaas_cli.catalog.artifacts import ArtifactStore
from infaas_cli.cluster import embedded
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.register import register_model
from support import ZOO, build_catalog, cli_json, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL, COPY = "digits-logreg", "logreg-copy"
V = f"{MODEL}/ort-cpu-fp32o1-t1-b8"


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
    r = run_cli(home, "up", "--no-gateway", "--workers", "1", "--heartbeat-interval-s", "0.25")
    assert r.returncode == 0, r.stderr

    pinned = cli_json(run_cli(home, "load", V, "--timeout-s", "60", "--json"))
    assert pinned["ready"] and pinned["placed"] == {"local-0": 1}
    status = cli_json(run_cli(home, "status", "--json"))
    row = status["workers"][0]["variants"][V]
    assert row["state"] == "loaded" and row["pinned"] is True
    assert ", pinned" in run_cli(home, "status").stdout

    refused = run_cli(home, "remove", MODEL)
    assert refused.returncode == 1
    assert f"{MODEL} is serving on 1 worker (local-0) and pinned" in refused.stderr
    assert "pass --drain to stop routing, drain and unload it first" in refused.stderr
    assert cli_json(run_cli(home, "models", "--json"))  # nothing was deleted

    unloaded = run_cli(home, "unload", V)
    assert unloaded.returncode == 0 and "not pinned" in unloaded.stdout, unloaded.stderr
    assert cli_json(run_cli(home, "status", "--json"))["master"]["pinned"] == {}

    cli_json(run_cli(home, "load", V, "--json"))  # pinned again: --drain takes it down anyway
    removed = cli_json(run_cli(home, "remove", MODEL, "--drain", "--json"))
    assert removed["models"] == [MODEL] and removed["master"]["unloaded_on"] == ["local-0"]
    assert removed["records"]["variants"] > 0  # its artifacts are the copy's too: collected only with the copy
    assert [m["name"] for m in cli_json(run_cli(home, "models", "--json"))] == [COPY]
    master = cli_json(run_cli(home, "status", "--json"))["master"]
    assert master["models"] == 1 and master["pinned"] == {} and master["removing"] == []
    assert all(not name.startswith(f"{MODEL}/") for name in cli_json(run_cli(home, "status", "--json"))
               ["workers"][0]["variants"])
    # The master's store has what the copy uses and nothing else (its variants share the removed model's builds).
    local = set(ArtifactStore(home / "artifacts").digests())
    assert set(ArtifactStore(home / "master" / "artifacts").digests()) == local

    r = run_cli(home, "down")
    assert r.returncode == 0, r.stderr
    alone = run_cli(home, "remove", COPY)  # no master: removed here alone
    assert alone.returncode == 0, alone.stderr
    assert cli_json(run_cli(home, "models", "--json")) == []
    assert list(ArtifactStore(home / "artifacts").digests()) == []
