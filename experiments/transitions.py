"""Novak et al. (2018): does the network carve the input space more finely away from the data than near it?

``TransitionMonitor`` samples closed ellipses through three anchors and counts, at every measured epoch, how often
the ReLU activation pattern (summed Hamming distance), the linear region and the predicted class change along them,
segment by segment. One run per seed measures three kinds of anchors with the same monitor: test points (its
validation probe set is the test split), training points, and "random" anchors -- the same test triples with each
image's pixels shuffled (off the data manifold, same intensity histogram). Compared: per-ellipse totals between the
anchor kinds, and the transition density near the anchors (within 1/24 of the period around each) relative to
elsewhere (``near_anchor_ratio``), at initialisation and after training, over seeds.

Usage::

    python experiments/transitions.py [--quick] [--data-dir ../shared/data] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "transitions"
COUNTS = ("activation", "region_changes", "prediction")
SPLITS = ("val", "train", "random")
LABELS = {"val": "test anchors", "train": "training anchors", "random": "shuffled (off-manifold) anchors"}
PREFIX = {"val": "", "train": "train_", "random": "random_"}
DENSITY_BINS = 48


def train_once(args: Any, cfg: dict, seed: int) -> tuple[Any, list[Any]]:
    """One seeded fit with a TransitionMonitor on test, training and shuffled anchors."""
    import lightning.pytorch as pl

    from lightning_sensitivity.callbacks import TransitionMonitor
    from lightning_sensitivity.models import LitClassifier

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"],
                           batch_size=cfg["batch_size"], seed=seed)  # fmt: skip
    monitor = TransitionMonitor(
        num_trajectories=cfg["num_trajectories"],
        num_points=cfg["num_points"],
        splits=SPLITS,
        every_n_epochs=cfg["every_n_epochs"],
        num_samples=cfg["probe_samples"],
        seed=seed,
        val_data=C.dataset_tensors(dm.test_dataset),
        train_data=C.dataset_tensors(dm.train_eval_dataset),
    )
    module = LitClassifier(C.build_mlp(dm, cfg["width"], cfg["depth"]), lr=cfg["lr"], momentum=cfg["momentum"])
    outcome = C.fit(module, dm, out=args.out, run_name=f"seed{seed}", max_epochs=cfg["max_epochs"], callbacks=[monitor])
    return outcome, C.artifacts(outcome.log_dir, "transitions")


def per_run(found: list[Any], num_points: int) -> dict[str, Any]:
    """Per measured epoch and anchor kind: mean counts per ellipse, near-anchor ratio, mean density profile."""
    import torch

    from lightning_sensitivity.functional import near_anchor_ratio

    out: dict[str, Any] = {"epoch": [a.epoch for a in found]}
    for split in SPLITS:
        p = PREFIX[split]
        entry: dict[str, Any] = {f"{name}_mean": [float(np.mean(a.arrays[p + name])) for a in found] for name in COUNTS}
        entry["near_anchor_ratio"] = [near_anchor_ratio(torch.as_tensor(a.arrays[p + "segments"].astype(np.int64)))
                                      for a in found]  # fmt: skip
        entry["saturation"] = [float(np.mean(a.arrays[p + "region_changes"])) / num_points for a in found]
        # mean Hamming distance per segment along the ellipse, averaged over trajectories, in DENSITY_BINS bins
        entry["profile"] = [a.arrays[p + "segments"].mean(axis=0).reshape(DENSITY_BINS, -1).mean(axis=1).tolist()
                            for a in (found[0], found[-1])]  # fmt: skip
        entry["final_per_ellipse"] = found[-1].arrays[p + "activation"].tolist()
        entry["init_per_ellipse"] = found[0].arrays[p + "activation"].tolist()
        out[split] = entry
    return out


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Over seeds: mean and 95 % interval of each count, of the ratios between anchor kinds and of the near ratio."""
    from scipy.stats import mannwhitneyu

    out: dict[str, Any] = {}
    for when, i in (("init", 0), ("final", -1)):
        w: dict[str, Any] = {}
        for split in SPLITS:
            w[split] = {name: C.mean_ci([r[split][f"{name}_mean"][i] for r in runs]) for name in COUNTS}
            w[split]["near_anchor_ratio"] = C.mean_ci([r[split]["near_anchor_ratio"][i] for r in runs])
            # seeds whose near-anchor density is below / above that elsewhere
            near = [r[split]["near_anchor_ratio"][i] for r in runs if r[split]["near_anchor_ratio"][i] is not None]
            w[split]["near_below_one"] = [sum(v < 1 for v in near), len(near)]
            w[split]["saturation"] = C.mean_ci([r[split]["saturation"][i] for r in runs])
        for a, b in (("val", "train"), ("random", "val")):
            w[f"{a}_over_{b}"] = {
                name: C.mean_ci([r[a][f"{name}_mean"][i] / r[b][f"{name}_mean"][i] if r[b][f"{name}_mean"][i] else None
                                 for r in runs])
                for name in COUNTS
            }  # fmt: skip
            key = "final_per_ellipse" if when == "final" else "init_per_ellipse"
            w[f"{a}_over_{b}"]["p_greater_per_seed"] = [
                float(mannwhitneyu(r[a][key], r[b][key], alternative="greater").pvalue) for r in runs
            ]
        out[when] = w
    return out


