"""A variant that runs one batch size — a fixed-batch model's, or any on a fixed-shape backend (ort-cuda) — is
warmed at that size and served with every batch padded to it: a real worker (in-process, real ONNX Runtime) beside
a real master answers a fixed-batch model's queries of 1, 2 and 4 samples with exactly their own rows.

The worker once warmed every variant at one sample, which a session of batch 4 refuses: the load failed and every
query to a fixed-batch model with it."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

from infaas_cli.catalog.home import InfaasHome
from infaas_cli.settings import WorkerSettings
from infaas_cli.toolkit.generate import generate_variants
from infaas_cli.toolkit.profiler import profile_models
from infaas_cli.toolkit.register import register_model
from infaas_daemons.worker import Worker
from support import FAST, make_fixed_batch_model, start_master, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("padded")
    path = make_fixed_batch_model(tmp / "fixed.onnx", batch=4)
    np.savez(tmp / "val.npz", x=np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32))
    home = InfaasHome(tmp / "home")
    register_model(home, path, "fixed", "toy", "toyset", tmp / "val.npz")
    generate_variants(home, "fixed")
    profile_models(home, ["fixed"], settings=FAST)
    yield home, path
    home.close()


def test_a_fixed_batch_model_is_served_padded_to_its_batch(tmp_path, fixed):
    home, path = fixed
    variant = next(v.name for v in home.store.variants("fixed") if v.backend == "ort-cpu")
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with start_master(tmp_path, home) as (master, client):
        worker = Worker(WorkerSettings(master_endpoint=master.worker_endpoint, worker_id="w-pad",
                                       cache_dir=str(tmp_path / "cache"), cores=2, heartbeat_interval_s=0.1))
        thread = threading.Thread(target=worker.run, name="worker-pad", daemon=True)
        thread.start()
        try:
            wait_for(lambda: client.status()["master"]["workers_alive"] == 1, 10.0)
            for n in (1, 2, 4, 1):
                got = client.query({"x": x[:n]}, variant=variant)
                (y,) = got.outputs
                assert np.asarray(y).shape == (n, 3)
                np.testing.assert_allclose(np.asarray(y), want[:n], rtol=1e-5, atol=1e-6)
            assert worker.variants[variant].pads
        finally:
            worker.stop_event.set()
            thread.join(10)

