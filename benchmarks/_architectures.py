"""Architecture rows: the Gram of per-example loss gradients on resnet18, a small ViT and a small text transformer.

    python benchmarks/_architectures.py [--n N] [--rounds R] [--threads T] [--no-per-example]

Each row times ``loss_gradient_gram`` with ``method="layerwise"`` (and, once, ``method="per_example"``) against one
batched forward and backward pass of the mean loss (limit_G), round-robin like ``run.py``. Targets: <= 3 x limit_G on
resnet18, <= 2 x on the ViT and the text model. Nothing is downloaded: the models are built untrained.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cases as cases  # noqa: E402

from lightning_sensitivity.functional import loss_gradient_gram  # noqa: E402

NUM_CLASSES = 10
VOCABULARY, TOKENS = 1000, 32


def resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def vit() -> nn.Module:
    import torchvision

    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=NUM_CLASSES
    )


class TextTransformer(nn.Module):
    """Token embedding + learned positions + ``nn.TransformerEncoder`` (2 layers, d=64, ReLU) + mean-pooled head."""

    def __init__(self, vocabulary: int = VOCABULARY, length: int = TOKENS, d: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, d)
        self.pos = nn.Parameter(torch.randn(1, length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, activation="relu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))


def images(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def tokens(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCABULARY, (n, TOKENS), generator=g)
    return ids, torch.randint(0, NUM_CLASSES, (n,), generator=g)


# row -> (model label, factory, data, target ratio to limit_G)
MODELS = {
    "gram resnet18": ("torchvision resnet18(num_classes=10), 3x32x32", resnet18, images, 3.0),
    "gram ViT": ("torchvision ViT 32/4, 4 layers, 3 heads, d=192, mlp 768", vit, images, 2.0),
    "gram text": (f"embedding {VOCABULARY}x64 + 2-layer TransformerEncoder, T={TOKENS}", TextTransformer, tokens, 2.0),
}


def architecture_rows(n: int, rounds: int, per_example: bool = True) -> list[dict]:
    """One row per model in ``run.py``'s format; ``per_example`` adds the vmap(grad) engine, timed once."""
    from run import _row, timed

    rows = []
    for name, (label, factory, data, target) in MODELS.items():
        torch.manual_seed(0)
        model = factory().eval()
        x, y = data(n)
        fns = {
            "limit": cases.forward_backward(model, x, y),
            "package": lambda: loss_gradient_gram(model, x, y, method="layerwise"),
        }
        if per_example:
            fns["per_example engine"] = lambda: loss_gradient_gram(model, x, y, method="per_example")
        times = timed(fns, rounds, once=frozenset({"per_example engine"}))
        row = _row(name, "loss_gradient_gram (layerwise)", label, times,
                   "package", "limit", 1, f"<= {target:g} x limit_G", "limit_G = forward + backward",
                   [k for k in fns if k not in ("limit", "package")], None)  # fmt: skip
        row["met"] = row["ratio_to_limit"] <= target
        rows.append(row)
    return rows


class _FromEmbedding(nn.Module):
    """The text transformer from its (token + position) embedding on: what ``embed_fn`` + ``forward_fn`` measure."""

    def __init__(self, model: TextTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, embedded: Tensor) -> Tensor:
        return self.model.head(self.model.encoder(embedded).mean(dim=1))


def jacobian_rows(n: int, rounds: int) -> list[dict]:
    """``jacobian_norm`` (softmax) against limit_J = (1 + C) forwards, per model; the text model w.r.t. its
    embeddings. Target <= 1.2 x limit_J."""
    from run import _row, timed

    from lightning_sensitivity.functional import jacobian_norm

    rows = []
    for name, (label, factory, data, _) in MODELS.items():
        torch.manual_seed(0)
        model = factory().eval()
        x, _ = data(n)
        if isinstance(model, TextTransformer):
            with torch.no_grad():
                x = model.embed(x) + model.pos
            model = _FromEmbedding(model).eval()
            label += " (w.r.t. the embeddings)"
        fns = {"limit": cases.forward(model, x), "package": lambda: jacobian_norm(model, x)}
        times = timed(fns, rounds)
        row = _row(name.replace("gram", "jacobian_norm"), "jacobian_norm", label, times, "package", "limit",
                   1 + NUM_CLASSES, "<= 1.2 x limit_J", "limit_J = (1 + C) x forward", [], None)  # fmt: skip
        row["met"] = row["ratio_to_limit"] <= 1.2
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from run import print_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128, help="examples (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--no-per-example", action="store_true", help="skip the vmap(grad) engine (slow)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = architecture_rows(args.n, args.rounds, per_example=not args.no_per_example)
    rows += jacobian_rows(args.n, args.rounds)
    print_table(rows)
    print(f"\nN={args.n}, {len(rows)} rows in {time.perf_counter() - start:.0f}s wall; threads={args.threads}, "
          f"rounds={args.rounds}; times are CPU seconds")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
