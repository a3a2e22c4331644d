"""`forward_fn`/`embed_fn` are checked against the module at the first measurement: a composition that computes
another function warns once with the size of the difference; a right one says nothing. Also the monitors'
`measure_dtype` and `output_key`."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from callbacks._tiny import make_trainer
from torch import nn

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor
from lightning_sensitivity.callbacks import SensitivityWarning

V, T, D, C = 30, 6, 8, 3


def _text_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, T), generator=g)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, 0), torch.randint(0, C, (n,), generator=g), {"attention_mask": mask}


class LastTokenNet(nn.Module):
    """Embeds, mixes positions causally, reads the last real token (GPT-2-style pooling)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, C)

    def body(self, e, attention_mask):
        h = torch.tanh(self.mix(e.cumsum(dim=1)))
        last = (torch.arange(e.shape[1]) * attention_mask).argmax(-1)
        return self.head(h[torch.arange(e.shape[0]), last])

    def forward(self, ids, attention_mask):
        return self.body(self.embed(ids), attention_mask)


class TextModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = LastTokenNet()

    def forward(self, ids, attention_mask):
        return self.net(ids, attention_mask)

    def training_step(self, batch, batch_idx):
        ids, y, mask = batch
        return F.cross_entropy(self(ids, mask), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        ids, y, kw = _text_data()
        return torch.utils.data.DataLoader(list(zip(ids, y, kw["attention_mask"], strict=True)), batch_size=8)


def embed(m, ids):
    return m.net.embed(ids)


def right(m, e, attention_mask):
    return m.net.body(e, attention_mask)


def last_position(m, e, attention_mask):  # what a decoder does with `inputs_embeds`: the last position, padded or not
    return m.net.body(e, torch.ones_like(attention_mask))


def _fit(tmp_path, monitor, **kwargs):
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, logger=False, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(TextModule())
    return [str(w.message) for w in record if issubclass(w.category, SensitivityWarning)], trainer


@pytest.mark.parametrize("quantity", [JacobianNormMonitor, StiffnessMonitor])
def test_a_forward_fn_computing_another_function_warns_once_with_the_difference(tmp_path, quantity):
    ids, y, kw = _text_data(seed=5)
    monitor = quantity(
        val_data=(ids, y, kw), train_data=(ids, y, kw), embed_fn=embed, forward_fn=last_position, num_samples=24
    )
    said, _ = _fit(tmp_path, monitor)
    found = [s for s in said if "do not compute the LightningModule's own output" in s]
    assert len(found) == 1, said
    module = TextModule().eval()  # the weights at the first measurement (at_init) are the initial ones
    with torch.no_grad():
        direct = module(ids[:2], kw["attention_mask"][:2])
        composed = last_position(module, embed(module, ids[:2]), kw["attention_mask"][:2])
    difference = (direct - composed).abs().max().item()
    assert difference > 1e-3  # the probe examples have padding
    assert f"by up to {difference:.3g}" in found[0]


@pytest.mark.parametrize("quantity", [JacobianNormMonitor, StiffnessMonitor])
def test_a_right_forward_fn_says_nothing(tmp_path, quantity):
    ids, y, kw = _text_data(seed=5)
    monitor = quantity(val_data=(ids, y, kw), train_data=(ids, y, kw), embed_fn=embed, forward_fn=right, num_samples=24)
    said, trainer = _fit(tmp_path, monitor)
    assert not [s for s in said if "own output" in s], said
    assert any(k.startswith("sensitivity/") for k in trainer.callback_metrics)


def test_monitors_validate_measure_dtype_and_output_key():
    with pytest.raises(TypeError, match="`measure_dtype` expected a floating-point torch.dtype"):
        JacobianNormMonitor(measure_dtype="bf16")
    with pytest.raises(ValueError, match="`measure_dtype` expected a floating-point torch.dtype"):
        StiffnessMonitor(measure_dtype=torch.int32)
    with pytest.raises(TypeError, match="`output_key` expected a str"):
        StiffnessMonitor(output_key=1.0)
    config = JacobianNormMonitor(measure_dtype=None, output_key="logits").config()
    assert config["measure_dtype"] == "None" and config["output_key"] == "logits"
    assert JacobianNormMonitor().config()["measure_dtype"] == "float32"


class DictModule(TextModule):
    def forward(self, ids, attention_mask):
        return {"scores": self.net(ids, attention_mask)}

    def training_step(self, batch, batch_idx):
        ids, y, mask = batch
        return F.cross_entropy(self(ids, mask)["scores"], y)


def test_output_key_and_a_bf16_module_in_a_fit(tmp_path):
    ids, y, kw = _text_data(seed=5)
    monitor = StiffnessMonitor(val_data=(ids, y, kw), train_data=(ids, y, kw), output_key="scores", num_samples=24)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, logger=False, precision="bf16-true")
    module = DictModule()
    trainer.fit(module)
    assert module.net.head.weight.dtype == torch.bfloat16
    value = trainer.callback_metrics["sensitivity/stiffness/val_val/sign"]
    assert torch.isfinite(value)
