"""``TransitionMonitor(num_trajectories=None)`` sized to the fit: its measurements' points a bounded share of the
training's forward passes."""

from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_sensitivity import TransitionMonitor
from lightning_sensitivity.callbacks.transitions import RUN_SHARE, run_points, sized_trajectories


def _trainer(num_examples: int, batch_size: int, max_epochs: int, world_size: int = 1) -> SimpleNamespace:
    loader = DataLoader(TensorDataset(torch.zeros(num_examples, 1)), batch_size=batch_size)
    return SimpleNamespace(
        num_training_batches=len(loader), train_dataloader=loader, max_epochs=max_epochs, world_size=world_size
    )


def test_run_points_bound_the_share_of_the_fit():
    assert run_points(60_000, 3, 4) == int(RUN_SHARE * 3 * 60_000 * 3 / 4)
    assert run_points(None, 3, 4) is None and run_points(60_000, -1, 4) is None and run_points(60_000, 3, 0) is None
    # the reference MLP (512 units) on a 3-epoch fit of 60 000 examples, 4 measurements: 4 trajectories, not 16
    assert sized_trajectories(960, 512, run_points(60_000, 3, 4)) == 4
    assert sized_trajectories(960, 512, run_points(60_000, 100, 8)) == 16  # 100 epochs, log-spaced
    assert sized_trajectories(960, 512, run_points(100, 1, 2)) == 4  # never fewer than 4
    assert sized_trajectories(960, 512, None) == sized_trajectories(960, 512) == 16  # no fit: the units decide


def test_fit_points_read_the_fit_and_the_schedule():
    every = TransitionMonitor()  # at init and after every epoch: 4 measurements in 3 epochs
    assert every._fit_points(_trainer(60_000, 128, 3)) == run_points(469 * 128, 3, 4)
    assert every._fit_points(_trainer(30_000, 128, 3, world_size=2)) == run_points(235 * 128 * 2, 3, 4)
    sparse = TransitionMonitor(every_n_epochs=3, at_init=False)  # once, after the 3rd epoch
    assert sparse._fit_points(_trainer(60_000, 128, 3)) == run_points(469 * 128, 3, 1)
    unknown = SimpleNamespace(num_training_batches=float("inf"), train_dataloader=None, max_epochs=3)
    assert every._fit_points(unknown) is None and every._fit_points(SimpleNamespace()) is None
