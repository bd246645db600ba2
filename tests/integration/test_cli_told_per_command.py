"""A command says once which backends are unavailable on this host, and every command says it: in-process runs
(typer's CliRunner, one process) do not share what an earlier command said."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from support import make_two_input_model
from infaas_cli.backends import all_backends
from infaas_cli.cli import app


def test_each_command_reports_the_unavailable_backends(tmp_path):
    missing = [b.name for b in all_backends() if not b.availability().available]
    if not missing:
        pytest.skip("every backend is available on this host: none to report")
    path = make_two_input_model(tmp_path / "two.onnx")
    runner = CliRunner()
    env = {"INFAAS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    for name in ("first", "second"):
        r = runner.invoke(app, ["register", str(path), "--name", name, "--task", "toy", "--dataset", "toyset",
                                "--accuracy", "0.5"], env=env)
        assert r.exit_code == 0, r.output
        for backend in missing:
            assert r.output.count(f"  {backend}: not available on this host") == 1, (name, r.output)
    # Within one command, said once however many models it generates: `zoo register` over a manifest of two.
    manifest = tmp_path / "zoo.toml"
    manifest.write_text("".join(f'[[models]]\nname = "{n}"\nfile = "{path}"\ntask = "toy"\ndataset = "toyset"\n\n'
                                for n in ("third", "fourth")))
    r = runner.invoke(app, ["zoo", "register", "--manifest", str(manifest)], env=env)
    assert r.exit_code == 0, r.output
    assert "registered" in r.output and "fourth" in r.output
    for backend in missing:
        assert r.output.count(f"  {backend}: not available on this host") == 1, r.output
