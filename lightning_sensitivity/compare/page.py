"""Writing a comparison: ``compare.csv``, one scatter plot per (x, y) pair and ``compare.html``."""

from __future__ import annotations

import csv
import html
import itertools
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_sensitivity.compare.ranking import ranking_section
from lightning_sensitivity.compare.runs import (
    DEFAULT_X,
    DEFAULT_Y,
    HPARAMS_PREFIX,
    Row,
    _check_epoch,
    _check_keys,
    _collect,
    _select,
)
from lightning_sensitivity.compare.stats import _as_float, correlations

DEFAULT_OUT = "comparison"

__all__ = ["write_comparison"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else str(value)


def _write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        columns = list(rows[0]) if rows else ["run"]
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def _fmt(value: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_p(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _ci(stats: dict, name: str) -> str:
    low, high = stats[f"{name}_low"], stats[f"{name}_high"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return "too few runs" if "too few runs" in stats.get("note", "") else "n/a"
    return f"[{_fmt(low, 2)}, {_fmt(high, 2)}]"


def _annotation(stats: dict) -> str:
    if not math.isfinite(stats["spearman"]):
        return "\n".join(textwrap.wrap(f"n={stats['n']}: {stats['note']}", 90))
    lines = [f"n={stats['n']}"]
    for name, symbol in (("spearman", "Spearman ρ"), ("kendall", "Kendall τb")):
        ci = _ci(stats, name)
        interval = f", 95% CI {ci}" if ci.startswith("[") else ""
        lines.append(f"{symbol}={_fmt(stats[name])} (p={_fmt_p(stats[f'{name}_p'])}){interval}")
    return "\n".join(lines)


def _caption(stats: dict, when: str) -> str:
    """What the plot's own annotation does not say: how the p-values were made and why an interval is missing."""
    parts = [f"Each point is one run, at {when}; labels: the part of the run path that differs."]
    if stats.get("p_method"):
        parts.append(f"p-values: {stats['p_method']}.")
    if "too few runs" in stats.get("note", ""):
        parts.append(f"No bootstrap interval: {stats['n']} runs are too few (resampling them mostly redraws the same "
                     "ranking).")  # fmt: skip
    other = [n for n in stats.get("note", "").split("; ") if n and "too few runs" not in n]
    if other:
        parts.append("Note: " + "; ".join(other) + ".")
    return " ".join(parts)


def _short_labels(runs: Sequence[str]) -> list[str]:
    """Run paths without the leading and trailing path parts they all share (``a/lr0.1/version_0`` -> ``lr0.1``)."""
    parts = [run.split("/") for run in runs]
    lead = 0
    while all(len(p) > lead + 1 for p in parts) and len({p[lead] for p in parts}) == 1:
        lead += 1
    trail = 0
    while all(len(p) > lead + trail + 1 for p in parts) and len({p[-1 - trail] for p in parts}) == 1:
        trail += 1
    return ["/".join(p[lead : len(p) - trail]) for p in parts]


def _scatter(rows: Sequence[Row], x_key: str, y_key: str, stats: dict, path: Path) -> None:
    from lightning_sensitivity.logging.plots import new_figure  # the report's Agg figure factory (no pyplot)

    fig, (ax,) = new_figure(1, 6.0, 5.0)
    labels = _short_labels([r["run"] for r in rows])
    points = [(label, _as_float(r.get(x_key)), _as_float(r.get(y_key))) for label, r in zip(labels, rows, strict=False)]
    points = [(label, a, b) for label, a, b in points if math.isfinite(a) and math.isfinite(b)]
    if points:
        ax.scatter([a for _, a, _ in points], [b for _, _, b in points], s=36, color="C0", edgecolor="k", zorder=3)
        if len(points) <= 12:  # beyond that the labels hide the points
            for label, a, b in points:
                ax.annotate(label, (a, b), xytext=(4, 3), textcoords="offset points", fontsize=7, color="0.3")
    # the statistics as the axes title, above the plot, where they hide no point
    fig.suptitle(f"{y_key} vs {x_key}", fontsize=9)
    ax.set_title(_annotation(stats), fontsize=8, loc="left")
    ax.set(xlabel=x_key, ylabel=y_key)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _page(
    root: Path, rows: Sequence[Row], results: list[tuple[dict, str]], epoch: int | str, missing: list[str]
) -> str:
    from lightning_sensitivity.report import PAGE_STYLE  # one look for the report and the comparison pages

    when = "the last logged value of each key" if epoch == "last" else f"epoch {epoch} ({epoch} completed epochs)"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Run comparison: {html.escape(str(root))}</title><style>{PAGE_STYLE}th{{border:1px solid #ddd;"
        "padding:2px 8px;background:#f4f4f4}</style></head><body><h1>Run comparison</h1>",
        f"<p class='meta'>{len(rows)} run(s) under {html.escape(str(root.resolve()))}; values at {html.escape(when)}. "
        "Table: <a href='compare.csv'>compare.csv</a>.</p>",
    ]
    if missing:
        parts.append(f"<p class='meta'>Default keys in no run, left out: {html.escape(', '.join(missing))}</p>")
    if not results:
        parts.append("<p>No x/y pair to plot: none of the x or y keys is in these runs.</p>")
    header = ["x", "y", "n", "Spearman ρ", "p", "95% CI", "Kendall τb", "p", "95% CI", "note"]
    body = [[s["x"], s["y"], str(s["n"]), _fmt(s["spearman"]), _fmt_p(s["spearman_p"]), _ci(s, "spearman"),
             _fmt(s["kendall"]), _fmt_p(s["kendall_p"]), _ci(s, "kendall"), s["note"]]
            for s, _ in results]  # fmt: skip
    if results:
        methods = sorted({s["p_method"] for s, _ in results if s.get("p_method")})
        parts.append(
            "<h2>Rank correlations</h2><div class='scroll'>" + _table(header, body) + "</div>"
            + (f"<p class='meta'>p-values: {html.escape('; '.join(methods))}.</p>" if methods else "")
        )  # fmt: skip
    for x_key, group in itertools.groupby(results, key=lambda r: r[0]["x"]):
        parts.append(f"<section><h2>{html.escape(x_key)}</h2><div class='grid'>")
        for stats, filename in group:
            alt = f"{stats['y']} vs {stats['x']}: " + _annotation(stats).replace("\n", "; ")
            parts.append(f"<figure><img src='{html.escape(filename)}' alt='{html.escape(alt)}'>"
                         f"<figcaption>{html.escape(_caption(stats, when))}</figcaption></figure>")  # fmt: skip
        parts.append("</div></section>")
    shown = [c for c in (rows[0] if rows else {}) if c == "run" or c.startswith(HPARAMS_PREFIX)]
    shown += list(dict.fromkeys(s[k] for s, _ in results for k in ("x", "y") if s[k] not in shown))
    cells = [[_cell(v) if not isinstance(v := r.get(c), float) or math.isnan(v) else f"{v:.4g}" for c in shown]
             + [r["note"]] for r in rows]  # fmt: skip
    # The table scrolls inside its own box: a sweep's many columns must not widen the whole page.
    parts.append(
        "<details open><summary>Runs</summary><div class='scroll'>"
        + _table([*shown, "note"], cells)
        + "</div></details>"
    )
    return "\n".join(parts) + "</body></html>\n"


def _write(root: Path, out_dir: str | Path | None, rows: list[Row], x: list[str], y: list[str], epoch: int | str,
           num_bootstrap: int, seed: int, missing: list[str]) -> Path:  # fmt: skip
    out = Path(out_dir) if out_dir is not None else root / DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out / "compare.csv")
    results = []
    for x_key in x:
        for y_key in y:
            stats = correlations(rows, x_key, y_key, num_bootstrap=num_bootstrap, seed=seed)
            filename = f"scatter_{_slug(x_key)}__{_slug(y_key)}.png"
            _scatter(rows, x_key, y_key, stats, out / filename)
            results.append((stats, filename))
    page = out / "compare.html"
    text = _page(root, rows, results, epoch, missing)
    text = text.replace("</body></html>", ranking_section(rows, y) + "</body></html>")  # Jiang et al.'s ranking
    page.write_text(text, encoding="utf-8")
    return page


def _resolve(rows: list[Row], columns: list[str], x: Sequence[str] | None, y: Sequence[str] | None,
             names: tuple[str, str]) -> tuple[list[Row], list[str], list[str], list[str]]:  # fmt: skip
    """The rows restricted to the table's columns, the x and y keys (defaults: the present ones) and absent defaults."""
    chosen, missing = [], []
    for keys, default, name in ((x, DEFAULT_X, names[0]), (y, DEFAULT_Y, names[1])):
        if keys is None:
            chosen.append([k for k in default if k in columns])
            missing += [k for k in default if k not in columns]
        else:
            chosen.append(_check_keys(keys, columns, name))
    return _select(rows, columns, chosen[0] + chosen[1]), chosen[0], chosen[1], missing


def write_comparison(
    log_root: str | Path,
    out_dir: str | Path | None = None,
    *,
    x: Sequence[str] | None = None,
    y: Sequence[str] | None = None,
    epoch: int | str = "last",
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> Path:
    """Write ``compare.csv``, one scatter PNG per (x, y) pair and ``compare.html`` into ``out_dir``.

    Args:
        log_root: directory searched recursively for runs (TensorBoard event files).
        out_dir: output directory; default ``log_root/comparison``.
        x, y: keys to plot against each other; default :data:`DEFAULT_X` / :data:`DEFAULT_Y`, those present in a run.
        epoch: ``"last"`` or the number of completed epochs ``N >= 0`` (see the module docstring).
        num_bootstrap, seed: bootstrap resamples and seed of the 95 % intervals.

    Returns:
        The path of ``compare.html``.

    Raises:
        FileNotFoundError / TypeError / ValueError: as :func:`compare_runs`.
    """
    epoch = _check_epoch(epoch)
    root = Path(log_root)
    rows, columns = _collect(root, epoch)
    rows, xs, ys, missing = _resolve(rows, columns, x, y, ("`x`", "`y`"))
    return _write(root, out_dir, rows, xs, ys, epoch, num_bootstrap, seed, missing)
