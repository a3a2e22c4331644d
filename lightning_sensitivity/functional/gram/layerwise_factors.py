"""Layerwise Gram factors: ``g_i . g_j`` from one batched forward and backward pass, without per-example gradients.

For a layer ``out = W a + b`` the per-example gradient is ``g_i(W) = sum_t delta_it a_it^T`` (``t`` runs over the
positions that share the weight: sequence positions of a linear layer, output pixels of a convolution), so

    g_i(W) . g_j(W) = sum_{t, s} (a_it . a_js) (delta_it . delta_js),

which for one position is ``(A A^T) * (D D^T)`` -- ``N^2 (p + q)`` operations instead of ``N p q`` numbers per layer.
``a`` are the layer inputs and ``delta`` the gradients of each example's own loss with respect to the layer output;
both come out of a single batched pass on the *summed* per-example loss because, in eval mode, examples do not
interact. Per call the engine picks the cheaper of that identity and the explicit per-example gradient (e.g.
``unfold`` for a convolution with many output pixels); affine normalisation layers have small explicit gradients.

Which ops are recognised, and what each records, is :mod:`.recognised_ops`. A parameter used anywhere else costs only
itself: its per-example gradients are computed explicitly (``vmap(grad)`` over a function of that parameter alone,
else an autograd loop over examples) and enter the Gram beside the factors of every other parameter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from lightning_sensitivity.functional._purity import as_function
from lightning_sensitivity.functional.gram.blocks import LossFn
from lightning_sensitivity.functional.gram.gathered import GatheredParameters
from lightning_sensitivity.functional.gram.recognised_ops import Call, Capture, LayerwiseUnsupported
from lightning_sensitivity.functional.model import check_logits

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
    explicit: dict[str, str] | None = None,
    info: dict | None = None,
    choices: dict | None = None,
    *,
    sharded: bool,
) -> Features:
    """One batched forward and backward pass over a chunk, turned into Gram factors per trainable parameter.

    ``reference_rows`` is the block size the factors will be multiplied at; it decides, identically for every
    chunk, whether a call is kept as factor pairs or as explicit per-example gradients. ``model_kwargs`` are the
    chunk's per-example keyword inputs of the model (``model(x, **model_kwargs)``). ``choices``, one dict shared by
    the chunks of a call, keeps the choices that depend on a chunk's content (an embedding's, on its token counts)
    as the first chunk made them, so that every chunk's features have the same layout.

    A parameter the capture does not recognise in some use (or listed in ``explicit``, ``{name: reason}``, which is
    updated with every such parameter and its reason) gets explicit per-example gradients of its own
    (:func:`~.per_example.subset_gradients`), however else it is used; a tensor derived from parameters alone is
    consumed like a parameter and its explicit gradients are pulled back to them.

    ``sharded`` (:attr:`~.call.GramCall.sharded`, decided once per call): the model's parameters are sharded by
    FSDP2, so it is run as it is and the whole tensors it gathers are named as each module is entered.

    ``info``, when given, receives ``"host_read"``: the first op that read batch values into Python (``.item()``,
    ``if tensor:``), whose path may depend on the data, or None.

    Raises:
        LayerwiseUnsupported: examples interact (batch statistics), the backward fails, or a sharded model has an
            unrecognised use.
    """
    from lightning_sensitivity.functional.gram.per_example import subset_gradients  # imports this module's users

    explicit = {} if explicit is None else explicit
    n = x.shape[0]
    if sharded:
        # FSDP2: the model gathers its parameters itself; they are named as each module is entered.
        gathered = GatheredParameters(model, set(trainable))
        capture = Capture({}, n, names=gathered.names)
        with gathered, capture:
            logits = check_logits(model(x, **(model_kwargs or {})))
    else:
        capture = Capture(trainable, n, constants=(*frozen.values(), *buffers.values()))
        with capture:
            logits = check_logits(as_function(model)({**frozen, **trainable}, buffers, x, **(model_kwargs or {})))
    losses = per_example_losses(loss_fn, logits, y)
    if info is not None:
        info["host_read"] = capture.host_read
    for call in capture.calls:
        rows = call.inputs.shape[0]
        flattened = call.kind == "linear" and call.options.get("transposed") and rows % n == 0
        if not (rows == n and call.leaf.shape[0] == n) and not (flattened and call.leaf.shape[0] == rows):
            # Per-example factors need the example index first; a sequence-first layout would mix them up.
            for name in (call.weight, call.bias):
                if name is not None:
                    for source in capture.sources(name):
                        capture.unrecognised.setdefault(
                            source, f"its layer sees a batch of shape {tuple(call.inputs.shape)}, not [{n}, ...]"
                        )
    for name, reason in capture.unrecognised.items():
        explicit.setdefault(name, reason)
    if explicit and sharded:
        name, reason = next(iter(explicit.items()))
        raise LayerwiseUnsupported(f"trainable parameter {name!r} is {reason}")

    def served(name: str | None) -> str | None:  # a name some of whose parameters come from this pass
        return name if name is not None and not capture.sources(name) <= explicit.keys() else None

    calls = [
        replace(call, weight=served(call.weight), bias=served(call.bias))
        for call in capture.calls
        if served(call.weight) is not None or served(call.bias) is not None
    ]
    if not calls and not explicit:
        raise LayerwiseUnsupported("no trainable parameter reaches the loss through a recognised op")
    if calls and not losses.requires_grad:
        raise LayerwiseUnsupported("no trainable parameter reaches the loss")
    try:
        deltas = (
            torch.autograd.grad(
                losses.sum(), [c.leaf for c in calls], allow_unused=True, retain_graph=bool(capture.derived)
            )
            if calls
            else []
        )
    except RuntimeError as err:  # an op without a derivative: the per-example engine says which
        raise LayerwiseUnsupported(f"the batched backward failed: {err}") from None
    uses: dict[str, int] = {}
    for call in calls:
        for name in (call.weight, call.bias):
            if name is not None:
                uses[name] = uses.get(name, 0) + 1
    # A parameter that also makes a derived tensor has several gradient terms: all of them explicit, then summed.
    through_derived = set().union(*(d.sources for d in capture.derived.values()))
    flat: dict[str, Tensor] = {}
    kron: list[tuple[str, Tensor, Tensor]] = []
    derived: dict[str, Tensor] = {}
    for call, delta in zip(calls, deltas, strict=True):
        delta = torch.zeros_like(call.leaf) if delta is None else delta.detach()
        shared = any(
            name is not None and (uses[name] > 1 or name in capture.derived or name in through_derived)
            for name in (call.weight, call.bias)
        )
        for name, piece in _pieces(call, delta, n, reference_rows, shared, choices):
            into = derived if name in capture.derived else flat
            if isinstance(piece, tuple):
                kron.append((name, *piece))
            else:
                into[name] = into[name] + piece if name in into else piece
    for name, grads in derived.items():
        d = capture.derived[name]
        sources = sorted(d.sources - explicit.keys())
        grads = grads.reshape(n, *d.tensor.shape)
        if d.weight_norm is not None:  # closed form: no batched vector-Jacobian product through the norm
            both = _weight_norm_pull_back(d.weight_norm, grads)
            pulled = [both[s] for s in sources]
        else:
            pulled = _pull_back(d.tensor, [capture.leaves[s] for s in sources], grads)
        for source, g in zip(sources, pulled, strict=True):
            flat[source] = flat[source] + g if source in flat else g
    if explicit:
        names = sorted(k for k in explicit if k in trainable)
        flat.update(subset_gradients(model, trainable, frozen, buffers, x, y, loss_fn, model_kwargs or {}, names))
    return Features({k: flat[k] for k in sorted(flat)}, kron)  # a fixed order, so that row and column chunks line up


def _weight_norm_pull_back(args: tuple, grads: Tensor) -> dict[str, Tensor]:
    """``{v: [n, k], g: [n, k']}`` from per-example gradients ``grads`` of ``W = g v / |v|`` (the norm over every
    dimension but ``dim``): ``dL/dg = c``, ``dL/dv = (g / |v|) (G - c v / |v|)`` with ``c = G . v / |v|``.
    ``grads`` (this engine's own buffer) is overwritten: the pull-back is memory-bound."""
    v_name, g_name, v, g, dim = args
    v, g, n = v.detach(), g.detach(), grads.shape[0]
    if dim == -1:
        rows, moved = v.reshape(1, -1), grads.reshape(n, 1, -1)
    else:
        dim %= v.dim()
        rows = v.movedim(dim, 0).reshape(v.shape[dim], -1)
        moved = grads.movedim(dim + 1, 1).reshape(n, v.shape[dim], -1)
    norm = rows.pow(2).sum(dim=1, keepdim=True).sqrt()
    unit = rows / norm
    c = torch.einsum("nqk,qk->nq", moved, unit)
    grad_v = moved.addcmul_(c.unsqueeze(2), unit, value=-1).mul_(g.reshape(-1, 1) / norm)
    if dim not in (-1, 0):
        grad_v = grad_v.reshape(n, *v.movedim(dim, 0).shape).movedim(1, dim + 1)
    return {v_name: grad_v.reshape(n, -1), g_name: c.reshape(n, -1)}


def _pull_back(out: Tensor, leaves: list[Tensor], grads: Tensor) -> list[Tensor]:
    """``[n, k]`` per leaf: the per-example gradients ``grads`` ``[n, *out.shape]`` of a derived tensor pulled back
    through the batch-free map from ``leaves`` to ``out`` (a batched vector-Jacobian product, else one per example)."""
    n = grads.shape[0]
    if not leaves:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # vmap's "no batching rule, performance drop" notice
            pulled = torch.autograd.grad(
                out, leaves, grads.to(out.dtype), retain_graph=True, allow_unused=True, is_grads_batched=True
            )
    except RuntimeError:  # an op without a batching rule: one vector-Jacobian product per example
        rows = [torch.autograd.grad(out, leaves, grads[i].to(out.dtype), retain_graph=True, allow_unused=True)
                for i in range(n)]  # fmt: skip
        pulled = [None if r[0] is None else torch.stack(list(r)) for r in zip(*rows, strict=True)]
    return [
        grads.new_zeros(n, leaf.numel()) if g is None else g.detach().reshape(n, -1)
        for leaf, g in zip(leaves, pulled, strict=True)
    ]


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
            yield call.weight, _weight_piece(a, d, reference_rows, shared, call.options.get("transposed", False))
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
        if "order" in call.options:  # a shared embedding used in another layout: its output gradient put back
            delta = delta.permute(call.options["order"])
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


def _weight_piece(a: Tensor, d: Tensor, rows: int, shared: bool, transposed: bool = False):
    """Factor pair ``(A [n, T, p], D [n, T, q])`` when the position-summed identity is cheaper, else ``[n, q * p]``
    (``[n, p * q]`` for a ``transposed`` weight ``[p, q]``, as in ``x @ W``)."""
    _, positions, p = a.shape
    q = d.shape[2]
    if not shared and _factor_pair_cheaper(rows, positions, p, q):
        return a, d
    if transposed:
        return torch.bmm(a.transpose(1, 2), d).reshape(a.shape[0], p * q)
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
