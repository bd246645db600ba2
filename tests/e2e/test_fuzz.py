"""Issue "One house": every door is guarded. A bounded run of benchmarks/fuzz.py (the same generators and
drivers, a few thousand messages per door, deterministic by seed) whose invariants must all hold. Protocol 3:
valid messages are multipart (envelope, then tensor data frames); the garbage includes single frames and
messages whose data frames break the rules (a descriptor past the frames, a frame too short or too long,
extra / missing / empty / shared frames, frames on a message without tensors):

* the master's client endpoint: exactly one reply per message, no `internal` for a user mistake, documented
  error codes (`malformed` for every broken-frame query), valid queries mixed in answered like onnxruntime,
  the catalog readable afterwards;
* the master's worker endpoint: garbage from fresh identities (results with broken frames among it) leaves
  the master serving correctly and lists no garbage worker as serving; a registered worker's broken results
  are answered `malformed` until the garbage limit, then it is cut off;
* a worker driven by a fake master: it keeps heartbeating, every infer gets exactly one reply (`malformed`
  for broken frames), a failed load answers its held queries and does not wedge the variant;
* a slow reader's burst: every query answered or refused explicitly.
"""

from __future__ import annotations

import sys

import pytest

from support import REPO, build_catalog

sys.path.insert(0, str(REPO / "benchmarks"))
import fuzz  # noqa: E402

pytestmark = pytest.mark.slow
SEED = 7


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    home = build_catalog(tmp_path_factory.mktemp("fuzz") / "catalog")
    yield home
    home.close()


@pytest.fixture(scope="module")
def ref():
    return fuzz.Reference()


def _assert_holds(report: fuzz.Report) -> None:
    print(report.table())
    failures = report.failures()
    assert not failures, f"{report.door}: invariants fail:\n" + "\n".join(
        f"- {name}: {detail}" for name, detail in failures.items()) + "\n" + report.table()


@pytest.mark.timeout(120)
def test_master_client_door(catalog, ref, tmp_path):
    _assert_holds(fuzz.fuzz_master_client(catalog, tmp_path, frames=3000, seed=SEED, ref=ref, timeout_s=3.0,
                                          max_wall_s=60.0))


@pytest.mark.timeout(120)
def test_master_worker_door(catalog, ref, tmp_path):
    _assert_holds(fuzz.fuzz_master_worker_endpoint(catalog, tmp_path, frames=2000, seed=SEED, ref=ref,
                                                   max_wall_s=45.0))


@pytest.mark.timeout(120)
def test_worker_door(catalog, ref, tmp_path):
    _assert_holds(fuzz.fuzz_worker(catalog, tmp_path, frames=2000, seed=SEED, ref=ref, timeout_s=5.0,
                                   max_wall_s=45.0))


@pytest.mark.timeout(120)
def test_slow_reader_burst(catalog, ref, tmp_path):
    _assert_holds(fuzz.slow_reader(catalog, tmp_path, queries=5000, seed=SEED, ref=ref, drain_s=40.0, quiet_s=15.0))
