"""Which logged measure tracks generalization in a sweep: Kendall's tau, overall and granulated (Jiang et al. 2020).

Jiang et al. ("Fantastic generalization measures and where to find them", Sec. 4) rank a measure by Kendall's tau
between it and the generalization gap over all runs, and -- because one hyperparameter can drive both -- by the
*granulated* tau: for each varied hyperparameter ``h``, the runs are grouped by the values of every other
hyperparameter, tau is taken within each group (where only ``h`` changes), and the group taus are averaged
(``psi_h``); their mean over the hyperparameters is ``Psi``. A measure that tracks the gap only through one
hyperparameter has a high overall tau and a low ``psi`` for the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_sensitivity.compare.runs import HPARAMS_PREFIX, SENSITIVITY_PREFIX, Row
from lightning_sensitivity.compare.stats import _as_float, _kendall_terms

__all__ = ["rank_measures", "ranking_section"]


def _tau(pairs: list[tuple[float, float]]) -> float:
    kept = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if len(kept) < 2:
        return math.nan
    x, y = np.array([a for a, _ in kept]), np.array([b for _, b in kept])
    return _kendall_terms(x, y)[0]


def _varied(rows: Sequence[Row]) -> list[str]:
    """``hparams/...`` columns with at least two distinct values, seeds left out (they are not a design choice)."""
    names = dict.fromkeys(k for r in rows for k in r if k.startswith(HPARAMS_PREFIX))
    out = []
    for name in names:
        if name.rsplit(".", 1)[-1].split("/")[-1].endswith("seed"):
            continue
        values = {repr(r.get(name)) for r in rows}
        if len(values) >= 2:
            out.append(name)
    return out


def rank_measures(
    rows: Sequence[Row],
    target: str = "generalization_gap/acc",
    *,
    measures: Sequence[str] | None = None,
    hyperparameters: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Kendall's tau of each measure against ``target`` over the runs, overall and granulated per hyperparameter.

    Args:
        rows: one dict per run, e.g. :func:`~lightning_sensitivity.compare.compare_runs` rows.
        target: the column measures are ranked against (default the accuracy generalization gap).
        measures: the columns to rank; default every ``sensitivity/...`` column of the rows.
        hyperparameters: the varied design choices; default every ``hparams/...`` column with two or more values
            whose name does not end in ``seed``.

    Returns:
        One dict per measure, highest ``|Psi|`` first (NaN last, then by ``|overall|``): ``measure``, ``n`` (runs
        with both values), ``overall`` (tau over all runs), ``granulated`` (``{h: psi_h}``, NaN when no group has
        two runs with different ``h``), ``groups`` (``{h: number of groups averaged}``) and ``psi`` (the mean of the
        finite ``psi_h``).

    Raises:
        TypeError: ``rows`` not a sequence of dicts, or names not strings.

    Example:
        >>> rows = [{"hparams/lr": lr, "hparams/width": w, "m": lr * w, "gap": lr + 0.1 * w}
        ...         for lr in (1, 2, 3) for w in (1, 2)]
        >>> r = rank_measures(rows, "gap", measures=["m"])[0]
        >>> r["overall"] > 0, r["granulated"]["hparams/lr"], r["granulated"]["hparams/width"]
        (True, 1.0, 1.0)
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"`rows` expected a sequence of dicts (one per run), got {type(rows).__name__}")
    for name, value in (("target", target),):
        if not isinstance(value, str):
            raise TypeError(f"`{name}` expected a column name (str), got {type(value).__name__}")
    for name, value in (("measures", measures), ("hyperparameters", hyperparameters)):
        if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
            raise TypeError(f"`{name}` expected a sequence of column names, got {value!r}")
    if measures is None:
        measures = list(dict.fromkeys(k for r in rows for k in r if k.startswith(SENSITIVITY_PREFIX)))
    hyper = _varied(rows) if hyperparameters is None else list(hyperparameters)
    out = []
    for measure in measures:
        pairs = [(_as_float(r.get(measure)), _as_float(r.get(target))) for r in rows]
        result: dict[str, Any] = {
            "measure": measure,
            "n": sum(math.isfinite(a) and math.isfinite(b) for a, b in pairs),
            "overall": _tau(pairs),
            "granulated": {},
            "groups": {},
        }
        for h in hyper:
            others = [o for o in hyper if o != h]
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(tuple(repr(r.get(o)) for o in others), []).append(i)
            taus = []
            for members in groups.values():
                if len({repr(rows[i].get(h)) for i in members}) < 2:
                    continue
                tau = _tau([pairs[i] for i in members])
                if tau == tau:
                    taus.append(tau)
            result["granulated"][h] = float(np.mean(taus)) if taus else math.nan
            result["groups"][h] = len(taus)
        finite = [v for v in result["granulated"].values() if v == v]
        result["psi"] = float(np.mean(finite)) if finite else math.nan
        out.append(result)

    def order(r: dict[str, Any]) -> tuple[float, float]:
        psi, overall = r["psi"], r["overall"]
        return (-abs(psi) if psi == psi else math.inf, -abs(overall) if overall == overall else math.inf)

    return sorted(out, key=order)


def ranking_section(rows: Sequence[Row], targets: Sequence[str]) -> str:
    """The compare page's HTML section: per target, the measures ranked by :func:`rank_measures` (empty string when
    no run has a ``sensitivity/...`` value)."""
    import html

    def fmt(value: float) -> str:
        return "" if value != value else f"{value:+.3f}"

    parts = []
    for target in targets:
        ranking = rank_measures(rows, target)
        if not ranking:
            continue
        hyper = list(ranking[0]["granulated"])
        head = ["measure", "n", "overall τ", *(f"ψ {h.removeprefix(HPARAMS_PREFIX)}" for h in hyper), "Ψ"]
        body = [[r["measure"], str(r["n"]), fmt(r["overall"]), *(fmt(r["granulated"][h]) for h in hyper),
                 fmt(r["psi"])] for r in ranking]  # fmt: skip
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        parts.append(f"<h3>against {html.escape(target)}</h3><table><tr>{header}</tr>{cells}</table>")
    if not parts:
        return ""
    intro = (
        "<h2>Which measure tracks generalization (Jiang et al. 2020)</h2><p class='meta'>Kendall's τ of each "
        "measure against the target over all runs, and granulated: ψ of a hyperparameter is the mean τ within the "
        "groups of runs where only it changes; Ψ is the mean of the ψ. Sorted by |Ψ|.</p>"
    )
    return intro + "".join(parts)
