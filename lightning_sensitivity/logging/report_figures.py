"""The offline report's figures, from a run's artifacts and the quantities' declarations (:class:`keys.Quantity`).

A quantity's section draws the builders its declaration names in ``report_figures`` (:data:`FIGURES`):
``"charts"`` (its declared charts as curves over epochs, :func:`chart_curves`), ``"histograms"`` (its declared
histograms at the last epoch, from the per-example arrays of ``report_arrays``, :func:`histogram_values`), and the
built-in quantities' own figures (``"jacobian_norm"``, ``"transitions"``, ``"stiffness"``).

The pictures the monitors log (class heatmaps, per-class bars) are drawn by the same renderer
(:mod:`lightning_sensitivity.logging.render`); the curves over epochs, which no monitor logs as an image, are
matplotlib figures of :func:`lightning_sensitivity.logging.plots.new_figure` (no pyplot).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from lightning_sensitivity import keys
from lightning_sensitivity.functional.summaries import binary_auroc
from lightning_sensitivity.keys import JACOBIAN as JACOBIAN_NORM
from lightning_sensitivity.keys import (
    STIFFNESS,
    TRAIN,
    TRANSITIONS,
    VAL,
    split_array,
    stiffness_array,
    transition_array,
)
from lightning_sensitivity.logging.artifacts import Artifact
from lightning_sensitivity.logging.plots import legend, new_figure
from lightning_sensitivity.logging.render import render_class_matrix, render_per_class

__all__ = ["FIGURES", "Builder", "Entry", "Save", "chart_curves", "histogram_values"]

STATS = keys.JACOBIAN_STATS
TRANSITION_STATS = keys.TRANSITION_STATS
DEFAULT_GROUPS = keys.GROUPS
KINDS = keys.STIFFNESS_KINDS
RANDOM = "random"
#: A transition count this close to the number of segments no longer resolves anything (as the monitor warns).
SATURATION = 0.95


class Entry(NamedTuple):
    """One figure of the report: its file, a caption, a note shown beside it (saturation, no zero crossing) and
    whether it is a wide (multi-panel) figure spanning two grid columns. No file: a note on its own."""

    file: str
    caption: str
    note: str = ""
    wide: bool = False
    section: str = ""  # a sub-heading of its own (a stiffness pair group), empty: the quantity's


#: ``save(figure or RGB array, name) -> file name``: a matplotlib figure or an image of the fast renderers.
Save = Callable[[Any, str], str]


def _values(artifact: Artifact, key: str) -> np.ndarray | None:
    value = artifact.arrays.get(key)
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(-1)


def _statistic(artifact: Artifact, split: str, stat: str) -> float:
    stored = artifact.scalar(split_array(split, stat))
    if math.isfinite(stored):
        return stored
    norms = _values(artifact, split_array(split, "norms"))
    if norms is None or not np.isfinite(norms).any():
        return math.nan
    finite = norms[np.isfinite(norms)]
    return float({"mean": np.mean, "median": np.median, "p90": lambda v: np.percentile(v, 90)}[stat](finite))


def _series(artifacts: Sequence[Artifact], value: Callable[[Artifact], float]) -> tuple[np.ndarray, np.ndarray]:
    points = [(a.epoch, value(a)) for a in artifacts]
    points = [(e, v) for e, v in points if math.isfinite(v)]
    return np.array([e for e, _ in points], dtype=float), np.array([v for _, v in points], dtype=float)


def _class_names(artifacts: Sequence[Artifact], count: int) -> list[str] | None:
    for artifact in reversed(artifacts):
        names = artifact.meta.get("class_names")
        if isinstance(names, list) and len(names) == count:
            return [str(n) for n in names]
    return None


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive (misclassified) point has a larger score than a negative one (ties count 1/2)."""
    return binary_auroc(torch.as_tensor(scores), torch.as_tensor(positive))


