"""Which measure tracks the generalization gap on a small MNIST sweep: Kendall's tau, overall and granulated.

Jiang et al. (2020) rank generalization measures by Kendall's tau with the gap over a sweep, and by the granulated
tau within groups where one hyperparameter changes. Here: MLPs 784-w-10 (SGD, momentum 0.9, batch 64) on 500 MNIST
training images for 15 epochs, w in {32, 256}, lr in {0.02, 0.2}, 3 seeds (12 runs); at the final epoch
``JacobianNormMonitor``, ``StiffnessMonitor`` (val_val and train_train) and ``SharpnessMonitor`` measure on 256
probe examples. Gap = accuracy on the 500 training images minus accuracy on 2000 test images. The ranking is
``lightning_sensitivity.compare.rank_measures`` over the runs (seed pooled within groups).

Usage::

    OMP_NUM_THREADS=1 python experiments/measure_ranking.py [--quick] [--data-dir ../shared/data]

Writes ``experiments/output/measure_ranking/results.json`` and ``section.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from influence_flipped_labels import load_mnist  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "measure_ranking"
FULL = {"lrs": [0.02, 0.2], "widths": [32, 256], "seeds": [0, 1, 2], "train": 500, "test": 2000, "epochs": 15,
        "probe": 256}  # fmt: skip
QUICK = {"lrs": [0.02, 0.2], "widths": [16, 32], "seeds": [0], "train": 120, "test": 200, "epochs": 1, "probe": 40}
MEASURES = (
    "sensitivity/jacobian_norm/val/mean",
    "sensitivity/stiffness/val_val/cosine",
    "sensitivity/stiffness/val_val/same_class_cosine",
    "sensitivity/stiffness/train_train/cosine",
    "sensitivity/sharpness/train/top_eigenvalue",
    "sensitivity/sharpness/train/hessian_trace",
    "sensitivity/sharpness/train/gauss_newton_trace",
)


def run_one(cfg: dict, lr: float, width: int, seed: int, data: tuple, out: Path) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_sensitivity import JacobianNormMonitor, SharpnessMonitor, StiffnessMonitor
    from lightning_sensitivity.models import MLP, LitClassifier

    xtr, ytr, xte, yte = data
    gen = np.random.default_rng(seed)
    tr, te = gen.permutation(len(xtr))[: cfg["train"]], gen.permutation(len(xte))[: cfg["test"]]

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor((x / 255.0 - 0.1307) / 0.3081, dtype=torch.float32).unsqueeze(1), torch.tensor(y).long()

    x, y = tensors(xtr[tr], ytr[tr])
    xv, yv = tensors(xte[te], yte[te])

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

    pl.seed_everything(seed, verbose=False)
    module = LitClassifier(MLP(784, 10, hidden=(width,)), lr=lr)
    common = {"epochs": [cfg["epochs"]], "num_samples": cfg["probe"], "seed": seed, "val_data": (xv, yv),
              "train_data": (x, y), "figures": "none"}  # fmt: skip
    monitors = [JacobianNormMonitor(**common), StiffnessMonitor(groups=("train_train", "val_val"), **common),
                SharpnessMonitor(**common)]  # fmt: skip
    root = out / "runs" / f"lr{lr}_w{width}_s{seed}"
    trainer = pl.Trainer(max_epochs=cfg["epochs"], accelerator="cpu", devices=1, logger=False, callbacks=monitors,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=str(root))  # fmt: skip
    trainer.fit(module, datamodule=Data())
    module.eval()
    with torch.no_grad():
        train_acc = float((module(x).argmax(1) == y).float().mean())
        test_acc = float((module(xv).argmax(1) == yv).float().mean())
    row = {"hparams/lr": lr, "hparams/width": width, "hparams/seed": seed, "train_acc": train_acc,
           "test_acc": test_acc, "generalization_gap/acc": train_acc - test_acc}  # fmt: skip
    for key in MEASURES:
        row[key] = float(trainer.callback_metrics[key]) if key in trainer.callback_metrics else float("nan")
    return row


def section(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "## 6. Which measure tracks the generalization gap: overall and granulated Kendall's tau (Jiang et al. 2020)",
        "",
        f"**Setting here:** MLPs 784-w-10 on {cfg['train']} MNIST training images, {cfg['epochs']} epochs, SGD "
        f"momentum 0.9 batch 64, w in {cfg['widths']}, lr in {cfg['lrs']}, seeds {cfg['seeds']} "
        f"({len(results['rows'])} runs); measures at the final epoch on {cfg['probe']} probe examples; gap = "
        f"training accuracy minus accuracy on {cfg['test']} test images (range "
        f"{min(r['generalization_gap/acc'] for r in results['rows']):.3f} to "
        f"{max(r['generalization_gap/acc'] for r in results['rows']):.3f}). psi of a hyperparameter: the mean tau "
        "within the groups of runs where only it changes (seeds pooled); Psi: their mean "
        "(`compare.rank_measures`). With this few runs a tau moves by 2/n(n-1) per swapped pair: read the signs "
        "and the order, not the digits.",
        "",
        "| measure | overall tau (p) | psi lr | psi width | Psi |",
        "|---|---|---|---|---|",
    ]
    from lightning_sensitivity.compare import correlations

    significant = 0
    min_train = min(r["train_acc"] for r in results["rows"])
    for r in results["ranking"]:
        g = r["granulated"]
        p = correlations(results["rows"], r["measure"], "generalization_gap/acc", num_bootstrap=0)["kendall_p"]
        significant += p < 0.05
        lines.append(f"| `{r['measure']}` | {r['overall']:+.3f} ({p:.2g}) | {g.get('hparams/lr', float('nan')):+.3f} | "
                     f"{g.get('hparams/width', float('nan')):+.3f} | {r['psi']:+.3f} |")  # fmt: skip
    lines += [
        "",
        f"**Caveats:** {len(results['rows'])} runs over a narrow range of gaps; {significant} of "
        f"{len(results['ranking'])} overall taus have p < 0.05 (p in brackets, Kendall's exact test of "
        f"`compare.correlations`); the lowest final training accuracy of a run is {min_train:.3f}. The table shows "
        "the ranking machinery on real runs, not a finding about the measures.",
        "",
        f"Command: `{results['command']}` -- wall time {results['wall_time_s']:.0f} s on 1 thread of a shared "
        "2-core machine.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "output" / NAME)
    parser.add_argument("--summarize", action="store_true", help="rewrite section.md from OUT/results.json only")
    args = parser.parse_args(argv)
    if args.summarize:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "section.md").write_text(section(results))
        print(section(results))
        return results
    if not (args.data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        print(f"MNIST not found under {args.data_dir}/MNIST/raw; nothing to do")
        sys.exit(0)
    import torch

    from lightning_sensitivity.compare import rank_measures

    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = load_mnist(args.data_dir)
    grid = itertools.product(cfg["lrs"], cfg["widths"], cfg["seeds"])
    rows = [run_one(cfg, lr, w, s, data, args.out) for lr, w, s in grid]
    ranking = rank_measures(rows, "generalization_gap/acc", measures=list(MEASURES))
    command = " ".join(["OMP_NUM_THREADS=1 python", f"experiments/{NAME}.py", *(argv or sys.argv[1:])])
    results = {"experiment": NAME, "config": cfg, "rows": rows, "ranking": ranking,
               "wall_time_s": time.time() - start, "command": command}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "section.md").write_text(section(results))
    print(section(results))
    return results


if __name__ == "__main__":
    main()
