"""Fort et al. (2019): gradient stiffness by class and by input distance over training, and the learning rate's effect.

For each learning rate, one fully-connected net is trained with plain SGD on an MNIST training subset while
``StiffnessMonitor`` measures, every epoch, the sign and cosine stiffness of per-example loss gradients between
training probe points (``train_train``) and between training and held-out points (``train_val``): class-by-class
matrices, same-class vs different-class means, and the stiffness as a function of the input distance of the pair
with its critical length (the distance where the binned sign stiffness first reaches zero). Everything is read back
from the saved artifacts.

Usage::

    python experiments/stiffness.py [--quick] [--data-dir ../shared/data] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "stiffness"
GROUPS = ("train_train", "train_val")
SCALARS = ("sign_mean", "cosine_mean", "same_class_sign", "different_class_sign", "same_class_cosine",
           "different_class_cosine", "critical_length")  # fmt: skip


def train_at(args: Any, cfg: dict, lr: float) -> tuple[Any, list[Any]]:
    """One seeded fit at learning rate ``lr`` with a StiffnessMonitor measuring every epoch."""
    import lightning.pytorch as pl

    from lightning_sensitivity.callbacks import StiffnessMonitor
    from lightning_sensitivity.models import LitClassifier

    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"], batch_size=cfg["batch_size"])
    monitor = StiffnessMonitor(
        groups=GROUPS,
        class_names=list(dm.class_names),
        distance=cfg["distance"],
        num_distance_bins=cfg["num_distance_bins"],
        every_n_epochs=1,
        num_samples=cfg["probe_samples"],
        seed=args.seed,
        val_data=C.dataset_tensors(dm.test_dataset),
        train_data=C.dataset_tensors(dm.train_eval_dataset),
    )
    module = LitClassifier(C.build_mlp(dm, cfg["width"], cfg["depth"]), lr=lr, momentum=cfg["momentum"])
    outcome = C.fit(module, dm, out=args.out, run_name=f"lr{lr:g}", max_epochs=cfg["max_epochs"], callbacks=[monitor])
    return outcome, C.artifacts(outcome.log_dir, "stiffness")


def series(found: list[Any]) -> dict[str, Any]:
    """Per-group, per-epoch scalars from the artifacts."""
    out: dict[str, Any] = {"epoch": [a.epoch for a in found]}
    for group in GROUPS:
        out[group] = {name: [a.scalar(f"{group}/{name}") for a in found] for name in SCALARS}
    return out


def pick_epochs(epochs: list[int], count: int) -> list[int]:
    """``count`` epochs spread over the run, always the first and the last."""
    idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, count)).astype(int))
    return [epochs[i] for i in idx]


def plot_matrices(found: list[Any], epochs: list[int], names: list[str], path: Path) -> None:
    by_epoch = {a.epoch: a for a in found}
    fig, axes = C.new_figure(ncols=len(epochs), nrows=len(GROUPS), size=(2.6, 2.5))
    image = None
    for r, group in enumerate(GROUPS):
        for c, epoch in enumerate(epochs):
            ax = axes[r, c]
            matrix = by_epoch[epoch].arrays[f"{group}/class_sign"]
            image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(f"{group}, epoch {epoch}", fontsize=8)
            ax.set_xticks(range(len(names)), names, fontsize=6)
            ax.set_yticks(range(len(names)), names, fontsize=6)
    fig.colorbar(image, ax=axes, shrink=0.6, label="class sign stiffness")
    C.save_figure(fig, path)


def plot_same_vs_different(ref: dict, path: Path) -> None:
    fig, axes = C.new_figure(ncols=2, size=(4.0, 3.2))
    for ax, kind in zip(axes[0], ("sign", "cosine")):
        for group, style in zip(GROUPS, ("-", "--")):
            for which, color in (("same_class", "tab:blue"), ("different_class", "tab:red")):
                values = np.array([np.nan if v is None else v for v in ref[group][f"{which}_{kind}"]], dtype=float)
                ax.plot(ref["epoch"], values, style, color=color, marker="o", ms=3, label=f"{group} {which.replace('_', '-')}")
        ax.axhline(0, color="grey", lw=1, ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{kind} stiffness")
    axes[0, 0].legend(fontsize=6)
    C.save_figure(fig, path)


def plot_distance(found: list[Any], by_lr: dict, path: Path) -> None:
    from matplotlib import colormaps

    fig, axes = C.new_figure(ncols=2, size=(4.2, 3.3))
    ax = axes[0, 0]
    cmap = colormaps["viridis"]
    for i, art in enumerate(found):
        edges = art.arrays["train_val/bin_edges"]
        centres = (edges[:-1] + edges[1:]) / 2
        ax.plot(centres, art.arrays["train_val/distance_sign"], color=cmap(i / max(1, len(found) - 1)), lw=1.2,
                label=f"epoch {art.epoch}" if i in (0, len(found) - 1) else None)
        length = art.scalar("train_val/critical_length")
        if np.isfinite(length):
            ax.plot([length], [0], "x", color=cmap(i / max(1, len(found) - 1)))
    ax.axhline(0, color="grey", lw=1, ls=":")
    ax.set_xlabel(f"{found[0].meta.get('distance', 'cosine')} input distance (train_val pairs)")
    ax.set_ylabel("mean sign stiffness")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for lr, data in by_lr.items():
        values = np.array([np.nan if v is None else v for v in data["train_val"]["critical_length"]], dtype=float)
        ax.plot(data["epoch"], values, "o-", ms=3, label=f"lr {lr:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("critical length (train_val)")
    ax.legend(fontsize=7)
    C.save_figure(fig, path)


def last_finite(values: list) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return finite[-1] if finite else None


def main(argv: list[str] | None = None) -> None:
    from scipy.stats import spearmanr

    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    cfg = C.load_config(args)
    by_lr, found_ref, fits = {}, None, {}
    for lr in cfg["lrs"]:
        outcome, found = train_at(args, cfg, lr)
        by_lr[lr] = series(found)
        fits[f"{lr:g}"] = {"fit_seconds": round(outcome.seconds, 1), "val_acc": outcome.metrics.get("val/acc"),
                           "train_loss": outcome.metrics.get("train/loss")}  # fmt: skip
        C.log(args, f"lr {lr:g}: val_acc={fits[f'{lr:g}']['val_acc']} ({fits[f'{lr:g}']['fit_seconds']} s)")
        if lr == cfg["reference_lr"]:
            found_ref = found
    if found_ref is None:
        raise ValueError(f"`reference_lr` {cfg['reference_lr']} is not one of `lrs` {cfg['lrs']}")
    ref = by_lr[cfg["reference_lr"]]
    names = list(found_ref[-1].meta.get("class_names") or range(found_ref[-1].arrays["train_val/class_sign"].shape[0]))
    shown = pick_epochs(ref["epoch"], cfg["heatmap_epochs"])
    plot_matrices(found_ref, shown, [str(n) for n in names], args.out / "stiffness_class_matrices.png")
    plot_same_vs_different(ref, args.out / "stiffness_same_vs_different.png")
    plot_distance(found_ref, by_lr, args.out / "stiffness_by_distance.png")

    final_lengths = {lr: last_finite(d["train_val"]["critical_length"]) for lr, d in by_lr.items()}
    final_stiffness = {lr: d["train_val"]["sign_mean"][-1] for lr, d in by_lr.items()}
    lrs = [lr for lr in cfg["lrs"] if final_lengths[lr] is not None]
    lr_corr = spearmanr(lrs, [final_lengths[lr] for lr in lrs]).statistic if len(lrs) >= 3 else None
    stiff_corr = spearmanr(cfg["lrs"], [final_stiffness[lr] for lr in cfg["lrs"]]).statistic if len(cfg["lrs"]) >= 3 else None
    final = {g: {k: v[-1] for k, v in ref[g].items()} for g in GROUPS}
    first = {g: {k: v[0] for k, v in ref[g].items()} for g in GROUPS}
    lengths = [v for v in ref["train_val"]["critical_length"][1:] if v is not None and np.isfinite(v)]
    results = {
        "reference_lr": cfg["reference_lr"],
        "heatmap_epochs": shown,
        "by_lr": {f"{lr:g}": d for lr, d in by_lr.items()},
        "fits": fits,
        "reference_initial": first,
        "reference_final": final,
        "final_critical_length_by_lr": {f"{lr:g}": v for lr, v in final_lengths.items()},
        "final_train_val_sign_by_lr": {f"{lr:g}": v for lr, v in final_stiffness.items()},
        "spearman_lr_vs_critical_length": lr_corr,
        "spearman_lr_vs_train_val_sign": stiff_corr,
        # a trend needs two trained epochs with a finite critical length
        "critical_length_first_trained_epoch": lengths[0] if len(lengths) >= 2 else None,
        "critical_length_final": lengths[-1] if len(lengths) >= 2 else None,
    }
    C.write_results(args, start, cfg, results)


if __name__ == "__main__":
    main()
