"""Configuration search (toolkit.search) without running a model: the predictor, the choice, the stated error;
and how predicted figures are stored, listed and selected."""

from __future__ import annotations

import math

import pytest

from infaas_cli.catalog.listings import batch_view
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.policy.drift import predicted_sizes
from infaas_cli.policy.selection import PriceTable, build_index
from infaas_cli.toolkit import search

GROUPS = [("ort-cpu", r, t) for r in ("fp32", "int8") for t in (1, 2)] + [("ov-cpu", "bf16", t) for t in (1, 2)]
SIZES = (1, 4, 8, 16, 32)
SPEED = {"fp32": 1.0, "int8": 0.4, "bf16": 0.25}


def latency(level: float, g: search.Group, b: int) -> float:
    """A structured latency: a per-call overhead plus work that scales with the batch, sped up by recipe and
    (sub-linearly) by threads."""
    _, recipe, threads = g
    return 0.02 + level * SPEED[recipe] * b / threads ** 0.7


def table(level: float) -> dict[search.Cell, float]:
    return {(g, b): latency(level, g, b) for g in GROUPS for b in SIZES}


def space(accuracy: dict | None = None) -> search.Space:
    return search.Space({g: SIZES for g in GROUPS}, accuracy or {g: 0.9 for g in GROUPS})


def test_the_predictor_carries_other_models_ratios_over_to_a_new_model():
    library = {"a": table(0.5), "b": table(1.0), "c": table(2.0)}
    truth = table(1.3)
    sp = space()
    anchors = search.anchor_cells(sp, library)
    assert len(anchors) == 2 and {b for _, b in anchors} == {1, 32}  # every configuration is known elsewhere
    prediction = search.Predictor(library).predict(sp, {c: truth[c] for c in anchors})
    errors = [abs(prediction.ms[c] / truth[c] - 1) for c in sp.cells]
    assert max(errors) < 0.15, max(errors)
    assert set(prediction.error) == set(sp.cells) - set(anchors)  # measured cells carry no error
    assert all(search.MIN_ERROR <= e <= 1.0 for e in prediction.error.values())


def test_a_cold_search_anchors_every_new_recipe_and_predicts_along_its_batch_curve():
    sp = space()
    assert len(search.anchor_cells(sp, {})) == 2  # the reference's two ends first
    anchors = search.anchor_cells(sp, {}, similar=[])
    # nothing measured elsewhere: the reference at both ends, each other recipe once (middle batch, fewest threads)
    assert sorted(anchors) == sorted([(GROUPS[0], 1), (GROUPS[0], 32)]
                                     + [(g, 8) for g in GROUPS if g[2] == 1 and g != GROUPS[0]])
    truth = table(1.0)
    prediction = search.Predictor({}).predict(sp, {c: truth[c] for c in anchors})
    assert all(math.isfinite(v) and v > 0 for v in prediction.ms.values())
    # two threads: the reference recipe's thread scaling (predicted: no other model shows it) carries over
    assert prediction.ms[(("ov-cpu", "bf16", 2), 32)] < prediction.ms[(("ov-cpu", "bf16", 1), 32)] * 1.5
    # bf16 t1 is measured in the middle: its ends follow the reference's curve
    g = ("ov-cpu", "bf16", 1)
    assert prediction.ms[(g, 32)] == pytest.approx(truth[(g, 32)], rel=0.5)


def test_a_predicted_pick_is_measured_before_selection_could_act_on_it():
    """Other models run int8 ten times faster than fp32; on this one it is twice as slow. The prediction makes
    int8 with two threads the fastest everywhere: verification measures it (within the budget), and at that batch
    size int8 is no longer picked."""
    def tab(level: float, speed: dict[str, float]) -> dict[search.Cell, float]:
        return {(g, b): 0.02 + level * speed[g[1]] * b / g[2] ** 0.7 for g in GROUPS for b in SIZES}

    fast_int8 = {"fp32": 1.0, "int8": 0.1, "bf16": 1.0}
    library = {"a": tab(1.0, fast_int8), "b": tab(2.0, fast_int8)}
    truth = tab(1.5, {"fp32": 1.0, "int8": 2.0, "bf16": 1.0})
    sp = space()
    anchors = search.anchor_cells(sp, library)
    misled = search.Predictor(library).predict(sp, {c: truth[c] for c in anchors})
    first = search.picks(sp, misled)[0]
    assert first[0][1] == "int8" and first not in anchors  # the prediction's pick: unmeasured int8
    asked: list[search.Cell] = []

    def measure(cells):
        asked.extend(cells)
        return {c: truth[c] for c in cells}

    budget = search.budget_for(sp, 0.2)
    prediction = search.run_search(sp, library, budget, measure, cap=budget)
    assert first in asked and len(asked) <= budget
    b = first[1]  # where it was measured, int8 (twice as slow here) is no longer picked
    picked = min(GROUPS, key=lambda g: prediction.ms[(g, b)] * (1 + prediction.error.get((g, b), 0)))
    assert picked[1] != "int8", (b, picked)


