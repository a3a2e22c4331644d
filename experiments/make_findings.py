"""Assemble ``docs/findings.md`` from the experiments' ``results.json`` files; copy their figures to ``docs/figures``.

Every number in the document is read from a results file written by a script in ``experiments/``; nothing is typed
by hand. Verdicts ("holds here" / "does not hold here") are computed from the same numbers: a verdict holds when the
95 % interval over seeds lies on the paper's side.

Usage::

    python experiments/make_findings.py [--results-dir DIR [DIR ...]] [--output docs/findings.md] [--readme README.md]

Each results folder holds ``<experiment>/results.json``; results are grouped by the dataset each file records, and
``docs/findings.md`` gets one table of claims with a column per dataset, then each dataset's sections. With
``--readme`` the README's findings paragraph (between the ``findings-summary`` markers) is rewritten from that table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _findings import (  # noqa: E402
    INTERVALS,
    INTERVALS_Z,
    Doc,
    beyond,
    bold,
    ci,
    datamodule_of,
    dataset_label,
    fmt,
    jacobian,
    judge,
    mean_ci,
    per_point,
    seeds_text,
    setting_changes,
)

ORDER = ("jacobian_vs_generalization", "per_point_prediction", "transitions", "stiffness")
KINDS = {"val": "test", "train": "training", "random": "shuffled test (off-manifold)"}


def transitions(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    s0, s1 = r["summary"]["init"], r["summary"]["final"]
    half = r.get("half_width", 1 / 24)
    vt, rv = s1["val_over_train"]["activation"], s1["random_over_val"]["activation"]
    rv0 = s0["random_over_val"]["activation"]
    near_train = s1["train"]["near_anchor_ratio"]
    units = next(iter(r["fits"].values())).get("num_units")
    label = dataset_label(data)
    doc.add(
        f"## 3. Transitions near the data and away from it (Novak et al. 2018, Sec. 4.1) — {label}",
        "",
        "**Paper:** along closed trajectories through data points, the paper counts the transitions of the ReLU "
        "activation pattern (and of linear regions and predictions) as its second sensitivity measure. As we read "
        "Sec. 4.1, a trained network's transitions are fewer near the data than away from it: along ellipses through "
        "training points the density of transitions dips at the points, and trajectories through points off the data "
        "manifold see more transitions. Expected here after training: fewer transitions near the anchors "
        "(near-anchor ratio < 1), more along ellipses through off-manifold anchors than through test points, and "
        "fewer through training points than through test points.",
        "",
        f"**Setting here:** MLP {cfg['width']}×{cfg['depth']} (ReLU, {fmt(units)} hidden units), SGD lr {cfg['lr']} "
        f"momentum {cfg['momentum']}, {cfg['train_subset']} {label} examples, {r['final_epoch']} epochs, "
        f"{seeds_text(r)}. One `TransitionMonitor(splits=('val', 'train', 'random'))` per run, every "
        f"{cfg['every_n_epochs']} epochs from initialisation: {cfg['num_trajectories']} ellipses of "
        f"{cfg['num_points']} points through three test points (its validation probe set is the test split), "
        "through three training points, and through the same test triples with every image's pixels shuffled "
        "(seeded; same intensity histogram, off the manifold). Per-segment Hamming distances are saved; the "
        f"near-anchor ratio is the mean transitions per segment within ±{fmt(half)} of the period (±1/24) around the "
        "three anchors divided by the mean elsewhere (a quarter of the ellipse counts as near). "
        f"On average {ci(s1['val']['saturation'], 2)} of the segments change linear region at the end"
        + (", so the counts are not saturated. " if (s1["val"]["saturation"].get("mean") or 1) < 0.9
           else " (close to saturation: the counts measure little). ")
        + INTERVALS,
        "",
        "| anchors | activation per ellipse, init | final | near-anchor ratio, init | final | seeds below 1, final |",
        "|---|---|---|---|---|---|",
        *[f"| {KINDS[k]} | {ci(s0[k]['activation'])} | {ci(s1[k]['activation'])} | {ci(s0[k]['near_anchor_ratio'])} "
          f"| {ci(s1[k]['near_anchor_ratio'])} | {_count(_below_one(r, k))} |" for k in ("val", "train", "random")],
        "",
        "| ratio of mean counts per ellipse | init | final |",
        "|---|---|---|",
        *[f"| {a} / {b}, {name} | {ci(s0[f'{key}'][name])} | {ci(s1[f'{key}'][name])} |"
          for key, a, b in (("val_over_train", "test", "training"), ("random_over_val", "off-manifold", "test"))
          for name in ("activation", "region_changes", "prediction")],
        "",
        f"- Fewer transitions through training points than through test points after training (test/training ratio "
        f"above 1): {bold(judge(vt, 1.0, +1))} (per-seed one-sided Mann-Whitney p: "
        f"{', '.join(fmt(p, 2) for p in s1['val_over_train']['p_greater_per_seed'])}); prediction changes: "
        f"{ci(s1['val_over_train']['prediction'])} after training, {ci(s0['val_over_train']['prediction'])} at "
        "initialisation.",
        f"- More transitions through off-manifold anchors than through test points after training (ratio above 1): "
        f"{bold(judge(rv, 1.0, +1))}; at initialisation the ratio is already {ci(rv0)}, so "
        + ("training does not create this difference (it shrinks it)." if rv0.get("mean") and rv.get("mean")
           and rv["mean"] < rv0["mean"] else "training widens it."),
        f"- Fewer transitions near the training anchors than between them after training (near-anchor ratio below 1): "
        f"{bold(judge(near_train, 1.0, -1))} (below 1 in {_count(_below_one(r, 'train'))} seeds); for the "
        f"test anchors: {bold(judge(s1['val']['near_anchor_ratio'], 1.0, -1))} (below 1 in "
        f"{_count(_below_one(r, 'val'))} seeds).",
        "",
    )
    doc.figure(folder / "transitions_density.png", "Transitions per segment (Hamming distance between consecutive "
               "points, mean over ellipses and seeds, divided by its mean) along the ellipse; shaded: the ±1/24 "
               f"windows around the anchors at 0, 1/3, 2/3; band: 95 % interval over seeds ({label}).")
    doc.figure(folder / "transitions.png", "Mean transitions per ellipse over training (95 % interval over seeds) "
               f"for the three kinds of anchors ({label}).")
    checks = {"test vs training anchors": judge(vt, 1.0, +1), "off-manifold vs test anchors": judge(rv, 1.0, +1),
              "near the training anchors": judge(near_train, 1.0, -1),
              "near the test anchors": judge(s1["val"]["near_anchor_ratio"], 1.0, -1)}  # fmt: skip
    off = [k for k, v in checks.items() if v != "holds"]
    if off:
        doc.add(
            f"**Where this differs from the paper:** {', '.join(off)} ({', '.join(checks[k] for k in off)}). "
            f"Training moves the off-manifold/test ratio from {ci(rv0)} at initialisation to {ci(rv)}, and the "
            f"near-anchor ratio of the training anchors from {ci(s0['train']['near_anchor_ratio'])} to "
            f"{ci(near_train)}. Possible reasons, not measured here: the nets are small and briefly trained "
            f"({r['final_epoch']} epochs on {cfg['train_subset']} examples); each ellipse passes through three "
            "arbitrary images of different classes, so most of it is far from every anchor and crosses class "
            "boundaries; the paper's figures come from larger, longer-trained nets.",
            "",
        )
    doc.run_info(data)


def _below_one(r: dict, split: str) -> list[int] | None:
    """``[seeds whose final near-anchor ratio is below 1, seeds with one]`` from the per-run records."""
    near = [run[split]["near_anchor_ratio"][-1] for run in r.get("runs", [])]
    near = [v for v in near if v is not None]
    return [sum(v < 1 for v in near), len(near)] if near else None


def _count(pair: list | None) -> str:
    return "n/a" if not pair else f"{pair[0]}/{pair[1]}"


def stiffness(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    t, st = r["trends"], r["stability"]
    lrs = list(r["by_lr"])
    change = r["change_over_training"]
    label = dataset_label(data)
    doc.add(
        f"## 4. Stiffness and the dynamical critical length (Fort et al. 2019) — {label}",
        "",
        "**Paper, and which version:** Fort, Nowak, Jastrzębski and Narayanan, \"Stiffness: a new perspective on "
        "generalization in neural networks\" (arXiv:1901.09491). As far as we can tell from the two abstracts, the "
        "versions state the learning-rate effect differently: the first arXiv version (January 2019) says small "
        "learning rates first learn class-specific features while high learning rates benefit all classes at once, "
        "and that higher learning rates induce positive correlation between loss changes of points further apart "
        "(i.e. a longer range of stiffness); the later version (the ICLR 2020 submission and its arXiv revision) "
        "says small learning rates reliably lead to higher stiffness at a given epoch, that the dynamical critical "
        "length decreases with training, and that the higher the learning rate, the smaller the critical length. "
        "We compare with the later version's statements (they are the ones with a direction for ξ) and say where "
        "the first version's agrees. Both: same-class stiffness above different-class stiffness, stiffness falling "
        "with input distance; the setting follows the paper's: inputs normalised and projected onto the unit sphere, "
        "fully-connected 500-300-100, Adam at a constant learning rate, batch 32.",
        "",
        f"**Setting here:** MLP {'-'.join(map(str, cfg['hidden']))} (ReLU) on the unit sphere, Adam at constant "
        f"learning rates {', '.join(lrs)}, batch {cfg['batch_size']}, {cfg['train_subset']} {label} training examples "
        f"(small, so that the run reaches the onset of overfitting), {cfg['max_epochs']} epochs, {seeds_text(r)} per "
        f"learning rate. `StiffnessMonitor(critical_length_same_class=True)` every {cfg['every_n_epochs']} epochs on "
        f"{cfg['probe_samples']} training and {cfg['probe_samples']} test points, groups train_train and train_val, "
        f"{cfg['distance']} input distance in {cfg['num_distance_bins']} bins; both critical-length methods are "
        "recomputed from the saved curves. Onset of overfitting = the epoch of the lowest held-out loss (the last "
        "epoch when the loss is still falling). A measurement whose binned curve does not reach zero within the "
        "measured distances has **no crossing**: it is counted, never extrapolated. " + INTERVALS_Z,
        "",
        "### Is the critical length decided by noise?",
        "",
        f"On the final weights of one run (lr {r['reference_lr']}, seed {r['seeds'][0]}), the train_train critical "
        f"length recomputed on {len(st['linear_fit/all']['values'])} independently drawn probe sets of "
        f"{cfg['probe_samples']} training points:",
        "",
        "| method | pairs | mean | s.d. | coefficient of variation | range | no crossing |",
        "|---|---|---|---|---|---|---|",
        *[f"| {m} | {p.replace('_', ' ')} | {fmt(st[f'{m}/{p}']['mean'])} | {fmt(st[f'{m}/{p}']['sd'])} | "
          f"{fmt(st[f'{m}/{p}']['cv'], 2)} | {fmt(st[f'{m}/{p}']['min'])} – {fmt(st[f'{m}/{p}']['max'])} | "
          f"{st[f'{m}/{p}']['missing']}/{len(st[f'{m}/{p}']['values'])} |"
          for m in ("first_crossing", "linear_fit") for p in ("all", "same_class")],
        "",
    )
    cv_first, cv_fit = st["first_crossing/all"]["cv"], st["linear_fit/all"]["cv"]
    missing_first, missing_fit = st["first_crossing/all"]["missing"], st["linear_fit/all"]["missing"]
    steadier = "linear_fit" if (cv_fit is not None and (cv_first is None or cv_fit < cv_first)
                                and missing_fit <= missing_first) else "first_crossing"
    default = _monitor_default("critical_length_method")
    doc.add(
        f"The steadier estimate under a new probe draw is **{steadier}**; `StiffnessMonitor`'s default "
        f"`critical_length_method` is `{default}`"
        + ("." if default == steadier else " (it differs from the steadier one in this run).")
        + (" Same-class sign stiffness stays positive at every measured distance on this net, so a same-class "
           "critical length is mostly undefined (no first crossing) and its linear-fit zero is an extrapolation "
           "beyond the measured range."
           if st["first_crossing/same_class"]["missing"] > len(st["first_crossing/same_class"]["values"]) / 2
           else ""),
        "",
        "### Over training and across learning rates",
        "",
        f"Critical length below: train_train pairs, by the steadier method ({steadier}), recomputed from the saved "
        "curves; \"first\" is the first measurement after training started (epoch "
        f"{r['by_lr'][lrs[0]][0]['epoch'][1] if len(r['by_lr'][lrs[0]][0]['epoch']) > 1 else 'n/a'}).",
        "",
        "| learning rate | onset of overfitting (epoch) | final val acc | critical length, first | final | "
        "mean over trained measurements | late − early half of training | measurements without a crossing |",
        "|---|---|---|---|---|---|---|---|",
    )
    key = f"critical_length_{steadier}"
    lengths = {lr: [_length_summary(run["train_train"][key], run["epoch"]) for run in r["by_lr"][lr]] for lr in lrs}
    for lr in lrs:
        row = [ci(t["onset_epoch"]["per_lr"][lr], 2), ci(t["val_acc"]["per_lr"][lr]),
               ci(t[f"train_train/{key}/first_trained"]["per_lr"][lr]), ci(t[f"train_train/{key}/final"]["per_lr"][lr]),
               ci(mean_ci([x["mean"] for x in lengths[lr]])), ci(mean_ci([x["late_minus_early"] for x in lengths[lr]])),
               f"{sum(x['missing'] for x in lengths[lr])}/{sum(x['count'] for x in lengths[lr])}"]  # fmt: skip
        doc.add(f"| {lr} | " + " | ".join(row) + " |")
    doc.add(
        "",
        "| learning rate | train_val | first | at onset | final |",
        "|---|---|---|---|---|",
        *[f"| {lr} | {name.replace('_', ' ')} | " + " | ".join(
            ci(t[f"train_val/{name}/{when}"]["per_lr"][lr]) for when in ("first_trained", "onset", "final")) + " |"
          for lr in lrs
          for name in ("same_class_sign", "same_class_cosine", "different_class_sign", "different_class_cosine")],
    )  # fmt: skip
    # per seed: Spearman rho of the learning rate vs the mean critical length over the trained measurements
    rho_len = mean_ci([_spearman([float(lr) for lr in lrs], [lengths[lr][i]["mean"] for lr in lrs])
                       for i in range(min(len(v) for v in lengths.values()))])  # fmt: skip
    other = "linear_fit" if steadier == "first_crossing" else "first_crossing"
    rho_other = t[f"train_train/critical_length_{other}/final"]["spearman"]
    rho_stiff = t["train_val/sign_mean/final"]["spearman"]
    rho_stiff_onset = t["train_val/sign_mean/onset"]["spearman"]
    rho_cos = t["train_val/cosine_mean/final"]["spearman"]
    same_minus_diff = mean_ci([a - b for lr in lrs for runs in [r["by_lr"][lr]] for run in runs
                               for a, b in [(run["train_val"]["same_class_sign"][-1],
                                             run["train_val"]["different_class_sign"][-1])]
                               if a is not None and b is not None])  # fmt: skip
    rho_same_cos = t["train_val/same_class_cosine/final"]["spearman"]
    shrink = mean_ci([x["late_minus_early"] for v in lengths.values() for x in v])
    fall = {name: change[f"train_val/{name}/onset_minus_first_trained"] for name in
            ("same_class_sign", "same_class_cosine", "different_class_sign", "different_class_cosine")}  # fmt: skip
    doc.add(
        "",
        f"- Same-class sign stiffness above different-class at the end (train_val, same − different over all "
        f"runs: {ci(same_minus_diff)}): {bold(judge(same_minus_diff, 0.0, +1))}.",
        f"- Critical length decreases during training (later version; mean over the second half of the trained "
        f"measurements minus the first half, over all runs: {ci(shrink)}): {bold(judge(shrink, 0.0, -1))}.",
        f"- Higher learning rate → smaller critical length (later version; per-seed Spearman ρ of learning rate vs the "
        f"mean critical length over the trained measurements {ci(rho_len)}; by {other}, final measurement only: "
        f"{ci(rho_other)}): {bold(judge(rho_len, 0.0, -1))}."
        + (" The interval lies on the other side: higher learning rates give a longer critical length here, the "
           "direction of the first version's \"positive correlation between changes in loss further apart\"."
           if beyond(rho_len, 0.0, +1) else ""),
        f"- Smaller learning rate → higher train_val stiffness at a given epoch (later version), all pairs: per-seed ρ "
        f"of learning rate vs mean sign stiffness at the final epoch {ci(rho_stiff)} (at the onset of overfitting "
        f"{ci(rho_stiff_onset)}; cosine, final epoch {ci(rho_cos)}): {bold(judge(rho_stiff, 0.0, -1))}"
        + (" (higher learning rates give higher all-pairs stiffness here, closer to the first version's \"high "
           "learning rates initially benefit all classes at once\")" if beyond(rho_stiff, 0.0, +1) else "")
        + f"; same-class pairs: ρ of learning rate vs same-class cosine stiffness at the final epoch "
        f"{ci(rho_same_cos)}: {bold(judge(rho_same_cos, 0.0, -1))}.",
        "- Towards zero by the onset of overfitting: |train_val stiffness| at the onset minus at the first "
        "measurement, over all runs: "
        + "; ".join(f"{name.replace('_', ' ')} {ci(d)}" for name, d in fall.items())
        + ". Within-class stiffness falls towards zero by the onset: "
        f"{bold(judge(fall['same_class_cosine'], 0.0, -1))} "
        f"(cosine); between-class: {bold(judge(fall['different_class_cosine'], 0.0, -1))} (cosine).",
        "",
    )
    doc.figure(folder / "stiffness_over_training.png", "Left: train_val sign stiffness over training (solid: same "
               "class, dashed: different class). Middle: train_train critical length (first crossing; gaps: no "
               "crossing). Right: held-out loss (its minimum is the onset of overfitting). Bands: 95 % interval over "
               f"seeds ({label}).")
    doc.figure(folder / "stiffness_class_matrices.png", f"Class sign-stiffness matrices at initialisation, "
               f"mid-training and at the end (lr {r['reference_lr']}, first seed).")
    doc.figure(folder / "stiffness_by_distance.png", f"train_train sign stiffness vs cosine input distance at "
               f"initialisation, mid-training and the end (lr {r['reference_lr']}; mean and 95 % interval over seeds).")
    same_final = [t["train_val/same_class_sign/final"]["per_lr"][lr].get("mean") or 0 for lr in lrs]
    firsts = [v for lr in lrs for run in r["by_lr"][lr]
              for v in run["train_train"]["critical_length_first_crossing"][1:] if v is not None]  # fmt: skip
    missing = {m: sum(x for x in (r.get("no_crossing_per_lr") or {}).get(f"train_train/{m}", [])) for m in
               ("first_crossing", "linear_fit")}  # fmt: skip
    total = sum(r.get("measurements_per_lr") or [])
    doc.add(
        "**Caveats (from these runs):** "
        + ("sign stiffness of same-class pairs is close to 1 here (final train_val mean "
           f"{fmt(min(same_final))} to {fmt(max(same_final))} over learning rates), so the critical length of all "
           "pairs mostly measures where different-class pairs take over. " if min(same_final) > 0.9 else "")
        + (f"Of {total} trained train_train measurements, {missing['first_crossing']} have no first crossing and "
           f"{missing['linear_fit']} no zero of the fitted line within the measured distances; the first crossings "
           f"found range from {fmt(min(firsts))} to {fmt(max(firsts))}. " if total and firsts else "")
        + f"{cfg['probe_samples']} probe points per set and {len(r['seeds'])} seeds per learning rate; the runs are "
        "short next to the paper's.",
        "",
    )
    doc.run_info(data)


def _length_summary(values: list, epochs: list) -> dict:
    """One run's critical lengths after initialisation: their mean, second-half minus first-half mean, NaN count."""
    trained = [(e, v) for e, v in zip(epochs[1:], values[1:], strict=True)]
    finite = [(e, v) for e, v in trained if v is not None and v == v]
    half = len(trained) // 2
    early = [v for e, v in finite if e <= trained[half - 1][0]] if half else []
    late = [v for e, v in finite if e > trained[half - 1][0]] if half else []
    return {
        "mean": sum(v for _, v in finite) / len(finite) if finite else None,
        "late_minus_early": sum(late) / len(late) - sum(early) / len(early) if early and late else None,
        "missing": len(trained) - len(finite),
        "count": len(trained),
    }


