"""Latency-versus-accuracy plot of a model's variants, Pareto front marked (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infaas_cli.errors import InfaasError
from infaas_cli.catalog.listings import pareto_front


def plot_variants(variants: list[dict[str, Any]], batch_size: int, output: Path, title: str) -> int:
    """Write the plot; return how many variants had a profile at that batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(v, v["profiles"][str(batch_size)]["p50_ms"]) for v in variants
           if str(batch_size) in v["profiles"] and v["accuracy"] is not None]
    if not pts:
        raise InfaasError(f"no variant has both an accuracy and a profile at batch size {batch_size}; "
                          "run `infaas profile` first or pick another --batch-size")
    fig, ax = plt.subplots(figsize=(8, 5))
    by_recipe: dict[str, list] = {}
    for v, lat in pts:
        by_recipe.setdefault(f"{v['backend']}-{v['recipe']}", []).append((lat, v["accuracy"] * 100))
    for label, xy in sorted(by_recipe.items()):
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=label, alpha=0.75, s=28)
    xy = [(lat, v["accuracy"] * 100) for v, lat in pts]
    front = sorted((xy[i] for i in pareto_front(xy)), key=lambda p: p[0])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=1.2,
            label="Pareto front")
    ax.scatter([p[0] for p in front], [p[1] for p in front], facecolors="none", edgecolors="black", s=90)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch_size} (ms, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return len(pts)
