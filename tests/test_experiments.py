"""The experiment scripts run end to end on real MNIST in ``--quick`` mode and write their results and figures.

Skipped when the MNIST files are not at ``<repo>/../shared/data/MNIST/raw`` (the tests never download data). All
four experiments run in one subprocess (``experiments/run_all.py --quick``) so Lightning is imported once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXPERIMENTS = {
    "jacobian_vs_generalization": ("jacobian_vs_gap.png", "jacobian_directions.png"),
    "per_point_prediction": ("per_point_auroc.png",),
    "transitions": ("transitions.png", "transitions_density.png"),
    "stiffness": ("stiffness_class_matrices.png", "stiffness_over_training.png", "stiffness_by_distance.png"),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.data,
    pytest.mark.skipif(
        not (DATA / "MNIST" / "raw").is_dir(), reason=f"real MNIST not found at {DATA / 'MNIST' / 'raw'}"
    ),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("experiments")
    cmd = [sys.executable, str(REPO / "experiments" / "run_all.py"), "--quick", "--data-dir", str(DATA),
           "--out-root", str(root / "output"), "--findings", str(root / "docs" / "findings.md")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"run_all failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return root


def _results(root: Path, name: str) -> dict:
    with open(root / "output" / name / "results.json") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_results_and_figures(quick_run: Path, name: str) -> None:
    data = _results(quick_run, name)
    assert data["experiment"] == name and data["quick"] is True and data["dataset"] == "mnist"
    assert data["command"].startswith(f"python experiments/{name}.py") and "--quick" in data["command"]
    assert data["wall_time_s"] > 0
    for png in EXPERIMENTS[name]:
        path = quick_run / "output" / name / png
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size < 150_000


def test_jacobian_sweep_reads_the_callback_artifacts(quick_run: Path) -> None:
    results = _results(quick_run, "jacobian_vs_generalization")["results"]
    runs = results["runs"]
    assert {r["variant"] for r in runs} == {"baseline", "random_labels", "full_batch", "augment"}
    for run in runs:
        assert run["jacobian_test_mean"] > 0 and run["jacobian_train_mean"] > 0
        # the final measurement is the one on the final weights (after the last completed epoch)
        assert run["measured_epoch"] == run["epochs"]
        assert run["gap_acc"] == pytest.approx(run["train_acc"] - run["test_acc"])
        # the norm file of that epoch exists where the monitor writes (the TensorBoard log dir), from the fit or
        # from the final `trainer.test`
        npz = quick_run / "output" / "jacobian_vs_generalization" / "logs" / run["run"] / "version_0" / "sensitivity"
        name = f"epoch_{run['epochs']:04d}.npz"
        assert (npz / "jacobian_norm" / name).is_file() or (npz / "jacobian_norm.test" / name).is_file()
    assert results["correlation"]["jacobian_vs_gap_acc"]["n"] == len(runs)


def test_per_point_auroc_matches_callback(quick_run: Path) -> None:
    results = _results(quick_run, "per_point_prediction")["results"]
    assert len(results["seeds"]) >= 2 and len(results["runs"]) == len(results["seeds"])
    for run in results["runs"]:
        final = run["final"]
        # scikit-learn on the saved arrays / the final model and the callback's logged values agree
        for mine, logged in (("norm_auroc", "misclassification_auroc"), ("confidence_auroc", "confidence_auroc"),
                             ("entropy_auroc", "entropy_auroc")):  # fmt: skip
            if final[mine] is not None:
                assert 0.0 <= final[mine] <= 1.0
                assert final[mine] == pytest.approx(final["callback"][logged], abs=1e-6)
        assert final["cross_validated"]["folds"] >= 2
    assert results["summary"]["norm_auroc"]["n"] == len(results["seeds"])


def test_transitions_compare_three_anchor_kinds_per_segment(quick_run: Path) -> None:
    results = _results(quick_run, "transitions")["results"]
    assert len(results["runs"]) == len(results["seeds"]) >= 2
    for run in results["runs"]:
        assert run["epoch"] == [0, 1]
        for split in ("val", "train", "random"):
            assert all(v >= 0 for v in run[split]["activation_mean"])
            assert len(run[split]["profile"]) == 2 and len(run[split]["profile"][0]) == results["density_bins"]
            assert all(r is None or r > 0 for r in run[split]["near_anchor_ratio"])
    for when in ("init", "final"):
        assert results["summary"][when]["random_over_val"]["activation"]["n"] == len(results["seeds"])


def test_stiffness_series_per_learning_rate_and_seed(quick_run: Path) -> None:
    results = _results(quick_run, "stiffness")["results"]
    assert set(results["by_lr"]) == {"0.0003", "0.001", "0.003"}
    for runs in results["by_lr"].values():
        assert len(runs) == len(results["seeds"])
        for series in runs:
            assert series["epoch"] == [0, 1, 2] and len(series["val_loss"]) == 2
            for group in ("train_train", "train_val"):
                signs = [v for v in series[group]["sign_mean"] if v is not None]
                assert signs and all(-1.0 <= v <= 1.0 for v in signs)
    stability = results["stability"]
    methods = {"first_crossing/all", "linear_fit/all", "first_crossing/same_class", "linear_fit/same_class"}
    assert methods <= set(stability)
    assert all(len(v["values"]) == 3 for v in stability.values())


def test_findings_document_is_generated(quick_run: Path) -> None:
    text = (quick_run / "docs" / "findings.md").read_text()
    assert "--quick" in text  # the smoke-test warning
    for heading in ("## 1.", "## 2.", "## 3.", "## 4."):
        assert heading in text
    assert "## Claims by dataset" in text and "| id | claim | paper | MNIST |" in text
    figures = quick_run / "docs" / "figures" / "mnist"
    for pngs in EXPERIMENTS.values():
        for png in pngs:
            assert (figures / png).is_file() and f"figures/mnist/{png}" in text


def test_replot_recomputes_from_results(quick_run: Path, tmp_path: Path) -> None:
    """``--replot`` rewrites the statistics and figures of a finished run without training (in one subprocess)."""
    import shutil

    out = tmp_path / "stiffness"
    shutil.copytree(quick_run / "output" / "stiffness", out)
    (out / "stiffness_over_training.png").unlink()
    before = _results(quick_run, "stiffness")
    cmd = [sys.executable, str(REPO / "experiments" / "stiffness.py"), "--quick", "--replot", "--data-dir", str(DATA),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((out / "results.json").read_text())
    assert (out / "stiffness_over_training.png").read_bytes()[:8] == PNG_MAGIC
    assert after["wall_time_s"] == before["wall_time_s"] and "replotted" in after
    assert after["results"]["trends"] == before["results"]["trends"]
