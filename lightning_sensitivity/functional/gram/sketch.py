"""Sketched Grams: ``G ~ S S^T`` from ``[N, k]`` random projections of the per-example gradients, never formed.

Each piece of a chunk's features (a parameter's explicit gradient ``g [n, m]``, or a factor pair ``A [n, T, p]``,
``D [n, T, q]`` with ``g = sum_t d_t a_t^T``) is projected to ``k`` numbers by its own random map ``R`` with
``E[R^T R] = I``, and the projections of all pieces are summed: ``s = sum_l R_l g_l``. Maps of different pieces are
independent and zero-mean, so ``E[s_i . s_j] = sum_l g_il . g_jl = G[i, j]`` -- unbiased, with a variance of about
``(|g_i|^2 |g_j|^2 + G[i, j]^2) / k``, i.e. a relative error ``~ 1 / sqrt(k)`` (a dense sign sketch of the whole
gradient has the same). Memory: ``N k`` numbers plus the maps.

A factor pair is projected row-wise-Kronecker (Khatri-Rao): row ``r`` of its map is ``u_r (x) v_r`` with random
signs ``u_r [q]``, ``v_r [p]``, so ``s_r = sum_t (u_r . d_t)(v_r . a_t)`` costs ``n T k (p + q)`` and the ``q x p``
gradient is never formed (token ids index ``v``: an embedding's one-hot inputs). A full Kronecker map
``R_q (x) R_p`` with ``k = k_q k_p`` would be cheaper, but for a one-position layer (``g = d a^T``) it estimates
``(d_i . d_j)(a_i . a_j)`` as a product of two independent ``sqrt(k)``-dimensional estimates: a relative error
``~ k^(-1/4)``, not ``k^(-1/2)``. An explicit gradient of ``m`` numbers is projected by a dense sign matrix
``[m, k]`` when that is small, else viewed as a ``ceil(sqrt(m)) x ceil(m / ceil(sqrt(m)))`` matrix (zero-padded) and
projected Khatri-Rao like a factor pair, so the maps take ``O(k sqrt(m))`` memory.

The maps are drawn from a private ``torch.Generator`` seeded with ``seed`` (never the global RNG), on the CPU, so a
seed gives the same sketch on every device and every process; one map per piece, in the order of the first chunk's
pieces, kept for the later chunks and the second set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["GradientSketch"]

#: Explicit pieces with at most this many map entries (``m k``) get a dense sign map.
DENSE_ENTRIES = 1 << 22
#: Khatri-Rao projections run in slabs of sketch coordinates so that the ``[n, T, slab]`` products stay this small.
SLAB_ENTRIES = 1 << 24


class GradientSketch:
    """``sketch(features) -> [n, k]``: sketched per-example gradients of a chunk's features (a
    :class:`~.capture.Features` or an ``[n, P]`` tensor of explicit gradients), with maps drawn from ``seed``.

    ``vocabulary`` maps a parameter name to its number of rows, for factor pairs whose inputs are token ids.
    """

    def __init__(self, dim: int, seed: int, vocabulary: dict[str, int] | None = None) -> None:
        self.dim, self.seed = dim, seed
        self.vocabulary = vocabulary or {}
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._maps: dict[tuple, tuple[Tensor, ...]] = {}

    def _signs(self, rows: int, like: Tensor) -> Tensor:
        signs = torch.randint(0, 2, (rows, self.dim), generator=self._generator, dtype=torch.int8)
        return (signs.to(device=like.device, dtype=like.dtype) * 2 - 1).contiguous()

    def _map(self, key: tuple, shapes: tuple[int, ...], like: Tensor) -> tuple[Tensor, ...]:
        if key not in self._maps:
            self._maps[key] = tuple(self._signs(rows, like) for rows in shapes)
        maps = self._maps[key]
        if maps[0].dtype != like.dtype or maps[0].device != like.device:
            maps = tuple(m.to(device=like.device, dtype=like.dtype) for m in maps)
        return maps

    def __call__(self, features) -> Tensor:
        if isinstance(features, Tensor):
            flat, kron = {"": features}, []
        else:
            flat, kron = features.flat, features.kron
        out = None
        for index, (name, g) in enumerate(flat.items()):
            s = self._explicit(("flat", index, name), g)
            out = s if out is None else out + s
        for index, (name, a, d) in enumerate(kron):
            s = self._pair(("kron", index, name), a, d)
            out = s if out is None else out + s
        return out / math.sqrt(self.dim)

    def _explicit(self, key: tuple, g: Tensor) -> Tensor:
        n, m = g.shape
        if m * self.dim <= DENSE_ENTRIES:
            (r,) = self._map(key, (m,), g)
            return g @ r
        rows = math.isqrt(m - 1) + 1
        cols = -(-m // rows)
        if rows * cols != m:
            g = torch.nn.functional.pad(g, (0, rows * cols - m))
        u, v = self._map(key, (rows, cols), g)
        return self._khatri_rao(g.reshape(n, rows, cols), v, u)

    def _pair(self, key: tuple, a: Tensor, d: Tensor) -> Tensor:
        if a.is_floating_point():
            u, v = self._map(key, (d.shape[2], a.shape[2]), d)
            return self._khatri_rao(a, v, u, d)
        name = key[2]
        if name not in self.vocabulary:
            raise ValueError(f"the sketch expected the number of rows of parameter {name!r}, got none")
        u, v = self._map(key, (d.shape[2], self.vocabulary[name]), d)
        ids = a.reshape(a.shape[0], -1)
        return self._khatri_rao(None, v, u, d, ids=ids)

    def _khatri_rao(self, a, v: Tensor, u: Tensor, d: Tensor | None = None, ids: Tensor | None = None) -> Tensor:
        """``s[n, r] = sum_t (u_r . d_t)(v_r . a_t)``; with ``d=None``, ``a`` is ``[n, T, p]`` and ``s[n, r] =
        sum_t u_{t r} (v_r . a_t)`` (an explicit gradient viewed as a ``T x p`` matrix)."""
        n, positions = ids.shape if ids is not None else a.shape[:2]
        slab = max(1, min(self.dim, SLAB_ENTRIES // max(1, n * positions)))
        parts = []
        for start in range(0, self.dim, slab):
            cols = slice(start, min(start + slab, self.dim))
            av = v[ids, cols] if ids is not None else a @ v[:, cols]  # [n, T, slab]
            if d is None:
                parts.append((av * u[:, cols]).sum(dim=1))
            else:
                parts.append((av * (d @ u[:, cols])).sum(dim=1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
