"""TransitionMonitor: logged tags, counts against a point-by-point oracle, models without ReLU units."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from callbacks._tiny import fitted  # noqa: F401 (`fitted` is a fixture)
from oracles import transitions_loop

from lightning_sensitivity import TransitionMonitor
from lightning_sensitivity.callbacks import SensitivityWarning
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.logging import load_artifacts
from lightning_sensitivity.probes import probe_set_from_tensors

P = "sensitivity/transitions/val"
STEPS = [0, 3, 7]  # initialisation, then the step Lightning logs each of the 2 epochs' end metrics at (4 batches each)


def ellipse(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, num_points: int) -> torch.Tensor:
    """Independent construction: the ellipse c + u cos t + v sin t through p0 (t=0), p1 (2pi/3), p2 (4pi/3)."""
    c = (p0 + p1 + p2) / 3
    u, v = p0 - c, (p1 - p2) / math.sqrt(3)
    return torch.stack(
        [
            c + u * math.cos(2 * math.pi * k / num_points) + v * math.sin(2 * math.pi * k / num_points)
            for k in range(num_points)
        ]
    )


def test_tensorboard_tags_and_steps(fitted):  # noqa: F811
    for key in ("activation_mean", "region_changes_mean", "prediction_mean"):
        events = fitted.events.Scalars(f"{P}/{key}")
        assert [e.step for e in events] == STEPS
        assert all(math.isfinite(e.value) and e.value >= 0 for e in events)
    assert [e.step for e in fitted.events.Histograms(f"{P}/activation")] == STEPS[1:]  # not at init
    region = [e.value for e in fitted.events.Scalars(f"{P}/region_changes_mean")]
    assert all(0 < r <= 24 for r in region)  # at most one region change per consecutive pair (24 points)


def test_counts_match_oracle_on_final_weights(fitted):  # noqa: F811
    monitor = fitted.monitor(TransitionMonitor)
    (*_, last) = load_artifacts(fitted.log_dir, "transitions")
    assert last.epoch == 2 and last.meta["num_points"] == 24 and last.meta["num_units"] > 0
    probe = monitor.probe_sets["val"]
    anchors = last.arrays["anchor_indices"]
    assert anchors.shape == (4, 3) and all(len(set(row)) == 3 for row in anchors.tolist())
    np.testing.assert_array_equal(anchors, monitor.anchor_indices(len(probe)).numpy())  # reproducible from the seed
    trajectories = torch.stack([ellipse(*probe.inputs[row], 24) for row in torch.as_tensor(anchors)])
    expected = transitions_loop(fitted.module.net, trajectories)
    for key in ("activation", "region_changes", "prediction"):
        assert last.arrays[key].tolist() == expected[key], key
    final = fitted.events.Scalars(f"{P}/activation_mean")[-1].value
    assert final == pytest.approx(np.mean(expected["activation"]))


def test_model_without_relu_logs_predictions_only():
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    x, y = torch.randn(30, 3), torch.arange(30) % 4
    monitor = TransitionMonitor(num_trajectories=3, num_points=12)
    probes = {"val": probe_set_from_tensors(x, y, 30, seed=0)}
    with pytest.warns(SensitivityWarning, match="no recognised ReLU"):
        result = monitor.compute(net, probes, progress_factory("t", False), 0)
    assert set(result.scalars) == {f"{P}/prediction_mean"}
    assert "activation" not in result.arrays and result.arrays["prediction"].shape == (3,)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        monitor.compute(net, probes, progress_factory("t", False), 1)
    assert not [w for w in again if issubclass(w.category, SensitivityWarning)]  # warned once per monitor


def test_anchor_indices_depend_on_seed_and_need_three_points():
    a = TransitionMonitor(num_trajectories=5, seed=1).anchor_indices(10)
    b = TransitionMonitor(num_trajectories=5, seed=2).anchor_indices(10)
    assert a.shape == (5, 3) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="at least 3"):
        TransitionMonitor().anchor_indices(2)


def test_train_split_counts_match_oracle():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    ).double()
    g = torch.Generator().manual_seed(3)
    xv, xt = (
        torch.randn(30, 12, generator=g, dtype=torch.float64),
        torch.randn(30, 12, generator=g, dtype=torch.float64),
    )
    y = torch.arange(30) % 4
    monitor = TransitionMonitor(num_trajectories=3, num_points=12, splits=("val", "train"))
    probes = {"val": probe_set_from_tensors(xv, y, 30, seed=0), "train": probe_set_from_tensors(xt, y, 30, seed=0)}
    result = monitor.compute(net, probes, progress_factory("t", False), 0)
    for split, prefix in (("val", ""), ("train", "train_")):
        probe = probes[split]
        anchors = result.arrays[f"{prefix}anchor_indices"]
        trajectories = torch.stack([ellipse(*probe.inputs[row], 12) for row in torch.as_tensor(anchors)])
        expected = transitions_loop(net, trajectories)
        for key in ("activation", "region_changes", "prediction"):
            assert result.arrays[f"{prefix}{key}"].tolist() == expected[key], (split, key)
        assert result.scalars[f"sensitivity/transitions/{split}/activation_mean"] == pytest.approx(
            np.mean(expected["activation"])
        )
    assert sum(result.arrays["train_activation"].tolist()) > 0


@pytest.mark.parametrize(
    "splits, error",
    [(("train",), ValueError), (("val", "test"), ValueError), (("random",), ValueError), ("val", TypeError),
     ((), TypeError)],
)  # fmt: skip
def test_bad_splits(splits, error):
    with pytest.raises(error, match="`splits`"):
        TransitionMonitor(splits=splits)


def _wide_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    ).double()


def test_random_split_and_per_segment_counts_match_oracle():
    from oracles import near_anchor_ratio_loop

    from lightning_sensitivity.functional import shuffled_anchors

    net = _wide_net()
    g = torch.Generator().manual_seed(4)
    xv = torch.rand(30, 12, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 4
    monitor = TransitionMonitor(num_trajectories=3, num_points=24, splits=("random", "val"), seed=7)
    assert monitor.splits == ("val", "random") and monitor.probe_splits()[0] == frozenset({"val"})
    probes = {"val": probe_set_from_tensors(xv, y, 30, seed=0)}
    result = monitor.compute(net, probes, progress_factory("t", False), 0)
    inputs = probes["val"].inputs
    # the random anchors are the validation triples with each example's features shuffled
    shuffled = shuffled_anchors(inputs, seed=7 + 1)
    assert torch.equal(shuffled.sort(dim=1).values, inputs.sort(dim=1).values) and not torch.equal(shuffled, inputs)
    np.testing.assert_array_equal(result.arrays["random_anchor_indices"], result.arrays["anchor_indices"])
    for split, source, prefix in (("val", inputs, ""), ("random", shuffled, "random_")):
        anchors = torch.as_tensor(result.arrays[f"{prefix}anchor_indices"])
        trajectories = torch.stack([ellipse(*source[row], 24) for row in anchors])
        expected = transitions_loop(net, trajectories)
        assert result.arrays[f"{prefix}segments"].tolist() == expected["segments"], split
        for key in ("activation", "region_changes", "prediction"):
            assert result.arrays[f"{prefix}{key}"].tolist() == expected[key], (split, key)
        ratio = result.scalars[f"sensitivity/transitions/{split}/near_anchor_ratio"]
        assert ratio == pytest.approx(near_anchor_ratio_loop(expected["segments"], 1 / 24), rel=1e-12)
    assert result.arrays["random_segments"].sum() > 0


def test_saturation_warns_once_and_only_when_saturated():
    net = _wide_net()
    g = torch.Generator().manual_seed(5)
    x = 5 * torch.randn(30, 12, generator=g, dtype=torch.float64)
    probes = {"val": probe_set_from_tensors(x, torch.arange(30) % 4, 30, seed=0)}
    coarse = TransitionMonitor(num_trajectories=4, num_points=3)
    with pytest.warns(SensitivityWarning, match="saturated"):
        result = coarse.compute(net, probes, progress_factory("t", False), 0)
    assert result.arrays["region_changes"].double().mean() >= 0.95 * 3  # the warning was right
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        coarse.compute(net, probes, progress_factory("t", False), 1)
    assert not [w for w in again if "saturated" in str(w.message)]  # once per monitor
    fine = TransitionMonitor(num_trajectories=4, num_points=960)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fine.compute(net, probes, progress_factory("t", False), 0)
    assert result.arrays["region_changes"].double().mean() < 0.95 * 960
    assert not [w for w in caught if "saturated" in str(w.message)]


def test_default_points_resolve_an_mnist_sized_mlp_that_128_points_saturate():
    # An MNIST-size MLP (784-256-256-10), ellipses through sparse binary 28x28 "images": 128 points saturate
    # there (about 99.6 % of the segments change region), the default 960 does not (about 52 %).
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(40, 1, 28, 28, generator=g) > 0.8).float()
    probes = {"val": probe_set_from_tensors(x, torch.arange(40) % 10, 40, seed=0)}
    assert TransitionMonitor().num_points == 960
    with pytest.warns(SensitivityWarning, match="saturated"):
        TransitionMonitor(num_trajectories=2, num_points=128).compute(net, probes, progress_factory("t", False), 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = TransitionMonitor(num_trajectories=2).compute(net, probes, progress_factory("t", False), 0)
    assert not [w for w in caught if "saturated" in str(w.message)]
    assert result.arrays["region_changes"].double().mean() < 0.95 * 960


@pytest.mark.parametrize("value, error", [(0.5, ValueError), (0, ValueError), ("1/24", TypeError)])
def test_bad_near_anchor_fraction(value, error):
    with pytest.raises(error, match="`near_anchor_fraction`"):
        TransitionMonitor(near_anchor_fraction=value)


def test_saturation_is_said_beside_the_charts(fitted):  # noqa: F811
    # 24 points on the tiny model: every segment changes region. The fraction of segments reads 1 (not "24" with no
    # scale), and the note is in the text tab next to the charts, at the measurement's step, and in the artifact.
    counts = {e.step: e.value for e in fitted.events.Scalars(f"{P}/region_changes_mean")}
    fractions = {e.step: e.value for e in fitted.events.Scalars(f"{P}/region_changes_fraction")}
    assert fractions.keys() == counts.keys()
    for step, value in fractions.items():
        assert value == pytest.approx(counts[step] / 24) and 0 <= value <= 1
    notes = [t for t in fitted.events.Tags()["tensors"] if t.startswith("sensitivity/notes/TransitionMonitor")]
    assert notes, fitted.events.Tags()["tensors"]
    text = fitted.events.Tensors(notes[0])[-1].tensor_proto.string_val[0].decode()
    assert "Saturated" in text and "num_points" in text and "'val'" in text
    last = load_artifacts(fitted.log_dir, "transitions")[-1]
    assert any("Saturated" in note for note in last.meta["notes"])


def test_default_num_trajectories_is_sized_to_the_models_units():
    from lightning_sensitivity.callbacks.transitions import sized_trajectories
    from lightning_sensitivity.models import MLP, SmallCNN

    assert sized_trajectories(960, 512) == 16 and sized_trajectories(960, 0) == 16
    assert sized_trajectories(960, 32 * 32 * 32 + 64 * 16 * 16 + 128) == 5  # the CIFAR SmallCNN, counted by hand
    assert sized_trajectories(960, 10**6) == 4 and sized_trajectories(3, 1) == 16
    cnn = SmallCNN(3, 10, input_size=32).eval()
    x, y = torch.randn(12, 3, 32, 32), torch.arange(12) % 10
    monitor = TransitionMonitor(num_points=3, num_samples=12)
    probe = probe_set_from_tensors(x, y, 12, seed=0)
    assert monitor.trajectories_for(cnn, probe) == sized_trajectories(3, 49280) == 16
    monitor = TransitionMonitor(num_samples=12)
    assert monitor.trajectories_for(cnn, probe) == 5
    assert monitor.anchor_indices(12).shape == (5, 3)  # kept for the run
    mlp_probe = probe_set_from_tensors(torch.randn(6, 784), y[:6], 6, seed=0)
    assert TransitionMonitor().trajectories_for(MLP(784, 10), mlp_probe) == 16
    assert TransitionMonitor(num_trajectories=2).trajectories_for(cnn, probe) == 2


def test_sized_trajectories_are_measured_and_match_the_oracle(monkeypatch):
    from lightning_sensitivity.callbacks import transitions

    monkeypatch.setattr(transitions, "UNIT_BUDGET", 12 * 16 * 6)  # 16 units, 12 points: 6 trajectories
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.arange(30) % 3
    monitor = TransitionMonitor(num_points=12, num_samples=30)
    probe = probe_set_from_tensors(x, y, 30, seed=0)
    result = monitor.compute(net, {"val": probe}, progress_factory("t", False), 0)
    assert result.meta["num_trajectories"] == 6 and result.arrays["activation"].shape == (6,)
    trajectories = torch.stack([ellipse(*probe.inputs[row], 12) for row in result.arrays["anchor_indices"]])
    assert result.arrays["activation"].tolist() == transitions_loop(net, trajectories)["activation"]


def test_num_trajectories_is_checked():
    with pytest.raises(ValueError, match="num_trajectories"):
        TransitionMonitor(num_trajectories=0)
    with pytest.raises(TypeError, match="num_trajectories"):
        TransitionMonitor(num_trajectories=2.0)
