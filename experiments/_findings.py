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
        return f"{fmt(d['mean'], digits)} " + (f"(n = {d['n']})" if "n" in d else "(no interval: one seed)")
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


def judge(d: dict | None, null: float, direction: int) -> str:
    """``holds`` when the whole 95 % interval lies on the paper's side of ``null`` (``direction`` +1: above),
    ``does not hold`` when it lies wholly on the other side, ``mixed`` when it contains ``null``; ``not measurable``
    without an interval."""
    if beyond(d, null, direction):
        return "holds"
    if beyond(d, null, -direction):
        return "does not hold"
    return "not measurable" if not d or d.get("low") is None else "mixed"


def bold(word: str) -> str:
    return f"**{word}**"


def dataset_label(data: dict) -> str:
    """``MNIST``, ``Fashion-MNIST``, ... from what the results file records."""
    import _common as C

    return C.LABELS.get(data.get("dataset", "mnist"), str(data.get("dataset")))


def datamodule_of(data: dict) -> str:
    import _common as C

    return data.get("datamodule") or C.DATASETS.get(data.get("dataset", "mnist"), ("?",))[0]


def augmentation_of(data: dict) -> str:
    import _common as C

    return data.get("augmentation") or C.AUGMENTATION.get(data.get("dataset", "mnist"), "augmentation")


def setting_changes(data: dict) -> list[str]:
    """How the config a run used differs from its script's default ``full`` setting (``configs/<name>.json``)."""
    import json

    import _common as C

    path = C.CONFIG_DIR / f"{data['experiment']}.json"
    if data.get("quick") or not path.is_file():
        return []
    default = json.loads(path.read_text())
    full = {**default.get("common", {}), **default["full"]}
    used = {k: v for k, v in data["config"].items() if k not in ("num_seeds_completed", "num_runs_completed")}
    out = [f"`{k}` {json.dumps(used[k])} instead of {json.dumps(full[k])}" for k in sorted(full)
           if k in used and used[k] != full[k]]  # fmt: skip
    out += [f"`{k}` {json.dumps(used[k])} (not in the default)" for k in sorted(used) if k not in full]
    if data.get("partial_runs"):
        out.append(f"the sweep was stopped before the end in {len(data['partial_runs'])} of its "
                   f"{len(data.get('merged_from', []))} seed processes: the runs that finished are used, a variant "
                   "is compared with its baseline only where both finished")
    if data.get("partial"):
        out.append(f"stopped after {data['config'].get('num_seeds_completed')} of {data['config'].get('num_seeds')} "
                   "seeds (partial results)")
    return out


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


INTERVALS = ("Intervals: mean over seeds [95 % Student-t interval over seeds]. Verdicts: **holds** when the whole "
             "interval lies on the paper's side, **does not hold** when it lies wholly on the other side, **mixed** "
             "when it contains no effect.")
INTERVALS_Z = (
    INTERVALS + " Correlations are averaged over seeds on Fisher's z scale, so their intervals stay in [-1, 1]."
)


