"""Compare many runs: one table row per run and scatter plots of sensitivity vs generalization with rank correlations.

Usage::

    python -m lightning_sensitivity.compare LOG_ROOT [--x KEY ...] [--y KEY ...] [--epoch last|N] [--out DIR]

Every directory under ``LOG_ROOT`` (itself included) that directly holds TensorBoard event files
(``events.out.tfevents.*``, e.g. ``LOG_ROOT/<name>/version_<k>/`` of Lightning's ``TensorBoardLogger``) is one run;
its ``hparams.yaml`` (when present) gives the ``hparams/<name>`` columns (nested keys joined with ``.``). Written to
``DIR`` (default ``LOG_ROOT/comparison``): ``compare.csv`` (one row per run: ``run``, the hyperparameters, every
``sensitivity/...`` scalar, :data:`GENERALIZATION_KEYS`, any other requested key, ``note``) and ``compare.html``
with one scatter plot (PNG beside it) of each x key against each y key, annotated with Spearman's rho and Kendall's
tau-b, their p-values and seeded bootstrap 95 % intervals -- Novak et al.'s (2018) Jacobian norm vs generalization
gap figure for your own sweep. Any column (a hyperparameter too) can be an x or y key.

Which value of a key a row holds (``--epoch``): ``last`` (default) takes the value written at the largest step.
``N`` means "after N completed training epochs", the monitors' numbering (0 = at initialisation). Lightning writes an
``epoch`` scalar (the 0-based training epoch) beside every metric logged with ``self.log``; with ``E`` the last step
at which ``epoch == N - 1``: a ``sensitivity/...`` key takes its value at step ``E + 1`` (the monitors write at
``trainer.global_step`` at the end of training epoch ``N - 1``, one step after Lightning's epoch-end metrics), else at
``E``; at ``N = 0`` at step 0. Any other key takes its last value in training epoch ``N - 1`` (steps after the previous
epoch's ``E``, up to ``E``); at ``N = 0`` it is missing. A run that never reached epoch ``N`` gets missing values and a
note. Missing values are empty cells in the CSV and NaN in :func:`compare_runs`' rows (``pandas.DataFrame(rows)``
makes a frame of them; pandas is not needed).

Statistics (numpy only): Spearman's rho on average ranks (ties), p-value from Student's t with ``n - 2`` degrees of
freedom; Kendall's tau-b, p-value exact (permutation distribution) without ties when ``n <= 33``, else the normal
approximation with tie-corrected variance -- the conventions of ``scipy.stats.spearmanr`` / ``kendalltau``. Runs lacking
either key are left out of that pair; fewer than 3 runs or a constant column give NaN and a note.

Example::

    from lightning_sensitivity.compare import write_comparison
    html_path = write_comparison("lightning_logs")  # lightning_logs/comparison/compare.html and compare.csv
"""

from __future__ import annotations

import argparse
import csv
import html
import math
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_sensitivity import keys as _keys

# The names are built in lightning_sensitivity.keys.
SENSITIVITY_PREFIX = _keys.ROOT + "/"
GENERALIZATION_KEYS = _keys.GENERALIZATION_KEYS
DEFAULT_X = _keys.COMPARE_X
DEFAULT_Y = _keys.COMPARE_Y
EPOCH_KEY = "epoch"
HPARAMS_PREFIX = "hparams/"
DEFAULT_OUT = "comparison"
EVENTS_GLOB = "events.out.tfevents.*"

__all__ = ["compare_runs", "correlations", "find_event_runs", "main", "write_comparison"]

Row = dict[str, Any]


