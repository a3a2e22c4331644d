"""The experiment scripts run unchanged on Fashion-MNIST and CIFAR-10 given their files.

Tiny synthetic files in torchvision's layout (``tests/models/_synthetic.py``), ``run_all.py --quick --dataset NAME``
end to end. The dataset names are spelled the same in ``examples/quickstart.py --dataset`` and
``experiments/* --dataset``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_module
from models._synthetic import write_cifar10, write_mnist

REPO = Path(__file__).resolve().parents[1]


def test_one_spelling_of_dataset_names():
    common = load_module(REPO / "experiments" / "_common.py")
    quickstart = load_module(REPO / "examples" / "quickstart.py")
    assert set(common.DATASETS) <= set(quickstart.DATASETS)  # the examples also have the offline "digits"
    assert set(quickstart.DATASETS) - set(common.DATASETS) == {"digits"}
    assert "fashion_mnist" in common.DATASETS


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_experiments_run_on_other_datasets(tmp_path: Path, dataset: str) -> None:
    data = tmp_path / "data"
    if dataset == "fashion_mnist":
        write_mnist(data, "FashionMNIST", n_train=450, n_test=250)
    else:
        write_cifar10(data, per_batch=90, n_test=250)
    cmd = [sys.executable, str(REPO / "experiments" / "run_all.py"), "--quick", "--dataset", dataset, "--data-dir",
           str(data), "--out-root", str(tmp_path / "output"), "--findings", str(tmp_path / "findings.md")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, f"run_all failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for name in ("jacobian_vs_generalization", "per_point_prediction", "transitions", "stiffness"):
        results = json.loads((tmp_path / "output" / name / "results.json").read_text())
        assert results["dataset"] == dataset and results["quick"] is True
    text = (tmp_path / "findings.md").read_text()
    assert "## 4." in text
    # the findings say what each results file records, not MNIST's names
    label, module, augmentation = {"fashion_mnist": ("Fashion-MNIST", "FashionMNISTDataModule", "random shifts"),
                                   "cifar10": ("CIFAR-10", "CIFAR10DataModule", "random crops")}[dataset]  # fmt: skip
    assert f"— {label}" in text and f"`{module}`" in text and f"augmentation = {augmentation}" in text
    assert not re.search(r"(?<!Fashion-)MNIST (training )?examples", text) and "`MNISTDataModule`" not in text
    assert f"| id | claim | paper | {label} |" in text