def plot_counts(runs: list[dict], path: Path) -> None:
    fig, axes = C.new_figure(ncols=3, size=(3.6, 3.2))
    titles = {"activation": "ReLU pattern changes (Hamming)", "region_changes": "linear-region changes",
              "prediction": "prediction changes"}  # fmt: skip
    epochs = runs[0]["epoch"]
    for ax, name in zip(axes[0], COUNTS, strict=True):
        for split, style in zip(SPLITS, ("o-", "s--", "^:"), strict=True):
            values = np.array([r[split][f"{name}_mean"] for r in runs], dtype=float)  # [seeds, epochs]
            mean, low, high = C.t_band(values)
            yerr = np.nan_to_num(np.stack([mean - low, high - mean]))
            ax.errorbar(epochs, mean, yerr=yerr, fmt=style, ms=3, capsize=2, label=LABELS[split])
        ax.set_title(f"{titles[name]}\n(mean, 95 % interval over {len(runs)} seeds)", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("transitions per ellipse")
        ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    C.save_figure(fig, path)


def plot_density(runs: list[dict], num_points: int, final_epoch: int, path: Path) -> None:
    fig, axes = C.new_figure(ncols=2, size=(5.0, 3.3))
    position = (np.arange(DENSITY_BINS) + 0.5) / DENSITY_BINS
    for ax, (when, i) in zip(axes[0], (("initialisation", 0), (f"epoch {final_epoch}", 1)), strict=True):
        for split, style in zip(SPLITS, ("-", "--", ":"), strict=True):
            # each seed's profile divided by its own mean, then mean and 95 % interval over seeds
            profiles = np.array([r[split]["profile"][i] for r in runs], dtype=float)
            own_mean = profiles.mean(axis=1, keepdims=True)
            scaled = profiles / np.where(own_mean > 0, own_mean, np.nan)
            mean, low, high = C.t_band(scaled)
            line = ax.plot(position, mean, style, lw=1.3, label=LABELS[split])[0]
            ax.fill_between(position, low, high, color=line.get_color(), alpha=0.15, lw=0)
        for anchor in (0.0, 1 / 3, 2 / 3):
            ax.axvline(anchor, color="grey", lw=0.8, ls=":")
            ax.axvspan(anchor - 1 / 24, anchor + 1 / 24, color="grey", alpha=0.12)
        ax.axvspan(1 - 1 / 24, 1.0, color="grey", alpha=0.12)
        ax.set_xlim(0, 1)
        ax.set_title(f"{when} (band: 95 % interval over {len(runs)} seeds)", fontsize=8)
        ax.set_xlabel("position along the ellipse (fraction of the period)")
        ax.set_ylabel("transitions per segment / its mean")
    axes[0, 0].legend(fontsize=7)
    C.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    if args.replot:
        earlier = C.load_results(args)
        results = {**earlier["results"], "summary": summarise(earlier["results"]["runs"])}
        plot_counts(results["runs"], args.out / "transitions.png")
        plot_density(results["runs"], earlier["config"]["num_points"], results["final_epoch"],
                     args.out / "transitions_density.png")  # fmt: skip
        C.write_results(args, start, earlier["config"], results)
        return
    cfg = C.load_config(args)
    if cfg["num_points"] % DENSITY_BINS:
        raise ValueError(f"`num_points` expected a multiple of {DENSITY_BINS}, got {cfg['num_points']}")
    runs, fits = [], {}
    for seed in C.seeds(args, cfg):
        outcome, found = train_once(args, cfg, seed)
        runs.append(per_run(found, cfg["num_points"]))
        fits[str(seed)] = {"fit_seconds": round(outcome.seconds, 1), "val_acc": outcome.metrics.get("val/acc"),
                           "train_acc": outcome.metrics.get("train/acc"), "num_units": found[-1].meta.get("num_units")}
        C.log(args, f"seed {seed}: near-anchor ratio (test) {runs[-1]['val']['near_anchor_ratio']}")
    final_epoch = runs[0]["epoch"][-1]
    plot_counts(runs, args.out / "transitions.png")
    plot_density(runs, cfg["num_points"], final_epoch, args.out / "transitions_density.png")
    results = {"seeds": C.seeds(args, cfg), "fits": fits, "runs": runs, "final_epoch": final_epoch,
               "summary": summarise(runs), "half_width": 1 / 24, "density_bins": DENSITY_BINS}  # fmt: skip
    C.write_results(args, start, cfg, results)


if __name__ == "__main__":
    main()
