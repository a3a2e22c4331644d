"""Fort et al. (2019): gradient stiffness by class and by input distance over training, and the learning rate's effect.

In Fort et al.'s setting -- inputs normalised and projected onto the unit sphere, a fully-connected ReLU net
500-300-100, Adam at a constant learning rate, batch 32 -- one net per (learning rate, seed) is trained on an MNIST
training subset small enough to overfit within the run, while ``StiffnessMonitor`` measures the sign and cosine
stiffness of per-example loss gradients between training probe points (``train_train``) and between training and
held-out points (``train_val``): class-by-class matrices, same- vs different-class means, stiffness by input
distance and its critical length (both methods, all pairs and same-class pairs). The onset of overfitting is the
epoch of the lowest held-out loss. Separately, on one fixed trained net, the critical length is recomputed on 10
independently drawn probe sets to see how much each method moves with the probe draw alone.

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
           "different_class_cosine", "critical_length", "same_class_critical_length")  # fmt: skip
METHODS = ("first_crossing", "linear_fit")


def _loss_recorder() -> Any:
    import lightning.pytorch as pl

    class LossRecorder(pl.Callback):
        """Held-out and training loss at the end of every epoch (the overfitting onset is read from them)."""

        def __init__(self) -> None:
            self.val_loss: list[float] = []
            self.val_acc: list[float] = []

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            # validation ran inside the epoch; its epoch-level values are in callback_metrics by now
            if "val/loss" in trainer.callback_metrics:
                self.val_loss.append(float(trainer.callback_metrics["val/loss"]))
                self.val_acc.append(float(trainer.callback_metrics["val/acc"]))

    return LossRecorder()


def make_monitor(cfg: dict, dm: Any, seed: int) -> Any:
    """The monitor with its default ``critical_length_method``; both methods are recomputed from the saved curves."""
    from lightning_sensitivity.callbacks import StiffnessMonitor

    return StiffnessMonitor(
        groups=GROUPS,
        class_names=list(dm.class_names),
        distance=cfg["distance"],
        num_distance_bins=cfg["num_distance_bins"],
        critical_length_same_class=True,
        every_n_epochs=cfg["every_n_epochs"],
        num_samples=cfg["probe_samples"],
        seed=seed,
        val_data=C.dataset_tensors(dm.test_dataset),
        train_data=C.dataset_tensors(dm.train_eval_dataset),
    )


def train_at(args: Any, cfg: dict, lr: float, seed: int) -> tuple[Any, list[Any], Any, Any]:
    """One seeded fit at learning rate ``lr`` with a StiffnessMonitor and a loss recorder."""
    import lightning.pytorch as pl

    from lightning_sensitivity.models import LitClassifier

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"],
                           batch_size=cfg["batch_size"], seed=seed)  # fmt: skip
    monitor = make_monitor(cfg, dm, seed)
    recorder = _loss_recorder()
    net = C.build_mlp(dm, 0, 0, hidden=cfg["hidden"], unit_sphere=True)
    module = LitClassifier(net, lr=lr, optimizer=cfg["optimizer"], momentum=0.0, num_classes=dm.num_classes)
    outcome = C.fit(module, dm, out=args.out, run_name=f"lr{lr:g}_seed{seed}", max_epochs=cfg["max_epochs"],
                    callbacks=[monitor, recorder])  # fmt: skip
    return outcome, C.artifacts(outcome.log_dir, "stiffness"), recorder, dm


def length_of(art: Any, group: str, method: str) -> float:
    """The critical length by ``method`` recomputed from the saved all-pairs curve of a measurement."""
    import torch

    from lightning_sensitivity.functional import critical_length

    edges = torch.as_tensor(art.arrays[f"{group}/bin_edges"])
    centers = (edges[1:] + edges[:-1]) / 2
    return critical_length(centers, torch.as_tensor(art.arrays[f"{group}/distance_sign"]),
                           torch.as_tensor(art.arrays[f"{group}/distance_count"]), method=method)  # fmt: skip


def series(found: list[Any], recorder: Any) -> dict[str, Any]:
    """Per-group, per-measured-epoch scalars from the artifacts, and the per-epoch losses."""
    out: dict[str, Any] = {"epoch": [a.epoch for a in found], "val_loss": recorder.val_loss,
                           "val_acc": recorder.val_acc}  # fmt: skip
    for group in GROUPS:
        out[group] = {name: [a.scalar(f"{group}/{name}") for a in found] for name in SCALARS}
        for method in METHODS:
            out[group][f"critical_length_{method}"] = [length_of(a, group, method) for a in found]
    # onset of overfitting: the epoch (1-based, as the monitor counts) after which the held-out loss was lowest
    out["onset_epoch"] = int(np.argmin(recorder.val_loss)) + 1 if recorder.val_loss else None
    return out


def probe_seed_stability(cfg: dict, module: Any, dm: Any, num_draws: int) -> dict[str, Any]:
    """Critical length of ``train_train`` pairs on ``num_draws`` independently drawn probe sets of one fixed net."""
    import torch

    from lightning_sensitivity.functional import critical_length, stiffness, stiffness_by_distance

    inputs, targets = C.dataset_tensors(dm.train_eval_dataset)
    net = module.model.eval()
    out: dict[str, Any] = {f"{m}/{pairs}": [] for m in METHODS for pairs in ("all", "same_class")}
    for draw in range(num_draws):
        gen = torch.Generator().manual_seed(1000 + draw)
        idx = torch.randperm(len(targets), generator=gen)[: cfg["probe_samples"]]
        x, y = inputs[idx], targets[idx]
        sign = stiffness(net, x, y).sign.double()
        for pairs, matrix in (("all", sign), ("same_class", sign.masked_fill(y[:, None] != y[None, :], float("nan")))):
            edges, mean, count = stiffness_by_distance(
                matrix, x, num_bins=cfg["num_distance_bins"], distance=cfg["distance"]
            )
            centers = (edges[1:] + edges[:-1]) / 2
            for m in METHODS:
                out[f"{m}/{pairs}"].append(critical_length(centers, mean, count, method=m))
    stats = {}
    for key, values in out.items():
        v = np.array(values, dtype=float)
        finite = v[np.isfinite(v)]
        stats[key] = {
            "values": v.tolist(),
            "missing": int((~np.isfinite(v)).sum()),
            "mean": float(finite.mean()) if finite.size else None,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "cv": float(finite.std(ddof=1) / abs(finite.mean())) if finite.size > 1 and finite.mean() else None,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
        }
    return stats


def plot_matrices(found: list[Any], names: list[str], path: Path) -> None:
    shown = [found[0], found[len(found) // 2], found[-1]] if len(found) >= 3 else found
    long_names = max((len(n) for n in names), default=1) > 3
    fig, axes = C.new_figure(ncols=len(shown), nrows=len(GROUPS), size=(3.3, 3.2) if long_names else (2.6, 2.5))
    image = None
    for r, group in enumerate(GROUPS):
        for c, art in enumerate(shown):
            ax = axes[r, c]
            image = ax.imshow(np.ma.masked_invalid(art.arrays[f"{group}/class_sign"]), cmap="RdBu_r", vmin=-1, vmax=1,
                              interpolation="nearest")  # fmt: skip
            ax.set_title(f"{group}, epoch {art.epoch}", fontsize=8)
            # real class names ("T-shirt/top", "Ankle boot") stay readable: x labels turned, y labels only on
            # the first column
            ax.set_xticks(range(len(names)), names, fontsize=5.5, rotation=90 if long_names else 0)
            ax.set_yticks(range(len(names)), names if c == 0 else [""] * len(names), fontsize=5.5)
            if r == len(GROUPS) - 1:
                ax.set_xlabel("class (columns)", fontsize=7)
            if c == 0:
                ax.set_ylabel("class (rows)", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="class sign stiffness")
    C.save_figure(fig, path)


def _band(ax: Any, x: list, rows: list[list], color: Any, label: str, style: str = "-",
          clip: tuple[float, float] | None = None) -> None:
    """Mean over seeds with its 95 % Student-t interval (shaded; cut to ``clip``, the values' possible range)."""
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    mean, low, high = C.t_band(values)
    if clip is not None:
        low, high = np.clip(low, *clip), np.clip(high, *clip)
    ax.plot(x, mean, style, color=color, marker="o", ms=2.5, label=label)
    if values.shape[0] > 1:
        ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)