def _jacobian_figures(arts: Sequence[Artifact], save: Save) -> list[Entry]:
    entries: list[Entry] = []
    fig, (ax, side) = new_figure(2)
    drawn = False
    for split, style in ((VAL, "-"), (TRAIN, "--")):
        for stat, color in zip(STATS, ("C0", "C1", "C2"), strict=False):
            epochs, values = _series(arts, lambda a, s=split, t=stat: _statistic(a, s, t))
            if epochs.size:
                ax.plot(epochs, values, style, color=color, marker="o", markersize=3, label=f"{split} {stat}")
                drawn = True
    side_drawn = False
    for key, label in (("train_val_ratio", "train / val mean norm"), ("misclassification_auroc", "val AUROC")):
        epochs, values = _series(arts, lambda a, k=key: a.scalar(k))
        if epochs.size:
            side.plot(epochs, values, marker="o", markersize=3, label=label)
            side_drawn = True
    if drawn:
        ax.set(xlabel="epoch", ylabel="Jacobian norm", title="Jacobian norm over training")
        legend(ax, fontsize=8)
        if side_drawn:
            side.set(xlabel="epoch", title="train/val ratio and misclassification AUROC")
            legend(side, fontsize=8)
        else:
            side.set_visible(False)
        entries.append(
            Entry(
                save(fig, "jacobian_norm_curves"),
                "Jacobian norm over epochs: val (solid) and train (dashed) mean, median, p90; right: train/val ratio "
                "and the AUROC of the norm as a predictor of a wrong prediction",
                wide=side_drawn,
            )
        )

    last = arts[-1]
    norms, labels = _values(last, split_array(VAL, "norms")), last.arrays.get(split_array(VAL, "labels"))
    if norms is not None and labels is not None and labels.size == norms.size and norms.size:
        labels = labels.astype(np.int64).reshape(-1)
        count = int(labels.max()) + 1
        names = last.meta.get("class_names")
        if isinstance(names, list) and len(names) >= count:
            count = len(names)
        means = np.array([np.nanmean(norms[labels == c]) if (labels == c).any() else np.nan for c in range(count)])
        image = render_per_class(
            means,
            _class_names(arts, count),
            title=f"val Jacobian norm per class, epoch {last.epoch}",
            ylabel="mean norm",
        )
        entries.append(
            Entry(save(image, "jacobian_norm_per_class"), f"Mean val Jacobian norm per class at epoch {last.epoch}")
        )

    correct = last.arrays.get(split_array(VAL, "correct"))
    if norms is not None and correct is not None and correct.size == norms.size:
        correct = correct.astype(bool).reshape(-1)
        finite = np.isfinite(norms)
        fig, (ax,) = new_figure(1, 6.4, 4.2)
        bins = np.histogram_bin_edges(norms[finite], bins=30) if finite.any() else 10
        positive = norms[finite & (norms > 0)]
        if positive.size == finite.sum() and positive.size and positive.max() > 100 * positive.min():
            # Norms spanning orders of magnitude are only readable on a log axis.
            bins = np.geomspace(positive.min(), positive.max(), 31)
            ax.set_xscale("log")
        # Each group as a fraction of its own points (not a density: on log-spaced bins a density shrinks the wide
        # bins of large norms, where the misclassified points are, to nothing), the misclassified group also as a
        # thick outline so that it stays visible where it overlaps the (usually far larger) correct group.
        for mask, label, color in ((correct, "correct", "C0"), (~correct, "misclassified", "C3")):
            group = norms[mask & finite]
            if group.size:
                ax.hist(
                    group,
                    bins=bins,
                    weights=np.full(group.size, 1 / group.size),
                    histtype="stepfilled",
                    alpha=0.4,
                    color=color,
                    label=f"{label} (n={group.size})",
                )
                ax.hist(
                    group,
                    bins=bins,
                    weights=np.full(group.size, 1 / group.size),
                    histtype="step",
                    linewidth=2 if label == "misclassified" else 1.2,
                    color=color,
                )
        auc = _auroc(norms[finite], ~correct[finite])
        ax.set(xlabel="Jacobian norm", ylabel="fraction of the group's points",
               title=f"val points, epoch {last.epoch}"
               + (f", AUROC {auc:.3f}" if math.isfinite(auc) else ""))  # fmt: skip
        legend(ax, fontsize=8)
        entries.append(
            Entry(save(fig, "jacobian_norm_correct_vs_misclassified"),
                  f"Per-point norms of correctly vs wrongly classified val points at epoch {last.epoch}, each group "
                  "as a fraction of its own points")
        )  # fmt: skip
    return entries


