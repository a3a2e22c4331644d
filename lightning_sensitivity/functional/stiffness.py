"""Stiffness (Fort et al. 2019, "Stiffness: a new perspective on generalization in neural networks").

For per-example loss gradients ``g_i`` (over all trainable parameters, of each example's own loss), sign stiffness
is ``sign(g_i . g_j)`` and cosine stiffness ``cos(g_i, g_j)``; their means over pairs, per pair of classes, and as
a function of the input distance between the two examples describe how a gradient step on one example moves the
loss of another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.functional._chunks import Progress
from lightning_sensitivity.functional._inputs import ModelKwargs
from lightning_sensitivity.functional.gram import GramMethod, LossFn, build_gram_call, gram_and_norms

DISTANCES = ("cosine", "euclidean")


def loss_gradient_gram(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    inputs2: Tensor | None = None,
    targets2: Tensor | None = None,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    method: GramMethod = "auto",
    model_kwargs: ModelKwargs | None = None,
    model_kwargs2: ModelKwargs | None = None,
    sketch_dim: int | None = None,
    sketch_seed: int = 0,
) -> Tensor:
    """Dot products ``g_i . g_j`` of per-example loss gradients over all trainable parameters.

    Args:
        model: maps ``[N, *input_shape]`` to outputs ``[N, C]`` (logits, or ``C`` regression values); evaluated in
            eval mode and left as it was.
        inputs: the first set ``[N, *input_shape]``, floating-point or integer (token ids ``[N, T]`` for a model
            that embeds them: nothing is differentiated with respect to the inputs).
        targets: ``[N, ...]`` of any dtype, whatever ``loss_fn`` expects: class indices ``[N]``, multi-hot labels
            ``[N, K]`` (``F.binary_cross_entropy_with_logits``), regression values ``[N]`` or ``[N, K]``.
        inputs2, targets2: the second set (``[M, ...]``, ``[M, ...]``); the first set again when None.
        loss_fn: a callable ``loss_fn(logits, targets)`` (a function or an ``nn.Module`` instance, not a class)
            evaluated on each example as a batch of one: ``logits`` ``[1, C]`` (the model's output for that example
            alone) and ``targets`` ``[1, ...]`` (its own ``targets[i:i + 1]``). It returns a scalar (the mean
            reduction, PyTorch's default) or per-example losses, which are summed -- for a batch of one both are
            the example's own loss. For ``F.cross_entropy``/``F.nll_loss`` with integer targets ``[N]`` the
            layerwise engine calls it once per chunk instead, with ``logits`` ``[n, C]``, ``targets`` ``[n]`` and
            ``reduction="none"`` (the same numbers).
        chunk_size: examples per forward and backward pass. Each example's gradient representation is computed
            once and kept -- per parameter the smaller or cheaper of its explicit gradient (``k`` numbers) and its
            factors (``T (p + q)``: layer inputs and output gradients), as the unchunked call chooses; ``P``
            numbers with ``method="per_example"``; ``sketch_dim`` numbers when sketched -- and the Gram is formed
            from them, so chunking costs no extra work. Peak memory: ``N x`` that representation ``+`` one chunk's
            forward and backward ``+ N x M`` (``docs/performance.md``).
        sketch_dim: estimate the Gram from ``k = sketch_dim`` random projections of each example's gradient
            instead (``G ~ S S^T``, ``S [N, k]``): unbiased, relative error about ``1 / sqrt(k)`` of
            ``|g_i| |g_j|``, ``O(N k)`` memory. Layers kept as factors are projected through their factors
            (row-wise Kronecker sign maps), so their gradients are never formed. None (default): exact.
        sketch_seed: seed of the sketch's private generator (the global RNG is never used); the same seed gives
            the same maps on every device and process.
        progress: optional ``progress(done, total)`` called after each block.
        method: ``"layerwise"`` runs one batched forward and backward pass per block and forms the Gram per layer
            from layer inputs and output gradients (``(A A^T) * (D D^T)`` for a linear layer; for a convolution the
            cheaper of that identity summed over positions and ``unfold`` gradients), never materialising
            full per-example gradients; it recognises ``F.linear``, ``F.conv1d``/``F.conv2d``, eval-mode
            ``F.batch_norm``, ``F.layer_norm`` and ``F.group_norm`` (so ``nn.Linear``, ``nn.Conv1d``/``2d``,
            the norm layers, ``x @ W``, embeddings, attention, tensors derived from parameters alone) and checks
            itself against explicit gradients of two examples; a parameter it does not recognise gets explicit
            per-example gradients of its own. ``"per_example"`` materialises per-example gradients with
            ``vmap(grad)``, else a per-example autograd loop, and works for any model torch can differentiate.
            ``"auto"`` (default) uses ``"layerwise"`` and falls back to ``"per_example"`` for models whose batched
            pass cannot be used (examples mixed, batch statistics), remembered per model structure; which engine
            ran is ``gram_engine_plan(model)``.
            A model sharded by FSDP2 (``fully_shard``) is run as it is, every process in step, and only
            ``"layerwise"`` applies: it names the whole parameters FSDP gathers for each forward; FSDP1's flat
            parameters are refused.
        model_kwargs: per-example keyword inputs of the model for the first set, e.g.
            ``{"attention_mask": mask [N, T]}``: each value has ``N`` entries along dimension 0, is chunked with
            ``inputs`` and passed as ``model(x[piece], **{k: v[piece]})`` (``v[i:i + 1]`` with each example's
            explicit gradient). Floating-point values are cast to the model's dtype.
        model_kwargs2: the same for the second set (``[M, ...]``); required when ``model_kwargs`` and ``inputs2``
            are given, refused without ``inputs2``.

    Returns:
        ``[N, M]`` Gram matrix in the model's dtype.

    Raises:
        ValueError: inputs of the wrong rank, targets or ``model_kwargs`` values whose first dimension is not
            ``N``, a model output that is not ``[N, C]``, only one of ``inputs2``/``targets2`` given, a model
            without trainable parameters, an unknown ``method``, or ``method="layerwise"`` for a model it does not
            cover.
        TypeError: arguments of the wrong type, including ``loss_fn=nn.CrossEntropyLoss`` (the class).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> loss_gradient_gram(model, torch.randn(5, 4), torch.randint(0, 3, (5,))).shape
        torch.Size([5, 5])
    """
    call = build_gram_call(
        model, inputs, targets, inputs2, targets2, loss_fn=loss_fn, chunk_size=chunk_size, progress=progress,
        method=method, model_kwargs=model_kwargs, model_kwargs2=model_kwargs2, sketch_dim=sketch_dim,
        sketch_seed=sketch_seed,
    )  # fmt: skip
    return gram_and_norms(call)[0]


@dataclass(frozen=True)
class Stiffness:
    """Stiffness between two sets of examples.

    Attributes:
        sign: ``[N, M]`` ``sign(g_i . g_j)`` (0 where the product is exactly 0).
        cosine: ``[N, M]`` ``cos(g_i, g_j)`` (0 where a gradient is exactly zero).
        gram: ``[N, M]`` the dot products themselves.
        sign_mean, cosine_mean: 0-dim means over pairs, leaving out pairs of an example with itself when
            ``self_pairs``.
        self_pairs: True when both sets are the same set (``inputs2`` was None), so the diagonal holds self pairs.
    """

    sign: Tensor
    cosine: Tensor
    gram: Tensor
    sign_mean: Tensor
    cosine_mean: Tensor
    self_pairs: bool


def stiffness(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    inputs2: Tensor | None = None,
    targets2: Tensor | None = None,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    method: GramMethod = "auto",
    model_kwargs: ModelKwargs | None = None,
    model_kwargs2: ModelKwargs | None = None,
    sketch_dim: int | None = None,
    sketch_seed: int = 0,
) -> Stiffness:
    """Sign and cosine stiffness between per-example loss gradients (Fort et al. 2019).

    Arguments as in :func:`loss_gradient_gram`. With one set, the means leave out the diagonal; with one example
    and no second set they are NaN (there is no pair). With ``sketch_dim`` every field is an estimate from the
    sketched Gram, whose diagonal gives the norms (so cosines stay within [-1, 1]).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> s = stiffness(model, torch.randn(6, 4), torch.randint(0, 3, (6,)))
        >>> s.sign.shape, float(s.sign_mean) <= 1.0
        (torch.Size([6, 6]), True)
    """
    call = build_gram_call(
        model, inputs, targets, inputs2, targets2, loss_fn=loss_fn, chunk_size=chunk_size, progress=progress,
        method=method, model_kwargs=model_kwargs, model_kwargs2=model_kwargs2, sketch_dim=sketch_dim,
        sketch_seed=sketch_seed,
    )  # fmt: skip
    gram, sq1, sq2 = gram_and_norms(call)
    return stiffness_from_gram(gram, sq1, sq2, self_pairs=inputs2 is None)


def stiffness_from_gram(
    gram: Tensor, sq1: Tensor | None = None, sq2: Tensor | None = None, *, self_pairs: bool = True
) -> Stiffness:
    """:class:`Stiffness` of a Gram matrix ``G[i, j] = g_i . g_j`` with squared norms ``sq1 = |g_i|^2``,
    ``sq2 = |g_j|^2`` (the diagonal of a square ``gram`` when omitted) -- e.g. one layer's block of
    :func:`~lightning_sensitivity.functional.per_layer_gram`.

    Example:
        >>> s = stiffness_from_gram(torch.tensor([[4.0, -2.0], [-2.0, 9.0]]))
        >>> s.cosine[0, 1].item(), s.sign_mean.item()
        (-0.3333333432674408, -1.0)
    """
    if sq1 is None or sq2 is None:
        if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
            raise ValueError(f"`gram` expected a square matrix when the norms are omitted, got {tuple(gram.shape)}")
        sq1 = sq2 = gram.diagonal()
    norms = sq1.clamp_min(0).sqrt()[:, None] * sq2.clamp_min(0).sqrt()[None, :]
    cosine = torch.where(norms > 0, gram / norms.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(gram))
    sign = torch.sign(gram)
    # torch.sign(nan) is 0 and `nan > 0` is False: without this a diverged model would report a stiffness of 0.
    broken = ~(gram.isfinite() & norms.isfinite())
    sign = sign.masked_fill(broken, float("nan"))
    cosine = cosine.masked_fill(broken, float("nan"))
    return Stiffness(
        sign=sign,
        cosine=cosine,
        gram=gram,
        sign_mean=_pair_mean(sign, self_pairs),
        cosine_mean=_pair_mean(cosine, self_pairs),
        self_pairs=self_pairs,
    )


def _pair_mask(matrix: Tensor, exclude_diagonal: bool) -> Tensor:
    mask = torch.ones(matrix.shape, dtype=torch.bool, device=matrix.device)
    if exclude_diagonal:
        mask.fill_diagonal_(False)
    return mask


def _pair_mean(values: Tensor, self_pairs: bool) -> Tensor:
    """Mean over all entries, the diagonal (an example with itself) left out when ``self_pairs``; NaN without a
    pair. A sum minus the trace rather than a boolean mask: no copy of the ``[N, M]`` matrix."""
    n, m = values.shape
    count = n * m - (n if self_pairs else 0)
    if count == 0:
        return values.new_tensor(float("nan"))
    total = values.sum() - (values.diagonal().sum() if self_pairs else 0)
    return total / count


def _check_matrix(matrix: Tensor) -> None:
    if not isinstance(matrix, Tensor):
        raise TypeError(f"`matrix` expected a torch.Tensor [N, M], got {type(matrix).__name__}")
    if matrix.dim() != 2:
        raise ValueError(f"`matrix` expected a 2-D tensor [N, M], got shape {tuple(matrix.shape)}")


def _check_labels(labels: Tensor, num: int, num_classes: int, name: str) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"`{name}` expected a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != num:
        raise ValueError(f"`{name}` expected shape [{num}] to match `matrix`, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"`{name}` expected an integer tensor, got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"`{name}` expected class indices in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def class_stiffness(
    matrix: Tensor,
    labels: Tensor,
    labels2: Tensor | None = None,
    *,
    num_classes: int,
    exclude_self: bool = True,
) -> Tensor:
    """Class-by-class mean of a pairwise matrix (e.g. :attr:`Stiffness.sign`).

    Cell ``[a, b]`` is the mean of the entries whose row example has class ``a`` and column example class ``b``.

    Args:
        matrix: ``[N, M]`` pairwise values.
        labels: ``[N]`` classes of the rows.
        labels2: ``[M]`` classes of the columns; when None the columns are the rows' set (``matrix`` square).
        num_classes: ``C``.
        exclude_self: with ``labels2=None``, leave out the diagonal (an example paired with itself).

    Returns:
        ``[C, C]`` float tensor, NaN where a cell has no pairs.

    Example:
        >>> class_stiffness(torch.ones(4, 4), torch.tensor([0, 0, 1, 1]), num_classes=2)
        tensor([[1., 1.],
                [1., 1.]])
    """
    _check_matrix(matrix)
    check_int(num_classes, "num_classes", minimum=1)
    _check_labels(labels, matrix.shape[0], num_classes, "labels")
    same = labels2 is None
    if same:
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"`matrix` expected to be square when `labels2` is None, got shape {tuple(matrix.shape)}")
        labels2 = labels
    else:
        _check_labels(labels2, matrix.shape[1], num_classes, "labels2")
    values = matrix.detach().to(torch.float64)
    weights = _pair_mask(values, same and exclude_self).to(torch.float64)
    rows = F.one_hot(labels.long(), num_classes).to(values)
    cols = F.one_hot(labels2.long().to(labels.device), num_classes).to(values)
    totals = rows.T @ (values * weights) @ cols
    counts = rows.T @ weights @ cols
    out = torch.where(counts > 0, totals / counts.clamp_min(1), torch.full_like(totals, float("nan")))
    return out.to(matrix.dtype if matrix.is_floating_point() else torch.float32)


def _flat(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError(f"`{name}` expected a torch.Tensor [N, *input_shape], got {type(x).__name__}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def pairwise_distance(inputs: Tensor, inputs2: Tensor | None = None, distance: str = "cosine") -> Tensor:
    """``[N, M]`` input distances: ``1 - cos(x_i, x_j)`` in ``[0, 2]`` (Fort et al.) or Euclidean."""
    if distance not in DISTANCES:
        raise ValueError(f"`distance` expected one of {DISTANCES}, got {distance!r}")
    a = _flat(inputs, "inputs")
    b = a if inputs2 is None else _flat(inputs2, "inputs2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`inputs2` expected {a.shape[1]} features per example like `inputs`, got {b.shape[1]}")
    if distance == "euclidean":
        return torch.cdist(a, b)
    a_n = F.normalize(a, dim=1)
    b_n = a_n if inputs2 is None else F.normalize(b, dim=1)
    return (1.0 - a_n @ b_n.T).clamp(0.0, 2.0)


def stiffness_by_distance(
    matrix: Tensor,
    inputs: Tensor,
    inputs2: Tensor | None = None,
    *,
    num_bins: int = 20,
    distance: Literal["cosine", "euclidean"] = "cosine",
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean of a pairwise matrix binned by the input distance between the two examples of each pair.

    Args:
        matrix: ``[N, M]`` pairwise values (e.g. sign or cosine stiffness).
        inputs: ``[N, *input_shape]`` examples of the rows.
        inputs2: ``[M, *input_shape]`` examples of the columns; None = ``inputs`` (the diagonal is left out).
        num_bins: equal-width bins; over ``[0, 2]`` for ``"cosine"`` (``1 - cos(x_i, x_j)``, Fort et al.), over
            ``[0, max distance]`` for ``"euclidean"``.
        distance: ``"cosine"`` or ``"euclidean"``.

    Returns:
        ``(bin_edges [num_bins + 1], mean [num_bins], count [num_bins])``: float64 edges and means (NaN in empty
        bins) and the number of (ordered) pairs in each bin.

    Example:
        >>> edges, mean, count = stiffness_by_distance(torch.eye(3), torch.randn(3, 5), num_bins=4)
        >>> edges.shape, mean.shape, int(count.sum())
        (torch.Size([5]), torch.Size([4]), 6)
    """
    _check_matrix(matrix)
    check_int(num_bins, "num_bins", minimum=1)
    dist = pairwise_distance(inputs, inputs2, distance)
    if dist.shape != matrix.shape:
        raise ValueError(f"`matrix` expected shape {tuple(dist.shape)} to match the inputs, got {tuple(matrix.shape)}")
    return binned_by_distance(matrix, dist, self_pairs=inputs2 is None, num_bins=num_bins, distance=distance)


def binned_by_distance(
    matrix: Tensor, dist: Tensor, *, self_pairs: bool, num_bins: int = 20, distance: str = "cosine"
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`stiffness_by_distance` on precomputed distances ``dist`` ``[N, M]`` (:func:`pairwise_distance`), so
    several matrices of one pair group (sign, cosine, a same-class mask) share one distance matrix."""
    values = matrix.detach().to(torch.float64).to(dist.device)
    mask = _pair_mask(values, self_pairs) & values.isfinite()
    upper = 2.0 if distance == "cosine" else float(dist[mask].max()) if mask.any() else 1.0
    edges = torch.linspace(0.0, upper if upper > 0 else 1.0, num_bins + 1, dtype=torch.float64, device=dist.device)
    # Bin b holds edges[b] <= d < edges[b + 1]; the last bin also takes d == edges[-1].
    index = (torch.bucketize(dist[mask], edges, right=True) - 1).clamp(0, num_bins - 1)
    count = torch.bincount(index, minlength=num_bins)
    # index_add_ rather than a weighted bincount, which returns an integer tensor when there is no pair at all.
    total = torch.zeros(num_bins, dtype=torch.float64, device=dist.device).index_add_(0, index, values[mask])
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return edges, mean, count
