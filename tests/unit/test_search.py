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


def misleading(level: float, int8_t2: float, scale: float, sizes=SIZES) -> dict[search.Cell, float]:
    """A table where two threads scale int8 by `int8_t2` (0.05: twenty times faster; 2.0: twice as slow) and the
    other recipes by 0.7; `scale` sets how quick the model is."""
    t2 = {"fp32": 0.7, "int8": int8_t2, "bf16": 0.7}
    return {(g, b): scale * (0.02 + level * SPEED[g[1]] * b * (t2[g[1]] if g[2] == 2 else 1.0))
            for g in GROUPS for b in sizes}


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


def test_a_recipe_measured_at_one_batch_size_keeps_the_per_call_overhead_at_small_batches():
    """int8 and bf16 speed up the work, not the fixed per-call cost: measured once at batch 8, their batch-1 figure
    is the overhead plus their share of the work (the reference's own line), not the batch-8 ratio, which predicted
    them 35-50 % too fast at batch 1 and let them win the batch-1 decisions unmeasured."""
    sp = space()
    truth = {c: latency(0.01, *c) for c in sp.cells}  # overhead 0.02 ms: 2/3 of fp32's batch-1 latency
    anchors = search.anchor_cells(sp, {}, similar=[])
    prediction = search.Predictor({}).predict(sp, {c: truth[c] for c in anchors})
    for g in (("ort-cpu", "int8", 1), ("ov-cpu", "bf16", 1)):
        assert (g, 8) in anchors and (g, 1) not in anchors
        assert prediction.ms[(g, 1)] == pytest.approx(truth[(g, 1)], rel=0.1), g
        assert prediction.ms[(g, 32)] == pytest.approx(truth[(g, 32)], rel=0.25), g


def test_a_predicted_pick_is_measured_before_selection_could_act_on_it():
    """Other models run int8 twenty times faster with two threads than with one; on this one two threads make it
    twice as slow. The prediction makes int8 with two threads the fastest wherever threads can pay: verification
    measures such picks before any contender (within the budget), and at that batch size int8 with two threads is
    no longer picked."""
    # × 0.006: quick enough that the search anchors no thread count, so that only verification can catch it, and slow
    # enough at the large batches (int8: 0.1 ms and more) for threads to be predicted to pay at all
    library = {"a": misleading(1.0, 0.05, 0.006), "b": misleading(2.0, 0.05, 0.006)}
    truth = misleading(1.5, 2.0, 0.006)
    assert max(truth.values()) < search.THREAD_FLOOR_MS
    sp = space()
    anchors = search.anchor_cells(sp, library)
    misled = search.Predictor(library).predict(sp, {c: truth[c] for c in anchors})
    misled_picks = search.picks(sp, misled)
    first = next(c for c in misled_picks if c[0] == ("ort-cpu", "int8", 2))  # where threads are predicted to pay
    assert first not in anchors  # the prediction's pick: unmeasured
    asked: list[search.Cell] = []

    def measure(cells):
        asked.extend(cells)
        return {c: truth[c] for c in cells}

    budget = search.budget_for(sp, 0.3)
    prediction = search.run_search(sp, library, budget, measure, cap=budget)
    every_anchor = set(search.anchor_cells(sp, library, similar=list(library)))
    verified = [c for c in asked if c not in every_anchor]
    assert first in verified and verified[0] in misled_picks and len(asked) <= budget  # picks before contenders
    b = first[1]  # where it was measured, int8 with two threads (twice as slow here) is no longer picked
    picked = min(GROUPS, key=lambda g: prediction.ms[(g, b)] * (1 + prediction.error.get((g, b), 0)))
    assert picked != first[0], (b, picked)


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


