"""Cost of the sharpness measures as multiples of one forward+backward pass of the mean loss over the probe set.

One process, one thread, the same probe set: a plain ``loss.backward()`` over ``N`` examples is the unit; then one
Hessian-vector product (``functional.hessian_vector_product``), one Lanczos iteration (``hessian_top_eigenvalue``
with a fixed iteration count, divided by it), one Hutchinson vector (``hutchinson_samples``) and the exact
Gauss-Newton trace (``gauss_newton_trace``, whole). Median of ``--repeats`` timings each::

    OMP_NUM_THREADS=1 python benchmarks/sharpness_cost.py [--n 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_sensitivity.functional import (
    gauss_newton_trace,
    hessian_top_eigenvalue,
    hessian_vector_product,
    hutchinson_samples,
)


def models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 49, 10),
    )  # fmt: skip
    return {"MLP 784-256-10": (mlp.eval(), (1, 28, 28)), "CNN 2 conv + BN": (cnn.eval(), (1, 28, 28))}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, model: nn.Module, shape: tuple[int, ...], n: int, repeats: int) -> str:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    p = sum(q.numel() for q in model.parameters())
    v = torch.randn(p, generator=gen)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    unit = median_time(fwd_bwd, repeats)
    model.zero_grad(set_to_none=True)
    iters = 5
    costs = {
        "hvp": median_time(lambda: hessian_vector_product(model, x, y, v), repeats),
        "lanczos": median_time(lambda: hessian_top_eigenvalue(model, x, y, num_iterations=iters, tol=0.0), repeats)
        / iters,
        "hutchinson": median_time(lambda: hutchinson_samples(model, x, y, [0]), repeats),
        "gn": median_time(lambda: gauss_newton_trace(model, x, y, chunk_size=64), repeats),
    }
    ratios = " | ".join(f"{costs[k] / unit:.1f}x" for k in ("hvp", "lanczos", "hutchinson", "gn"))
    return f"| {name} | {p} | {unit:.3f} | {ratios} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="probe examples")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | parameters | fwd+bwd (s) | HVP | Lanczos iteration | Hutchinson vector | Gauss-Newton trace |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, shape) in models().items():
        print(measure(name, model, shape, args.n, args.repeats), flush=True)


if __name__ == "__main__":
    main()
