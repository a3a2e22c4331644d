"""The pieces every Gram engine shares: which parameters count, and assembling ``G`` block by block.

An engine returns ``(G, |g_i|^2, |g_j|^2)`` so that cosines need no second pass. Only trainable parameters
(``requires_grad=True``) count; frozen ones enter the forward pass as constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from lightning_sensitivity.functional._model import Progress, chunks, report

LossFn = Callable[[Tensor, Tensor], Tensor]


def split_trainable(params: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split detached parameters into trainable and frozen ones, by the ``requires_grad`` of the originals."""
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    if not trainable_names:
        raise ValueError("the model expected to have trainable parameters (requires_grad=True), got none")
    trainable = {k: v for k, v in params.items() if k in trainable_names}
    frozen = {k: v for k, v in params.items() if k not in trainable_names}
    return trainable, frozen


def blockwise_gram(
    features: Callable[[int, slice], Any],
    cross: Callable[[Any, Any], Tensor],
    squared_norms: Callable[[Any], Tensor],
    num_rows: int,
    num_cols: int | None,
    chunk_size: int | None,
    progress: Progress | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, |g_i|^2, |g_j|^2)`` assembled block by block from per-chunk features.

    ``features(s, piece)`` computes what examples ``piece`` of set ``s`` (0 = rows, 1 = columns) contribute;
    ``num_cols=None`` means the columns are the rows (only the upper blocks are computed). With ``chunk_size`` set,
    column features are recomputed for every row chunk rather than stored, so memory is bounded by two chunks.
    The results take the blocks' dtype and device (the model's, whatever the inputs -- token ids are integers).
    """
    same = num_cols is None
    row_slices = list(chunks(num_rows, chunk_size))
    col_slices = row_slices if same else list(chunks(num_cols, chunk_size))
    gram = sq1 = sq2 = None
    total = len(row_slices) * (len(row_slices) + 1) // 2 if same else len(row_slices) * len(col_slices)
    done = 0
    for i, rows in enumerate(row_slices):
        f_rows = features(0, rows)
        # With one set the diagonal block holds the squared norms: no second pass over the features.
        sq_rows = None if same else squared_norms(f_rows)
        for j, cols in enumerate(col_slices):
            if same and j < i:
                continue
            f_cols = f_rows if (same and j == i) else features(0 if same else 1, cols)
            block = cross(f_rows, f_cols)
            if gram is None:
                gram = block.new_zeros(num_rows, num_rows if same else num_cols)
                sq1 = block.new_zeros(num_rows)
                sq2 = sq1 if same else block.new_zeros(num_cols)
            gram[rows, cols] = block
            if same:
                gram[cols, rows] = block.T
                if j == i:
                    sq1[rows] = block.diagonal()
            else:
                sq1[rows] = sq_rows
                if i == 0:
                    sq2[cols] = squared_norms(f_cols)
            done += 1
            report(progress, done, total)
    return gram, sq1, sq2