def test_threads_are_anchored_per_backend_where_they_can_pay_and_their_ratio_carries_to_its_other_recipes():
    """No other model measured more than one thread: without measuring it here, four threads would be predicted no
    faster than one. A model slow enough for threads to matter anchors each backend's first configuration again
    with the most threads; OpenVINO's measured pay-off (3×) then predicts its other recipe at four threads, while
    ONNX Runtime's (none here) predicts its own."""
    groups = [(backend, r, t) for backend, recipes in (("ort-cpu", ("fp32", "int8")), ("ov-cpu", ("bf16", "int8")))
              for r in recipes for t in (1, 2, 4)]
    speed = {"fp32": 1.0, "int8": 0.4, "bf16": 0.25}

    def truth(g: search.Group, b: int) -> float:
        gain = (g[2] ** 0.8) if g[0] == "ov-cpu" else 1.0  # ORT: no faster with threads; OpenVINO: 3× at four
        return 0.05 + 0.1 * speed[g[1]] * b / gain

    sp = search.Space({g: SIZES for g in groups}, {g: 0.9 for g in groups})
    first = search.anchor_cells(sp, {})
    level = max(truth(*c) for c in first)
    assert level >= search.THREAD_FLOOR_MS
    recipes = search.anchor_cells(sp, {}, similar=[], level_ms=level)
    assert not [c for c in recipes if c[0][2] > 1]  # threads come once the recipes' anchors are measured
    anchors = search.anchor_cells(sp, {}, similar=[], level_ms=level, measured={c: truth(*c) for c in recipes})
    threads = [c for c in anchors if c[0][2] > 1]
    assert [g[0] for g, _ in threads] == ["ov-cpu", "ort-cpu"]  # one per backend, the fastest first, most threads
    assert all(g[2] == 4 for g, _ in threads) and len(anchors) <= int(search.ANCHOR_SHARE * len(sp.cells))
    prediction = search.Predictor({}).predict(sp, {c: truth(*c) for c in anchors})
    other = next(g for g in groups if g[0] == "ov-cpu" and g[2] == 4 and not any(a[0] == g for a in anchors))
    assert prediction.ms[(other, 8)] == pytest.approx(truth(other, 8), rel=0.15)
    assert prediction.ms[(other, 8)] < prediction.ms[((other[0], other[1], 1), 8)] / 2
    # a model too quick for threads to matter spends nothing on them
    quick = search.anchor_cells(sp, {}, similar=[], level_ms=0.01, measured={c: truth(*c) for c in recipes})
    assert not [c for c in quick if c[0][2] > 1]
    # where the anchors already take their share, one thread anchor still: the fastest backend's
    small = search.Space({g: (8,) for g in groups}, {g: 0.9 for g in groups})
    first_small = search.anchor_cells(small, {}, similar=[], level_ms=level)
    more = search.anchor_cells(small, {}, similar=[], level_ms=level, measured={c: truth(*c) for c in first_small})
    assert [c for c in more if c not in first_small] == [(("ov-cpu", "bf16", 4), 8)]


def test_predicted_picks_are_verified_once_the_anchors_have_spent_the_budget():
    """On every model of the benchmark the anchors alone exceed `DEFAULT_FRACTION` of the cells: the search used to
    stop there, its predicted picks never measured. It now measures them while the model's measured cells stay
    within `VERIFY_SHARE` of its cells (`cap` left at 0); a cap no larger than the anchors stops at the anchors."""
    sizes = (1, 2, 4, 8, 16, 32, 64)

    # × 0.002: quick enough that the search anchors no thread count
    library = {"a": misleading(1.0, 0.05, 0.002, sizes), "b": misleading(2.0, 0.05, 0.002, sizes)}
    truth = misleading(1.5, 2.0, 0.002, sizes)
    sp = search.Space({g: sizes for g in GROUPS}, {g: 0.9 for g in GROUPS})
    anchors = search.anchor_cells(sp, library, similar=list(library))
    verify = search.budget_for(sp, search.VERIFY_SHARE)
    budget = 1  # less than the anchors, as `DEFAULT_FRACTION` is on the benchmark's models
    assert budget < len(anchors) < verify

    def run(cap: int) -> list[search.Cell]:
        asked: list[search.Cell] = []

        def measure(cells):
            asked.extend(cells)
            return {c: truth[c] for c in cells}
        search.run_search(sp, library, budget, measure, cap=cap)
        return asked

    asked = run(0)
    assert sorted(asked[:len(anchors)]) == sorted(anchors) and len(asked) == len(set(asked)) == verify
    before = search.Predictor(library).predict(sp, {c: truth[c] for c in anchors})
    assert set(asked[len(anchors):]) <= set(search.picks(sp, before))  # what selection would have acted on
    assert sorted(run(len(anchors))) == sorted(anchors)


