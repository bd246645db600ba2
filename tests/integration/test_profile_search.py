"""`infaas profile --search` on a fresh home, through the real CLI: a few cells measured, the rest stored
predicted (and listed so), resumable, and measured for real by a later exhaustive profile."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infaas_cli.cli import app
from support import ZOO

pytestmark = pytest.mark.timeout(240)
MODELS = ("digits-mlp", "digits-cnn-s")


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()
    env = {"INFAAS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args], env=env)
        assert result.exit_code == 0, result.output
        return result

    return invoke


def _cells(rows) -> dict[tuple[str, str], dict]:
    """(configuration, batch size) -> its figures, once per configuration (max-batch variants share them)."""
    return {(r["name"].rsplit("-b", 1)[0], b): stats for r in rows for b, stats in r["profiles"].items()}


def test_search_measures_a_few_cells_predicts_the_rest_and_resumes(cli):
    for name in MODELS:
        e = ZOO[name]
        cli("register", e.file, "--name", name, "--task", e.task, "--dataset", e.dataset, "--validation",
            e.validation, "--json")
    assert "--search" in cli("profile", "--help").output
    summary = json.loads(cli("profile", *MODELS, "--search", "--budget-ms", "3", "--json").stdout)
    assert summary["searched_models"] == list(MODELS) and summary["failed"] == []
    rows = json.loads(cli("variants", "--all", "--json").stdout)
    cells = _cells(rows)
    measured = [c for c, s in cells.items() if s["measured"]]
    predicted = {c: s for c, s in cells.items() if not s["measured"]}
    assert summary["measurements"] == len(measured) and summary["predicted"] == len(predicted)
    # 10 % of each model's cells, or its anchors where more: on a cold hardware id (nothing profiled on it yet)
    # every recipe no other model measured is anchored at both ends of its batch curve
    assert 0 < len(measured) <= 0.3 * len(cells)
    assert all(s["predicted_error"] is not None and 0 < s["predicted_error"] <= 1 and s["runs"] == 0
               and s["p50_ms"] > 0 for s in predicted.values())
    assert all(s["predicted_error"] is None and s["runs"] > 0 for c, s in cells.items() if s["measured"])
    # every variant has a full profile: selection can rank all of them
    assert all(r["profiles"] and r["load_time_ms"] is not None for r in rows)
    assert "~" in cli("variants", "digits-cnn-s").stdout  # the table marks predicted figures

    again = json.loads(cli("profile", *MODELS, "--search", "--budget-ms", "3", "--json").stdout)
    assert again["measurements"] == 0 and again["already_stored"] > 0  # nothing redone

    full = json.loads(cli("profile", "digits-mlp", "--exhaustive", "--budget-ms", "2", "--json").stdout)
    mlp_predicted = [c for c in predicted if c[0].startswith("digits-mlp/")]
    assert full["measurements"] == len(mlp_predicted)  # exactly the predicted cells, now measured
    after = _cells(json.loads(cli("variants", "digits-mlp", "--json").stdout))
    assert all(s["measured"] for s in after.values())


def test_search_and_exhaustive_exclude_each_other(tmp_path):
    r = CliRunner().invoke(app, ["profile", "x", "--search", "--exhaustive"], env={"INFAAS_HOME": str(tmp_path)})
    assert r.exit_code != 0 and "exclude each other" in r.output


def test_entries_stored_before_predictions_existed_count_as_measured(cli, tmp_path):
    """A profile written before `measured` existed has no such key: `profile` keeps it (it used to measure it again)."""
    from infaas_cli.catalog.home import InfaasHome
    from infaas_cli.catalog.records import ProfileRecord

    e = ZOO["digits-logreg"]
    cli("register", e.file, "--name", "digits-logreg", "--task", e.task, "--dataset", e.dataset, "--validation",
        e.validation, "--json")
    cli("profile", "digits-logreg", "--exhaustive", "--batch-sizes", "1,8", "--budget-ms", "2", "--json")
    with InfaasHome(tmp_path / "home") as home:
        old = [ProfileRecord(**{**vars(p), "batches": {
            b: {k: v for k, v in s.items() if k not in ("measured", "predicted_error")} for b, s in p.batches.items()}})
            for p in home.store.profiles()]
        with home.store.transaction() as txn:
            for p in old:
                txn.put_profile(p)
        assert all("measured" not in s for p in home.store.profiles() for s in p.batches.values())
    again = json.loads(cli("profile", "digits-logreg", "--exhaustive", "--batch-sizes", "1,8", "--budget-ms", "2",
                           "--json").stdout)
    assert again["measurements"] == 0 and again["already_stored"] > 0
