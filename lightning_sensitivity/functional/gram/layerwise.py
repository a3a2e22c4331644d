"""The layerwise engine: per-layer Gram factors from one batched pass per chunk, checked against explicit gradients.

The factors come from :mod:`~lightning_sensitivity.functional.gram.layerwise_factors`; this module assembles them
into Gram blocks and, once per model structure, verifies them against ``torch.autograd`` gradients of two examples.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import Tensor, nn

from lightning_sensitivity.functional._model import Progress, as_function, check_logits, has_sharded_parameters, take
from lightning_sensitivity.functional.gram import layerwise_factors as lg
from lightning_sensitivity.functional.gram.blocks import LossFn, blockwise_gram, layout, split_trainable
from lightning_sensitivity.functional.gram.gathered import GatheredParameters
from lightning_sensitivity.functional.gram.plan import structure_key
from lightning_sensitivity.functional.gram.recognised_ops import LayerwiseUnsupported


def layerwise_gram(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x1: Tensor,
    y1: Tensor,
    x2: Tensor | None,
    y2: Tensor | None,
    loss_fn: LossFn,
    chunk_size: int | None,
    progress: Progress | None,
    *,
    kwargs1: dict[str, Tensor] | None = None,
    kwargs2: dict[str, Tensor] | None = None,
    explicit: dict[str, str] | None = None,
    sketch=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise Gram from per-layer factors of one batched pass per chunk (see :mod:`.layerwise_factors`).

    ``kwargs1``/``kwargs2`` are the per-example keyword inputs of the two sets, sliced with the inputs. ``explicit``
    (``{parameter: reason}``) names parameters served by explicit per-example gradients from the start; it is updated
    with every parameter the capture does not recognise. ``sketch`` (a :class:`~.sketch.GradientSketch`) estimates
    the Gram from sketched gradients instead.

    Before any block is assembled, the first chunk's factors are checked against explicit gradients of two of its
    examples (``vmap(grad)``): a model that mixes examples in its forward pass, keeps the batch on another
    dimension or uses a parameter where the capture cannot see it fails the check instead of giving a wrong Gram.

    Raises:
        LayerwiseUnsupported: an unsupported use of a trainable parameter, or a failed check.
    """
    trainable, frozen = split_trainable(params, model)
    sets = ((x1, y1, kwargs1 or {}), (x2, y2, kwargs2 or {}))
    # Sketched, each example's pieces are projected on their own (no N x N products): the factors are kept where
    # they are about as small as the explicit gradient, as for one row (projecting factors costs T k (p + q), an
    # explicit gradient T p q + k p q).
    features = CheckedFeatures(
        model, trainable, frozen, buffers, sets, loss_fn, chunk_size, explicit,
        reference_rows=None if sketch is None else 1,
    )  # fmt: skip
    out = blockwise_gram(
        features,
        lg.cross,
        lg.squared_norms,
        x1.shape[0],
        None if x2 is None else x2.shape[0],
        chunk_size,
        progress,
        sketch=sketch,
    )
    features.finish()
    return out


class CheckedFeatures:
    """``features(s, piece)``: the layerwise factors of examples ``piece`` of set ``s`` (0 = rows, 1 = columns) of
    ``sets = ((x1, y1, kwargs1), (x2, y2, kwargs2))``, the first chunk's checked against explicit gradients
    (:func:`verify`).

    A failed check raises at once, except for a sharded model: every rank must run the same forwards (they are
    collectives), so the failure is kept and raised by :meth:`finish`, which the caller calls once it has computed
    everything it would have.
    """

    def __init__(
        self, model, trainable, frozen, buffers, sets, loss_fn, chunk_size, explicit=None, reference_rows=None
    ) -> None:
        (x1, _, _), (x2, _, _) = sets
        # Every chunk's features are kept and the Gram formed from all of them (``blockwise_gram``): the factor or
        # explicit choice is the unchunked call's, whatever the chunk size, so that chunking costs no extra work.
        self.reference_rows = reference_rows or max(x1.shape[0], 0 if x2 is None else x2.shape[0])
        self.layout = None
        self.choices: dict = {}  # content-dependent factor/explicit choices, made by the first chunk for all
        self.model, self.trainable, self.frozen, self.buffers = model, trainable, frozen, buffers
        self.sets, self.loss_fn = sets, loss_fn
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
            explicit=self.explicit, info=info, choices=self.choices,
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
                model, trainable, frozen, buffers, x[piece], y[piece], kw, self.loss_fn, feats, remember=not again
            )
            if not has_sharded_parameters(model):
                self.finish()
        return feats

    def finish(self) -> None:
        """Raise the check's failure, if any."""
        if self.failure is not None:
            raise self.failure


def verify(
    model, trainable, frozen, buffers, x, y, kwargs, loss_fn, feats: lg.Features, remember: bool = True
) -> LayerwiseUnsupported | None:
    """Check a chunk's factors against explicit gradients of two of its examples; the failure, or None.

    Once per model structure (:data:`_VERIFIED`), except for a sharded model, which is checked at every call: the
    check's forwards are collectives, and every rank must run them whatever another rank's cache holds."""
    sharded = has_sharded_parameters(model)
    key = structure_key(trainable, x, y, kwargs, loss_fn)
    verified = _VERIFIED.setdefault(model, set())
    if not sharded and remember and key in verified:
        return None
    try:
        judged = _check_against_explicit(model, trainable, frozen, buffers, x, y, kwargs, loss_fn, feats)
    except LayerwiseUnsupported as err:
        return err
    if not sharded and remember and judged:
        verified.add(key)
    return None


# Models whose layerwise factors passed the check, with what they were checked on: the check is about the model's
# structure, so a monitor measuring the same model every epoch pays for it once.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()


def _check_against_explicit(model, trainable, frozen, buffers, x, y, kwargs, loss_fn, feats: lg.Features) -> bool:
    """Raise when the factors disagree with explicit gradients; False when the reference is not finite (a diverged
    model: nothing can be judged, and the check is not remembered), else True."""
    index = torch.tensor(sorted({0, x.shape[0] - 1}), device=x.device)
    explicit = _explicit_gradients(model, trainable, frozen, buffers, x, y, kwargs, loss_fn, index.tolist())
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


def _explicit_gradients(model, trainable, frozen, buffers, x, y, kwargs, loss_fn, index: list[int]) -> Tensor:
    """``[len(index), P]`` gradients of the examples at ``index``, by plain autograd on batches of one (far less
    overhead than vmap for two examples). A sharded model (FSDP2) runs its own forward, and the gradients are taken
    with respect to the whole tensors it gathered (:class:`~.gathered.GatheredParameters`), never into ``.grad``."""
    sharded = has_sharded_parameters(model)
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