# ---------------------------------------------------------------- statistics
def _rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_value = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.empty(values.size, dtype=np.intp)
    group[order] = np.cumsum(new_value)  # 1-based index of each value's tie group
    bounds = np.r_[np.flatnonzero(new_value), values.size]  # group g spans sorted positions bounds[g-1] .. bounds[g]-1
    return 0.5 * (bounds[group] + bounds[group - 1] + 1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return math.nan if denominator == 0 else max(-1.0, min(1.0, float(a @ b) / denominator))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson(_rankdata(x), _rankdata(y))


def _tie_stats(values: np.ndarray) -> tuple[int, int, int]:
    """Sums over groups of t tied values of t(t-1)/2, t(t-1)(t-2) and t(t-1)(2t+5)."""
    t = np.unique(values, return_counts=True)[1].astype(np.int64)
    return int((t * (t - 1) // 2).sum()), int((t * (t - 1) * (t - 2)).sum()), int((t * (t - 1) * (2 * t + 5)).sum())


def _kendall_terms(x: np.ndarray, y: np.ndarray) -> tuple[float, int, int]:
    """(tau-b, concordant minus discordant pairs, discordant pairs); tau NaN when either column is constant."""
    upper = np.triu_indices(x.size, k=1)
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    score = int((sx * sy).sum())
    pairs_x, pairs_y = int(np.count_nonzero(sx)), int(np.count_nonzero(sy))
    tau = math.nan if pairs_x == 0 or pairs_y == 0 else max(-1.0, min(1.0, score / math.sqrt(pairs_x * pairs_y)))
    return tau, score, int(((sx * sy) < 0).sum())


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(log_front) * fraction / a


def _t_two_sided(t: float, df: int) -> float:
    if math.isinf(t):
        return 0.0
    return min(1.0, _betainc(df / 2.0, 0.5, df / (df + t * t)))


def _kendall_exact_p(n: int, discordant: int) -> float:
    """Two-sided p of the permutation distribution of the number of inversions (no ties)."""
    tail = min(discordant, n * (n - 1) // 2 - discordant)
    counts = [1] + [0] * tail  # permutations of j items with k inversions, k <= tail, as exact integers
    for j in range(2, n + 1):
        running, new = 0, []
        for k in range(tail + 1):
            running += counts[k] - (counts[k - j] if k >= j else 0)
            new.append(running)
        counts = new
    return min(1.0, 2 * sum(counts) / math.factorial(n))


def _kendall_p(x: np.ndarray, y: np.ndarray, score: int, discordant: int) -> float:
    n = x.size
    xtie, x0, x1 = _tie_stats(x)
    ytie, y0, y1 = _tie_stats(y)
    total = n * (n - 1) // 2
    if xtie == 0 and ytie == 0 and (n <= 33 or min(discordant, total - discordant) <= 1):
        return _kendall_exact_p(n, discordant)
    m = n * (n - 1.0)
    var = (m * (2 * n + 5) - x1 - y1) / 18 + 2 * xtie * ytie / m + x0 * y0 / (9 * m * (n - 2))
    return math.erfc(abs(score) / math.sqrt(var) / math.sqrt(2.0))


def _interval(samples: list[float]) -> tuple[float, float]:
    finite = np.asarray([s for s in samples if math.isfinite(s)])
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def correlations(rows: Sequence[Row], x_key: str, y_key: str, *, num_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Spearman's rho and Kendall's tau-b between two columns of :func:`compare_runs` rows.

    Runs where either value is missing or not a number are left out. The 95 % intervals are percentiles of the
    coefficients over ``num_bootstrap`` resamples of the runs (with replacement, ``numpy.random.default_rng(seed)``);
    resamples with a constant column are skipped.

    Returns:
        ``x``, ``y``, ``n`` (runs used), ``spearman``, ``spearman_p``, ``spearman_low``, ``spearman_high``,
        ``kendall``, ``kendall_p``, ``kendall_low``, ``kendall_high`` (NaN when undefined) and ``note`` (why a value is
        NaN or runs were left out; empty otherwise).

    Example:
        >>> rows = [{"a": 1, "b": 2.0}, {"a": 2, "b": 3.5}, {"a": 3, "b": 3.0}, {"a": 4, "b": 9.0}]
        >>> r = correlations(rows, "a", "b", num_bootstrap=0)
        >>> round(r["spearman"], 3), round(r["kendall"], 3), r["n"]
        (0.8, 0.667, 4)
    """
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, int) or num_bootstrap < 0:
        raise ValueError(f"`num_bootstrap` expected an int >= 0, got {num_bootstrap!r}")
    pairs = [(_as_float(r.get(x_key)), _as_float(r.get(y_key))) for r in rows]
    kept = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    result: dict[str, Any] = {"x": x_key, "y": y_key, "n": len(kept)}
    for name in ("spearman", "kendall"):
        result.update({name: math.nan, f"{name}_p": math.nan, f"{name}_low": math.nan, f"{name}_high": math.nan})
    notes = [f"{len(pairs) - len(kept)} of {len(pairs)} runs lack a value of {x_key} or {y_key}"] if len(kept) < len(
        pairs) else []  # fmt: skip
    x, y = np.array([a for a, _ in kept]), np.array([b for _, b in kept])
    constant = [k for k, v in ((x_key, x), (y_key, y)) if v.size and np.all(v == v[0])]
    if len(kept) < 3 or constant:
        notes.append(f"fewer than 3 runs with both values (n={len(kept)})" if len(kept) < 3 else
                     f"{' and '.join(constant)} constant across the runs: no rank correlation")  # fmt: skip
        return {**result, "note": "; ".join(notes)}
    n = x.size
    rho = _spearman(x, y)
    df = n - 2
    t = math.inf if abs(rho) >= 1.0 else rho * math.sqrt(df / ((1.0 + rho) * (1.0 - rho)))
    tau, score, discordant = _kendall_terms(x, y)
    result.update(spearman=rho, spearman_p=_t_two_sided(t, df), kendall=tau)
    result["kendall_p"] = _kendall_p(x, y, score, discordant)
    if num_bootstrap:
        rng = np.random.default_rng(seed)
        rhos, taus = [], []
        for index in rng.integers(0, n, size=(num_bootstrap, n)):
            bx, by = x[index], y[index]
            if np.all(bx == bx[0]) or np.all(by == by[0]):
                continue
            rhos.append(_spearman(bx, by))
            taus.append(_kendall_terms(bx, by)[0])
        result["spearman_low"], result["spearman_high"] = _interval(rhos)
        result["kendall_low"], result["kendall_high"] = _interval(taus)
        if len(rhos) < num_bootstrap:
            notes.append(f"{num_bootstrap - len(rhos)} of {num_bootstrap} bootstrap resamples constant, skipped")
    return {**result, "note": "; ".join(notes)}


# ---------------------------------------------------------------- reading runs
def find_event_runs(log_root: str | Path) -> list[Path]:
    """Directories under ``log_root`` (itself included) that directly hold TensorBoard event files, sorted.

    Raises:
        FileNotFoundError: if ``log_root`` is not a directory.
    """
    root = Path(log_root)
    if not root.is_dir():
        raise FileNotFoundError(f"`log_root` (LOG_ROOT) expected a directory, got {str(root)!r}")
    return sorted({p.parent for p in root.rglob(EVENTS_GLOB) if p.is_file()})


def _read_scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run's event files (oldest file first) as ``tag -> {step: value}``; a later write wins."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob(EVENTS_GLOB)):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                else:
                    continue
                scalars.setdefault(value.tag, {})[int(event.step)] = number
    return scalars


def _read_hparams(run: Path) -> dict[str, Any]:
    path = run / "hparams.yaml"
    if not path.is_file():
        return {}
    import yaml

    class _Lenient(yaml.SafeLoader):  # Lightning may write python-object tags; keep their plain content
        pass

    def _any(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    _Lenient.add_multi_constructor("", _any)
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_Lenient)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        warnings.warn(f"Ignoring unreadable {path}: {err}", stacklevel=3)
        return {}
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            plain = isinstance(node, (int, float, str, bool)) or node is None
            flat[HPARAMS_PREFIX + prefix] = node if plain else str(node)

    if isinstance(loaded, dict) and loaded:
        visit("", loaded)
    return flat


def _value_at(series: dict[int, float], key: str, epoch: int | str, ends: dict[int, int]) -> float:
    if epoch == "last":
        return series[max(series)]
    assert isinstance(epoch, int)
    if epoch == 0:
        return series.get(0, math.nan) if key.startswith(SENSITIVITY_PREFIX) else math.nan
    end = ends[epoch - 1]
    if key.startswith(SENSITIVITY_PREFIX):
        # The monitors log at Lightning's epoch-end step E; runs written before 0.1 logged at E + 1.
        return series.get(end, series.get(end + 1, math.nan))
    start = ends.get(epoch - 2, -1)
    steps = [s for s in series if start < s <= end]
    return series[max(steps)] if steps else math.nan


def _check_epoch(epoch: Any, name: str = "`epoch`") -> int | str:
    if epoch == "last":
        return "last"
    if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer, str)):
        raise TypeError(f"{name} expected 'last' or an int >= 0, got {type(epoch).__name__} {epoch!r}")
    try:
        value = int(epoch)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name} expected 'last' or an int >= 0, got {epoch!r}")
    return value


def _collect(log_root: str | Path, epoch: int | str) -> tuple[list[Row], list[str]]:
    """Rows with every scalar of every run and the ordered column names (scalars beyond the default columns too)."""
    root = Path(log_root)
    runs = find_event_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"`log_root` (LOG_ROOT) {str(root)!r} holds no runs: expected TensorBoard event files like "
            f"'<name>/version_0/{EVENTS_GLOB}' written by Lightning's TensorBoardLogger"
        )
    rows: list[Row] = []
    for run in runs:
        scalars, notes = _read_scalars(run), []
        ends: dict[int, int] = {}
        for step, value in scalars.get(EPOCH_KEY, {}).items():
            ends[int(round(value))] = max(step, ends.get(int(round(value)), step))
        reached = epoch == "last" or epoch == 0 or (epoch - 1) in ends
        if not reached:
            notes.append(f"epoch {epoch} not reached (logged epochs: {sorted(ends) or 'none'})")
        values = {
            k: _value_at(s, k, epoch, ends) if reached and s else math.nan for k, s in scalars.items() if k != EPOCH_KEY
        }
        label = run.relative_to(root).as_posix() if run != root else "."
        rows.append({"run": label, **_read_hparams(run), **values, "note": "; ".join(notes)})
    hparams = sorted({k for r in rows for k in r if k.startswith(HPARAMS_PREFIX)})
    scalar_keys = sorted({k for r in rows for k in r if k not in ("run", "note") and not k.startswith(HPARAMS_PREFIX)})
    columns = ["run", *hparams, *scalar_keys, "note"]
    return [{c: r.get(c, math.nan) for c in columns} for r in rows], columns


def _check_keys(keys: Sequence[str] | None, columns: Sequence[str], name: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        raise TypeError(f"{name} expected a sequence of key names, got the str {keys!r} (wrap it in a list)")
    unknown = [k for k in keys if k not in columns or k in ("run", "note")]
    if unknown:
        available = ", ".join(c for c in columns if c not in ("run", "note"))
        raise ValueError(f"{name} got unknown key(s) {unknown}; keys that exist: {available}")
    return list(keys)


def _select(rows: list[Row], columns: list[str], extra: Sequence[str]) -> list[Row]:
    """Columns in table order: run, hyperparameters, sensitivity scalars, generalization keys, other requested, note."""
    hparams = [c for c in columns if c.startswith(HPARAMS_PREFIX)]
    sensitivity = [c for c in columns if c.startswith(SENSITIVITY_PREFIX)]
    kept = ["run", *hparams, *sensitivity, *GENERALIZATION_KEYS]
    kept += [k for k in dict.fromkeys(extra) if k not in kept]
    return [{c: r.get(c, math.nan) for c in [*kept, "note"]} for r in rows]


def compare_runs(
    log_root: str | Path, *, x: Sequence[str] | None = None, y: Sequence[str] | None = None, epoch: int | str = "last"
) -> list[Row]:
    """One dict per run under ``log_root`` (see the module docstring for which runs, columns and epoch).

    Args:
        log_root: directory searched recursively for TensorBoard event files.
        x, y: extra keys the table must hold (any scalar tag or ``hparams/...`` column); checked to exist.
        epoch: ``"last"`` or the number of completed epochs ``N >= 0``.

    Raises:
        FileNotFoundError: ``log_root`` is not a directory or holds no event files.
        TypeError / ValueError: bad ``epoch``; a key of ``x`` / ``y`` in no run (the message lists those that exist).
    """
    epoch = _check_epoch(epoch)
    rows, columns = _collect(log_root, epoch)
    extra = _check_keys(x, columns, "`x`") + _check_keys(y, columns, "`y`")
    return _select(rows, columns, extra)



# ---------------------------------------------------------------- writing
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


def _annotation(stats: dict) -> str:
    if not math.isfinite(stats["spearman"]):
        return "\n".join(textwrap.wrap(f"n={stats['n']}: {stats['note']}", 90))
    return (
        f"n={stats['n']}\nSpearman ρ={_fmt(stats['spearman'])} (p={_fmt_p(stats['spearman_p'])}), "
        f"95% CI [{_fmt(stats['spearman_low'], 2)}, {_fmt(stats['spearman_high'], 2)}]\n"
        f"Kendall τb={_fmt(stats['kendall'])} (p={_fmt_p(stats['kendall_p'])}), "
        f"95% CI [{_fmt(stats['kendall_low'], 2)}, {_fmt(stats['kendall_high'], 2)}]"
    )


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
    from lightning_sensitivity.report import _new_figure  # the report's Agg figure factory (no pyplot)

    fig, (ax,) = _new_figure(1, 6.0, 5.0)
    labels = _short_labels([r["run"] for r in rows])
    points = [(label, _as_float(r.get(x_key)), _as_float(r.get(y_key))) for label, r in zip(labels, rows)]
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
    from lightning_sensitivity.report import _STYLE  # one look for the report and the comparison pages

    when = "the last logged value of each key" if epoch == "last" else f"epoch {epoch} ({epoch} completed epochs)"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Run comparison: {html.escape(str(root))}</title><style>{_STYLE}th{{border:1px solid #ddd;"
        "padding:2px 8px;background:#f4f4f4}</style></head><body><h1>Run comparison</h1>",
        f"<p class='meta'>{len(rows)} run(s) under {html.escape(str(root.resolve()))}; values at {html.escape(when)}. "
        "Table: <a href='compare.csv'>compare.csv</a>.</p>",
    ]
    if missing:
        parts.append(f"<p class='meta'>Default keys in no run, left out: {html.escape(', '.join(missing))}</p>")
    if not results:
        parts.append("<p>No x/y pair to plot: none of the x or y keys is in these runs.</p>")
    header = ["x", "y", "n", "Spearman ρ", "p", "95% CI", "Kendall τb", "p", "95% CI", "note"]
    body = [[s["x"], s["y"], str(s["n"]), _fmt(s["spearman"]), _fmt_p(s["spearman_p"]),
             f"[{_fmt(s['spearman_low'], 2)}, {_fmt(s['spearman_high'], 2)}]", _fmt(s["kendall"]),
             _fmt_p(s["kendall_p"]), f"[{_fmt(s['kendall_low'], 2)}, {_fmt(s['kendall_high'], 2)}]", s["note"]]
            for s, _ in results]  # fmt: skip
    if results:
        parts.append("<h2>Rank correlations</h2>" + _table(header, body))
    current_x = None
    for stats, filename in results:
        if stats["x"] != current_x:
            close = "</section>" if current_x is not None else ""
            parts.append(f"{close}<section><h2>{html.escape(stats['x'])}</h2>")
            current_x = stats["x"]
        caption = f"{stats['y']} vs {stats['x']}: " + _annotation(stats).replace("\n", "; ")
        parts.append(f"<figure><img src='{html.escape(filename)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
    if current_x is not None:
        parts.append("</section>")
    shown = [c for c in (rows[0] if rows else {}) if c == "run" or c.startswith(HPARAMS_PREFIX)]
    shown += list(dict.fromkeys(s[k] for s, _ in results for k in ("x", "y") if s[k] not in shown))
    cells = [[_cell(v) if not isinstance(v := r.get(c), float) or math.isnan(v) else f"{v:.4g}" for c in shown]
             + [r["note"]] for r in rows]  # fmt: skip
    parts.append("<details open><summary>Runs</summary>" + _table([*shown, "note"], cells) + "</details>")
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
    page.write_text(_page(root, rows, results, epoch, missing), encoding="utf-8")
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


def _epoch_arg(text: str) -> int | str:
    try:
        return _check_epoch(text, "--epoch")
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 on success, 1 when LOG_ROOT holds no runs. Bad arguments exit with 2."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sensitivity.compare",
        description="Compare runs: a CSV table and scatter plots of sensitivity vs generalization keys with rank "
        "correlations (Spearman, Kendall tau-b, bootstrap 95%% intervals).",
    )
    parser.add_argument("log_root", metavar="LOG_ROOT", help="directory searched recursively for TensorBoard runs")
    parser.add_argument("--x", nargs="+", default=None, metavar="KEY", help=f"x keys (default: {', '.join(DEFAULT_X)})")
    parser.add_argument("--y", nargs="+", default=None, metavar="KEY", help=f"y keys (default: {', '.join(DEFAULT_Y)})")
    parser.add_argument(
        "--epoch", type=_epoch_arg, default="last",
        help="'last' (default: each key's last value) or N: after N completed epochs (0: at init)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help=f"output directory (default: LOG_ROOT/{DEFAULT_OUT})")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args(argv)
    root = Path(args.log_root)
    if not root.is_dir():
        parser.error(f"argument LOG_ROOT: expected a directory, got {args.log_root!r}")
    if args.bootstrap < 0:
        parser.error(f"argument --bootstrap: expected an int >= 0, got {args.bootstrap}")
    try:
        rows, columns = _collect(root, args.epoch)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        rows, xs, ys, missing = _resolve(rows, columns, args.x, args.y, ("--x", "--y"))
    except ValueError as err:
        parser.error(str(err))
    page = _write(root, args.out, rows, xs, ys, args.epoch, args.bootstrap, args.seed, missing)
    print(f"{len(rows)} run(s), {len(xs) * len(ys)} plot(s): {page} and {page.with_name('compare.csv')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
