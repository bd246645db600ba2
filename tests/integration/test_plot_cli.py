"""`infaas plot` on a real, profiled catalog: one model, and a task (TASK@DATASET or --task/--dataset)."""

from __future__ import annotations

import struct

import pytest
from typer.testing import CliRunner

from infaas_cli.cli import app
from support import build_catalog

pytest.importorskip("matplotlib")  # a core dependency; skipped rather than failed where it was left out

pytestmark = pytest.mark.timeout(120)

MODELS = ("digits-logreg", "digits-mlp")


@pytest.fixture(scope="module")
def home_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "home"
    build_catalog(path, MODELS).close()
    return path


def _cli(home_dir, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"INFAAS_HOME": str(home_dir), "COLUMNS": "200"})


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("args", [["digits-mlp"], ["digit-classification@digits"],
                                  ["--task", "digit-classification", "--dataset", "digits"]])
def test_plot_writes_a_png_for_a_model_and_for_a_task(home_dir, tmp_path, args):
    png = tmp_path / "out" / "plot.png"
    r = _cli(home_dir, "plot", *args, "--output", png, "--batch-size", "8")
    assert r.exit_code == 0, r.output
    width, height = _png_size(png)
    assert width > 800 and height > 500
    # Every variant profiled at batch 8 is counted (max batch 8, 16, 32 of each configuration): none is lost
    # by drawing shared measurements once.
    shown = int(r.stderr.rsplit("(", 1)[1].split()[0])
    per_model = {"digits-mlp": 5 * 2 * 3, "digits-logreg": 3 * 2 * 3}  # recipes x threads x max batches >= 8
    expected = per_model["digits-mlp"] if args == ["digits-mlp"] else sum(per_model.values())
    assert shown == expected


@pytest.mark.parametrize("args,message", [
    (["nope@digits"], "no model is registered for task nope@digits; known: digit-classification@digits"),
    (["digits-mlp", "--task", "digit-classification", "--dataset", "digits"], "name a model, or a task"),
    (["--task", "digit-classification"], "name a model, or a task"),
    (["nope"], "unknown model 'nope'"),
])
def test_plot_names_what_is_wrong(home_dir, tmp_path, args, message):
    r = _cli(home_dir, "plot", *args, "--output", tmp_path / "x.png")
    assert r.exit_code == 1 and message in r.stderr, r.output
    assert not (tmp_path / "x.png").exists()
