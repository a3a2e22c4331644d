"""Every zoo model in a Lightning fit with all three monitors: each quantity is logged, nothing fails, and the
trained weights are bitwise those of the same fit without monitors (the measurements never disturb training: dropout
draws, optimizer state, parameters)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import fit, make_trainer
from torch.utils.data import DataLoader, TensorDataset
from zoo.models import ZOO, build, image_batch, text_batch

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor

pytestmark = pytest.mark.slow
QUANTITIES = ("jacobian_norm", "transitions", "stiffness")


class ZooModule(pl.LightningModule):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.text = ZOO[name].text
        self.net = build(name).train()

    def forward(self, x, attention_mask=None):
        return self.net(x) if attention_mask is None else self.net(x, attention_mask)

    def training_step(self, batch, batch_idx):
        *inputs, y = batch[:1] + batch[2:] + batch[1:2]  # (x, y) or (ids, y, mask) -> forward(x[, mask]), y
        return F.cross_entropy(self(*inputs), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _loaders(text: bool):
    def dataset(n, seed):
        if text:
            ids, y, kw = text_batch(n, seed)
            return TensorDataset(ids, y, kw["attention_mask"])
        return TensorDataset(*image_batch(n, seed))

    return DataLoader(dataset(16, 1), batch_size=8, shuffle=True), DataLoader(dataset(8, 2), batch_size=8)


def _monitors(text: bool):
    common = {"num_samples": 8, "figures": "none"}
    if text:
        common.update(
            embed_fn=lambda m, ids: m.net.embed(ids),
            forward_fn=lambda m, embedded, attention_mask: m.net.forward_embedded(embedded, attention_mask),
            batch_transform=lambda b: (b[0], b[1], {"attention_mask": b[2]}),
        )
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=2, num_points=8, **common),
        StiffnessMonitor(num_distance_bins=4, **common),
    ]


def _fit(name, tmp_path, monitors):
    pl.seed_everything(0, verbose=False)
    module = ZooModule(name)
    trainer = make_trainer(tmp_path, monitors, max_epochs=1, num_sanity_val_steps=0)
    train, val = _loaders(module.text)
    said = fit(trainer, module, train, val)
    return module, trainer, said


@pytest.mark.parametrize("name", sorted(ZOO))
def test_fit_with_all_three_monitors(name, tmp_path):
    pytest.importorskip(ZOO[name].requires)
    plain, _, _ = _fit(name, tmp_path / "plain", [])
    module, trainer, said = _fit(name, tmp_path / "monitored", _monitors(ZOO[name].text))
    failures = [s for s in said if "could not produce" in s or "do not compute" in s or "disabled" in s]
    assert not failures, failures
    for quantity in QUANTITIES:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"sensitivity/{quantity}/")}
        assert logged, f"nothing logged for {quantity}: {said}"
        assert all(v == v for v in logged.values()), logged  # finite or at least not NaN
    for (key, a), b in zip(plain.state_dict().items(), module.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_the_naive_gpt2_recipe_is_caught(tmp_path):
    """``inputs_embeds`` makes GPT-2 pool the last position, padded or not: another function, said at once."""
    pytest.importorskip("transformers")

    def naive(m, embedded, attention_mask):
        return m.net.model(inputs_embeds=embedded, attention_mask=attention_mask).logits

    monitor = JacobianNormMonitor(
        num_samples=8, figures="none", embed_fn=lambda m, ids: m.net.embed(ids), forward_fn=naive,
        batch_transform=lambda b: (b[0], b[1], {"attention_mask": b[2]}),
    )  # fmt: skip
    _, trainer, said = _fit("gpt2", tmp_path, [monitor])
    found = [s for s in said if "do not compute the LightningModule's own output" in s]
    assert len(found) == 1, said
    assert "differ from `pl_module(x, **model_kwargs)` by up to" in found[0]
