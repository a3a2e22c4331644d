"""The layerwise engine: per-layer Gram factors from one batched pass per chunk, checked against explicit gradients.

The factors come from :mod:`~lightning_sensitivity.functional.gram.layerwise_factors`; this module assembles them
into Gram blocks and, once per model structure, verifies them against ``torch.autograd`` gradients of two examples.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import Tensor, nn

from lightning_sensitivity.functional._inputs import take
from lightning_sensitivity.functional._purity import as_function
from lightning_sensitivity.functional.gram import layerwise_factors as lg
from lightning_sensitivity.functional.gram.blocks import blockwise_gram, layout
from lightning_sensitivity.functional.gram.call import GramCall
from lightning_sensitivity.functional.gram.gathered import GatheredParameters
from lightning_sensitivity.functional.gram.plan import structure_key
from lightning_sensitivity.functional.gram.recognised_ops import LayerwiseUnsupported
from lightning_sensitivity.functional.model import check_logits


def layerwise_gram(call: GramCall, *, explicit: dict[str, str] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise Gram of ``call`` from per-layer factors of one batched pass per chunk (see :mod:`.layerwise_factors`).

    ``explicit`` (``{parameter: reason}``) names parameters served by explicit per-example gradients from the start;
    it is updated with every parameter the capture does not recognise. With ``call.sketch_dim`` the Gram is
    estimated from sketched gradients instead (:mod:`.sketch`).

    Before any block is assembled, the first chunk's factors are checked against explicit gradients of two of its
    examples (``vmap(grad)``): a model that mixes examples in its forward pass, keeps the batch on another
    dimension or uses a parameter where the capture cannot see it fails the check instead of giving a wrong Gram.

    Raises:
        LayerwiseUnsupported: an unsupported use of a trainable parameter, or a failed check.
    """
    sketch = call.sketch()
    # Sketched, each example's pieces are projected on their own (no N x N products): the factors are kept where
    # they are about as small as the explicit gradient, as for one row (projecting factors costs T k (p + q), an
    # explicit gradient T p q + k p q).
    features = CheckedFeatures(call, explicit, reference_rows=None if sketch is None else 1)
    out = blockwise_gram(
        features, lg.cross, lg.squared_norms, len(call.rows), call.num_cols, call.chunk_size, call.progress,
        sketch=sketch,
    )  # fmt: skip
    features.finish()
    return out


class CheckedFeatures:
    """``features(s, piece)``: the layerwise factors of examples ``piece`` of set ``s`` of a :class:`~.call.GramCall`
    (0 = ``call.rows``, 1 = ``call.cols``), the first chunk's checked against explicit gradients (:func:`verify`).

    A failed check raises at once, except for a sharded model: every rank must run the same forwards (they are
    collectives), so the failure is kept and raised by :meth:`finish`, which the caller calls once it has computed
    everything it would have.
    """

    def __init__(
        self, call: GramCall, explicit: dict[str, str] | None = None, reference_rows: int | None = None
    ) -> None:
        # Every chunk's features are kept and the Gram formed from all of them (``blockwise_gram``): the factor or
        # explicit choice is the unchunked call's, whatever the chunk size, so that chunking costs no extra work.
        self.reference_rows = reference_rows or max(len(call.rows), call.num_cols or 0)
        self.call = call
        self.layout = None
        self.choices: dict = {}  # content-dependent factor/explicit choices, made by the first chunk for all
        self.model, self.trainable, self.frozen, self.buffers = call.model, call.trainable, call.frozen, call.buffers
        self.sets, self.loss_fn = call.sets, call.loss_fn
        self.checked = False
        self.failure: LayerwiseUnsupported | None = None
        # Parameters served by explicit per-example gradients, with the reason: the same for every chunk.
        self.explicit: dict[str, str] = {} if explicit is None else explicit

    def __call__(self, s: int, piece: slice) -> lg.Features:
        x, y, kw = self.sets[s]
        kw = take(kw, piece)
        model, trainable, frozen, buffers = self.model, self.trainable, self.frozen, self.buffers
        info: dict = {}
        feats = lg.layer_features(
            model, trainable, frozen, buffers, x[piece], y[piece], self.loss_fn, self.reference_rows, model_kwargs=kw,
            explicit=self.explicit, info=info, choices=self.choices, sharded=self.call.sharded,
        )  # fmt: skip
        if self.layout is None:
            self.layout = layout(feats)
        elif layout(feats) != self.layout:
            raise LayerwiseUnsupported("the model took a different path for two chunks of examples")
        if not self.checked:
            self.checked = True
            # A forward that reads batch values into Python (`.item()`, `if t:`) may take another path for other
            # data: its check is not remembered.
            again = info.get("host_read") is not None
            self.failure = verify(
                model, trainable, frozen, buffers, x[piece], y[piece], kw, self.loss_fn, feats, remember=not again,
                sharded=self.call.sharded,
            )  # fmt: skip
            if not self.call.sharded:
                self.finish()
        return feats

    def finish(self) -> None:
        """Raise the check's failure, if any."""
        if self.failure is not None:
            raise self.failure