def test_the_search_measures_within_its_budget_and_finds_the_fastest():
    library = {"a": table(0.5), "b": table(1.0), "c": table(3.0)}
    truth = table(2.0)
    sp = space()
    asked: list[search.Cell] = []

    def measure(cells):
        asked.extend(cells)
        return {c: truth[c] for c in cells}

    budget = search.budget_for(sp)
    assert budget == int(search.DEFAULT_FRACTION * len(sp.cells))
    prediction = search.run_search(sp, library, budget, measure)
    assert len(asked) == len(set(asked)) <= budget
    for b in SIZES:
        best = min(GROUPS, key=lambda g: truth[(g, b)])
        picked = min(GROUPS, key=lambda g: prediction.ms[(g, b)] * (1 + prediction.error.get((g, b), 0)))
        assert truth[(picked, b)] <= 1.05 * truth[(best, b)]


def test_contenders_respect_accuracy_floors_and_cost():
    sp = space({g: (0.8 if g[1] == "int8" else 0.95) for g in GROUPS})
    prediction = search.Prediction({c: latency(1.0, *c) for c in sp.cells}, {c: 0.01 for c in sp.cells})
    score = search.contenders(sp, prediction)
    # the fastest of all (bf16 t2) and the cheapest (bf16 t1: threads × latency) contend at every batch size
    assert all((("ov-cpu", "bf16", 2), b) in score and (("ov-cpu", "bf16", 1), b) in score for b in SIZES)
    assert (("ort-cpu", "fp32", 1), 32) not in score  # 4× slower than bf16: wins nothing


def test_a_failed_measurement_is_not_asked_for_forever():
    sp = space()
    calls = []
    prediction = search.run_search(sp, {}, 3, lambda cells: calls.append(cells) or {})
    assert prediction.ms == {} and len(calls) <= 3


def test_old_profiles_load_as_measured_and_listings_show_the_fields():
    old = {"p50_ms": 1.0, "p95_ms": 1.2, "p99_ms": 1.3, "mean_ms": 1.05, "throughput_qps": 950.0, "runs": 20}
    record = ProfileRecord.from_dict({"variant": "m/v", "model": "m", "hardware_id": "cpu-x", "hardware": {},
                                      "load_time_ms": 1.0, "peak_memory_bytes": 1, "batches": {"1": old}})
    assert record.batches["1"] == old  # kept as stored
    assert batch_view(old) == {**old, "measured": True, "predicted_error": None}
    assert predicted_sizes({"1": old, "8": {**old, "measured": False, "predicted_error": 0.2}}) == [8]


def test_selection_adds_a_predicted_figures_error_bound():
    model = ModelRecord(name="m", task="t", dataset="d", artifact_sha256="0" * 64, source_file="m.onnx", size_bytes=1,
                        inputs=[], outputs=[], batch_dim="dynamic", max_batch=8, opset=13, producer="x",
                        accuracy=0.9, accuracy_metric="top1", validation_sha256=None, validation_samples=0,
                        registered_at=0.0)
    variants = [VariantRecord(name=f"m/{n}", model="m", backend="ort-cpu", hardware="cpu", recipe="fp32",
                              precision="fp32", threads=1, max_batch=8, artifact_sha256="0" * 64, accuracy=0.9,
                              accuracy_metric="top1", build_time_ms=0.0, created_at=0.0) for n in ("a", "b")]
    stats = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 2.0, "mean_ms": 1.0, "throughput_qps": 1.0, "runs": 1}
    profiles = [ProfileRecord("m/a", "m", "cpu-x", {}, 1.0, 1, {"1": stats}),
                ProfileRecord("m/b", "m", "cpu-x", {}, 1.0, 1,
                              {"1": {**stats, "runs": 0, "measured": False, "predicted_error": 0.25}})]
    index = build_index([model], variants, profiles, PriceTable(1.0, 1.0, 1.0))
    assert index.infos["m/a"].latency_ms(1) == 2.0
    assert index.infos["m/b"].latency_ms(1) == pytest.approx(2.5)