def _spearman(x: list, y: list) -> float | None:
    import numpy as np
    from scipy.stats import spearmanr

    keep = [i for i, v in enumerate(y) if v is not None and np.isfinite(v)]
    # constant values have no ranks (spearmanr would warn and return NaN)
    if len(keep) < 3 or np.ptp([y[i] for i in keep]) == 0:
        return None
    return float(spearmanr([x[i] for i in keep], [y[i] for i in keep]).statistic)


def _monitor_default(name: str) -> object:
    """A keyword default of ``StiffnessMonitor`` as the package now has it (not as the run recorded it)."""
    import inspect

    from lightning_sensitivity.callbacks import StiffnessMonitor

    return inspect.signature(StiffnessMonitor.__init__).parameters[name].default


SECTIONS: dict[str, Callable[[Doc, dict, Path], None]] = {
    "jacobian_vs_generalization": jacobian,
    "per_point_prediction": per_point,
    "transitions": transitions,
    "stiffness": stiffness,
}
SUMMARY_START, SUMMARY_END = "<!-- findings-summary:start -->", "<!-- findings-summary:end -->"


def _interval(d: dict | None) -> dict | None:
    return d if d and d.get("mean") is not None else None


def claims(data: dict[str, dict]) -> list[dict]:
    """One row per claim of the papers for one dataset: the measured value with its 95 % interval and the verdict
    (``judge``), from that dataset's results files (``data`` maps experiment name to results file)."""
    rows: list[dict] = []

    def add(key: str, text: str, paper: str, d: dict | None, null: float, direction: int, note: str = "") -> None:
        d = _interval(d)
        rows.append({"key": key, "claim": text, "paper": paper, "value": ci(d), "note": note,
                     "verdict": judge(d, null, direction)})  # fmt: skip

    if "jacobian_vs_generalization" in data:
        r = data["jacobian_vs_generalization"]["results"]
        ps, direction, summary = r.get("per_seed_correlation", {}), r["direction"], r["summary"]
        add("jacobian_gap", "test Jacobian norm vs generalization gap (per-seed Spearman ρ)", "positive",
            (ps.get("jacobian_vs_gap_acc") or {}).get("spearman"), 0.0, +1)
        add("jacobian_gap_true_labels", "the same without random-label runs", "positive",
            (ps.get("jacobian_vs_gap_acc_true_labels") or {}).get("spearman"), 0.0, +1)
        for variant, paper in (("random_labels", "larger norm"), ("full_batch", "larger norm"),
                               ("augment", "smaller norm")):  # fmt: skip
            d = direction.get(variant)
            if not d:
                continue
            sign = 1 if paper == "larger norm" else -1
            reached = (summary.get("reached_target_by_variant") or {}).get(variant, [None, None])
            note = f"{d['held']}/{d['total']} pairs agree; {reached[0]}/{reached[1]} runs reach the target"
            add(f"{variant}_ratio", f"{variant.replace('_', ' ')} → norm ratio to baseline", paper,
                {"mean": d.get("geomean_ratio"), "low": d.get("geomean_ratio_low"),
                 "high": d.get("geomean_ratio_high")},
                1.0, sign, note)
            if variant == "augment":
                add("augment_matched", "augment → norm ratio to baseline at matched training accuracy", paper,
                    {"mean": d.get("matched_geomean_ratio"), "low": d.get("matched_geomean_ratio_low"),
                     "high": d.get("matched_geomean_ratio_high")}, 1.0, sign,
                    f"{d.get('matched_held', 0)}/{d.get('matched_count', 0)} pairs agree")  # fmt: skip
        add("train_test_ratio", "training / test norm (per-seed median)", "below 1",
            summary.get("train_test_ratio_by_seed"), 1.0, -1)
        if summary.get("num_collapsed"):
            rows[-1]["note"] = f"{summary['num_collapsed']} collapsed runs left out"
    if "per_point_prediction" in data:
        s = data["per_point_prediction"]["results"]["summary"]
        add("per_point_auroc", "per-point norm predicts misclassification (AUROC)", "above 0.5", s["norm_auroc"],
            0.5, +1)
        add("per_point_gain", "norm adds to confidence (5-fold CV AUROC gain)", "(question added here)", s["cv_gain"],
            0.0, +1)
    if "transitions" in data:
        s1 = data["transitions"]["results"]["summary"]["final"]
        add("off_manifold", "transitions, shuffled (off-manifold) / test anchors, after training", "above 1",
            s1["random_over_val"]["activation"], 1.0, +1)
        add("test_over_train", "transitions, test / training anchors, after training", "above 1",
            s1["val_over_train"]["activation"], 1.0, +1)
        for split, text in (("train", "training"), ("val", "test")):
            below = _below_one(data["transitions"]["results"], split)
            add(f"near_anchor_{split}", f"near-anchor density ratio, {text} anchors", "below 1",
                s1[split]["near_anchor_ratio"], 1.0, -1, f"below 1 in {_count(below)} seeds" if below else "")
    if "stiffness" in data:
        r = data["stiffness"]["results"]
        t, lrs = r["trends"], list(r["by_lr"])
        same_minus_diff = mean_ci([run["train_val"]["same_class_sign"][-1]
                                   - run["train_val"]["different_class_sign"][-1]
                                   for lr in lrs for run in r["by_lr"][lr]
                                   if run["train_val"]["same_class_sign"][-1] is not None
                                   and run["train_val"]["different_class_sign"][-1] is not None])  # fmt: skip
        add("same_above_different", "same-class minus different-class sign stiffness, end (interval over runs)",
            "above 0", same_minus_diff, 0.0, +1)
        lengths = {lr: [_length_summary(run["train_train"]["critical_length_first_crossing"], run["epoch"])
                        for run in r["by_lr"][lr]] for lr in lrs}  # fmt: skip
        shrink = mean_ci([x["late_minus_early"] for v in lengths.values() for x in v])
        missing = sum(x["missing"] for v in lengths.values() for x in v)
        count = sum(x["count"] for v in lengths.values() for x in v)
        add("critical_length_training", "critical length, late − early half of training (interval over runs)",
            "below 0 (later version)",
            shrink, 0.0, -1, f"{missing}/{count} measurements without a crossing")
        rho_len = _rho_ci([float(lr) for lr in lrs], [[x["mean"] for x in lengths[lr]] for lr in lrs])
        add("critical_length_lr", "learning rate vs critical length (per-seed ρ)", "below 0 (later version)",
            rho_len, 0.0, -1)
        add("stiffness_lr_all_pairs", "learning rate vs all-pairs sign stiffness, end (per-seed ρ)",
            "below 0 (later version)", t["train_val/sign_mean/final"]["spearman"], 0.0, -1)
        add("stiffness_lr_same_class", "learning rate vs same-class cosine stiffness, end (per-seed ρ)",
            "below 0 (later version)", t["train_val/same_class_cosine/final"]["spearman"], 0.0, -1)
        add("within_class_falls", "same-class cosine stiffness, onset − first measurement (interval over runs)",
            "below 0",
            r["change_over_training"]["train_val/same_class_cosine/onset_minus_first_trained"], 0.0, -1)
    return rows


