"""Layerwise Gram engine: ``g_i . g_j`` from one batched forward and backward pass, without per-example gradients.

For a layer ``out = W a + b`` the per-example gradient is ``g_i(W) = sum_t delta_it a_it^T`` (``t`` runs over the
positions that share the weight: sequence positions of a linear layer, output pixels of a convolution), so

    g_i(W) . g_j(W) = sum_{t, s} (a_it . a_js) (delta_it . delta_js),

which for one position is ``(A A^T) * (D D^T)`` -- ``N^2 (p + q)`` operations instead of ``N p q`` numbers per layer.
``a`` are the layer inputs and ``delta`` the gradients of each example's own loss with respect to the layer output;
both come out of a single batched pass on the *summed* per-example loss because, in eval mode, examples do not
interact. Per call the engine picks the cheaper of that identity and the explicit per-example gradient (e.g.
``unfold`` for a convolution with many output pixels); affine normalisation layers have small explicit gradients.

Which ops are recognised, and what each records, is :mod:`.recognition`; anything else raises
:class:`LayerwiseUnsupported`, and the caller falls back to the generic ``vmap(grad)`` engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from lightning_sensitivity.functional._model import as_function, check_logits, has_sharded_parameters
from lightning_sensitivity.functional.gram.blocks import LossFn
from lightning_sensitivity.functional.gram.gathered import GatheredParameters
from lightning_sensitivity.functional.gram.recognition import Call, Capture, LayerwiseUnsupported

__all__ = ["Features", "LayerwiseUnsupported", "cross", "cross_by_name", "layer_features", "select", "squared_norms"]

# Losses whose batch-of-one value equals their ``reduction="none"`` entry for class-index targets.
_UNREDUCIBLE = (F.cross_entropy, F.nll_loss)


def per_example_losses(loss_fn: LossFn, logits: Tensor, y: Tensor) -> Tensor:
    """``[n]`` losses, each ``loss_fn`` of a batch of one (so a batch-mean and an unreduced loss agree).

    ``loss_fn`` receives ``logits[i:i + 1]`` ``[1, C]`` and ``y[i:i + 1]`` ``[1, ...]`` (any dtype) and its result is
    summed. Only ``F.cross_entropy``/``F.nll_loss`` with integer class indices ``[n]`` take the fast path: one call
    on the chunk with ``reduction="none"``, which gives the same numbers.
    """

    def single(logit: Tensor, target: Tensor) -> Tensor:
        return loss_fn(logit.unsqueeze(0), target.unsqueeze(0)).sum()

    if loss_fn in _UNREDUCIBLE and logits.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
        return loss_fn(logits, y, reduction="none")  # the same numbers, without vmap's overhead
    try:
        return vmap(single)(logits, y)
    except Exception:  # a loss vmap cannot batch (data-dependent control flow, .item()): one call per example
        return torch.stack([single(logits[i], y[i]) for i in range(logits.shape[0])])


@dataclass
class Features:
    """What a chunk contributes to Gram blocks, per trainable parameter: explicit gradients ``flat`` and factor
    pairs ``kron``. Kept apart rather than concatenated: a copy of every per-example gradient costs as much memory
    traffic as their Gram."""

    flat: dict[str, Tensor]  # name -> [n, k], names sorted
    kron: list[tuple[str, Tensor, Tensor]]  # (name, A [n, T, p] or token ids [n, T], D [n, T, q])


def layer_features(
    model: nn.Module,
    trainable: dict[str, Tensor],
    frozen: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    reference_rows: int,
    model_kwargs: dict[str, Tensor] | None = None,
    choices: dict | None = None,
) -> Features:
    """One batched forward and backward pass over a chunk, turned into Gram factors per trainable parameter.

    ``reference_rows`` is the block size the factors will be multiplied at; it decides, identically for every
    chunk, whether a call is kept as factor pairs or as explicit per-example gradients. ``model_kwargs`` are the
    chunk's per-example keyword inputs of the model (``model(x, **model_kwargs)``). ``choices``, one dict shared by
    the chunks of a call, keeps the choices that depend on a chunk's content (an embedding's, on its token counts)
    as the first chunk made them, so that every chunk's features have the same layout.

    Raises:
        LayerwiseUnsupported: the model uses a trainable parameter outside the recognised ops.
    """
    if has_sharded_parameters(model):
        # FSDP2: the model gathers its parameters itself; they are named as each module is entered.
        gathered = GatheredParameters(model, set(trainable))
        capture = Capture({}, x.shape[0], names=gathered.names)
        with gathered, capture:
            logits = check_logits(model(x, **(model_kwargs or {})))
    else:
        capture = Capture(trainable, x.shape[0])
        with capture:
            logits = check_logits(as_function(model)({**frozen, **trainable}, buffers, x, **(model_kwargs or {})))
    calls = capture.calls
    losses = per_example_losses(loss_fn, logits, y)
    if not calls or not losses.requires_grad:
        raise LayerwiseUnsupported("no trainable parameter reaches the loss through a recognised op")
    deltas = torch.autograd.grad(losses.sum(), [c.leaf for c in calls], allow_unused=True)
    n = x.shape[0]
    uses: dict[str, int] = {}
    for call in calls:
        for name in (call.weight, call.bias):
            if name is not None:
                uses[name] = uses.get(name, 0) + 1
    flat: dict[str, Tensor] = {}
    kron: list[tuple[str, Tensor, Tensor]] = []
    for call, delta in zip(calls, deltas, strict=False):
        if call.inputs.shape[0] != n or call.leaf.shape[0] != n:
            # Per-example factors need the example index first; a sequence-first layout would mix them up.
            raise LayerwiseUnsupported(f"a layer sees a batch of shape {tuple(call.inputs.shape)}, not [{n}, ...]")
        delta = torch.zeros_like(call.leaf) if delta is None else delta.detach()
        shared = uses.get(call.weight, 0) > 1 or uses.get(call.bias, 0) > 1
        for name, piece in _pieces(call, delta, n, reference_rows, shared, choices):
            if isinstance(piece, tuple):
                kron.append((name, *piece))
            else:
                flat[name] = flat[name] + piece if name in flat else piece
    return Features({k: flat[k] for k in sorted(flat)}, kron)  # a fixed order, so that row and column chunks line up


def _pieces(call: Call, delta: Tensor, n: int, reference_rows: int, shared: bool, choices: dict | None = None):
    """``(parameter name, [n, k] gradient or (A, D) factor pair)`` for each trainable parameter of a call."""
    if call.kind == "linear":
        a = call.inputs.reshape(n, -1, call.inputs.shape[-1])
        d = delta.reshape(n, -1, delta.shape[-1])
        positions, p, q = a.shape[1], a.shape[2], d.shape[2]
        combined = call.weight is not None and call.bias is not None and not shared
        if combined and _factor_pair_cheaper(reference_rows, positions, p + 1, q):
            # The bias is a weight on a constant input 1: one factor pair covers both, no separate bias Gram.
            a = torch.cat([a, a.new_ones(a.shape[0], a.shape[1], 1)], dim=2)
            yield call.weight, (a, d)
            return
        if call.bias is not None:
            yield call.bias, d.sum(dim=1)
        if call.weight is not None:
            yield call.weight, _weight_piece(a, d, reference_rows, shared)
    elif call.kind == "conv":
        o = call.options
        delta = delta.reshape(call.inputs.shape[0], delta.shape[1], -1, delta.shape[-1])  # 1-D: a height of 1
        d = delta.reshape(n, delta.shape[1], -1)  # [n, q, T]
        if call.bias is not None:
            yield call.bias, d.sum(dim=2)
        if call.weight is not None:
            a, groups = call.inputs, o["groups"]
            q, positions = d.shape[1], d.shape[2]
            p = a.shape[1] // groups * o["kernel"][0] * o["kernel"][1]

            def unfold() -> Tensor:  # [n, p, T]
                return F.unfold(a, o["kernel"], dilation=o["dilation"], padding=o["padding"], stride=o["stride"])

            if groups == 1 and not shared and _factor_pair_cheaper(reference_rows, positions, p, q):
                yield call.weight, (unfold().transpose(1, 2), d.transpose(1, 2))
            elif groups == 1 and positions <= 2 * q:
                # A batched matmul on unfolded inputs: ~3x faster than the grouped convolution below for few output
                # pixels (measured on resnet18's later stages); the unfold buffer is then at most twice the gradients.
                yield call.weight, torch.bmm(d, unfold().transpose(1, 2)).reshape(n, -1)
            else:
                # Per-example weight gradients as the weight gradient of one convolution with the batch folded
                # into the groups: no unfold buffer, and about the cost of the layer's forward pass.
                grads = torch.nn.grad.conv2d_weight(
                    a.reshape(1, -1, *a.shape[2:]),
                    (n * q, a.shape[1] // groups, *o["kernel"]),
                    delta.reshape(1, n * q, *delta.shape[2:]),
                    stride=o["stride"],
                    padding=o["padding"],
                    dilation=o["dilation"],
                    groups=n * groups,
                )
                yield call.weight, grads.reshape(n, -1)
    elif call.kind == "embedding":
        ids = call.inputs.reshape(n, -1)
        d = delta.reshape(n, ids.shape[1], -1)
        if call.options["padding_idx"] is not None:  # the padding row receives no gradient
            d = d * (ids != call.options["padding_idx"]).unsqueeze(2).to(d.dtype)
        vocabulary, (positions, q) = call.options["rows"], d.shape[1:]
        # Token pairs with equal ids (the identity with one-hot inputs) against gradients scattered into [n, V * q].
        # The pairs are enumerated (see ``_equal_id_block``): their number, sum_v count_v^2, sets the cost.
        pairs = (
            float(torch.bincount(ids.flatten(), minlength=vocabulary).double().pow(2).sum()) * (reference_rows / n) ** 2
        )
        identity_cost = min(pairs, (reference_rows * positions) ** 2) * (q + 1)
        explicit_cost = n * positions * q + reference_rows**2 * vocabulary * q
        identity = not shared and identity_cost <= explicit_cost
        if choices is not None:
            identity = choices.setdefault(("embedding", call.weight), identity)
        if identity:
            yield call.weight, (ids, d)
        else:
            grads = d.new_zeros(n, vocabulary, q).scatter_add_(1, ids.unsqueeze(2).expand(-1, -1, q), d)
            yield call.weight, grads.reshape(n, -1)
    elif call.kind in ("add", "mul"):
        factor = delta if call.kind == "add" else delta * call.inputs
        dims = call.options["dims"]
        yield call.weight, (factor.sum(dim=dims, keepdim=True) if dims else factor).reshape(n, -1)
    else:
        lead = call.options["lead"]
        dims = tuple(range(1, delta.dim() + lead)) if lead < 0 else tuple(range(2, delta.dim()))

        # ``sum(dim=())`` would reduce every dimension, so no positions means no sum.
        def over_positions(t: Tensor) -> Tensor:
            return (t.sum(dim=dims) if dims else t).reshape(n, -1)

        if call.weight is not None:
            yield call.weight, over_positions(delta * call.inputs)
        if call.bias is not None:
            yield call.bias, over_positions(delta)


def _factor_pair_cheaper(rows: int, positions: int, p: int, q: int) -> bool:
    """Whether the position-summed identity beats explicit gradients for a ``rows x rows`` block.

    The factors are kept for every example of a chunked call: never when the explicit gradient is the smaller of
    the two (``p q <= T (p + q)``; it is then also the cheaper)."""
    if p * q <= positions * (p + q):
        return False
    identity_cost = rows * rows * positions * positions * (p + q)
    explicit_cost = 2 * rows * positions * p * q + rows * rows * p * q
    return identity_cost <= explicit_cost


def _weight_piece(a: Tensor, d: Tensor, rows: int, shared: bool):
    """Factor pair ``(A [n, T, p], D [n, T, q])`` when the position-summed identity is cheaper, else ``[n, q * p]``."""
    _, positions, p = a.shape
    q = d.shape[2]
    if not shared and _factor_pair_cheaper(rows, positions, p, q):
        return a, d
    return torch.bmm(d.transpose(1, 2), a).reshape(a.shape[0], q * p)


def _equal_id_block(ids1: Tensor, d1: Tensor, ids2: Tensor, d2: Tensor) -> Tensor:
    """``sum_{t, s} [id_it == id_js] d_it . d_js`` as ``[n1, n2]``: an embedding's Gram block.

    Only pairs of equal ids contribute, and in text most pairs differ, so they are enumerated through a sort
    (``sum_v count1_v count2_v`` dot products) unless they are many (a frequent token), then an equality mask.
    """
    (n1, t1), (n2, t2) = ids1.shape, ids2.shape
    u1, u2 = ids1.reshape(-1), ids2.reshape(-1)
    f1, f2 = d1.reshape(n1 * t1, -1), d2.reshape(n2 * t2, -1)
    order = torch.argsort(u2)
    sorted2 = u2[order]
    start = torch.searchsorted(sorted2, u1)
    counts = torch.searchsorted(sorted2, u1, right=True) - start
    total = int(counts.sum())
    if 4 * total > u1.numel() * u2.numel():
        prod = (u1[:, None] == u2[None, :]) * (f1 @ f2.T)
        return prod.reshape(n1, t1, n2, t2).sum(dim=(1, 3))
    first = torch.repeat_interleave(torch.arange(u1.numel(), device=u1.device), counts)
    offset = torch.arange(total, device=u1.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    second = order[start[first] + offset]
    dots = (f1[first] * f2[second]).sum(dim=1)
    flat = f1.new_zeros(n1 * n2).index_add_(0, (first // t1) * n2 + second // t2, dots)
    return flat.reshape(n1, n2)


def cross_by_name(rows: Features, cols: Features) -> dict[str, Tensor]:
    """Gram blocks ``[n_rows, n_cols]`` between two chunks' features, one per trainable parameter (a parameter with
    several factor pairs, e.g. shared between calls, sums them)."""
    if list(rows.flat) != list(cols.flat) or [k[0] for k in rows.kron] != [k[0] for k in cols.kron]:
        raise LayerwiseUnsupported("the model took a different path for two chunks of examples")
    blocks = {name: g1 @ cols.flat[name].T for name, g1 in rows.flat.items()}
    for (name, a1, d1), (_, a2, d2) in zip(rows.kron, cols.kron, strict=False):
        if a1.shape[1] == 1 and a1.is_floating_point():
            block = (a1[:, 0] @ a2[:, 0].T) * (d1[:, 0] @ d2[:, 0].T)
        elif not a1.is_floating_point():
            block = _equal_id_block(a1, d1, a2, d2)
        else:
            n1, t1 = a1.shape[:2]
            n2, t2 = a2.shape[:2]
            prod = (a1.reshape(n1 * t1, -1) @ a2.reshape(n2 * t2, -1).T) * (
                d1.reshape(n1 * t1, -1) @ d2.reshape(n2 * t2, -1).T
            )
            block = prod.reshape(n1, t1, n2, t2).sum(dim=(1, 3))
        blocks[name] = blocks[name] + block if name in blocks else block
    return blocks


def cross(rows: Features, cols: Features) -> Tensor:
    """Gram block ``[n_rows, n_cols]`` between two chunks' features."""
    return sum(cross_by_name(rows, cols).values())  # every recorded call names a parameter: never empty


def select(features: Features, index: Tensor) -> Features:
    """The features of some examples of a chunk."""
    return Features(
        {k: g[index] for k, g in features.flat.items()}, [(k, a[index], d[index]) for k, a, d in features.kron]
    )


def squared_norms(features: Features) -> Tensor:
    """``|g_i|^2`` of each example of a chunk."""
    total = sum(g.pow(2).sum(dim=1) for g in features.flat.values())
    for _, a, d in features.kron:
        if a.shape[1] == 1 and a.is_floating_point():
            total = total + a[:, 0].pow(2).sum(dim=1) * d[:, 0].pow(2).sum(dim=1)
        else:
            inner = torch.bmm(a, a.transpose(1, 2)) if a.is_floating_point() else a.unsqueeze(2) == a.unsqueeze(1)
            total = total + (inner * torch.bmm(d, d.transpose(1, 2))).sum(dim=(1, 2))
    return total
