"""The experiments' statistics on tiny synthetic records: the cases that crashed or misreported on other datasets.

No training: the analysis functions of the scripts and of ``make_findings.py`` run on hand-made per-run records
(collapsed runs with a test norm of exactly 0, constant columns, curves that never cross zero, correlations near 1),
and the README's findings paragraph is checked against ``docs/findings.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import load_module

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


def _module(name: str):
    return load_module(EXPERIMENTS / f"{name}.py", f"{name}_guards_under_test", keep_on_path=True)


@pytest.fixture(scope="module")
def jac():
    return _module("jacobian_vs_generalization")


@pytest.fixture(scope="module")
def common():
    return _module("_common")


CFG = {"stop_at_train_acc": 0.99, "collapse_below_train_acc": 0.5, "bases": [{}, {}],
       "variants": {"baseline": {}, "random_labels": {}, "full_batch": {"batch_size": 0}, "augment": {}}}  # fmt: skip


def _run(seed, base, variant, norm, train_acc=0.995, test_acc=0.9, history=None):
    return {"run": f"seed{seed}_base{base}_{variant}", "seed": seed, "base": base, "variant": variant,
            "jacobian_test_mean": norm, "train_acc": train_acc, "test_acc": test_acc, "gap_acc": train_acc - test_acc,
            "gap_loss": 0.1, "train_test_ratio": 0.5, "epochs": 10, "steps": 100, "batch_size": 64,
            "reached_target": train_acc >= 0.99, "history": history or [],
            "collapsed": train_acc < 0.5 or not norm or norm <= 0}  # fmt: skip


def test_collapse_rule(jac):
    assert jac.is_collapsed(0.2, 0.1, 0.5)  # did not train
    assert jac.is_collapsed(0.9, 0.0, 0.5)  # a dead net: constant softmax, norm exactly 0
    assert jac.is_collapsed(0.9, float("nan"), 0.5) and jac.is_collapsed(None, 0.1, 0.5)
    assert not jac.is_collapsed(0.6, 0.1, 0.5)


def test_sweep_with_a_collapsed_baseline_does_not_divide_by_zero(jac):
    # base 1 collapses in every seed (as 64x1 SGD lr 0.05 did on CIFAR-10): test norm exactly 0
    runs = []
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        for base in (0, 1):
            for variant in CFG["variants"]:
                if base == 1 and variant == "baseline":
                    runs.append(_run(seed, base, variant, 0.0, train_acc=0.18, test_acc=0.15))
                else:
                    runs.append(_run(seed, base, variant, float(rng.uniform(0.1, 0.5)),
                                     test_acc=float(rng.uniform(0.7, 0.95))))  # fmt: skip
    results = jac.analyse(runs, CFG, [0, 1, 2])
    summary = results["summary"]
    assert summary["num_collapsed"] == 3 and summary["num_valid"] == len(runs) - 3
    for variant, d in results["direction"].items():
        assert d["total"] == 3 and len(d["excluded_pairs"]) == 3, variant  # base 1's pairs left out, counted
        assert all(math.isfinite(p["norm_ratio"]) for p in d["pairs"])
    assert results["correlation"]["jacobian_vs_gap_acc"]["n"] == len(runs) - 3


def test_every_run_collapsed_leaves_no_ratio_and_no_crash(jac, tmp_path):
    runs = [_run(s, b, v, 0.0, train_acc=0.1) for s in (0, 1) for b in (0, 1) for v in CFG["variants"]]
    results = jac.analyse(runs, CFG, [0, 1])
    assert results["summary"]["num_collapsed"] == len(runs)
    assert all(d["geomean_ratio"] is None and d["total"] == 0 for d in results["direction"].values())
    assert results["correlation"]["jacobian_vs_gap_acc"]["spearman"] is None
    assert results["summary"]["median_train_test_ratio"] is None
    # and the figures are still drawn (an empty log axis crashed matplotlib)
    jac.plot_all(results, tmp_path)
    assert (tmp_path / "jacobian_vs_gap.png").stat().st_size > 0 and (tmp_path / "jacobian_directions.png").is_file()


def test_correlations_guard_constant_and_tiny_inputs(jac):
    runs = [_run(0, b, "baseline", 0.2) for b in range(5)]  # constant norm: no ranks
    assert jac.correlations(runs, "jacobian_test_mean", "gap_acc")["spearman"] is None
    assert jac.correlations(runs[:2], "jacobian_test_mean", "gap_acc")["n"] == 2


def test_matched_accuracy_uses_the_baselines_history(jac):
    history = [{"epoch": e, "jacobian_test_mean": 0.1 * e, "train_acc": a}
               for e, a in ((1, 0.6), (2, 0.9), (3, 0.97), (4, 0.995))]  # fmt: skip
    assert jac._matched_baseline_norm({"history": history}, 0.95) == (pytest.approx(0.3), 3)
    assert jac._matched_baseline_norm({"history": history}, 0.999) == (pytest.approx(0.4), 4)  # never reached: last
    assert jac._matched_baseline_norm({"history": []}, 0.95) == (None, None)


def test_correlation_intervals_stay_within_minus_one_and_one(common):
    # the Fashion-MNIST per-seed values whose Student-t interval ran to 1.86
    out = common.correlation_ci([-0.19, 0.83, 0.75])
    assert -1 <= out["low"] <= out["mean"] <= out["high"] <= 1
    assert out["raw_mean"] == pytest.approx(np.mean([-0.19, 0.83, 0.75]))
    same = common.correlation_ci([1.0, 1.0, 1.0])
    assert same["low"] <= 1 and same["high"] <= 1 and same["mean"] == pytest.approx(1.0, abs=1e-5)
    low, high = common.fisher_ci(0.95, 12)
    assert -1 < low < 0.95 < high < 1
    assert common.fisher_ci(0.5, 3) == (None, None)


def test_t_band_matches_mean_ci(common):
    rows = [[1.0, 2.0, np.nan], [2.0, 4.0, 1.0], [3.0, 9.0, np.nan]]
    mean, low, high = common.t_band(rows)
    for j in range(2):
        ref = common.mean_ci([r[j] for r in rows])
        assert (mean[j], low[j], high[j]) == pytest.approx((ref["mean"], ref["low"], ref["high"]))
    assert mean[2] == 1.0 and math.isnan(low[2])  # one value: no interval


def test_stiffness_counts_no_crossing_and_never_extrapolates():
    import torch

    from lightning_sensitivity.functional import critical_length

    st = _module("stiffness")
    centers = torch.linspace(0.05, 1.95, 20)
    # stiffness stays positive, falling slowly: the line's zero lies beyond the measured distances
    assert math.isnan(critical_length(centers, 0.9 - 0.1 * centers, method="linear_fit"))
    assert math.isnan(critical_length(centers, 0.9 - 0.1 * centers, method="first_crossing"))
    # already negative everywhere: the line's zero would be negative
    assert math.isnan(critical_length(centers, -0.2 - 0.1 * centers, method="linear_fit"))

    def series(lengths):
        scal = {n: [0.5] * 3 for n in st.SCALARS}
        group = {**scal, "critical_length_first_crossing": lengths, "critical_length_linear_fit": [None, None, None]}
        return {"epoch": [0, 2, 4], "val_loss": [1.0, 0.9, 0.95], "val_acc": [0.5, 0.6, 0.6], "onset_epoch": 2,
                "train_train": group, "train_val": group}  # fmt: skip

    by_lr = {0.001: [series([0.5, 0.6, None]), series([0.5, 0.4, 0.7])],
             0.01: [series([0.5, None, None]), series([0.5, 0.9, 1.1])]}  # fmt: skip
    out = st.analyse(by_lr, [0, 1])
    assert out["no_crossing_per_lr"]["train_train/first_crossing"] == [1, 2]
    assert out["no_crossing_per_lr"]["train_train/linear_fit"] == [4, 4]
    assert out["measurements_per_lr"] == [4, 4]
    rho = out["trends"]["train_train/critical_length_first_crossing/final"]["spearman"]
    assert rho["mean"] is None or -1 <= rho["mean"] <= 1


def test_readme_findings_paragraph_is_the_generated_one():
    """The README's findings paragraph is the one ``make_findings.py`` wrote into ``docs/findings.md`` from its claims
    table, and every verdict it states is the table's for that claim and dataset: it cannot say what a dataset
    contradicts."""
    mf = _module("make_findings")
    readme = (REPO / "README.md").read_text()
    findings = (REPO / "docs" / "findings.md").read_text()
    block = mf.summary_block(readme)
    assert block == mf.summary_block(findings)
    labels, table = mf.parse_claims_table(findings)
    assert labels and table
    stated = 0
    for key, words in mf.SUMMARY_CLAIMS:
        if key not in table:
            continue
        start = block.index(words[0].upper() + words[1:] + ":")
        end = block.find(". ", start)
        sentence = block[start : end if end > 0 else None]
        for label, (value, verdict) in table[key].items():
            assert f"{verdict} on {label} ({value})" in sentence, (key, label)
            stated += 1
    assert stated >= len(labels)
    # statements of earlier versions that a dataset contradicted
    for phrase in ("grows with the learning rate", "is that elsewhere", "higher learning rates give higher stiffness"):
        assert phrase not in readme


def test_claims_table_round_trip():
    mf = _module("make_findings")
    text = "\n".join([
        "| id | claim | paper | MNIST | Fashion-MNIST |", "|---|---|---|---|---|",
        "| `a` | claim a | positive | 0.5 [0.1, 0.9] **holds** (3/3 pairs agree) | 0.1 [-0.2, 0.4] **mixed** |",
        "| `b` | claim b | below 1 | n/a | 1.2 [1.1, 1.3] **does not hold** |", "",
    ])  # fmt: skip
    labels, table = mf.parse_claims_table(text)
    assert labels == ["MNIST", "Fashion-MNIST"]
    assert table == {"a": {"MNIST": ("0.5 [0.1, 0.9]", "holds"), "Fashion-MNIST": ("0.1 [-0.2, 0.4]", "mixed")},
                     "b": {"Fashion-MNIST": ("1.2 [1.1, 1.3]", "does not hold")}}  # fmt: skip
    rows = {"mnist": [{"key": "jacobian_gap", "value": "0.5 [0.1, 0.9]", "verdict": "holds"}],
            "fashion_mnist": [{"key": "jacobian_gap", "value": "0.1 [-0.2, 0.4]", "verdict": "mixed"}]}  # fmt: skip
    text = mf.summary_text(rows, {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}, "5 seeds", False)
    assert "holds on MNIST (0.5 [0.1, 0.9]); mixed on Fashion-MNIST (0.1 [-0.2, 0.4])" in text


def test_merge_takes_each_seed_once_and_requires_one_config(common, tmp_path):
    import argparse
    import json

    def write(folder, seeds, partial=False, lr=0.05):
        folder.mkdir()
        data = {"experiment": "jacobian_vs_generalization", "command": f"python x --seed {seeds[0]}",
                "wall_time_s": 10.0 * len(seeds), "partial": partial, "config": {"num_seeds": len(seeds), "lr": lr},
                "results": {"seeds": seeds, "runs": [{"seed": s, "run": f"seed{s}"} for s in seeds]}}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(data))
        return folder

    a, b = write(tmp_path / "a", [0, 1]), write(tmp_path / "b", [1, 2], partial=True)
    args = argparse.Namespace(merge_from=[a, b], out=tmp_path / "merged")
    common.merge_results(args)
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["results"]["seeds"] == [0, 1, 2] and [r["seed"] for r in merged["results"]["runs"]] == [0, 1, 2]
    assert merged["config"]["num_seeds"] == 3 and merged["wall_time_s"] == 20.0
    assert merged["partial_runs"] == [str(b)] and [s["seeds"] for s in merged["merged_from"]] == [[0, 1], [2]]
    other = write(tmp_path / "c", [3], lr=0.1)
    with pytest.raises(SystemExit, match="another config"):
        common.merge_results(argparse.Namespace(merge_from=[a, other], out=tmp_path / "m2"))