def _num_points(artifact: Artifact) -> int | None:
    value = artifact.meta.get("num_points")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _transition_figures(arts: Sequence[Artifact], save: Save) -> list[Entry]:
    # Every split the monitor measured (its artifacts' `splits`; else the known ones found), a style for each.
    styles = {VAL: ("-", "C0", "val points"), TRAIN: ("--", "C1", "train points"),
              RANDOM: (":", "C3", "random (shuffled) anchors")}  # fmt: skip
    named = [s for a in arts for s in (a.meta.get("splits") or []) if isinstance(s, str)]
    order = list(dict.fromkeys([*named, *styles]))
    splits = [(sp, *styles.get(sp, ("-.", f"C{4 + k % 6}", f"{sp} points"))) for k, sp in enumerate(order)]
    present = [
        s for s in TRANSITION_STATS if any(transition_array(sp, s) in a.arrays for a in arts for sp, *_ in splits)
    ]
    if not present:
        return []
    fig, axes = new_figure(len(present), 4.2, 3.4)
    saturated: list[str] = []
    for ax, stat in zip(axes, present, strict=False):
        # Region changes as a fraction of the segments (P per closed ellipse of P points): 1 = every segment changes.
        as_fraction = stat == "region_changes" and all(_num_points(a) for a in arts)
        for split, style, color, label in splits:
            key = transition_array(split, stat)
            rows = [(a, _values(a, key)) for a in arts if key in a.arrays]
            rows = [(a, v[np.isfinite(v)]) for a, v in rows if v is not None and np.isfinite(v).any()]
            if not rows:
                continue
            scale = [1.0 / _num_points(a) if as_fraction else 1.0 for a, _ in rows]
            epochs = np.array([a.epoch for a, _ in rows], dtype=float)
            mean = np.array([v.mean() * f for (_, v), f in zip(rows, scale, strict=True)])
            std = np.array([v.std() * f for (_, v), f in zip(rows, scale, strict=True)])
            ax.plot(epochs, mean, style, marker="o", markersize=3, color=color, label=label)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=color)
            if as_fraction and mean[-1] >= SATURATION:
                saturated.append(f"{split} ({mean[-1]:.0%})")
        if as_fraction:
            ax.axhline(1.0, color="0.4", linestyle="--", linewidth=0.8)
            ax.set(ylim=(0, 1.05), ylabel="fraction of segments")
            ax.set_title("region changes (1 = saturated)")
        else:
            ax.set(ylabel="count per trajectory", title=stat.replace("_", " "))
        ax.set(xlabel="epoch")
        legend(ax, fontsize=7)
    note = ""
    if saturated:
        points = _num_points(arts[-1])
        note = (f"Saturated at epoch {arts[-1].epoch}: {', '.join(saturated)} of the segments change linear region, so "
                f"the counts measure little. Sample the ellipses finer (`num_points` > {points}).")  # fmt: skip
    caption = "Transitions along closed ellipses through probe points (mean ± std over trajectories) over epochs"
    return [Entry(save(fig, "transitions_curves"), caption, note, wide=len(present) > 1)]


def _layer_figure(arts: Sequence[Artifact], group: str, slug: str, save: Save) -> Entry | None:
    """Per-layer cosine stiffness (``{group}/layer/{layer}/cosine``): layers x measured epochs, output layer marked."""
    prefix = stiffness_array(group, "layer/")
    layers = list(dict.fromkeys(k[len(prefix) : -len("/cosine")] for a in arts for k in a.arrays
                                if k.startswith(prefix) and k.endswith("/cosine")))  # fmt: skip
    if not layers:
        return None
    cosine = {layer: stiffness_array(group, f"layer/{layer}/cosine") for layer in layers}
    measured = [a for a in arts if any(cosine[layer] in a.arrays for layer in layers)]
    matrix = np.array([[a.scalar(cosine[layer]) for a in measured] for layer in layers], dtype=float)
    names = [f"{layer} (output)" if k == len(layers) - 1 else layer for k, layer in enumerate(layers)]
    epochs = [str(a.epoch) for a in measured]
    title = f"{group} per-layer cosine stiffness"
    image = render_class_matrix(matrix, names, col_names=epochs, title=title, xlabel="epoch", ylabel="layer")
    caption = (
        f"{group}: cosine stiffness of each layer's parameters (all pairs), by epoch; the last row is the output layer"
    )
    return Entry(save(image, f"stiffness_{slug}_per_layer"), caption, section=group)


