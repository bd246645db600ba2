"""Versions against a master in-process (real LMDB on both sides, real ZeroMQ, FakeWorkers whose loads take time):
a roll-out warms the new version before it switches and drains the old one before it unloads it, a canary splits
queries by request id, and a restarted master resumes the stored policy."""

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


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """digits-logreg with a second version (a retrained file), both profiled."""
    tmp = tmp_path_factory.mktemp("versions")
    home = build_catalog(tmp / "home", (MODEL,))
    record = register_model(home, retrained_logreg(tmp / "v2.onnx"), MODEL, validation=ZOO[MODEL].validation)
    assert (record.name, record.task) == (f"{MODEL}@v2", ZOO[MODEL].task)
    generate_variants(home, record.name)
    profile_models(home, [record.name], batch_sizes=[1, 8], settings=FAST)
    yield home
    home.close()


def set_policy(home, client, mode: str, version: int | None = None, percent: float | None = None) -> None:
    home.store.put(VersionPolicyRecord(MODEL, mode, version, percent, time.time()))
    client.push(home.store, home.artifacts)


def view(client) -> dict:
    return client.status()["master"]["versions"][MODEL]


def test_a_rollout_warms_first_then_switches_then_drains(tmp_path, catalog):
    x = digits_x(1)
    with start_master(tmp_path, catalog) as (master, client):
        set_policy(catalog, client, "pinned", 1)
        fake = FakeWorker(master.worker_endpoint, "fake-a", load_s=1.0, delay_s=0.5,
                          outputs=catalog_outputs(catalog.store))
        try:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 5.0)
            first = client.query({"x": x}, model=MODEL)  # a cold load (1 s), then served by version 1
            assert (first.model, first.version) == (MODEL, 1) and first.variant.startswith(f"{MODEL}/")
            old = first.variant
            wait_for(lambda: client.status()["workers"][0]["variants"].get(old, {}).get("state") == "loaded", 5.0)

            started = time.time()
            set_policy(catalog, client, "pinned", 2)
            rollout = view(client)["rollout"]
            assert rollout["state"] == "warming" and rollout["from"] == "v1" and rollout["to"] == "v2"
            new = old.replace(f"{MODEL}/", f"{MODEL}@v2/")  # the same configuration of version 2
            assert rollout["warmed"] == [f"fake-a:{new} (loading)"]
            assert any(msg.body.variant == new for msg in fake.messages("load"))
            # While it warms, queries stay on version 1 (three of them still in flight at the switch).
            during = [client.submit({"x": x}, model=MODEL) for _ in range(3)]
            time.sleep(0.7)
            late = [client.submit({"x": x}, model=MODEL) for _ in range(3)]
            answers = client.gather(during + late, timeout_s=10.0)
            versions = [answers[r].version for r in during + late]
            answered_at = time.time()
            assert versions[:3] == [1, 1, 1], versions
            done = wait_for(lambda: (r := view(client)["rollout"]) and r["state"] == "done" and r, 10.0)
            assert done["switched_at"] - started >= 0.9  # not before the 1 s load was over
            assert done["drained_queries"] >= 1 and done["unloaded"] == [f"fake-a:{old}"]
            assert done["finished_at"] >= done["switched_at"]
            assert answered_at >= done["switched_at"]
            after = client.query({"x": x}, model=MODEL)
            assert (after.version, after.variant, after.needs_load) == (2, new, False)
            assert client.query({"x": x}, model=f"{MODEL}@v1").version == 1  # a version by name, directly
            status = client.status()["master"]
            assert status["queries_failed"] == 0
            assert [(r["from_version"], r["to_version"], r["state"]) for r in status["rollouts"]] == [(1, 2, "done")]
        finally:
            fake.kill()


def test_a_canary_splits_by_request_and_a_restarted_master_resumes_the_policy(tmp_path, catalog):
    x = digits_x(1)
    with start_master(tmp_path, catalog) as (master, client):
        set_policy(catalog, client, "pinned", 1)
        fake = FakeWorker(master.worker_endpoint, "fake-a", outputs=catalog_outputs(catalog.store))
        try:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 5.0)
            assert client.query({"x": x}, model=MODEL).version == 1
            set_policy(catalog, client, "canary", 2, 30.0)
            wait_for(lambda: view(client)["rollout"]["state"] == "done", 10.0)
            assert view(client)["serving"] == {"version": 1, "canary": 2, "percent": 30.0}
            ids = [client.submit({"x": x}, model=MODEL) for _ in range(200)]
            answers = client.gather(ids, timeout_s=20.0)
            share = sum(answers[r].version == 2 for r in ids) / len(ids)
            assert 0.15 < share < 0.45, share
            assert all(answers[r].variant.startswith(f"{MODEL}@v2/" if answers[r].version == 2 else f"{MODEL}/")
                       for r in ids)
            set_policy(catalog, client, "pinned", 2)
            wait_for(lambda: view(client)["serving"] == {"version": 2, "canary": None, "percent": None}, 10.0)
        finally:
            fake.kill()
    (tmp_path / "master" / "endpoints.json").unlink()  # start_master waits for the new master's file
    with start_master(tmp_path, catalog) as (master, client):  # the same data directory: the policy is stored there
        assert view(client)["policy"] == "pinned 2" and view(client)["serving"]["version"] == 2
        fake = FakeWorker(master.worker_endpoint, "fake-b", outputs=catalog_outputs(catalog.store))
        try:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 5.0)
            assert client.query({"x": x}, model=MODEL).version == 2
        finally:
            fake.kill()


def test_the_version_policy_goes_with_the_last_version(tmp_path):
    from infaas_cli.catalog.home import InfaasHome
    from infaas_cli.catalog.removal import remove_models

    home = InfaasHome(tmp_path / "home")
    try:
        e = ZOO[MODEL]
        register_model(home, e.file, MODEL, e.task, e.dataset, accuracy=0.9)
        v2 = register_model(home, retrained_logreg(tmp_path / "v2.onnx"), MODEL, accuracy=0.9, version=2)
        assert v2.name == f"{MODEL}@v2"
        home.store.put(VersionPolicyRecord(MODEL, "pinned", 1))
        remove_models(home.store, home.artifacts, [v2.name])
        assert home.store.get(VersionPolicyRecord, MODEL) is not None  # version 1 is left: its policy stays
        removal = remove_models(home.store, home.artifacts, [MODEL])
        assert home.store.get(VersionPolicyRecord, MODEL) is None and removal.records["version_policies"] == 1
    finally:
        home.close()
