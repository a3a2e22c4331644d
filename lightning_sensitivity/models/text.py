"""A small token-id Transformer classifier, split at the embedding so the monitors can differentiate through it.

Token ids are integers, so an input-output Jacobian only makes sense with respect to the embedded sequence:
:meth:`TextClassifier.embed` maps ids to ``[N, T, d_model]`` vectors and :meth:`TextClassifier.forward_embedded` maps
those vectors (plus the attention mask) to logits. ``forward`` is the composition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_sensitivity._checks import check_int, check_number

__all__ = ["TextClassifier"]


def _check_positive_int(name: str, value: object) -> int:
    return check_int(value, name, minimum=1)


class TextClassifier(nn.Module):
    """Token + learned positional embedding, a ``nn.TransformerEncoder``, mean pooling over real tokens, linear head.

    Padding never influences the logits: padded positions are masked out as attention keys
    (``src_key_padding_mask``) and left out of the mean pool, so their token ids do not change the output and the
    gradient with respect to their embeddings is exactly zero. Id 0 is the padding id.

    Args:
        vocab_size: number of token ids, including the padding id 0.
        num_classes: number of output logits.
        d_model: embedding and model width.
        num_layers: encoder layers.
        num_heads: attention heads (must divide ``d_model``).
        dim_feedforward: hidden width of each layer's ReLU feed-forward block.
        dropout: dropout of the encoder layers (inactive in eval mode, where the monitors measure).
        max_length: longest sequence the positional embedding covers.

    Raises:
        TypeError, ValueError: on invalid arguments.

    Example::

        >>> model = TextClassifier(vocab_size=100, num_classes=3).eval()
        >>> ids = torch.tensor([[5, 7, 9, 0], [3, 0, 0, 0]])
        >>> model(ids, attention_mask=ids != 0).shape
        torch.Size([2, 3])
        >>> model.embed(ids).shape
        torch.Size([2, 4, 32])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        d_model: int = 32,
        num_layers: int = 2,
        num_heads: int = 2,
        dim_feedforward: int = 64,
        dropout: float = 0.1,
        max_length: int = 128,
    ) -> None:
        super().__init__()
        _check_positive_int("vocab_size", vocab_size)
        if vocab_size < 2:
            raise ValueError(f"`vocab_size` expected an int >= 2 (padding id 0 plus tokens), got {vocab_size!r}")
        _check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"`num_classes` expected an int >= 2, got {num_classes!r}")
        for name, value in (
            ("d_model", d_model),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("dim_feedforward", dim_feedforward),
            ("max_length", max_length),
        ):
            _check_positive_int(name, value)
        if d_model % num_heads:
            raise ValueError(f"`num_heads` expected a divisor of d_model={d_model}, got {num_heads!r}")
        check_number(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.position_embedding = nn.Embedding(max_length, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward, dropout=dropout, activation="relu", batch_first=True
        )
        # nested tensors drop padded positions inside the encoder; keep dense tensors so every transform
        # (autograd, torch.func) sees the same computation in train and eval mode
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token plus positional embeddings ``[N, T, d_model]`` of integer ``input_ids`` ``[N, T]``."""
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"`input_ids` expected a Tensor, got {type(input_ids).__name__}")
        if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            shape = tuple(input_ids.shape)
            raise ValueError(f"`input_ids` expected an integer tensor [N, T], got {input_ids.dtype} of shape {shape}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"`input_ids` expected at most max_length={self.max_length} positions, got {input_ids.shape[1]}"
            )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)

    def forward_embedded(self, embedded: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[N, num_classes]`` of embedded sequences ``[N, T, d_model]``.

        Args:
            embedded: output of :meth:`embed` (or any tensor of that shape).
            attention_mask: ``[N, T]``, nonzero/True for real tokens and 0/False for padding; None = no padding.
        """
        if not isinstance(embedded, Tensor) or embedded.ndim != 3:
            shape = tuple(embedded.shape) if isinstance(embedded, Tensor) else type(embedded).__name__
            raise ValueError(f"`embedded` expected a tensor [N, T, d_model], got {shape}")
        if attention_mask is None:
            real = torch.ones(embedded.shape[:2], dtype=torch.bool, device=embedded.device)
        else:
            if not isinstance(attention_mask, Tensor) or attention_mask.shape != embedded.shape[:2]:
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else attention_mask
                raise ValueError(f"`attention_mask` expected shape {tuple(embedded.shape[:2])}, got {shape}")
            real = attention_mask != 0
        # a row with no real token would mask every key and turn attention into NaN; let it attend to its padding
        # instead (its pool below is still empty), without a data-dependent branch that vmap could not trace
        padding = ~real & real.any(dim=1, keepdim=True)
        hidden = self.encoder(embedded, src_key_padding_mask=padding)
        # `where`, not a multiply: padded outputs may be anything (the inference fast path leaves them arbitrary)
        # and 0 * nan would still be nan; `where` also sends them exactly zero gradient
        pooled = torch.where(real.unsqueeze(-1), hidden, 0.0).sum(dim=1)
        pooled = pooled / real.sum(dim=1, keepdim=True).clamp_min(1).to(pooled.dtype)
        return self.head(pooled)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[N, num_classes]`` of token ids ``[N, T]``: ``forward_embedded(embed(ids), attention_mask)``."""
        return self.forward_embedded(self.embed(input_ids), attention_mask)
