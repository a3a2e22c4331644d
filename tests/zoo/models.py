"""The model zoo: real ``transformers`` and ``timm`` architectures from tiny configurations (random weights, nothing
downloaded), each behind a small adapter with one calling convention.

Text models take token ids ``[N, T]`` and ``attention_mask=`` ``[N, T]`` and return logits ``[N, C]``; for the
input-output Jacobian they split at the token embedding: ``embed(ids)`` and ``forward_embedded(embedded,
attention_mask)``, whose composition is the model's own forward -- including GPT-2- and Llama-style pooling of the
last real token, computed from the mask (with ``inputs_embeds`` those models would pool the last position). Image
models take ``[N, 3, 32, 32]``.

Used by ``tests/zoo/`` and ``benchmarks/zoo_table.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NUM_CLASSES = 3
VOCAB, SEQ = 64, 8
IMAGE = (3, 32, 32)


class TextAdapter(nn.Module):
    """A Hugging Face sequence classifier (or an encoder plus a mean-pooled head) as ``(ids, attention_mask) ->
    logits``, split at the token embedding."""

    def __init__(self, model: nn.Module, pooling: str = "model", head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling  # "model": the model's own head; "last": last real token; "mean": masked mean
        self.head = head

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward_embedded(self, embedded: Tensor, attention_mask: Tensor) -> Tensor:
        if self.pooling == "model":
            return self.model(inputs_embeds=embedded, attention_mask=attention_mask).logits
        if self.pooling == "last":  # the decoder's own head on the last real token (left or right padding)
            base = getattr(self.model, self.model.base_model_prefix)
            hidden = base(inputs_embeds=embedded, attention_mask=attention_mask).last_hidden_state
            last = (torch.arange(embedded.shape[1], device=embedded.device) * attention_mask).argmax(-1)
            return self._score(hidden[torch.arange(embedded.shape[0], device=embedded.device), last])
        hidden = self.model(inputs_embeds=embedded, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return self.head((hidden * m).sum(1) / m.sum(1))

    def _score(self, pooled: Tensor) -> Tensor:
        return self.model.score(pooled)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.head is None:  # the model's own forward on ids (its own pooling, position ids, masks)
            return self.model(input_ids=ids, attention_mask=attention_mask).logits
        return self.forward_embedded(self.embed(ids), attention_mask)


class EmbeddedView(nn.Module):
    """``forward(embedded, attention_mask)`` of a :class:`TextAdapter`: the function the Jacobian is taken of."""

    def __init__(self, text: TextAdapter) -> None:
        super().__init__()
        self.text = text

    def forward(self, embedded: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text.forward_embedded(embedded, attention_mask)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=NUM_CLASSES, hidden_dropout_prob=0.1, pad_token_id=0,
    )  # fmt: skip
    return TextAdapter(BertForSequenceClassification(config))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, num_labels=NUM_CLASSES, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    return TextAdapter(GPT2ForSequenceClassification(config), pooling="last")


def _distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32,
        num_labels=NUM_CLASSES, pad_token_id=0,
    )  # fmt: skip
    return TextAdapter(DistilBertForSequenceClassification(config))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, num_labels=NUM_CLASSES, pad_token_id=0, bos_token_id=1,
        eos_token_id=1,
    )  # fmt: skip
    return TextAdapter(LlamaForSequenceClassification(config), pooling="last")


def _t5_encoder() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, relative_attention_num_buckets=8,
        pad_token_id=0,
    )  # fmt: skip
    return TextAdapter(T5EncoderModel(config), pooling="mean", head=nn.Linear(32, NUM_CLASSES))


class _GroupNorm(nn.GroupNorm):
    def __init__(self, num_channels: int, **kwargs: object) -> None:
        super().__init__(8, num_channels)


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    return build


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    text: bool
    requires: str  # the library it comes from


ZOO = {
    z.name: z
    for z in (
        ZooModel("bert", _bert, True, "transformers"),
        ZooModel("gpt2", _gpt2, True, "transformers"),
        ZooModel("distilbert", _distilbert, True, "transformers"),
        ZooModel("llama", _llama, True, "transformers"),
        ZooModel("t5_encoder", _t5_encoder, True, "transformers"),
        ZooModel("convnext_atto", _timm("convnext_atto"), False, "timm"),
        ZooModel("mobilenetv3_small_050", _timm("mobilenetv3_small_050"), False, "timm"),
        ZooModel("deit_tiny", _timm("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=4), False, "timm"),
        ZooModel("resnet18_groupnorm", _timm("resnet18", norm_layer=_GroupNorm), False, "timm"),
    )
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO[name].build().eval()


def text_batch(n: int, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``(ids [n, T], labels [n], {"attention_mask": [n, T]})``, right-padded with id 0, lengths 3..T."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (n,), generator=g)
    lengths[0] = SEQ - 3  # at least one padded example in every batch
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return ids.to(device), y.to(device), {"attention_mask": mask.to(device)}


def image_batch(n: int, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *IMAGE, generator=g)
    return x.to(device), torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device)