def _rho_ci(x: list[float], columns: list[list]) -> dict:
    """Per seed (index into each column), Spearman ρ of ``x`` vs the values; mean and interval on the z scale."""
    import _common as C

    seeds = min(len(c) for c in columns)
    return C.correlation_ci([_spearman(x, [c[i] for c in columns]) for i in range(seeds)])


# the README's summary: the claims it states, each with the words it uses
SUMMARY_CLAIMS = (
    ("jacobian_gap", "the held-out Jacobian norm rank-correlates with the generalization gap"),
    ("jacobian_gap_true_labels", "the same without the random-label runs"),
    ("random_labels_ratio", "random labels give a larger norm"),
    ("full_batch_ratio", "full-batch training gives a larger norm"),
    ("augment_matched", "augmentation gives a smaller norm (at matched training accuracy)"),
    ("per_point_auroc", "per-point norms predict misclassification"),
    ("per_point_gain", "they add to the softmax confidence"),
    ("off_manifold",
     "more transitions along ellipses through shuffled (off-manifold) anchors than through test points"),
    ("near_anchor_train", "fewer transitions near training anchors than between them"),
    ("same_above_different", "same-class stiffness above different-class"),
    ("critical_length_lr", "a higher learning rate gives a shorter critical length"),
    ("stiffness_lr_all_pairs", "a smaller learning rate gives higher all-pairs stiffness"),
    ("stiffness_lr_same_class", "a smaller learning rate gives higher same-class stiffness"),
)


