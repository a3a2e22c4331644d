"""End to end, the models a researcher brings, each in a real ``Trainer``.

A text model of token ids with an attention mask, multi-label and regression losses, and a torchvision
architecture; each value is checked against an independent float64 computation at the final weights
(``tests/oracles.py``).

The setups around the model (streams, several validation loaders, no logger, checkpointing) are in
``test_real_setups.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import Classifier, fit, last_artifact, make_trainer, mlp, sensitivity_metrics, write_corpus
from lightning.pytorch.callbacks import ModelCheckpoint
from oracles import embedding_jacobian_norm_loop, jacobian_norm_loop, stiffness_loop
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sensitivity.callbacks._loop as _loop
from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.functional import jacobian_norm
from lightning_sensitivity.models import LitClassifier, TextClassifier, TextDataModule

pytestmark = pytest.mark.slow

JAC, STIFF, TRANS = "sensitivity/jacobian_norm", "sensitivity/stiffness", "sensitivity/transitions"


# ---------------------------------------------------------------- 1. a text model of token ids
def text_setup(tmp_path, seed: int = 0) -> tuple[TextDataModule, LitClassifier]:
    dm = TextDataModule(batch_size=16, max_length=12, min_count=1, val_split=20, test_split=8, path=write_corpus(
        tmp_path / "corpus.csv"))  # fmt: skip
    dm.setup()
    torch.manual_seed(seed)
    net = TextClassifier(dm.vocab_size, num_classes=2, d_model=8, num_layers=1, num_heads=2, dim_feedforward=16)
    return dm, LitClassifier(net, lr=0.05)


def text_options(mask: bool = True, **extra):
    """The README's recipe for a model of token ids (``mask=False``: the same model, padding treated as tokens)."""
    if mask:
        forward = lambda m, e, attention_mask: m.model.forward_embedded(e, attention_mask)  # noqa: E731
        transform = lambda b: (b["input_ids"], b["labels"], {"attention_mask": b["attention_mask"]})  # noqa: E731
    else:
        forward = lambda m, e: m.model.forward_embedded(e)  # noqa: E731
        transform = lambda b: (b["input_ids"], b["labels"])  # noqa: E731
    return {"embed_fn": lambda m, ids: m.model.embed(ids), "forward_fn": forward, "batch_transform": transform,
            "num_samples": 10, **extra}  # fmt: skip


