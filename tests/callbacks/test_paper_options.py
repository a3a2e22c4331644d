"""End to end through a Lightning fit: the monitors' options for the papers' comparisons.

The transition monitor's random anchors, per-segment artifacts and near-anchor ratio, and the stiffness monitor's
same-class critical length, as logged to TensorBoard and saved as artifacts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from callbacks._tiny import fit_reference
from helpers import read_events
from oracles import near_anchor_ratio_loop

from lightning_sensitivity import StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.keys import SCHEMA, STIFFNESS, TRANSITIONS, schema_keys
from lightning_sensitivity.logging import load_artifacts

pytestmark = pytest.mark.slow


def test_random_anchors_segments_and_same_class_length_in_a_fit(tmp_path: Path) -> None:
    splits = ("val", "train", "random")
    transitions = TransitionMonitor(num_samples=40, num_trajectories=3, num_points=96, splits=splits)
    stiffness = StiffnessMonitor(num_samples=40, groups=("train_val", "val_val"), num_distance_bins=6,
                                 critical_length_method="linear_fit", critical_length_same_class=True,
                                 critical_length_bootstrap=4)  # fmt: skip
    trainer, _, _ = fit_reference(tmp_path, [transitions, stiffness])
    log_dir = Path(trainer.logger.log_dir)
    events = read_events(log_dir)
    tags = set(events.Tags()["scalars"])
    for split in ("val", "train", "random"):
        for stat in ("activation_mean", "region_changes_mean", "prediction_mean", "near_anchor_ratio"):
            steps = [e.step for e in events.Scalars(f"sensitivity/transitions/{split}/{stat}")]
            assert steps == [0, 3, 7], (split, stat)  # at Lightning's epoch-end steps (4 batches an epoch)
    # every logged transition tag, and the new stiffness one, is documented in keys.SCHEMA
    logged = [t for t in tags if t.startswith("sensitivity/transitions/")]
    assert logged and "?" not in schema_keys(TRANSITIONS, logged), schema_keys(TRANSITIONS, logged).get("?")
    assert "?" not in schema_keys(STIFFNESS, ["sensitivity/stiffness/val_val/same_class_critical_length"])
    assert any(t.endswith("near_anchor_ratio") for t in SCHEMA[TRANSITIONS])
    found = load_artifacts(log_dir, "transitions")
    assert [a.epoch for a in found] == [0, 1, 2]
    last = found[-1]
    for prefix, split in (("", "val"), ("train_", "train"), ("random_", "random")):
        segments = last.arrays[f"{prefix}segments"]
        assert segments.shape == (3, 96)
        np.testing.assert_array_equal(segments.sum(axis=1), last.arrays[f"{prefix}activation"])
        np.testing.assert_array_equal((segments > 0).sum(axis=1), last.arrays[f"{prefix}region_changes"])
        logged = events.Scalars(f"sensitivity/transitions/{split}/near_anchor_ratio")[-1].value
        assert logged == pytest.approx(near_anchor_ratio_loop(segments.tolist(), 1 / 24), rel=1e-5)
    assert not np.array_equal(last.arrays["random_segments"], last.arrays["segments"])
    stiff = load_artifacts(log_dir, "stiffness")[-1]
    for group in ("train_val", "val_val"):
        value = float(stiff.arrays[f"{group}/same_class_critical_length"])
        if math.isfinite(value):
            tag = f"sensitivity/stiffness/{group}/same_class_critical_length"
            assert events.Scalars(tag)[-1].value == pytest.approx(value)
    assert "val_val/same_class_critical_length_low" in stiff.arrays
    assert torch.is_tensor(torch.as_tensor(stiff.arrays["val_val/critical_length"]))
