r"""Sharpness of the loss surface at the current weights: Hessian top eigenvalue and trace, Gauss-Newton trace.

For the mean loss :math:`L(\theta) = \frac1N \sum_i \ell(f(x_i; \theta), y_i)` over a fixed set of examples and all
trainable parameters :math:`\theta` (Keskar et al. 2017; Jiang et al. 2020 found sharpness measures among the best
predictors of generalization):

- :func:`hessian_top_eigenvalue`: the largest eigenvalue of :math:`H = \nabla^2 L` by Lanczos iteration (full
  reorthogonalisation) on Hessian-vector products, with the residual norm that bounds its error;
- :func:`hessian_trace`: :math:`\operatorname{tr} H` by Hutchinson's estimator :math:`\mathbb E_v[v^\top H v]`
  (Rademacher :math:`v`) with its standard error;
- :func:`gauss_newton_trace`: the trace of the generalised Gauss-Newton matrix
  :math:`G = \frac1N \sum_i J_i^\top \nabla_z^2 \ell_i\, J_i` (:math:`J_i = \partial f(x_i)/\partial \theta`),
  exact: :math:`\operatorname{tr} G = \frac1N \sum_i \langle \nabla_z^2 \ell_i, J_i J_i^\top \rangle`.

Hessian-vector products are reverse-over-reverse (``torch.func.vjp`` of ``torch.func.grad``), chunk by chunk; one
costs about as much as two to four forward+backward passes over the set (``docs/performance.md``). The model is
evaluated in eval mode and left exactly as it was; random vectors come from a private ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_int, check_loss_fn, check_number, describe
from lightning_sensitivity.functional._chunks import Progress, check_chunk_size, check_progress, chunks, report
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    prepare_targets,
    take,
)
from lightning_sensitivity.functional._purity import measurement_context, pure_model
from lightning_sensitivity.functional._sharding import has_sharded_parameters
from lightning_sensitivity.functional.gram import build_gram_call, gram_and_norms
from lightning_sensitivity.functional.gram.blocks import split_trainable
from lightning_sensitivity.functional.model import check_logits

__all__ = [
    "hessian_vector_product",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hutchinson_samples",
    "gauss_newton_trace",
    "gauss_newton_trace_per_example",
    "mean_loss",
    "trace_estimate",
    "TopEigenvalue",
    "TraceEstimate",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
#: The most per-example Jacobian entries (``examples * C * P``) :func:`gauss_newton_trace_per_example` forms at once
#: when ``chunk_size`` does not bound them further (2**25 numbers: 128 MiB in float32).
JACOBIAN_BUDGET = 2**25


class TopEigenvalue(NamedTuple):
    r"""The Lanczos estimate of the Hessian's largest eigenvalue.

    Attributes:
        value: the largest Ritz value; never above the true largest eigenvalue (Ritz values interlace), and within
            ``residual`` of an eigenvalue of the Hessian.
        residual: :math:`\|H u - \theta u\|` of its Ritz vector :math:`u`: the error bound.
        num_iterations: Hessian-vector products used.
        ritz_values: ``[num_iterations]`` every Ritz value (ascending): the extremes of the spectrum.
    """

    value: float
    residual: float
    num_iterations: int
    ritz_values: Tensor


class TraceEstimate(NamedTuple):
    r"""Hutchinson's estimate of a trace.

    Attributes:
        value: the mean of the samples :math:`v_k^\top H v_k`.
        standard_error: their standard deviation over :math:`\sqrt K` (NaN for one sample).
        samples: ``[K]`` the samples.
    """

    value: float
    standard_error: float
    samples: Tensor


class _MeanLoss:
    """The mean loss over a set as a function of the trainable parameters, evaluated chunk by chunk."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        loss_fn: LossFn,
        chunk_size: int | None,
        model_kwargs: ModelKwargs | None,
    ) -> None:
        check_chunk_size(chunk_size)
        self.loss_fn = check_loss_fn(loss_fn)
        self.model, self.f, params, self.buffers = pure_model(model)
        if has_sharded_parameters(self.model):
            # The sharded model is called as it is (its wrappers gather the shards), so swapped-in parameters would
            # not reach it and every derivative would silently be zero.
            raise ValueError(
                "the model expected to hold its parameters unsharded (sharpness differentiates through "
                "`functional_call`), got a model with sharded parameters (FSDP / DTensor); measure it in a run with "
                "`strategy='ddp'` or on a single device"
            )
        self.trainable, self.frozen = split_trainable(params, self.model)
        self.x = match_model(prepare_inputs(inputs, allow_integer=True), params)
        self.y = match_model(prepare_targets(targets, self.x.shape[0]), params)
        self.kwargs = prepare_model_kwargs(model_kwargs, self.x.shape[0], params)
        self.n = self.x.shape[0]
        self.pieces = list(chunks(self.n, chunk_size))
        self.names = list(self.trainable)
        self.shapes = [self.trainable[k].shape for k in self.names]
        self.numel = sum(t.numel() for t in self.trainable.values())
        first = self.trainable[self.names[0]]
        self.dtype, self.device = first.dtype, first.device

    def logits(self, params: dict[str, Tensor], piece: slice) -> Tensor:
        return check_logits(self.f({**self.frozen, **params}, self.buffers, self.x[piece], **take(self.kwargs, piece)))

    def chunk_loss(self, params: dict[str, Tensor], piece: slice) -> Tensor:
        """The chunk's share of the mean loss: its losses summed, over ``N``."""
        out = self.loss_fn(self.logits(params, piece), self.y[piece])
        count = piece.stop - piece.start
        total = out * count if out.dim() == 0 else out.sum()  # a mean reduction (PyTorch's default) or per-example
        return total / self.n

    def flat(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[k].reshape(-1) for k in self.names])

    def unflat(self, vector: Tensor) -> dict[str, Tensor]:
        parts = vector.split([math.prod(s) for s in self.shapes])
        return {k: p.reshape(s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def hvp(self, vector: Tensor) -> Tensor:
        """``H v`` for a flat ``v``: the vector-Jacobian product of the gradient (reverse-over-reverse; ``H`` is
        symmetric), summed over the chunks. Measured faster than forward-over-reverse (``jvp`` of ``grad``) on
        MLPs and CNNs here, and it needs no forward-mode rule of any operator."""
        tangent = self.unflat(vector.to(self.dtype))
        out = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        for piece in self.pieces:
            _, pullback = torch.func.vjp(
                lambda p, piece=piece: torch.func.grad(self.chunk_loss)(p, piece), self.trainable
            )
            out += self.flat(pullback(tangent)[0])
        return out

    def value(self) -> float:
        with torch.no_grad():
            return float(sum(float(self.chunk_loss(self.trainable, piece)) for piece in self.pieces))


def hessian_vector_product(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    vector: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    """``H v``: the Hessian of the mean loss (trainable parameters, flattened in ``named_parameters`` order) times
    a flat vector ``[P]``.

    Args:
        model: maps ``[N, *input_shape]`` to logits ``[N, C]``; evaluated in eval mode and left as it was.
        inputs: ``[N, *input_shape]``.
        targets: ``[N, ...]``, what ``loss_fn`` expects.
        vector: ``[P]``, ``P`` = the number of trainable parameter entries.
        loss_fn: ``loss_fn(logits [n, C], targets [n, ...])`` returning the mean over the batch (PyTorch's default
            reduction) or per-example losses ``[n]``; the loss differentiated is the mean over all ``N``.
        chunk_size: examples per chunk (bounds memory); ``None``: all at once.
        model_kwargs: per-example keyword inputs of the model, each ``[N, ...]``.

    Raises:
        TypeError / ValueError: a bad argument, naming it.
    """
    loss = _MeanLoss(model, inputs, targets, loss_fn, chunk_size, model_kwargs)
    if not isinstance(vector, Tensor):
        raise TypeError(f"`vector` expected a torch.Tensor [P], got {describe(vector)}")
    if vector.shape != (loss.numel,) or not vector.is_floating_point():
        raise ValueError(
            f"`vector` expected a floating-point tensor of shape [{loss.numel}] (the trainable parameters), got "
            f"{vector.dtype} of shape {tuple(vector.shape)}"
        )
    with measurement_context(loss.model):
        return loss.hvp(vector.to(loss.device))


def hessian_top_eigenvalue(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    num_iterations: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> TopEigenvalue:
    """The largest eigenvalue of the Hessian of the mean loss, by Lanczos iteration on Hessian-vector products.

    The Krylov basis is fully reorthogonalised (memory ``num_iterations`` parameter vectors), so the Ritz values
    are reliable; iteration stops early once the residual is below ``tol * |value|`` or the Krylov space is
    exhausted (then the value is exact up to rounding).

    Args:
        model, inputs, targets, loss_fn, chunk_size, model_kwargs: as in :func:`hessian_vector_product`.
        num_iterations: the most Hessian-vector products (capped at the number of parameters).
        tol: relative residual at which to stop, ``>= 0`` (``0``: always run ``num_iterations``).
        seed: seed of the random start vector (a private generator; the global RNG is untouched).
        progress: ``progress(done, total)`` after each iteration.

    Returns:
        :class:`TopEigenvalue` ``(value, residual, num_iterations, ritz_values)``.

    Raises:
        TypeError / ValueError: a bad argument, naming it.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> top = hessian_top_eigenvalue(model, torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> top.value > 0 and top.residual < 1e-3 * top.value
        True
    """
    num_iterations = check_int(num_iterations, "num_iterations", minimum=1)
    tol = check_number(tol, "tol", low=0.0)
    seed = check_int(seed, "seed")
    check_progress(progress)
    loss = _MeanLoss(model, inputs, targets, loss_fn, chunk_size, model_kwargs)
    steps = min(num_iterations, loss.numel)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(loss.numel, generator=gen, dtype=torch.float64).to(device=loss.device, dtype=loss.dtype)
    q = q / q.norm()
    basis, alphas, betas = [q], [], []
    theta, residual, ritz = 0.0, float("inf"), torch.zeros(0, dtype=torch.float64)
    with measurement_context(loss.model):
        for k in range(steps):
            w = loss.hvp(basis[-1])
            alpha = float(w @ basis[-1])
            alphas.append(alpha)
            q_basis = torch.stack(basis)
            for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan-Parlett)
                w = w - q_basis.T @ (q_basis @ w)
            beta = float(w.norm())
            tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                tri += torch.diag(off, 1) + torch.diag(off, -1)
            ritz, vectors = torch.linalg.eigh(tri)
            theta = float(ritz[-1])
            residual = beta * abs(float(vectors[-1, -1]))
            report(progress, k + 1, steps)
            exhausted = beta <= 1e3 * torch.finfo(loss.dtype).eps * max(abs(theta), 1e-30) or k + 1 == loss.numel
            if exhausted or residual <= tol * abs(theta):
                if exhausted:
                    residual = min(residual, beta)
                break
            betas.append(beta)
            basis.append(w / beta)
    return TopEigenvalue(theta, residual, len(alphas), ritz)


def _rademacher(numel: int, seed: int, index: int) -> Tensor:
    """The ``index``-th probe vector of ``seed``: a private generator per vector, so any subset can be drawn alone."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
    return torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8).double() * 2 - 1


def hutchinson_samples(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    indices: Sequence[int],
    *,
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    r"""``[len(indices)]`` float64 samples :math:`v_k^\top H v_k` for the Rademacher vectors ``k`` in ``indices``.

    Vector ``k`` of a ``seed`` is the same whichever other vectors are drawn, so processes can share the samples of
    one estimate (:func:`hessian_trace` uses ``indices = range(num_vectors)``).

    Raises:
        TypeError / ValueError: a bad argument, naming it.
    """
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise TypeError(f"`indices` expected a sequence of ints >= 0, got {describe(indices)}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise TypeError(f"`indices` expected a sequence of ints >= 0, got {describe(indices)}")
    if any(i < 0 for i in indices):
        raise ValueError(f"`indices` expected ints >= 0, got {list(indices)}")
    seed = check_int(seed, "seed")
    check_progress(progress)
    loss = _MeanLoss(model, inputs, targets, loss_fn, chunk_size, model_kwargs)
    out = []
    with measurement_context(loss.model):
        for done, k in enumerate(indices):
            v = _rademacher(loss.numel, seed, k).to(device=loss.device, dtype=loss.dtype)
            out.append(float(v.double() @ loss.hvp(v).double()))
            report(progress, done + 1, len(indices))
    return torch.tensor(out, dtype=torch.float64)


def trace_estimate(samples: Tensor) -> TraceEstimate:
    """Mean and standard error of Hutchinson samples."""
    k = samples.numel()
    se = float(samples.std(unbiased=True) / math.sqrt(k)) if k > 1 else float("nan")
    return TraceEstimate(float(samples.mean()), se, samples)


def hessian_trace(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    num_vectors: int = 16,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of the trace of the Hessian of the mean loss, with its standard error.

    Args:
        model, inputs, targets, loss_fn, chunk_size, model_kwargs: as in :func:`hessian_vector_product`.
        num_vectors: Rademacher vectors (one Hessian-vector product each).
        seed: seed of the vectors (private generators; the global RNG is untouched).
        progress: ``progress(done, total)`` after each vector.

    Returns:
        :class:`TraceEstimate` ``(value, standard_error, samples)``; an unbiased estimate, not the exact trace.

    Raises:
        TypeError / ValueError: a bad argument, naming it.
    """
    num_vectors = check_int(num_vectors, "num_vectors", minimum=1)
    samples = hutchinson_samples(
        model, inputs, targets, range(num_vectors), loss_fn=loss_fn, seed=seed, chunk_size=chunk_size,
        progress=progress, model_kwargs=model_kwargs,
    )  # fmt: skip
    return trace_estimate(samples)


def gauss_newton_trace_per_example(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    r"""``[N]`` float64 :math:`\operatorname{tr}(J_i^\top \nabla_z^2 \ell_i J_i)`, each example's Gauss-Newton
    trace (their mean is :func:`gauss_newton_trace`). Exact: the per-example Jacobian ``[C, P]`` of a chunk is formed.

    ``loss_fn`` is called on one example as a batch of one (``logits [1, C]``, ``targets [1, ...]``) to form
    :math:`\nabla_z^2 \ell_i` ``[C, C]``. With ``F.cross_entropy`` and class-index targets the trace is formed
    from the squared norms of the loss gradients with every label instead (no Jacobian: ``C`` Gram passes of the
    layerwise engine). Otherwise, memory: ``n * C * P`` numbers for chunks of ``n`` examples, ``n`` =
    ``chunk_size`` or, when that is None or larger, as many as keep the Jacobians under :data:`JACOBIAN_BUDGET`
    numbers (at least one example). Cost: ``C`` per-example gradients per example, far more than a Hessian-vector
    product for wide models (``docs/performance.md``).

    Raises:
        TypeError / ValueError: a bad argument, naming it.
    """
    check_progress(progress)
    loss = _MeanLoss(model, inputs, targets, loss_fn, chunk_size, model_kwargs)
    y = loss.y
    if loss_fn is F.cross_entropy and y.dim() == 1 and not y.is_floating_point() and y.dtype != torch.bool:
        return _fisher_terms(model, inputs, loss, chunk_size, progress, model_kwargs)
    fn = loss.loss_fn
    out = []
    with measurement_context(loss.model):
        with torch.no_grad():
            num_outputs = loss.logits(loss.trainable, slice(0, 1)).shape[1]
        budget = max(1, JACOBIAN_BUDGET // max(1, num_outputs * loss.numel))
        size = budget if chunk_size is None else min(chunk_size, budget)
        pieces = list(chunks(loss.n, size))
        for done, piece in enumerate(pieces):
            kw = take(loss.kwargs, piece)

            def logits_one(p: dict[str, Tensor], x: Tensor, k: dict[str, Tensor]) -> Tensor:
                z = loss.f(
                    {**loss.frozen, **p}, loss.buffers, x.unsqueeze(0), **{n: v.unsqueeze(0) for n, v in k.items()}
                )
                return check_logits(z)[0]

            jac = torch.func.vmap(torch.func.jacrev(logits_one), in_dims=(None, 0, 0))(
                loss.trainable, loss.x[piece], kw
            )
            j = torch.cat([jac[name].flatten(2) for name in loss.names], dim=2)  # [n, C, P]
            with torch.no_grad():
                z = torch.func.vmap(logits_one, in_dims=(None, 0, 0))(loss.trainable, loss.x[piece], kw)

            def loss_one(zi: Tensor, yi: Tensor) -> Tensor:
                return fn(zi.unsqueeze(0), yi.unsqueeze(0)).sum()

            # reverse-over-reverse (no forward-mode AD: its levels are process-global, unsafe across threads)
            h = torch.func.vmap(torch.func.jacrev(torch.func.jacrev(loss_one)))(z.detach(), loss.y[piece])  # [n, C, C]
            ntk = j @ j.transpose(1, 2)
            out.append((h.double() * ntk.double()).sum(dim=(1, 2)).detach())
            report(progress, done + 1, len(pieces))
    return torch.cat(out).cpu()


def _fisher_terms(
    model: nn.Module,
    inputs: Tensor,
    loss: _MeanLoss,
    chunk_size: int | None,
    progress: Progress | None,
    model_kwargs: ModelKwargs | None,
) -> Tensor:
    """Cross-entropy: the loss Hessian in the logits is ``sum_c p_c (e_c - p)(e_c - p)^T``, so an example's
    Gauss-Newton trace is ``sum_c p_c |grad CE(z, c)|^2`` -- the gradients of the loss with every label ``c``. Their
    squared norms come from the layerwise Gram engine without forming per-example Jacobians (66 times faster than
    the Jacobian path on an MLP of 200k parameters, measured)."""
    with measurement_context(loss.model, grad=False):
        probs = torch.cat([loss.logits(loss.trainable, piece) for piece in loss.pieces]).double().softmax(dim=1)
    out = torch.zeros(loss.n, dtype=torch.float64, device=probs.device)
    num_classes = probs.shape[1]
    for c in range(num_classes):
        labels = torch.full((loss.n,), c, dtype=torch.long, device=loss.y.device)
        call = build_gram_call(
            model, inputs, labels, loss_fn=F.cross_entropy, chunk_size=chunk_size, model_kwargs=model_kwargs
        )
        _, sq, _ = gram_and_norms(call)
        out += probs[:, c] * sq.double().to(probs.device)
        report(progress, c + 1, num_classes)
    return out.cpu()


def gauss_newton_trace(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> float:
    """The exact trace of the generalised Gauss-Newton matrix of the mean loss (see the module docstring).

    For cross-entropy it equals the trace of the Fisher information of the model's predictive distribution. Args
    as in :func:`gauss_newton_trace_per_example`.

    Example:
        >>> gauss_newton_trace(torch.nn.Linear(3, 2), torch.randn(8, 3), torch.randint(0, 2, (8,))) > 0
        True
    """
    return float(
        gauss_newton_trace_per_example(
            model, inputs, targets, loss_fn=loss_fn, chunk_size=chunk_size, progress=progress,
            model_kwargs=model_kwargs,
        ).mean()
    )  # fmt: skip


def mean_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> float:
    """The mean loss the sharpness functions differentiate (eval mode)."""
    loss = _MeanLoss(model, inputs, targets, loss_fn, chunk_size, model_kwargs)
    with measurement_context(loss.model, grad=False):
        return loss.value()


# ---------------------------------------------------------------- the declaration (keys, arrays, charts)
_H = keys.prefix(keys.SHARPNESS)
#: What ``SharpnessMonitor`` logs and writes (see :class:`lightning_sensitivity.keys.Quantity`).
QUANTITY = keys.Quantity(
    name=keys.SHARPNESS,
    monitor="SharpnessMonitor",
    metrics=tuple(f"{_H}/{{split}}/{stat}" for stat in keys.SHARPNESS_STATS),
    conditional={
        f"{_H}/{{split}}/hessian_trace": "only with `num_vectors=` > 0",
        f"{_H}/{{split}}/hessian_trace_se": "only with `num_vectors=` > 1 (one vector has no standard error)",
        f"{_H}/{{split}}/gauss_newton_trace": "only with `gauss_newton=True`",
    },
    arrays=tuple(
        keys.split_array(s, n)
        for s in (keys.TRAIN, keys.VAL)
        for n in (*keys.SHARPNESS_STATS, "ritz_values", "hutchinson_samples", "gauss_newton_per_example")
    ),
    category="Sharpness",
    charts=(
        keys.Chart("Top Hessian eigenvalue: {splits}", (f"{_H}/{{split}}/top_eigenvalue",)),
        keys.Chart("Hessian trace (Hutchinson): {splits}", (f"{_H}/{{split}}/hessian_trace",)),
    ),
    full_options={"splits": ("train", "val"), "num_samples": 24, "num_iterations": 4, "num_vectors": 2},
)