def jacobian(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    corr, direction, summary = r["correlation"], r["direction"], r["summary"]
    per_seed = r.get("per_seed_correlation", {})
    label = dataset_label(data)
    bases = ", ".join(f"{b['width']}×{b['depth']} lr {b['lr']} batch {b['batch_size']}" for b in cfg["bases"])
    floor = summary.get("collapse_below_train_acc", cfg.get("collapse_below_train_acc"))
    collapsed = summary.get("num_collapsed", 0)
    augment_cap = cfg.get("augment_max_epochs", cfg["max_epochs"])
    doc.add(
        f"## 1. Jacobian norm vs generalization gap (Novak et al. 2018) — {label}",
        "",
        "**Paper:** across many fully-connected nets, the Frobenius norm of the input-output Jacobian measured at "
        "held-out points correlates with the generalization gap; random labels and full-batch training give larger "
        "norms, data augmentation smaller ones; trained nets are less sensitive at training points than at test "
        "points.",
        "",
        f"**Setting here:** {summary['num_runs']} runs = {len(cfg['bases'])} base configurations ({bases}; SGD "
        f"momentum {cfg['momentum']}) × {len(cfg['variants'])} variants ({', '.join(cfg['variants'])}; random-label "
        f"fraction {cfg['variants'].get('random_labels', {}).get('random_label_fraction', 'n/a')}, full batch = "
        f"{cfg['train_subset']} examples per step, augmentation = {augmentation_of(data)}) × {seeds_text(r)}, on a "
        f"{label} training subset of {cfg['train_subset']} examples (`{datamodule_of(data)}`; the seed draws the "
        "subset, the initialisation, the random labels and the probe points). Training stops after the first "
        + ("epoch whose eval-mode accuracy on the training set (no augmentation, labels as trained on) reaches"
           if cfg.get("stop_on") == "eval_train_acc" else "epoch whose running training accuracy reaches")
        + f" {cfg['stop_at_train_acc']}, or at the cap: {cfg['max_epochs']} epochs "
        f"(augmented runs: {augment_cap}), {cfg['full_batch_max_epochs']} full-batch steps. `JacobianNormMonitor` "
        f"(d softmax / d input) on {cfg['probe_samples']} class-balanced test points and as many training points, "
        "measured on the final weights (its test hook), and on the baselines after every epoch with their eval-mode "
        "training accuracy. Gap = training accuracy (eval mode, on the labels trained on) − test accuracy (whole "
        f"test split), and test loss − training loss. A run is **collapsed** when its final eval-mode training "
        f"accuracy is below {fmt(floor)} (or its test norm is not positive): {collapsed} of {summary['num_runs']} "
        "runs here"
        + (f" ({', '.join(summary.get('collapsed_runs', []))})" if collapsed else "")
        + ", left out of every correlation and ratio. "
        f"{summary['num_fitted']} of {summary.get('num_valid', summary['num_runs'])} other runs end with at least the "
        f"target training accuracy in eval mode. {INTERVALS_Z}",
        "",
        "| correlation of the test Jacobian norm with (all seeds pooled) | n | Spearman ρ [95 % Fisher-z] (p) | "
        "Kendall τ (p) |",
        "|---|---|---|---|",
    )
    labels = {
        "jacobian_vs_gap_acc": "accuracy gap (all runs)",
        "jacobian_vs_gap_loss": "loss gap (all runs)",
        "jacobian_vs_gap_acc_fitted_only": f"accuracy gap (runs reaching {cfg['stop_at_train_acc']} train acc)",
        "jacobian_vs_gap_acc_true_labels": "accuracy gap (runs without random labels)",
        "jacobian_vs_test_acc": "test accuracy (all runs)",
    }
    for key, text in labels.items():
        if key in corr:
            c = corr[key]
            interval = (f" [{fmt(c['spearman_low'])}, {fmt(c['spearman_high'])}]"
                        if c.get("spearman_low") is not None else "")  # fmt: skip
            doc.add(f"| {text} | {c['n']} | {fmt(c['spearman'])}{interval} ({fmt(c['spearman_p'], 2)}) | "
                    f"{fmt(c['kendall'])} ({fmt(c['kendall_p'], 2)}) |")
    all_seeds = (per_seed.get("jacobian_vs_gap_acc") or {}).get("spearman")
    true_seeds = (per_seed.get("jacobian_vs_gap_acc_true_labels") or {}).get("spearman")
    values = ", ".join(fmt(v, 2) for v in (true_seeds or {}).get("values", []))
    doc.add(
        "",
        f"Spearman ρ of the test norm with the accuracy gap within each seed (mean on Fisher's z scale, 95 % interval "
        f"over seeds): {ci(all_seeds)} over all variants, {ci(true_seeds)} without the random-label runs (per seed: "
        f"{values}).",
        "",
        f"- Positive rank correlation with the accuracy gap (per-seed ρ above 0): {bold(judge(all_seeds, 0.0, +1))}.",
        f"- The same without random labels: {bold(judge(true_seeds, 0.0, +1))}.",
        "",
    )
    doc.figure(folder / "jacobian_vs_gap.png", f"Final test Jacobian norm vs generalization gap, one point per run "
               f"(all seeds, {label}; collapsed runs left out).")
    doc.add("| variant vs its baseline | paper | agrees (base × seed pairs) | norm ratio, geometric mean over bases "
            "| verdict | vs the baseline at matched training accuracy | verdict |",
            "|---|---|---|---|---|---|---|")
    for variant, d in direction.items():
        sign = 1 if d["expected"] == "larger norm" else -1
        plain, matched = _ratio(d, ""), _ratio(d, "matched_")
        excluded = len(d.get("excluded_pairs", []))
        doc.add(f"| {variant} | {d['expected']} | {d['held']}/{d['total']}"
                + (f" ({excluded} pairs with a collapsed run left out)" if excluded else "")
                + f" | {ci(plain)} | {bold(judge(plain, 1.0, sign))} | {ci(matched)} "
                f"({d.get('matched_held', 0)}/{d.get('matched_count', 0)} agree) | {bold(judge(matched, 1.0, sign))} |")
    reached = summary.get("reached_target_by_variant") or {}
    epochs, steps = summary.get("epochs_by_variant") or {}, summary.get("steps_by_variant") or {}
    doc.add("", "| variant | runs reaching the target | epochs | optimizer steps | cap |", "|---|---|---|---|---|")
    for v in cfg["variants"]:
        a, b = reached.get(v, [None, None])
        cap = (f"{cfg['full_batch_max_epochs']} epochs of one step" if cfg["variants"][v].get("batch_size") == 0
               else f"{cfg.get(f'{v}_max_epochs', cfg['max_epochs'])} epochs")  # fmt: skip
        doc.add(f"| {v} | {a}/{b} | {_range(epochs.get(v))} | {_range(steps.get(v))} | {cap} |")
    doc.add("")
    doc.figure(folder / "jacobian_directions.png", "Test Jacobian norm of each variant divided by its baseline's "
               "(same base and seed): filled, final vs final; hollow, vs the baseline at the training accuracy the "
               "variant ended with; black, geometric mean with its 95 % interval over seeds.")
    ratio = summary.get("train_test_ratio_by_seed")
    doc.add(
        f"Less sensitive at training points than at test points: training/test norm ratio < 1 in "
        f"{summary['train_below_test_norm']}/{summary.get('num_valid', summary['num_runs'])} runs; per-seed median "
        f"ratio {ci(ratio)} — {bold(judge(ratio, 1.0, -1))}.",
        "",
    )
    aug = reached.get("augment")
    if aug and aug[1]:
        doc.add(
            "**Augmentation, trained to the target and measured at matched accuracy:** "
            + (f"augmented runs have their own cap ({augment_cap} epochs against {cfg['max_epochs']}), so that they "
               "are trained until they reach the target rather than stopped at the baselines' cap; "
               if augment_cap > cfg["max_epochs"] else "")
            + f"{aug[0]} of {aug[1]} augmented runs reached the "
            f"{cfg['stop_at_train_acc']} target within {augment_cap} epochs (their epochs: "
            f"{_range(epochs.get('augment'))}; baselines {_range(epochs.get('baseline'))}). A run that stops short of "
            "the target fits the training set less, which by itself moves the norm; so each augmented run is also "
            "compared with its baseline at the first epoch where the baseline's eval-mode training accuracy reached "
            "the augmented run's final one (right-hand columns). Where the two comparisons disagree, the plain one "
            "mixes the effect of augmentation with that of a less complete fit.",
            "",
        )
    fb = reached.get("full_batch")
    if fb and fb[1]:
        doc.add(
            "**Full batch, next to Novak et al.'s setting:** as we read the paper, its full-batch comparison is "
            "between nets trained on the whole training set with full-batch and mini-batch gradient steps, each "
            "trained long enough to fit the data. Here a full-batch run is one gradient step per epoch on the "
            f"{cfg['train_subset']}-example subset at the baseline's learning rate and momentum; it stops at the same "
            f"training-accuracy target, after {_range(steps.get('full_batch'))} steps (cap "
            f"{cfg['full_batch_max_epochs']}) against {_range(steps.get('baseline'))} mini-batch steps for the "
            f"baselines; {fb[0]} of {fb[1]} reached the target. So both are compared at about equal training "
            "accuracy, not at equal steps or at convergence, and on a small subset; the right-hand column compares "
            "each full-batch run with its baseline at the same eval-mode training accuracy.",
            "",
        )
    doc.add(
        "<details><summary>All runs</summary>",
        "",
        "| run | width×depth | lr | batch | epochs | steps | train acc | test acc | gap (acc) | test Jacobian norm | "
        "collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    )
    for run in r["runs"]:
        batch = "full" if run["batch_size"] == 0 else run["batch_size"]
        doc.add(f"| {run['run']} | {run['width']}×{run['depth']} | {fmt(run['lr'])} | {batch} | {run['epochs']} | "
                f"{fmt(run.get('steps'))} | {fmt(run['train_acc'])} | {fmt(run['test_acc'])} | {fmt(run['gap_acc'])} | "
                f"{fmt(run['jacobian_test_mean'])} | {'yes' if run.get('collapsed') else ''} |")
    doc.add("", "</details>", "")
    random_share = None
    c_all, c_true = corr.get("jacobian_vs_gap_acc", {}), corr.get("jacobian_vs_gap_acc_true_labels", {})
    if c_all.get("spearman") is not None and c_true.get("spearman") is not None:
        random_share = c_all["spearman"] - c_true["spearman"]
    doc.add(
        "**Caveats (from these runs):** "
        + (f"without the random-label runs the pooled Spearman ρ drops from {fmt(c_all['spearman'])} to "
           f"{fmt(c_true['spearman'])}, so those runs carry {'much' if random_share > 0.2 else 'some'} of the pooled "
           "correlation. " if random_share is not None and random_share > 0.05 else "")
        + "Variants differ in training time: epochs per variant "
        + f"{', '.join(f'{v} {_range(e)}' for v, e in epochs.items())}. "
        f"The nets are small and briefly trained ({cfg['train_subset']} examples) next to the paper's thousands of "
        "converged nets; the sizes of the effects are not comparable, only their directions.",
        "",
    )
    doc.run_info(data)


def _ratio(d: dict, prefix: str) -> dict:
    return {"mean": d.get(f"{prefix}geomean_ratio"), "low": d.get(f"{prefix}geomean_ratio_low"),
            "high": d.get(f"{prefix}geomean_ratio_high"), "n": len(d.get(f"{prefix}per_seed_geomean_ratio", []))}


def _range(pair: list | None) -> str:
    if not pair:
        return "n/a"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}–{pair[1]}"


def per_point(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    s = r["summary"]
    label = dataset_label(data)
    gain, within = s["cv_gain"], s.get("within_bins_difference")
    adds = None if beyond(gain, 0.0, +1) is None else bool(beyond(gain, 0.0, +1) and beyond(within, 0.0, +1))
    doc.add(
        f"## 2. Per-point prediction of misclassification, and whether the Jacobian is more than confidence — {label}",
        "",
        "**Paper (Novak et al. 2018):** the Jacobian norm at an individual test point is predictive of whether that "
        "point is misclassified. The question added here: does it carry information beyond the softmax confidence "
        "(which the norm of d softmax / d input partly is)?",
        "",
        f"**Setting here:** one MLP ({cfg['width']}×{cfg['depth']}, lr {cfg['lr']}, batch {cfg['batch_size']}) per "
        f"seed, {seeds_text(r)}, trained for {cfg['max_epochs']} epochs on {cfg['train_subset']} {label} examples "
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
        f"- The norm predicts misclassification better than chance (AUROC above 0.5): "
        f"{bold(judge(s['norm_auroc'], 0.5, +1))}.",
        f"- The norm adds information beyond confidence (CV gain above 0: {bold(judge(gain, 0.0, +1))}; within-bin "
        f"difference above 0: {bold(judge(within, 0.0, +1))}).",
        "",
    )
    doc.figure(folder / "per_point_auroc.png", "Left: per-point Jacobian norms of correct and misclassified test "
               "points at the last epoch (first seed). Right: the three AUROCs over training (mean and 95 % interval "
               f"over seeds; {label}).")
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
