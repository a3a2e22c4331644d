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


def is_collapsed(train_acc: float | None, norm: float | None, floor: float) -> bool:
    """A run that did not train: eval-mode training accuracy below ``floor``, or no positive finite test norm (a
    dead net's softmax is constant, so its Jacobian is exactly 0)."""
    bad_acc = train_acc is None or not np.isfinite(train_acc) or train_acc < floor
    return bool(bad_acc or norm is None or not np.isfinite(norm) or norm <= 0)


#: how a run decides it has reached ``stop_at_train_acc`` (config ``stop_on``)
STOP_RULES = ("eval_train_acc", "running_train_acc")


def _train_acc_recorder(inputs: Any, targets: Any, stop_at: float | None = None) -> Any:
    import lightning.pytorch as pl

    class TrainAccRecorder(pl.Callback):
        """Eval-mode accuracy on the (un-augmented) training set after every epoch, keyed by completed epochs (the
        monitor's epoch numbering). ``evaluate`` restores the training flag and draws no random numbers. With
        ``stop_at``, training stops after the first epoch whose eval-mode accuracy reaches it."""

        def __init__(self) -> None:
            self.accuracy: list[tuple[int, float]] = []

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.accuracy.append((0, C.evaluate(pl_module, inputs, targets)[1]))

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            accuracy = C.evaluate(pl_module, inputs, targets)[1]
            self.accuracy.append((trainer.current_epoch + 1, accuracy))
            if stop_at is not None and accuracy >= stop_at:
                trainer.should_stop = True

    return TrainAccRecorder()


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
    # a full-batch epoch is a single step: measuring every 10th keeps the cost in proportion; the baselines are
    # measured every epoch, so that another variant can be compared with its baseline at matched training accuracy
    every = 10 * cfg["every_n_epochs"] if full_batch else cfg["every_n_epochs"]
    if variant == "baseline" and cfg.get("baseline_every_epoch", True):
        every = 1
    # "eval_train_acc": stop when the eval-mode accuracy on the training set (no augmentation, labels as trained on)
    # reaches the target -- the accuracy `reached_target` and the gap use, so an augmented run is not held to the
    # harder target of fitting its shifted images; "running_train_acc": the running train/acc of the epoch
    stop_on = cfg.get("stop_on", "running_train_acc")
    if stop_on not in STOP_RULES:
        raise ValueError(f"config stop_on={stop_on!r}: expected one of {STOP_RULES}")
    recorder = _train_acc_recorder(train_x, train_y, cfg["stop_at_train_acc"] if stop_on == "eval_train_acc" else None)
    monitor = JacobianNormMonitor(
        every_n_epochs=every,
        at_init=True,
        num_samples=cfg["probe_samples"],
        seed=seed,
        val_data=probes["test"],
        train_data=(train_x, train_y),
    )
    net = C.build_mlp(dm, settings["width"], settings["depth"])
    module = LitClassifier(net, lr=settings["lr"], momentum=cfg["momentum"])
    outcome = C.fit(
        module,
        dm,
        out=args.out,
        run_name=run_name,
        max_epochs=cfg["full_batch_max_epochs"] if full_batch else cfg.get(f"{variant}_max_epochs", cfg["max_epochs"]),
        callbacks=[monitor, recorder],
        stop_at_train_acc=cfg["stop_at_train_acc"] if stop_on == "running_train_acc" else None,
        test=True,
    )
    final = C.final_artifact(outcome.log_dir, "jacobian_norm")
    train_loss, train_acc = C.evaluate(module, train_x, train_y)
    test_loss, test_acc = outcome.metrics["test/loss"], outcome.metrics["test/acc"]
    # per measured epoch: the test norm and the eval-mode training accuracy at the same weights
    by_epoch = dict(recorder.accuracy)
    history = [{"epoch": a.epoch, "jacobian_test_mean": a.scalar("val_mean"), "train_acc": by_epoch.get(a.epoch)}
               for a in C.artifacts(outcome.log_dir, "jacobian_norm")]  # fmt: skip
    norm = final.scalar("val_mean")
    collapsed = is_collapsed(train_acc, norm, cfg.get("collapse_below_train_acc", 0.5))
    return {
        "run": run_name,
        "seed": seed,
        "variant": variant,
        **settings,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "max_epochs": (
            cfg["full_batch_max_epochs"] if full_batch else cfg.get(f"{variant}_max_epochs", cfg["max_epochs"])
        ),
        "measured_epoch": final.epoch,
        "reached_target": bool(train_acc >= cfg["stop_at_train_acc"]),
        "collapsed": collapsed,
        "history": history,
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
    """Spearman and Kendall rank correlations (with p-values) of two per-run quantities over the runs that are not
    collapsed, with a 95 % Fisher-z interval for Spearman's rho (within [-1, 1])."""
    from scipy.stats import kendalltau, spearmanr

    runs = [r for r in runs if not r.get("collapsed")]
    x = np.array([np.nan if r[x_key] is None else r[x_key] for r in runs], dtype=float)
    y = np.array([np.nan if r[y_key] is None else r[y_key] for r in runs], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    empty = {"n": n, "spearman": None, "spearman_p": None, "spearman_low": None, "spearman_high": None,
             "kendall": None, "kendall_p": None}  # fmt: skip
    # a constant column has no ranks to correlate (spearmanr would warn and return NaN)
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return empty
    rho, rho_p = spearmanr(x[keep], y[keep])
    tau, tau_p = kendalltau(x[keep], y[keep])
    low, high = C.fisher_ci(float(rho), n)
    return {"n": n, "spearman": rho, "spearman_p": rho_p, "spearman_low": low, "spearman_high": high,
            "kendall": tau, "kendall_p": tau_p}  # fmt: skip


def _matched_baseline_norm(base: dict, accuracy: float | None) -> tuple[float | None, int | None]:
    """The baseline's test norm at its first measured epoch whose eval-mode training accuracy reaches ``accuracy``
    (else its last measurement): the baseline at the training accuracy the other run ended with."""
    history = [h for h in base.get("history") or [] if h.get("train_acc") is not None
               and h.get("jacobian_test_mean") is not None]  # fmt: skip
    if accuracy is None or not history:
        return None, None
    for h in history:
        if h["train_acc"] >= accuracy:
            return h["jacobian_test_mean"], h["epoch"]
    return history[-1]["jacobian_test_mean"], history[-1]["epoch"]


def directional(runs: list[dict], num_bases: int, seeds: list[int]) -> dict[str, Any]:
    """For each variant, compare its final test Jacobian norm and gap with its own baseline (same base, same seed);
    the geometric-mean ratio of each seed (over bases) gives the interval over seeds. Pairs where either run
    collapsed (or has no positive norm) are left out and counted; ``matched_*`` compares with the baseline measured
    at the training accuracy the variant ended with (the protocol for variants that stop short of the target)."""
    by_key = {(r["seed"], r["base"], r["variant"]): r for r in runs}
    out: dict[str, Any] = {}

    def usable(run: dict | None) -> bool:
        norm = None if run is None else run.get("jacobian_test_mean")
        return run is not None and not run.get("collapsed") and norm is not None and np.isfinite(norm) and norm > 0

    for variant, sign in EXPECTED_DIRECTION.items():
        pairs, excluded = [], []
        for seed in seeds:
            for b in range(num_bases):
                base, other = by_key.get((seed, b, "baseline")), by_key.get((seed, b, variant))
                if base is None or other is None:
                    continue
                if not (usable(base) and usable(other)):
                    excluded.append({"seed": seed, "base": b})
                    continue
                ratio = other["jacobian_test_mean"] / base["jacobian_test_mean"]
                matched, epoch = _matched_baseline_norm(base, other["train_acc"])
                pairs.append({"seed": seed, "base": b, "norm_ratio": ratio,
                              "matched_norm_ratio": other["jacobian_test_mean"] / matched if matched else None,
                              "matched_baseline_epoch": epoch,
                              "other_reached_target": other.get("reached_target"),
                              "gap_acc_change": other["gap_acc"] - base["gap_acc"]})  # fmt: skip
        entry = {"expected": "larger norm" if sign > 0 else "smaller norm", "pairs": pairs,
                 "excluded_pairs": excluded, "total": len(pairs)}  # fmt: skip
        for prefix, key in (("", "norm_ratio"), ("matched_", "matched_norm_ratio")):
            ratios = np.array([p[key] for p in pairs if p[key] is not None], dtype=float)
            held = int(np.sum(np.sign(np.log(ratios)) == sign)) if ratios.size else 0
            per_seed = [float(np.mean([np.log(p[key]) for p in pairs if p["seed"] == s and p[key] is not None]))
                        for s in seeds if any(p["seed"] == s and p[key] is not None for p in pairs)]  # fmt: skip
            log_ci = C.mean_ci(per_seed)
            entry.update({
                f"{prefix}held": held,
                f"{prefix}count": int(ratios.size),
                f"{prefix}median_norm_ratio": float(np.median(ratios)) if ratios.size else None,
                # geometric-mean ratio over bases, mean and 95 % interval over seeds (log scale, back-transformed)
                f"{prefix}geomean_ratio": None if log_ci["mean"] is None else float(np.exp(log_ci["mean"])),
                f"{prefix}geomean_ratio_low": None if log_ci["low"] is None else float(np.exp(log_ci["low"])),
                f"{prefix}geomean_ratio_high": None if log_ci["high"] is None else float(np.exp(log_ci["high"])),
                f"{prefix}per_seed_geomean_ratio": [float(np.exp(v)) for v in per_seed],
            })  # fmt: skip
        entry["holds_in_majority"] = bool(pairs and entry["held"] > len(pairs) / 2)
        out[variant] = entry
    return out


def plot_scatter(runs: list[dict], stats: dict, path: Path) -> None:
    fig, axes = C.new_figure(ncols=2)
    panels = ((axes[0, 0], "gap_acc", "train acc - test acc"), (axes[0, 1], "gap_loss", "test loss - train loss"))
    for ax, gap_key, label in panels:
        for variant, color in COLORS.items():
            sel = [r for r in runs if r["variant"] == variant and not r.get("collapsed")]
            ax.scatter([r[gap_key] for r in sel], [r["jacobian_test_mean"] for r in sel], c=color, s=22, label=variant)
        s = stats[f"jacobian_vs_{gap_key}"]
        rho = "n/a" if s["spearman"] is None else f"{s['spearman']:.2f}"
        if s.get("spearman_low") is not None:
            rho += f" [{s['spearman_low']:.2f}, {s['spearman_high']:.2f}]"
        tau = "n/a" if s["kendall"] is None else f"{s['kendall']:.2f}"
        collapsed = sum(bool(r.get("collapsed")) for r in runs)
        ax.set_title(f"Spearman {rho}, Kendall {tau} (n={s['n']}" + (f", {collapsed} collapsed left out)"
                     if collapsed else ")"), fontsize=8)  # fmt: skip
        ax.set_xlabel(f"generalization gap: {label}")
        if any(not r.get("collapsed") and (r["jacobian_test_mean"] or 0) > 0 for r in runs):
            ax.set_yscale("log")
        else:  # nothing trained: a log axis has nothing to scale to
            ax.text(0.5, 0.5, "no run that trained", transform=ax.transAxes, ha="center")
        ax.set_ylabel("test Jacobian norm (mean)")
    if any(not r.get("collapsed") for r in runs):
        axes[0, 0].legend(fontsize=7)
    C.save_figure(fig, path)


def plot_directions(direction: dict, path: Path) -> None:
    fig, axes = C.new_figure(size=(5.0, 3.4))
    ax = axes[0, 0]
    labels = []
    for i, (variant, d) in enumerate(direction.items()):
        ratios = [p["norm_ratio"] for p in d["pairs"]]
        jitter = np.linspace(-0.15, 0.15, len(ratios)) if len(ratios) > 1 else np.zeros(len(ratios))
        ax.scatter(i + jitter, ratios, c=COLORS[variant], s=25, label="final vs final" if i == 0 else None)
        matched = [(j, p["matched_norm_ratio"]) for j, p in zip(jitter, d["pairs"], strict=True)
                   if p.get("matched_norm_ratio") is not None]  # fmt: skip
        if matched:
            ax.scatter([i + 0.3 + j for j, _ in matched], [m for _, m in matched], facecolors="none",
                       edgecolors=COLORS[variant], s=25, label="vs baseline at matched train acc" if i == 0 else None)
        if d.get("geomean_ratio_low") is not None:
            ax.errorbar([i], [d["geomean_ratio"]], yerr=[[d["geomean_ratio"] - d["geomean_ratio_low"]],
                        [d["geomean_ratio_high"] - d["geomean_ratio"]]], fmt="_", color="black", capsize=4, ms=14)
        labels.append(f"{variant}\npaper: {d['expected']}\nhere: {d['held']}/{d['total']} agree")
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    if any(d["pairs"] for d in direction.values()):
        ax.set_yscale("log")
    else:  # every pair had a collapsed run
        ax.text(0.5, 0.5, "no pair of runs that trained", transform=ax.transAxes, ha="center")
    ax.set_xticks(range(len(direction)), labels, fontsize=8)
    ax.set_ylabel("test Jacobian norm / its baseline's")
    ax.set_xlim(-0.6, len(direction) - 0.2)
    ax.set_title("black: geometric mean, 95 % interval over seeds", fontsize=8)
    if any(d["pairs"] for d in direction.values()):
        ax.legend(fontsize=6)
    C.save_figure(fig, path)


def analyse(runs: list[dict], cfg: dict, seeds: list[int]) -> dict[str, Any]:
    """Every statistic of the sweep from its per-run records (also what ``--replot`` recomputes)."""
    valid = [r for r in runs if not r.get("collapsed")]
    fitted = [r for r in valid if r["train_acc"] >= cfg["stop_at_train_acc"]]
    stats = {
        "jacobian_vs_gap_acc": correlations(valid, "jacobian_test_mean", "gap_acc"),
        "jacobian_vs_gap_loss": correlations(valid, "jacobian_test_mean", "gap_loss"),
        "jacobian_vs_gap_acc_fitted_only": correlations(fitted, "jacobian_test_mean", "gap_acc"),
        # random labels move both quantities a lot; without them the correlation rests on the other factors alone
        "jacobian_vs_gap_acc_true_labels": correlations(
            [r for r in valid if r["variant"] != "random_labels"], "jacobian_test_mean", "gap_acc"
        ),
        "jacobian_vs_test_acc": correlations(valid, "jacobian_test_mean", "test_acc"),
    }
    direction = directional(runs, len(cfg["bases"]), seeds)
    # the same correlations within each seed, summarised over seeds on Fisher's z scale (stays within [-1, 1])
    per_seed = {}
    for key, select in (("jacobian_vs_gap_acc", lambda r: True),
                        ("jacobian_vs_gap_acc_true_labels", lambda r: r["variant"] != "random_labels")):  # fmt: skip
        values = [correlations([r for r in valid if r["seed"] == s and select(r)], "jacobian_test_mean", "gap_acc")
                  for s in seeds]  # fmt: skip
        per_seed[key] = {"spearman": C.correlation_ci([v["spearman"] for v in values]),
                         "n_per_seed": [v["n"] for v in values],
                         "p_per_seed": [v["spearman_p"] for v in values]}  # fmt: skip
    ratios = np.array([np.nan if r["train_test_ratio"] is None else r["train_test_ratio"] for r in valid], dtype=float)
    by_seed = [np.array([np.nan if r["train_test_ratio"] is None else r["train_test_ratio"] for r in valid
                         if r["seed"] == s], dtype=float) for s in seeds]  # fmt: skip
    floor = cfg.get("collapse_below_train_acc", 0.5)
    summary = {
        "num_runs": len(runs),
        "num_collapsed": len(runs) - len(valid),
        "collapsed_runs": [r["run"] for r in runs if r.get("collapsed")],
        "collapse_below_train_acc": floor,
        "num_fitted": len(fitted),
        "reached_target_by_variant": {v: [sum(bool(r.get("reached_target", r["train_acc"] >= cfg["stop_at_train_acc"]))
                                              for r in runs if r["variant"] == v), sum(r["variant"] == v for r in runs)]
                                      for v in cfg["variants"]},  # fmt: skip
        "epochs_by_variant": {v: [min(e), max(e)] for v in cfg["variants"]
                              if (e := [r["epochs"] for r in runs if r["variant"] == v])},  # fmt: skip
        "steps_by_variant": {v: [min(e), max(e)] for v in cfg["variants"]
                             if (e := [r.get("steps") for r in runs
                                       if r["variant"] == v and r.get("steps")])},  # fmt: skip
        "train_below_test_norm": int(np.sum(ratios < 1)),
        "num_valid": len(valid),
        "median_train_test_ratio": float(np.nanmedian(ratios)) if np.isfinite(ratios).any() else None,
        "train_test_ratio_by_seed": C.mean_ci([float(np.nanmedian(v)) for v in by_seed if np.isfinite(v).any()]),
    }
    return {"seeds": seeds, "runs": runs, "correlation": stats, "per_seed_correlation": per_seed,
            "direction": direction, "summary": summary}  # fmt: skip


def plot_all(results: dict, out: Path) -> None:
    plot_scatter(results["runs"], results["correlation"], out / "jacobian_vs_gap.png")
    plot_directions(results["direction"], out / "jacobian_directions.png")


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    if args.replot:
        earlier = C.load_results(args)
        cfg, seeds = earlier["config"], earlier["results"]["seeds"]
        results = analyse(earlier["results"]["runs"], cfg, seeds)
        plot_all(results, args.out)
        C.write_results(args, start, cfg, results)
        return
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
                      f"test_acc={result['test_acc']:.3f} jac={C.clean(result['jacobian_test_mean'])} "
                      f"collapsed={result['collapsed']} ({result['fit_seconds']} s)")
                # after every run: the runs so far (a sweep stopped early leaves them; pairs need both runs)
                if len(runs) < len(seeds) * len(cfg["bases"]) * len(cfg["variants"]):
                    done = seeds[: seeds.index(seed) + 1]
                    C.write_results(args, start, {**cfg, "num_seeds_completed": len(done) - 1,
                                                  "num_runs_completed": len(runs)}, analyse(runs, cfg, done),
                                    partial=True)  # fmt: skip
    results = analyse(runs, cfg, seeds)
    plot_all(results, args.out)
    C.write_results(args, start, cfg, results)


if __name__ == "__main__":
    main()
