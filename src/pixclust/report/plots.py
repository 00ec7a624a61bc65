"""Static figures for papers and for the HTML report (matplotlib).

Each function builds and returns a Figure and writes nothing; ``save_png``
turns one into PNG bytes. Figures are made without pyplot, so no backend is
chosen and none is switched: a notebook that imports pixclust keeps its inline
plots, and no figure stays alive in pyplot's registry. Tests read the figures'
artists directly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

CHOICE_COLOUR = "#d62728"
ELBOW_COLOUR = "#2ca02c"
VARIANCE_TARGET = 0.95


def cluster_colours(n: int) -> list[str]:
    """Distinct colours for n clusters (tab10/tab20, then evenly spaced hues); shared with the HTML report."""
    if n <= 10:
        cmap, count = matplotlib.colormaps.get_cmap("tab10"), 10
    elif n <= 20:
        cmap, count = matplotlib.colormaps.get_cmap("tab20"), 20
    else:
        cmap, count = matplotlib.colormaps.get_cmap("hsv"), n + 1
    return [matplotlib.colors.to_hex(cmap(i / count if count > 20 else i)) for i in range(n)]


def variance_figure(ratio: np.ndarray) -> Figure:
    """Explained variance per principal component, the cumulative curve, and the 95% line."""
    ratio = np.asarray(ratio, dtype=float)
    components = np.arange(1, len(ratio) + 1)
    cumulative = np.cumsum(ratio)
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    axis.bar(components, ratio, color="#1f77b4", label="explained")
    axis.step(components, cumulative, where="mid", color="#ff7f0e", label="cumulative")
    axis.axhline(VARIANCE_TARGET, color="grey", linestyle="--", label="95%")
    reached = np.flatnonzero(cumulative >= VARIANCE_TARGET)
    title = "PCA explained variance"
    if len(reached):
        title += f" (95% with {reached[0] + 1} components)"
    axis.set(title=title, xlabel="principal component", ylabel="share of variance", ylim=(0, 1.05))
    axis.legend(loc="center right")
    figure.tight_layout()
    return figure


def elbow_figure(ks: Sequence[int], inertia: Sequence[float], elbow_k: int | None, chosen_k: int) -> Figure:
    """Inertia over k, the knee found by Kneedle, and the k the run chose."""
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    axis.plot(ks, inertia, "o-", color="#1f77b4")
    if elbow_k is not None:
        axis.axvline(elbow_k, color=ELBOW_COLOUR, linestyle="--", label=f"elbow k = {elbow_k}")
    axis.axvline(chosen_k, color=CHOICE_COLOUR, linestyle=":", label=f"chosen k = {chosen_k}")
    axis.set(title="Elbow: within-cluster sum of squares", xlabel="k", ylabel="inertia")
    axis.legend()
    figure.tight_layout()
    return figure


def k_scan_figure(ks: Sequence[int], values: Sequence[float | None], chosen_k: int, score: str) -> Figure:
    """One score (mean silhouette, or kNN-graph modularity) over k, with the chosen k marked."""
    points = np.array([np.nan if v is None else v for v in values], dtype=float)
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    axis.plot(ks, points, "o-", color="#1f77b4")
    axis.axvline(chosen_k, color=CHOICE_COLOUR, linestyle=":", label=f"chosen k = {chosen_k}")
    axis.set(title=f"{score.capitalize()} over k", xlabel="k", ylabel=score)
    axis.legend()
    figure.tight_layout()
    return figure


def silhouette_samples_figure(values: np.ndarray, labels: np.ndarray, names: dict[int, str]) -> Figure:
    """The classic per-sample silhouette plot: one sorted band per cluster, the mean as a line."""
    scored = np.isfinite(values)
    ids = [label for label in names if label >= 0]
    colours = cluster_colours(len(ids))
    figure = Figure(figsize=(7, max(4, 0.35 * len(ids) + 2)))
    axis = figure.subplots()
    bottom = 0
    for colour, label in zip(colours, ids, strict=True):
        band = np.sort(values[scored & (labels == label)])
        if len(band) == 0:
            continue
        axis.fill_betweenx(np.arange(bottom, bottom + len(band)), 0, band, color=colour, alpha=0.8)
        axis.text(-0.05, bottom + len(band) / 2, names[label], ha="right", va="center", fontsize=7)
        bottom += len(band) + 5
    mean = float(values[scored].mean()) if scored.any() else float("nan")
    if np.isfinite(mean):
        axis.axvline(mean, color=CHOICE_COLOUR, linestyle="--", label=f"mean = {mean:.3f}")
        axis.legend(loc="lower right")
    axis.set(title=f"Silhouette per image ({int(scored.sum()):,} scored)", xlabel="silhouette", yticks=[])
    axis.set_xlim(min(-0.1, float(np.nanmin(values)) if scored.any() else 0) - 0.15, 1)
    figure.tight_layout()
    return figure


def map_figure(coords: np.ndarray, labels: np.ndarray, names: dict[int, str], title: str) -> Figure:
    """2-D scatter of a map, coloured by cluster (noise in grey)."""
    figure = Figure(figsize=(7, 6))
    axis = figure.subplots()
    ids = [label for label in names if label >= 0]
    size = max(2.0, min(20.0, 4000 / max(1, len(labels))))
    outside = [label for label in names if label < 0]
    if outside:
        # Noise, images added that fit no cluster, and those a person marked as outliers or excluded.
        noise = np.isin(labels, outside)
        label = names[-1] if outside == [-1] else "in no cluster"
        axis.scatter(coords[noise, 0], coords[noise, 1], s=size, c="#bbbbbb", label=label, linewidths=0)
    for colour, label in zip(cluster_colours(len(ids)), ids, strict=True):
        members = labels == label
        axis.scatter(coords[members, 0], coords[members, 1], s=size, c=colour, label=names[label], linewidths=0)
    axis.set(title=title, xticks=[], yticks=[])
    if len(names) <= 20:
        axis.legend(markerscale=max(1.0, 6 / size), fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def save_png(figure: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
