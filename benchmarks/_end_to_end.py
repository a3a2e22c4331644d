"""End-to-end rows: wall time of a 3-epoch fit of a reference model with and without the default monitors.

The reference MLP on synthetic MNIST-sized data, the reference ``SmallCNN`` on synthetic CIFAR-sized data (random
images, labels from a fixed random linear teacher so that training is meaningful); nothing is downloaded. Both
fits use the same logger type and settings, so the difference is the monitors: their measurements, TensorBoard
images/histograms and artifact files.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.models import MLP, LitClassifier, SmallCNN

#: The reference models of the end-to-end rows: (label, input shape, factory).
MODELS = {
    "mlp": ("lightning_sensitivity.models.MLP (784-256-256-10), MNIST-sized", (1, 28, 28),
            lambda: MLP(784, 10, hidden=(256, 256))),
    "cnn": ("lightning_sensitivity.models.SmallCNN (conv32-conv64-fc128, BatchNorm), CIFAR-sized", (3, 32, 32),
            lambda: SmallCNN(3, 10, input_size=32)),
}  # fmt: skip


def _loaders(num_train: int, shape: tuple[int, ...] = (1, 28, 28)) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    dim = 1
    for size in shape:
        dim *= size
    teacher = torch.randn(dim, 10, generator=g)
    num_val = max(num_train // 6, 256)
    x = torch.rand(num_train + num_val, *shape, generator=g)
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    train = TensorDataset(x[:num_train], y[:num_train])
    val = TensorDataset(x[num_train:], y[num_train:])
    return DataLoader(train, batch_size=128, shuffle=True, generator=g), DataLoader(val, batch_size=512)


#: The Callback hooks a monitor may spend time in (all of Lightning's that take the trainer and the module).
HOOKS = tuple(name for name in dir(pl.Callback) if name.startswith("on_") or name in ("setup", "teardown"))


def _time_hooks(callback: pl.Callback, spent: list[float]) -> None:
    """Make ``callback``'s hooks add their wall seconds to ``spent[0]`` (instance attributes, which Lightning's
    ``getattr(callback, hook)`` finds before the class's methods)."""

    def timed(hook: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return run

    for name in HOOKS:
        setattr(callback, name, timed(getattr(callback, name)))


def fit_seconds(
    monitors: bool | tuple[str, ...],
    num_train: int,
    epochs: int,
    figures: str = "log_spaced",
    device: torch.device | None = None,
    model: str = "mlp",
    hook_seconds: list[float] | None = None,
) -> float:
    """Wall seconds of ``trainer.fit`` (data and model built outside the timed span).

    ``figures`` is passed to every monitor: the default, or ``"none"`` to time the measurements without images.
    ``device``: a CUDA device fits with ``accelerator="gpu"`` on it (the loaders stay on the CPU, as in a real
    run); None or the CPU with ``accelerator="cpu"``. ``model``: a key of :data:`MODELS`. ``monitors``: True for
    the three default monitors, or the class names of some of them (to split the cost). ``hook_seconds``: a list
    that gets the wall seconds the monitors spent in their own hooks appended (their measurements, images and
    artifacts; what the fit costs beyond that is indirect: caches, memory, the machine's noise).
    """
    cuda = device is not None and device.type == "cuda"
    pl.seed_everything(0, verbose=False)
    _, shape, factory = MODELS[model]
    train, val = _loaders(num_train, shape)
    module = LitClassifier(factory(), lr=0.05)
    monitor_classes = (JacobianNormMonitor, TransitionMonitor, StiffnessMonitor)
    if not isinstance(monitors, bool):
        monitor_classes = tuple(cls for cls in monitor_classes if cls.__name__ in monitors)
    callbacks = [cls(figures=figures) for cls in monitor_classes] if monitors else []
    spent = [0.0]
    for callback in callbacks:
        _time_hooks(callback, spent)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if cuda else "cpu",
            devices=[device.index or 0] if cuda else 1,
            logger=TensorBoardLogger(tmp, name="bench"),
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(module, train, val)
        seconds = time.perf_counter() - start
    if hook_seconds is not None:
        hook_seconds.append(spent[0])
    return seconds
