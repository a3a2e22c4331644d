"""JacobianNormMonitor: what reaches TensorBoard and the artifacts, checked against per-example autograd loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from callbacks._tiny import NUM_CLASSES, fitted  # noqa: F401 (`fitted` is a fixture)
from oracles import jacobian_norm_loop
from sklearn.metrics import roc_auc_score

from lightning_sensitivity import JacobianNormMonitor
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.logging import load_artifacts
from lightning_sensitivity.probes import probe_set_from_tensors

P = "sensitivity/jacobian_norm"
SCALARS = [f"{P}/{s}/{k}" for s in ("val", "train") for k in ("mean", "median", "p90")] + [
    f"{P}/train_val_ratio",
    f"{P}/val/misclassification_auroc",
    *(f"{P}/val/class_{c}" for c in range(NUM_CLASSES)),
]
STEPS = [0, 3, 7]  # initialisation, then the step Lightning logs each of the 2 epochs' end metrics at (4 batches each)


def test_tensorboard_tags_steps_and_values(fitted):  # noqa: F811
    tags = fitted.events.Tags()
    for tag in SCALARS:
        events = fitted.events.Scalars(tag)
        assert [e.step for e in events] == STEPS, tag
        assert all(math.isfinite(e.value) for e in events), tag
    for tag in (f"{P}/val", f"{P}/train"):
        assert tag in tags["histograms"]
        assert [e.step for e in fitted.events.Histograms(tag)] == STEPS[1:]  # not the one at init (see _loop)
    images = fitted.events.Images(f"{P}/val/per_class")
    assert [e.step for e in images] == STEPS and all(e.width > 100 and e.height > 100 for e in images)
    assert any(t.startswith("sensitivity/config/JacobianNormMonitor") for t in tags["tensors"])
    assert "custom_scalars__config__" in tags["tensors"]
    auroc = [e.value for e in fitted.events.Scalars(f"{P}/val/misclassification_auroc")]
    assert all(0.0 <= a <= 1.0 for a in auroc)


def test_final_measurement_matches_naive_loop(fitted):  # noqa: F811
    monitor = fitted.monitor(JacobianNormMonitor)
    artifacts = load_artifacts(fitted.log_dir, "jacobian_norm")
    assert [a.epoch for a in artifacts] == [0, 1, 2]
    assert [a.step for a in artifacts] == STEPS
    last = artifacts[-1].arrays
    net = fitted.module.net
    for split in ("val", "train"):
        probe = monitor.probe_sets[split]
        assert torch.bincount(probe.targets).tolist() == [4] * NUM_CLASSES  # 40 examples, class-balanced
        expected = last[f"{split}_norms"]
        # the per-example autograd loop is slow: check a third of the points against it
        np.testing.assert_allclose(
            expected[::3], jacobian_norm_loop(net, probe.inputs[::3]).numpy(), rtol=1e-4, atol=1e-7
        )
        np.testing.assert_array_equal(last[f"{split}_labels"], probe.targets.numpy())
        with torch.no_grad():
            correct = (net.eval()(probe.inputs).argmax(1) == probe.targets).numpy()
        net.train()
        np.testing.assert_array_equal(last[f"{split}_correct"], correct)
        assert float(last[f"{split}_mean"]) == pytest.approx(expected.mean(), rel=1e-4)
        assert float(last[f"{split}_median"]) == pytest.approx(np.median(expected), rel=1e-4)
        assert float(last[f"{split}_p90"]) == pytest.approx(np.percentile(expected, 90), rel=1e-4)
    norms, wrong = last["val_norms"], ~last["val_correct"]
    if 0 < wrong.sum() < wrong.size:
        assert float(last["misclassification_auroc"]) == pytest.approx(roc_auc_score(wrong, norms), abs=1e-6)
    assert float(last["train_val_ratio"]) == pytest.approx(last["train_norms"].mean() / norms.mean(), rel=1e-5)
    final = {tag: fitted.events.Scalars(tag)[-1].value for tag in SCALARS}
    for c in range(NUM_CLASSES):
        assert final[f"{P}/val/class_{c}"] == pytest.approx(norms[last["val_labels"] == c].mean(), rel=1e-5)
    assert final[f"{P}/val/mean"] == pytest.approx(norms.mean(), rel=1e-5)


def test_auroc_is_not_squashed_by_a_sigmoid():
    """Large norms must keep their order: torchmetrics would sigmoid scores outside [0, 1] into ties at 1.0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        net[2].weight.mul_(1e3)
    x = torch.randn(60, 4)
    y = torch.randint(0, 3, (60,))
    monitor = JacobianNormMonitor(output="logits", num_samples=60)
    result = monitor.compute(net, {"val": probe_set_from_tensors(x, y, 60, seed=0)}, progress_factory("t", False), 0)
    norms = result.arrays["val_norms"].numpy()
    wrong = ~result.arrays["val_correct"].numpy()
    assert norms.min() > 50 and len(np.unique(norms)) > 5 and 0 < wrong.sum() < wrong.size
    expected = roc_auc_score(wrong, norms)
    assert abs(expected - 0.5) > 0.02  # otherwise the check below could not tell
    assert result.scalars[f"{P}/val/misclassification_auroc"] == pytest.approx(expected, abs=1e-6)


