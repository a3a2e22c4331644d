"""Stiffness summaries of a Gram shared by rows: each process sums over the rows it owns, the sums are reduced.

Every statistic of :func:`~lightning_sensitivity.functional.stiffness_summary` is a ratio of sums over pairs: the
overall, same-class and different-class means, the class-by-class (and super-class) matrices, the stiffness binned
by input distance and the bins' counts. Summed row by row, each becomes a per-row tensor (a row's sum, its sums by
column class, by distance bin); a process computes those of its own rows (:class:`~.gram.distributed.ShardMap`)
from its own Gram rows, the exchange gathers them, and every process adds them up and divides -- the single-process
summary (to float64 rounding), at ``1 / world_size`` of the ``O(N^2)`` work per process. The critical lengths are
read from the reduced curves. With Euclidean distances the bins' range (the largest distance of a finite pair) is
exchanged first.

:func:`shared_stiffness_summaries` runs the whole shared measurement: the Gram rows
(:func:`~.gram.distributed.shared_gram_rows`), their sign and cosine stiffness, the sums of every pair group, one
exchange of the sums (with the Gram rows, so that every process also holds the whole Gram for what needs all
pairs), the summaries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_sensitivity.functional.critical_length import critical_length
from lightning_sensitivity.functional.gram.call import GramCall
from lightning_sensitivity.functional.gram.distributed import Exchange, ShardMap, shared_gram_rows
from lightning_sensitivity.functional.stiffness import pairwise_distance, stiffness_from_gram
from lightning_sensitivity.functional.stiffness_summary import (
    KINDS,
    StiffnessSummary,
    _cells,
    _class_groups,
    _ratio,
    _why_not_classes,
)

__all__ = ["shared_stiffness_summaries"]


def shared_stiffness_summaries(
    call: GramCall,
    shard: ShardMap,
    exchange: Exchange,
    pairs: Mapping[str, tuple[slice, slice]],
    distance_inputs: Tensor,
    *,
    num_classes: int | None = None,
    class_groups: Sequence[int] | Mapping[int, int] | Tensor | None = None,
    num_distance_bins: int = 20,
    distance: str = "cosine",
    critical_length_method: str = "linear_fit",
    same_class_critical_length: bool = False,
) -> tuple[dict[str, StiffnessSummary], Tensor, Tensor]:
    """``({group: summary}, G [N, N], |g_i|^2 [N])`` of the one-set Gram of ``call`` shared by rows.

    Args:
        call: a one-set :class:`~.gram.call.GramCall` of all ``N`` examples (the same on every process).
        shard, exchange: this process's rows and the collective (:mod:`.gram.distributed`).
        pairs: ``{group: (rows, cols)}``, slices of the ``N`` examples; ``rows == cols`` is a set with itself (its
            self pairs left out), as :func:`~lightning_sensitivity.functional.stiffness_summary` with
            ``targets_cols=None``.
        distance_inputs: ``[N, ...]`` floating-point examples for the input distances.
        num_classes, class_groups, num_distance_bins, distance, critical_length_method, same_class_critical_length:
            as in :func:`~lightning_sensitivity.functional.stiffness_summary` (``num_classes`` required for class
            targets: every process must use the same).

    Every summary equals ``stiffness_summary(S.sign[rows, cols], S.cosine[rows, cols], ...)`` of the whole Gram's
    stiffness ``S`` up to float64 rounding.
    """
    targets = call.rows.targets.detach().cpu()
    rows_gram, sq = shared_gram_rows(call, shard, exchange)
    index = shard.index()
    local = stiffness_from_gram(rows_gram, sq[index], sq, self_pairs=False)
    values = {"sign": local.sign.detach().double().cpu(), "cosine": local.cosine.detach().double().cpu()}
    x = distance_inputs.detach().cpu()
    dist = pairwise_distance(x[index], x, distance)  # [s, N]: this process's rows only
    index = index.cpu()
    classes = {g: _classes(targets, r, c, num_classes) for g, (r, c) in pairs.items()}
    masks = {g: _masks(index, r, c, dist.shape[1], classes[g]) for g, (r, c) in pairs.items()}
    uppers: dict[str, dict[str, float]] = {}
    if distance == "euclidean":  # the bins' range is the largest distance of a finite pair: exchanged first
        maxima = {}
        for g in pairs:
            for name, kind, within in _curves(classes[g], same_class_critical_length):
                mask = masks[g][0] & values[kind].isfinite() & (masks[g][1] if within else True)
                maxima[f"{g}/{name}"] = dist.masked_fill(~mask, -math.inf).max(dim=1).values
        gathered = exchange(lambda _: maxima, shard)
        for key, m in gathered.items():
            g, name = key.split("/", 1)
            top = float(m.max())
            uppers.setdefault(g, {})[name] = top if math.isfinite(top) else 1.0
    sums: dict[str, Tensor] = {}
    for g, (_, c) in pairs.items():
        sums.update(
            {f"{g}/{k}": v for k, v in _row_sums(values, dist, masks[g], c, classes[g], num_distance_bins, distance,
                                                  uppers.get(g, {}), same_class_critical_length).items()}
        )  # fmt: skip
    # One dtype, one gather: counts (exact below 2^53) and the Gram rows travel as float64 and come back as they were.
    dtypes = {k: v.dtype for k, v in sums.items()} | {"gram": rows_gram.dtype}
    sums["gram"] = rows_gram.cpu()  # with the sums (on the CPU); back on the model's device after the exchange
    total = exchange(lambda _: {k: v.double() for k, v in sums.items()}, shard)
    total = {k: v.to(dtypes[k]) for k, v in total.items()}
    total["gram"] = total["gram"].to(rows_gram.device)
    out = {}
    for g, (r, c) in pairs.items():
        mine = {k.split("/", 1)[1]: v[r] for k, v in total.items() if k.startswith(f"{g}/")}
        out[g] = _summary(mine, r, c, classes[g], class_groups, num_distance_bins, distance, uppers.get(g, {}),
                          critical_length_method, same_class_critical_length)  # fmt: skip
    return out, total["gram"], sq


def _classes(targets: Tensor, rows: slice, cols: slice, num_classes: int | None) -> dict[str, Any]:
    y_rows, y_cols = targets[rows], targets[cols]
    reason = _why_not_classes(y_rows) or _why_not_classes(y_cols)
    if reason is not None:
        return {"reason": reason}
    if num_classes is None:
        raise ValueError("`num_classes` expected for class targets (every process must use the same), got None")
    for name, y in (("targets_rows", y_rows), ("targets_cols", y_cols)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"`{name}` expected class indices in [0, {num_classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")  # fmt: skip
    return {"reason": None, "C": num_classes, "rows": y_rows.long(), "cols": y_cols.long(), "all": targets.long()}


def _masks(index: Tensor, rows: slice, cols: slice, n: int, classes: dict) -> tuple[Tensor, Tensor | None]:
    """``(pair [s, N], same class [s, N] or None)`` over this process's rows: a pair is a row of the group's rows and
    a column of its columns, not an example with itself when ``rows == cols``."""
    in_rows = (index >= rows.start) & (index < rows.stop)
    pair = in_rows[:, None] & _column_mask(cols, n)[None, :]
    if rows == cols:
        pair &= index[:, None] != torch.arange(n)[None, :]
    same = None
    if classes["reason"] is None:
        same = classes["all"][index][:, None] == classes["all"][None, :]
    return pair, same


def _curves(classes: dict, same_class_curve: bool) -> list[tuple[str, str, bool]]:
    """``(curve name, kind, within a class only)`` of the distance curves of a group."""
    out = [(kind, kind, False) for kind in KINDS]
    if same_class_curve and classes["reason"] is None:
        out.append(("same_class", "sign", True))
    return out


def _edges(upper: float | None, num_bins: int, distance: str) -> Tensor:
    top = 2.0 if distance == "cosine" else upper  # as binned_by_distance chooses them
    return torch.linspace(0.0, top if top > 0 else 1.0, num_bins + 1, dtype=torch.float64)


def _row_sums(values, dist, masks, cols: slice, classes, num_bins, distance, uppers, same_class_curve):
    pair, same = masks
    out: dict[str, Tensor] = {}
    if classes["reason"] is None:
        hot = F.one_hot(classes["all"], classes["C"]).double()
        hot[~_column_mask(cols, hot.shape[0])] = 0.0  # the group's columns only
    for kind in KINDS:
        v = values[kind]
        out[f"{kind}.sum"] = torch.where(pair, v, 0.0).sum(dim=1)
        if classes["reason"] is None:
            # As class_stiffness: entries outside the pairs weigh 0 (a NaN there still makes its cell NaN).
            out[f"{kind}.class"] = (v * pair.double()) @ hot
            out[f"{kind}.class_pairs"] = torch.where(pair, v, 0.0) @ hot  # the diagonal zeroed, as pair_means
    for name, kind, within in _curves(classes, same_class_curve):
        mask = pair & values[kind].isfinite() & (same if within else True)
        edges = _edges(uppers.get(name), num_bins, distance)
        bins = (torch.bucketize(dist, edges, right=True) - 1).clamp(0, num_bins - 1)
        out[f"{name}.bin"] = torch.zeros(dist.shape[0], num_bins, dtype=torch.float64).scatter_add_(
            1, bins, torch.where(mask, values[kind], 0.0)
        )
        out[f"{name}.count"] = torch.zeros(dist.shape[0], num_bins, dtype=torch.int64).scatter_add_(
            1, bins, mask.long()
        )
    return out


def _column_mask(cols: slice, n: int) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[cols] = True
    return mask


def _summary(sums, rows: slice, cols: slice, classes, class_groups, num_bins, distance, uppers, method, same_curve):
    self_pairs = rows == cols
    n, m = rows.stop - rows.start, cols.stop - cols.start
    num_pairs = n * m - (n if self_pairs else 0)
    out: dict[str, Any] = {}
    num_same = 0
    coarse = None
    if classes["reason"] is None and class_groups is not None:
        coarse = _class_groups(class_groups, classes["C"])
    elif class_groups is not None:
        _class_groups(class_groups, 1)  # still reject a malformed argument
    for kind in KINDS:
        total = sums[f"{kind}.sum"].sum()
        out[f"{kind}_mean"] = _ratio(total, num_pairs)
        if classes["reason"] is not None:
            out[f"same_class_{kind}"] = out[f"different_class_{kind}"] = math.nan
            out[f"class_{kind}"] = out[f"superclass_{kind}"] = None
            continue
        c = classes["C"]
        row_hot = F.one_hot(classes["rows"], c).double()
        n_rows, n_cols = row_hot.sum(0), F.one_hot(classes["cols"], c).double().sum(0)
        counts = n_rows[:, None] * n_cols[None, :]
        if self_pairs:
            counts = counts - torch.diag(n_rows)
        totals = row_hot.T @ sums[f"{kind}.class"]
        out[f"class_{kind}"] = _cells(totals, counts)
        out[f"superclass_{kind}"] = None
        if coarse is not None:
            group = F.one_hot(coarse[:c], int(coarse.max()) + 1).double()
            out[f"superclass_{kind}"] = _cells(group.T @ totals @ group, group.T @ counts @ group)
        same_total = (row_hot * sums[f"{kind}.class_pairs"]).sum()
        num_same = int((n_rows * n_cols).sum()) - (n if self_pairs else 0)
        out[f"same_class_{kind}"] = _ratio(same_total, num_same)
        out[f"different_class_{kind}"] = _ratio(total - same_total, num_pairs - num_same)
    curves = {}
    for name, _, _ in _curves(classes, same_curve):
        total, count = sums[f"{name}.bin"].sum(0), sums[f"{name}.count"].sum(0)
        mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
        curves[name] = (_edges(uppers.get(name), num_bins, distance), mean, count)
    out["bin_edges"] = curves["cosine"][0]
    out["distance_sign"], out["distance_cosine"] = curves["sign"][1], curves["cosine"][1]
    out["distance_count"] = curves["sign"][2]
    centers = (out["bin_edges"][1:] + out["bin_edges"][:-1]) / 2  # as stiffness_summary: the last kind's edges
    length = critical_length(centers, out["distance_sign"], out["distance_count"], method=method)
    same_length = math.nan
    if "same_class" in curves and num_same > 0:
        s_edges, s_mean, s_count = curves["same_class"]
        same_length = critical_length((s_edges[1:] + s_edges[:-1]) / 2, s_mean, s_count, method=method)
    return StiffnessSummary(
        same_class_critical_length=same_length,
        self_pairs=self_pairs,
        num_pairs=num_pairs,
        num_same_class_pairs=num_same if classes["reason"] is None else 0,
        num_different_class_pairs=num_pairs - num_same if classes["reason"] is None else 0,
        critical_length=length,
        critical_length_method=method,
        class_splits_skipped=classes["reason"],
        **out,
    )
