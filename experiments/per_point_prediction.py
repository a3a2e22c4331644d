"""Novak et al. (2018): the Jacobian norm at a test point predicts whether the network gets that point wrong.

One fully-connected net on an MNIST training subset; ``JacobianNormMonitor`` measures the per-point norm of
d softmax / d input on a large class-balanced probe set of test points at every epoch and saves it with the
per-point correctness. The AUROC of the norm as a score for "misclassified" is computed here with scikit-learn from
the saved arrays (and compared with the value the callback logged). As a reference predictor, the AUROC of
``1 - max softmax probability`` on the same points is reported too.

Usage::

    python experiments/per_point_prediction.py [--quick] [--data-dir ../shared/data] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "per_point_prediction"


def auroc(scores: np.ndarray, wrong: np.ndarray) -> float | None:
    """AUROC of ``scores`` for the positive class ``wrong`` (None when one class is absent)."""
    from sklearn.metrics import roc_auc_score

    if wrong.all() or not wrong.any():
        return None
    return float(roc_auc_score(wrong.astype(int), scores))


def confidence_auroc(module: Any, monitor: Any, wrong: np.ndarray) -> float | None:
    """AUROC of 1 - max softmax on the monitor's own probe points (its public ``probe_sets``), if exposed."""
    import torch

    probe = getattr(monitor, "probe_sets", {}).get("val") if hasattr(monitor, "probe_sets") else None
    if probe is None or len(probe) != len(wrong):
        return None
    module.eval()
    with torch.no_grad():
        probs = module(probe.inputs).softmax(dim=1)
    return auroc(1.0 - probs.max(dim=1).values.numpy(), wrong)


def plot(per_epoch: list[dict], final: Any, path: Path) -> None:
    fig, axes = C.new_figure(ncols=2)
    norms, correct = final.arrays["val_norms"].astype(float), final.arrays["val_correct"].astype(bool)
    ax = axes[0, 0]
    # densities over log10(norm): the norms span orders of magnitude (the softmax saturates at confident points)
    logs = np.log10(np.clip(norms, np.finfo(float).tiny, None))
    bins = np.linspace(logs.min(), logs.max(), 40) if logs.size and logs.max() > logs.min() else 40
    ax.hist(logs[correct], bins=bins, density=True, alpha=0.6, label=f"correct (n={int(correct.sum())})")
    ax.hist(logs[~correct], bins=bins, density=True, alpha=0.6, label=f"misclassified (n={int((~correct).sum())})")
    ax.set_xlabel("log10 Jacobian norm at the test point")
    ax.set_ylabel("density")
    ax.set_title(f"epoch {final.epoch}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    epochs = [e["epoch"] for e in per_epoch]
    ax.plot(epochs, [np.nan if e["auroc"] is None else e["auroc"] for e in per_epoch], "o-", ms=3, label="Jacobian norm")
    ax.plot(epochs, [np.nan if e["confidence_auroc"] is None else e["confidence_auroc"] for e in per_epoch], "s--", ms=3,
            label="1 - max softmax (final only)")
    ax.axhline(0.5, color="grey", lw=1, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("AUROC for misclassification")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=7)
    C.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    import lightning.pytorch as pl

    from lightning_sensitivity.callbacks import JacobianNormMonitor
    from lightning_sensitivity.models import LitClassifier

    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    cfg = C.load_config(args)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"], batch_size=cfg["batch_size"])
    monitor = JacobianNormMonitor(
        every_n_epochs=1, num_samples=cfg["probe_samples"], seed=args.seed, val_data=C.dataset_tensors(dm.test_dataset)
    )
    module = LitClassifier(C.build_mlp(dm, cfg["width"], cfg["depth"]), lr=cfg["lr"], momentum=cfg["momentum"])
    outcome = C.fit(module, dm, out=args.out, run_name="mlp", max_epochs=cfg["max_epochs"], callbacks=[monitor], test=True)
    found = C.artifacts(outcome.log_dir, "jacobian_norm")
    per_epoch = []
    for art in found:
        wrong = ~art.arrays["val_correct"].astype(bool)
        norms = art.arrays["val_norms"].astype(float)
        per_epoch.append({
            "epoch": art.epoch,
            "num_points": int(wrong.size),
            "num_wrong": int(wrong.sum()),
            "auroc": auroc(norms, wrong),
            "callback_auroc": art.scalar("misclassification_auroc"),
            "median_norm_correct": float(np.median(norms[~wrong])) if (~wrong).any() else None,
            "median_norm_wrong": float(np.median(norms[wrong])) if wrong.any() else None,
            "confidence_auroc": None,
        })
    final = found[-1]
    per_epoch[-1]["confidence_auroc"] = confidence_auroc(module, monitor, ~final.arrays["val_correct"].astype(bool))
    plot(per_epoch, final, args.out / "per_point_auroc.png")
    results = {
        "final": per_epoch[-1],
        "per_epoch": per_epoch,
        "test_acc": outcome.metrics.get("test/acc"),
        "epochs": outcome.epochs,
        "fit_seconds": round(outcome.seconds, 1),
    }
    C.log(args, f"final AUROC {per_epoch[-1]['auroc']} (callback {per_epoch[-1]['callback_auroc']}), "
          f"confidence AUROC {per_epoch[-1]['confidence_auroc']}")
    C.write_results(args, start, cfg, results)


if __name__ == "__main__":
    main()
