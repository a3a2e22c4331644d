"""The influence and measure-ranking experiment scripts, ``--quick`` on real MNIST (skipped without the files)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.data,
    pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(), reason="no MNIST"),
]


def _run(script: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "experiments" / script), "--quick", "--data-dir", str(SHARED_DATA),
                    "--out", str(out)], check=True, env=env, timeout=300, capture_output=True)  # fmt: skip
    return json.loads((out / "results.json").read_text())


def test_influence_script_reads_the_monitor_aurocs(tmp_path):
    results = _run("influence_flipped_labels.py", tmp_path)
    for run in results["runs"]:
        assert run["epoch"] == [1, 2] and run["num_flipped"] == 6
        assert all(0 <= a <= 1 for a in run["self_influence_auroc"] + run["loss_auroc"])
    assert (tmp_path / "influence_examples.png").read_bytes()[:4] == b"\x89PNG"
    assert "## 5." in (tmp_path / "section.md").read_text()


def test_ranking_script_ranks_every_measure(tmp_path):
    results = _run("measure_ranking.py", tmp_path)
    assert len(results["rows"]) == 4
    measures = {r["measure"] for r in results["ranking"]}
    assert "sensitivity/sharpness/train/top_eigenvalue" in measures and len(measures) == 7
    assert all(math.isfinite(r["sensitivity/sharpness/train/top_eigenvalue"]) for r in results["rows"])
