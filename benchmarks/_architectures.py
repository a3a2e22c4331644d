"""Architecture rows: the Gram of per-example loss gradients, and ``jacobian_norm``, on resnet18, a small ViT, a
small text transformer and the package's reference ``TextClassifier``.

    python benchmarks/_architectures.py [--n N] [--rounds R] [--threads T] [--device D] [--no-per-example]
                                        [--no-peers]

Each Gram row times ``loss_gradient_gram`` with ``method="layerwise"`` (and, once, ``method="per_example"``, the
``vmap(grad)`` engine) against one batched forward and backward pass of the mean loss (limit_G), round-robin like
``run.py``, with the peers -- Opacus ``GradSampleModule`` and BackPACK ``BatchGrad`` per-example gradients, then the
Gram -- as baselines where they run; where a peer declines a model, the row's ``refused`` holds its reason
(``_cases.peer_baselines``). Targets: <= 3 x limit_G on resnet18, <= 2 x on the ViT and the text models; the
Jacobian rows (the text models w.r.t. their embeddings) <= 1.2 x limit_J. Nothing is downloaded: the models are
built untrained. Times as in ``run.py`` (``_timing.py``): CPU seconds on the CPU, wall seconds on CUDA.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cases as cases  # noqa: E402
from _timing import parse_device, timed, timing_note  # noqa: E402

from lightning_sensitivity.functional import loss_gradient_gram  # noqa: E402
from lightning_sensitivity.models import TextClassifier  # noqa: E402

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


def text_classifier() -> TextClassifier:
    """The reference text classifier (token + position ``nn.Embedding``, ``nn.TransformerEncoder``, masked mean
    pool), at the text transformer's size."""
    return TextClassifier(vocab_size=VOCABULARY, num_classes=NUM_CLASSES, d_model=64, num_layers=2, num_heads=4,
                          dim_feedforward=256, max_length=TOKENS)  # fmt: skip


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
    "gram TextClassifier": (
        f"lightning_sensitivity.models.TextClassifier(vocab {VOCABULARY}, d=64, 2 layers, 4 heads, ff 256), T={TOKENS}",
        text_classifier,
        tokens,
        2.0,
    ),
}
CPU = torch.device("cpu")


def architecture_rows(n: int, rounds: int, per_example: bool = True, device: torch.device = CPU,
                      peers: bool = True) -> list[dict]:  # fmt: skip
    """One row per model in ``run.py``'s format; ``per_example`` adds the vmap(grad) engine, timed once;
    ``peers`` adds Opacus and BackPACK where they run and records why where they do not."""
    from run import _row

    rows = []
    for name, (label, factory, data, target) in MODELS.items():
        torch.manual_seed(0)
        model = factory().eval().to(device)
        x, y = (t.to(device) for t in data(n))
        fns = {
            "limit": cases.forward_backward(model, x, y),
            "package": lambda model=model, x=x, y=y: loss_gradient_gram(model, x, y, method="layerwise"),
        }
        if per_example:
            fns["per_example engine"] = lambda model=model, x=x, y=y: loss_gradient_gram(
                model, x, y, method="per_example"
            )
        refused: dict[str, str] = {}
        if peers:
            found, refused = cases.peer_baselines(model, x, y, fns["package"])
            fns.update(found)
        times = timed(fns, rounds, device, once=frozenset({"per_example engine"}))
        row = _row(name, "loss_gradient_gram (layerwise)", label, times,
                   "package", "limit", 1, f"<= {target:g} x limit_G", "limit_G = forward + backward",
                   [k for k in fns if k not in ("limit", "package")], None)  # fmt: skip
        row["met"] = row["ratio_to_limit"] <= target
        row["refused"] = refused
        rows.append(row)
    return rows


class _FromEmbedding(nn.Module):
    """The text transformer from its (token + position) embedding on: what ``embed_fn`` + ``forward_fn`` measure."""

    def __init__(self, model: TextTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, embedded: Tensor) -> Tensor:
        return self.model.head(self.model.encoder(embedded).mean(dim=1))


class _ClassifierFromEmbedding(nn.Module):
    """``TextClassifier.forward_embedded``: the reference classifier from its embeddings on (no padding)."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, embedded: Tensor) -> Tensor:
        return self.model.forward_embedded(embedded)


def _from_embeddings(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor] | None:
    """A text model as a function of its (token + position) embeddings, and those of ``x``; None for the others."""
    if isinstance(model, TextTransformer):
        with torch.no_grad():
            return _FromEmbedding(model).eval(), model.embed(x) + model.pos
    if isinstance(model, TextClassifier):
        with torch.no_grad():
            return _ClassifierFromEmbedding(model).eval(), model.embed(x)
    return None


def jacobian_rows(n: int, rounds: int, device: torch.device = CPU) -> list[dict]:
    """``jacobian_norm`` (softmax) against limit_J = (1 + C) forwards, per model; the text models w.r.t. their
    embeddings. Target <= 1.2 x limit_J."""
    from run import _row

    from lightning_sensitivity.functional import jacobian_norm

    rows = []
    for name, (label, factory, data, _) in MODELS.items():
        torch.manual_seed(0)
        model = factory().eval().to(device)
        x = data(n)[0].to(device)
        embedded = _from_embeddings(model, x)
        if embedded is not None:
            model, x = embedded
            label += " (w.r.t. the embeddings)"
        fns = {"limit": cases.forward(model, x), "package": lambda model=model, x=x: jacobian_norm(model, x)}
        times = timed(fns, rounds, device)
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
    parser.add_argument("--no-peers", action="store_true", help="skip the Opacus and BackPACK baselines")
    parser.add_argument("--device", default="cpu", help="'cpu' (default) or a CUDA device ('cuda', 'cuda:1')")
    args = parser.parse_args(argv)
    device = parse_device(parser, args.device)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus, BackPACK: as in run.py
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = architecture_rows(args.n, args.rounds, per_example=not args.no_per_example, device=device,
                             peers=not args.no_peers)  # fmt: skip
    rows += jacobian_rows(args.n, args.rounds, device)
    print_table(rows)
    print(f"\nN={args.n}, {len(rows)} rows in {time.perf_counter() - start:.0f}s wall; device={device}, "
          f"threads={args.threads}, rounds={args.rounds}; times are {timing_note(device)}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
