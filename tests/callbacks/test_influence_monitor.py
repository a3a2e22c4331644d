"""``StiffnessMonitor(influence=True)``: TracIn influence accumulated over a real fit, against a float64 oracle."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from callbacks._tiny import NUM_CLASSES, make_trainer
from helpers import Classifier, TinyData, read_events
from oracles import gram_loop

from lightning_sensitivity import StiffnessMonitor, keys
from lightning_sensitivity.logging import load_artifacts

FLIPPED = list(range(0, 200, 5))  # 40 of the 200 training points


class FlippedData(TinyData):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        x, y = self.train_set.tensors
        y = y.clone()
        y[FLIPPED] = (y[FLIPPED] + 1) % NUM_CLASSES
        self.train_set = torch.utils.data.TensorDataset(x, y)


class DecayModule(Classifier):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


class Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.nets: list[torch.nn.Module] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.nets.append(copy.deepcopy(pl_module.net).double().eval())


_FIT: dict[str, Any] = {}


@pytest.fixture
def fit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if _FIT:
        return _FIT
    tmp = tmp_path_factory.mktemp("influence")
    pl.seed_everything(0, verbose=False)
    monitor = StiffnessMonitor(
        groups=("train_val",), num_samples=40, influence=True, influence_top_k=3, flipped_labels=FLIPPED,
        figures="all", num_distance_bins=4,
    )  # fmt: skip
    snaps = Snapshots()
    trainer = make_trainer(tmp, [snaps, monitor], max_epochs=3)
    trainer.fit(DecayModule(), datamodule=FlippedData())
    _FIT.update(monitor=monitor, snaps=snaps, log_dir=trainer.logger.log_dir, trainer=trainer)
    return _FIT


@pytest.mark.slow
def test_influence_is_the_learning_rate_weighted_sum_of_grams(fit):
    monitor, nets = fit["monitor"], fit["snaps"].nets
    train, val = monitor.probe_sets["train"], monitor.probe_sets["val"]
    artifacts = {a.epoch: a.arrays for a in load_artifacts(fit["log_dir"], keys.STIFFNESS)}
    assert sorted(artifacts) == [0, 1, 2, 3]
    assert "train_val/influence" not in artifacts[0]  # at initialisation no step has been taken: nothing yet
    xt, yt, xv, yv = train.inputs.double(), train.targets, val.inputs.double(), val.targets
    expected = torch.zeros(len(train), len(val), dtype=torch.float64)
    expected_self = torch.zeros(len(train), dtype=torch.float64)
    for epoch, net in enumerate(nets):
        lr = 0.2 * 0.5**epoch  # StepLR: the rate every step of epoch `epoch` used
        expected += lr * gram_loop(net, xt, yt, xv, yv)
        expected_self += lr * gram_loop(net, xt, yt).diagonal()
        arrays = artifacts[epoch + 1]
        scale = float(expected.abs().max())
        torch.testing.assert_close(
            torch.as_tensor(arrays["train_val/influence"]).double(), expected, rtol=1e-4, atol=1e-5 * scale
        )
        torch.testing.assert_close(
            torch.as_tensor(arrays["train_val/self_influence"]), expected_self, rtol=1e-4, atol=1e-6
        )
        lrs = torch.as_tensor(arrays["train_val/influence_learning_rates"]).tolist()
        assert lrs == pytest.approx([0.2 * 0.5**e for e in range(epoch + 1)])
        assert torch.as_tensor(arrays["train_val/influence_checkpoint_epochs"]).tolist() == list(range(1, epoch + 2))
    last = artifacts[3]
    # top-k per val example: the columns' largest and most negative entries, by a sort of the oracle by hand
    for j in range(len(val)):
        column = [(float(expected[i, j]), i) for i in range(len(train))]
        best = {i for _, i in sorted(column, reverse=True)[:3]}
        worst = {i for _, i in sorted(column)[:3]}
        assert set(torch.as_tensor(last["train_val/influence_helpful"][j]).tolist()) == best
        assert set(torch.as_tensor(last["train_val/influence_harmful"][j]).tolist()) == worst
    assert torch.as_tensor(last["train_val/train_indices"]).tolist() == train.indices.tolist()


@pytest.mark.slow
def test_flipped_label_aurocs_and_outputs(fit):
    from sklearn.metrics import roc_auc_score

    monitor, net = fit["monitor"], fit["snaps"].nets[-1]
    train = monitor.probe_sets["train"]
    last = {a.epoch: a.arrays for a in load_artifacts(fit["log_dir"], keys.STIFFNESS)}[3]
    flipped = [int(i) in set(FLIPPED) for i in train.indices]
    assert torch.as_tensor(last["train_val/flipped"]).tolist() == flipped
    assert 0 < sum(flipped) < len(flipped)
    with torch.no_grad():
        losses = F.cross_entropy(net(train.inputs.double()), train.targets, reduction="none")
    events = read_events(fit["log_dir"])
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    self_auroc = roc_auc_score(flipped, last["train_val/self_influence"])
    loss_auroc = roc_auc_score(flipped, losses.numpy())
    assert scalars[keys.metric(keys.STIFFNESS, "train_val", "self_influence_flipped_auroc")] == pytest.approx(
        self_auroc, abs=1e-6
    )
    assert scalars[keys.metric(keys.STIFFNESS, "train_val", "loss_flipped_auroc")] == pytest.approx(
        loss_auroc, abs=1e-3
    )
    assert scalars[keys.metric(keys.STIFFNESS, "train_val", "self_influence_mean")] == pytest.approx(
        float(last["train_val/self_influence"].mean()), rel=1e-6
    )
    assert keys.metric(keys.STIFFNESS, "train_val", "self_influence") in events.Tags()["histograms"]
    assert keys.metric(keys.STIFFNESS, "train_val", "influence_examples") in events.Tags()["images"]


@pytest.mark.slow
def test_influence_state_survives_a_checkpoint(fit):
    monitor = fit["monitor"]
    state = monitor.state_dict()
    fresh = StiffnessMonitor(groups=("train_val",), num_samples=40, influence=True, influence_top_k=3)
    fresh.load_state_dict(copy.deepcopy(state))
    assert torch.equal(fresh._influence, monitor._influence)
    assert torch.equal(fresh._self_influence, monitor._self_influence)
    assert fresh._checkpoints == monitor._checkpoints


def test_influence_grid_renders_rows_and_columns():
    from lightning_sensitivity.logging.influence_grid import render_influence_grid

    gen = torch.Generator().manual_seed(0)
    val, train = torch.rand(2, 1, 8, 8, generator=gen), torch.rand(6, 1, 8, 8, generator=gen)
    helpful, harmful = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[5, 4], [4, 5]])
    img = render_influence_grid(val, [0, 1], train, list(range(6)), helpful, torch.ones(2, 2), harmful,
                                -torch.ones(2, 2), title="t")  # fmt: skip
    assert img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3
    with pytest.raises(ValueError, match="indices in"):
        render_influence_grid(val, [0, 1], train, list(range(6)), helpful + 10, torch.ones(2, 2), harmful,
                              -torch.ones(2, 2))  # fmt: skip
    with pytest.raises(ValueError, match="image batches"):
        render_influence_grid(torch.rand(2, 5), [0, 1], train, list(range(6)), helpful, torch.ones(2, 2), harmful,
                              -torch.ones(2, 2))  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"influence": 1}, TypeError, "`influence`"),
        ({"influence": True, "influence_top_k": 0}, ValueError, "`influence_top_k`"),
        ({"influence": True, "influence_top_k": 2.0}, TypeError, "`influence_top_k`"),
        ({"influence": True, "groups": ("val_val",)}, ValueError, "'train_val' in `groups`"),
        ({"flipped_labels": [1, 2]}, ValueError, "`influence=True`"),
        ({"influence": True, "flipped_labels": "12"}, TypeError, "`flipped_labels`"),
        ({"influence": True, "flipped_labels": [1.0]}, TypeError, "`flipped_labels`"),
        ({"influence": True, "flipped_labels": [True]}, TypeError, "`flipped_labels`"),
        ({"influence": True, "flipped_labels": [-1]}, ValueError, ">= 0"),
        ({"influence": True, "flipped_labels": torch.tensor([0.5])}, TypeError, "`flipped_labels`"),
        ({"influence": True, "flipped_labels": torch.zeros(2, 2, dtype=torch.long)}, TypeError, "1-D"),
    ],
)
def test_influence_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        StiffnessMonitor(**kwargs)


def test_flipped_labels_forms():
    mask = torch.zeros(6, dtype=torch.bool)
    mask[[1, 4]] = True
    for given in ([4, 1, 1], {1, 4}, torch.tensor([1, 4]), mask):
        monitor = StiffnessMonitor(influence=True, flipped_labels=given)
        assert monitor.flipped_labels.tolist() == [1, 4]


@pytest.mark.slow
def test_validate_after_fit_adds_nothing_to_the_influence(fit):
    monitor, trainer = fit["monitor"], fit["trainer"]
    before = monitor._influence.clone()
    trainer.validate(trainer.lightning_module, datamodule=FlippedData(), verbose=False)
    assert torch.equal(monitor._influence, before)
    validated = load_artifacts(fit["log_dir"], f"{keys.STIFFNESS}.validate")
    assert validated and all("train_val/influence" not in a.arrays for a in validated)
