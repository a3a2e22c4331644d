"""Seeded fits of models with aliased, shared, tied, frozen and compiled parts end bitwise identical with and without
all three monitors, and after training every parameter slot still holds the same ``nn.Parameter`` the optimizer
updates (an aliased head once silently stopped training after the first measurement)."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, parameter_identity
from torch import nn

from reliability._helpers import all_monitors, seeded_fit, training_differences

pytestmark = pytest.mark.slow


def _fit(root, arch: str, callbacks):
    torch.manual_seed(0)
    net = ARCHITECTURES[arch]()
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    record = seeded_fit(root, callbacks, net=net)
    return record, net, initial


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_fit_is_bitwise_identical_with_all_monitors(tmp_path, arch):
    reference, _, _ = _fit(tmp_path / "plain", arch, [])
    monitors = all_monitors()
    monitored, net, initial = _fit(tmp_path / "monitored", arch, monitors)
    assert training_differences(reference, monitored) == []
    assert all(m.measured_epochs == [0, 1, 2, 3] for m in monitors)
    slots = parameter_identity(net)
    assert all(kind is nn.Parameter for _, _, kind, _ in slots)
    optimized = {id(p) for group in monitored.trainer.optimizers[0].param_groups for p in group["params"]}
    for name, p in net.named_parameters():
        assert id(p) in optimized, name
        # every trainable parameter was still trained after the first measurement (at epoch 0)
        assert torch.equal(p.detach(), initial[name]) != p.requires_grad, name
