"""``SensitivityMonitor``: the schedule, the probe sets, the state and the measure -> log loop of every monitor.

A subclass says which probe sets it needs and turns a model plus probe tensors into a :class:`Measurement`
(scalars, histograms, figures, artifact arrays); everything Lightning-specific lives here.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from lightning_sensitivity.callbacks._data import TRAIN, VAL, find_dataset, has_source
from lightning_sensitivity.callbacks._output import log_scalars, write_artifact, write_run_summary, write_step
from lightning_sensitivity.callbacks._progress import ProgressFactory, progress_factory
from lightning_sensitivity.functional import predict_logits  # noqa: F401 (re-exported: subclasses use it)
from lightning_sensitivity.functional._model import unwrap_model
from lightning_sensitivity.logging import find_tensorboard_writer
from lightning_sensitivity.probes import BatchTransform, ProbeSet, draw_probe_set, probe_set_from_tensors
from lightning_sensitivity.schedules import resolve_schedule

ForwardFn = Callable[[pl.LightningModule, Tensor], Tensor]

__all__ = ["SensitivityMonitor", "SensitivityWarning", "Measurement"]


_MEASURE_HINT = (
    "The model must map a batch of probe inputs to logits [N, C] (pass `forward_fn=` otherwise) and the probe data "
    "must fit it (see `batch_transform=`, `val_data=`, `train_data=`)."
)
_DRAW_HINT = (
    "The data must be a map-style dataset whose items collate to (inputs, targets) (see `batch_transform=`); or pass "
    "the probe tensors directly with `val_data=(inputs, targets)` / `train_data=(inputs, targets)`."
)
_OUTPUT_HINT = "Check that the log directory is writable; the scalars were logged."
# Strategies that shard or flatten the parameters: one rank cannot evaluate the whole model by `functional_call`.
# Matched by class name along the MRO, so subclasses count and the optional packages are never imported.
UNSUPPORTED_STRATEGIES = ("FSDPStrategy", "XLAFSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


class SensitivityWarning(UserWarning):
    """A measurement failed or produced non-finite values; training goes on."""


@dataclass
class Measurement:
    """What one measurement produced. Keys of ``scalars``/``histograms``/``figures`` are full TensorBoard tags."""

    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)
    figures: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)  # (tag, () -> Figure), rank 0 only
    arrays: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class _ForwardFnModule(nn.Module):
    """``forward_fn(module, x)`` as a module, so ``functional_call`` still swaps the wrapped module's parameters."""

    def __init__(self, module: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.module = module
        self._forward_fn = forward_fn

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_fn(self.module, x)  # type: ignore[arg-type]


def check_int(value: Any, name: str, *, minimum: int, allow_none: bool = False) -> None:
    """Validate an int argument (bools refused), naming it and the value got."""
    kind = f"an int >= {minimum}" if minimum != 1 else "a positive int"
    kind += " or None" if allow_none else ""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` expected {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` expected {kind}, got {value}")


_FIGURES = {True: "all", False: "none", "all": "all", "log_spaced": "log_spaced", "none": "none"}
_FIGURES_EXPECTED = "`figures` expected 'log_spaced', 'all', 'none' or a bool"


def _check_figures(figures: Any) -> str:
    if not isinstance(figures, (bool, str)):
        raise TypeError(f"{_FIGURES_EXPECTED}, got {type(figures).__name__} {figures!r}")
    if figures not in _FIGURES:
        raise ValueError(f"{_FIGURES_EXPECTED}, got {figures!r}")
    return _FIGURES[figures]


def _check_data(data: Any, name: str) -> None:
    if data is None:
        return
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError(f"`{name}` expected a pair of tensors (inputs, targets) or None, got {type(data).__name__}")
    x, y = data
    if x.dim() < 2 or not x.is_floating_point() or x.shape[0] == 0:
        raise ValueError(
            f"`{name}` expected floating inputs of shape [N, *input_shape], got {x.dtype} {tuple(x.shape)}"
        )
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"`{name}` expected integer targets of shape [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")