def summary_text(by_dataset: dict[str, list[dict]], labels: dict[str, str], seeds: str, reduced: bool) -> str:
    """The README's findings paragraph, written from the claims table (so it cannot say what a dataset contradicts)."""
    names = " and ".join(labels[d] for d in by_dataset)
    parts = []
    for key, words in SUMMARY_CLAIMS:
        per = []
        for d, rows in by_dataset.items():
            row = next((x for x in rows if x["key"] == key), None)
            if row is not None:
                per.append(f"{row['verdict']} on {labels[d]} ({row['value']})")
        if per:
            parts.append(f"{words[0].upper()}{words[1:]}: {'; '.join(per)}")
    text = (f"- **The papers on {names}** (`docs/findings.md`, `experiments/`; {seeds}, 95 % intervals, verdicts "
            "holds / mixed / does not hold from the intervals"
            + ("; reduced settings, listed there" if reduced else "") + "): " + ". ".join(parts) + ".")
    return text


#: In ``findings.md``, what follows this line is written by other experiments and kept by :func:`main`.
KEEP_MARKER = "<!-- Sections below are written by their own experiments"


def _replace_block(text: str, block: str) -> str:
    start, end = text.index(SUMMARY_START), text.index(SUMMARY_END)
    return text[: start + len(SUMMARY_START)] + "\n" + block + "\n" + text[end:]


