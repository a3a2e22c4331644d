"""The reliability suite's pieces: the seeded reference fit and bitwise comparisons of its outcome, a trainer
preset and the figures the tests establish. Data, nets and modules come from the harness (``tests/helpers.py``).

The data (:class:`helpers.ReliableData`) is built so that any disturbance of training shows: the training loader
shuffles (a sampler seeded from the global torch generator), every item is augmented with draws from the global
torch, numpy *and* python generators, and Dropout draws from the torch generator during training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import lightning.pytorch as pl
import numpy as np
from helpers import SENSITIVITY, ReliableData, ReliableModule, csv_series, rng_states
from torch import Tensor

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor


def all_monitors(num_samples: int = 24, **common: Any) -> list[pl.Callback]:
    """The three monitors, every epoch and at initialisation, with every stiffness group, sized for tests."""
    common = {"num_samples": num_samples, **common}
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=3, num_points=96, **common),
        StiffnessMonitor(num_distance_bins=6, **common),
    ]


def make_trainer(root: Path, callbacks: list[pl.Callback], *, logger: str | Any = "csv", **kwargs: Any) -> pl.Trainer:
    """:func:`helpers.make_trainer` with this suite's defaults: 3 epochs, a CSV logger, a log line every step."""
    return helpers.make_trainer(root, callbacks, logger=logger, **{"max_epochs": 3, "log_every_n_steps": 1, **kwargs})


@dataclass
class FitRecord:
    trainer: pl.Trainer
    module: pl.LightningModule
    rng: dict[str, Any]
    metrics: dict[str, list[tuple[str, str]]]


def seeded_fit(
    root: Path,
    callbacks: list[pl.Callback],
    *,
    net: str = "mlp",
    optimizer: str = "adam",
    data: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> FitRecord:
    """The seeded reference fit: ``accumulate_grad_batches=2``, gradient clipping, StepLR, shuffled augmented data."""
    pl.seed_everything(0, verbose=False)
    module = ReliableModule(net, optimizer)
    options = {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5, **trainer_kwargs}
    trainer = make_trainer(root, callbacks, **options)
    trainer.fit(module, datamodule=ReliableData(**(data or {})))
    rng = rng_states()
    return FitRecord(trainer, module, rng, csv_series(trainer.logger.log_dir))


def bitwise_equal(a: Any, b: Any) -> bool:
    """Equality of nested containers of tensors/arrays, comparing tensors byte for byte (so -0.0 != 0.0, NaN == NaN)."""
    if isinstance(a, Tensor):
        return (
            isinstance(b, Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.detach().cpu().contiguous().numpy().tobytes() == b.detach().cpu().contiguous().numpy().tobytes()
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def training_differences(a: FitRecord, b: FitRecord) -> list[str]:
    """Everything in which two fits differ, outside the sensitivity metrics; ``[]`` when bitwise identical."""
    diffs = []
    state_a, state_b = a.module.state_dict(), b.module.state_dict()
    if state_a.keys() != state_b.keys():
        diffs.append("state_dict keys")
    diffs += [f"state_dict:{k}" for k in state_a if k in state_b and not bitwise_equal(state_a[k], state_b[k])]
    for i, (opt_a, opt_b) in enumerate(zip(a.trainer.optimizers, b.trainer.optimizers, strict=True)):
        if not bitwise_equal(copy.deepcopy(opt_a.state_dict()), copy.deepcopy(opt_b.state_dict())):
            diffs.append(f"optimizer:{i}")
    sched_a = [c.scheduler.state_dict() for c in a.trainer.lr_scheduler_configs]
    sched_b = [c.scheduler.state_dict() for c in b.trainer.lr_scheduler_configs]
    if not bitwise_equal(sched_a, sched_b):
        diffs.append("lr_scheduler")
    for key in sorted(a.metrics.keys() | b.metrics.keys()):
        if a.metrics.get(key) != b.metrics.get(key):
            diffs.append(f"metric:{key}")
    cm_a = {k: v for k, v in a.trainer.callback_metrics.items() if not k.startswith(SENSITIVITY)}
    cm_b = {k: v for k, v in b.trainer.callback_metrics.items() if not k.startswith(SENSITIVITY)}
    if not bitwise_equal(cm_a, cm_b):
        diffs.append("callback_metrics")
    if a.trainer.global_step != b.trainer.global_step:
        diffs.append("global_step")
    diffs += [f"rng:{name}" for name in ("torch", "numpy", "python") if not bitwise_equal(a.rng[name], b.rng[name])]
    return diffs


def sensitivity_keys(trainer: pl.Trainer) -> set[str]:
    return {k for k in trainer.callback_metrics if k.startswith(SENSITIVITY)}


def report_figure(name: str, value: Any) -> None:
    """Record a figure a test establishes (for ``docs/reliability.md``).

    Printed (visible with ``pytest -s``) and, when ``RELIABILITY_FIGURES`` names a file, merged into that JSON file.
    """
    import json
    import os

    print(f"[reliability] {name} = {value}")
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        figures = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        figures[name] = value
        Path(path).write_text(json.dumps(figures, indent=1, sort_keys=True))
