"""Activation checkpointing inside the model: every quantity equals the same model without it, and training's
checkpointing (recompute in the backward) is back in place after a measurement."""

import pytest
import torch
import torch.utils.checkpoint as checkpoint_module
from helpers import assert_unchanged, state_snapshot
from oracles import gram_loop, jacobian_norm_loop
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from lightning_sensitivity.functional import (
    ellipse_trajectories,
    jacobian_norm,
    loss_gradient_gram,
    transition_counts,
)


class Net(nn.Module):
    """Two ReLU blocks and a head; ``mode`` says how the blocks are checkpointed."""

    def __init__(self, mode: str = "plain") -> None:
        super().__init__()
        self.mode = mode
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Linear(5, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        )
        self.head = nn.Linear(8, 3)
        if mode.startswith("wrapper"):
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

            impl = CheckpointImpl.REENTRANT if mode == "wrapper_reentrant" else CheckpointImpl.NO_REENTRANT
            for i in range(len(self.blocks)):
                self.blocks[i] = checkpoint_wrapper(self.blocks[i], checkpoint_impl=impl)
        if mode == "composable":
            from torch.distributed._composable import checkpoint as composable_checkpoint

            for block in self.blocks:
                composable_checkpoint(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("non_reentrant", "reentrant"):
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=self.mode == "reentrant")
        elif self.mode == "sequential":
            x = checkpoint_sequential(self.blocks, 2, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.head(x)


MODES = ["non_reentrant", "reentrant", "sequential", "wrapper", "wrapper_reentrant", "composable"]


def _pair(mode: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = Net().double()
    checkpointed = Net(mode).double()
    # The wrappers rename the state dict's keys back to the plain names; copy parameter by parameter in order.
    with torch.no_grad():
        for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
            q.copy_(p)
    return plain, checkpointed


@pytest.mark.parametrize("mode", MODES)
def test_every_quantity_equals_the_model_without_checkpointing(mode):
    plain, model = _pair(mode)
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    traj = ellipse_trajectories(torch.randn(3, 3, 5, dtype=torch.float64) * 3, 30)
    before = state_snapshot(model)

    jac = jacobian_norm(model, x)
    assert torch.equal(jac, jacobian_norm(plain, x))
    torch.testing.assert_close(jac, jacobian_norm_loop(plain, x))
    gram = loss_gradient_gram(model, x, y)
    assert torch.equal(gram, loss_gradient_gram(plain, x, y))
    torch.testing.assert_close(gram.double(), gram_loop(plain, x, y))
    got, want = transition_counts(model, traj), transition_counts(plain, traj)
    assert got.num_units == want.num_units == 16
    assert torch.equal(got.activation, want.activation) and torch.equal(got.prediction, want.prediction)
    assert_unchanged(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_training_recomputes_as_before_after_a_measurement(mode):
    plain, model = _pair(mode)
    original = checkpoint_module._checkpoint_impl
    x = torch.randn(4, 5, dtype=torch.float64)
    jacobian_norm(model, x)
    loss_gradient_gram(model, x, torch.zeros(4, dtype=torch.long))
    assert checkpoint_module._checkpoint_impl is original
    # The training backward still recomputes the checkpointed blocks (counted by forward hooks on their Linear).
    calls = []
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    first.register_forward_hook(lambda *_: calls.append(1))
    x.requires_grad_(True)  # the reentrant variant recomputes only for inputs that require grad
    model(x).sum().backward()
    assert len(calls) == 2
    plain(x).sum().backward()
    for p, q in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_a_failing_measurement_still_restores_checkpointing():
    _, model = _pair("non_reentrant")
    original = checkpoint_module._checkpoint_impl
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        jacobian_norm(model, torch.randn(3, 4, dtype=torch.float64))  # wrong input width
    assert checkpoint_module._checkpoint_impl is original


def test_overlapping_measurements_in_threads_restore_checkpointing():
    # DDP ranks run as threads in tests (and a measurement may run in a worker thread): A enters, B enters, A leaves,
    # B leaves. Saving and restoring per call would leave B's "original" -- A's plain patch -- in place for good.
    import threading

    from lightning_sensitivity.functional._purity import checkpointing_off

    before = {name: getattr(checkpoint_module, name) for name in ("checkpoint", "_checkpoint_impl")}
    model = torch.nn.Linear(2, 2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with checkpointing_off(model):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with checkpointing_off(model):
            b_in.set()
            a_out.wait(5)
            assert checkpoint_module._checkpoint_impl is not before["_checkpoint_impl"]  # still plain for B

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {name: getattr(checkpoint_module, name) for name in before} == before
