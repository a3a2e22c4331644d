"""Shared pieces of ``make_findings.py``: number formatting, verdicts from intervals, the document, sections 1-2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, ``n/a`` for a missing one."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def ci(d: dict | None, digits: int = 3) -> str:
    """``mean [low, high]`` of a ``mean_ci`` summary (95 % Student-t interval over seeds)."""
    if not d or d.get("mean") is None:
        return "n/a"
    if d.get("low") is None:
        return f"{fmt(d['mean'], digits)} (n = {d['n']})"
    return f"{fmt(d['mean'], digits)} [{fmt(d['low'], digits)}, {fmt(d['high'], digits)}]"


def beyond(d: dict | None, value: float, direction: int) -> bool | None:
    """Whether the whole interval lies above (``direction`` +1) or below (-1) ``value``; None without an interval."""
    if not d or d.get("low") is None:
        return None
    return d["low"] > value if direction > 0 else d["high"] < value


def mean_ci(values: list, level: float = 0.95) -> dict:
    """Mean and Student-t interval of the finite values (the same summary the scripts write as ``mean_ci``)."""
    import math

    from scipy.stats import t as student

    x = [float(v) for v in values if v is not None and math.isfinite(v)]
    out: dict = {"n": len(x), "mean": sum(x) / len(x) if x else None, "low": None, "high": None}
    if len(x) >= 2:
        sd = math.sqrt(sum((v - out["mean"]) ** 2 for v in x) / (len(x) - 1))
        half = float(student.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def verdict(held: bool | None) -> str:
    return "**not measurable here**" if held is None else ("**holds here**" if held else "**does not hold here**")


class Doc:
    """Markdown being written, with the figures it references copied next to it."""

    def __init__(self, output: Path, figures_dir: Path) -> None:
        self.lines: list[str] = []
        self.output, self.figures_dir = output, figures_dir

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, source: Path, caption: str) -> None:
        if not source.is_file():
            self.add(f"*(figure `{source.name}` missing)*", "")
            return
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        target = self.figures_dir / source.name
        shutil.copyfile(source, target)
        rel = os.path.relpath(target, self.output.parent)
        self.add(f"![{caption}]({rel})", "", f"*{caption}*", "")

    def run_info(self, data: dict) -> None:
        self.add(
            f"Command: `{data['command']}` — wall time {fmt(data['wall_time_s'], 4)} s on {data['threads']} thread(s) "
            f"of a shared 2-core machine, finished {data['finished']} (torch {data['versions']['torch']}, lightning "
            f"{data['versions']['lightning']}{_commit(data)}).",
            "",
        )


def _commit(data: dict) -> str:
    state = data.get("git") or {}
    if not state.get("commit"):
        return ""
    files = state.get("uncommitted_files") or []
    changed = f" plus uncommitted edits to {', '.join(f'`{f}`' for f in files)}" if files else (
        " with uncommitted changes" if state.get("uncommitted_changes") else "")
    return f", repository at {state['commit']}{changed}"


def seeds_text(r: dict) -> str:
    seeds = r.get("seeds") or []
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


INTERVALS = ("Intervals: mean over seeds [95 % Student-t interval over seeds]; a verdict \"holds\" needs the whole "
             "interval on the paper's side.")


def jacobian(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    corr, direction, summary = r["correlation"], r["direction"], r["summary"]
    per_seed = r.get("per_seed_correlation", {})
    bases = ", ".join(f"{b['width']}×{b['depth']} lr {b['lr']} batch {b['batch_size']}" for b in cfg["bases"])
    doc.add(
        "## 1. Jacobian norm vs generalization gap (Novak et al. 2018)",
        "",
        "**Paper:** across many fully-connected nets, the Frobenius norm of the input-output Jacobian measured at "
        "held-out points correlates with the generalization gap; random labels and full-batch training give larger "
        "norms, data augmentation smaller ones; trained nets are less sensitive at training points than at test "
        "points.",
        "",
        f"**Setting here:** {summary['num_runs']} runs = {len(cfg['bases'])} base configurations ({bases}; SGD "
        f"momentum {cfg['momentum']}) × {len(cfg['variants'])} variants ({', '.join(cfg['variants'])}; random-label "
        f"fraction {cfg['variants'].get('random_labels', {}).get('random_label_fraction', 'n/a')}, full batch = "
        f"{cfg['train_subset']} examples per step, augmentation = random shifts) × {seeds_text(r)}, on an MNIST "
        f"training subset of {cfg['train_subset']} examples (the seed draws the subset, the initialisation, the "
        f"random labels and the probe points). Training stops once the running training accuracy reaches "
        f"{cfg['stop_at_train_acc']} or after {cfg['max_epochs']} epochs ({cfg['full_batch_max_epochs']} full-batch "
        f"steps); {summary['num_fitted']} of {summary['num_runs']} runs end with at least that training accuracy "
        f"measured in eval mode. `JacobianNormMonitor` (d softmax / d input) on {cfg['probe_samples']} class-balanced "
        "test points and as many training points, measured on the final weights (its test hook). Gap = training "
        "accuracy (eval mode, on the labels trained on) − test accuracy (10 000 test images), and test loss − "
        f"training loss. {INTERVALS}",
        "",
        "| correlation of the test Jacobian norm with (all seeds pooled) | n | Spearman ρ (p) | Kendall τ (p) |",
        "|---|---|---|---|",
    )
    labels = {
        "jacobian_vs_gap_acc": "accuracy gap (all runs)",
        "jacobian_vs_gap_loss": "loss gap (all runs)",
        "jacobian_vs_gap_acc_fitted_only": f"accuracy gap (runs reaching {cfg['stop_at_train_acc']} train acc)",
        "jacobian_vs_gap_acc_true_labels": "accuracy gap (runs without random labels)",
        "jacobian_vs_test_acc": "test accuracy (all runs)",
    }
    for key, label in labels.items():
        if key in corr:
            c = corr[key]
            doc.add(f"| {label} | {c['n']} | {fmt(c['spearman'])} ({fmt(c['spearman_p'], 2)}) | "
                    f"{fmt(c['kendall'])} ({fmt(c['kendall_p'], 2)}) |")
    all_seeds = (per_seed.get("jacobian_vs_gap_acc") or {}).get("spearman")
    true_seeds = (per_seed.get("jacobian_vs_gap_acc_true_labels") or {}).get("spearman")
    held = beyond(all_seeds, 0.0, +1)
    held_true = beyond(true_seeds, 0.0, +1)
    doc.add(
        "",
        f"Spearman ρ of the test norm with the accuracy gap within each seed: {ci(all_seeds)} over all variants, "
        f"{ci(true_seeds)} without the random-label runs.",
        "",
        f"- Positive rank correlation with the accuracy gap (per-seed ρ above 0): {verdict(held)}.",
        f"- The same without random labels: {verdict(held_true)}.",
        "",
    )
    doc.figure(folder / "jacobian_vs_gap.png", "Final test Jacobian norm vs generalization gap, one point per run "
               "(all seeds).")
    doc.add("| variant vs its baseline | paper | agrees (base × seed pairs) | norm ratio, geometric mean over bases "
            "| verdict |",
            "|---|---|---|---|---|")
    for variant, d in direction.items():
        sign = 1 if d["expected"] == "larger norm" else -1
        interval = {"mean": d.get("geomean_ratio"), "low": d.get("geomean_ratio_low"),
                    "high": d.get("geomean_ratio_high"), "n": len(d.get("per_seed_geomean_ratio", []))}
        doc.add(f"| {variant} | {d['expected']} | {d['held']}/{d['total']} | {ci(interval)} | "
                f"{verdict(beyond(interval, 1.0, sign))} |")
    reached = {v: (sum(x["train_acc"] >= cfg["stop_at_train_acc"] for x in r["runs"] if x["variant"] == v),
                   sum(x["variant"] == v for x in r["runs"])) for v in cfg["variants"]}  # fmt: skip
    doc.add("", "Runs reaching the training-accuracy target, by variant: "
            + ", ".join(f"{v} {a}/{b}" for v, (a, b) in reached.items()) + ".", "")
    doc.figure(folder / "jacobian_directions.png", "Test Jacobian norm of each variant divided by its baseline's "
               "(same base and seed).")
    ratio = summary.get("train_test_ratio_by_seed")
    doc.add(
        f"Less sensitive at training points than at test points: training/test norm ratio < 1 in "
        f"{summary['train_below_test_norm']}/{summary['num_runs']} runs; per-seed median ratio {ci(ratio)} — "
        f"{verdict(beyond(ratio, 1.0, -1))}.",
        "",
        "<details><summary>All runs</summary>",
        "",
        "| run | width×depth | lr | batch | epochs | train acc | test acc | gap (acc) | test Jacobian norm |",
        "|---|---|---|---|---|---|---|---|---|",
    )
    for run in r["runs"]:
        batch = "full" if run["batch_size"] == 0 else run["batch_size"]
        doc.add(f"| {run['run']} | {run['width']}×{run['depth']} | {fmt(run['lr'])} | {batch} | {run['epochs']} | "
                f"{fmt(run['train_acc'])} | {fmt(run['test_acc'])} | {fmt(run['gap_acc'])} | "
                f"{fmt(run['jacobian_test_mean'])} |")
    doc.add("", "</details>", "")
    for variant, d in direction.items():
        sign = 1 if d["expected"] == "larger norm" else -1
        interval = {"low": d.get("geomean_ratio_low"), "high": d.get("geomean_ratio_high")}
        if beyond(interval, 1.0, sign) is False:
            epochs = [x["epochs"] for x in r["runs"] if x["variant"] == variant]
            base_epochs = [x["epochs"] for x in r["runs"] if x["variant"] == "baseline"]
            doc.add(
                f"**{variant} differs from the paper here:** its norm moves in the paper's direction in {d['held']} of "
                f"{d['total']} base × seed pairs only. Its runs last {min(epochs)}–{max(epochs)} epochs (cap "
                f"{cfg['max_epochs']}; baselines {min(base_epochs)}–{max(base_epochs)}), so the comparison is at equal "
                "training accuracy but very different training time, on a small training subset; the paper's "
                "comparison is over converged nets on the full data.",
                "",
            )
    doc.add(
        "**Caveats:** the random-label runs sit far from the others on both axes and carry much of the pooled "
        "correlation. Runs stop at a training-accuracy target, so variants differ in the number of epochs and steps "
        "they get (full-batch runs: many epochs but one step each), and the nets are small and briefly trained "
        f"({cfg['train_subset']} examples, at most {cfg['max_epochs']} epochs) next to the paper's thousands of "
        "converged nets; the sizes of the effects are not comparable, only their directions.",
        "",
    )
    doc.run_info(data)


def per_point(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    s = r["summary"]
    held = beyond(s["norm_auroc"], 0.5, +1)
    gain, within = s["cv_gain"], s.get("within_bins_difference")
    adds = None if beyond(gain, 0.0, +1) is None else bool(beyond(gain, 0.0, +1) and beyond(within, 0.0, +1))
    doc.add(
        "## 2. Per-point prediction of misclassification, and whether the Jacobian is more than confidence",
        "",
        "**Paper (Novak et al. 2018):** the Jacobian norm at an individual test point is predictive of whether that "
        "point is misclassified. The question added here: does it carry information beyond the softmax confidence "
        "(which the norm of d softmax / d input partly is)?",
        "",
        f"**Setting here:** one MLP ({cfg['width']}×{cfg['depth']}, lr {cfg['lr']}, batch {cfg['batch_size']}) per "
        f"seed, {seeds_text(r)}, trained for {cfg['max_epochs']} epochs on {cfg['train_subset']} MNIST examples "
        f"(validation accuracy {ci(s['val_acc'])}); `JacobianNormMonitor` on {cfg['probe_samples']} class-balanced "
        f"test points every epoch (misclassified at the end: {', '.join(map(str, s['num_wrong']))}). The monitor logs "
        "`misclassification_auroc` (norm), `confidence_auroc` (1 − max softmax) and `entropy_auroc` (predictive "
        "entropy); the tests beyond confidence use the final weights: (a) the norm's AUROC inside "
        f"{cfg['confidence_bins']} quantile bins of the confidence, pooled over bins by their number of (wrong, "
        "correct) pairs, next to the same for 1 − confidence; (b) logistic regressions on log(1 − confidence) alone "
        "and with log norm added, compared by 5-fold stratified cross-validated AUROC. " + INTERVALS,
        "",
        "| score for \"misclassified\" (final epoch) | AUROC |",
        "|---|---|",
        f"| Jacobian norm | {ci(s['norm_auroc'])} |",
        f"| 1 − max softmax (confidence) | {ci(s['confidence_auroc'])} |",
        f"| predictive entropy | {ci(s['entropy_auroc'])} |",
        f"| norm − confidence (difference) | {ci(s['norm_minus_confidence'])} |",
        f"| within confidence bins: norm | {ci(s['within_bins'])} |",
        f"| within confidence bins: 1 − confidence | {ci(s.get('within_bins_confidence'))} |",
        f"| within confidence bins: norm − confidence | {ci(within)} |",
        f"| 5-fold CV logistic regression: confidence only | {ci(s['cv_confidence'])} |",
        f"| 5-fold CV logistic regression: confidence + norm | {ci(s['cv_both'])} |",
        f"| 5-fold CV: gain from adding the norm | {ci(gain, 2)} |",
        "",
        f"Spearman correlation of the per-point norm with the confidence: {ci(s['spearman_norm_vs_confidence'])}.",
        "",
        f"- The norm predicts misclassification better than chance (AUROC above 0.5): {verdict(held)}.",
        f"- The norm adds information beyond confidence (CV gain and within-bin difference both above 0): "
        f"{verdict(adds)}.",
        "",
    )
    doc.figure(folder / "per_point_auroc.png", "Left: per-point Jacobian norms of correct and misclassified test "
               "points at the last epoch (first seed). Right: the three AUROCs over training (mean over seeds).")
    monotone = abs(s["spearman_norm_vs_confidence"].get("mean") or 0) > 0.9
    if adds is False and monotone:
        doc.add(
            "**Reading:** the norm of d softmax / d input is almost a monotone function of the confidence here "
            f"(Spearman {fmt(s['spearman_norm_vs_confidence']['mean'])}), so the two rank the points nearly "
            "identically; the paper's claim (the norm is predictive) holds, but on these nets the norm is predictive "
            "as a proxy of confidence, and adding it to confidence does not improve the cross-validated prediction.",
            "",
        )
    elif adds:
        doc.add("**Reading:** besides being predictive, the norm adds a measurable amount of information to the "
                "confidence on these nets.", "")
    doc.run_info(data)
