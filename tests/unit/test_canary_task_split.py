"""A canary splits the model-less queries (by task) that resolve to its model as it splits those naming the model: by
the same request-id draw, from one contiguous span of the selection index per draw interval."""

from __future__ import annotations

from infaas_cli.policy.placement import WorkerState
from infaas_cli.policy.selection import CatalogIndex, ClusterSnapshot, PriceTable, Query, VariantInfo, select
from infaas_cli.policy.versions import Route, route_draw, split_id

PRICES = PriceTable(cpu_usd_per_core_second=1e-3, gpu_usd_per_device_second=1e-2,
                    inferentia_usd_per_device_second=5e-3)
CLUSTER = ClusterSnapshot((WorkerState("w", frozenset({"ort-cpu"}), 8, 8, 1 << 33, {}, True),),
                          overhead_ms_default=0.0)


def vi(name: str, ms: float, task: str = "cls") -> VariantInfo:
    return VariantInfo(name=name, model=name.split("/", 1)[0], task=task, dataset="d", backend="ort-cpu",
                       hardware="cpu", recipe="fp32", threads=1, max_batch=8, accuracy=0.9, load_time_ms=0.0,
                       peak_memory_bytes=0, batch_latency_ms=((1, ms), (8, ms * 4)))


def index_of(infos, routes) -> CatalogIndex:
    return CatalogIndex(infos, PRICES, {i.model: (i.task, i.dataset) for i in infos}, routes=routes)


def task_pick(index: CatalogIndex, draw: float | None) -> str:
    return select(Query(kind="task", task="cls", dataset="d", objective="latency", route_draw=draw), index,
                  CLUSTER).variant


def test_a_task_query_reaches_the_canary_for_the_draws_its_percent_takes():
    # m's canary (v2) is the fastest of the task, m-big the slowest: the task's pick shows which version is in.
    infos = [vi("m/a", 2.0), vi("m/b", 2.5), vi("m@v2/a", 0.5), vi("m-big/a", 3.0)]
    index = index_of(infos, {"m": Route(1, 2, 25.0)})
    assert task_pick(index, 10.0) == "m@v2/a"
    assert task_pick(index, 24.99) == "m@v2/a"
    assert task_pick(index, 25.0) == "m/a"
    assert task_pick(index, 80.0) == "m/a"
    assert task_pick(index, None) == "m/a"  # no draw: the stable version
    # The canary's share of the task's queries is its percent, by the same hash as queries naming the model.
    draws = [route_draw(f"req-{i}") for i in range(4000)]
    share = sum(task_pick(index, d) == "m@v2/a" for d in draws) / len(draws)
    assert 0.22 < share < 0.28, share
    by_name = [select(Query(kind="model", model="m", objective="latency", route_draw=d), index, CLUSTER).variant
               for d in draws[:500]]
    assert [v.startswith("m@v2/") for v in by_name] == [task_pick(index, d) == "m@v2/a" for d in draws[:500]]


def test_every_draw_gets_one_slice_holding_exactly_the_versions_the_routes_pick():
    infos = [vi(f"{model}/{k}", 1.0 + k) for model in ("a", "a@v2", "b", "b@v3", "c", "c@v2", "d", "e", "e@v2")
             for k in range(3)]
    infos += [vi("a@v4/0", 1.0), vi("other/0", 1.0, task="x")]  # a version no route serves; another task
    routes = {"a": Route(1, 2, 10.0), "b": Route(3, 1, 60.0), "c": Route(2, 1, 10.0), "d": Route(1),
              "e": Route(2, 1, 99.5)}
    index = index_of(infos, routes)
    assert index.task_spans[("cls", "d")] == index.task_splits[("cls", "d")].stable
    for step in range(0, 1000):
        draw = step / 10
        start, end = index.task_splits[("cls", "d")].span(draw)
        models = {info.model for info in index.order[start:end]}
        want = {f"{base}@v{route.pick(draw)}" if route.pick(draw) > 1 else base for base, route in routes.items()}
        assert models == want, draw
        assert {split_id(m)[0] for m in models} == set(routes)


def test_a_canary_of_another_task_leaves_the_task_queries_on_the_stable_version():
    infos = [vi("m/a", 2.0), vi("m@v2/a", 0.5, task="other"), vi("n/a", 3.0)]
    index = index_of(infos, {"m": Route(1, 2, 50.0)})
    assert index.task_splits == {}
    assert task_pick(index, 1.0) == "m/a"


def test_without_canaries_there_is_nothing_to_split():
    index = index_of([vi("m/a", 2.0), vi("m@v2/a", 0.5)], {"m": Route(1)})
    assert index.task_splits == {} and task_pick(index, 1.0) == "m/a"
