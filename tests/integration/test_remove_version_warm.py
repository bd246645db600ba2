"""`remove M --version V --drain` of the version that serves, against a master in-process (real LMDB, real ZeroMQ,
a FakeWorker whose loads take a second): the route rolls off V as a roll-out does — the version taking over is
warmed where V is loaded, then switched to — before V is hidden, drained and unloaded; no query fails and none
waits on a cold load."""

from __future__ import annotations

import threading

import pytest

from infaas_cli.client import Client, QueryFailed
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from support import FAST, ZOO, FakeWorker, build_catalog, catalog_outputs, digits_x, retrained_logreg, start_master, \
    wait_for

pytestmark = pytest.mark.timeout(90)

MODEL = "digits-logreg"
V2 = f"{MODEL}@v2"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """digits-logreg with a second version, both profiled: the default policy (latest) serves version 2."""
    tmp = tmp_path_factory.mktemp("remove-version")
    home = build_catalog(tmp / "home", (MODEL,))
    record = register_model(home, retrained_logreg(tmp / "v2.onnx"), MODEL, validation=ZOO[MODEL].validation)
    assert record.name == V2
    generate_variants(home, V2)
    profile_models(home, [V2], batch_sizes=[1, 8], settings=FAST)
    yield home
    home.close()


def test_removing_the_serving_version_warms_the_fallback_then_switches_then_drains(tmp_path, catalog):
    x = digits_x(1)
    with start_master(tmp_path, catalog) as (master, client):
        fake = FakeWorker(master.worker_endpoint, "fake-a", load_s=1.0, delay_s=0.2,
                          outputs=catalog_outputs(catalog.store))
        try:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 5.0)
            first = client.query({"x": x}, model=MODEL)  # a cold load of version 2
            assert first.version == 2 and first.variant.startswith(f"{V2}/")
            old = first.variant
            wait_for(lambda: client.status()["workers"][0]["variants"].get(old, {}).get("state") == "loaded", 5.0)
            new = old.replace(f"{V2}/", f"{MODEL}/")  # version 1's counterpart: the same configuration

            answer: dict = {}
            with Client(master.client_endpoint, timeout_s=30.0) as remover:
                removing = threading.Thread(target=lambda: answer.update(
                    remover.remove([V2], drain=True, timeout_s=20.0)), daemon=True)
                removing.start()
                # Version 1 is warmed where version 2 serves, before any query reaches it.
                fake.wait_message("load", lambda msg: msg.body.variant == new, timeout_s=5.0)
                rollout = client.status()["master"]["versions"][MODEL]["rollout"]
                assert (rollout["from"], rollout["to"], rollout["state"]) == ("v2", "v1", "warming")
                assert "v2 being removed" in rollout["note"]
                during = [client.submit({"x": x}, model=MODEL) for _ in range(3)]  # still version 2's, warm
                removing.join(30.0)
                assert not removing.is_alive()
                answers = client.gather(during, timeout_s=10.0)
            assert [answers[r].version for r in during] == [2, 2, 2]
            assert answer["models"] == [V2] and answer["unloaded_on"] == ["fake-a"] and old in answer["variants"]

            after = client.query({"x": x}, model=MODEL)
            assert (after.version, after.variant, after.needs_load) == (1, new, False)
            infers = [msg.body.variant for msg in fake.messages("infer")]
            loads = [msg.body.variant for msg in fake.messages("load")]
            assert new in loads and infers.index(new) > infers.index(old)
            status = client.status()["master"]
            assert status["queries_failed"] == 0 and status["removing"] == [V2]
            done = status["versions"][MODEL]["rollout"]
            assert (done["from_version"], done["to_version"], done["state"]) == (2, 1, "done")
            assert done["switched_at"] - done["started_at"] >= 0.9  # not before the 1 s load was over
            fake.wait_message("unload", lambda msg: msg.body.variant == old)
        finally:
            fake.kill()


def test_a_fallback_not_warm_within_the_timeout_removes_nothing_and_the_route_stays(tmp_path, catalog):
    """The version taking over loads for 3 s, the removal allows 0.5 s: it fails with the fix, version 2 is not
    hidden and still answers, and the cancelled roll-out leaves the route on it."""
    x = digits_x(1)
    with start_master(tmp_path, catalog) as (master, client):
        fake = FakeWorker(master.worker_endpoint, "fake-a", load_s=3.0, outputs=catalog_outputs(catalog.store))
        try:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 5.0)
            old = client.query({"x": x}, model=MODEL).variant
            assert old.startswith(f"{V2}/")
            wait_for(lambda: client.status()["workers"][0]["variants"].get(old, {}).get("state") == "loaded", 8.0)
            fix = r"not warm within 0.5 s, so nothing was removed.*--timeout-s"
            with pytest.raises(QueryFailed, match=fix) as err:
                client.remove([V2], drain=True, timeout_s=0.5)
            assert err.value.code == "unavailable"
            status = client.status()["master"]
            assert status["removing"] == [] and status["versions"][MODEL]["rollout"]["state"] == "cancelled"
            after = client.query({"x": x}, model=MODEL)
            assert (after.version, after.variant) == (2, old)
        finally:
            fake.kill()
