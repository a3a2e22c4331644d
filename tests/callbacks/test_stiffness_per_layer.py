"""StiffnessMonitor(per_layer=True): every layer's sign and cosine stiffness equals the stiffness of that layer's
own per-example gradient sub-vectors (a plain autograd loop), the overall values are unchanged, and the layers x
epochs image grows with the measurements."""

from __future__ import annotations

import pytest
import torch
from callbacks._tiny import make_trainer
from helpers import Classifier, TinyData, read_events
from oracles import per_layer_gram_loop
from torch import nn

from lightning_sensitivity import StiffnessMonitor
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.probes import probe_set_from_tensors


def _net() -> nn.Module:
    torch.manual_seed(0)
    layers = (nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return nn.Sequential(*layers).double()


def _probes():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(18, 12, generator=gen, dtype=torch.float64)
    y = torch.arange(18) % 3
    return {
        "val": probe_set_from_tensors(x[:9], y[:9], 9, seed=0),
        "train": probe_set_from_tensors(x[9:], y[9:], 9, seed=0),
    }


def _oracle_means(block: torch.Tensor, rows: slice, cols: slice, y: torch.Tensor, same: bool) -> dict[str, float]:
    out = {}
    norms = block.diagonal().sqrt()
    for kind in ("sign", "cosine"):
        values = []
        for i in range(rows.start, rows.stop):
            for j in range(cols.start, cols.stop):
                if same and i == j:
                    continue
                dot = float(block[i, j])
                values.append((dot > 0) - (dot < 0) if kind == "sign" else dot / float(norms[i] * norms[j]))
        out[kind] = sum(values) / len(values)
    return out


def test_per_layer_values_equal_the_stiffness_of_each_layers_gradients():
    net, probes = _net(), _probes()
    monitor = StiffnessMonitor(per_layer=True, num_samples=9)
    result = monitor.compute(net, probes, progress_factory("t", False), 0)
    plain = StiffnessMonitor(num_samples=9).compute(net, probes, progress_factory("t", False), 0)
    x = torch.cat([probes["train"].inputs, probes["val"].inputs])
    y = torch.cat([probes["train"].targets, probes["val"].targets])
    blocks = per_layer_gram_loop(net, x, y, lambda name: name.rpartition(".")[0])
    assert set(blocks) == {"1", "3", "5"}
    offsets = {"train": slice(0, 9), "val": slice(9, 18)}
    for group in ("train_train", "train_val", "val_val"):
        r, c = (offsets[s] for s in group.split("_"))
        for layer, block in blocks.items():
            expected = _oracle_means(block, r, c, y, r == c)
            for kind, value in expected.items():
                got = result.scalars[f"sensitivity/stiffness/{group}/layer/{layer}/{kind}"]
                assert got == pytest.approx(value, abs=1e-9), (group, layer, kind)
        for kind in ("sign", "cosine"):
            key = f"sensitivity/stiffness/{group}/{kind}"
            assert result.scalars[key] == pytest.approx(plain.scalars[key], abs=1e-9)
    assert any(tag.endswith("/per_layer_cosine") for tag, _ in result.figures)


def test_layer_groups_sum_layers():
    net, probes = _net(), _probes()
    monitor = StiffnessMonitor(per_layer=True, layer_groups={"hidden": ["1", "3"], "head": ["5"]}, groups=("val_val",))
    result = monitor.compute(net, {"val": probes["val"]}, progress_factory("t", False), 0)
    layers = {k.split("/")[4] for k in result.scalars if "/layer/" in k}
    assert layers == {"hidden", "head"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"per_layer": "yes"}, TypeError, "`per_layer`"),
        ({"layer_groups": {"a": ["1"]}}, ValueError, "`layer_groups` expected `per_layer=True`"),
        ({"per_layer": True, "layer_groups": ["1"]}, TypeError, "`layer_groups`"),
    ],
)
def test_bad_per_layer_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        StiffnessMonitor(**kwargs)


@pytest.mark.slow
def test_fit_logs_layers_and_an_image_that_grows_with_the_epochs(tmp_path):
    monitor = StiffnessMonitor(per_layer=True, num_samples=20, groups=("val_val",), figures="all")
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(Classifier(), datamodule=TinyData())
    events = read_events(trainer.logger.log_dir)
    tags = events.Tags()
    layer_tags = [t for t in tags["scalars"] if "/layer/" in t]
    assert layer_tags and all(len(events.Scalars(t)) == 3 for t in layer_tags)
    images = events.Images("sensitivity/stiffness/val_val/per_layer_cosine")
    assert len(images) == 3 and images[0].encoded_image_string != images[-1].encoded_image_string
    # the image's columns are the measured epochs so far: 1, 2, 3
    assert [e for e, _ in monitor._layer_history["val_val"]] == [0, 1, 2]
