"""Everything measured about one pair group of stiffness matrices: means, class splits, curve by distance.

A pair group is the rows of one probe set against the columns of another (or of itself). From its sign and cosine
stiffness matrices (Fort et al. 2019) this module derives, in one place, what a monitor logs: the overall mean, the
same-class and different-class means, the class-by-class (and super-class) matrices, the stiffness binned by input
distance and the critical length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_choice, check_class_groups, check_int
from lightning_sensitivity.functional.critical_length import METHODS, Method, critical_length
from lightning_sensitivity.functional.stiffness import DISTANCES, pairwise_distance

KINDS = ("sign", "cosine")


@dataclass(frozen=True)
class StiffnessSummary:
    """Summary of one pair group (all tensors on the CPU; means are Python floats, NaN when there is no pair).

    Attributes:
        self_pairs: True for a set with itself (``targets_cols`` was None): the diagonal was left out everywhere.
        num_pairs, num_same_class_pairs, num_different_class_pairs: ordered pairs counted in each mean (the class
            counts are 0 when the class split is absent).
        sign_mean, cosine_mean: mean over all pairs (NaN when a pair is NaN, so a diverged model shows).
        same_class_sign, same_class_cosine, different_class_sign, different_class_cosine: means over the pairs
            whose two examples share / do not share a class; NaN without such pairs or without a class split.
        class_sign, class_cosine: ``[C, C]`` class-by-class means (:func:`class_stiffness`), NaN for empty cells;
            None without a class split.
        superclass_sign, superclass_cosine: ``[K, K]`` the same over super-classes (with ``class_groups``), else None.
        bin_edges: ``[B + 1]`` float64 distance bin edges, as :func:`stiffness_by_distance` chooses them.
        distance_sign, distance_cosine: ``[B]`` float64 mean stiffness per bin (NaN in empty bins).
        distance_count: ``[B]`` int64 number of finite pairs in each bin of the sign curve.
        critical_length: distance at which the binned sign stiffness reaches zero (by ``critical_length_method``),
            NaN when it does not.
        critical_length_method: ``"first_crossing"`` or ``"linear_fit"``.
        same_class_critical_length: the critical length of the same-class pairs' sign curve (Fort et al. read the
            length scale within a class), with ``same_class_critical_length=True`` and a class split; else NaN.
        class_splits_skipped: None when the class splits were computed; otherwise why they are absent (e.g. the
            targets are not integer class indices).
    """

    self_pairs: bool
    num_pairs: int
    num_same_class_pairs: int
    num_different_class_pairs: int
    sign_mean: float
    cosine_mean: float
    same_class_sign: float
    same_class_cosine: float
    different_class_sign: float
    different_class_cosine: float
    class_sign: Tensor | None
    class_cosine: Tensor | None
    superclass_sign: Tensor | None
    superclass_cosine: Tensor | None
    bin_edges: Tensor
    distance_sign: Tensor
    distance_cosine: Tensor
    distance_count: Tensor
    critical_length: float
    critical_length_method: str
    class_splits_skipped: str | None = field(default=None)
    same_class_critical_length: float = field(default=math.nan)

    def arrays(self) -> dict[str, Any]:
        """The fields under the names of the stiffness artifact (``class_sign``, ``sign_mean``, ``bin_edges``...),
        leaving out those that are None."""
        names = (
            "class_sign",
            "class_cosine",
            "superclass_sign",
            "superclass_cosine",
            "sign_mean",
            "cosine_mean",
            "same_class_sign",
            "same_class_cosine",
            "different_class_sign",
            "different_class_cosine",
            "bin_edges",
            "distance_sign",
            "distance_cosine",
            "distance_count",
            "critical_length",
        )
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


def _class_groups(class_groups: object, num_classes: int) -> Tensor:
    groups = check_class_groups(class_groups)
    if len(groups) < num_classes:
        raise ValueError(f"`class_groups` expected an entry for each of {num_classes} classes, got {len(groups)}")
    return torch.tensor(groups, dtype=torch.long)


def _why_not_classes(targets: Tensor) -> str | None:
    if targets.dim() != 1:
        return f"targets are not class indices [N] (shape {tuple(targets.shape)})"
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        return f"targets are not integer class indices (dtype {targets.dtype})"
    return None


def _check_set(matrix_dim: int, targets: object, inputs: object, t_name: str, x_name: str) -> None:
    if not isinstance(targets, Tensor):
        raise TypeError(f"`{t_name}` expected a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() < 1 or targets.shape[0] != matrix_dim:
        raise ValueError(f"`{t_name}` expected {matrix_dim} entries to match `sign`, got shape {tuple(targets.shape)}")
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`{x_name}` expected a torch.Tensor [N, *input_shape], got {type(inputs).__name__}")
    if inputs.dim() < 1 or inputs.shape[0] != matrix_dim:
        raise ValueError(f"`{x_name}` expected {matrix_dim} examples to match `sign`, got shape {tuple(inputs.shape)}")


def stiffness_summary(
    sign: Tensor,
    cosine: Tensor,
    targets_rows: Tensor,
    targets_cols: Tensor | None = None,
    *,
    inputs_rows: Tensor,
    inputs_cols: Tensor | None = None,
    num_classes: int | None = None,
    class_groups: Sequence[int] | Mapping[int, int] | Tensor | None = None,
    num_distance_bins: int = 20,
    distance: Literal["cosine", "euclidean"] = "cosine",
    critical_length_method: Method = "linear_fit",
    same_class_critical_length: bool = False,
    distances: Tensor | None = None,
) -> StiffnessSummary:
    """Means, class splits, class matrices and stiffness by distance of one pair group.

    Args:
        sign, cosine: ``[N, M]`` sign and cosine stiffness (e.g. :attr:`Stiffness.sign`, :attr:`Stiffness.cosine`,
            or slices of them); NaN entries (a diverged model) make the means NaN and are left out of the curve.
        targets_rows: ``[N, ...]`` targets of the row examples.
        targets_cols: ``[M, ...]`` targets of the columns; None when the columns are the rows' set (the matrices are
            square and pairs of an example with itself are left out).
        inputs_rows, inputs_cols: ``[N, *input_shape]`` / ``[M, *input_shape]`` the examples, for the distances
            (``inputs_cols`` None = ``inputs_rows``; it must be None exactly when ``targets_cols`` is).
        num_classes: ``C`` for the class matrices; default the largest target + 1.
        class_groups: fine class -> super-class index (a sequence with one entry per class, a tensor, or a mapping
            with keys ``0..C-1``); adds the super-class matrices.
        num_distance_bins, distance: as in :func:`~lightning_sensitivity.functional.stiffness_by_distance`.
        critical_length_method: ``"linear_fit"`` (default) or ``"first_crossing"``, see
            :func:`~lightning_sensitivity.functional.critical_length`; applied to the sign curve with its counts.
        same_class_critical_length: also compute the critical length of the sign curve of same-class pairs only
            (:attr:`StiffnessSummary.same_class_critical_length`; its bins span that curve's own distance range).
        distances: ``[N, M]`` the input distances :func:`~lightning_sensitivity.functional.pairwise_distance`
            ``(inputs_rows, inputs_cols, distance)`` when the caller has them (e.g. a slice of one joint matrix for
            several pair groups); default: computed here, once for both kinds and the same-class curve (cosine
            distances in float32, the pairs near a bin edge in float64: the bins are the float64 ones).

    When the targets are not integer class indices ``[N]`` (one-hot / multi-hot or regression targets), only the
    overall means, the distance curves and the critical length are computed and
    :attr:`StiffnessSummary.class_splits_skipped` says why.

    Returns:
        :class:`StiffnessSummary`.

    Raises:
        TypeError / ValueError: a bad argument, naming it (shapes that do not match, a class index outside
            ``[0, num_classes)``, ``class_groups`` too short, an unknown ``distance`` or method).

    Example:
        >>> s = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
        >>> out = stiffness_summary(s, s, torch.tensor([0, 0, 1]), inputs_rows=torch.eye(3))
        >>> out.sign_mean, out.same_class_sign, out.different_class_sign
        (-0.3333333333333333, 1.0, -1.0)
    """
    for name, value in (("sign", sign), ("cosine", cosine)):
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` expected a torch.Tensor [N, M], got {type(value).__name__}")
        if value.dim() != 2:
            raise ValueError(f"`{name}` expected a 2-D tensor [N, M], got shape {tuple(value.shape)}")
    if cosine.shape != sign.shape:
        raise ValueError(f"`cosine` expected shape {tuple(sign.shape)} like `sign`, got {tuple(cosine.shape)}")
    if distance not in DISTANCES:
        raise ValueError(f"`distance` expected one of {DISTANCES}, got {distance!r}")
    check_choice(critical_length_method, "critical_length_method", METHODS)
    check_int(num_distance_bins, "num_distance_bins", minimum=1)
    check_int(num_classes, "num_classes", minimum=1, allow_none=True)
    n, m = sign.shape
    if n == 0 or m == 0:
        raise ValueError(f"`sign` expected at least one row and one column, got shape {(n, m)}")
    self_pairs = targets_cols is None
    if (inputs_cols is None) != self_pairs:
        raise ValueError(
            "`inputs_cols` expected to be None exactly when `targets_cols` is, got "
            f"inputs_cols={'None' if inputs_cols is None else 'a tensor'} and "
            f"targets_cols={'None' if targets_cols is None else 'a tensor'}"
        )
    if self_pairs and n != m:
        raise ValueError(f"`sign` expected to be square when `targets_cols` is None, got shape {(n, m)}")
    _check_set(n, targets_rows, inputs_rows, "targets_rows", "inputs_rows")
    if not self_pairs:
        _check_set(m, targets_cols, inputs_cols, "targets_cols", "inputs_cols")

    # Both kinds in one float64 [2, N, M] tensor: every sum below is one reduction or product for the two.
    values = torch.empty((2, n, m), dtype=torch.float64)
    values[0].copy_(sign.detach())
    values[1].copy_(cosine.detach())
    x_rows = inputs_rows.detach().cpu()
    x_cols = None if self_pairs else inputs_cols.detach().cpu()
    dist = index = None
    if distances is None and distance == "cosine":
        index = _cosine_bin_index(x_rows, x_cols, num_distance_bins)  # None where it cannot be exact
    if index is not None:
        pass
    elif distances is None:
        dist = pairwise_distance(x_rows, x_cols, distance)
    elif not isinstance(distances, Tensor) or tuple(distances.shape) != (n, m):
        shape = tuple(distances.shape) if isinstance(distances, Tensor) else type(distances).__name__
        raise ValueError(f"`distances` expected a tensor of shape {(n, m)} like `sign`, got {shape}")
    else:
        dist = distances.detach().to(torch.float64).cpu()
    num_pairs = n * m - (n if self_pairs else 0)

    y_rows = targets_rows.detach().cpu()
    y_cols = y_rows if self_pairs else targets_cols.detach().cpu()
    reason = _why_not_classes(y_rows) or (None if self_pairs else _why_not_classes(y_cols))
    classes = reason is None
    coarse = None
    if classes:
        y_all = y_rows if self_pairs else torch.cat([y_rows, y_cols])
        if num_classes is None:
            num_classes = int(y_all.max()) + 1
        for name, y in (("targets_rows", y_rows), ("targets_cols", y_cols)):
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise ValueError(
                    f"`{name}` expected class indices in [0, {num_classes}), got values in "
                    f"[{int(y.min())}, {int(y.max())}]"
                )
        if class_groups is not None:
            coarse = _class_groups(class_groups, num_classes)
    elif class_groups is not None:
        _class_groups(class_groups, 1)  # still reject a malformed argument

    # The pairs' finite entries: the curves' masks (the diagonal of a set with itself left out, as a pair).
    finite = values.isfinite()
    all_finite = finite.flatten(1).all(dim=1)  # [2], diagonal included (as class_stiffness weighs it 0 * NaN)
    if self_pairs:
        finite.diagonal(dim1=1, dim2=2).fill_(False)
        offdiagonal = values.clone()
        offdiagonal.diagonal(dim1=1, dim2=2).zero_()  # left out of the means even where it is NaN
        pairs_finite = finite.flatten(1).sum(dim=1) == num_pairs
    else:
        offdiagonal, pairs_finite = values, all_finite
    total = offdiagonal.sum(dim=(1, 2))
    out: dict[str, Any] = {}
    num_same = 0
    if classes:
        # Class sums as one-hot products rows^T V cols ([2, C, C]); counts from the class sizes.
        rows = torch.nn.functional.one_hot(y_rows.long(), num_classes).to(torch.float64)
        cols = rows if self_pairs else torch.nn.functional.one_hot(y_cols.long(), num_classes).to(torch.float64)
        n_rows, n_cols = rows.sum(0), cols.sum(0)
        counts = n_rows[:, None] * n_cols[None, :]
        if self_pairs:
            counts = counts - torch.diag(n_rows)
        totals = rows.T @ offdiagonal @ cols
        num_same = int((n_rows * n_cols).sum()) - (n if self_pairs else 0)
        # A non-finite pair makes the class sums NaN as a product through it would (0 * NaN), made explicit.
        nan = torch.tensor(math.nan, dtype=torch.float64)
        same_total = torch.where(pairs_finite, totals.diagonal(dim1=1, dim2=2).sum(-1), nan)
        cells = torch.where(all_finite[:, None, None], totals, nan)
        class_means = _cells(cells, counts)
        superclass = None
        if coarse is not None:
            group = torch.nn.functional.one_hot(coarse[:num_classes], int(coarse.max()) + 1).to(torch.float64)
            superclass = _cells(group.T @ cells @ group, group.T @ counts @ group)
    for k, kind in enumerate(KINDS):
        out[f"{kind}_mean"] = _ratio(total[k], num_pairs)
        if not classes:
            out[f"same_class_{kind}"] = out[f"different_class_{kind}"] = math.nan
            out[f"class_{kind}"] = out[f"superclass_{kind}"] = None
            continue
        out[f"same_class_{kind}"] = _ratio(same_total[k], num_same)
        out[f"different_class_{kind}"] = _ratio(total[k] - same_total[k], num_pairs - num_same)
        out[f"class_{kind}"] = class_means[k]
        out[f"superclass_{kind}"] = None if superclass is None else superclass[k]

    # The curves: each pair's bin found once per distinct set of edges, all curves' sums in one scatter.
    curves = [(values[0], finite[0]), (values[1], finite[1])]
    want_same = same_class_critical_length and classes and num_same > 0
    if want_same:
        same = y_rows[:, None] == y_cols[None, :]
        curves.append((values[0], finite[0] & same))
    binned = _binned(curves, dist, num_distance_bins, distance, index)
    out["bin_edges"] = binned[1][0]
    out["distance_sign"], out["distance_cosine"] = binned[0][1], binned[1][1]
    out["distance_count"] = binned[0][2]
    centers = (out["bin_edges"][1:] + out["bin_edges"][:-1]) / 2
    length = critical_length(centers, out["distance_sign"], out["distance_count"], method=critical_length_method)
    same_length = math.nan
    if want_same:
        s_edges, s_mean, s_count = binned[2]
        s_centers = (s_edges[1:] + s_edges[:-1]) / 2
        same_length = critical_length(s_centers, s_mean, s_count, method=critical_length_method)
    return StiffnessSummary(
        same_class_critical_length=same_length,
        self_pairs=self_pairs,
        num_pairs=num_pairs,
        num_same_class_pairs=num_same if classes else 0,
        num_different_class_pairs=num_pairs - num_same if classes else 0,
        critical_length=length,
        critical_length_method=critical_length_method,
        class_splits_skipped=reason,
        **out,
    )


def _cells(totals: Tensor, counts: Tensor) -> Tensor:
    return torch.where(counts > 0, totals / counts.clamp_min(1), torch.full_like(totals, math.nan))


def _binned(
    curves: list[tuple[Tensor, Tensor]], dist: Tensor | None, num_bins: int, distance: str, index: Tensor | None = None
) -> list[tuple]:
    """``[(edges, mean, count)]`` of each ``(values [N, M], mask [N, M])`` binned by ``dist``, as
    :func:`~lightning_sensitivity.functional.binned_by_distance` with the pairs ``mask`` (finite values): the bin
    index of each pair is computed once per distinct upper edge and the curves sharing it are summed in one
    scatter. ``index``: the cosine distance bins already known (:func:`_cosine_bin_index`; ``dist`` unused)."""
    uppers = []
    for _, mask in curves:
        if distance == "cosine":
            uppers.append(2.0)
        else:
            top = float(dist.masked_fill(~mask, -math.inf).max()) if dist.numel() else -math.inf
            uppers.append(top if top != -math.inf else 1.0)  # no pair: the functional's [0, 1]
    out: list = [None] * len(curves)
    keys = [u if u == u else "nan" for u in uppers]  # NaN (a NaN distance) equals itself here
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        upper = uppers[members[0]]
        edges = torch.linspace(0.0, upper if upper > 0 else 1.0, num_bins + 1, dtype=torch.float64)
        bins = (index if index is not None else _bin_index(dist, edges, num_bins)).reshape(1, -1)
        # Rows: each member's masked values, then each member's mask as 0 / 1 (the counts, exact below 2^53).
        weights = torch.stack(
            [torch.where(curves[i][1], curves[i][0], 0.0).reshape(-1) for i in members]
            + [curves[i][1].reshape(-1).to(torch.float64) for i in members]
        )
        sums = torch.zeros(len(weights), num_bins, dtype=torch.float64).scatter_add_(
            1, bins.expand_as(weights), weights
        )
        for j, i in enumerate(members):
            t, c = sums[j], sums[len(members) + j].long()
            out[i] = (edges, torch.where(c > 0, t / c.clamp_min(1), torch.full_like(t, math.nan)), c)
    return out


# float32 rounding unit; the fast cosine bins below hold to the float64 ones where this bound is small
_U32 = 2.0**-24
_MAX_MARGIN = 1e-3
#: Elements of each float64 operand gathered at once when the pairs near a bin edge are recomputed.
_RECOMPUTE = 2**18
#: Recomputing a near pair from its two rows costs ~200x its share of the float64 product (measured on 512 CIFAR
#: images): beyond one pair in this many, the float64 matrix is cheaper and the caller takes it.
_RECOMPUTE_SHARE = 256


def _cosine_bin_index(x_rows: Tensor, x_cols: Tensor | None, num_bins: int) -> Tensor | None:
    """The cosine-distance bin of every pair (edges ``linspace(0, 2, num_bins + 1)``), equal to binning the float64
    :func:`~lightning_sensitivity.functional.pairwise_distance`, at the cost of a float32 product: the distances
    are computed in float32, and the pairs within a rigorous float32 error bound of an inner edge
    (``(3 D + 16) u``, ``D`` features, ``u = 2^-24``) are recomputed in float64 from their two examples. None
    (the caller takes the float64 matrix) where that would not be exact or not cheaper: non-float inputs, a bound
    above 1e-3 (very many features), float32 matmul precision lowered, row norms outside ``[1e-6, 1e6]`` (near
    ``F.normalize``'s eps, or float32 overflow), or over 1 pair in ``_RECOMPUTE_SHARE`` near an edge."""
    a = x_rows.reshape(x_rows.shape[0], -1)
    b = a if x_cols is None else x_cols.reshape(x_cols.shape[0], -1)
    features = a.shape[1]
    margin = (3 * features + 16) * _U32
    if (
        a.shape[1] != b.shape[1]
        or not (a.is_floating_point() and b.is_floating_point())
        or a.dtype not in (torch.float32, torch.float64)
        or b.dtype not in (torch.float32, torch.float64)
        or margin > _MAX_MARGIN
        or torch.get_float32_matmul_precision() != "highest"
    ):
        return None
    a32, b32 = a.float(), None if x_cols is None else b.float()
    norm_a = a32.norm(dim=1)
    norm_b = norm_a if b32 is None else b32.norm(dim=1)
    if not bool(((norm_a >= 1e-6) & (norm_a <= 1e6)).all() and ((norm_b >= 1e-6) & (norm_b <= 1e6)).all()):
        return None
    a_n = a32 / norm_a[:, None]
    b_n = a_n if b32 is None else b32 / norm_b[:, None]
    d = (1.0 - a_n @ b_n.T).clamp_(0.0, 2.0).double()
    edges = torch.linspace(0.0, 2.0, num_bins + 1, dtype=torch.float64)
    index = _bin_index(d, edges, num_bins)
    if num_bins == 1:
        return index
    # Distance to the nearest inner edge (edges 0 and 2 are the clamp's: a pair near them keeps its end bin).
    pos = d * (num_bins / 2.0)
    nearest = pos.round().clamp_(1, num_bins - 1)
    near = (pos - nearest).abs_() <= (margin + 1e-12) * (num_bins / 2.0)
    rows, cols = near.nonzero(as_tuple=True)
    if rows.numel() * _RECOMPUTE_SHARE > near.numel():
        return None  # recomputing each near pair from its two rows would cost more than the float64 product
    if rows.numel():
        # float64 row norms once, then the near pairs' products in chunks of at most _RECOMPUTE elements per
        # operand: memory stays bounded however many pairs are near an edge (gathering two whole rows per pair at
        # once took ~50 KB a pair for CIFAR images).
        step = max(1, _RECOMPUTE // features)
        norms_a = _norms64(a, step)
        norms_b = norms_a if x_cols is None else _norms64(b, step)
        dots = torch.cat([
            (a.index_select(0, r).double() * b.index_select(0, c).double()).sum(dim=1)
            for r, c in zip(rows.split(step), cols.split(step), strict=True)
        ])  # fmt: skip
        exact = 1.0 - dots / (norms_a.index_select(0, rows) * norms_b.index_select(0, cols))
        index[rows, cols] = _bin_index(exact.clamp_(0.0, 2.0), edges, num_bins)
    return index


def _norms64(x: Tensor, step: int) -> Tensor:
    """float64 norms of the rows of ``x`` ``[N, D]``, ``step`` rows at a time (no float64 copy of all of ``x``)."""
    return torch.cat([part.double().norm(dim=1) for part in x.split(step)])


def _bin_index(dist: Tensor, edges: Tensor, num_bins: int) -> Tensor:
    """``(bucketize(dist, edges, right=True) - 1).clamp(0, num_bins - 1)`` for equal-width ``edges`` from 0:
    the bin from one multiplication, then corrected against the edges themselves (so the result is bucketize's to
    the last bit; NaN goes to the last bin as there)."""
    upper = float(edges[-1])
    if not math.isfinite(upper):
        return (torch.bucketize(dist, edges, right=True) - 1).clamp(0, num_bins - 1)
    d = dist.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)
    guess = (d * (num_bins / upper)).floor_().clamp_(0, num_bins - 1).long()
    flat = guess.reshape(-1)  # index_select: a gather of a few edges several times faster than edges[guess]
    low, high = edges.index_select(0, flat).view_as(d), edges.index_select(0, flat + 1).view_as(d)
    index = guess - (d < low).long() + (d >= high).long()
    return index.clamp_(0, num_bins - 1)


def pair_means(
    matrix: Tensor, targets_rows: Tensor | None = None, targets_cols: Tensor | None = None, *, self_pairs: bool
) -> dict[str, float]:
    """Mean of a pairwise matrix over all pairs and, for integer class targets, over same- and different-class
    pairs (self pairs left out when ``self_pairs``): ``{"mean", "same_class", "different_class"}`` (NaN without
    such pairs; a NaN entry makes its means NaN). The light part of :func:`stiffness_summary`, e.g. for every layer
    of a per-layer stiffness: sums through class indicator products, no pair masks.

    Example:
        >>> pair_means(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), torch.tensor([0, 1]), self_pairs=True)
        {'mean': 0.5, 'same_class': nan, 'different_class': 0.5}
    """
    values = matrix.detach().to(torch.float64)
    n, m = values.shape
    diagonal = values.diagonal().sum() if self_pairs else values.new_zeros(())
    total, count = values.sum() - diagonal, n * m - (n if self_pairs else 0)
    out = {"mean": _ratio(total, count), "same_class": math.nan, "different_class": math.nan}
    y_rows = None if targets_rows is None else targets_rows.detach().to(values.device)
    y_cols = y_rows if targets_cols is None else targets_cols.detach().to(values.device)
    if y_rows is not None and _why_not_classes(y_rows) is None and _why_not_classes(y_cols) is None:
        classes = int(max(y_rows.max(), y_cols.max())) + 1
        rows = torch.nn.functional.one_hot(y_rows.long(), classes).to(values)
        cols = torch.nn.functional.one_hot(y_cols.long(), classes).to(values)
        same_total = (rows.T @ values @ cols).diagonal().sum() - diagonal
        same_count = int((rows.sum(0) * cols.sum(0)).sum()) - (n if self_pairs else 0)
        out["same_class"] = _ratio(same_total, same_count)
        out["different_class"] = _ratio(total - same_total, count - same_count)
    return out


def _ratio(total: Tensor, count: int) -> float:
    return float(total) / count if count > 0 else math.nan


# ---------------------------------------------------------------- the declaration (keys, arrays, charts)
_S = keys.prefix(keys.STIFFNESS)
_INFLUENCE = "only with `influence=True`"
#: What ``StiffnessMonitor`` logs and writes (see :class:`lightning_sensitivity.keys.Quantity`): per pair group, and
#: the Gram statistics and the critical-length interval for the same-set groups.
QUANTITY = keys.Quantity(
    name=keys.STIFFNESS,
    monitor="StiffnessMonitor",
    metrics=(
        f"{_S}/{{group}}/{{kind}}",
        f"{_S}/{{group}}/same_class_{{kind}}",
        f"{_S}/{{group}}/different_class_{{kind}}",
        f"{_S}/{{group}}/critical_length",
        f"{_S}/{{same_group}}/critical_length_low",
        f"{_S}/{{same_group}}/critical_length_high",
        *(f"{_S}/{{same_group}}/{stat}" for stat in keys.GRAM_STATS),
        f"{_S}/{{group}}/layer/{{layer}}/{{kind}}",
        f"{_S}/{{group}}/same_class_critical_length",
        *(f"{_S}/train_val/{stat}" for stat in keys.INFLUENCE_STATS),
        keys.STIFFNESS_SKETCH_DIM,
    ),
    conditional={
        f"{_S}/{{group}}/same_class_{{kind}}": "needs a pair of distinct examples of one class",
        f"{_S}/{{group}}/different_class_{{kind}}": "needs two classes in the group",
        f"{_S}/{{group}}/critical_length": "only when the binned sign stiffness crosses zero",
        **{
            f"{_S}/{{same_group}}/critical_length_{end}": "only with `critical_length_bootstrap=` > 0 and a finite "
            "bootstrap interval"
            for end in ("low", "high")
        },
        f"{_S}/{{same_group}}/label_alignment": "needs integer class targets and at least two classes",
        f"{_S}/{{group}}/layer/{{layer}}/{{kind}}": "only with `per_layer=True`",
        f"{_S}/{{group}}/same_class_critical_length": "only with `critical_length_same_class=True` and a zero crossing",
        f"{_S}/train_val/self_influence_mean": f"{_INFLUENCE}, during fit, after the first optimizer step",
        **{
            f"{_S}/train_val/{stat}": f"{_INFLUENCE} and `flipped_labels=` flagging some but not all training "
            "probe examples"
            for stat in keys.INFLUENCE_STATS[1:]
        },
        keys.STIFFNESS_SKETCH_DIM: "only with `sketch_dim=`; the stiffness values of that step are then estimates",
    },
    arrays=keys.STIFFNESS_GROUP_ARRAYS + keys.STIFFNESS_SAME_SET_ARRAYS + keys.INFLUENCE_ARRAYS,
    conditional_arrays={
        "superclass_sign": "only with `class_groups=`",
        "superclass_cosine": "only with `class_groups=`",
        **{name: "same-set groups only; some need an option or the data" for name in keys.STIFFNESS_SAME_SET_ARRAYS},
        **{name: _INFLUENCE for name in keys.INFLUENCE_ARRAYS},
    },
    array_groups=keys.GROUPS,
    histograms=(f"{_S}/train_val/self_influence",),
    images=(
        f"{_S}/{{group}}/class_{{kind}}_matrix",
        f"{_S}/{{group}}/superclass_{{kind}}_matrix",
        f"{_S}/{{group}}/by_distance",
        f"{_S}/{{group}}/per_layer_cosine",
        f"{_S}/train_val/influence_examples",
    ),
    category="Stiffness",
    charts=(
        keys.Chart(
            "{group}: {kind} stiffness, same vs different class",
            (
                f"{_S}/{{group}}/same_class_{{kind}}",
                f"{_S}/{{group}}/different_class_{{kind}}",
                f"{_S}/{{group}}/{{kind}}",
            ),
            each=("group", "kind"),
        ),  # fmt: skip
        # every layer's series of a group measured per layer (the layer names are the model's, not known here)
        keys.Chart(
            "{group}: cosine stiffness per layer",
            (f"{_S}/{{group}}/layer/{{layer}}/cosine",),
            each=("group",),
            source="stiffness/layer",
        ),  # fmt: skip
        keys.Chart("Critical length (all groups)", (f"{_S}/{{group}}/critical_length",)),
    ),
    full_options={"num_distance_bins": 8, "num_samples": 40},
    report_arrays={f"{_S}/train_val/self_influence": keys.stiffness_array("train_val", "self_influence")},
    # its own figures draw the declared charts per pair group, with the class matrices and stiffness by distance
    report_figures=("stiffness", "histograms"),
)