def verify(
    model,
    trainable,
    frozen,
    buffers,
    x,
    y,
    kwargs,
    loss_fn,
    feats: lg.Features,
    remember: bool = True,
    *,
    sharded: bool,
) -> LayerwiseUnsupported | None:
    """Check a chunk's factors against explicit gradients of two of its examples; the failure, or None.

    Once per model structure (:data:`_VERIFIED`), except for a sharded model, which is checked at every call: the
    check's forwards are collectives, and every rank must run them whatever another rank's cache holds (``sharded``:
    :attr:`~.call.GramCall.sharded`)."""
    key = structure_key(trainable, x, y, kwargs, loss_fn)
    verified = _VERIFIED.setdefault(model, set())
    if not sharded and remember and key in verified:
        return None
    try:
        judged = _check_against_explicit(model, trainable, frozen, buffers, x, y, kwargs, loss_fn, feats, sharded)
    except LayerwiseUnsupported as err:
        return err
    if not sharded and remember and judged:
        verified.add(key)
    return None


# Models whose layerwise factors passed the check, with what they were checked on: the check is about the model's
# structure, so a monitor measuring the same model every epoch pays for it once.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()


def _check_against_explicit(
    model, trainable, frozen, buffers, x, y, kwargs, loss_fn, feats: lg.Features, sharded: bool
) -> bool:
    """Raise when the factors disagree with explicit gradients; False when the reference is not finite (a diverged
    model: nothing can be judged, and the check is not remembered), else True."""
    index = torch.tensor(sorted({0, x.shape[0] - 1}), device=x.device)
    explicit = _explicit_gradients(model, trainable, frozen, buffers, x, y, kwargs, loss_fn, index.tolist(), sharded)
    if not bool(torch.isfinite(explicit).all()):
        return False
    # The reference in float64: over millions of parameters a float32 product is itself off by ~1e-3 of
    # |g_i||g_j| and could refuse a correct result; the tolerance is the model dtype's.
    reference = explicit.double()
    expected = reference @ reference.T
    picked = lg.select(feats, index)
    got = lg.cross(picked, picked).double()
    scale = expected.diagonal().sqrt()
    tolerance = torch.finfo(explicit.dtype).eps ** 0.5 * (
        scale[:, None] * scale[None, :] + torch.finfo(explicit.dtype).tiny
    )
    if not bool(((got - expected).abs() <= tolerance).all()):
        raise LayerwiseUnsupported(
            "the layerwise Gram disagrees with explicit per-example gradients on a check pair (does the model mix "
            "the examples of a batch, or keep them on a dimension other than 0?)"
        )
    return True


def _explicit_gradients(
    model, trainable, frozen, buffers, x, y, kwargs, loss_fn, index: list[int], sharded: bool
) -> Tensor:
    """``[len(index), P]`` gradients of the examples at ``index``, by plain autograd on batches of one (far less
    overhead than vmap for two examples). A sharded model (FSDP2) runs its own forward, and the gradients are taken
    with respect to the whole tensors it gathered (:class:`~.gathered.GatheredParameters`), never into ``.grad``."""
    leaves = {} if sharded else {k: v.detach().requires_grad_(True) for k, v in trainable.items()}
    f = as_function(model)
    rows: list[dict[str, Tensor]] = []
    like: dict[str, Tensor] = {}
    for i in index:
        gathered = GatheredParameters(model, set(trainable))
        with gathered if sharded else contextlib.nullcontext():
            logits = check_logits(f({**frozen, **leaves}, buffers, x[i : i + 1], **take(kwargs, slice(i, i + 1))))
        used = dict(sorted(gathered.tensors.items())) if sharded else leaves
        grads = torch.autograd.grad(loss_fn(logits, y[i : i + 1]).sum(), list(used.values()), allow_unused=True)
        rows.append({k: g for k, g in zip(used, grads, strict=True) if g is not None})
        like.update(used)
    # A parameter one example's forward did not use (or, sharded, did not gather) has a zero gradient there.
    flat = [torch.cat([row.get(k, torch.zeros_like(t)).flatten() for k, t in like.items()]) for row in rows]
    return torch.stack(flat)
