"""Novak et al. (2018): does the held-out input-output Jacobian norm track the generalization gap?

A sweep of fully-connected ReLU nets (widths, depths, learning rates, batch sizes) on an MNIST training subset, each
base configuration trained in four variants -- as is, with a fraction of random labels, full batch, and with
augmentation. ``JacobianNormMonitor`` measures the Frobenius norm of d softmax / d input on a fixed probe set of test
points (and of training points) during training and once more on the final weights (its test hook, fired by
``trainer.test``); the final value is read back from the saved artifacts. The generalization gap is train - test
accuracy (training accuracy in eval mode, on the labels trained on) and test - train loss.

Usage::

    python experiments/jacobian_vs_generalization.py [--quick] [--data-dir ../shared/data] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "jacobian_vs_generalization"
# the direction Novak et al. report for each variant relative to its baseline: +1 larger norm, -1 smaller
EXPECTED_DIRECTION = {"random_labels": +1, "full_batch": +1, "augment": -1}
COLORS = {"baseline": "tab:blue", "random_labels": "tab:red", "full_batch": "tab:orange", "augment": "tab:green"}


def run_one(
    args: Any, cfg: dict[str, Any], base: dict[str, Any], variant: str, run_name: str, probes: dict, seed: int
) -> dict:
    """Train one configuration and return its final Jacobian norms and generalization gap."""
    import lightning.pytorch as pl

    from lightning_sensitivity.callbacks import JacobianNormMonitor
    from lightning_sensitivity.models import LitClassifier

    settings = {**base, **cfg["variants"][variant]}
    full_batch = settings["batch_size"] == 0
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = C.make_datamodule(
        args,
        seed=seed,
        train_subset=cfg["train_subset"],
        val_split=cfg["val_split"],
        batch_size=settings["batch_size"],
        random_label_fraction=settings.get("random_label_fraction", 0.0),
        augment=settings.get("augment", False),
    )
    train_x, train_y = C.dataset_tensors(dm.train_eval_dataset)  # labels as trained on (random ones included)
    monitor = JacobianNormMonitor(
        # a full-batch epoch is a single step: measuring every 10th keeps the cost in proportion
        every_n_epochs=10 * cfg["every_n_epochs"] if full_batch else cfg["every_n_epochs"],
        at_init=True,
        num_samples=cfg["probe_samples"],
        seed=seed,
        val_data=probes["test"],
        train_data=(train_x, train_y),
    )
    module = LitClassifier(C.build_mlp(dm, settings["width"], settings["depth"]), lr=settings["lr"], momentum=cfg["momentum"])
    outcome = C.fit(
        module,
        dm,
        out=args.out,
        run_name=run_name,
        max_epochs=cfg["full_batch_max_epochs"] if full_batch else cfg["max_epochs"],
        callbacks=[monitor],
        stop_at_train_acc=cfg["stop_at_train_acc"],
        test=True,
    )
    final = C.final_artifact(outcome.log_dir, "jacobian_norm")
    train_loss, train_acc = C.evaluate(module, train_x, train_y)
    test_loss, test_acc = outcome.metrics["test/loss"], outcome.metrics["test/acc"]
    return {
        "run": run_name,
        "seed": seed,
        "variant": variant,
        **settings,
        "epochs": outcome.epochs,
        "measured_epoch": final.epoch,
        "fit_seconds": round(outcome.seconds, 1),
        "train_acc": train_acc,
        "train_loss": train_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "gap_acc": train_acc - test_acc,
        "gap_loss": test_loss - train_loss,
        "logged_gap_acc": outcome.metrics.get("generalization_gap/acc"),
        "jacobian_test_mean": final.scalar("val_mean"),
        "jacobian_test_median": final.scalar("val_median"),
        "jacobian_train_mean": final.scalar("train_mean"),
        "train_test_ratio": final.scalar("train_val_ratio"),
    }


def correlations(runs: list[dict], x_key: str, y_key: str) -> dict[str, Any]:
    """Spearman and Kendall rank correlations (with p-values) of two per-run quantities."""
    from scipy.stats import kendalltau, spearmanr

    x = np.array([r[x_key] for r in runs], dtype=float)
    y = np.array([r[y_key] for r in runs], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return {"n": int(keep.sum()), "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    rho, rho_p = spearmanr(x[keep], y[keep])
    tau, tau_p = kendalltau(x[keep], y[keep])
    return {"n": int(keep.sum()), "spearman": rho, "spearman_p": rho_p, "kendall": tau, "kendall_p": tau_p}


def directional(runs: list[dict], num_bases: int, seeds: list[int]) -> dict[str, Any]:
    """For each variant, compare its final test Jacobian norm and gap with its own baseline (same base, same seed);
    the geometric-mean ratio of each seed (over bases) gives the interval over seeds."""
    by_key = {(r["seed"], r["base"], r["variant"]): r for r in runs}
    out: dict[str, Any] = {}
    for variant, sign in EXPECTED_DIRECTION.items():
        pairs = []
        for seed in seeds:
            for b in range(num_bases):
                base, other = by_key.get((seed, b, "baseline")), by_key.get((seed, b, variant))
                if base is None or other is None:
                    continue
                ratio = other["jacobian_test_mean"] / base["jacobian_test_mean"]
                pairs.append({"seed": seed, "base": b, "norm_ratio": ratio,
                              "gap_acc_change": other["gap_acc"] - base["gap_acc"]})  # fmt: skip
        ratios = np.array([p["norm_ratio"] for p in pairs], dtype=float)
        held = int(np.sum(np.sign(np.log(ratios)) == sign)) if len(pairs) else 0
        per_seed = [float(np.mean([np.log(p["norm_ratio"]) for p in pairs if p["seed"] == s])) for s in seeds
                    if any(p["seed"] == s for p in pairs)]  # fmt: skip
        log_ci = C.mean_ci(per_seed)
        out[variant] = {
            "expected": "larger norm" if sign > 0 else "smaller norm",
            "pairs": pairs,
            "held": held,
            "total": len(pairs),
            "median_norm_ratio": float(np.median(ratios)) if len(pairs) else None,
            "holds_in_majority": bool(len(pairs) and held > len(pairs) / 2),
            # geometric-mean ratio over bases, mean and 95 % interval over seeds (on the log scale, back-transformed)
            "geomean_ratio": None if log_ci["mean"] is None else float(np.exp(log_ci["mean"])),
            "geomean_ratio_low": None if log_ci["low"] is None else float(np.exp(log_ci["low"])),
            "geomean_ratio_high": None if log_ci["high"] is None else float(np.exp(log_ci["high"])),
            "per_seed_geomean_ratio": [float(np.exp(v)) for v in per_seed],
        }
    return out


def plot_scatter(runs: list[dict], stats: dict, path: Path) -> None:
    fig, axes = C.new_figure(ncols=2)
    for ax, gap_key, label in ((axes[0, 0], "gap_acc", "train acc - test acc"), (axes[0, 1], "gap_loss", "test loss - train loss")):
        for variant, color in COLORS.items():
            sel = [r for r in runs if r["variant"] == variant]
            ax.scatter([r[gap_key] for r in sel], [r["jacobian_test_mean"] for r in sel], c=color, s=22, label=variant)
        s = stats[f"jacobian_vs_{gap_key}"]
        rho = "n/a" if s["spearman"] is None else f"{s['spearman']:.2f}"
        tau = "n/a" if s["kendall"] is None else f"{s['kendall']:.2f}"
        ax.set_title(f"Spearman {rho}, Kendall {tau} (n={s['n']})", fontsize=9)
        ax.set_xlabel(f"generalization gap: {label}")
        ax.set_yscale("log")
        ax.set_ylabel("test Jacobian norm (mean)")
    axes[0, 0].legend(fontsize=7)
    C.save_figure(fig, path)


def plot_directions(direction: dict, path: Path) -> None:
    fig, axes = C.new_figure(size=(5.0, 3.4))
    ax = axes[0, 0]
    labels = []
    for i, (variant, d) in enumerate(direction.items()):
        ratios = [p["norm_ratio"] for p in d["pairs"]]
        jitter = np.linspace(-0.15, 0.15, len(ratios)) if len(ratios) > 1 else np.zeros(len(ratios))
        ax.scatter(i + jitter, ratios, c=COLORS[variant], s=25)
        labels.append(f"{variant}\npaper: {d['expected']}\nhere: {d['held']}/{d['total']} agree")
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(direction)), labels, fontsize=8)
    ax.set_ylabel("test Jacobian norm / its baseline's")
    ax.set_xlim(-0.6, len(direction) - 0.4)
    C.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    cfg = C.load_config(args)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"])
    probes = {"test": C.dataset_tensors(dm.test_dataset)}  # the monitor draws a class-balanced subset of these
    runs = []
    seeds = C.seeds(args, cfg)
    for seed in seeds:
        for b, base in enumerate(cfg["bases"]):
            for variant in cfg["variants"]:
                run_name = f"seed{seed}_base{b}_{variant}"
                result = run_one(args, cfg, base, variant, run_name, probes, seed)
                result["base"] = b
                runs.append(result)
                C.log(args, f"{run_name}: epochs={result['epochs']} train_acc={result['train_acc']:.3f} "
                      f"test_acc={result['test_acc']:.3f} jac={result['jacobian_test_mean']:.4f} ({result['fit_seconds']} s)")
    fitted = [r for r in runs if r["train_acc"] >= cfg["stop_at_train_acc"]]
    stats = {
        "jacobian_vs_gap_acc": correlations(runs, "jacobian_test_mean", "gap_acc"),
        "jacobian_vs_gap_loss": correlations(runs, "jacobian_test_mean", "gap_loss"),
        "jacobian_vs_gap_acc_fitted_only": correlations(fitted, "jacobian_test_mean", "gap_acc"),
        # random labels move both quantities a lot; without them the correlation rests on the other factors alone
        "jacobian_vs_gap_acc_true_labels": correlations(
            [r for r in runs if r["variant"] != "random_labels"], "jacobian_test_mean", "gap_acc"
        ),
        "jacobian_vs_test_acc": correlations(runs, "jacobian_test_mean", "test_acc"),
    }
    direction = directional(runs, len(cfg["bases"]), seeds)
    # the same correlations within each seed, summarised over seeds
    per_seed = {}
    for key, select in (("jacobian_vs_gap_acc", lambda r: True),
                        ("jacobian_vs_gap_acc_true_labels", lambda r: r["variant"] != "random_labels")):  # fmt: skip
        values = [correlations([r for r in runs if r["seed"] == s and select(r)], "jacobian_test_mean", "gap_acc")
                  for s in seeds]  # fmt: skip
        per_seed[key] = {"spearman": C.mean_ci([v["spearman"] for v in values]), "n_per_seed": [v["n"] for v in values],
                         "p_per_seed": [v["spearman_p"] for v in values]}  # fmt: skip
    ratios = np.array([r["train_test_ratio"] for r in runs], dtype=float)
    summary = {
        "num_runs": len(runs),
        "num_fitted": len(fitted),
        "train_below_test_norm": int(np.sum(ratios < 1)),
        "median_train_test_ratio": float(np.nanmedian(ratios)),
        "train_test_ratio_by_seed": C.mean_ci([float(np.nanmedian([r["train_test_ratio"] for r in runs if r["seed"] == s]))
                                               for s in seeds]),
    }
    plot_scatter(runs, stats, args.out / "jacobian_vs_gap.png")
    plot_directions(direction, args.out / "jacobian_directions.png")
    C.write_results(args, start, cfg, {"seeds": seeds, "runs": runs, "correlation": stats, "per_seed_correlation": per_seed,
                                         "direction": direction, "summary": summary})


if __name__ == "__main__":
    main()
