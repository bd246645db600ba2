"""Online refinement of `profile --search`: a variant whose profile is predicted serves a query on a worker; the
in-process master asks that worker to re-profile it (the drift path, low priority) and stores the answer as
measured, so selection stops adding the predicted error bound."""

from __future__ import annotations

import time

import msgspec
import pytest

from infaas_cli import protocol
from infaas_cli.catalog.records import ProfileRecord, profile_key
from infaas_cli.protocol import messages as m
from infaas_cli.toolkit.hardware import hardware_id
from support import FakeWorker, build_catalog, digits_x, start_master, wait_for

pytestmark = pytest.mark.timeout(60)
MODEL = "digits-logreg"


def _predict_everything(home) -> None:
    """Turn the catalog's measured profiles into predicted ones, as `profile --search` would have stored them."""
    with home.store.transaction() as txn:
        for p in home.store.profiles(MODEL):
            batches = {b: {**s, "runs": 0, "measured": False, "predicted_error": 0.2} for b, s in p.batches.items()}
            txn.put_profile(ProfileRecord(p.variant, p.model, p.hardware_id, p.hardware, p.load_time_ms,
                                          p.peak_memory_bytes, batches, p.measured_at + 1))


def test_a_predicted_variant_that_serves_is_reprofiled_and_stored_measured(tmp_path):
    home = build_catalog(tmp_path / "home", models=(MODEL,))
    _predict_everything(home)
    with start_master(tmp_path, home) as (master, client):
        worker = FakeWorker(master.worker_endpoint, "fake-r")
        with worker:
            wait_for(lambda: any(w["worker_id"] == "fake-r" for w in client.status()["workers"]), 10)
            served = client.query({"x": digits_x(1)}, model=MODEL).variant
            ask = worker.wait_message("reprofile", timeout_s=10)
            assert ask.body.variant == served and set(ask.body.batch_sizes) <= {1, 8, 32}
            hw = {"cores": worker.cores, "memory_bytes": worker.memory_bytes, "cpu_model": "fake",
                  "hostname": "host-fake-r"}
            batches = {b: m.BatchLatency(p50_ms=0.5, p95_ms=0.6, p99_ms=0.7, mean_ms=0.55,
                                         throughput_qps=b / 0.00055, runs=20) for b in ask.body.batch_sizes}
            hw_id = hardware_id("cpu", msgspec.structs.asdict(m.Hardware(**hw)))
            worker.send(protocol.Message("reprofiled", m.ReprofiledBody(
                variant=served, hardware_id=hw_id, batches=batches, load_time_ms=1.0, peak_memory_bytes=1,
                hardware=m.Hardware(**hw), worker_id="fake-r"), id=ask.id))

            def stored():
                entries = [e for e in client.status()["master"].get("reprofiles", []) if e.get("variant") == served]
                return entries and entries[-1]["status"] == "stored" and entries[-1]
            entry = wait_for(stored, 10)
            assert entry["reason"] == "predicted" and entry["worker"] == "fake-r"
            record = master.store.get(ProfileRecord, profile_key(served, hw_id))
            assert record is not None and record.source == "reprofile"
            assert all(s["measured"] is True and s["predicted_error"] is None for s in record.batches.values())
            # measured now: serving it again asks for no second re-profile (the control step runs every 0.1 s)
            client.query({"x": digits_x(1)}, model=MODEL)
            time.sleep(1.0)
            assert [msg.body.variant for msg in worker.messages("reprofile")] == [served]
    home.close()
