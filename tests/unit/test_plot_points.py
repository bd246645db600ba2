"""The plot's pure parts: variants sharing a measurement become one point; labels never overlap; plain ticks."""

from __future__ import annotations

from infaas_cli.toolkit.plot import batch_range, labelled, place_labels, plain_number, shared_points


def row(model: str, backend: str, recipe: str, threads: int, max_batch: int, p50_ms: float | None,
        accuracy: float | None = 0.97, precision: str = "fp32", sha: str = "a", measured: bool = True) -> dict:
    profiles = {} if p50_ms is None else {"8": {"p50_ms": p50_ms, "measured": measured}}
    return {"name": f"{model}/{backend}-{recipe}-t{threads}-b{max_batch}", "model": model, "backend": backend,
            "recipe": recipe, "precision": precision, "threads": threads, "max_batch": max_batch,
            "accuracy": accuracy, "artifact_sha256": sha, "profiles": profiles}


def test_variants_differing_only_in_max_batch_are_one_point():
    rows = [row("m", "ort-cpu", "fp32o3", 1, b, 2.0) for b in (8, 16, 32)]
    rows.append(row("m", "ort-cpu", "fp32o3", 1, 4, None))  # max batch below 8: not profiled there, not drawn
    rows.append(row("m", "ort-cpu", "fp32o3", 2, 8, 1.5))  # other threads: its own measurement
    rows.append(row("m", "ov-cpu", "bf16", 1, 8, 1.0, precision="bf16", sha="b"))
    points = shared_points(rows, 8)
    assert [(p.backend, p.recipe, p.threads, p.max_batches) for p in points] == [
        ("ov-cpu", "bf16", 1, (8,)), ("ort-cpu", "fp32o3", 2, (8,)), ("ort-cpu", "fp32o3", 1, (8, 16, 32))]
    assert points[2].label == "ort-cpu fp32o3 t1 b8–32" and points[0].label == "ov-cpu bf16 t1 b8"
    assert points[2].accuracy_pct == 97.0


def test_different_figures_are_different_measurements():
    # The same configuration measured separately (e.g. profiled at different times) is not merged.
    rows = [row("m", "ort-cpu", "fp32o3", 1, 8, 2.0), row("m", "ort-cpu", "fp32o3", 1, 16, 2.1),
            row("m", "ort-cpu", "fp32o3", 1, 32, 2.0, measured=False)]
    assert sorted((p.max_batches, p.measured) for p in shared_points(rows, 8)) == [((8,), True), ((16,), True),
                                                                                   ((32,), False)]


def test_without_accuracy_or_profile_nothing_is_drawn():
    assert shared_points([row("m", "ort-cpu", "fp32o1", 1, 8, 1.0, accuracy=None),
                          row("m", "ort-cpu", "fp32o1", 1, 8, None)], 8) == []


def test_labels_name_the_front_and_each_backend_precision_once():
    rows = [row("m", "ort-cpu", "fp32o1", 1, 8, 3.0), row("m", "ort-cpu", "fp32o3", 1, 8, 2.0),
            row("m", "ov-cpu", "bf16", 1, 8, 1.0, precision="bf16", sha="b"),
            row("m", "ov-cpu", "int8", 1, 8, 0.5, precision="int8", accuracy=0.9, sha="c")]
    points = shared_points(rows, 8)
    front = [p for p in points if p.recipe in ("int8", "bf16")]
    named = labelled(points, front, by_model=False)
    assert [p.recipe for p in named] == ["int8", "bf16", "fp32o3"]  # fp32o1 is slower than its kind's fastest
    assert [p.recipe for p in labelled(points, front, by_model=True)] == ["int8", "bf16"]


def test_labels_take_free_lanes():
    # Three labels 100 px wide whose anchors are 10 px apart on one line: each in its own lane.
    offsets = place_labels([(0, 500), (10, 500), (20, 500)], [100, 100, 100], 12, [True, True, True])
    assert offsets == [-12, -24, -36]
    # Far apart: all in the first lane, above the points when asked.
    assert place_labels([(0, 100), (300, 100)], [100, 100], 12, [False, False]) == [12, 12]


def test_tick_labels_are_plain_numbers():
    assert [plain_number(v) for v in (0.005, 0.05, 0.2, 1.0, 20.0, 500.0, 2000.0)] == [
        "0.005", "0.05", "0.2", "1", "20", "500", "2000"]
    assert plain_number(0.0001) == "0.0001" and batch_range([8, 16, 32]) == "b8–32" and batch_range([4]) == "b4"