def plot_over_training(by_lr: dict, path: Path) -> None:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    fig, axes = C.new_figure(ncols=3, size=(3.6, 3.2))
    for i, (lr, runs) in enumerate(by_lr.items()):
        color = cmap(i / max(1, len(by_lr) - 1))
        epochs = runs[0]["epoch"]
        _band(axes[0, 0], epochs, [r["train_val"]["same_class_sign"] for r in runs], color, f"lr {lr:g} same class",
              clip=(-1.0, 1.0))
        _band(axes[0, 0], epochs, [r["train_val"]["different_class_sign"] for r in runs], color, "", "--", (-1.0, 1.0))
        lengths = [r["train_train"]["critical_length_first_crossing"] for r in runs]
        _band(axes[0, 1], epochs, lengths, color, f"lr {lr:g}", clip=(0.0, 2.0))  # cosine distances lie in [0, 2]
        onsets = [r["onset_epoch"] for r in runs]
        losses = [r["val_loss"] for r in runs]
        _band(axes[0, 2], list(range(1, len(losses[0]) + 1)), losses, color,
              f"lr {lr:g} (onset {min(onsets)}-{max(onsets)})")  # fmt: skip
    seeds = len(next(iter(by_lr.values())))
    axes[0, 0].set_title("train_val sign stiffness\n(solid: same class, dashed: different)", fontsize=8)
    axes[0, 0].axhline(0, color="grey", lw=1, ls=":")
    axes[0, 0].set_ylabel("mean sign stiffness")
    axes[0, 1].set_title("critical length, train_train\n(first crossing; gaps: no crossing)", fontsize=8)
    axes[0, 1].set_ylabel("critical length (cosine distance)")
    axes[0, 2].set_title("held-out loss", fontsize=8)
    axes[0, 2].set_ylabel("cross-entropy")
    for ax in axes[0]:
        ax.set_xlabel(f"epoch (bands: 95 % interval over {seeds} seeds)", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].legend(fontsize=6)
    axes[0, 2].legend(fontsize=6)
    C.save_figure(fig, path)


