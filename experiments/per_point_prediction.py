"""Novak et al. (2018): the Jacobian norm at a test point predicts whether the network gets that point wrong.

One fully-connected net per seed on an MNIST training subset; ``JacobianNormMonitor`` measures the per-point norm of
d softmax / d input on a large class-balanced probe set of test points at every epoch and saves it with the
per-point correctness, and logs the AUROC for "misclassified" of the norm, of ``1 - max softmax`` (confidence) and
of the predictive entropy. Whether the norm carries information beyond confidence is tested on the final weights
two ways: the norm's AUROC within bins of equal confidence (quantile bins), and a logistic regression on
``log(1 - max softmax)`` alone vs together with ``log norm``, compared by 5-fold cross-validated AUROC.

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
SCORES = ("misclassification_auroc", "confidence_auroc", "entropy_auroc")


def auroc(scores: np.ndarray, wrong: np.ndarray) -> float | None:
    """AUROC of ``scores`` for the positive class ``wrong`` (None when one class is absent)."""
    from sklearn.metrics import roc_auc_score

    if wrong.all() or not wrong.any():
        return None
    return float(roc_auc_score(wrong.astype(int), scores))


def probe_probabilities(module: Any, monitor: Any) -> np.ndarray:
    """Softmax of the final model on the monitor's own validation probe points (the ones the norms belong to)."""
    import torch

    probe = monitor.probe_sets["val"]
    module.eval()
    with torch.no_grad():
        return module(probe.inputs).softmax(dim=1).double().numpy()


def within_confidence_bins(norms: np.ndarray, confidence: np.ndarray, wrong: np.ndarray, bins: int) -> dict:
    """AUROC of the norm for "misclassified" inside quantile bins of the max softmax, and their weighted mean.

    A bin contributes when it holds both correct and misclassified points; the weights are its number of
    (misclassified, correct) pairs, so the mean is the AUROC over pairs of equal-confidence-bin points. The same is
    computed for ``1 - confidence`` itself: confidence still varies inside a bin, so the norm adds information only
    if it separates the classes there better than the residual confidence does."""
    edges = np.quantile(confidence, np.linspace(0, 1, bins + 1))
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows, total, total_conf, weight = [], 0.0, 0.0, 0.0
    for b in range(bins):
        sel = index == b
        value, conf = auroc(norms[sel], wrong[sel]), auroc(1 - confidence[sel], wrong[sel])
        pairs = float(wrong[sel].sum() * (~wrong[sel]).sum())
        rows.append({"bin": b, "points": int(sel.sum()), "wrong": int(wrong[sel].sum()), "auroc": value,
                     "confidence_auroc": conf})  # fmt: skip
        if value is not None:
            total += value * pairs
            total_conf += conf * pairs
            weight += pairs
    return {"bins": rows, "weighted_auroc": total / weight if weight else None,
            "weighted_confidence_auroc": total_conf / weight if weight else None}  # fmt: skip


