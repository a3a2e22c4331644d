"""Rank correlations with p-values and bootstrap intervals, numpy only (the conventions of scipy.stats).

Small sweeps get exact statistics: below :data:`EXACT_BELOW` runs both p-values come from the exact permutation
distribution (every ordering of the runs enumerated, ties included), not from the t or normal approximation, which
says "p = 0" for a perfect ranking of 4 runs (the exact two-sided p is 2/24). Below :data:`MIN_BOOTSTRAP` runs no
bootstrap interval is given: resampling 4 runs with replacement mostly redraws the same ranking and reports
"[1.00, 1.00]", an interval that claims a certainty the data cannot have.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

Row = dict[str, Any]

__all__ = ["EXACT_BELOW", "MIN_BOOTSTRAP", "correlations", "exact_permutation_p"]

#: Below this many runs the p-values are exact: all n! orderings enumerated (9! = 362,880 at most).
EXACT_BELOW = 10
#: Below this many runs no bootstrap interval is reported ("too few runs").
MIN_BOOTSTRAP = 8


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


@lru_cache(maxsize=4)
def _permutations(n: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
    perms.setflags(write=False)
    return perms


def exact_permutation_p(x: Any, y: Any) -> tuple[float, float]:
    """Two-sided exact permutation p-values ``(spearman_p, kendall_p)`` of the rank correlation of ``x`` and ``y``.

    Every ordering of ``y`` against ``x`` is enumerated (``n!`` of them, so ``n`` below :data:`EXACT_BELOW`); the p
    value is the share of orderings whose coefficient is at least as far from zero as the observed one. Ties keep
    their average ranks (the tau-b denominator does not change under a permutation, so Kendall's numerator decides).

    Example:
        >>> exact_permutation_p([1, 2, 3, 4], [10, 20, 30, 40])  # perfect ranking: the identity and the reversal
        (0.08333333333333333, 0.08333333333333333)
    """
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    n = x.size
    if n != y.size or not 2 <= n < EXACT_BELOW:
        raise ValueError(f"`x` and `y` expected the same length in [2, {EXACT_BELOW - 1}], got {x.size} and {y.size}")
    perms = _permutations(n)
    rx, ry = _rankdata(x), _rankdata(y)
    cx = rx - rx.mean()
    rho = (ry[perms] - ry.mean()) @ cx  # proportional to Spearman's rho for each ordering (same denominator)
    i, j = np.triu_indices(n, k=1)
    sx = np.sign(x[i] - x[j])
    yp = y[perms]
    score = np.sign(yp[:, i] - yp[:, j]) @ sx  # Kendall's S for each ordering
    observed_rho = float((ry - ry.mean()) @ cx)
    observed_score = float(np.sign(y[i] - y[j]) @ sx)
    tol = 1e-9 * max(1.0, abs(observed_rho))
    spearman_p = float(np.mean(np.abs(rho) >= abs(observed_rho) - tol))
    kendall_p = float(np.mean(np.abs(score) >= abs(observed_score) - 1e-9))
    return spearman_p, kendall_p


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

    Runs where either value is missing or not a number are left out. Below :data:`EXACT_BELOW` runs the p-values
    are exact permutation p-values (:func:`exact_permutation_p`); from there on Spearman's uses the t approximation
    and Kendall's the exact null distribution without ties (n <= 33), else the normal approximation (as
    ``scipy.stats``). The 95 % intervals are percentiles of the coefficients over ``num_bootstrap`` resamples of the
    runs (with replacement, ``numpy.random.default_rng(seed)``; resamples with a constant column are skipped), and
    only from :data:`MIN_BOOTSTRAP` runs on: below, the interval is NaN and the note says "too few runs".

    Returns:
        ``x``, ``y``, ``n`` (runs used), ``spearman``, ``spearman_p``, ``spearman_low``, ``spearman_high``,
        ``kendall``, ``kendall_p``, ``kendall_low``, ``kendall_high`` (NaN when undefined), ``p_method`` (how the
        p-values were computed) and ``note`` (why a value is NaN or runs were left out; empty otherwise).

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
    result: dict[str, Any] = {"x": x_key, "y": y_key, "n": len(kept), "p_method": ""}
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
    result.update(spearman=rho, kendall=tau)
    if n < EXACT_BELOW:
        result["spearman_p"], result["kendall_p"] = exact_permutation_p(x, y)
        result["p_method"] = f"exact permutation test over all {math.factorial(n):,} orderings of the {n} runs"
    else:
        result["spearman_p"], result["kendall_p"] = _t_two_sided(t, df), _kendall_p(x, y, score, discordant)
        result["p_method"] = "Spearman: t approximation; Kendall: " + (
            "exact" if not (_tie_stats(x)[0] or _tie_stats(y)[0]) and n <= 33 else "normal approximation"
        )
    if num_bootstrap and n < MIN_BOOTSTRAP:
        notes.append(f"too few runs for a bootstrap interval (n={n} < {MIN_BOOTSTRAP})")
    elif num_bootstrap:
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