def test_a_backend_hopelessly_slower_than_the_fastest_gets_no_thread_anchor():
    """ONNX Runtime ran 3.5× OpenVINO int8's time on digits-cnn-l: how its threads pay off decides nothing there,
    and its thread anchor is a cell better spent verifying a predicted pick. The fastest backend keeps its own."""
    backends = ("ort-cpu", "ov-cpu")
    groups = [(backend, r, t) for backend in backends for r in ("fp32", "int8") for t in (1, 2)]
    sp = search.Space({g: SIZES for g in groups}, {g: 0.9 for g in groups})
    anchors = [((b, "fp32", 1), 8) for b in backends]
    for ratio, kept in ((1.0 / (search.HOPELESS + 0.5), ["ov-cpu"]),
                        (1.0 / (search.HOPELESS - 0.5), ["ov-cpu", "ort-cpu"])):
        measured = {((b, "fp32", 1), 8): 1.0 if b == "ort-cpu" else ratio for b in backends}  # OpenVINO: faster
        assert [g[0] for g, _ in search.thread_anchors(sp, anchors, measured)] == kept, ratio


def test_a_backend_alone_at_an_accuracy_floor_keeps_its_thread_anchor_however_slow():
    """OpenVINO's int8 and bf16 fell under SqueezeNet's accuracy floor: there ONNX Runtime's fp32 decides the class,
    however much slower than OpenVINO it is, so how its threads pay off must be measured."""
    groups = [("ort-cpu", "fp32", t) for t in (1, 2)] + [("ov-cpu", "int8", t) for t in (1, 2)]
    accuracy = {g: 0.99 if g[0] == "ort-cpu" else 0.9 for g in groups}
    sp = search.Space({g: SIZES for g in groups}, accuracy)
    anchors = [(("ort-cpu", "fp32", 1), 8), (("ov-cpu", "int8", 1), 8)]
    measured = {anchors[0]: 1.0, anchors[1]: 1.0 / (search.HOPELESS + 1)}  # ORT: 3x OpenVINO int8's time
    assert [g[0] for g, _ in search.thread_anchors(sp, anchors, measured)] == ["ov-cpu", "ort-cpu"]
    same = search.Space({g: SIZES for g in groups}, {g: 0.99 for g in groups})  # int8 as accurate: ORT hopeless
    assert [g[0] for g, _ in search.thread_anchors(same, anchors, measured)] == ["ov-cpu"]


def test_a_call_too_quick_for_threads_is_never_predicted_faster_with_more():
    """Other models' thread gains once predicted digits-mlp's int8 at two threads faster at batch 8, where it ran
    1.7x slower: under THREAD_GAIN_MS a configuration is predicted no faster than its recipe with the fewest threads,
    while above it the gains carry over as before."""
    def gaining(level: float) -> dict[search.Cell, float]:  # other models: two threads nearly halve the time
        return {(g, b): (0.01 + level * SPEED[g[1]] * b) / (1.9 if g[2] == 2 else 1.0) for g in GROUPS for b in SIZES}

    library = {"a": gaining(0.1), "b": gaining(0.3)}
    sp = space()
    for level in (0.0005, 0.05):  # this model: ~10 µs calls at batch 8 (no gain allowed); ~0.4 ms (gains kept)
        truth = gaining(level)
        measured = {c: truth[c] for c in search.anchor_cells(sp, library)}
        ms = search.Predictor(library).predict(sp, measured).ms
        one, two = (("ort-cpu", "int8", 1), 8), (("ort-cpu", "int8", 2), 8)
        assert one not in measured and two not in measured
        if ms[one] < search.THREAD_GAIN_MS:
            assert ms[two] >= ms[one]
        else:
            assert ms[two] < ms[one] / 1.5
