"""Pure tests of placement and of the master's core arithmetic: plain worker views, plain numbers."""

from __future__ import annotations

import pytest

from infaas_cli.policy.cores import cpu_utilisation, dispatched_threads, known_free_cores, worker_cores
from infaas_cli.policy.placement import VariantNeed, WorkerState, place, rank_key

GIB = 1 << 30


def w(wid: str, free_cores: float = 4, free_mem: int = 8 * GIB, loaded: dict[str, int] | None = None,
      backends: tuple[str, ...] = ("ort-cpu",), alive: bool = True, cores: int = 8) -> WorkerState:
    return WorkerState(worker_id=wid, backends=frozenset(backends), cores=cores, free_cores=free_cores,
                       free_memory_bytes=free_mem, loaded=loaded or {}, alive=alive)


NEED = VariantNeed("m/a", "ort-cpu", threads=2, memory_bytes=GIB)


def test_rank_most_free_cores_then_memory_then_id():
    ws = [w("b", 4, GIB), w("a", 4, GIB), w("c", 4, 2 * GIB), w("d", 6, 0)]
    assert [x.worker_id for x in sorted(ws, key=rank_key)] == ["d", "c", "a", "b"]


def test_unknown_purpose_is_an_error():
    with pytest.raises(ValueError, match="purpose"):
        place([w("w1")], NEED, "anywhere")


# -- a query's load -----------------------------------------------------------------------------------

def test_query_load_goes_to_most_free_cores_among_those_with_memory():
    ws = [w("w1", 2), w("w2", 6), w("w3", 6, 9 * GIB), w("w4", 16, backends=("ort-gpu",))]
    assert place(ws, NEED, "query") == ("w3",)
    need = VariantNeed("m/a", "ort-cpu", 2, 4 * GIB)
    assert place([w("w1", 8, GIB), w("w2", 2, 5 * GIB)], need, "query") == ("w2",)


def test_query_load_oversubscribes_cores_but_not_memory_first():
    # Cores do not bound a query's load (the worker evicts or waits); the less oversubscribed wins.
    assert place([w("w1", -3), w("w2", -1)], NEED, "query") == ("w2",)


def test_query_load_without_room_goes_to_most_free_memory():
    need = VariantNeed("m/a", "ort-cpu", 2, 4 * GIB)
    assert place([w("w1", 8, GIB), w("w2", 2, 2 * GIB), w("w0", 2, 2 * GIB)], need, "query") == ("w0",)


def test_query_load_skips_dead_draining_and_other_backends():
    ws = [w("dead", 8, alive=False), w("gpu", 8, backends=("ort-gpu",)), w("ok", 1)]
    assert place(ws, NEED, "query") == ("ok",)
    assert place(ws[:2], NEED, "query") == ()


# -- the static baseline's fixed replicas ----------------------------------------------------------------

def test_static_goes_everywhere_it_fits_beside_what_is_there():
    ws = [w("w1", 4), w("w2", 1), w("w3", 2, loaded={"m/b": 0}), w("w4", 8, backends=("ort-gpu",))]
    assert place(ws, NEED, "static") == ("w1", "w3")


def test_static_ignores_memory():
    assert place([w("w1", 4, free_mem=0)], NEED, "static") == ("w1",)


def test_static_skips_workers_holding_it_already():
    ws = [w("w1", 4, loaded={"m/a": 0}), w("w2", 4)]
    assert place(ws, NEED, "static") == ("w2",)
    # Placed somewhere and no room elsewhere: nothing more.
    assert place([w("w1", 0, loaded={"m/a": 0}), w("w2", 1)], NEED, "static") == ()


def test_static_fits_nowhere_goes_to_the_roomiest():
    assert place([w("w1", 1), w("w2", -2), w("w3", 1, 9 * GIB)], NEED, "static") == ("w3",)
    assert place([w("w1", 0, backends=("ort-gpu",))], NEED, "static") == ()


# -- a new replica ----------------------------------------------------------------------------------

def test_replica_stays_on_its_worker_when_it_fits():
    ws = [w("here", 2, loaded={"m/a": 3}), w("there", 8)]
    assert place(ws, NEED, "replica", current="here") == ("here",)


def test_replica_moves_to_the_roomiest_other_worker_not_holding_it():
    ws = [w("here", 1, loaded={"m/a": 3}), w("holder", 8, loaded={"m/a": 0}), w("small", 1), w("w2", 2),
          w("w3", 4), w("gpu", 16, backends=("ort-gpu",)), w("dead", 16, alive=False)]
    assert place(ws, NEED, "replica", current="here") == ("w3",)


def test_replica_with_no_room_anywhere_goes_nowhere():
    ws = [w("here", 1, loaded={"m/a": 3}), w("w2", 1)]
    assert place(ws, NEED, "replica", current="here") == ()


def test_replica_leaves_a_draining_worker():
    # A draining worker is not alive to placement: its replica goes elsewhere.
    ws = [w("here", 8, loaded={"m/a": 3}, alive=False), w("w2", 2)]
    assert place(ws, NEED, "replica", current="here") == ("w2",)


# -- cores ------------------------------------------------------------------------------------------

def test_worker_cores_prefers_the_heartbeat_then_the_registration():
    assert worker_cores(6, 8) == 6
    assert worker_cores(None, 8) == 8
    assert worker_cores(None, None) == 1
    assert worker_cores(0, 0) == 1


def test_known_free_cores_is_the_smaller_estimate_and_not_clamped():
    assert known_free_cores(8, 6, 1) == 6.0  # the heartbeat sees a replica the master does not count
    assert known_free_cores(8, 6, 4) == 4.0  # the master dispatched a load the heartbeat has not shown
    assert known_free_cores(8, None, 3) == 5.0  # before the first heartbeat
    assert known_free_cores(4, 0, 6) == -2.0  # oversubscribed: negative, so the less full one ranks first


def test_dispatched_threads_counts_each_variant_once():
    threads = {"a": 2, "b": 4}
    assert dispatched_threads(["a", "b", "unknown"], lambda n: threads.get(n, 0)) == 6
    assert dispatched_threads({"a": 5}, lambda n: threads.get(n, 0)) == 2  # the loaded map: queue lengths ignored


def test_cpu_utilisation_is_process_cpu_over_cores():
    assert cpu_utilisation(200.0, 4) == 0.5
    assert cpu_utilisation(None, 4) == 0.0
    assert cpu_utilisation(50.0, 0) == 0.5