def plot_distance(per_seed: list[list[Any]], path: Path) -> None:
    """train_train sign stiffness by distance at initialisation, mid-training and the end: mean over seeds with a
    95 % interval per bin."""
    from matplotlib import colormaps

    fig, axes = C.new_figure(ncols=1, size=(4.6, 3.3))
    ax = axes[0, 0]
    cmap = colormaps["viridis"]
    count = min(len(found) for found in per_seed)
    picks = sorted({0, count // 2, count - 1})
    for k, i in enumerate(picks):
        edges = per_seed[0][i].arrays["train_train/bin_edges"]
        centres = (edges[:-1] + edges[1:]) / 2
        mean, low, high = C.t_band([found[i].arrays["train_train/distance_sign"] for found in per_seed])
        # a sparse far bin (2-3 seeds with pairs there) has a t interval past the range sign stiffness can take
        low, high = np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)
        color = cmap(k / max(1, len(picks) - 1))
        ax.plot(centres, mean, color=color, lw=1.2, marker="o", ms=2, label=f"epoch {per_seed[0][i].epoch}")
        ax.fill_between(centres, low, high, color=color, alpha=0.15, lw=0)
    ax.axhline(0, color="grey", lw=1, ls=":")
    ax.set_xlabel("cosine input distance (train_train pairs)")
    ax.set_ylabel("mean sign stiffness")
    ax.set_title(f"mean and 95 % interval over {len(per_seed)} seeds (cut to [-1, 1])", fontsize=8)
    ax.legend(fontsize=7)
    C.save_figure(fig, path)


def trend(by_lr: dict, value: Any) -> dict[str, Any]:
    """Per learning rate: mean and interval over seeds of ``value(run)``; and the Spearman rho of lr vs value per
    seed (seeds paired by index), summarised over seeds."""
    from scipy.stats import spearmanr

    lrs = list(by_lr)
    per_lr = {f"{lr:g}": C.mean_ci([value(r) for r in by_lr[lr]]) for lr in lrs}
    rhos = []
    for s in range(min(len(v) for v in by_lr.values())):
        y = [value(by_lr[lr][s]) for lr in lrs]
        keep = [i for i, v in enumerate(y) if v is not None and np.isfinite(v)]
        # a value equal at every learning rate (e.g. the same onset epoch) has no ranks: no rho for that seed
        ranked = len(keep) >= 3 and np.ptp([y[i] for i in keep]) > 0
        rhos.append(spearmanr([lrs[i] for i in keep], [y[i] for i in keep]).statistic if ranked else None)
    return {"per_lr": per_lr, "spearman_per_seed": rhos, "spearman": C.correlation_ci(rhos)}


def at_epoch(run: dict, group: str, name: str, epoch: int | None) -> float | None:
    """The measurement at the measured epoch nearest to ``epoch``."""
    if epoch is None:
        return None
    i = int(np.argmin([abs(e - epoch) for e in run["epoch"]]))
    return run[group][name][i]


def analyse(by_lr: dict[float, list[dict]], seeds: list[int]) -> dict[str, Any]:
    """Trends over learning rates and changes over training from the per-run series (also what ``--replot`` does)."""
    final = lambda group, name: (lambda r: r[group][name][-1])  # noqa: E731
    first_trained = lambda group, name: (lambda r: r[group][name][1] if len(r["epoch"]) > 1 else None)  # noqa: E731
    trends = {
        "val_acc": trend(by_lr, lambda r: r["val_acc"][-1]),
        "onset_epoch": trend(by_lr, lambda r: r["onset_epoch"]),
    }
    for group in GROUPS:
        for name in ("sign_mean", "cosine_mean", "same_class_sign", "different_class_sign", "same_class_cosine",
                     "different_class_cosine", "critical_length_first_crossing",
                     "critical_length_linear_fit"):  # fmt: skip
            trends[f"{group}/{name}/final"] = trend(by_lr, final(group, name))
            trends[f"{group}/{name}/first_trained"] = trend(by_lr, first_trained(group, name))
            trends[f"{group}/{name}/onset"] = trend(
                by_lr, lambda r, g=group, n=name: at_epoch(r, g, n, r["onset_epoch"])
            )

    # does the critical length fall over training? final minus first trained measurement, per run
    def final_minus_first(group: str, name: str) -> list[float]:
        out = []
        for runs in by_lr.values():
            for r in runs:
                a, b = (r[group][name][-1], r[group][name][1]) if len(r["epoch"]) > 1 else (None, None)
                if a is not None and b is not None and np.isfinite(a) and np.isfinite(b):
                    out.append(a - b)
        return out

    change = {
        f"{group}/{name}": C.mean_ci(final_minus_first(group, name))
        for group in GROUPS
        for name in ("critical_length_first_crossing", "critical_length_linear_fit")
    }
    # towards zero at the onset of overfitting? |value| at the onset minus |value| at the first trained measurement
    change.update({
        f"train_val/{name}/onset_minus_first_trained": C.mean_ci([
            abs(at_epoch(r, "train_val", name, r["onset_epoch"])) - abs(r["train_val"][name][1])
            for runs in by_lr.values() for r in runs if len(r["epoch"]) > 1 and r["onset_epoch"] is not None
            and at_epoch(r, "train_val", name, r["onset_epoch"]) is not None and r["train_val"][name][1] is not None
        ])
        for name in ("same_class_sign", "same_class_cosine", "different_class_sign", "different_class_cosine")
    })  # fmt: skip
    # measurements with no crossing (NaN critical length), per method and group, out of all trained measurements
    no_crossing = {
        f"{group}/{method}": [sum(1 for r in runs for v in r[group][f"critical_length_{method}"][1:] if v is None
                                  or not np.isfinite(v)) for runs in by_lr.values()]
        for group in GROUPS for method in METHODS
    }  # fmt: skip
    return {"trends": trends, "change_over_training": change, "no_crossing_per_lr": no_crossing,
            "measurements_per_lr": [sum(max(0, len(r["epoch"]) - 1) for r in runs) for runs in by_lr.values()]}


def _run_dir(out: Path, lr: float, seed: int) -> Path:
    return out / "logs" / f"lr{lr:g}_seed{seed}" / "version_0"


def plot_all(out: Path, by_lr: dict[float, list[dict]], reference_lr: float, seeds: list[int]) -> None:
    reference = C.artifacts(_run_dir(out, reference_lr, seeds[0]), "stiffness")
    names = [str(n) for n in (reference[-1].meta.get("class_names") or range(10))]
    plot_matrices(reference, names, out / "stiffness_class_matrices.png")
    plot_over_training(by_lr, out / "stiffness_over_training.png")
    artifacts = [C.artifacts(_run_dir(out, reference_lr, s), "stiffness") for s in seeds]
    plot_distance(artifacts, out / "stiffness_by_distance.png")


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    if args.replot:
        earlier = C.load_results(args)
        r = earlier["results"]
        by_lr = {float(lr): runs for lr, runs in r["by_lr"].items()}
        plot_all(args.out, by_lr, r["reference_lr"], r["seeds"])
        C.write_results(args, start, earlier["config"], {**r, **analyse(by_lr, r["seeds"])})
        return
    cfg = C.load_config(args)
    if cfg["reference_lr"] not in cfg["lrs"]:
        raise ValueError(f"`reference_lr` {cfg['reference_lr']} is not one of `lrs` {cfg['lrs']}")
    by_lr: dict[float, list[dict]] = {lr: [] for lr in cfg["lrs"]}
    fits, stability = {}, None
    all_seeds = C.seeds(args, cfg)
    # seeds outer, learning rates inner: after every seed the results so far are complete seeds (written as partial)
    for seed in all_seeds:
        for lr in cfg["lrs"]:
            outcome, found, recorder, dm = train_at(args, cfg, lr, seed)
            by_lr[lr].append(series(found, recorder))
            fits[f"{lr:g}/{seed}"] = {
                "fit_seconds": round(outcome.seconds, 1),
                "val_acc": outcome.metrics.get("val/acc"),
                "train_acc": outcome.metrics.get("train/acc"),
                "onset_epoch": by_lr[lr][-1]["onset_epoch"],
            }
            C.log(args, f"lr {lr:g} seed {seed}: val_acc={fits[f'{lr:g}/{seed}']['val_acc']} onset "
                  f"{by_lr[lr][-1]['onset_epoch']} ({fits[f'{lr:g}/{seed}']['fit_seconds']} s)")
            if lr == cfg["reference_lr"] and seed == args.seed:
                stability = probe_seed_stability(cfg, outcome.module, dm, cfg["stability_draws"])
        done = all_seeds[: all_seeds.index(seed) + 1]
        results = {
            "seeds": done,
            "reference_lr": cfg["reference_lr"],
            "by_lr": {f"{lr:g}": runs for lr, runs in by_lr.items()},
            "fits": fits,
            "stability": stability,
            **analyse(by_lr, done),
        }
        if len(done) < len(all_seeds):
            C.write_results(args, start, {**cfg, "num_seeds_completed": len(done)}, results, partial=True)
    plot_all(args.out, by_lr, cfg["reference_lr"], all_seeds)
    C.write_results(args, start, cfg, results)


if __name__ == "__main__":
    main()
