"""LitClassifier: validation, optimizers, epoch-level metrics and the generalization gap, checkpoint loading."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sensitivity.models import MLP, LitClassifier


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    return make_trainer(tmp_path, **{"logger": "csv", "max_epochs": 2, **kwargs})


def _read_csv(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _oracle(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Per-example mean cross-entropy and accuracy over the whole set, one example at a time."""
    model.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for x, y in data:
            logits = model(x[None])
            losses.append(F.cross_entropy(logits, y[None]).item())
            correct += int(logits.argmax(1).item() == y.item())
    return sum(losses) / len(losses), correct / len(data)


@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        ({"model": "mlp"}, "model", TypeError),
        ({"lr": 0}, "lr", ValueError),
        ({"lr": -1.0}, "lr", ValueError),
        ({"optimizer": "rmsprop"}, "optimizer", ValueError),
        ({"momentum": 1.0}, "momentum", ValueError),
        ({"weight_decay": -1e-4}, "weight_decay", ValueError),
        ({"num_classes": 1}, "num_classes", ValueError),
        ({"model": nn.Sequential(nn.Flatten())}, "num_classes", ValueError),
    ],
)
def test_validation(kwargs, name, error):
    args = {"model": MLP(6, 3, hidden=(4,)), **kwargs}
    with pytest.raises(error, match=f"`{name}`"):
        LitClassifier(**args)


def test_num_classes_inference():
    assert LitClassifier(MLP(6, 7, hidden=(4,))).num_classes == 7
    assert LitClassifier(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 5))).num_classes == 5
    assert LitClassifier(nn.Sequential(nn.Linear(6, 4)), num_classes=4).num_classes == 4


def test_forward_returns_model_logits():
    model = MLP(6, 3, hidden=(4,))
    x = torch.randn(5, 6)
    torch.testing.assert_close(LitClassifier(model)(x), model(x))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_configure_optimizers(name, cls):
    module = LitClassifier(MLP(6, 3, hidden=(4,)), lr=0.01, optimizer=name, momentum=0.5, weight_decay=1e-3)
    opt = module.configure_optimizers()
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-3
    if name == "sgd":
        assert group["momentum"] == 0.5
    assert {id(p) for p in group["params"]} == {id(p) for p in module.model.parameters()}


def test_hparams_exclude_model():
    module = LitClassifier(MLP(6, 3, hidden=(4,)), lr=0.2, optimizer="adam")
    assert "model" not in module.hparams
    assert module.hparams.lr == 0.2 and module.hparams.optimizer == "adam"


def test_epoch_metrics_and_gap_match_independent_computation(tmp_path):
    torch.manual_seed(0)
    train, val = _data(10, 1), _data(7, 2)
    # lr so small that the weights do not move: the train statistics become a function of the initial model
    module = LitClassifier(MLP(6, 3, hidden=(8,)), lr=1e-12, momentum=0.0)
    trainer = _trainer(tmp_path, num_sanity_val_steps=2)
    # batch sizes that do not divide the set sizes: an unweighted mean of batch means would differ
    trainer.fit(module, DataLoader(train, batch_size=4), DataLoader(val, batch_size=3))

    train_loss, train_acc = _oracle(module.model, train)
    val_loss, val_acc = _oracle(module.model, val)
    rows = _read_csv(trainer)
    for epoch in (0, 1):
        logged = {k: float(v) for row in rows if row["epoch"] == str(epoch) for k, v in row.items() if v != ""}
        assert logged["train/loss"] == pytest.approx(train_loss, rel=1e-5)
        assert logged["train/acc"] == pytest.approx(train_acc)
        assert logged["val/loss"] == pytest.approx(val_loss, rel=1e-5)
        assert logged["val/acc"] == pytest.approx(val_acc)
        assert logged["generalization_gap/loss"] == pytest.approx(val_loss - train_loss, rel=1e-4, abs=1e-6)
        assert logged["generalization_gap/acc"] == pytest.approx(train_acc - val_acc, abs=1e-6)
    # each key is written once per epoch, no step-level duplicates
    for key in ("train/loss", "val/acc", "generalization_gap/loss"):
        assert sum(row[key] != "" for row in rows) == 2


def test_training_learns_and_val_matches_final_model(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long()  # linearly separable
    train, val = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])
    module = LitClassifier(MLP(6, 2, hidden=(16,)), lr=0.1)
    trainer = _trainer(tmp_path, max_epochs=5, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=5))
    metrics = trainer.callback_metrics
    val_loss, val_acc = _oracle(module.model, val)
    # validation runs after the last optimizer step, so it measures exactly the final model
    assert metrics["val/loss"].item() == pytest.approx(val_loss, rel=1e-5)
    assert metrics["val/acc"].item() == pytest.approx(val_acc)
    assert val_acc > 0.8
    assert metrics["generalization_gap/loss"].item() == pytest.approx(
        metrics["val/loss"].item() - metrics["train/loss"].item(), abs=1e-6
    )


def test_validate_and_test_alone_log_no_gap(tmp_path):
    module = LitClassifier(MLP(6, 3, hidden=(4,)))
    data = _data(9, 3)
    trainer = _trainer(tmp_path)
    (val_result,) = trainer.validate(module, DataLoader(data, batch_size=4))
    (test_result,) = trainer.test(module, DataLoader(data, batch_size=4))
    loss, acc = _oracle(module.model, data)
    assert set(val_result) == {"val/loss", "val/acc"}
    assert val_result["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert test_result["test/loss"] == pytest.approx(loss, rel=1e-5)
    assert test_result["test/acc"] == pytest.approx(acc)


def test_no_validation_still_logs_train(tmp_path):
    module = LitClassifier(MLP(6, 3, hidden=(4,)))
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(_data(8, 4), batch_size=4))
    assert {"train/loss", "train/acc"} <= set(trainer.callback_metrics)
    assert "generalization_gap/loss" not in trainer.callback_metrics
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def test_checkpoint_roundtrip(tmp_path):
    module = LitClassifier(MLP(6, 3, hidden=(4,)), lr=0.3, optimizer="adam", weight_decay=1e-4)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(_data(8, 5), batch_size=4))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = LitClassifier.load_from_checkpoint(path, model=MLP(6, 3, hidden=(4,)))
    assert loaded.hparams.lr == 0.3 and loaded.hparams.optimizer == "adam"
    for (k1, v1), (k2, v2) in zip(module.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
