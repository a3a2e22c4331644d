"""``SharpnessMonitor`` over a real fit: the logged values against dense float64 curvature of the same weights, and
training untouched bitwise (BatchNorm and Dropout in the model)."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from callbacks._tiny import Spy, make_trainer, rng_equal
from helpers import Classifier, TinyData, read_events, rng_states
from oracles_curvature import dense_hessian_loop, gauss_newton_loop
from torch import nn

from lightning_sensitivity import SharpnessMonitor, keys
from lightning_sensitivity.functional.sharpness import _rademacher
from lightning_sensitivity.logging import load_artifacts


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.3), nn.Linear(4, 10)
    )


class Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.nets: list[nn.Module] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.nets.append(copy.deepcopy(pl_module.net))


def _fit(tmp, callbacks: list[pl.Callback]) -> tuple[pl.Trainer, Classifier]:
    pl.seed_everything(0, verbose=False)
    torch.manual_seed(0)
    module = Classifier(net=small_net())
    trainer = make_trainer(tmp, callbacks)
    trainer.fit(module, datamodule=TinyData())
    return trainer, module


_RUN: dict[str, Any] = {}


@pytest.fixture
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if _RUN:
        return _RUN
    monitor = SharpnessMonitor(splits=("train", "val"), num_samples=16, num_iterations=60, tol=1e-9, num_vectors=3)
    snaps, spy = Snapshots(), {}
    trainer, module = _fit(tmp_path_factory.mktemp("sharp"), [Spy(spy, "before"), snaps, monitor, Spy(spy, "after")])
    rng_after = rng_states()
    _, reference = _fit(tmp_path_factory.mktemp("plain"), [])
    _RUN.update(monitor=monitor, snaps=snaps, log_dir=trainer.logger.log_dir, module=module, reference=reference,
                spy=spy, rng_after=rng_after, rng_reference=rng_states())  # fmt: skip
    return _RUN


@pytest.mark.slow
def test_values_match_dense_curvature_of_the_same_weights(run):
    monitor, net = run["monitor"], run["snaps"].nets[-1]
    artifacts = {a.epoch: a.arrays for a in load_artifacts(run["log_dir"], keys.SHARPNESS)}
    arrays = artifacts[max(artifacts)]
    events = read_events(run["log_dir"])
    for split in ("train", "val"):
        probe = monitor.probe_sets[split]
        hess = dense_hessian_loop(net, probe.inputs, probe.targets, F.cross_entropy)
        eigs = torch.linalg.eigvalsh(hess)
        top = float(arrays[f"{split}_top_eigenvalue"])
        assert top == pytest.approx(float(eigs[-1]), rel=1e-4)
        assert float(arrays[f"{split}_top_eigenvalue_residual"]) <= 1e-3 * abs(top)
        samples = torch.as_tensor(arrays[f"{split}_hutchinson_samples"])
        vectors = [_rademacher(hess.shape[0], monitor.seed, k) for k in range(3)]
        expected = [float(v @ hess @ v) for v in vectors]
        assert samples.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert float(arrays[f"{split}_hessian_trace"]) == pytest.approx(float(samples.mean()), rel=1e-6)
        assert float(arrays[f"{split}_hessian_trace_se"]) == pytest.approx(float(samples.std() / 3**0.5), rel=1e-6)
        ggn = gauss_newton_loop(net, probe.inputs, probe.targets, F.cross_entropy)
        assert float(arrays[f"{split}_gauss_newton_trace"]) == pytest.approx(float(ggn.trace()), rel=1e-4)
        with torch.no_grad():
            loss = F.cross_entropy(copy.deepcopy(net).eval()(probe.inputs), probe.targets)
        assert float(arrays[f"{split}_loss"]) == pytest.approx(float(loss), rel=1e-5)
        for stat in keys.SHARPNESS_STATS:
            tag = keys.metric(keys.SHARPNESS, split, stat)
            assert events.Scalars(tag)[-1].value == pytest.approx(float(arrays[f"{split}_{stat}"]), rel=1e-5)


@pytest.mark.slow
def test_training_untouched_bitwise(run):
    assert run["spy"]["checked"] and not run["spy"]["diffs"], run["spy"]["diffs"]
    got, ref = run["module"].state_dict(), run["reference"].state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in got)
    assert rng_equal(run["rng_after"], run["rng_reference"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"splits": "train"}, TypeError, "`splits`"),
        ({"splits": ("test",)}, ValueError, "`splits`"),
        ({"splits": ()}, ValueError, "`splits`"),
        ({"splits": ("train", "train")}, ValueError, "`splits`"),
        ({"num_iterations": 0}, ValueError, "`num_iterations`"),
        ({"num_iterations": "5"}, TypeError, "`num_iterations`"),
        ({"tol": -0.1}, ValueError, "`tol`"),
        ({"num_vectors": -1}, ValueError, "`num_vectors`"),
        ({"num_vectors": 1.5}, TypeError, "`num_vectors`"),
        ({"gauss_newton": 1}, TypeError, "`gauss_newton`"),
        ({"loss_fn": "ce"}, TypeError, "`loss_fn`"),
        ({"nonsense": 1}, TypeError, "unexpected keyword argument 'nonsense'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SharpnessMonitor(**kwargs)


def test_config_and_probe_splits():
    monitor = SharpnessMonitor(splits=("val",), num_vectors=0, gauss_newton=False)
    assert monitor.probe_splits() == (frozenset({"val"}), frozenset())
    config = monitor.config()
    assert config["splits"] == ("val",) and config["num_vectors"] == 0 and config["gauss_newton"] is False
