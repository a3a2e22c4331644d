"""Offline report: turn a run's saved sensitivity artifacts into PNG figures and one static HTML page.

Usage::

    python -m lightning_sensitivity.report LOG_DIR [--out OUT_DIR]

``LOG_DIR`` is searched recursively for ``sensitivity/`` folders written by
:func:`lightning_sensitivity.logging.save_artifact` (e.g. ``lightning_logs/version_0/sensitivity/...``); each folder
is one run and gets its own section. The page (``OUT_DIR/index.html``, default ``LOG_DIR/sensitivity_report``) uses
no JavaScript and no external URLs, so it can be copied off a cluster and opened anywhere.

Figures, drawn when the artifacts hold the keys they need (documented in
:mod:`lightning_sensitivity.logging.artifacts`; a figure whose keys are missing is left out):

* ``jacobian_norm``: mean / median / p90 of the per-point norms over epochs (val and train, from ``{split}_mean``
  etc. or computed from ``{split}_norms``), the train/val ratio and misclassification AUROC; per-class mean norms
  at the last epoch (``val_norms`` + ``val_labels``); a histogram of the norms of correctly vs wrongly classified
  points at the last epoch (``val_norms`` + ``val_correct``).
* ``transitions``: mean and spread of ``activation``, ``region_changes`` and ``prediction`` per trajectory over
  epochs (``train_*`` variants dashed when present).
* ``stiffness``, per group ``g``: ``g/same_class_*`` vs ``g/different_class_*`` vs ``g/*_mean`` over epochs; class
  matrices ``g/class_sign`` and ``g/class_cosine`` at the first, middle and last epoch on the fixed range [-1, 1];
  ``g/distance_sign`` / ``g/distance_cosine`` against ``g/bin_edges`` for every epoch with ``g/critical_length``.

Example::

    from lightning_sensitivity.report import build_report
    index = build_report("lightning_logs")  # lightning_logs/sensitivity_report/index.html
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_sensitivity import keys
from lightning_sensitivity.keys import (
    ARTIFACT_DIR,
    STIFFNESS,
    TRAIN,
    TRANSITIONS,
    VAL,
    split_array,
    stiffness_array,
    transition_array,
)
from lightning_sensitivity.keys import JACOBIAN as JACOBIAN_NORM
from lightning_sensitivity.logging.artifacts import Artifact, load_artifacts
from lightning_sensitivity.logging.plots import plot_class_matrix, plot_per_class

__all__ = ["build_report", "find_runs", "main"]

DEFAULT_OUT = "sensitivity_report"
STATS = keys.JACOBIAN_STATS
TRANSITION_STATS = keys.TRANSITION_STATS
DEFAULT_GROUPS = keys.GROUPS
KINDS = keys.STIFFNESS_KINDS

# (file name, caption) of the figures of one run section.
Entry = tuple[str, str]


def find_runs(log_dir: str | Path) -> list[Path]:
    """Directories under ``log_dir`` (itself included) that hold a ``sensitivity/`` folder with artifacts.

    Args:
        log_dir: where to search, recursively.

    Returns:
        The run directories, sorted; empty when there are no artifacts.

    Raises:
        FileNotFoundError: if ``log_dir`` is not a directory.
    """
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"`log_dir` {str(root)!r} is not a directory")
    candidates = [root / ARTIFACT_DIR] if root.name != ARTIFACT_DIR else [root]
    candidates += [p for p in root.rglob(ARTIFACT_DIR) if p.is_dir()]
    runs = {p.parent for p in candidates if p.is_dir() and any(p.glob("*/epoch_*.npz"))}
    return sorted(runs)


def _new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax: Axes, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


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
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def _jacobian_figures(arts: Sequence[Artifact], save: Callable[[Figure, str], str]) -> list[Entry]:
    entries: list[Entry] = []
    fig, (ax, side) = _new_figure(2)
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
        _legend(ax, fontsize=8)
        if side_drawn:
            side.set(xlabel="epoch", title="train/val ratio and misclassification AUROC")
            _legend(side, fontsize=8)
        else:
            side.set_visible(False)
        entries.append((save(fig, "jacobian_norm_curves"), "Jacobian norm (mean, median, p90) over epochs"))

    last = arts[-1]
    norms, labels = _values(last, split_array(VAL, "norms")), last.arrays.get(split_array(VAL, "labels"))
    if norms is not None and labels is not None and labels.size == norms.size and norms.size:
        labels = labels.astype(np.int64).reshape(-1)
        count = int(labels.max()) + 1
        names = last.meta.get("class_names")
        if isinstance(names, list) and len(names) >= count:
            count = len(names)
        means = np.array([np.nanmean(norms[labels == c]) if (labels == c).any() else np.nan for c in range(count)])
        fig, _ = plot_per_class(
            means,
            _class_names(arts, count),
            title=f"val Jacobian norm per class, epoch {last.epoch}",
            ylabel="mean norm",
        )
        entries.append(
            (save(fig, "jacobian_norm_per_class"), f"Mean val Jacobian norm per class at epoch {last.epoch}")
        )

    correct = last.arrays.get(split_array(VAL, "correct"))
    if norms is not None and correct is not None and correct.size == norms.size:
        correct = correct.astype(bool).reshape(-1)
        finite = np.isfinite(norms)
        fig, (ax,) = _new_figure(1, 6.4, 4.2)
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
        _legend(ax, fontsize=8)
        entries.append(
            (save(fig, "jacobian_norm_correct_vs_misclassified"),
             f"Per-point Jacobian norms of correctly vs wrongly classified val points at epoch {last.epoch}")
        )  # fmt: skip
    return entries


def _transition_figures(arts: Sequence[Artifact], save: Callable[[Figure, str], str]) -> list[Entry]:
    named = {s: (transition_array(VAL, s), transition_array(TRAIN, s)) for s in TRANSITION_STATS}
    present = [s for s in TRANSITION_STATS if any(k in a.arrays for a in arts for k in named[s])]
    if not present:
        return []
    fig, axes = _new_figure(len(present), 4.5, 3.8)
    for ax, stat in zip(axes, present, strict=False):
        val_key, train_key = named[stat]
        for key, style, label in ((val_key, "-", "val points"), (train_key, "--", "train points")):
            rows = [(a.epoch, _values(a, key)) for a in arts if key in a.arrays]
            rows = [(e, v[np.isfinite(v)]) for e, v in rows if v is not None and np.isfinite(v).any()]
            if not rows:
                continue
            epochs = np.array([e for e, _ in rows], dtype=float)
            mean = np.array([v.mean() for _, v in rows])
            std = np.array([v.std() for _, v in rows])
            ax.plot(epochs, mean, style, marker="o", markersize=3, color="C0" if key == val_key else "C1", label=label)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color="C0" if key == val_key else "C1")
        ax.set(xlabel="epoch", ylabel="count per trajectory", title=stat.replace("_", " "))
        _legend(ax, fontsize=8)
    return [(save(fig, "transitions_curves"), "Transitions along ellipse trajectories (mean ± std) over epochs")]


def _stiffness_figures(arts: Sequence[Artifact], save: Callable[[Figure, str], str]) -> list[Entry]:
    entries: list[Entry] = []
    groups = arts[-1].meta.get("groups")
    if not isinstance(groups, list):
        found = {k.split("/", 1)[0] for a in arts for k in a.arrays if "/" in k}
        groups = [g for g in DEFAULT_GROUPS if g in found] + sorted(found - set(DEFAULT_GROUPS))
    picks = sorted({arts[0].epoch, arts[len(arts) // 2].epoch, arts[-1].epoch})
    for group in groups:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(group))
        fig, axes = _new_figure(2, 5.5, 3.8)
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
            _legend(ax, fontsize=8)
        if drawn:
            entries.append((save(fig, f"stiffness_{slug}_same_vs_different"),
                            f"{group}: same-class vs different-class stiffness over epochs"))  # fmt: skip

        for matrix in ("class_sign", "class_cosine", "superclass_sign", "superclass_cosine"):
            for artifact in (a for a in arts if a.epoch in picks):
                values = artifact.arrays.get(stiffness_array(group, matrix))
                if values is None or values.ndim != 2:
                    continue
                names_key = "group_names" if matrix.startswith("super") else "class_names"
                names = artifact.meta.get(names_key)
                names = names if isinstance(names, list) and len(names) == values.shape[0] else None
                title = f"{group} {matrix.replace('_', ' ')} stiffness, epoch {artifact.epoch}"
                fig, _ = plot_class_matrix(values, names, title=title)
                entries.append((save(fig, f"stiffness_{slug}_{matrix}_epoch_{artifact.epoch:04d}"), title))

        entry = _distance_figure(arts, group, slug, save)
        if entry is not None:
            entries.append(entry)
    return entries


def _distance_figure(
    arts: Sequence[Artifact], group: str, slug: str, save: Callable[[Figure, str], str]
) -> Entry | None:
    kinds = [k for k in KINDS if any(stiffness_array(group, f"distance_{k}") in a.arrays for a in arts)]
    if not kinds:
        return None
    fig, axes = _new_figure(len(kinds) + 1, 5.0, 3.8)
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
        _legend(ax, fontsize=7, ncol=2)
    epochs_cl, lengths = _series(arts, lambda a: a.scalar(stiffness_array(group, "critical_length")))
    if epochs_cl.size:
        axes[-1].plot(epochs_cl, lengths, marker="o", markersize=3)
        axes[-1].set(xlabel="epoch", ylabel="critical length", title=f"{group}: critical length")
    else:
        axes[-1].set_visible(False)
    caption = (
        f"{group}: stiffness vs input distance per epoch (dashed: critical length) and critical length over epochs"
    )
    return save(fig, f"stiffness_{slug}_by_distance"), caption


_BUILDERS: dict[str, Callable[[Sequence[Artifact], Callable[[Figure, str], str]], list[Entry]]] = {
    JACOBIAN_NORM: _jacobian_figures,
    TRANSITIONS: _transition_figures,
    STIFFNESS: _stiffness_figures,
}
_TITLES = {JACOBIAN_NORM: "Jacobian norm", TRANSITIONS: "Transitions", STIFFNESS: "Stiffness"}


def _summary_rows(artifacts: Sequence[Artifact]) -> list[tuple[str, str]]:
    last = artifacts[-1]
    rows = []
    for key in sorted(last.arrays):
        value = last.scalar(key)
        if last.arrays[key].size == 1 and math.isfinite(value):
            rows.append((key, f"{value:.4g}"))
    return rows


def _render_run(run: Path, label: str, out_dir: Path, prefix: str) -> list[str]:
    artifacts = load_artifacts(run)
    # One monitor may have been given the class names and another not (say StiffnessMonitor but not
    # JacobianNormMonitor): the names of the run label every per-class figure.
    known = [a.meta["class_names"] for a in artifacts if isinstance(a.meta.get("class_names"), list)]
    for artifact in artifacts:
        if known and not isinstance(artifact.meta.get("class_names"), list):
            artifact.meta["class_names"] = known[-1]
    by_quantity: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        by_quantity.setdefault(artifact.quantity, []).append(artifact)
    parts = [f"<section><h2>{html.escape(label)}</h2>"]

    def save(fig: Figure, name: str) -> str:
        filename = f"{prefix}{name}.png"
        fig.savefig(out_dir / filename, dpi=100)
        return filename

    for quantity, arts in by_quantity.items():
        # The monitors write trainer.validate / trainer.test measurements as "{quantity}.validate" / ".test".
        base, _, context = quantity.partition(".")
        title = _TITLES.get(base, base) + (f" (trainer.{context})" if context else "")
        epochs = ", ".join(str(a.epoch) for a in arts)
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(f"<p class='meta'>{len(arts)} measurement(s) at epochs {html.escape(epochs)}</p>")
        builder = _BUILDERS.get(base)
        entries: list[Entry] = []
        if builder is not None:
            try:
                entries = builder(arts, lambda fig, name, c=context: save(fig, f"{name}_{c}" if c else name))
            except Exception as err:  # one malformed artifact must not cost the user the whole report
                warnings.warn(f"Skipping {quantity} figures of {run}: {err!r}", stacklevel=2)
        for filename, caption in entries:
            parts.append(
                f"<figure><img src='{html.escape(filename)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        rows = _summary_rows(arts)
        if rows:
            cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
            parts.append(
                f"<details><summary>Values at epoch {arts[-1].epoch}</summary><table>{cells}</table></details>"
            )
    parts.append("</section>")
    return parts


_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1500px}figure{display:inline-block;margin:.5em;
vertical-align:top}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#444;max-width:600px}
.meta{color:#666;font-size:.9em}table{border-collapse:collapse}td{border:1px solid #ddd;padding:2px 8px}"""


