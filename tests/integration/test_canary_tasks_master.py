"""A canary takes its share of the model-less queries too, against a master in-process (real LMDB, real ZeroMQ,
a FakeWorker): queries by task that resolve to the model split by request id as those naming it do."""

from __future__ import annotations

import time

import pytest

from infaas_cli.catalog.records import VersionPolicyRecord
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from support import FAST, ZOO, FakeWorker, build_catalog, catalog_outputs, digits_x, retrained_logreg, start_master, \
    wait_for

pytestmark = pytest.mark.timeout(90)

MODEL = "digits-logreg"


def test_task_queries_split_between_stable_and_canary(tmp_path):
    home = build_catalog(tmp_path / "home", (MODEL,))
    try:
        record = register_model(home, retrained_logreg(tmp_path / "v2.onnx"), MODEL, validation=ZOO[MODEL].validation)
        generate_variants(home, record.name)
        profile_models(home, [record.name], batch_sizes=[1, 8], settings=FAST)
        home.store.put(VersionPolicyRecord(MODEL, "canary", 2, 30.0, time.time()))
        task, dataset = ZOO[MODEL].task, ZOO[MODEL].dataset
        x = digits_x(1)
        with start_master(tmp_path, home) as (master, client):
            with FakeWorker(master.worker_endpoint, "fake-a", outputs=catalog_outputs(home.store)):
                wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 5.0)
                serving = client.status()["master"]["versions"][MODEL]["serving"]
                assert serving == {"version": 1, "canary": 2, "percent": 30.0}
                ids = [client.submit({"x": x}, task=task, dataset=dataset) for _ in range(200)]
                answers = client.gather(ids, timeout_s=20.0)
                versions = [answers[r].version for r in ids]
                assert set(versions) == {1, 2}
                share = versions.count(2) / len(versions)
                assert 0.15 < share < 0.45, share
                assert all(answers[r].variant.startswith(f"{MODEL}@v2/" if answers[r].version == 2 else f"{MODEL}/")
                           for r in ids)
    finally:
        home.close()
