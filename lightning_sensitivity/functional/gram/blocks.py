"""The pieces every Gram engine shares: which parameters count, and assembling ``G`` from one pass over the examples.

An engine returns ``(G, |g_i|^2, |g_j|^2)`` so that cosines need no second pass. Only trainable parameters
(``requires_grad=True``) count; frozen ones enter the forward pass as constants.

Memory of a chunked Gram (:func:`blockwise_gram`): the features of each chunk are computed once and kept, so the
peak is about

    N * (bytes of one example's representation) + (one chunk's forward and backward) + (one row block) + N * M * 4

where an example's representation is, per trainable parameter, what its engine keeps: the layerwise engine's
explicit per-example gradient ``k`` numbers, or its factors ``T * (p + q)`` (activations ``[T, p]`` and output
gradients ``[T, q]``; token ids and ``[T, q]`` for an embedding), whichever that engine chose; the per-example
engine's explicit gradient ``P``; a sketch's ``k`` (``sketch_dim``). A row block is ``chunk x M`` Gram entries plus,
for factor pairs with ``T > 1`` positions, one ``(chunk T) x (M T)`` product per pair.

When keeping every example's representation would take more than :data:`STORE_BUDGET_BYTES` (estimated from the
first chunk: e.g. explicit per-example gradients of an 11 M-parameter model at N = 256 take 11 GiB), the features
are not kept: each row chunk is paired with freshly computed column chunks, bounding memory by two chunks' features
at the cost of ``K (K + 1) / 2`` feature passes for ``K`` chunks (said once by a warning). ``sketch_dim`` keeps the
one-pass cost in ``O(N k)`` memory instead.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from lightning_sensitivity.functional._chunks import Progress, chunks, report

__all__ = ["LossFn", "blockwise_gram", "layout", "nbytes", "split_trainable", "tensor_map"]

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Above this many bytes of kept per-example representation (rows and columns together), a chunked Gram recomputes
#: column chunks instead of keeping every example's features.
STORE_BUDGET_BYTES = 8 * 1024**3
_SAID_RECOMPUTE: set[tuple[int, int]] = set()


def split_trainable(params: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split detached parameters into trainable and frozen ones, by the ``requires_grad`` of the originals."""
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    if not trainable_names:
        raise ValueError("the model expected to have trainable parameters (requires_grad=True), got none")
    trainable = {k: v for k, v in params.items() if k in trainable_names}
    frozen = {k: v for k, v in params.items() if k not in trainable_names}
    return trainable, frozen


def tensor_map(fn: Callable[..., Tensor], *trees: Any) -> Any:
    """``fn`` applied leaf-wise to tensors in matching trees of dicts, lists, tuples and dataclasses (e.g. a chunk's
    :class:`~.capture.Features`); anything else (a parameter name) is taken from the first tree."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    if isinstance(first, dict):
        return {k: tensor_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(tensor_map(fn, *items) for items in zip(*trees, strict=True))
    if dataclasses.is_dataclass(first):
        fields = {f.name: tensor_map(fn, *(getattr(t, f.name) for t in trees)) for f in dataclasses.fields(first)}
        return dataclasses.replace(first, **fields)
    return first


def layout(tree: Any) -> Any:
    """What must agree between two chunks' features for them to be stored together: names, dtypes and the shape
    of one example of every tensor."""
    if isinstance(tree, Tensor):
        return tree.dtype, tuple(tree.shape[1:])
    if isinstance(tree, dict):
        return tuple((k, layout(v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return tuple(layout(v) for v in tree)
    if dataclasses.is_dataclass(tree):
        return tuple(layout(getattr(tree, f.name)) for f in dataclasses.fields(tree))
    return tree


def nbytes(tree: Any) -> int:
    """Bytes of the tensors of a tree of features."""
    total = 0

    def add(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    tensor_map(add, tree)
    return total


def _rows(tree: Any, piece: slice) -> Any:
    return tensor_map(lambda t: t[piece], tree)


def _store(
    features: Callable[[int, slice], Any], s: int, num: int, pieces: list[slice], on_chunk, first: Any = None
) -> Any:
    """The features of all ``num`` examples of set ``s``, computed chunk by chunk into buffers allocated from the
    first chunk (one chunk: its features as they are); ``first``, when given, is the first chunk's, computed already."""
    if len(pieces) == 1:
        out = features(s, pieces[0]) if first is None else first
        on_chunk()
        return out
    stored = None
    for k, piece in enumerate(pieces):
        f = first if k == 0 and first is not None else features(s, piece)
        if stored is None:
            stored = tensor_map(lambda t: t.new_empty((num, *t.shape[1:])), f)
        elif layout(f) != layout(stored):
            raise RuntimeError("two chunks of examples gave features of different layouts")
        tensor_map(lambda buf, t, piece=piece: buf[piece].copy_(t), stored, f)
        del f
        on_chunk()
    return stored


