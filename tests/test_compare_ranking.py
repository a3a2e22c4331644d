"""``compare.rank_measures``: Kendall's tau of each measure against the gap, overall and granulated (Jiang et al.)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from lightning_sensitivity.compare.ranking import rank_measures


def sweep(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for lr, width, s in itertools.product((0.01, 0.03, 0.1), (64, 256), (0, 1)):
        gap = 10 * lr + 0.001 * width + 0.01 * rng.normal()
        rows.append({
            "run": f"lr{lr}_w{width}_s{s}", "hparams/lr": lr, "hparams/width": width, "hparams/seed": s,
            "generalization_gap/acc": gap,
            "sensitivity/a/val/mean": gap + 0.001 * rng.normal(),  # tracks the gap whatever changes
            "sensitivity/b/val/mean": lr,  # tracks it only through the learning rate
        })  # fmt: skip
    return rows


def test_overall_and_granulated_tau_against_scipy():
    rows = sweep()
    ranking = {r["measure"]: r for r in rank_measures(rows)}
    assert set(ranking) == {"sensitivity/a/val/mean", "sensitivity/b/val/mean"}
    for measure, r in ranking.items():
        x = [row[measure] for row in rows]
        y = [row["generalization_gap/acc"] for row in rows]
        assert r["overall"] == pytest.approx(kendalltau(x, y).statistic)
        assert r["n"] == len(rows)
        # seeds are not a design choice: groups fix the other hyperparameter and pool the seeds
        assert set(r["granulated"]) == {"hparams/lr", "hparams/width"}
        for h, other in (("hparams/lr", "hparams/width"), ("hparams/width", "hparams/lr")):
            taus = []
            for value in sorted({row[other] for row in rows}):
                group = [row for row in rows if row[other] == value]
                taus.append(kendalltau([g[measure] for g in group], [g["generalization_gap/acc"] for g in group])
                            .statistic)  # fmt: skip
            taus = [t for t in taus if not math.isnan(t)]
            expected = float(np.mean(taus)) if taus else math.nan
            assert r["granulated"][h] == pytest.approx(expected, nan_ok=True), (measure, h)
        finite = [v for v in r["granulated"].values() if not math.isnan(v)]
        assert r["psi"] == pytest.approx(float(np.mean(finite)))
    # b is constant within a learning rate: no tau over width changes, so only psi_lr counts
    assert math.isnan(ranking["sensitivity/b/val/mean"]["granulated"]["hparams/width"])
    assert ranking["sensitivity/b/val/mean"]["groups"]["hparams/width"] == 0
    assert rank_measures(rows)[0]["measure"] == "sensitivity/a/val/mean"


def test_explicit_measures_and_hyperparameters_and_missing_values():
    rows = sweep()
    rows[0]["sensitivity/a/val/mean"] = float("nan")
    del rows[1]["generalization_gap/acc"]
    (r,) = rank_measures(rows, measures=["sensitivity/a/val/mean"], hyperparameters=["hparams/lr"])
    assert r["n"] == len(rows) - 2 and set(r["granulated"]) == {"hparams/lr"}
    # with the width not among the hyperparameters, the lr groups pool every width
    x = [row["sensitivity/a/val/mean"] for row in rows[2:]]
    y = [row["generalization_gap/acc"] for row in rows[2:]]
    assert r["overall"] == pytest.approx(kendalltau(x, y).statistic)
    assert r["groups"]["hparams/lr"] == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("runs",), {}, "`rows`"),
        (([1, 2],), {}, "`rows`"),
        (([{}], 3), {}, "`target`"),
        (([{}],), {"measures": "m"}, "`measures`"),
        (([{}],), {"hyperparameters": [1]}, "`hyperparameters`"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        rank_measures(*args, **kwargs)


def test_the_compare_page_shows_the_ranking(tmp_path):
    from test_compare import write_fake_run

    from lightning_sensitivity.compare import compare_runs, write_comparison

    root = tmp_path / "logs"
    for run, lr in enumerate([0.01, 0.03, 0.1, 0.3]):
        write_fake_run(root / f"lr_{lr}" / "version_0", run, epochs=2, lr=lr)
    page = write_comparison(root, num_bootstrap=0).read_text(encoding="utf-8")
    assert "Which measure tracks generalization" in page
    best = rank_measures(compare_runs(root), "generalization_gap/acc")[0]
    assert f"<td>{best['measure']}</td>" in page and f"{best['overall']:+.3f}" in page
