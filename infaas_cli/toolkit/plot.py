"""Latency-versus-accuracy plot of a model's or a task's variants, Pareto front drawn (matplotlib, no display).

Read at a glance: colour is the backend, marker the precision, a hollow marker a predicted (not measured)
profile; variants that share one measurement (they differ only in max batch) are one point; the accuracy
axis ends at 100 %, the latency axis is logarithmic with plain numbers; the Pareto front (the fastest
variant for each accuracy) is a dashed line with its points named. In a task's plot each model's name
stands at its fastest point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infaas_cli.catalog.listings import pareto_front
from infaas_cli.catalog.records import is_predicted
from infaas_cli.errors import InfaasError

#: colour per backend (colour-blind-safe Okabe-Ito hues); an unlisted backend takes the next spare one.
BACKEND_COLOURS = {"ort-cpu": "#0072B2", "ov-cpu": "#E69F00", "ort-cuda": "#009E73", "ort-trt": "#CC79A7",
                   "trt": "#D55E00", "neuron": "#56B4E9"}
SPARE_COLOURS = ("#999999", "#F0E442", "#000000")
#: marker per precision, fastest-looking shapes for the narrowest types.
PRECISION_MARKERS = {"fp32": "o", "bf16": "D", "fp16": "^", "int8": "s"}
SPARE_MARKERS = ("P", "X", "*")


@dataclass(frozen=True)
class PlotPoint:
    """One measurement, drawn once: the variants of one configuration that differ only in max batch."""

    model: str
    backend: str
    recipe: str
    precision: str
    threads: int
    latency_ms: float
    accuracy_pct: float
    measured: bool
    max_batches: tuple[int, ...]  # of the variants it stands for, ascending

    @property
    def label(self) -> str:
        """What a person needs to find the variant: backend, recipe, threads, and the max batches it covers."""
        return f"{self.backend} {self.recipe} t{self.threads} {batch_range(self.max_batches)}"


def batch_range(max_batches: Sequence[int]) -> str:
    """"b8" for one variant, "b8–32" for several (the max batches the point stands for)."""
    lo, hi = min(max_batches), max(max_batches)
    return f"b{lo}" if lo == hi else f"b{lo}–{hi}"


def shared_points(variants: Iterable[dict[str, Any]], batch_size: int) -> list[PlotPoint]:
    """The points to draw at `batch_size`: one per measurement, fastest first.

    Rows are `listings.variant_view`s. A variant without an accuracy or a profile at the batch size is left
    out (a max batch below it, or not profiled). Variants share a measurement when they have the same model,
    backend, recipe, threads and artifact and the same figures: the profiler measures such a configuration
    once for all its max batches.
    """
    groups: dict[tuple, list[int]] = {}
    for v in variants:
        stats = v["profiles"].get(str(batch_size))
        if stats is None or v["accuracy"] is None or stats.get("p50_ms") is None:
            continue
        key = (v["model"], v["backend"], v["recipe"], v.get("precision") or "", v["threads"],
               v.get("artifact_sha256"), float(stats["p50_ms"]), float(v["accuracy"]) * 100,
               not is_predicted(stats))
        groups.setdefault(key, []).append(int(v["max_batch"]))
    points = [PlotPoint(model, backend, recipe, precision, threads, latency, accuracy, measured,
                        tuple(sorted(batches)))
              for (model, backend, recipe, precision, threads, _, latency, accuracy, measured), batches
              in groups.items()]
    return sorted(points, key=lambda p: (p.latency_ms, -p.accuracy_pct, p.model, p.label))


def _styles(values: Iterable[str], known: dict[str, str], spare: Sequence[str]) -> dict[str, str]:
    out, extra = {}, iter(spare)
    for value in sorted(set(values)):
        out[value] = known.get(value) or next(extra, spare[-1])
    return out


def plain_number(value: float, _pos: int | None = None) -> str:
    """A tick label without powers of ten: 0.05, 0.2, 1, 20, 300."""
    if value <= 0:
        return ""
    text = f"{value:.3g}"
    if "e" in text:  # only for very small or large values: spell them out
        text = f"{value:f}".rstrip("0").rstrip(".")
    return text


#: marker fill per model in a task's plot (a hollow marker is a predicted profile).
MODEL_FILLS = ("full", "left", "bottom", "right", "top")


def labelled(points: Sequence[PlotPoint], front: Sequence[PlotPoint], by_model: bool) -> list[PlotPoint]:
    """The points worth a name: the Pareto front, and in a model's plot the fastest of each backend and
    precision (so that every colour-marker pair is named once); fastest first."""
    chosen = {id(p): p for p in front}
    if not by_model:
        fastest: dict[tuple[str, str], PlotPoint] = {}
        for p in points:
            best = fastest.get((p.backend, p.precision))
            if best is None or p.latency_ms < best.latency_ms:
                fastest[(p.backend, p.precision)] = p
        chosen.update((id(p), p) for p in fastest.values())
    return sorted(chosen.values(), key=lambda p: p.latency_ms)


def place_labels(anchors: Sequence[tuple[float, float]], widths: Sequence[float], height: float,
                 below: Sequence[bool]) -> list[float]:
    """Vertical offsets (display units, signed) for labels starting at anchors (display x, y), so that no two
    overlap: each label takes the nearest free lane above or below its point. Anchors in ascending x."""
    placed: list[tuple[float, float, float]] = []  # (x0, x1, y centre) of placed labels
    offsets = []
    for (x, y), width, down in zip(anchors, widths, below):
        for lane in range(12):
            dy = (1 + lane) * height * (-1 if down else 1)
            yc = y + dy
            if all(x1 <= x or x + width <= x0 or abs(yc - yc0) >= height for x0, x1, yc0 in placed):
                break
        placed.append((x, x + width, yc))
        offsets.append(dy)
    return offsets


def plot_variants(variants: list[dict[str, Any]], batch_size: int, output: Path, title: str,
                  by_model: bool = False) -> int:
    """Write the plot; return how many variants it shows (points count once per shared measurement).

    `by_model`: a task's plot: each model has its own marker fill, and the front's names carry the model.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    points = shared_points(variants, batch_size)
    if not points:
        raise InfaasError(f"no variant has both an accuracy and a profile at batch size {batch_size}; "
                          "run `infaas profile` first or pick another --batch-size (a variant is profiled up to "
                          "its max batch)")
    colours = _styles((p.backend for p in points), BACKEND_COLOURS, SPARE_COLOURS)
    markers = _styles((p.precision for p in points), PRECISION_MARKERS, SPARE_MARKERS)
    models = sorted({p.model for p in points})
    fills = {m: MODEL_FILLS[i % len(MODEL_FILLS)] if by_model else "full" for i, m in enumerate(models)}

    fig, ax = plt.subplots(figsize=(10.5, 6.2))
    for p in points:
        colour = colours[p.backend]
        ax.plot([p.latency_ms], [p.accuracy_pct], linestyle="", marker=markers[p.precision], markersize=8,
                markeredgewidth=1.2, markeredgecolor=colour, fillstyle=fills[p.model] if p.measured else "none",
                markerfacecolor=colour, markerfacecoloralt="white", alpha=0.9, clip_on=False, zorder=3)

    xy = [(p.latency_ms, p.accuracy_pct) for p in points]
    front = sorted((points[i] for i in pareto_front(xy)), key=lambda p: p.latency_ms)
    ax.plot([p.latency_ms for p in front], [p.accuracy_pct for p in front], linestyle="--", color="#333333",
            linewidth=1.0, zorder=2, clip_on=False)
    ax.plot([p.latency_ms for p in front], [p.accuracy_pct for p in front], linestyle="", marker="o",
            markersize=13, markerfacecolor="none", markeredgecolor="#333333", markeredgewidth=0.9, zorder=4,
            clip_on=False)

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo_x, hi_x = min(x for x, _ in xy), max(x for x, _ in xy)
    ax.set_xlim(lo_x / 1.5, hi_x * 2.5)  # room for the slowest point's name on its right
    low = min(y for _, y in xy)
    ax.set_ylim(max(0.0, low - max(1.0, (100 - low) * 0.12)), 100.0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=(1, 2, 2.5, 5, 10)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_xlabel(f"p50 latency at batch {batch_size} (ms, log scale)")
    ax.set_ylabel("accuracy on the validation set (%)")
    ax.set_title(title, pad=12)  # points at 100 % are drawn over the top edge
    ax.grid(True, which="major", alpha=0.3)

    # Names: the front (and in a model's plot the fastest of each colour and marker), in lanes that do not
    # overlap, below points in the upper half of the axes and above the others.
    fig.canvas.draw()
    names = labelled(points, front, by_model)
    texts = [f"{p.model}: {p.label}" if by_model else p.label for p in names]
    styles = ["normal"] * len(names)
    if by_model:  # each model named where its cluster ends, unless its name on the front already marks it
        on_front = {p.model: p.latency_ms for p in reversed(front)}
        for model in models:
            slowest = max((p for p in points if p.model == model), key=lambda p: p.latency_ms)
            if model in on_front and slowest.latency_ms < 2 * on_front[model]:
                continue
            names.append(slowest)
            texts.append(model)
            styles.append("italic")
        order = sorted(range(len(names)), key=lambda i: names[i].latency_ms)
        names, texts, styles = [names[i] for i in order], [texts[i] for i in order], [styles[i] for i in order]
    fontsize = 7.5
    char_px = fontsize * fig.dpi / 72 * 0.6
    height_px = fontsize * fig.dpi / 72 * 1.5
    anchors = [tuple(ax.transData.transform((p.latency_ms, p.accuracy_pct))) for p in names]
    mid = ax.transAxes.transform((0, 0.5))[1]
    offsets = place_labels([(x + 8, y) for x, y in anchors], [len(t) * char_px for t in texts], height_px,
                           [y > mid for _, y in anchors])
    for p, text, style, dy in zip(names, texts, styles, offsets):
        ax.annotate(text, (p.latency_ms, p.accuracy_pct), xytext=(8, dy * 72 / fig.dpi), style=style,
                    textcoords="offset points", fontsize=fontsize, va="center", zorder=5,
                    color="#222222" if style == "normal" else "#555555",
                    arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6, "shrinkA": 0,
                                "shrinkB": 4})

    def header(text: str) -> Line2D:
        return Line2D([], [], linestyle="", marker="", label=text)

    handles = [header("colour: backend")]
    handles += [Line2D([], [], linestyle="", marker="o", markersize=8, color=colours[b], label=b) for b in colours]
    handles.append(header("marker: precision"))
    handles += [Line2D([], [], linestyle="", marker=markers[q], markersize=7, color="#555555", label=q)
                for q in markers]
    if by_model:
        handles.append(header("fill: model"))
        handles += [Line2D([], [], linestyle="", marker="o", markersize=8, color="#555555", fillstyle=fills[m],
                           markerfacecoloralt="white", label=m) for m in models]
    handles.append(header(" "))
    handles.append(Line2D([], [], linestyle="--", color="#333333", marker="o", markersize=11,
                          markerfacecolor="none", label="Pareto front"))
    if not all(p.measured for p in points):
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=7, color="#555555",
                              markerfacecolor="none", label="predicted, not measured"))
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                       handletextpad=0.4, borderaxespad=0.0)
    for text, handle in zip(legend.get_texts(), handles):
        if not handle.get_marker() or handle.get_marker() == "None":
            text.set_fontweight("bold")
            text.set_x(-28)  # headers start where the markers do

    shared = sum(len(p.max_batches) for p in points)
    fig.text(0.01, 0.012, f"{len(points)} points for {shared} variants: variants that differ only in max batch share "
             f"one measurement and are drawn once (b8–32: max batch 8 to 32).\nVariants with a max batch below "
             f"{batch_size} are not measured at batch {batch_size}. p50 latency on the host that profiled them.",
             fontsize=7.5, color="#555555")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return shared