def build_report(log_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Render every run's artifacts under ``log_dir`` into PNG figures and an ``index.html``.

    Args:
        log_dir: a directory containing (at any depth) ``sensitivity/`` folders written by the monitors.
        out_dir: where to write ``index.html`` and the PNGs; default ``log_dir/sensitivity_report``.

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError: if ``log_dir`` is not a directory or holds no sensitivity artifacts.
    """
    root = Path(log_dir)
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"No sensitivity artifacts under {str(root)!r}: expected files like "
            f"'<run>/{ARTIFACT_DIR}/<quantity>/epoch_0000.npz', written by the monitors into the logger's log_dir."
        )
    out = Path(out_dir) if out_dir is not None else root / DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    body: list[str] = []
    for index, run in enumerate(runs):
        label = str(run.relative_to(root)) if run.is_relative_to(root) and run != root else str(run)
        prefix = f"run{index}_" if len(runs) > 1 else ""
        body += _render_run(run, label, out, prefix)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Sensitivity report: {html.escape(str(root))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Sensitivity report</h1><p class='meta'>Artifacts from {html.escape(str(root.resolve()))}</p>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    index_path = out / "index.html"
    index_path.write_text(page, encoding="utf-8")
    return index_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 on success, 1 when there is nothing to report)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sensitivity.report",
        description="Render saved sensitivity artifacts into PNG figures and a static HTML page.",
    )
    parser.add_argument("log_dir", help="log directory to search (recursively) for sensitivity/ artifact folders")
    parser.add_argument("--out", default=None, help=f"output directory (default: LOG_DIR/{DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        index = build_report(args.log_dir, args.out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Report written to {index}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
