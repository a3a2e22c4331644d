"""The Gram of per-example loss gradients split by layer: ``G = sum_l G_l`` with ``G_l[i, j] = g_i(l) . g_j(l)``.

A layer's block uses only the gradient entries of its parameters, so the blocks sum exactly to
:func:`~lightning_sensitivity.functional.loss_gradient_gram`. The layerwise engine forms its factors per parameter
anyway (:mod:`.layerwise_factors`); here they are summed per layer instead of over the whole model. A model that engine
does not cover falls back to explicit per-example gradients, split by parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sensitivity.functional._chunks import chunks
from lightning_sensitivity.functional._inputs import ModelKwargs, take
from lightning_sensitivity.functional._purity import measurement_context
from lightning_sensitivity.functional.gram import GramMethod, LossFn, build_gram_call, run_engines
from lightning_sensitivity.functional.gram import layerwise_factors as lg
from lightning_sensitivity.functional.gram.layerwise import CheckedFeatures
from lightning_sensitivity.functional.gram.per_example import per_example_gradients


def per_layer_gram(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    inputs2: Tensor | None = None,
    targets2: Tensor | None = None,
    *,
    layer_groups: Mapping[str, Sequence[str]] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int | None = None,
    method: GramMethod = "auto",
    model_kwargs: ModelKwargs | None = None,
    model_kwargs2: ModelKwargs | None = None,
) -> dict[str, Tensor]:
    """``{layer: [N, M] Gram block}`` whose values sum to ``loss_gradient_gram(model, inputs, targets, inputs2,
    targets2)``.

    Args:
        model, inputs, targets, inputs2, targets2, loss_fn, chunk_size, method, model_kwargs, model_kwargs2: as in
            :func:`~lightning_sensitivity.functional.loss_gradient_gram`.
        layer_groups: ``{"name": ["module.prefix", ...]}``; a parameter belongs to the group with the longest
            prefix matching its name (``""`` matches every parameter, for "the rest"). Every trainable parameter
            must be covered and every prefix must match a parameter. Default: one layer per module that owns
            parameters, named by its prefix (parameters of the root module by their own names).

    Returns:
        Blocks in the order layers first appear in ``model.named_parameters()``; a group without trainable
        parameters has a zero block.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        >>> x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
        >>> blocks = per_layer_gram(model, x, y)
        >>> list(blocks)
        ['0', '2']
        >>> from lightning_sensitivity.functional import loss_gradient_gram
        >>> torch.allclose(sum(blocks.values()), loss_gradient_gram(model, x, y), atol=1e-5)
        True
    """
    call = build_gram_call(
        model, inputs, targets, inputs2, targets2, loss_fn=loss_fn, chunk_size=chunk_size, method=method,
        model_kwargs=model_kwargs, model_kwargs2=model_kwargs2,
    )  # fmt: skip
    module, sets = call.model, call.sets
    groups, layers = _groups(module, layer_groups)
    sizes = [(name, t.numel()) for name, t in call.trainable.items()]

    def layerwise(explicit: dict[str, str]) -> dict[str, Tensor]:
        features = CheckedFeatures(call, explicit)
        blocks = _assemble(features, lg.cross_by_name, groups, layers, sets, chunk_size)
        features.finish()
        return blocks

    def per_example() -> dict[str, Tensor]:
        def explicit(s: int, piece: slice) -> dict[str, Tensor]:
            x, y, kw = sets[s]
            flat = per_example_gradients(
                module, call.trainable, call.frozen, call.buffers, x[piece], y[piece], loss_fn, take(kw, piece)
            )
            return dict(zip([n for n, _ in sizes], flat.split([k for _, k in sizes], dim=1), strict=False))

        def explicit_cross(rows: dict[str, Tensor], cols: dict[str, Tensor]) -> dict[str, Tensor]:
            return {name: g @ cols[name].T for name, g in rows.items()}

        return _assemble(explicit, explicit_cross, groups, layers, sets, chunk_size)

    with measurement_context(module):
        return run_engines(call, layerwise, per_example)


def _assemble(
    features, cross_by_name, groups: dict[str, str], layers: list[str], sets, chunk_size
) -> dict[str, Tensor]:
    """Per-layer ``[N, M]`` blocks, chunk pair by chunk pair (the upper pairs only when the columns are the rows)."""
    (x1, _, _), (x2, _, _) = sets
    same = x2 is None
    rows_all = list(chunks(x1.shape[0], chunk_size))
    cols_all = rows_all if same else list(chunks(x2.shape[0], chunk_size))
    out: dict[str, Tensor] = {}
    for i, rows in enumerate(rows_all):
        f_rows = features(0, rows)
        for j, cols in enumerate(cols_all):
            if same and j < i:
                continue
            f_cols = f_rows if (same and i == j) else features(0 if same else 1, cols)
            blocks = cross_by_name(f_rows, f_cols)
            if not out:  # the model's dtype, whatever the inputs' (token ids are integers)
                like = next(iter(blocks.values()))
                out = {g: like.new_zeros(x1.shape[0], x1.shape[0] if same else x2.shape[0]) for g in layers}
            for name, block in blocks.items():
                out[groups[name]][rows, cols] += block
                if same and j != i:
                    out[groups[name]][cols, rows] += block.T
    return {g: b.detach() for g, b in out.items()}


def _groups(model: nn.Module, layer_groups: Mapping[str, Sequence[str]] | None) -> tuple[dict[str, str], list[str]]:
    """``({parameter name: layer name}, layer names in order)`` over every parameter of ``model``."""
    names = [name for name, _ in model.named_parameters()]
    if layer_groups is None:
        assigned = {name: name.rpartition(".")[0] or name for name in names}
        return assigned, list(dict.fromkeys(assigned.values()))
    if not isinstance(layer_groups, Mapping):
        raise TypeError(
            f"`layer_groups` expected a mapping {{name: [module prefix, ...]}}, got {type(layer_groups).__name__}"
        )
    prefixes: dict[str, str] = {}
    for group, members in layer_groups.items():
        if not isinstance(group, str) or isinstance(members, str) or not isinstance(members, Sequence):
            raise TypeError(f"`layer_groups` expected str -> list of module prefixes, got {group!r}: {members!r}")
        for prefix in members:
            if not isinstance(prefix, str):
                raise TypeError(f"`layer_groups[{group!r}]` expected module prefixes (str), got {prefix!r}")
            if prefix in prefixes and prefixes[prefix] != group:
                raise ValueError(f"`layer_groups` expected each prefix in one group, got {prefix!r} in "
                                 f"{prefixes[prefix]!r} and {group!r}")  # fmt: skip
            if not any(_covers(prefix, name) for name in names):
                raise ValueError(f"`layer_groups[{group!r}]` expected prefixes of parameter names, got {prefix!r}")
            prefixes[prefix] = group
    assigned = {}
    for name in names:
        matching = [p for p in prefixes if _covers(p, name)]
        if matching:
            assigned[name] = prefixes[max(matching, key=len)]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for name in names if name in trainable and name not in assigned]
    if missing:
        raise ValueError(f"`layer_groups` expected to cover every trainable parameter, got none for {missing} "
                         "(add a group with the prefix \"\" for the rest)")  # fmt: skip
    layers = list(dict.fromkeys(assigned.values()))
    return assigned, layers + [g for g in layer_groups if g not in layers]  # groups shadowed by longer prefixes


def _covers(prefix: str, name: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")
