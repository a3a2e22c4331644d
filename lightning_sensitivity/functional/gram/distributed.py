"""One Gram shared between processes: each forms the rows it owns, by an explicit shard map and an injected exchange.

A :class:`ShardMap` says which rows of an ``N``-example Gram each of ``world_size`` processes owns: contiguous
blocks of ``ceil(N / world_size)`` rows, the last blocks padded by repeating row ``N - 1`` so that every process
exchanges tensors of the same shape. An :class:`Exchange` is the one collective this module needs, given by the
caller (the Lightning side builds it from its lockstep of agreements; nothing here imports Lightning):
``exchange(fn, shard)`` runs ``fn(shard.index())`` on every process -- each on its own rows -- and returns to every
process all rows' results in row order, the padding dropped; when ``fn`` fails on one process every process raises
(the failing one its own error, the others :class:`PeerFailure`), at the same point.

:func:`shared_gram_rows` is the algorithm: when the layerwise engine covers the model (unchunked, no keyword inputs,
exact), each process computes the layer factors of its own examples (:func:`gram_factors`, one batched pass), the
factors are exchanged, and each forms its rows against all examples from them (:func:`gram_rows`); otherwise (or
when the layerwise engine fails on some process, which every process learns at the same exchange) each process forms
its block of rows against all examples with the engines (memory bounded by ``chunk_size``). Either way the rows
are those of the single-process Gram, at ``1 / world_size`` of the per-example work per process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.functional._purity import measurement_context
from lightning_sensitivity.functional.gram import layerwise_factors as lg
from lightning_sensitivity.functional.gram import plan as plans
from lightning_sensitivity.functional.gram.call import GramCall
from lightning_sensitivity.functional.gram.layerwise import verify
from lightning_sensitivity.functional.gram.recognised_ops import LayerwiseUnsupported

__all__ = ["Exchange", "PeerFailure", "ShardMap", "gram_factors", "gram_rows", "shared_gram", "shared_gram_rows"]

RowsFn = Callable[[Tensor], dict[str, Tensor]]


class PeerFailure(RuntimeError):
    """Another process could not compute its part of a shared measurement (or has left it)."""


@dataclass(frozen=True)
class ShardMap:
    """Which rows of ``num_rows`` each of ``world_size`` processes owns; this process is ``rank``.

    Rank ``r`` owns rows ``[r s, min((r + 1) s, num_rows))`` with ``s = ceil(num_rows / world_size)``; its
    :meth:`index` has ``s`` entries, padded with ``num_rows - 1``.

    Example:
        >>> ShardMap(5, 2, 0).index().tolist(), ShardMap(5, 2, 1).index().tolist(), ShardMap(5, 2, 1).owned()
        ([0, 1, 2], [3, 4, 4], slice(3, 5, None))
    """

    num_rows: int
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        check_int(self.num_rows, "num_rows", minimum=1)
        check_int(self.world_size, "world_size", minimum=1)
        check_int(self.rank, "rank", minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"`rank` expected to be below world_size={self.world_size}, got {self.rank}")

    @property
    def size(self) -> int:
        """Rows per process, padding included: ``ceil(num_rows / world_size)``."""
        return math.ceil(self.num_rows / self.world_size)

    def index(self, rank: int | None = None) -> Tensor:
        """``[size]`` positions of the rows of ``rank`` (default this process), padded with ``num_rows - 1``."""
        r = self.rank if rank is None else rank
        return torch.arange(r * self.size, (r + 1) * self.size).clamp_(max=self.num_rows - 1)

    def owned(self, rank: int | None = None) -> slice:
        """The rows ``rank`` (default this process) owns, without the padding (possibly empty)."""
        r = self.rank if rank is None else rank
        start = min(r * self.size, self.num_rows)
        return slice(start, min(start + self.size, self.num_rows))

    def owned_in_index(self, rank: int | None = None) -> slice:
        """The entries of :meth:`index` that are owned rows (the rest is padding)."""
        owned = self.owned(rank)
        return slice(0, owned.stop - owned.start)


class Exchange(Protocol):
    """``exchange(fn, shard)``: every process's ``fn(shard.index())`` (a dict of tensors of first dimension
    ``shard.size``, the same keys, dtypes and trailing shapes everywhere), returned to every process as
    ``[num_rows, ...]`` in row order; raises on every process when ``fn`` failed on one (:class:`PeerFailure` on
    the others). One process: ``fn(shard.index())`` itself (:func:`local_exchange`)."""

    def __call__(self, fn: RowsFn, shard: ShardMap) -> dict[str, Tensor]: ...


def local_exchange(fn: RowsFn, shard: ShardMap) -> dict[str, Tensor]:
    """The :class:`Exchange` of one process (``world_size == 1``)."""
    if shard.world_size != 1:
        raise ValueError(f"`shard` expected world_size=1 for the local exchange, got {shard.world_size}")
    return {k: v[: shard.num_rows] for k, v in fn(shard.index()).items()}


def shared_gram_rows(call: GramCall, shard: ShardMap, exchange: Exchange) -> tuple[Tensor, Tensor]:
    """``(G[shard.index(), :], |g_i|^2 of all N)``: this process's rows ``[shard.size, N]`` of the one-set Gram of
    ``call`` (padding rows included) and every example's squared norm ``[N]``, identical on every process.

    Every process calls it with the same ``call`` (all examples) and its own ``shard``; ``exchange`` is the
    collective (see the module docstring). One exchange when the layerwise engine serves the call (the factors: every
    process then forms its rows and all norms from them), else two (the factors' attempt, if any, and the norms of
    the row blocks)."""
    return _shared(call, shard, exchange, gather=False)


def shared_gram(call: GramCall, shard: ShardMap, exchange: Exchange) -> tuple[Tensor, Tensor]:
    """``(G [N, N], |g_i|^2 [N])``: the whole one-set Gram of ``call`` on every process, each having formed its
    rows (as :func:`shared_gram_rows`) and exchanged them with the norms -- for what needs all pairs everywhere."""
    return _shared(call, shard, exchange, gather=True)


def _shared(call: GramCall, shard: ShardMap, exchange: Exchange, *, gather: bool) -> tuple[Tensor, Tensor]:
    if not call.same:
        raise ValueError("`call` expected one set (cols=None): the rows of its Gram are shared, got two sets")
    n = len(call.rows)
    if shard.num_rows != n:
        raise ValueError(f"`shard` expected num_rows={n} (the call's examples), got {shard.num_rows}")
    mine: dict[str, Tensor] = {}

    def shared(rows_and_norms: Callable[[Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        def fn(index: Tensor) -> dict[str, Tensor]:
            mine["gram"], sq = rows_and_norms(index)
            return {"gram": mine["gram"], "sq": sq} if gather else {"sq": sq}

        out = exchange(fn, shard)
        return out["gram"] if gather else mine["gram"], out["sq"]

    # Sketched: each process sketches its rows and all columns with the same seeded maps (the factors are exact).
    layerwise = call.method != "per_example" and call.sketch_dim is None
    if layerwise and call.chunk_size is None and not call.rows.model_kwargs:
        try:
            factors = exchange(lambda index: gram_factors(call.against_all(index), reference_rows=n), shard)
        except (LayerwiseUnsupported, PeerFailure):
            # The layerwise engine does not cover the model on some process (each learns it at the same exchange):
            # every process goes on to the row blocks below, still in step. A process that left the measurement
            # instead broke the exchange, and the next one raises on every process.
            factors = None
        if factors is not None:
            # Every process holds all factors: its rows, and every example's norm (O(N) per layer), without another
            # exchange unless the whole Gram is wanted.
            with torch.no_grad():
                sq = lg.squared_norms(_features(factors))
            if gather:
                return shared(lambda index: gram_rows(factors, index))
            return gram_rows(factors, shard.index())[0], sq

    from lightning_sensitivity.functional.gram import gram_and_norms  # the dispatcher imports this package

    def block(index: Tensor) -> tuple[Tensor, Tensor]:
        # This process's block of Gram rows against every example (memory bounded by `chunk_size`).
        gram, sq, _ = gram_and_norms(call.against_all(index))
        return gram, sq

    return shared(block)


def gram_factors(call: GramCall, *, reference_rows: int) -> dict[str, Tensor]:
    """Layerwise Gram factors of the rows of ``call`` as a dict of tensors with first dimension ``len(call.rows)``.

    One batched forward and backward pass (the layerwise engine's, with its self-check against explicit gradients).
    ``reference_rows`` is the number of rows the factors will be multiplied at (the number of all examples); it
    decides, alike for every process, which layers are kept as factor pairs. Factors of different example sets fit
    together only when made with the same ``reference_rows``.

    Returns:
        ``{"flat:<param>": [N, k], "kron.<i>.a:<param>": [N, T, p], "kron.<i>.d:<param>": [N, T, q], ...}``;
        concatenating the dicts of several example sets along dimension 0 gives the factors of their union.

    Raises:
        LayerwiseUnsupported: the layerwise engine does not cover the model (use the per-example engine).

    Example:
        >>> from lightning_sensitivity.functional.gram import build_gram_call
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
        >>> call = build_gram_call(model, x, y, loss_fn=torch.nn.functional.cross_entropy)
        >>> factors = gram_factors(call, reference_rows=6)
        >>> from lightning_sensitivity.functional import loss_gradient_gram
        >>> torch.allclose(gram_rows(factors, torch.arange(6))[0], loss_gradient_gram(model, x, y), atol=1e-6)
        True
    """
    model, (x, y, kw) = call.model, call.sets[0]
    key = call.structure_key()
    remembered = plans.remembered(model, key)
    explicit = dict(remembered.explicit) if remembered is not None else {}
    with measurement_context(model):
        info: dict = {}
        feats = lg.layer_features(
            model, call.trainable, call.frozen, call.buffers, x, y, call.loss_fn, reference_rows, model_kwargs=kw,
            explicit=explicit, info=info, sharded=call.sharded,
        )  # fmt: skip
        remember = info.get("host_read") is None  # a forward reading batch values is checked at every call
        failure = verify(
            model, call.trainable, call.frozen, call.buffers, x, y, kw, call.loss_fn, feats, remember=remember,
            sharded=call.sharded,
        )  # fmt: skip
        if failure is not None:
            raise failure
    loop = plans.vmap_refusal(model, key) if explicit else None
    plans.remember(model, key, plans.GramPlan("layerwise", tuple(sorted(explicit.items())), loop=loop))
    out = {f"flat:{name}": g.detach() for name, g in feats.flat.items()}
    for i, (name, a, d) in enumerate(feats.kron):
        out[f"kron.{i:04d}.a:{name}"], out[f"kron.{i:04d}.d:{name}"] = a.detach(), d.detach()
    return out


def _features(factors: dict[str, Tensor]) -> lg.Features:
    flat = {key.split(":", 1)[1]: t for key, t in factors.items() if key.startswith("flat:")}
    pairs = sorted(key for key in factors if key.startswith("kron.") and ".a:" in key)
    kron = [(key.split(":", 1)[1], factors[key], factors[key.replace(".a:", ".d:", 1)]) for key in pairs]
    return lg.Features(dict(sorted(flat.items())), kron)


def gram_rows(factors: dict[str, Tensor], index: Tensor | slice) -> tuple[Tensor, Tensor]:
    """``(G[index, :], |g_index|^2)`` from the :func:`gram_factors` of all ``N`` examples: ``[s, N]`` and ``[s]``."""
    feats = _features(factors)
    rows = lg.Features(
        {k: g[index] for k, g in feats.flat.items()}, [(k, a[index], d[index]) for k, a, d in feats.kron]
    )
    with torch.no_grad():
        return lg.cross(rows, feats), lg.squared_norms(rows)
