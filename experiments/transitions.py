"""Novak et al. (2018): does the network carve the input space more finely around test points than training points?

``TransitionMonitor`` samples closed ellipses through three probe points and counts, at every epoch, how often the
ReLU activation pattern (summed Hamming distance), the linear region and the predicted class change along them. The
same training run is measured twice: with ellipses through test points and through training points. When the
monitor records training-point trajectories itself (``train_activation`` in its artifacts) one run suffices;
otherwise a second, identically seeded run is made with the training points as its probe set, and the script checks
that both runs trained identically (same final training loss).

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


def train_once(args: Any, cfg: dict, run_name: str, probe: tuple) -> tuple[Any, list[Any]]:
    """One seeded fit with a TransitionMonitor whose ellipses go through ``probe`` points."""
    import lightning.pytorch as pl

    from lightning_sensitivity.callbacks import TransitionMonitor
    from lightning_sensitivity.models import LitClassifier

    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"], batch_size=cfg["batch_size"])
    if probe is None:
        probe = C.dataset_tensors(dm.train_eval_dataset)
    monitor = TransitionMonitor(
        num_trajectories=cfg["num_trajectories"],
        num_points=cfg["num_points"],
        every_n_epochs=1,
        num_samples=cfg["probe_samples"],
        seed=args.seed,
        val_data=probe,
    )
    module = LitClassifier(C.build_mlp(dm, cfg["width"], cfg["depth"]), lr=cfg["lr"], momentum=cfg["momentum"])
    outcome = C.fit(module, dm, out=args.out, run_name=run_name, max_epochs=cfg["max_epochs"], callbacks=[monitor])
    return outcome, C.artifacts(outcome.log_dir, "transitions")


def compare(test_found: list[Any], train_found: list[Any], train_prefix: str) -> dict[str, dict]:
    """One-sided Mann-Whitney U test of "more transitions through test points" at initialisation and at the end."""
    from scipy.stats import mannwhitneyu

    out: dict[str, dict] = {}
    for name in COUNTS:
        out[name] = {}
        for when, i in (("init", 0), ("final", -1)):
            a, b = test_found[i].arrays.get(name), train_found[i].arrays.get(train_prefix + name)
            if a is None or b is None:
                out[name][when] = None
                continue
            out[name][when] = float(mannwhitneyu(a, b, alternative="greater").pvalue)
    return out


def series(found: list[Any], prefix: str = "") -> dict[str, list]:
    """Per-epoch mean and standard error of each count over the trajectories."""
    out: dict[str, list] = {"epoch": [a.epoch for a in found]}
    for name in COUNTS:
        values = [a.arrays.get(prefix + name) for a in found]
        out[f"{name}_mean"] = [None if v is None else float(np.mean(v)) for v in values]
        out[f"{name}_sem"] = [None if v is None else float(np.std(v) / np.sqrt(max(1, v.size))) for v in values]
    return out


def plot(test: dict, train: dict, path: Path) -> None:
    fig, axes = C.new_figure(ncols=3, size=(3.6, 3.2))
    titles = {"activation": "ReLU pattern changes (Hamming)", "region_changes": "linear-region changes", "prediction": "prediction changes"}
    for ax, name in zip(axes[0], COUNTS):
        for label, data, style in (("through test points", test, "o-"), ("through training points", train, "s--")):
            mean = np.array([np.nan if v is None else v for v in data[f"{name}_mean"]], dtype=float)
            sem = np.array([np.nan if v is None else v for v in data[f"{name}_sem"]], dtype=float)
            ax.errorbar(data["epoch"], mean, yerr=sem, fmt=style, ms=3, capsize=2, label=label)
        ax.set_title(titles[name], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("transitions per ellipse")
    axes[0, 0].legend(fontsize=7)
    C.save_figure(fig, path)


def ratio(test: dict, train: dict, name: str, index: int) -> float | None:
    a, b = test[f"{name}_mean"][index], train[f"{name}_mean"][index]
    return None if a is None or b in (None, 0) else a / b


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
    start = C.setup(args)
    cfg = C.load_config(args)
    dm = C.make_datamodule(args, train_subset=cfg["train_subset"], val_split=cfg["val_split"])
    outcome, found = train_once(args, cfg, "through_test", C.dataset_tensors(dm.test_dataset))
    test = series(found)
    runs = {"through_test": {"final_train_loss": outcome.metrics.get("train/loss"), "fit_seconds": round(outcome.seconds, 1)}}
    if all("train_activation" in a.arrays or "train_prediction" in a.arrays for a in found):
        train, mode = series(found, prefix="train_"), "one run, the monitor's own training-point trajectories"
        p_values = compare(found, found, "train_")
    else:
        outcome_b, found_b = train_once(args, cfg, "through_train", None)
        train, mode = series(found_b), "two identically seeded runs (test-point and training-point probe sets)"
        p_values = compare(found, found_b, "")
        runs["through_train"] = {"final_train_loss": outcome_b.metrics.get("train/loss"), "fit_seconds": round(outcome_b.seconds, 1)}
        runs["identical_training"] = runs["through_train"]["final_train_loss"] == runs["through_test"]["final_train_loss"]
    plot(test, train, args.out / "transitions.png")
    results = {
        "mode": mode,
        "runs": runs,
        "num_units": found[-1].meta.get("num_units"),
        "test": test,
        "train": train,
        "final_epoch": test["epoch"][-1],
        "p_test_greater": p_values,
        "test_over_train": {name: {"init": ratio(test, train, name, 0), "final": ratio(test, train, name, -1)} for name in COUNTS},
        "final_accuracy": {"val": outcome.metrics.get("val/acc"), "train": outcome.metrics.get("train/acc")},
    }
    C.log(args, f"test/train activation transitions: {results['test_over_train']['activation']}")
    C.write_results(args, start, cfg, results)


if __name__ == "__main__":
    main()