def blockwise_gram(
    features: Callable[[int, slice], Any],
    cross: Callable[[Any, Any], Tensor],
    squared_norms: Callable[[Any], Tensor],
    num_rows: int,
    num_cols: int | None,
    chunk_size: int | None,
    progress: Progress | None,
    *,
    sketch: Callable[[Any], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, |g_i|^2, |g_j|^2)`` from one pass over the examples, ``chunk_size`` at a time.

    ``features(s, piece)`` computes what examples ``piece`` of set ``s`` (0 = rows, 1 = columns) contribute, a tensor
    or a tree of tensors with the examples on dimension 0 (:func:`tensor_map`); ``num_cols=None`` means the columns
    are the rows (only the upper blocks are computed). Each example's features are computed once and kept (the
    module docstring gives the memory this takes); then the Gram is formed ``chunk_size`` rows at a time against
    all columns, so a chunked call does the work of an unchunked one. ``sketch`` maps a chunk's features to
    ``[n, k]`` sketched gradients (:mod:`.sketch`): only those are kept, and ``G`` is their Gram.
    The results take the blocks' dtype and device (the model's, whatever the inputs -- token ids are integers).
    """
    if sketch is not None:

        def features(s: int, piece: slice, compute=features) -> Tensor:
            return sketch(compute(s, piece))

        def cross(a: Tensor, b: Tensor) -> Tensor:
            return a @ b.T

        def squared_norms(a: Tensor) -> Tensor:
            return a.pow(2).sum(dim=1)

    same = num_cols is None
    row_slices = list(chunks(num_rows, chunk_size))
    col_slices = [] if same else list(chunks(num_cols, chunk_size))
    total = 2 * len(row_slices) + len(col_slices)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        report(progress, done, total)

    first = features(0, row_slices[0])
    per_example = nbytes(first) / max(row_slices[0].stop - row_slices[0].start, 1)
    kept = per_example * (num_rows + (0 if same else num_cols))
    if len(row_slices) + len(col_slices) > 1 and kept > STORE_BUDGET_BYTES:
        return _recomputed(
            features, cross, squared_norms, num_rows, num_cols, row_slices, col_slices, first, kept, progress
        )
    rows_all = _store(features, 0, num_rows, row_slices, step, first)
    cols_all = rows_all if same else _store(features, 1, num_cols, col_slices, step)
    gram = sq1 = sq2 = None
    for rows in row_slices:
        f_rows = _rows(rows_all, rows)
        # One set: the blocks right of the diagonal, mirrored; the diagonal block holds the squared norms.
        cols = slice(rows.start, num_rows) if same else slice(0, num_cols)
        block = cross(f_rows, _rows(cols_all, cols))
        if gram is None:
            gram, sq1, sq2 = _outputs(block, num_rows, num_cols)
        gram[rows, cols] = block
        if same:
            gram[cols, rows] = block.T
            sq1[rows] = block[:, : rows.stop - rows.start].diagonal()
        else:
            sq1[rows] = squared_norms(f_rows)
        del f_rows, block
        step()
    if not same:
        for cols in col_slices:
            sq2[cols] = squared_norms(_rows(cols_all, cols))
    return gram, sq1, sq2


def _outputs(block: Tensor, num_rows: int, num_cols: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Zeroed ``(G, |g_i|^2, |g_j|^2)`` in the first block's dtype and device (one set: the norms are shared)."""
    gram = block.new_zeros(num_rows, num_rows if num_cols is None else num_cols)
    sq1 = block.new_zeros(num_rows)
    return gram, sq1, sq1 if num_cols is None else block.new_zeros(num_cols)


def _recomputed(features, cross, squared_norms, num_rows, num_cols, row_slices, col_slices, first, kept, progress):
    """The Gram with column chunks recomputed for every row chunk (memory: two chunks' features), for features too
    large to keep (:data:`STORE_BUDGET_BYTES`); ``first`` is the first row chunk's features."""
    key = (num_rows, -1 if num_cols is None else num_cols)
    if key not in _SAID_RECOMPUTE:
        _SAID_RECOMPUTE.add(key)
        warnings.warn(
            f"the Gram's per-example gradient representation would take {kept / 1024**3:.1f} GiB for "
            f"{num_rows + (num_cols or 0)} examples (more than {STORE_BUDGET_BYTES / 1024**3:.0f} GiB), so column "
            "chunks are recomputed for every row chunk instead (memory of two chunks, K(K+1)/2 feature passes for K "
            "chunks); `sketch_dim=` estimates the Gram in one pass with O(N k) memory.",
            stacklevel=4,
        )
    same = num_cols is None
    gram = sq1 = sq2 = None
    for i, rows in enumerate(row_slices):
        f_rows = first if i == 0 else features(0, rows)
        targets = [(0, c) for c in row_slices[i:]] if same else [(1, c) for c in col_slices]
        for s, cols in targets:
            f_cols = f_rows if same and cols == rows else features(s, cols)
            block = cross(f_rows, f_cols)
            if gram is None:
                gram, sq1, sq2 = _outputs(block, num_rows, num_cols)
            gram[rows, cols] = block
            if same:
                gram[cols, rows] = block.T
                if cols == rows:
                    sq1[rows] = block.diagonal()
            elif i == 0:
                sq2[cols] = squared_norms(f_cols)
            del f_cols, block
        if not same:
            sq1[rows] = squared_norms(f_rows)
        del f_rows
        report(progress, i + 1, len(row_slices))
    return gram, sq1, sq2
