"""Assemble ``docs/findings.md`` from the experiments' ``results.json`` files; copy their figures to ``docs/figures``.

Every number in the document is read from a results file written by a script in ``experiments/``; nothing is typed
by hand. Verdicts ("holds here" / "does not hold here") are computed from the same numbers: a verdict holds when the
95 % interval over seeds lies on the paper's side.

Usage::

    python experiments/make_findings.py [--results-dir experiments/output] [--output docs/findings.md]
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
from _findings import INTERVALS, Doc, beyond, ci, fmt, jacobian, mean_ci, per_point, seeds_text, verdict  # noqa: E402

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
    doc.add(
        "## 3. Transitions near the data and away from it (Novak et al. 2018, Sec. 4.1)",
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
        f"momentum {cfg['momentum']}, {cfg['train_subset']} MNIST examples, {r['final_epoch']} epochs, "
        f"{seeds_text(r)}. One `TransitionMonitor(splits=('val', 'train', 'random'))` per run, every "
        f"{cfg['every_n_epochs']} epochs from initialisation: {cfg['num_trajectories']} ellipses of "
        f"{cfg['num_points']} points through three test points (its validation probe set is the test split), "
        "through three training points, and through the same test triples with every image's pixels shuffled "
        "(seeded; same intensity histogram, off the manifold). Per-segment Hamming distances are saved; the "
        f"near-anchor ratio is the mean transitions per segment within ±{fmt(half)} of the period (±1/24) around the "
        "three anchors divided by the mean elsewhere (a quarter of the ellipse counts as near). "
        f"On average {ci(s1['val']['saturation'], 2)} of the segments change linear region at the end, so the counts "
        "are not saturated. " + INTERVALS,
        "",
        "| anchors | activation per ellipse, init | final | near-anchor ratio, init | final |",
        "|---|---|---|---|---|",
        *[f"| {KINDS[k]} | {ci(s0[k]['activation'])} | {ci(s1[k]['activation'])} | {ci(s0[k]['near_anchor_ratio'])} "
          f"| {ci(s1[k]['near_anchor_ratio'])} |" for k in ("val", "train", "random")],
        "",
        "| ratio of mean counts per ellipse | init | final |",
        "|---|---|---|",
        *[f"| {a} / {b}, {name} | {ci(s0[f'{key}'][name])} | {ci(s1[f'{key}'][name])} |"
          for key, a, b in (("val_over_train", "test", "training"), ("random_over_val", "off-manifold", "test"))
          for name in ("activation", "region_changes", "prediction")],
        "",
        f"- Fewer transitions through training points than through test points after training (test/training ratio "
        f"above 1): {verdict(beyond(vt, 1.0, +1))} (per-seed one-sided Mann-Whitney p: "
        f"{', '.join(fmt(p, 2) for p in s1['val_over_train']['p_greater_per_seed'])}); prediction changes: "
        f"{ci(s1['val_over_train']['prediction'])} after training, {ci(s0['val_over_train']['prediction'])} at "
        "initialisation.",
        f"- More transitions through off-manifold anchors than through test points after training (ratio above 1): "
        f"{verdict(beyond(rv, 1.0, +1))}; at initialisation the ratio is already {ci(rv0)}, so "
        + ("training does not create this difference (it shrinks it)." if rv0.get("mean") and rv.get("mean")
           and rv["mean"] < rv0["mean"] else "training widens it."),
        f"- Fewer transitions near the training anchors than between them after training (near-anchor ratio below 1): "
        f"{verdict(beyond(near_train, 1.0, -1))}; for the test anchors: "
        f"{verdict(beyond(s1['val']['near_anchor_ratio'], 1.0, -1))}.",
        "",
    )
    doc.figure(folder / "transitions_density.png", "Transitions per segment (Hamming distance between consecutive "
               "points, mean over ellipses and seeds, divided by its mean) along the ellipse; shaded: the ±1/24 "
               "windows around the anchors at 0, 1/3, 2/3.")
    doc.figure(folder / "transitions.png", "Mean transitions per ellipse over training (± s.e.m. over seeds) for "
               "the three kinds of anchors.")
    failed = [beyond(vt, 1.0, +1), beyond(rv, 1.0, +1), beyond(near_train, 1.0, -1)]
    if False in failed or None in failed:
        doc.add(
        "**Where this differs from the paper and why it may:** the differences between the anchor kinds that do "
        "show are of the size the initialisation already shows, and training moves them little. The nets are small and "
        f"briefly trained ({r['final_epoch']} epochs on {cfg['train_subset']} examples); the ellipses here are "
        "through three arbitrary images of different classes, so most of each ellipse is far from every anchor and "
        "crosses class boundaries, and shuffled images have the same norm as real ones, so their ellipses are not "
        "much longer. The paper's figures come from larger, longer-trained nets.",
        "",
        )
    doc.run_info(data)


def stiffness(doc: Doc, data: dict, folder: Path) -> None:
    r, cfg = data["results"], data["config"]
    t, st = r["trends"], r["stability"]
    lrs = list(r["by_lr"])
    change = r["change_over_training"]
    doc.add(
        "## 4. Stiffness and the dynamical critical length (Fort et al. 2019)",
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
        f"learning rates {', '.join(lrs)}, batch {cfg['batch_size']}, {cfg['train_subset']} MNIST training examples "
        f"(small, so that the run reaches the onset of overfitting), {cfg['max_epochs']} epochs, {seeds_text(r)} per "
        f"learning rate. `StiffnessMonitor(critical_length_same_class=True)` every {cfg['every_n_epochs']} epochs on "
        f"{cfg['probe_samples']} training and {cfg['probe_samples']} test points, groups train_train and train_val, "
        f"{cfg['distance']} input distance in {cfg['num_distance_bins']} bins; both critical-length methods are "
        "recomputed from the saved curves. Onset of overfitting = the epoch of the lowest held-out loss (the last "
        "epoch when the loss is still falling). " + INTERVALS,
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
    same_gt_diff = all(
        (t["train_val/same_class_sign/final"]["per_lr"][lr].get("mean") or 0)
        > (t["train_val/different_class_sign/final"]["per_lr"][lr].get("mean") or 0) for lr in lrs
    )
    shrink = mean_ci([x["late_minus_early"] for v in lengths.values() for x in v])
    fall = {name: change[f"train_val/{name}/onset_minus_first_trained"] for name in
            ("same_class_sign", "same_class_cosine", "different_class_sign", "different_class_cosine")}  # fmt: skip
    doc.add(
        "",
        f"- Same-class stiffness above different-class stiffness at the end, every learning rate: "
        f"{verdict(same_gt_diff)}.",
        f"- Critical length decreases during training (later version; mean over the second half of the trained "
        f"measurements minus the first half, over all runs: {ci(shrink)}): {verdict(beyond(shrink, 0.0, -1))}.",
        f"- Higher learning rate → smaller critical length (later version; per-seed Spearman ρ of learning rate vs the "
        f"mean critical length over the trained measurements {ci(rho_len)}; by {other}, final measurement only: "
        f"{ci(rho_other)}): {verdict(beyond(rho_len, 0.0, -1))}."
        + (" The interval lies on the other side: higher learning rates give a longer critical length here, the "
           "direction of the first version's \"positive correlation between changes in loss further apart\"."
           if beyond(rho_len, 0.0, +1) else ""),
        f"- Smaller learning rate → higher train_val stiffness at a given epoch (later version; per-seed ρ of learning "
        f"rate vs mean sign stiffness at the final epoch {ci(rho_stiff)}, at the onset of overfitting "
        f"{ci(rho_stiff_onset)}; vs mean cosine stiffness at the final epoch {ci(rho_cos)}): "
        f"{verdict(beyond(rho_stiff, 0.0, -1))}."
        + (" The interval lies on the other side: higher learning rates give higher stiffness here, closer to the "
           "first version's \"high learning rates initially benefit all classes at once\"."
           if beyond(rho_stiff, 0.0, +1) else ""),
        "- Towards zero by the onset of overfitting: |train_val stiffness| at the onset minus at the first "
        "measurement, over all runs: "
        + "; ".join(f"{name.replace('_', ' ')} {ci(d)}" for name, d in fall.items())
        + ". Within-class stiffness falls towards zero by the onset: "
        f"{verdict(beyond(fall['same_class_cosine'], 0.0, -1))} "
        f"(cosine); between-class: {verdict(beyond(fall['different_class_cosine'], 0.0, -1))} (cosine; its sign "
        "stiffness is already near zero at the first measurement, after the anti-stiffness of initialisation).",
        "",
    )
    doc.figure(folder / "stiffness_over_training.png", "Left: train_val sign stiffness over training (solid: same "
               "class, dashed: different class; band: range over seeds). Middle: train_train critical length "
               "(first crossing; band: range over seeds). Right: held-out loss (its minimum is the onset of "
               "overfitting).")
    doc.figure(folder / "stiffness_class_matrices.png", f"Class sign-stiffness matrices at initialisation, "
               f"mid-training and at the end (lr {r['reference_lr']}, first seed).")
    doc.figure(folder / "stiffness_by_distance.png", f"train_train sign stiffness vs cosine input distance over "
               f"training (lr {r['reference_lr']}, first seed).")
    same_final = [t["train_val/same_class_sign/final"]["per_lr"][lr].get("mean") or 0 for lr in lrs]
    doc.add(
        "**Caveats:** "
        + ("sign stiffness of same-class pairs is close to 1 here (final train_val mean "
           f"{fmt(min(same_final))} to {fmt(max(same_final))} over learning rates), so the critical length of all "
           "pairs mostly measures where different-class pairs take over. " if min(same_final) > 0.9 else "")
        + "The binned sign curve of trained nets dips to about zero at intermediate distances and rises again at the "
        "largest ones (few pairs there), so a straight line through all bins fits it badly (its zero moves far out "
        "or its slope is not negative) and the first crossing exists only when the dip reaches zero. "
        f"{cfg['probe_samples']} probe points per set and {len(r['seeds'])} seeds per learning rate give wide "
        "intervals; the runs are short next to the paper's.",
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
    from scipy.stats import spearmanr

    keep = [i for i, v in enumerate(y) if v is not None]
    return float(spearmanr([x[i] for i in keep], [y[i] for i in keep]).statistic) if len(keep) >= 3 else None


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "output")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "findings.md")
    parser.add_argument("--figures-dir", type=Path, default=None, help="default: <output's folder>/figures")
    args = parser.parse_args(argv)
    figures = args.figures_dir or args.output.parent / "figures"
    doc = Doc(args.output, figures)
    found = {name: args.results_dir / name / "results.json" for name in ORDER}
    loaded = {name: json.loads(path.read_text()) for name, path in found.items() if path.is_file()}
    if not loaded:
        raise SystemExit(f"no results.json under {args.results_dir}; run the experiments first")
    total = sum(d["wall_time_s"] for d in loaded.values())
    doc.add(
        "# Findings: the papers' phenomena measured with lightning-sensitivity",
        "",
        "Generated by `python experiments/make_findings.py` from the `results.json` files the scripts in "
        "`experiments/` write; no number below is typed by hand. Each experiment trains with the package's "
        "`MNISTDataModule`, `MLP` and `LitClassifier` under a Lightning `Trainer` with a `TensorBoardLogger`, measures "
        "with the package's callbacks and reads the numbers back from the artifacts they save. Every comparison is "
        "repeated over at least 3 seeds and reported as the mean with a 95 % interval over seeds. The runs are small "
        "(a few thousand training examples, CPU, minutes), so they test the direction of each published effect, not "
        f"its size. Total wall time of the runs: {fmt(total, 4)} s (the scripts ran two at a time on a shared 2-core "
        "machine).",
        "",
        "Reproduce: run each script below with its defaults (the command is given under each section), then "
        "`python experiments/make_findings.py`. Every training run leaves a TensorBoard log directory with the "
        "callbacks' artifacts in `experiments/output/<script>/logs/<run>/version_0`; "
        "`python -m lightning_sensitivity.report <that directory>` re-plots any of them.",
        "",
    )
    if any(d["quick"] for d in loaded.values()):
        doc.add("> **Warning:** some results come from `--quick` smoke-test runs (tiny data, one epoch); they say "
                "nothing about the papers' claims.", "")
    missing = [name for name in ORDER if name not in loaded]
    if missing:
        doc.add(f"> Not run yet: {', '.join(missing)}.", "")
    for name, data in loaded.items():
        SECTIONS[name](doc, data, found[name].parent)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(doc.lines).rstrip() + "\n")
    print(f"wrote {args.output} ({len(loaded)} experiments, figures in {figures})")


if __name__ == "__main__":
    main()