def _stiffness_figures(arts: Sequence[Artifact], save: Save) -> list[Entry]:
    entries: list[Entry] = []
    groups = arts[-1].meta.get("groups")
    if not isinstance(groups, list):
        found = {k.split("/", 1)[0] for a in arts for k in a.arrays if "/" in k}
        groups = [g for g in DEFAULT_GROUPS if g in found] + sorted(found - set(DEFAULT_GROUPS))
    # Class matrices at the first and the last epoch: where training started and where it ended (every measured
    # epoch is in TensorBoard's image slider); with super-classes and three groups, more would fill screens.
    picks = sorted({arts[0].epoch, arts[-1].epoch})
    for group in groups:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(group))
        fig, axes = new_figure(2, 4.6, 3.4)
        drawn = False
        for ax, kind in zip(axes, KINDS, strict=False):
            for key, label in ((f"same_class_{kind}", "same class"), (f"different_class_{kind}", "different class"),
                               (f"{kind}_mean", "all pairs")):  # fmt: skip
                name = stiffness_array(group, key)
                epochs, values = _series(arts, lambda a, k=name: a.scalar(k))
                if epochs.size:
                    ax.plot(epochs, values, marker="o", markersize=3, label=label)
                    drawn = True
            ax.axhline(0.0, color="0.5", linewidth=0.7)
            ax.set(xlabel="epoch", ylabel=f"{kind} stiffness", title=f"{group}: {kind} stiffness")
            legend(ax, fontsize=8)
        if drawn:
            caption = f"{group}: same-class vs different-class stiffness over epochs"
            entries.append(Entry(save(fig, f"stiffness_{slug}_same_vs_different"), caption, wide=True, section=group))

        entry = _distance_figure(arts, group, slug, save)
        if entry is not None:
            entries.append(entry._replace(section=group))
        entry = _layer_figure(arts, group, slug, save)
        if entry is not None:
            entries.append(entry)

        rows_set, _, cols_set = str(group).partition("_")
        for matrix in ("class_sign", "class_cosine", "superclass_sign", "superclass_cosine"):
            for artifact in (a for a in arts if a.epoch in picks):
                values = artifact.arrays.get(stiffness_array(group, matrix))
                if values is None or values.ndim != 2:
                    continue
                names_key = "group_names" if matrix.startswith("super") else "class_names"
                names = artifact.meta.get(names_key)
                names = names if isinstance(names, list) and len(names) == values.shape[0] else None
                title = f"{group} {matrix.replace('_', ' ')} stiffness, epoch {artifact.epoch}"
                unit = "super-class" if matrix.startswith("super") else "class"
                image = render_class_matrix(values, names, title=title, xlabel=f"{cols_set or rows_set} {unit}",
                                            ylabel=f"{rows_set} {unit}")  # fmt: skip
                filename = save(image, f"stiffness_{slug}_{matrix}_epoch_{artifact.epoch:04d}")
                entries.append(Entry(filename, title, section=group))
    return entries


def _distance_figure(arts: Sequence[Artifact], group: str, slug: str, save: Save) -> Entry | None:
    kinds = [k for k in KINDS if any(stiffness_array(group, f"distance_{k}") in a.arrays for a in arts)]
    if not kinds:
        return None
    fig, axes = new_figure(len(kinds) + 1, 5.0, 3.8)
    epochs = [a.epoch for a in arts]
    norm_epoch = (
        (lambda e: 0.5) if min(epochs) == max(epochs) else (lambda e: (e - min(epochs)) / (max(epochs) - min(epochs)))
    )
    colormap = colormaps["viridis"]
    for ax, kind in zip(axes, kinds, strict=False):
        for artifact in arts:
            edges = _values(artifact, stiffness_array(group, "bin_edges"))
            mean = _values(artifact, stiffness_array(group, f"distance_{kind}"))
            if edges is None or mean is None or edges.size != mean.size + 1:
                continue
            count = _values(artifact, stiffness_array(group, "distance_count"))
            if count is not None and count.size == mean.size:
                mean = np.where(count > 0, mean, np.nan)  # an empty bin has no mean, whatever was stored
            color = colormap(norm_epoch(artifact.epoch))
            ax.plot((edges[:-1] + edges[1:]) / 2, mean, color=color, marker="o", markersize=2,
                    label=f"epoch {artifact.epoch}")  # fmt: skip
            length = artifact.scalar(stiffness_array(group, "critical_length"))
            if kind == "sign" and math.isfinite(length):
                ax.axvline(length, color=color, linestyle="--", linewidth=0.8)
        ax.axhline(0.0, color="0.5", linewidth=0.7)
        ax.set(xlabel="input distance", ylabel=f"{kind} stiffness", title=f"{group}: {kind} stiffness by distance")
        legend(ax, fontsize=7, ncol=2)
    epochs_cl, lengths = _series(arts, lambda a: a.scalar(stiffness_array(group, "critical_length")))
    if epochs_cl.size:
        axes[-1].plot(epochs_cl, lengths, marker="o", markersize=3)
        axes[-1].set(xlabel="epoch", ylabel="critical length", title=f"{group}: critical length")
    else:
        axes[-1].set_visible(False)
    caption = (
        f"{group}: stiffness vs input distance per epoch (dashed: critical length) and critical length over epochs"
    )
    note = ""
    last = arts[-1]
    mean = _values(last, stiffness_array(group, "distance_sign"))
    edges = _values(last, stiffness_array(group, "bin_edges"))
    if (
        not math.isfinite(last.scalar(stiffness_array(group, "critical_length")))
        and mean is not None
        and edges is not None
    ):
        finite = mean[np.isfinite(mean)]
        if finite.size:
            sign = "positive" if finite.min() > 0 else "negative" if finite.max() < 0 else "on both sides of zero"
            note = (
                f"No zero crossing at epoch {last.epoch}: the binned sign stiffness stays {sign} up to the largest "
                f"distance measured ({edges[-1]:.3g}), so the critical length is undefined there (not logged)."
            )
    return Entry(save(fig, f"stiffness_{slug}_by_distance"), caption, note, wide=True)