class NoMask(nn.Module):
    """The composition ``forward_embedded(embed(ids))`` without a mask, for the oracles."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.forward_embedded(self.model.embed(ids))


def test_text_model_jacobian_norm_is_the_embedding_jacobian_and_ignores_padding(tmp_path):
    dm, lit = text_setup(tmp_path)
    monitor = JacobianNormMonitor(**text_options())
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=2), lit, datamodule=dm)
    assert not [m for m in messages if "could not" in m], messages
    probe = monitor.probe_sets["val"]
    ids, mask = probe.inputs, probe.model_kwargs["attention_mask"]
    assert ids.dtype == torch.long and mask.shape == ids.shape and bool((mask == 0).any())  # padding is there
    norms = torch.as_tensor(last_artifact(tmp_path, "jacobian_norm").arrays["val_norms"], dtype=torch.float64)
    expected = embedding_jacobian_norm_loop(lit.model, ids, mask)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-7)
    metrics = sensitivity_metrics(monitor_trainer := lit.trainer)
    assert metrics[f"{JAC}/val/mean"] == pytest.approx(float(expected.mean()), rel=1e-4)
    assert f"{JAC}/train/mean" in sensitivity_metrics(monitor_trainer)
    # the mask is used: each example alone, cut to its real tokens, has the same norm
    alone = torch.cat([
        embedding_jacobian_norm_loop(lit.model, ids[i : i + 1, :n], mask[i : i + 1, :n])
        for i, n in enumerate(mask.sum(1).tolist())
    ])  # fmt: skip
    torch.testing.assert_close(norms, alone, rtol=1e-4, atol=1e-7)
    unmasked = embedding_jacobian_norm_loop(lit.model, ids, torch.ones_like(mask))
    assert (unmasked - expected).abs().max() > 1e-3  # the comparison can tell a mask that is ignored


@pytest.mark.parametrize("mask", [True, False], ids=["mask", "no-mask"])
def test_text_model_stiffness_differentiates_the_embedding_table_too(tmp_path, mask):
    dm, lit = text_setup(tmp_path)
    monitor = StiffnessMonitor(groups=("val_val",), num_distance_bins=4, **text_options(mask))
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=1), lit, datamodule=dm)
    assert not [m for m in messages if "could not" in m], messages
    probe = monitor.probe_sets["val"]
    model = copy.deepcopy(lit.model).double()
    kwargs = {"model_kwargs": dict(probe.model_kwargs)} if mask else {}
    net = model if mask else NoMask(model)
    expected = stiffness_loop(net, probe.inputs, probe.targets, **kwargs)
    metrics = sensitivity_metrics(lit.trainer)
    assert metrics[f"{STIFF}/val_val/cosine"] == pytest.approx(expected["cosine_mean"], rel=1e-4, abs=1e-6)
    assert metrics[f"{STIFF}/val_val/sign"] == pytest.approx(expected["sign_mean"], abs=1e-9)
    # without the embedding tables the cosine is measurably different: the monitor did include them
    for table in (model.token_embedding, model.position_embedding):
        table.weight.requires_grad_(False)
    without = stiffness_loop(net, probe.inputs, probe.targets, **kwargs)
    assert abs(without["cosine_mean"] - expected["cosine_mean"]) > 1e-4  # ~100x the tolerance above


def _prediction_changes(net: nn.Module, trajectories: torch.Tensor) -> list[int]:
    with torch.no_grad():
        preds = [net(t).argmax(dim=1) for t in trajectories]  # [P] per trajectory
    return [int((p != p.roll(-1)).sum()) for p in preds]  # closed: the last point meets the first


@pytest.mark.parametrize(
    "mask",
    [True, False],
    ids=["mask", "no-mask"],
)
def test_text_model_transitions_run_on_embedded_ellipses(tmp_path, mask):
    from lightning_sensitivity.functional import ellipse_trajectories

    dm, lit = text_setup(tmp_path)
    monitor = TransitionMonitor(num_trajectories=3, num_points=12, **text_options(mask))
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=1), lit, datamodule=dm)
    assert not [m for m in messages if "could not" in m], messages
    metrics = sensitivity_metrics(lit.trainer)
    assert {f"{TRANS}/val/{s}_mean" for s in ("activation", "region_changes", "prediction")} <= metrics.keys()
    assert metrics[f"{TRANS}/val/activation_mean"] > 0  # the encoder's ReLU (F.relu) units were seen
    artifact = last_artifact(tmp_path, "transitions")
    model = copy.deepcopy(lit.model).double().eval()
    with torch.no_grad():
        embedded = model.embed(monitor.probe_sets["val"].inputs)
    trajectories = ellipse_trajectories(embedded[torch.as_tensor(artifact.arrays["anchor_indices"])], 12)
    if mask:  # assumption of this test: an ellipse point is masked where none of its three anchors has a token
        anchor_masks = monitor.probe_sets["val"].model_kwargs["attention_mask"][artifact.arrays["anchor_indices"]]
        union = anchor_masks.amax(dim=1)
        changes = [_prediction_changes(lambda e, u=u: model.forward_embedded(e, u.expand(e.shape[0], -1)), [t])[0]
                   for t, u in zip(trajectories, union, strict=True)]  # fmt: skip
    else:
        changes = _prediction_changes(model.forward_embedded, trajectories)
    assert artifact.arrays["prediction"].tolist() == changes


def test_text_probe_set_with_its_mask_survives_a_checkpoint_resume(tmp_path, monkeypatch):
    dm, lit = text_setup(tmp_path)
    first = JacobianNormMonitor(**text_options())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(make_trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True), lit, datamodule=dm)
    saved = first.probe_sets["val"]

    def no_draw(*args, **kwargs):
        raise AssertionError("the probe set was drawn again instead of being restored")

    monkeypatch.setattr(_loop, "draw_probe_set", no_draw)
    dm2, lit2 = text_setup(tmp_path, seed=1)
    second = JacobianNormMonitor(**text_options())
    messages = fit(
        make_trainer(tmp_path, [second], max_epochs=2), lit2, datamodule=dm2, ckpt_path=checkpoint.last_model_path
    )
    assert not [m for m in messages if "could not" in m], messages
    restored = second.probe_sets["val"]
    assert torch.equal(restored.inputs, saved.inputs) and torch.equal(restored.targets, saved.targets)
    assert restored.model_kwargs.keys() == {"attention_mask"}
    assert torch.equal(restored.model_kwargs["attention_mask"], saved.model_kwargs["attention_mask"])
    assert second.measured_epochs == [0, 1, 2]
    norms = torch.as_tensor(last_artifact(tmp_path, "jacobian_norm").arrays["val_norms"], dtype=torch.float64)
    expected = embedding_jacobian_norm_loop(lit2.model, restored.inputs, restored.model_kwargs["attention_mask"])
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- 2. custom losses and targets
def multilabel_loaders(n_train: int = 48, n_val: int = 24, k: int = 3):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, 6, generator=gen)
    y = (x[:, :k] + 0.3 * torch.randn(n_train + n_val, k, generator=gen) > 0).float()  # multi-hot [N, K]
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=12, shuffle=True)
    return train, DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=12)


def test_multilabel_jacobian_of_the_sigmoid_logs_norms_only_with_one_notice(tmp_path):
    train, val = multilabel_loaders()
    torch.manual_seed(0)
    module = Classifier(mlp(6, 3), F.binary_cross_entropy_with_logits, lr=0.05)
    monitor = JacobianNormMonitor(output="sigmoid", num_samples=16)
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=2), module, train, val)
    probe = monitor.probe_sets["val"]
    assert probe.targets.dtype == torch.float32 and probe.targets.shape == (16, 3)
    expected = jacobian_norm_loop(copy.deepcopy(module.net).double(), probe.inputs.double(), output="sigmoid")
    norms = torch.as_tensor(last_artifact(tmp_path, "jacobian_norm").arrays["val_norms"], dtype=torch.float64)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=1e-8)
    metrics = sensitivity_metrics(module.trainer)
    assert metrics[f"{JAC}/val/mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert not [k for k in metrics if "class_" in k or "auroc" in k]
    notices = [m for m in messages if "not integer class indices" in m]
    assert len(notices) == 1 and "AUROC" in notices[0], messages


def test_multilabel_stiffness_with_bce_matches_the_oracle_without_class_splits(tmp_path):
    train, val = multilabel_loaders()
    torch.manual_seed(0)
    module = Classifier(mlp(6, 3), F.binary_cross_entropy_with_logits, lr=0.05)
    monitor = StiffnessMonitor(loss_fn=F.binary_cross_entropy_with_logits, num_samples=16, num_distance_bins=4)
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=1), module, train, val)
    probe = monitor.probe_sets["val"]
    net = copy.deepcopy(module.net).double()
    expected = stiffness_loop(
        net, probe.inputs.double(), probe.targets.double(), loss_fn=F.binary_cross_entropy_with_logits
    )
    metrics = sensitivity_metrics(module.trainer)
    assert metrics[f"{STIFF}/val_val/cosine"] == pytest.approx(expected["cosine_mean"], rel=1e-4, abs=1e-6)
    assert metrics[f"{STIFF}/val_val/sign"] == pytest.approx(expected["sign_mean"], abs=1e-9)
    assert not [k for k in metrics if "same_class" in k or "different_class" in k]
    assert len([m for m in messages if "class" in m and "targets" in m]) == 1, messages


def test_regression_stiffness_with_mse_matches_the_oracle(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=gen)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(64, 1, generator=gen)  # float targets [N, 1]
    train = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=10, shuffle=True)
    val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=12)
    torch.manual_seed(0)
    module = Classifier(mlp(5, 1), F.mse_loss, lr=0.01)
    monitor = StiffnessMonitor(loss_fn=F.mse_loss, num_samples=12, groups=("train_val", "val_val"), num_distance_bins=4)
    fit(make_trainer(tmp_path, [monitor], max_epochs=1), module, train, val)
    tr, va = monitor.probe_sets["train"], monitor.probe_sets["val"]
    net = copy.deepcopy(module.net).double()
    expected = stiffness_loop(net, tr.inputs.double(), tr.targets.double(), va.inputs.double(), va.targets.double(),
                              loss_fn=F.mse_loss)  # fmt: skip
    metrics = sensitivity_metrics(module.trainer)
    assert metrics[f"{STIFF}/train_val/cosine"] == pytest.approx(expected["cosine_mean"], rel=1e-4, abs=1e-6)


def test_a_loss_class_is_refused_at_construction_naming_loss_fn():
    with pytest.raises(TypeError, match="`loss_fn`.*CrossEntropyLoss"):
        StiffnessMonitor(loss_fn=nn.CrossEntropyLoss)


# ---------------------------------------------------------------- 8. torchvision architectures
def test_torchvision_resnet18_all_monitors_and_training_untouched(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=gen), torch.arange(32) % 4

    def run(callbacks, root):
        torch.manual_seed(0)
        module = Classifier(torchvision.models.resnet18(weights=None, num_classes=4), lr=0.01)
        train = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8, shuffle=True)
        val = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=16)
        messages = fit(make_trainer(root, callbacks, max_epochs=1), module, train, val)
        module.rng_after = torch.get_rng_state()
        return module, messages

    common = {"num_samples": 16, "chunk_size": 8, "at_init": False}
    jac = JacobianNormMonitor(**common)
    stiff = StiffnessMonitor(groups=("val_val",), num_distance_bins=4, **common)
    monitors = [jac, stiff, TransitionMonitor(num_trajectories=2, num_points=6, **common)]
    monitored, messages = run(monitors, tmp_path / "with")
    plain, _ = run([], tmp_path / "without")
    assert not [m for m in messages if "could not" in m or "disabled" in m], messages
    state, reference = monitored.state_dict(), plain.state_dict()
    assert [k for k in state if not torch.equal(state[k], reference[k])] == []  # BatchNorm statistics included
    momenta = [s["momentum_buffer"] for s in monitored.trainer.optimizers[0].state.values()]
    reference_momenta = [s["momentum_buffer"] for s in plain.trainer.optimizers[0].state.values()]
    assert len(momenta) == 62 and all(map(torch.equal, momenta, reference_momenta))
    assert torch.equal(monitored.rng_after, plain.rng_after)
    metrics = sensitivity_metrics(monitored.trainer)
    for key in (f"{JAC}/val/mean", f"{JAC}/train/mean", f"{STIFF}/val_val/cosine", f"{STIFF}/val_val/sign",
                f"{TRANS}/val/activation_mean", f"{TRANS}/val/prediction_mean"):  # fmt: skip
        assert key in metrics, sorted(metrics)
    probe = jac.probe_sets["val"]
    assert torch.equal(probe.inputs, x[16:][probe.indices])
    expected = jacobian_norm(copy.deepcopy(monitored.net).double(), probe.inputs.double(), method="looped")
    norms = torch.as_tensor(last_artifact(tmp_path / "with", "jacobian_norm").arrays["val_norms"], dtype=torch.float64)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-7)
    assert metrics[f"{JAC}/val/mean"] == pytest.approx(float(expected.mean()), rel=1e-4)