def parse_claims_table(text: str) -> tuple[list[str], dict[str, dict[str, tuple[str, str]]]]:
    """The dataset labels and ``{id: {label: (value, verdict)}}`` of the claims table in ``findings.md``."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| id | claim | paper |"))
    labels = [c.strip() for c in lines[head].strip("|").split("|")][3:]
    table: dict[str, dict[str, tuple[str, str]]] = {}
    for line in lines[head + 2 :]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        key = cells[0].strip("`")
        table[key] = {}
        for label, cell in zip(labels, cells[3:], strict=True):
            if cell != "n/a":
                value, rest = cell.split(" **", 1)
                table[key][label] = (value, rest.split("**", 1)[0])
    return labels, table


def summary_block(text: str) -> str:
    """The text between the summary markers of a README or findings file."""
    start, end = text.index(SUMMARY_START), text.index(SUMMARY_END)
    return text[start + len(SUMMARY_START) : end].strip()


def load(dirs: list[Path]) -> dict[str, dict[str, tuple[dict, Path]]]:
    """``{dataset: {experiment: (results, folder)}}`` from ``<dir>/<experiment>/results.json`` under each dir;
    the dataset is the one each results file records."""
    out: dict[str, dict[str, tuple[dict, Path]]] = {}
    for root in dirs:
        for name in ORDER:
            path = root / name / "results.json"
            if path.is_file():
                data = json.loads(path.read_text())
                out.setdefault(data.get("dataset", "mnist"), {})[name] = (data, path.parent)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, nargs="+", default=[HERE / "output"],
                        help="folders holding <experiment>/results.json (one per dataset, or several)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "findings.md")
    parser.add_argument("--figures-dir", type=Path, default=None, help="default: <output's folder>/figures")
    parser.add_argument("--readme", type=Path, default=None, help="also write the summary into this README's block")
    args = parser.parse_args(argv)
    figures = args.figures_dir or args.output.parent / "figures"
    found = load(args.results_dir)
    if not found:
        raise SystemExit(f"no results.json under {', '.join(map(str, args.results_dir))}; run the experiments first")
    order = [d for d in ("mnist", "fashion_mnist", "cifar10", "cifar100") if d in found] + sorted(
        d for d in found if d not in ("mnist", "fashion_mnist", "cifar10", "cifar100"))
    labels = {d: dataset_label(next(iter(found[d].values()))[0]) for d in order}
    all_data = [data for d in order for data, _ in found[d].values()]
    total = sum(d["wall_time_s"] for d in all_data)
    modules = ", ".join(f"`{datamodule_of(next(iter(found[d].values()))[0])}` ({labels[d]})" for d in order)
    doc = Doc(args.output, figures)
    doc.add(
        "# Findings: the papers' phenomena measured with lightning-sensitivity",
        "",
        "Generated by `python experiments/make_findings.py` from the `results.json` files the scripts in "
        "`experiments/` write; no number below is typed by hand, and every verdict is computed from the interval "
        f"next to it. Datasets: {', '.join(labels[d] for d in order)}. Each experiment trains with the package's "
        f"datamodules ({modules}), `MLP` and `LitClassifier` under a Lightning `Trainer` with a `TensorBoardLogger`, "
        "measures with the package's callbacks and reads the numbers back from the artifacts they save. The runs are "
        "small (a few thousand training examples, CPU, minutes), so they test the direction of each published effect, "
        f"not its size. Total wall time of the runs: {fmt(total, 4)} s (several scripts at a time on a shared 2-core "
        "machine).",
        "",
    )
    if any(d["quick"] for d in all_data):
        doc.add("> **Warning:** some results come from `--quick` smoke-test runs (tiny data, one epoch); they say "
                "nothing about the papers' claims.", "")
    changes = [(labels[d], name, setting_changes(data)) for d in order for name, (data, _) in found[d].items()]
    changed = [(lab, name, c) for lab, name, c in changes if c]
    # more seeds than the default is no reduction: say which it is
    only_seeds = all(all(x.startswith("`num_seeds` ") for x in c) for _, _, c in changed)
    more_seeds = only_seeds and all(
        data["config"].get("num_seeds", 0) >= json.loads((HERE / "configs" / f"{name}.json").read_text())["full"]
        .get("num_seeds", 0) for d in order for name, (data, _) in found[d].items())  # fmt: skip
    if changed and more_seeds:
        doc.add("**Settings.** Every result below comes from the scripts' full default settings "
                "(`experiments/configs/<script>.json`, the `full` section) with more seeds than their default "
                "(configs in `experiments/configs/reduced/`; the sweep ran one seed per process and merged them). "
                "What differs, as the results files record it:", "")
    elif changed:
        doc.add("**Reduced settings.** Not every result below comes from the scripts' full default settings "
                "(`experiments/configs/<script>.json`, the `full` section): the machine they ran on was shared and "
                "loaded, so some runs used the settings in `experiments/configs/reduced/`. What differs, as the "
                "results files record it:", "")
    if changed:
        doc.add(*[f"- {lab}, `{name}`: {'; '.join(c)}." for lab, name, c in changed], "")
    unplaced = sum("package_dir" not in data for data in all_data)
    if unplaced:
        doc.add(f"**Provenance.** {unplaced} of {len(all_data)} results files predate recording the package the "
                "run imported (`package_dir`): those runs measured with the installed package of their environment "
                "at the time, which may differ from the commit they record.", "")
    missing = [f"{labels[d]}: {', '.join(n for n in ORDER if n not in found[d])}" for d in order
               if any(n not in found[d] for n in ORDER)]  # fmt: skip
    if missing:
        doc.add(f"> Not run yet: {'; '.join(missing)}.", "")
    by_dataset = {d: claims({name: data for name, (data, _) in found[d].items()}) for d in order}
    seed_counts = sorted({len(data["results"].get("seeds") or []) for data in all_data})
    seeds = f"{'-'.join(map(str, (seed_counts[0], seed_counts[-1]))) if len(seed_counts) > 1 else seed_counts[0]} seeds"
    doc.add(
        "## Claims by dataset",
        "",
        "One row per claim; each cell: mean [95 % interval over seeds] and the verdict (**holds**: the interval lies "
        "on the paper's side; **does not hold**: wholly on the other side; **mixed**: it contains no effect).",
        "",
        "| id | claim | paper | " + " | ".join(labels[d] for d in order) + " |",
        "|---|---|---|" + "---|" * len(order),
    )
    keys = list(dict.fromkeys(row["key"] for d in order for row in by_dataset[d]))
    for key in keys:
        cells, first = [], None
        for d in order:
            row = next((x for x in by_dataset[d] if x["key"] == key), None)
            first = first or row
            cells.append("n/a" if row is None else f"{row['value']} **{row['verdict']}**"
                         + (f" ({row['note']})" if row["note"] else ""))
        doc.add(f"| `{key}` | {first['claim']} | {first['paper']} | " + " | ".join(cells) + " |")
    reduced = bool(changed) and not more_seeds
    summary = summary_text(by_dataset, labels, seeds, reduced)
    doc.add("", "In one paragraph (the README's, written from this table):", "",
            SUMMARY_START, summary, SUMMARY_END, "")
    for d in order:
        for name in ORDER:
            if name in found[d]:
                data, folder = found[d][name]
                doc.figures_dir = figures / d
                SECTIONS[name](doc, data, folder)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(doc.lines).rstrip() + "\n"
    # Sections other experiments write (influence, measure ranking) follow KEEP_MARKER: kept as they are.
    previous = args.output.read_text() if args.output.exists() else ""
    if KEEP_MARKER in previous:
        text += "\n" + previous[previous.index(KEEP_MARKER) :]
    args.output.write_text(text)
    if args.readme is not None:
        args.readme.write_text(_replace_block(args.readme.read_text(), summary))
    print(f"wrote {args.output} ({sum(len(v) for v in found.values())} results files, figures in {figures})")


if __name__ == "__main__":
    main()
