"""StiffnessMonitor: logged tags, artifact keys, values against per-example gradient loops, super-classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from callbacks._tiny import fitted  # noqa: F401 (`fitted` is a fixture)
from oracles import class_mean_loop, stiffness_loop

from lightning_sensitivity import StiffnessMonitor
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.logging import load_artifacts
from lightning_sensitivity.logging.artifacts import STIFFNESS_GROUP_KEYS
from lightning_sensitivity.probes import probe_set_from_tensors

GRAM_STATISTICS = ("coherence", "m_coherence", "gradient_diversity", "fisher_trace", "label_alignment",
                   "norm_test", "inner_product_test", "orthogonality_test")  # fmt: skip
P = "sensitivity/stiffness"
GROUPS = ("train_train", "train_val", "val_val")
STEPS = [0, 3, 7]  # initialisation, then the step Lightning logs each of the 2 epochs' end metrics at (4 batches each)


def test_tensorboard_tags_and_steps(fitted):  # noqa: F811
    tags = fitted.events.Tags()
    for g in GROUPS:
        for key in (
            "sign",
            "cosine",
            "same_class_sign",
            "different_class_sign",
            "same_class_cosine",
            "different_class_cosine",
        ):
            events = fitted.events.Scalars(f"{P}/{g}/{key}")
            assert [e.step for e in events] == STEPS, (g, key)
            assert all(-1.0 <= e.value <= 1.0 for e in events), (g, key)
        for image in ("class_sign_matrix", "class_cosine_matrix", "by_distance"):
            assert [e.step for e in fitted.events.Images(f"{P}/{g}/{image}")] == STEPS
        assert not any("superclass" in t for t in tags["images"])  # no class_groups given


def test_final_values_match_gradient_loops(fitted):  # noqa: F811
    monitor = fitted.monitor(StiffnessMonitor)
    (*_, last) = load_artifacts(fitted.log_dir, "stiffness")
    assert last.epoch == 2 and last.meta["groups"] == list(GROUPS)
    train, val = monitor.probe_sets["train"], monitor.probe_sets["val"]
    net = fitted.module.net
    sets = {"train": (train.inputs, train.targets), "val": (val.inputs, val.targets)}
    for g in GROUPS:
        rows, cols = g.split("_")
        (xr, yr), (xc, yc) = sets[rows], sets[cols]
        self_pairs = rows == cols
        ref = stiffness_loop(net, xr, yr, None if self_pairs else xc, None if self_pairs else yc)
        arrays = {k.split("/", 1)[1]: v for k, v in last.arrays.items() if k.startswith(f"{g}/")}
        statistics = set(GRAM_STATISTICS) if self_pairs else set()  # gradient statistics of same-set groups
        assert set(arrays) == set(STIFFNESS_GROUP_KEYS) - {"superclass_sign", "superclass_cosine"} | statistics
        assert float(arrays["sign_mean"]) == pytest.approx(ref["sign_mean"], abs=1e-6)
        assert float(arrays["cosine_mean"]) == pytest.approx(ref["cosine_mean"], abs=1e-4)
        pair = ~torch.eye(len(yr), dtype=torch.bool) if self_pairs else torch.ones(len(yr), len(yc), dtype=torch.bool)
        same = yr[:, None] == yc[None, :]
        for kind in ("sign", "cosine"):
            for which, mask in (("same_class", pair & same), ("different_class", pair & ~same)):
                expected = float(ref[kind][mask].mean())
                assert float(arrays[f"{which}_{kind}"]) == pytest.approx(expected, abs=1e-4), (g, which, kind)
            classes = class_mean_loop(ref[kind], yr, None if self_pairs else yc, num_classes=10)
            np.testing.assert_allclose(arrays[f"class_{kind}"], np.array(classes), atol=1e-4, equal_nan=True)
        assert arrays["bin_edges"].shape == (9,) and arrays["distance_count"].sum() == pair.sum()
        logged = fitted.events.Scalars(f"{P}/{g}/sign")[-1].value
        assert logged == pytest.approx(ref["sign_mean"], abs=1e-6)
        length = float(arrays["critical_length"])
        if math.isfinite(length):
            assert fitted.events.Scalars(f"{P}/{g}/critical_length")[-1].value == pytest.approx(length, rel=1e-6)


def test_superclasses_names_and_figure_titles(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x, y = torch.randn(24, 5), torch.arange(24) % 4
    monitor = StiffnessMonitor(
        groups=("val_val",),
        class_names=["a", "b", "c", "d"],
        class_groups={0: 0, 1: 0, 2: 1, 3: 1},
        group_names=["ab", "cd"],
        num_distance_bins=5,
    )
    from lightning_sensitivity.logging import render

    calls = []
    real = render.render_class_matrix
    monkeypatch.setattr(render, "render_class_matrix", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    result = monitor.compute(net, {"val": probe_set_from_tensors(x, y, 24, seed=0)}, progress_factory("t", False), 3)
    ref = stiffness_loop(net, x, y)
    coarse = torch.tensor([0, 0, 1, 1])[y]
    expected = class_mean_loop(ref["sign"], coarse, num_classes=2)
    np.testing.assert_allclose(result.arrays["val_val/superclass_sign"], np.array(expected), atol=1e-6)
    figures = dict(result.figures)
    assert set(figures) == {
        f"{P}/val_val/{name}"
        for name in (
            "class_sign_matrix",
            "class_cosine_matrix",
            "superclass_sign_matrix",
            "superclass_cosine_matrix",
            "by_distance",
        )
    }
    assert not calls  # built lazily: nothing rendered before a callable is called
    image = figures[f"{P}/val_val/superclass_sign_matrix"]()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    calls.clear()
    figures[f"{P}/val_val/superclass_sign_matrix"]()
    figures[f"{P}/val_val/class_cosine_matrix"]()
    (super_args, super_kwargs), (class_args, class_kwargs) = calls
    assert "epoch 3" in super_kwargs["title"] and "epoch 3" in class_kwargs["title"]
    assert list(super_args[1]) == ["ab", "cd"]
    assert list(class_args[1]) == ["a", "b", "c", "d"]
    assert result.meta["group_names"] == ["ab", "cd"]


def test_frozen_parameters_are_left_out():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net[0].requires_grad_(False)
    x, y = torch.randn(12, 5), torch.arange(12) % 3
    monitor = StiffnessMonitor(groups=("val_val",))
    result = monitor.compute(net, {"val": probe_set_from_tensors(x, y, 12, seed=0)}, progress_factory("t", False), 0)
    ref = stiffness_loop(net, x, y)  # the oracle differentiates trainable parameters only
    assert result.scalars[f"{P}/val_val/cosine"] == pytest.approx(ref["cosine_mean"], abs=1e-5)


def _same_class_length_loop(sign, x, y, x2, y2, bins, method):
    """Oracle: binned mean over same-class pairs (cosine distance, bins on [0, 2]) and its zero."""
    import math

    same = x2 is None
    cols, ycols = (x, y) if same else (x2, y2)
    sums, counts = [0.0] * bins, [0] * bins
    for i in range(len(x)):
        for j in range(len(cols)):
            if (same and i == j) or int(y[i]) != int(ycols[j]):
                continue
            a, b = x[i].double().flatten(), cols[j].double().flatten()
            d = min(max(1.0 - float(a @ b) / float(a.norm() * b.norm()), 0.0), 2.0)
            k = min(int(d / (2.0 / bins)), bins - 1)
            sums[k] += float(sign[i, j])
            counts[k] += 1
    centers = np.array([(k + 0.5) * 2.0 / bins for k in range(bins)])
    means = np.array([s / c if c else np.nan for s, c in zip(sums, counts, strict=True)])
    keep = np.isfinite(means)
    if method == "linear_fit":
        slope, intercept = np.polyfit(centers[keep], means[keep], 1, w=np.sqrt(np.array(counts, dtype=float)[keep]))
        zero = -intercept / slope if slope < 0 else math.nan
        return zero if centers[keep].min() <= zero <= centers[keep].max() else math.nan  # else no crossing
    last = None
    for c, v in zip(centers[keep], means[keep], strict=True):
        if v <= 0:
            return c if last is None else last[0] + (c - last[0]) * last[1] / (last[1] - v)
        last = (c, v)
    return math.nan


@pytest.mark.parametrize("method", ["linear_fit", "first_crossing"])
def test_same_class_critical_length_matches_gradient_loops(method):
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(2)
    # large inputs: the first layer's term (sign of x_i . x_j) makes some same-class pairs anti-stiff, so the
    # same-class curve crosses zero (with this draw, the fitted line too, inside the measured distances)
    x = 10 * torch.randn(24, 6, generator=g, dtype=torch.float64)
    xt = 10 * torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.arange(24) % 3
    monitor = StiffnessMonitor(groups=("train_val", "val_val"), num_distance_bins=6, critical_length_method=method,
                               critical_length_same_class=True, critical_length_bootstrap=8)  # fmt: skip
    probes = {"val": probe_set_from_tensors(x, y, 24, seed=0), "train": probe_set_from_tensors(xt, y, 24, seed=0)}
    result = monitor.compute(net, probes, progress_factory("t", False), 0)
    pv, pt = probes["val"], probes["train"]
    ref = stiffness_loop(net, pv.inputs, pv.targets)
    expected = _same_class_length_loop(ref["sign"], pv.inputs, pv.targets, None, None, 6, method)
    got = result.scalars.get(f"{P}/val_val/same_class_critical_length", math.nan)
    assert not math.isnan(expected) and got == pytest.approx(expected, rel=1e-6)
    cross = stiffness_loop(net, pt.inputs, pt.targets, pv.inputs, pv.targets)
    expected = _same_class_length_loop(cross["sign"], pt.inputs, pt.targets, pv.inputs, pv.targets, 6, method)
    got = result.scalars.get(f"{P}/train_val/same_class_critical_length", math.nan)
    assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected, rel=1e-6)
    assert result.arrays["val_val/same_class_critical_length"] == pytest.approx(
        result.scalars[f"{P}/val_val/same_class_critical_length"]
    )
    # the bootstrap interval of the same-set group, for all pairs and for same-class pairs
    assert {"critical_length_low", "same_class_critical_length_low", "same_class_critical_length_high"} <= {
        k.split("/")[-1] for k in result.arrays if k.startswith("val_val/")
    }
    off = StiffnessMonitor(groups=("val_val",), num_distance_bins=6)
    off = off.compute(net, probes, progress_factory("t", False), 0)
    assert not [k for k in off.scalars if "same_class_critical_length" in k]
    assert monitor.config()["critical_length_same_class"] is True


def test_bad_critical_length_same_class():
    with pytest.raises(TypeError, match="`critical_length_same_class`"):
        StiffnessMonitor(critical_length_same_class="yes")


class _Einsum(torch.nn.Module):
    """``w`` is used by an op the layerwise capture does not know."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 6)
        self.w = torch.nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        return torch.einsum("ni,ij->nj", torch.tanh(self.lin(x)), self.w)


