"""Placement keys through the real master: a bf16 variant goes only to a worker that advertises a BF16 CPU.

The catalog is real (digits-cnn-s generated with ORT and OpenVINO, profiled on this host); the workers are
FakeWorkers that advertise placement keys as a worker does (`infaas_cli.backends.advertised_keys`).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infaas_cli.catalog.records import ProfileRecord, VariantRecord
from infaas_cli.cli import app
from infaas_cli.client import QueryFailed
from support import FakeWorker, build_catalog, catalog_outputs, digits_x, start_master, wait_for

pytestmark = pytest.mark.timeout(60)

MODEL = "digits-cnn-s"
BF16 = f"{MODEL}/ov-cpu-bf16-t1-b8"
FP32 = f"{MODEL}/ov-cpu-fp32-t1-b8"
PLAIN = ("ort-cpu", "ov-cpu")  # what a worker on a CPU without BF16 advertises
BF16_HOST = ("ort-cpu", "ov-cpu", "ov-cpu+bf16")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    pytest.importorskip("openvino")
    home = build_catalog(tmp_path_factory.mktemp("keys") / "home", (MODEL,))
    if home.store.get(VariantRecord, BF16) is None:
        home.close()
        pytest.skip("this CPU does not compute bf16: no bf16 variant was generated")
    assert any(p.variant == BF16 for p in home.store.scan(ProfileRecord)), "the bf16 variant is profiled"
    yield home
    home.close()


def _workers(client) -> dict[str, dict]:
    return {w["worker_id"]: w for w in client.status()["workers"]}


def _serving(client, *ids: str) -> None:
    wait_for(lambda: all(w in (ws := _workers(client)) and ws[w]["state"] == "serving" for w in ids), 5.0)


def _touched(w: FakeWorker, variant: str) -> list:
    return [msg for msg in w.messages() if msg.type in ("load", "infer") and msg.body.variant == variant]


def test_a_bf16_variant_is_served_only_by_a_worker_with_bf16(tmp_path, catalog):
    outputs = catalog_outputs(catalog.store)
    x = digits_x(2)
    with start_master(tmp_path, catalog) as (master, client):
        plain = FakeWorker(master.worker_endpoint, "plain", backends=PLAIN, cores=8, outputs=outputs)
        try:
            _serving(client, "plain")
            status = _workers(client)["plain"]
            assert status["backends"] == ["ort-cpu", "ov-cpu"] and status["placement_keys"] == list(PLAIN)
            with pytest.raises(QueryFailed) as info:
                client.query({"x": x}, variant=BF16)
            assert info.value.code == "unavailable"
            assert str(info.value).startswith(f"no live worker can run {BF16}: ov-cpu bf16 variants need a CPU "
                                              "with BF16, which no live ov-cpu worker has")
            assert client.query({"x": x}, variant=FP32).worker == "plain"  # its fp32 sibling runs there

            bf16 = FakeWorker(master.worker_endpoint, "bf16", backends=BF16_HOST, cores=2, outputs=outputs)
            try:
                _serving(client, "bf16")
                listing = _backends(tmp_path, master.client_endpoint)
                res = client.query({"x": x}, variant=BF16)
                assert (res.worker, res.needs_load) == ("bf16", True)
                assert client.query({"x": x}, variant=BF16).worker == "bf16"
            finally:
                bf16.kill()
        finally:
            plain.kill()
    assert _touched(plain, BF16) == [], "a worker without BF16 never got the bf16 variant"
    assert [msg.type for msg in _touched(bf16, BF16)] == ["infer", "infer"]
    # `infaas backends` shows per worker what it runs and whether it has what the bf16 recipe needs.
    assert listing["master"]["reachable"] is True
    workers = {w["worker_id"]: w for w in listing["master"]["workers"]}
    assert workers["plain"]["backends"] == ["ort-cpu", "ov-cpu"]
    assert [(r["recipe"], r["met"]) for r in workers["plain"]["recipes"]["ov-cpu"]] == [("bf16", False)]
    assert [(r["recipe"], r["met"]) for r in workers["bf16"]["recipes"]["ov-cpu"]] == [("bf16", True)]
    assert workers["bf16"]["recipes"]["ov-cpu"][0]["why"] == "needs a CPU with BF16"


def _backends(tmp_path, endpoint: str) -> dict:
    r = CliRunner().invoke(app, ["backends", "--json"], env={"INFAAS_HOME": str(tmp_path / "cli-home"),
                                                              "INFAAS_MASTER": endpoint})
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)