class SensitivityMonitor(Callback):
    """Base class of the sensitivity monitors: when to measure, on which probe sets, and where results go.

    Measurements are taken (1) before training (epoch 0, when ``at_init``), (2) at the end of every scheduled training
    epoch during ``fit`` (epoch ``e + 1`` after training epoch ``e``), and (3) once per ``trainer.validate`` /
    ``trainer.test`` call; never during the sanity check. During ``fit`` scalars go to every logger at
    ``trainer.global_step`` and into ``trainer.callback_metrics``; under ``validate``/``test`` through
    ``pl_module.log`` so they are part of the returned dict. Images, histograms and artifacts are written by rank 0
    only, at the same step; artifacts of ``validate``/``test`` go to ``sensitivity/{quantity}.validate`` and
    ``sensitivity/{quantity}.test``, so they never replace those of the training run. Every rank computes (there
    is no collective), so nothing can hang under DDP.

    Unsupported setups disable the monitor for the run, with one warning, and training goes on: strategies that shard
    the parameters (FSDP, DeepSpeed, model parallel; see :data:`UNSUPPORTED_STRATEGIES`) and optimizers training
    tensors that are not registered parameters of the module (``functional_call`` cannot reach them).

    Probe sets are drawn lazily at the first measurement by indexing the datasets behind the trainer's loaders
    (explicit ``val_data``/``train_data``; a datamodule's ``train_eval_dataset`` -- un-augmented training examples --
    when it has one; the loaders of the datamodule, of the module's ``*_dataloader`` hooks, or passed to ``fit``;
    under ``trainer.test`` without validation data, the test data). The user's loaders are never iterated. Each
    ``fit`` starts a new run (fresh probe sets and schedule) unless a checkpoint is resumed, which restores both
    through :meth:`load_state_dict`.

    Args:
        every_n_epochs: measure every ``n`` completed epochs; ``None``: only at initialisation.
        epochs: explicit epochs to measure (``0`` = initialisation); overrides the other schedule arguments.
        log_spaced: measure at epochs ``1, 2, 4, 8, ...`` instead of every ``n``.
        at_init: also measure before the first training step (epoch 0).
        num_samples: examples per probe set, drawn class-balanced once and kept for the whole run.
        seed: seed of the probe-set draw (private generators; the training run's random streams are untouched).
        val_data: explicit held-out probe tensors ``(inputs, targets)``; default: drawn from the validation data.
        train_data: explicit training probe tensors; default: drawn from the training data.
        batch_transform: maps a collated batch to ``(inputs, targets)``; default handles ``(x, y, ...)`` and dicts
            with input/target-like keys.
        forward_fn: ``forward_fn(pl_module, x) -> logits``; default ``pl_module(x)``.
        chunk_size: examples per chunk in the functional layer (bounds memory); ``None``: all at once.
        figures: when to render the TensorBoard images (heatmaps, curves, bar charts), which cost far more than the
            measurements themselves (matplotlib, ~0.1-0.5 s each): ``"log_spaced"`` (default) at measured epochs
            0, 1, 2, 4, 8, ... and at every ``validate``/``test`` call; ``"all"`` (or True) at every measurement;
            ``"none"`` (or False) never. Scalars, histograms and artifacts are written at every measurement either
            way, and ``python -m lightning_sensitivity.report`` draws every epoch from the artifacts.

    Raises:
        TypeError / ValueError: for a bad argument, naming it and the value got.
        MisconfigurationException: in ``setup`` when a needed probe set has no data source.

    Example::

        class MyMonitor(SensitivityMonitor):
            quantity = "logit_norm"

            def _compute(self, model, probes, progress, epoch):
                logits = predict_logits(model, probes["val"].inputs, self.chunk_size)
                return Measurement(scalars={"sensitivity/logit_norm/val/mean": float(logits.norm(dim=1).mean())})
    """

    quantity: str = ""  # artifact folder and metric prefix `sensitivity/{quantity}/...`

    def __init__(
        self,
        *,
        every_n_epochs: int | None = 1,
        epochs: Sequence[int] | None = None,
        log_spaced: bool = False,
        at_init: bool = True,
        num_samples: int = 256,
        seed: int = 0,
        val_data: tuple[Tensor, Tensor] | None = None,
        train_data: tuple[Tensor, Tensor] | None = None,
        batch_transform: BatchTransform | None = None,
        forward_fn: ForwardFn | None = None,
        chunk_size: int | None = None,
        figures: bool | str = "log_spaced",
    ) -> None:
        self._schedule = resolve_schedule(every_n_epochs, epochs, log_spaced, at_init)
        self.figures = _check_figures(figures)
        check_int(num_samples, "num_samples", minimum=1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` expected an int, got {type(seed).__name__} {seed!r}")
        _check_data(val_data, "val_data")
        _check_data(train_data, "train_data")
        for name, fn in (("batch_transform", batch_transform), ("forward_fn", forward_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"`{name}` expected a callable or None, got {type(fn).__name__} {fn!r}")
        check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
        self.num_samples = num_samples
        self.seed = seed
        self.batch_transform = batch_transform
        self.forward_fn = forward_fn
        self.chunk_size = chunk_size
        self._explicit: dict[str, ProbeSet] = {}
        for split, data in ((VAL, val_data), (TRAIN, train_data)):
            if data is not None:
                self._explicit[split] = probe_set_from_tensors(data[0], data[1], num_samples, seed=seed)
        self._probes: dict[str, ProbeSet] = dict(self._explicit)
        self._measured: set[int] = set()
        self._warned: set[str] = set()
        self._disabled: str | None = None
        self._summary_writer_id: int | None = None

    # ---------------------------------------------------------------- for subclasses
    def _splits(self) -> tuple[frozenset[str], frozenset[str]]:
        """``(required, optional)`` probe splits."""
        return frozenset({VAL}), frozenset()

    def _compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        raise NotImplementedError

    def _state_key_args(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "seed": self.seed}

    def _config(self) -> dict[str, Any]:
        return {
            "schedule": repr(self._schedule),
            "num_samples": self.num_samples,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "figures": self.figures,
        }

    def _draw_figures(self, epoch: int, fitting: bool) -> bool:
        if self.figures == "all" or (self.figures == "log_spaced" and not fitting):
            return True
        # epoch is 0 or a power of two
        return self.figures == "log_spaced" and (epoch & (epoch - 1)) == 0

    def _attempt(
        self, what: str, fn: Callable[[], Any], epoch: int, hint: str = _MEASURE_HINT, key: str | None = None
    ) -> Any:
        """Run one part of a measurement; on failure warn once per ``key`` (default ``what``) and return None."""
        try:
            return fn()
        except Exception as err:  # a failing measurement must never stop the training run
            self._warn_once(
                key or what,
                f"{type(self).__name__} could not produce {what} at epoch {epoch}: {type(err).__name__}: {err}. "
                f"{hint} Training continues; further failures of this kind are not reported.",
            )
            return None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=SensitivityWarning)

    # ---------------------------------------------------------------- Lightning API
    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_key_args())

    def state_dict(self) -> dict[str, Any]:
        probes = {
            split: {"inputs": p.inputs, "targets": p.targets, "indices": p.indices} for split, p in self._probes.items()
        }
        return {"version": 1, "seed": self.seed, "measured_epochs": sorted(self._measured), "probes": probes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._measured = {int(e) for e in state_dict.get("measured_epochs", [])}
        for split, p in state_dict.get("probes", {}).items():
            self._probes[split] = ProbeSet(p["inputs"].cpu(), p["targets"].cpu().long(), p["indices"].cpu().long())

    @property
    def measured_epochs(self) -> list[int]:
        """Epochs already measured during ``fit`` (kept across a resume)."""
        return sorted(self._measured)

    @property
    def probe_sets(self) -> dict[str, ProbeSet]:
        """The probe sets drawn so far (``"val"``, ``"train"``), on the CPU."""
        return dict(self._probes)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in (TrainerFn.FITTING, TrainerFn.VALIDATING, TrainerFn.TESTING):
            return
        if stage == TrainerFn.FITTING:
            # A new run. A resumed run gets its probe sets and measured epochs back from `load_state_dict`, which
            # Lightning calls after `setup`.
            self._probes = dict(self._explicit)
            self._measured.clear()
            self._warned.clear()
        self._disabled = None
        strategy = unsupported_strategy(getattr(trainer, "strategy", None))
        if strategy is not None:
            self._disable(
                f"the {strategy} shards or wraps the model's parameters, so no rank can evaluate the whole model "
                "through `torch.func.functional_call`. Measure in a run with `strategy='ddp'` or on a single device"
            )
            return
        if trainer.world_size > 1:
            # The values are identical on every rank (same probe set, same weights), so `self.log` under
            # validate/test does not sync them -- a collective there could hang if one rank failed to measure.
            warnings.filterwarnings(
                "ignore", message=r"It is recommended to use `self\.log\('sensitivity/", category=PossibleUserWarning
            )
        required, _ = self._splits()
        missing = [s for s in sorted(required) if s not in self._probes and not has_source(trainer, pl_module, s)]
        if missing:
            hint = {
                VAL: "`val_data=(inputs, targets)`, a datamodule with `val_dataloader`, or `val_dataloaders=` to "
                "`trainer.fit`",
                TRAIN: "`train_data=(inputs, targets)` or a datamodule with `train_dataloader`",
            }
            needs = "; ".join(f"{s} data: pass {hint[s]}" for s in missing)
            raise MisconfigurationException(
                f"{type(self).__name__} needs {' and '.join(missing)} probe data, but the trainer has no such source "
                f"during `{stage}`. {needs}.{self._missing_hint(missing)}"
            )

    def _missing_hint(self, missing: list[str]) -> str:
        return ""

    def _disable(self, reason: str) -> None:
        self._disabled = reason
        self._warn_once("disabled", f"{type(self).__name__} is disabled for this run: {reason}. Training continues.")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hidden = unreachable_parameters(trainer, pl_module)
        if hidden and self._disabled is None:
            self._disable(
                f"the optimizers train {hidden} parameter tensor(s) that are not registered in the LightningModule "
                "(e.g. kept in a plain list or dict, or outside the module), so `torch.func.functional_call` cannot "
                "reach them and the measurements would be wrong. Register them as `nn.Parameter` attributes or in "
                "`nn.ParameterList`/`nn.ModuleList`"
            )
        self._maybe_measure_fit(trainer, pl_module, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch counter is incremented after this hook: the epoch just finished is completed epoch + 1.
        self._maybe_measure_fit(trainer, pl_module, trainer.current_epoch + 1)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._measure(trainer, pl_module, trainer.current_epoch, fitting=False)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.TESTING:
            self._measure(trainer, pl_module, trainer.current_epoch, fitting=False)

    # ---------------------------------------------------------------- the loop
    def _maybe_measure_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if self._disabled is not None or trainer.sanity_checking:
            return
        if epoch in self._measured or not self._schedule(epoch):
            return
        self._measure(trainer, pl_module, epoch, fitting=True)
        self._measured.add(epoch)

    def _ensure_probes(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, ProbeSet]:
        required, optional = self._splits()
        for split in sorted(required | optional):
            if split in self._probes:
                continue
            probe = self._attempt(
                f"the {split} probe set",
                lambda s=split: self._draw(trainer, pl_module, s),
                epoch,
                _DRAW_HINT,
                key="probe set",  # one root cause (the data's layout) usually breaks every split alike
            )
            if probe is None:
                continue
            if len(probe) < self.num_samples:
                self._warn_once(
                    f"small {split}",
                    f"{type(self).__name__}: the {split} probe set has {len(probe)} examples, fewer than "
                    f"`num_samples={self.num_samples}`, because the {split} data is that small; using all of it.",
                )
            self._probes[split] = probe
        return {s: p for s, p in self._probes.items() if s in required | optional}

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> ProbeSet | None:
        found = find_dataset(trainer, pl_module, split)
        if found is None:
            if split in self._splits()[0]:
                raise MisconfigurationException(f"no {split} data source; pass `{split}_data=(inputs, targets)`")
            return None
        dataset, collate_fn = found
        return draw_probe_set(
            dataset, self.num_samples, seed=self.seed, batch_transform=self.batch_transform, collate_fn=collate_fn
        )

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        # Measure the original forward, not a torch.compile'd wrapper (its graph cannot take swapped parameters).
        module = unwrap_model(pl_module)
        return module if self.forward_fn is None else _ForwardFnModule(module, self.forward_fn)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, *, fitting: bool) -> None:
        if self._disabled is not None:
            return
        probes = self._ensure_probes(trainer, pl_module, epoch)
        required, _ = self._splits()
        if not required <= probes.keys():
            return
        device = pl_module.device
        on_device = {split: p.to(device) for split, p in probes.items()}
        enabled = trainer.is_global_zero and getattr(trainer.progress_bar_callback, "is_enabled", False)
        progress = progress_factory(f"{type(self).__name__} epoch {epoch}", enabled)
        with _eager():
            result = self._attempt(
                self.quantity, lambda: self._compute(self._model(pl_module), on_device, progress, epoch), epoch
            )
        if result is None:
            return
        scalars = {k: float(v) for k, v in result.scalars.items()}
        bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
        if bad:
            self._warn_once(
                f"non-finite {self.quantity}",
                f"{type(self).__name__}: non-finite values at epoch {epoch} for {', '.join(bad)}; they are not logged. "
                "The model may have diverged (check the learning rate) or its output may overflow in its dtype.",
            )
        scalars = {k: v for k, v in scalars.items() if math.isfinite(v)}
        step = trainer.global_step
        log_scalars(trainer, pl_module, scalars, step, fitting)
        if trainer.is_global_zero:
            self._attempt(
                "its TensorBoard output",
                lambda: self._write_tensorboard(trainer, result, step, probes, self._draw_figures(epoch, fitting)),
                epoch,
                _OUTPUT_HINT,
            )
            self._attempt(
                "its artifact file",
                lambda: self._write_artifact(trainer, result, epoch, step, fitting),
                epoch,
                _OUTPUT_HINT,
            )

    def _write_tensorboard(
        self, trainer: pl.Trainer, result: Measurement, step: int, probes: dict[str, ProbeSet], figures: bool = True
    ) -> None:
        writer = find_tensorboard_writer(trainer)
        if writer is not None and self._summary_writer_id != id(writer):
            self._summary_writer_id = id(writer)
            config = {**self._config(), **{f"{s} probe size": len(p) for s, p in probes.items()}}
            write_run_summary(writer, type(self).__name__, config, self._layout_groups())
        write_step(trainer.loggers, result.histograms, result.figures if figures else (), step)

    def _layout_groups(self) -> tuple[str, ...]:
        return ()

    def _write_artifact(
        self, trainer: pl.Trainer, result: Measurement, epoch: int, step: int, fitting: bool = True
    ) -> None:
        # `trainer.validate`/`test` after `fit` share its epoch number (and often other weights, e.g. ckpt_path="best"):
        # their own folder keeps them from replacing the training run's file of that epoch.
        quantity = self.quantity if fitting else f"{self.quantity}.{trainer.state.fn.value}"
        write_artifact(trainer, quantity, epoch, step, result.arrays, {**self._config(), **result.meta})


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Run ``torch.compile``'d submodules eagerly: their compiled graphs cannot be differentiated through
    ``torch.func`` with swapped parameters, and the original forward is what should be measured."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def unsupported_strategy(strategy: Any) -> str | None:
    """The name of the unsupported strategy class ``strategy`` is (or derives from), else None."""
    names = {cls.__name__ for cls in type(strategy).__mro__}
    return next((name for name in UNSUPPORTED_STRATEGIES if name in names), None)


def unreachable_parameters(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """How many tensors the optimizers train that are not parameters of ``pl_module`` (invisible to functional_call)."""
    registered = {id(p) for p in pl_module.parameters()}
    trained = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
    return len(trained - registered)


def check_names(value: Any, name: str) -> list[str] | None:
    """Validate an optional sequence of display names (class or super-class names)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` expected a sequence of str or None, got {type(value).__name__} {value!r}")
    if not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{name}` expected a non-empty sequence of str, got {list(value)!r}")
    return list(value)
