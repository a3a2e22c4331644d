"""``F.multi_head_attention_forward`` rebuilt from ops the layerwise capture recognises.

``nn.MultiheadAttention`` hands its parameters to one fused torch function, so the capture would see a single call
it has no Gram for. Rebuilding that call from batch-first ``F.linear`` projections, broadcast bias tokens and
parameter-free attention lets every parameter be recorded by the ordinary rules; the layerwise engine's check
against explicit gradients compares the result with the real ``F.multi_head_attention_forward``.

Each projection is computed as the full packed ``F.linear(x, in_proj_weight, in_proj_bias)`` and then split, so the
recorded op uses the parameter itself (the unused parts of the output receive zero gradient): self-attention costs
one projection, as in torch; cross-attention with distinct query/key/value tensors costs one per distinct input.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


class AttentionUnsupported(Exception):
    """An ``F.multi_head_attention_forward`` option the rebuild does not cover."""


def multi_head_attention(
    args: tuple,
    kwargs: dict,
    linear: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    broadcast: Callable[[Tensor, tuple[int, ...]], Tensor],
) -> tuple[Tensor, Tensor | None]:
    """The value of ``F.multi_head_attention_forward(*args, **kwargs)`` with every parameter used through
    ``linear(x, weight, bias)`` (an ``F.linear`` on batch-first ``x``) or ``broadcast(parameter, shape)``
    (an ``expand``), in eval semantics (no dropout)."""
    a = _SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    a = a.arguments
    query, key, value = a["query"], a["key"], a["value"]
    if query.dim() != 3:
        raise AttentionUnsupported("unbatched multi-head attention (the batch must be a dimension)")
    if a["static_k"] is not None or a["static_v"] is not None:
        raise AttentionUnsupported("multi-head attention with static_k/static_v")
    if a["training"] and a["dropout_p"] > 0:
        raise AttentionUnsupported("multi-head attention dropout in training mode")
    heads, embed = a["num_heads"], a["embed_dim_to_check"]
    n = query.shape[1]
    # Sequence-first [T, N, E] -> [N, T, E]: recorded layers need the example index first.
    first = {}

    def batch_first(t: Tensor) -> Tensor:
        return first.setdefault(id(t), t.transpose(0, 1))

    q_in, k_in, v_in = batch_first(query), batch_first(key), batch_first(value)
    bias = a["in_proj_bias"]
    if not a["use_separate_proj_weight"]:
        packed: dict[int, tuple[Tensor, ...]] = {}

        def project(x: Tensor, part: int) -> Tensor:
            if id(x) not in packed:
                packed[id(x)] = linear(x, a["in_proj_weight"], bias).chunk(3, dim=-1)
            return packed[id(x)][part]

        q, k, v = project(q_in, 0), project(k_in, 1), project(v_in, 2)
    else:
        biases = (None, None, None) if bias is None else bias.chunk(3)
        if bias is not None:
            # Slices of ``in_proj_bias`` are not the parameter; add the whole bias, broadcast, per projection.
            biases = tuple(broadcast(bias, (n, x.shape[1], 3 * embed)).chunk(3, dim=-1)[i]
                           for i, x in enumerate((q_in, k_in, v_in)))  # fmt: skip
        q, k, v = (
            linear(x, a[f"{name}_proj_weight"], None) + (0 if b is None else b)
            for x, name, b in zip((q_in, k_in, v_in), "qkv", biases, strict=False)
        )
    attn_mask, padding = a["attn_mask"], a["key_padding_mask"]
    if a["bias_k"] is not None and a["bias_v"] is not None:
        k = torch.cat([k, broadcast(a["bias_k"], (n, 1, embed))], dim=1)
        v = torch.cat([v, broadcast(a["bias_v"], (n, 1, embed))], dim=1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        padding = None if padding is None else F.pad(padding, (0, 1))
    elif a["bias_k"] is not None or a["bias_v"] is not None:
        raise AttentionUnsupported("multi-head attention with only one of bias_k, bias_v")
    head_dim = embed // heads

    def split(t: Tensor) -> Tensor:  # [N, S, E] -> [N, H, S, E / H]
        return t.reshape(n, t.shape[1], heads, head_dim).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    if a["add_zero_attn"]:
        k = torch.cat([k, k.new_zeros(n, heads, 1, head_dim)], dim=2)
        v = torch.cat([v, v.new_zeros(n, heads, 1, head_dim)], dim=2)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        padding = None if padding is None else F.pad(padding, (0, 1))
    target, source = q.shape[2], k.shape[2]
    terms = []
    if attn_mask is not None:
        terms.append(_additive(attn_mask, q).reshape(-1, heads if attn_mask.dim() == 3 else 1, target, source))
    elif a["is_causal"]:
        terms.append(_additive(torch.ones(target, source, dtype=torch.bool, device=q.device).triu(1), q))
    if padding is not None:
        terms.append(_additive(padding, q).reshape(n, 1, 1, source))
    mask = sum(terms[1:], terms[0]) if terms else None  # None lets SDPA pick a fused kernel
    if a["need_weights"]:
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
        out = weights @ v
        weights = weights.mean(dim=1) if a["average_attn_weights"] else weights
    else:
        out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    out = linear(out.transpose(1, 2).reshape(n, target, embed), a["out_proj_weight"], a["out_proj_bias"])
    return out.transpose(0, 1), weights


def _additive(mask: Tensor, like: Tensor) -> Tensor:
    """A boolean mask (``True`` = not attended, torch's MHA convention) as ``-inf`` entries; a float mask as is."""
    if mask.dtype == torch.bool:
        return like.new_zeros(mask.shape).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)
