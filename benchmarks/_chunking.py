"""Chunking rows: ``loss_gradient_gram`` with ``chunk_size`` 32 and 64 against the same call unchunked, and the
sketched Gram's error against ``sketch_dim``.

    python benchmarks/_chunking.py [--n N] [--rounds R] [--threads T] [--models cnn,resnet18,vit,text,mobilenet]
                                   [--methods layerwise,per_example] [--sketch [--dims 64,256]]

Each row is one model and engine at one ``N``, in ``run.py``'s format (``run.py --architectures`` adds the
layerwise rows at N = 128): the best of ``rounds`` round-robin times (CPU seconds on the CPU, ``_timing.py``) of
the unchunked call (the limit) and of each chunk size (the "baselines", speedup = unchunked / chunked time); the
ratio is the slower chunk size's (target <= 1.25: one pass over the examples, ``functional/gram/blocks.py``).
``--sketch`` gives instead, per model, the relative Frobenius error ``|G_k - G| / |G|`` and the mean
``|G_k - G|_ij / (|g_i| |g_j|)`` of ``sketch_dim=k`` (mean over 3 seeds), and the sketch's time over the exact
call's. Nothing is downloaded: the models are built untrained.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _architectures import TextTransformer, images, resnet18, tokens, vit  # noqa: E402
from _timing import clock, parse_device  # noqa: E402

from lightning_sensitivity.functional import loss_gradient_gram  # noqa: E402

CHUNKS = (32, 64)
SKETCH_DIMS = (64, 256, 1024, 4096)


def mobilenet() -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v3_small(num_classes=10)


def cnn() -> nn.Module:
    from _cases import mnist_cnn

    return mnist_cnn()


def mnist(n: int, seed: int = 0):
    from _cases import data

    return data(n, seed)


MODELS = {
    "cnn": ("benchmark CNN conv32-conv64-pool-fc128, 1x28x28", cnn, mnist),
    "resnet18": ("torchvision resnet18, 3x32x32", resnet18, images),
    "vit": ("torchvision ViT 32/4, 4 layers, d=192", vit, images),
    "text": ("embedding 1000x64 + 2-layer TransformerEncoder, T=32", TextTransformer, tokens),
    "mobilenet": ("torchvision mobilenet_v3_small, 3x32x32", mobilenet, images),
}


def best_times(fns: dict, rounds: int, device: torch.device) -> dict[str, float]:
    """Best of ``rounds`` round-robin times per candidate, after one warm-up call each."""
    now = clock(device)
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            start = now()
            fn()
            best[name] = min(best[name], now() - start)
    return best


def chunking_rows(n: int, rounds: int, models: list[str], methods: list[str], device: torch.device) -> list[dict]:
    rows = []
    for name in models:
        label, factory, data = MODELS[name]
        torch.manual_seed(0)
        model = factory().eval().to(device)
        x, y = (t.to(device) for t in data(n))
        for method in methods:
            fns = {
                str(c): lambda c=c, m=method, model=model, x=x, y=y: loss_gradient_gram(
                    model, x, y, method=m, chunk_size=c
                )
                for c in (None, *CHUNKS)
            }
            times = best_times(fns, rounds, device)
            chunked = {f"chunk {c}": times[str(c)] for c in CHUNKS}
            ratio = max(chunked.values()) / times["None"]
            # run.py's row format; each chunk size is a "baseline" whose speedup is unchunked / chunked time
            rows.append({"row": f"chunking {name} {method}",
                         "quantity": f"loss_gradient_gram ({method}), chunk_size {' / '.join(map(str, CHUNKS))}, "
                                     f"N = {n}, best of {rounds}",
                         "model": label, "time_s": max(chunked.values()), "limit": "the same call unchunked",
                         "limit_s": times["None"], "ratio_to_limit": ratio, "target": "<= 1.25 x unchunked",
                         "baselines": {k: {"time_s": t, "speedup": times["None"] / t} for k, t in chunked.items()},
                         "refused": {}, "peak_bytes": None, "met": ratio <= 1.25})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def sketch_rows(n: int, models: list[str], device: torch.device, seeds: int = 3,
                dims: tuple[int, ...] = SKETCH_DIMS) -> list[dict]:  # fmt: skip
    rows = []
    for name in models:
        label, factory, data = MODELS[name]
        torch.manual_seed(0)
        model = factory().eval().to(device)
        x, y = (t.to(device) for t in data(n))
        now = clock(device)
        start = now()
        exact = loss_gradient_gram(model, x, y).double()
        exact_s = now() - start
        scale = exact.diagonal().clamp_min(0).sqrt()
        scale = scale[:, None] * scale[None, :]
        for k in dims:
            fro, entry, secs = [], [], []
            for seed in range(seeds):
                start = now()
                est = loss_gradient_gram(model, x, y, sketch_dim=k, sketch_seed=seed).double()
                secs.append(now() - start)
                fro.append(float((est - exact).norm() / exact.norm()))
                entry.append(float(((est - exact).abs() / scale).mean()))
            rows.append({"row": f"sketch {name} k={k}", "model": label, "n": n, "sketch_dim": k,
                         "relative_frobenius_error": sum(fro) / seeds,
                         "mean_entry_error_over_norms": sum(entry) / seeds,
                         "time_over_exact": min(secs) / exact_s})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default="layerwise")
    parser.add_argument("--sketch", action="store_true", help="the sketch error rows instead of the timing rows")
    parser.add_argument("--dims", default=",".join(map(str, SKETCH_DIMS)), help="sketch dimensions (--sketch)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = parse_device(parser, args.device)
    models = args.models.split(",")
    if args.sketch:
        rows = sketch_rows(args.n, models, device, dims=tuple(int(k) for k in args.dims.split(",")))
    else:
        rows = chunking_rows(args.n, args.rounds, models, args.methods.split(","), device)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