# ---------------------------------------------------------------- from the declaration alone
def _relative(quantity: keys.Quantity, tag: str) -> str:
    own = keys.prefix(quantity.name) + "/"
    return tag[len(own) :] if tag.startswith(own) else tag


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _in_split_order(
    quantity: keys.Quantity, found: list[tuple[str, str, dict[str, str]]]
) -> list[tuple[str, str, dict[str, str]]]:
    """``find_arrays`` results with the splits in the order of the declaration's ``layout_splits``, as in its charts."""
    order = {split: k for k, split in enumerate(quantity.layout_splits)}

    def rank(item: tuple[str, str, dict[str, str]]) -> int:
        split = item[2].get("split", item[2].get("held_out"))
        if split is None:  # a split spelled out in the tag: sensitivity/<name>/<split>/...
            split = _relative(quantity, item[0]).split("/", 1)[0]
        return order.get(split, len(order))

    return sorted(found, key=rank)


def chart_curves(
    quantity: keys.Quantity, chart: keys.Chart, arts: Sequence[Artifact]
) -> dict[tuple[str, ...], list[tuple[str, np.ndarray, np.ndarray]]]:
    """The curves of one declared chart over the measured epochs, read from the artifacts' scalar arrays.

    Args:
        quantity: the declaration (where each line's values are stored: :meth:`keys.Quantity.find_arrays`).
        chart: one of ``quantity.charts``.
        arts: the quantity's artifacts, by epoch.

    Returns:
        Per combination of the values of ``chart.each`` (``()`` when it is empty), ``(label, epochs, values)`` for
        each line found, splits in the order of ``quantity.layout_splits``: the line's split (one line template) or
        its tag under ``sensitivity/<name>/`` less the ``each`` values; empty when no artifact holds any line.
    """
    names = list(dict.fromkeys(k for a in arts for k, v in a.arrays.items() if np.asarray(v).size == 1))
    curves: dict[tuple[str, ...], list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for line in chart.lines:
        for tag, array, values in _in_split_order(quantity, quantity.find_arrays(line, names)):
            epochs, series = _series(arts, lambda a, k=array: a.scalar(k))
            if not epochs.size:
                continue
            rest = [v for p, v in values.items() if p not in chart.each]
            shared = {values[p] for p in chart.each if p in values}  # said by the chart's title
            parts = [part for part in _relative(quantity, tag).split("/") if part not in shared]
            label = " ".join(rest) if len(chart.lines) == 1 and rest else "/".join(parts) or tag
            curves.setdefault(tuple(values.get(p, "") for p in chart.each), []).append((label, epochs, series))
    return curves


def _chart_title(chart: keys.Chart, each: tuple[str, ...], labels: Sequence[str]) -> str:
    title = chart.title
    for placeholder, value in zip(chart.each, each, strict=True):
        title = title.replace(f"{{{placeholder}}}", value)
    return title.replace("{splits}", " vs ".join(dict.fromkeys(labels)))


def _declared_charts(quantity: keys.Quantity, arts: Sequence[Artifact], save: Save) -> list[Entry]:
    entries: list[Entry] = []
    missing: list[str] = []
    for index, chart in enumerate(quantity.charts):
        curves = chart_curves(quantity, chart, arts)
        if not curves:
            missing.append(chart.title)
        for each, lines in curves.items():
            fig, (ax,) = new_figure(1, 5.0, 3.6)
            for label, epochs, values in lines:
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
            title = _chart_title(chart, each, [label for label, *_ in lines] if len(chart.lines) == 1 else [])
            ax.set(xlabel="epoch", title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            legend(ax, fontsize=8)
            name = f"{quantity.name}_chart_{index}" + "".join(f"_{_slug(v)}" for v in each if v)
            entries.append(Entry(save(fig, name), f"{title} (over epochs)"))
    if missing:
        entries.append(
            Entry("", "", f"Not drawn, no artifact array holds their values: {'; '.join(missing)}. A chart's line "
                  f"'sensitivity/{quantity.name}/<a>/<b>' is read from the array '<a>_<b>' unless the declaration's "
                  "report_arrays names another.")
        )  # fmt: skip
    return entries


def histogram_values(
    quantity: keys.Quantity, template: str, arts: Sequence[Artifact]
) -> tuple[int, list[tuple[str, str, np.ndarray]]] | None:
    """The per-example values of a declared histogram at the last epoch whose artifact holds them.

    Args:
        quantity: the declaration (``report_arrays`` names the per-example array).
        template: one of ``quantity.histograms``.
        arts: the quantity's artifacts, by epoch.

    Returns:
        ``(epoch, [(tag, array name, finite values), ...])`` (splits in the order of ``quantity.layout_splits``), or
        ``None`` when no artifact holds such an array.
    """
    for artifact in reversed(arts):
        names = [k for k, v in artifact.arrays.items() if np.asarray(v).ndim >= 1]
        found = []
        for tag, array, _ in _in_split_order(quantity, quantity.find_arrays(template, names)):
            values = np.asarray(artifact.arrays[array], dtype=np.float64).reshape(-1)
            found.append((tag, array, values[np.isfinite(values)]))
        if found:
            return artifact.epoch, found
    return None


def _declared_histograms(quantity: keys.Quantity, arts: Sequence[Artifact], save: Save) -> list[Entry]:
    entries: list[Entry] = []
    unnamed = [t for t in quantity.histograms if not any(t == k or keys.matches(k, t) for k in quantity.report_arrays)]
    for index, template in enumerate(quantity.histograms):
        picked = histogram_values(quantity, template, arts)
        if picked is None:
            continue
        epoch, found = picked
        every = np.concatenate([values for *_, values in found])
        if not every.size:
            continue
        fig, (ax,) = new_figure(1, 5.0, 3.6)
        bins = np.histogram_bin_edges(every, bins=30)
        for k, (tag, _, values) in enumerate(found):
            if values.size:
                weights = np.full(values.size, 1 / values.size)
                label = f"{_relative(quantity, tag)} (n={values.size})"
                ax.hist(values, bins=bins, weights=weights, histtype="step", linewidth=1.5, color=f"C{k}", label=label)
        what = " vs ".join(_relative(quantity, tag) for tag, *_ in found)
        title = f"{quantity.category}: {what}, epoch {epoch}"
        ax.set(xlabel=quantity.category, ylabel="fraction of the examples", title=title)
        legend(ax, fontsize=8)
        arrays = ", ".join(array for _, array, _ in found)
        caption = (f"{quantity.category}: distribution over the probe examples at epoch {epoch}, each as a fraction "
                   f"of its own examples (arrays {arrays})")  # fmt: skip
        entries.append(Entry(save(fig, f"{quantity.name}_histogram_{index}"), caption))
    if unnamed:
        entries.append(
            Entry("", "", f"Histograms not drawn: {', '.join(unnamed)} (the declaration's report_arrays names no "
                  "per-example array for them).")
        )  # fmt: skip
    return entries


#: ``builder(declaration, artifacts by epoch, save) -> entries``: the figures of one report section.
Builder = Callable[[keys.Quantity, Sequence[Artifact], Save], list[Entry]]

#: The report's figure builders by the name a declaration gives in ``keys.Quantity.report_figures``.
FIGURES: dict[str, Builder] = {
    "charts": _declared_charts,
    "histograms": _declared_histograms,
    JACOBIAN_NORM: lambda quantity, arts, save: _jacobian_figures(arts, save),
    TRANSITIONS: lambda quantity, arts, save: _transition_figures(arts, save),
    STIFFNESS: lambda quantity, arts, save: _stiffness_figures(arts, save),
}