def test_the_gram_engine_is_said_once_and_written_in_the_configuration():
    import warnings

    from lightning_sensitivity.callbacks import SensitivityWarning

    torch.manual_seed(0)
    x, y = torch.randn(10, 5), torch.arange(10) % 3
    probes = {"val": probe_set_from_tensors(x, y, 10, seed=0)}
    monitor = StiffnessMonitor(groups=("val_val",))
    net = _Einsum()
    said = r"layerwise, with explicit per-example gradients .*'w' \(used by .*einsum"
    with pytest.warns(SensitivityWarning, match=said):
        result = monitor.compute(net, probes, progress_factory("t", False), 0)
    ref = stiffness_loop(net, x, y)
    assert result.scalars[f"{P}/val_val/cosine"] == pytest.approx(ref["cosine_mean"], abs=1e-5)
    assert "'w'" in monitor.config()["gram_engine"] and "'lin.weight'" not in monitor.config()["gram_engine"]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        monitor.compute(net, probes, progress_factory("t", False), 1)
    assert not [w for w in again if issubclass(w.category, SensitivityWarning)]  # said once
    plain = StiffnessMonitor(groups=("val_val",))
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        plain.compute(torch.nn.Sequential(torch.nn.Linear(5, 3)), probes, progress_factory("t", False), 0)
    assert not [w for w in quiet if issubclass(w.category, SensitivityWarning)]  # the fast path needs no warning
    assert plain.config()["gram_engine"].startswith("Gram engine: layerwise (every trainable parameter")