def test_class_names_label_the_bar_chart_and_title_has_epoch(monkeypatch):
    from lightning_sensitivity.logging import render

    x = torch.randn(12, 5)
    y = torch.arange(12) % 3
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    monitor = JacobianNormMonitor(class_names=["cat", "dog", "car"], num_samples=12)
    result = monitor.compute(net, {"val": probe_set_from_tensors(x, y, 12, seed=0)}, progress_factory("t", False), 7)
    (tag, make), *_ = result.figures
    image = make()
    assert tag == f"{P}/val/per_class"
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    calls = []
    real = render.render_per_class
    monkeypatch.setattr(render, "render_per_class", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    make()
    (args, kwargs), = calls
    assert list(args[1]) == ["cat", "dog", "car"]
    assert "epoch 7" in kwargs["title"]
    assert set(result.scalars) >= {f"{P}/val/class_{c}" for c in range(3)}
    assert f"{P}/train/mean" not in result.scalars  # no training probe set given


def _estimate_setup(num_classes=5, n=40):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, num_classes))
    x = torch.randn(n, 6)
    y = torch.arange(n) % num_classes
    return net, probe_set_from_tensors(x, y, n, seed=0)


def test_num_projections_estimates_the_norm_and_logs_its_standard_error():
    net, probe = _estimate_setup()
    monitor = JacobianNormMonitor(num_projections=16, num_samples=40, seed=3)
    result = monitor.compute(net, {"val": probe}, progress_factory("t", False), 0)
    norms, stderr = result.arrays["val_norms"].double(), result.arrays["val_stderr"].double()
    exact = jacobian_norm_loop(net, probe.inputs).double()
    assert not torch.allclose(norms, exact, rtol=1e-3)  # an estimate, not the exact norm
    assert (stderr > 0).all()
    mean_stderr = result.scalars[f"{P}/val/mean_stderr"]
    assert mean_stderr == pytest.approx(float(stderr.pow(2).sum().sqrt() / 40), rel=1e-6)
    assert result.scalars[f"{P}/val/mean"] == pytest.approx(float(norms.mean()), rel=1e-6)
    # the estimate is unbiased for the squared norm: the mean norm lies within a few standard errors of the truth
    assert abs(float(norms.mean() - exact.mean())) < 4 * mean_stderr + 0.02 * float(exact.mean())
    assert (norms - exact).abs().max() < 6 * stderr.max() + 1e-6


def test_num_projections_matches_the_functional_estimate_and_exact_path_logs_no_stderr():
    from lightning_sensitivity.functional import jacobian_norm_estimate

    net, probe = _estimate_setup()
    result = JacobianNormMonitor(num_projections=4, output="logits", num_samples=40, seed=5).compute(
        net, {"val": probe}, progress_factory("t", False), 0
    )
    expected, expected_se = jacobian_norm_estimate(net, probe.inputs, num_projections=4, output="logits", seed=5)
    np.testing.assert_allclose(result.arrays["val_norms"].numpy(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.arrays["val_stderr"].numpy(), expected_se.numpy(), rtol=1e-5)
    exact = JacobianNormMonitor(num_samples=40).compute(net, {"val": probe}, progress_factory("t", False), 0)
    assert f"{P}/val/mean_stderr" not in exact.scalars and "val_stderr" not in exact.arrays


def test_many_classes_warns_once_suggesting_num_projections():
    net, probe = _estimate_setup(num_classes=120, n=120)
    monitor = JacobianNormMonitor(num_samples=120)
    with pytest.warns(UserWarning, match="num_projections=32"):
        monitor.compute(net, {"val": probe}, progress_factory("t", False), 0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.compute(net, {"val": probe}, progress_factory("t", False), 1)  # once per monitor
        JacobianNormMonitor(num_samples=120, num_projections=8).compute(
            net, {"val": probe}, progress_factory("t", False), 0
        )
    few = JacobianNormMonitor(num_samples=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        few.compute(*(_estimate_setup()[0], {"val": _estimate_setup()[1]}), progress_factory("t", False), 0)


@pytest.mark.parametrize(("value", "error"), [(1, ValueError), (0, ValueError), ("8", TypeError), (2.0, TypeError)])
def test_num_projections_is_checked(value, error):
    with pytest.raises(error, match="num_projections"):
        JacobianNormMonitor(num_projections=value)
