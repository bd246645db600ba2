"""The CLI, through typer's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from support import REPO, make_two_input_model
from infaas_cli.cli import app

VARIANT_FIELDS = {"name", "model", "backend", "precision", "threads", "max_batch", "accuracy",
                  "load_time_ms", "peak_memory_bytes", "profiles"}


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()
    env = {"INFAAS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


def test_register_profile_list_plot(cli, sklearn_models, tmp_path):
    r = cli("register", sklearn_models["mlp"], "--name", "mlp", "--task", "digit-classification",
            "--dataset", "digits", "--validation", sklearn_models["val"], "--json")
    assert r.exit_code == 0, r.output
    reg = json.loads(r.stdout)
    assert reg["model"]["name"] == "mlp" and reg["generate"]["variants"] > 0
    assert any(u["backend"] == "trt" for u in reg["generate"]["unavailable"])

    r = cli("profile", "mlp", "--batch-sizes", "1,8", "--budget-ms", "2")
    assert r.exit_code == 0, r.output

    r = cli("models", "--json")
    models = json.loads(r.stdout)
    assert set(models[0]) >= {"name", "task", "dataset", "inputs", "outputs", "accuracy", "variants"}
    assert models[0]["variants"] == reg["generate"]["variants"]

    r = cli("variants", "mlp", "--json")
    rows = json.loads(r.stdout)
    assert len(rows) == reg["generate"]["variants"]
    for row in rows:
        assert set(row) >= VARIANT_FIELDS
        assert row["load_time_ms"] > 0
        assert "1" in row["profiles"]
        assert set(row["profiles"]["1"]) >= {"p50_ms", "p95_ms", "p99_ms", "throughput_qps"}

    r = cli("variants", "mlp")
    assert r.exit_code == 0 and "mlp/ort-cpu-int8s-t1-b8" in r.stdout

    png = tmp_path / "plot.png"
    r = cli("plot", "mlp", "--output", png, "--batch-size", "8")
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["generate", "nope"], "unknown model 'nope'"),
    (["variants", "nope"], "unknown model 'nope'"),
    (["profile"], "name a model"),
    (["profile", "x", "--batch-sizes", "a,b"], "comma-separated"),
])
def test_errors_are_one_line_exit_1(cli, args, message):
    r = cli(*args)
    assert r.exit_code == 1
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1


def test_register_errors(cli, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    r = cli("register", bad, "--name", "bad", "--task", "t", "--dataset", "d")
    assert r.exit_code == 1 and "not an ONNX model" in r.stderr and "Traceback" not in r.output
    good = make_two_input_model(tmp_path / "two.onnx")
    np.savez(tmp_path / "val.npz", a=np.zeros((3, 4), np.float32))
    r = cli("register", good, "--name", "two", "--task", "t", "--dataset", "d", "--validation", tmp_path / "val.npz")
    assert r.exit_code == 1 and "lacks arrays for input(s) b" in r.stderr
    assert json.loads(cli("models", "--json").stdout) == []
    assert cli("register", good, "--name", "two", "--task", "t", "--dataset", "d", "--accuracy", "0.9",
               "--no-generate").exit_code == 0
    # The same file again finishes that registration (generates its variants); once complete, it is refused.
    r = cli("register", good, "--name", "two", "--task", "t", "--dataset", "d", "--accuracy", "0.9")
    assert r.exit_code == 0 and "generating them" in r.stderr, r.output
    r = cli("register", good, "--name", "two", "--task", "t", "--dataset", "d", "--accuracy", "0.9")
    assert r.exit_code == 1 and "--replace" in r.stderr



def test_register_cache_mib(cli, tmp_path):
    from infaas_cli.catalog.home import InfaasHome

    good = make_two_input_model(tmp_path / "two.onnx")
    base = ("register", good, "--task", "t", "--dataset", "d", "--accuracy", "0.9", "--no-generate")
    r = cli(*base, "--name", "neg", "--cache-mib", "-5")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "--cache-mib -5 is out of range" in r.stderr and "--cache-mib 64" in r.stderr
    assert "master.prediction_cache_mib" in r.stderr
    assert json.loads(cli("models", "--json").stdout) == []
    r = cli(*base, "--name", "bad", "--cache-mib", "lots")
    assert r.exit_code != 0 and "--cache-mib" in r.stderr and "Traceback" not in r.output

    r = cli(*base, "--name", "cached", "--cache-mib", "32", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["cache_mib"] == 32
    r = cli(*base, "--name", "plain")
    assert r.exit_code == 0 and "prediction cache" not in r.stderr
    assert "prediction cache 0 MiB" in cli(*base, "--name", "off", "--cache-mib", "0").stderr
    with InfaasHome(tmp_path / "home") as home:
        assert {m.name: m.cache_mib for m in home.store.models()} == {"cached": 32, "plain": None, "off": 0}


def test_backends_listing_names_missing_toolchains(cli):
    listing = json.loads(cli("backends", "--json", "--timeout-s", "0.5").stdout)
    rows = listing["host"]["backends"]
    by_name = {r["backend"]: r for r in rows}
    assert by_name["ort-cpu"]["available"] is True
    for name in ("ort-cuda", "ort-trt", "trt", "neuron"):
        assert name in by_name
        if not by_name[name]["available"]:
            assert by_name[name]["reason"]
    assert "not available on this host:" in cli("backends").stdout or all(r["available"] for r in rows)
    # No master in this test's home: said plainly, and the listing of this host stands.
    assert listing["master"]["reachable"] is False and listing["master"]["reason"]
    assert "workers: no master reachable" in cli("backends").stdout


def test_cli_as_subprocess(tmp_path, sklearn_models):
    env = {**os.environ, "INFAAS_HOME": str(tmp_path / "home")}
    exe = [sys.executable, "-m", "infaas_cli"]
    done = subprocess.run([*exe, "register", str(sklearn_models["tree"]), "--name", "tree", "--task",
                           "digit-classification", "--dataset", "digits", "--validation",
                           str(sklearn_models["val"])], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipped ort-cpu int8d" in done.stderr
    done = subprocess.run([*exe, "profile", "--all", "--batch-sizes", "1", "--budget-ms", "2", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["profiled_variants"] > 0
    done = subprocess.run([*exe, "generate", "missing"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "unknown model 'missing'" in done.stderr and "Traceback" not in done.stderr
    console = REPO / ".venv" / "bin" / "infaas"
    if console.exists():
        done = subprocess.run([str(console), "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("infaas ")


def test_cluster_status_without_master_is_a_clear_error(cli):
    r = cli("cluster", "status")
    assert r.exit_code == 1 and "no master known" in r.stderr


def test_config_show_json_gives_every_value_and_its_source(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[worker]\ncores = 3\n')
    given = tmp_path / "infaas.toml"
    given.write_text('[master]\npolicy = "static"\nmax_attempts = 4\n[autoscale]\nwindow_s = 2.0\n')
    env = {"INFAAS_HOME": str(home), "INFAAS_MASTER_MAX_ATTEMPTS": "7", "INFAAS_MASTER": "tcp://10.1.2.3:7010"}
    r = CliRunner().invoke(app, ["--config", str(given), "--set", "autoscale.window_s=1.5", "config", "show", "--json"],
                           env=env)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    from infaas_cli.settings import SECTIONS, section_keys

    assert {s: set(keys) for s, keys in shown.items()} == {s: set(section_keys(s)) for s in SECTIONS}
    assert shown["master"]["policy"] == {"value": "static", "source": str(given)}
    assert shown["master"]["max_attempts"] == {"value": 7, "source": "INFAAS_MASTER_MAX_ATTEMPTS"}
    assert shown["autoscale"]["window_s"] == {"value": 1.5, "source": "cli"}
    assert shown["worker"]["cores"] == {"value": 3, "source": str(home / "config.toml")}
    assert shown["client"]["master"] == {"value": "tcp://10.1.2.3:7010", "source": "INFAAS_MASTER"}
    assert shown["cluster"]["min_workers"] == {"value": 1, "source": "default"}

    r = CliRunner().invoke(app, ["--config", str(given), "config", "show"], env={**env, "COLUMNS": "200"})
    assert r.exit_code == 0 and "master.policy" in r.stdout and str(given) in r.stdout


def test_a_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[master]\npolcy = "static"\n')
    r = CliRunner().invoke(app, ["--config", str(bad), "config", "show"], env={"INFAAS_HOME": str(tmp_path)})
    assert r.exit_code == 2
    assert f"unknown key master.polcy in {bad}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["config", "show"], env={"INFAAS_HOME": str(tmp_path), "INFAAS_WORKER_CORES": "many"})
    assert r.exit_code == 2 and "worker.cores must be an integer, not 'many' (set by INFAAS_WORKER_CORES)" in r.stderr
    r = CliRunner().invoke(app, ["--set", "nokey", "config", "show"], env={"INFAAS_HOME": str(tmp_path)})
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_set_reaches_a_command_whose_own_option_is_not_given(tmp_path):
    # `infaas master` passes its unset options as None: they must not hide --set (it fails before binding).
    r = CliRunner().invoke(app, ["--set", "master.policy=fastest", "master"], env={"INFAAS_HOME": str(tmp_path)})
    assert r.exit_code == 2 and "master.policy must be one of infaas, fixed-peak, fixed-autoscale" in r.stderr
    assert "set by cli" in r.stderr