def cross_validated(norms: np.ndarray, confidence: np.ndarray, wrong: np.ndarray, seed: int) -> dict:
    """5-fold stratified CV AUROC of logistic regressions on confidence alone vs confidence + norm."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tiny = np.finfo(float).tiny
    conf = np.log(np.clip(1.0 - confidence, 1e-12, None))  # log distance from certainty: spreads the saturated end
    lognorm = np.log(np.clip(norms, tiny, None))
    features = {"confidence": conf[:, None], "confidence+norm": np.stack([conf, lognorm], axis=1),
                "norm": lognorm[:, None]}  # fmt: skip
    y = wrong.astype(int)
    folds = min(5, int(y.sum()), int((1 - y).sum()))
    if folds < 2:
        return {"folds": folds}
    out: dict[str, Any] = {"folds": folds}
    for name, x in features.items():
        scores = []
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[train], y[train])
            scores.append(float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])))
        out[name] = {"fold_aurocs": scores, "mean": float(np.mean(scores))}
    out["gain"] = out["confidence+norm"]["mean"] - out["confidence"]["mean"]
    both, alone = out["confidence+norm"]["fold_aurocs"], out["confidence"]["fold_aurocs"]
    out["fold_gains"] = [a - b for a, b in zip(both, alone, strict=True)]
    return out


def one_seed(args: Any, cfg: dict, seed: int) -> dict:
    import lightning.pytorch as pl
    from scipy.stats import spearmanr

    from lightning_sensitivity.callbacks import JacobianNormMonitor
    from lightning_sensitivity.models import LitClassifier

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"],
                           batch_size=cfg["batch_size"], seed=seed)  # fmt: skip
    monitor = JacobianNormMonitor(
        every_n_epochs=1, num_samples=cfg["probe_samples"], seed=seed, val_data=C.dataset_tensors(dm.test_dataset)
    )
    module = LitClassifier(C.build_mlp(dm, cfg["width"], cfg["depth"]), lr=cfg["lr"], momentum=cfg["momentum"])
    outcome = C.fit(module, dm, out=args.out, run_name=f"seed{seed}", max_epochs=cfg["max_epochs"], callbacks=[monitor])
    found = C.artifacts(outcome.log_dir, "jacobian_norm")
    per_epoch = []
    for art in found:
        wrong = ~art.arrays["val_correct"].astype(bool)
        row = {"epoch": art.epoch, "num_points": int(wrong.size), "num_wrong": int(wrong.sum()),
               "auroc": auroc(art.arrays["val_norms"].astype(float), wrong)}  # fmt: skip
        row.update({name: art.scalar(name) for name in SCORES})
        per_epoch.append(row)
    final = found[-1]
    norms, wrong = final.arrays["val_norms"].astype(float), ~final.arrays["val_correct"].astype(bool)
    probs = probe_probabilities(module, monitor)
    confidence = probs.max(axis=1)
    if not np.array_equal(probs.argmax(axis=1) == monitor.probe_sets["val"].targets.numpy(), ~wrong):
        raise RuntimeError("the probe points' predictions differ from the monitor's saved correctness")
    entropy = -(probs * np.log(np.clip(probs, 1e-300, None))).sum(axis=1)
    return {
        "seed": seed,
        "per_epoch": per_epoch,
        "final": {
            "epoch": final.epoch,
            "num_points": int(wrong.size),
            "num_wrong": int(wrong.sum()),
            "norm_auroc": auroc(norms, wrong),
            "confidence_auroc": auroc(1 - confidence, wrong),
            "entropy_auroc": auroc(entropy, wrong),
            "callback": {name: final.scalar(name) for name in SCORES},
            "spearman_norm_vs_confidence": float(spearmanr(norms, confidence).statistic),
            "median_norm_correct": float(np.median(norms[~wrong])),
            "median_norm_wrong": float(np.median(norms[wrong])) if wrong.any() else None,
            "within_confidence_bins": within_confidence_bins(norms, confidence, wrong, cfg["confidence_bins"]),
            "cross_validated": cross_validated(norms, confidence, wrong, seed),
        },
        "val_acc": outcome.metrics.get("val/acc"),
        "fit_seconds": round(outcome.seconds, 1),
        "plot": {"norms": norms.tolist(), "wrong": wrong.tolist()} if seed == args.seed else None,
    }


def plot(runs: list[dict], path: Path) -> None:
    fig, axes = C.new_figure(ncols=2)
    first = runs[0]
    norms, wrong = np.array(first["plot"]["norms"]), np.array(first["plot"]["wrong"], dtype=bool)
    ax = axes[0, 0]
    # densities over log10(norm): the norms span orders of magnitude (the softmax saturates at confident points)
    logs = np.log10(np.clip(norms, np.finfo(float).tiny, None))
    bins = np.linspace(logs.min(), logs.max(), 40) if logs.size and logs.max() > logs.min() else 40
    ax.hist(logs[~wrong], bins=bins, density=True, alpha=0.6, label=f"correct (n={int((~wrong).sum())})")
    ax.hist(logs[wrong], bins=bins, density=True, alpha=0.6, label=f"misclassified (n={int(wrong.sum())})")
    ax.set_xlabel("log10 Jacobian norm at the test point")
    ax.set_ylabel("density")
    ax.set_title(f"seed {first['seed']}, epoch {first['final']['epoch']}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    epochs = [e["epoch"] for e in first["per_epoch"]]
    for name, style, label in (("misclassification_auroc", "o-", "Jacobian norm"),
                               ("confidence_auroc", "s--", "1 - max softmax"),
                               ("entropy_auroc", "^:", "entropy")):  # fmt: skip
        values = np.array([[np.nan if e[name] is None else e[name] for e in r["per_epoch"]] for r in runs], dtype=float)
        mean, low, high = C.t_band(values)
        line = ax.plot(epochs, mean, style, ms=3, label=f"{label} (mean of {len(runs)} seeds)")[0]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(0.5, color="grey", lw=1, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("AUROC for misclassification")
    ax.set_ylim(0.4, 1.0)
    ax.set_title("band: 95 % interval over seeds", fontsize=8)
    ax.legend(fontsize=7)
    C.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    if args.replot:
        earlier = C.load_results(args)
        runs = earlier["results"]["runs"]
        if runs and runs[0].get("plot"):
            plot(runs, args.out / "per_point_auroc.png")
        C.write_results(args, start, earlier["config"], {**earlier["results"], "summary": summarise(runs)})
        return
    cfg = C.load_config(args)
    runs = []
    for seed in C.seeds(args, cfg):
        runs.append(one_seed(args, cfg, seed))
        f = runs[-1]["final"]
        C.log(args, f"seed {seed}: norm AUROC {f['norm_auroc']}, confidence {f['confidence_auroc']}, "
              f"CV gain {f['cross_validated'].get('gain')} ({runs[-1]['fit_seconds']} s)")
    plot(runs, args.out / "per_point_auroc.png")
    C.write_results(args, start, cfg, {"seeds": C.seeds(args, cfg), "runs": runs, "summary": summarise(runs)})


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Over seeds: mean and 95 % interval of each final-epoch score (also what ``--replot`` recomputes)."""
    finals = [r["final"] for r in runs]
    summary = {
        name: C.mean_ci([f[name] for f in finals])
        for name in ("norm_auroc", "confidence_auroc", "entropy_auroc")
    }
    # a correlation: its interval on Fisher's z scale stays within [-1, 1]
    summary["spearman_norm_vs_confidence"] = C.correlation_ci([f["spearman_norm_vs_confidence"] for f in finals])
    summary["norm_minus_confidence"] = C.mean_ci(
        [None if f["norm_auroc"] is None or f["confidence_auroc"] is None else f["norm_auroc"] - f["confidence_auroc"]
         for f in finals]
    )  # fmt: skip
    summary["within_bins"] = C.mean_ci([f["within_confidence_bins"]["weighted_auroc"] for f in finals])
    bins = [f["within_confidence_bins"] for f in finals]
    summary["within_bins_confidence"] = C.mean_ci([b["weighted_confidence_auroc"] for b in bins])
    summary["within_bins_difference"] = C.mean_ci(
        [None if b["weighted_auroc"] is None else b["weighted_auroc"] - b["weighted_confidence_auroc"] for b in bins]
    )
    summary["cv_confidence"] = C.mean_ci([f["cross_validated"].get("confidence", {}).get("mean") for f in finals])
    summary["cv_both"] = C.mean_ci([f["cross_validated"].get("confidence+norm", {}).get("mean") for f in finals])
    summary["cv_norm"] = C.mean_ci([f["cross_validated"].get("norm", {}).get("mean") for f in finals])
    summary["cv_gain"] = C.mean_ci([f["cross_validated"].get("gain") for f in finals])
    summary["num_wrong"] = [f["num_wrong"] for f in finals]
    summary["val_acc"] = C.mean_ci([r["val_acc"] for r in runs])
    return summary


if __name__ == "__main__":
    main()
