"""``SensitivityMonitor``: when to measure, on which probe sets, and the measure -> log loop of every monitor.

A measurement reads top-down: a Lightning hook -> the schedule -> the probe sets (drawn once) -> the model as the
quantity needs it -> :meth:`SensitivityMonitor.compute` (one functional call per quantity, results named) -> the
writers (scalars to every logger; images, histograms and one artifact file on rank 0).

Adding a quantity is subclassing (see ``CONTRIBUTING.md`` and ``examples/custom_quantity.py``): set
:attr:`~SensitivityMonitor.quantity`, implement :meth:`~SensitivityMonitor.compute`, and optionally
:meth:`~SensitivityMonitor.probe_splits`, :meth:`~SensitivityMonitor.config`,
:meth:`~SensitivityMonitor.layout_groups` and :meth:`~SensitivityMonitor.layout_splits` (what the dashboard charts).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_callable, check_choice, check_int
from lightning_sensitivity.callbacks import _output
from lightning_sensitivity.callbacks._compat import (
    sharding_strategy,
    unreachable_parameters,
    unsupported_strategy,
)
from lightning_sensitivity.callbacks._data_sources import has_source, known_class_names, known_num_classes
from lightning_sensitivity.callbacks._distributed import Lockstep
from lightning_sensitivity.callbacks._loop import MEASURE_HINT, OUTPUT_ERROR_HINT, OUTPUT_HINT, MeasureLoop
from lightning_sensitivity.callbacks._model import ForwardFn, ModelCache
from lightning_sensitivity.callbacks.measurement import Measurement, SensitivityWarning
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import predict_logits  # noqa: F401 (re-exported: subclasses use it)
from lightning_sensitivity.functional.model import check_measure_dtype, check_output_key
from lightning_sensitivity.probes import (  # noqa: F401 (model_kwargs, probe_shard: re-exported for subclasses)
    BatchTransform,
    ProbeSet,
    check_probe_data,
    model_kwargs,
    probe_set_from_data,
    probe_shard,
)
from lightning_sensitivity.schedules import resolve_schedule

__all__ = ["Measurement", "ProbeSplits", "SensitivityMonitor", "SensitivityWarning", "model_kwargs", "probe_shard"]

TRAIN, VAL, TEST = keys.TRAIN, keys.VAL, keys.TEST
#: ``(required, optional)`` probe splits a monitor uses, see :meth:`SensitivityMonitor.probe_splits`.
ProbeSplits = tuple[frozenset[str], frozenset[str]]

_CACHES = ("_summary_writers", "_models", "_lockstep")
_FIGURES = {True: "all", False: "none", "all": "all", "log_spaced": "log_spaced", "none": "none"}


class SensitivityMonitor(MeasureLoop, Callback):
    """Base class of the sensitivity monitors: when to measure, on which probe sets, and where results go.

    Measurements are taken (1) before training (epoch 0, when ``at_init``), (2) at the end of every scheduled training
    epoch during ``fit`` (epoch ``e + 1`` after training epoch ``e``), and (3) once per ``trainer.validate`` /
    ``trainer.test`` call, on probe sets drawn from the validation / test data and logged under ``.../val/...`` /
    ``.../test/...``; never during the sanity check. During ``fit`` scalars go to every logger at the step Lightning
    logs its own epoch-end metrics at, and into ``trainer.callback_metrics`` (a ``ModelCheckpoint`` or
    ``EarlyStopping`` monitoring a sensitivity key always finds a value: one is measured for them when validation
    runs before the first scheduled measurement); under ``validate``/``test`` through ``pl_module.log`` so they are
    part of the returned dict. Images, histograms and artifacts are written by rank 0 only, at the same step;
    artifacts of ``validate``/``test`` go to ``sensitivity/{quantity}.validate`` and ``sensitivity/{quantity}.test``.
    Under DDP the ranks share the work: each evaluates its shard of every probe set (:meth:`sharded`), the results
    are gathered, and every rank logs the same values. Each gather is preceded by an agreement of all ranks, so a
    failure on one rank drops that measurement on every rank instead of leaving the others waiting
    (:mod:`~lightning_sensitivity.callbacks._distributed`). Under strategies that shard the parameters (FSDP through
    ``FSDPStrategy`` or ``ModelParallelStrategy`` with ``fully_shard``) every quantity is measured through the
    sharded model itself, all ranks running the same forwards on their shards of the probe sets: input gradients
    by plain autograd, and under FSDP2 (``fully_shard``) loss-gradient Grams (stiffness) by the layerwise engine
    from activations and output gradients, which do not depend on how the parameters are sharded.

    Unsupported setups disable the monitor for the run, with one warning, and training goes on: DeepSpeed (and XLA
    FSDP), quantities of parameter gradients (stiffness) under FSDP1's flat parameters (``FSDPStrategy``), and
    optimizers training tensors that are not registered parameters of the module (``functional_call`` cannot reach
    them).

    Probe sets are drawn lazily at the first measurement from the datasets behind the trainer's loaders (explicit
    ``val_data``/``train_data``; a datamodule's ``train_eval_dataset`` -- un-augmented training examples -- when it
    has one; the loaders of the datamodule, of the module's ``*_dataloader`` hooks, or passed to ``fit``). Map-style
    datasets are indexed (class-balanced, seeded); streaming ``IterableDataset`` objects contribute the first examples
    of a fresh iterator over the dataset (for a shuffling stream, its first examples). The user's loaders are never
    iterated. Each ``fit`` starts a new run unless a checkpoint is resumed, which restores probe sets and schedule
    through :meth:`load_state_dict`.

    Args:
        every_n_epochs: measure every ``n`` completed epochs; ``None``: only at initialisation.
        epochs: explicit epochs to measure (``0`` = initialisation); overrides the other schedule arguments.
        log_spaced: measure at epochs ``1, 2, 4, 8, ...`` instead of every ``n`` (not together with
            ``every_n_epochs``).
        at_init: also measure before the first training step (epoch 0).
        num_samples: examples per probe set, drawn class-balanced once and kept for the whole run.
        seed: seed of the probe-set draw (private generators; the training run's random streams are untouched).
        val_data: explicit held-out probe data ``(inputs, targets)`` or ``(inputs, targets, model_kwargs)``;
            default: drawn from the validation data.
        train_data: explicit training probe data, likewise; default: drawn from the training data.
        batch_transform: maps a collated batch to ``(inputs, targets)`` or ``(inputs, targets, model_kwargs)``
            (``model_kwargs``: a dict of per-example tensors, first dimension N, passed to the model as keyword
            arguments); default handles ``(x, y, ...)`` and dicts with input/target-like keys.
        forward_fn: ``forward_fn(pl_module, x, **model_kwargs) -> logits``; default ``pl_module(x, **model_kwargs)``.
            With ``embed_fn``, ``x`` is the embedded input.
        embed_fn: ``embed_fn(pl_module, inputs) -> embedded`` for models of discrete inputs (token ids): evaluated
            with the current weights at every measurement; Jacobians and transition ellipses are then taken with
            respect to the embedding, and stiffness differentiates the composition (embedding table included).
        chunk_size: examples per chunk in the functional layer (bounds memory); ``None``: all at once.
        figures: when to render the images (heatmaps, curves, bar charts): ``"log_spaced"`` (default) at the 1st,
            2nd, 4th, 8th, ... measurement of a fit, at its last one and at every ``validate``/``test`` call;
            ``"all"`` (or True) at every measurement; ``"none"`` (or False) never. Scalars, histograms and artifacts
            are written at every measurement either way.
        val_dataloader_idx: which validation loader the val probe set is drawn from when there are several.
        measure_dtype: the least precise dtype measurements run in (default ``torch.float32``): a bf16/fp16 model
            (``precision="bf16-true"``) is measured on upcast copies of its weights, never touched; ``None``: in the
            model's own dtype (see :func:`~lightning_sensitivity.functional.measurement_options`).
        output_key: the part of the model's output holding the logits; default: the output itself when a tensor,
            ``"logits"`` of a dict or Hugging Face ``ModelOutput``, the first tensor of a tuple.

    With ``forward_fn``/``embed_fn``, the first measurement compares ``forward_fn(embed_fn(x))`` with
    ``pl_module(x)`` on two probe examples (when the module's own forward gives logits of that shape) and warns once
    with the largest difference if they disagree: the measurements would be of another function.

    Raises:
        TypeError / ValueError: for a bad argument, naming it and the value got.
        MisconfigurationException: in ``setup`` when a needed probe set has no data source.
    """

    #: Artifact folder and metric prefix ``sensitivity/{quantity}/...``.
    quantity: ClassVar[str] = ""
    #: Entries of :meth:`config` that identify the monitor in a checkpoint (its ``state_key``).
    state_fields: ClassVar[tuple[str, ...]] = ("num_samples", "seed")
    #: Whether :meth:`compute` differentiates with respect to the inputs (then ``embed_fn`` output is measured).
    differentiates_inputs: ClassVar[bool] = True
    #: Whether :meth:`compute` needs per-example gradients of the parameters (not measurable under FSDP1's flat
    #: parameters: the monitor is then disabled; under FSDP2 only through the layerwise engine).
    needs_parameter_gradients: ClassVar[bool] = False

    def __init__(
        self,
        *,
        every_n_epochs: int | None = 1,
        epochs: Sequence[int] | None = None,
        log_spaced: bool = False,
        at_init: bool = True,
        num_samples: int = 256,
        seed: int = 0,
        val_data: tuple[Any, ...] | None = None,
        train_data: tuple[Any, ...] | None = None,
        batch_transform: BatchTransform | None = None,
        forward_fn: ForwardFn | None = None,
        embed_fn: Callable[[pl.LightningModule, Tensor], Tensor] | None = None,
        chunk_size: int | None = None,
        figures: bool | str = "log_spaced",
        val_dataloader_idx: int = 0,
        measure_dtype: torch.dtype | None = torch.float32,
        output_key: str | int | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            expected = sorted(inspect.signature(type(self).__init__).parameters.keys() - {"self", "kwargs"})
            expected += sorted(inspect.signature(SensitivityMonitor.__init__).parameters.keys() - {"self", "unknown"})
            raise TypeError(
                f"{type(self).__name__} got an unexpected keyword argument {sorted(unknown)[0]!r}; expected one of "
                f"{', '.join(dict.fromkeys(expected))}"
            )
        self._schedule = resolve_schedule(every_n_epochs, epochs, log_spaced, at_init)
        self.figures = _FIGURES[check_choice(figures, "figures", ("log_spaced", "all", "none", True, False))]
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.seed = check_int(seed, "seed")
        self.batch_transform = check_callable(batch_transform, "batch_transform", "(batch) -> (x, y)", allow_none=True)
        self.forward_fn = check_callable(forward_fn, "forward_fn", "(module, x, **kw) -> logits", allow_none=True)
        self.embed_fn = check_callable(embed_fn, "embed_fn", "(module, inputs) -> embedded", allow_none=True)
        self.chunk_size = check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
        self.val_dataloader_idx = check_int(val_dataloader_idx, "val_dataloader_idx", minimum=0)
        self.measure_dtype = check_measure_dtype(measure_dtype)
        self.output_key = check_output_key(output_key)
        self._fn_checked = False
        self._explicit: dict[str, ProbeSet] = {}
        for split, data in ((VAL, val_data), (TRAIN, train_data)):
            if data is not None:
                check_probe_data(data, f"{split}_data")
                self._explicit[split] = probe_set_from_data(data, num_samples, seed=seed)
        self._probes: dict[str, ProbeSet] = dict(self._explicit)
        self._measured: set[int] = set()
        self._warned: set[str] = set()
        self._disabled: str | None = None
        self._summary_writers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._models = ModelCache()
        self._undrawn: tuple[Measurement, int] | None = None  # the last fit measurement, when its images were skipped
        self._bridged: set[int] = set()
        self._lockstep: Lockstep | None = None  # set during a measurement of a distributed run
        self._unavailable: set[str] = set()  # required splits without data under validate/test (skipped, said once)
        self._data_class_names: list[str] | None = None  # the data's class names, when it states them

    # ---------------------------------------------------------------- the subclass API
    def probe_splits(self) -> ProbeSplits:
        """``(required, optional)`` probe splits (``"val"``, ``"train"``) the quantity uses."""
        return frozenset({VAL}), frozenset()

    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        """Measure ``model`` on ``probes`` (already on the model's device) and name the results.

        ``model`` maps ``probes[s].inputs`` (embedded, when ``embed_fn`` is given and the quantity
        :attr:`differentiates_inputs`) to logits, called as ``model(x, **probes[s].model_kwargs)``; pass it to the
        functional layer, which leaves it untouched. Tags are built with :mod:`lightning_sensitivity.keys`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def measurable(self, probes: dict[str, ProbeSet]) -> bool:
        """Whether :meth:`compute` can run with the probe sets drawn (default: all required ones are there)."""
        return self.probe_splits()[0] <= probes.keys()

    def config(self) -> dict[str, Any]:
        """The monitor's configuration, declared once: written to TensorBoard, stored in artifacts, and (the
        :attr:`state_fields` entries) the checkpoint ``state_key``. Subclasses extend the dict."""
        return {
            "schedule": repr(self._schedule),
            "num_samples": self.num_samples,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "figures": self.figures,
            "measure_dtype": str(self.measure_dtype).removeprefix("torch."),
            "output_key": self.output_key,
        }

    def layout_groups(self) -> tuple[str, ...]:
        """Stiffness pair groups to put in the custom-scalars layout (empty for other quantities)."""
        return ()

    def layout_splits(self) -> dict[str, tuple[str, ...]]:
        """``{quantity: splits}`` the custom-scalars layout draws one line each for: the probe splits measured, and
        ``test`` (the held-out split under ``trainer.test``)."""
        required, optional = self.probe_splits()
        return {self.quantity: tuple(s for s in (TRAIN, VAL, TEST) if s in required | optional or s == TEST)}

    def check_classes(self, num_classes: int) -> None:
        """Refuse arguments that do not fit ``num_classes`` (called in ``setup`` when the data states it)."""

    def display_names(self, num_classes: int | None) -> list[str] | None:
        """The monitor's ``class_names``, else the data's (a datamodule's or module's ``class_names``/``classes``, the
        probe dataset's ``classes``), when they fit ``num_classes`` (else None, warned once: figures then use class
        indices)."""
        names = getattr(self, "class_names", None)
        own = names is not None
        if not own:  # the data's names (a datamodule's `class_names`, a dataset's `classes`)
            names = getattr(self, "_data_class_names", None)
        if names is None or num_classes is None:
            return None
        if len(names) != num_classes:
            if not own:  # the data's own names that do not fit its targets: indices, said once
                self.warn_once(
                    "data class names",
                    f"{type(self).__name__}: the data names {len(names)} classes but the model has {num_classes} "
                    "outputs; the figures use class indices (pass `class_names=` to name them).",
                )
                return None
            self.warn_once(
                "class names",
                f"{type(self).__name__}: `class_names` has {len(names)} names but the data has {num_classes} "
                "classes; the figures use class indices.",
            )
            return None
        return list(names)

    def skipped_for(self, missing: set[str]) -> str:
        """What is not measured without the probe splits ``missing`` (named in the note of ``validate``/``test``)."""
        return f"the {', '.join(sorted(missing))} measurements"

    def missing_hint(self, missing: list[str]) -> str:
        """Extra advice for the error raised in ``setup`` when splits in ``missing`` have no data source."""
        return ""

    def attempt(
        self, what: str, fn: Callable[[], Any], epoch: int, hint: str = MEASURE_HINT, key: str | None = None
    ) -> Any:
        """Run one part of a measurement; on failure warn once per ``key`` (default ``what``) and return None."""
        try:
            return fn()
        except Exception as err:  # a failing measurement must never stop the training run
            if hint == OUTPUT_HINT and not isinstance(err, OSError):
                hint = OUTPUT_ERROR_HINT  # name the real cause: not the log directory
            self.warn_once(
                key or what,
                f"{type(self).__name__} could not produce {what} at epoch {epoch}: {type(err).__name__}: {err}. "
                f"{hint} Training continues; further failures of this kind are not reported.",
            )
            return None

    def warn_once(self, key: str, message: str) -> None:
        """Warn (rank zero, :class:`SensitivityWarning`) the first time ``key`` is seen in this run."""
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message, category=SensitivityWarning)

    def measured_model(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module :meth:`compute` measures: the original forward (not a ``torch.compile`` wrapper), through
        ``forward_fn``/``embed_fn`` when given; the same object at every measurement."""
        embedded = self.embed_fn is not None and self.differentiates_inputs
        return self._models.get(pl_module, self.forward_fn, None if embedded else self.embed_fn)

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        # `ddp_spawn`/`ddp_notebook` and `copy.deepcopy` pickle the callbacks: the caches (weak references to the
        # TensorBoard writers and to the measured modules, a measurement's collective) are rebuilt, never sent.
        state = self.__dict__.copy()
        for name in _CACHES:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._summary_writers = weakref.WeakSet()
        self._models = ModelCache()
        self._lockstep = None

    # ---------------------------------------------------------------- Lightning API
    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it on every hook call of every callback (~18 times per training step for three monitors):
        # built once per value of the fields it is made of, not from `config()` each time.
        raw = attrgetter(*self.state_fields)(self)
        cached = self.__dict__.get("_state_key_cache")
        if cached is None or cached[0] != raw:
            config = self.config()
            cached = (raw, self._generate_state_key(**{name: config[name] for name in self.state_fields}))
            self.__dict__["_state_key_cache"] = cached
        return cached[1]

    @override
    def state_dict(self) -> dict[str, Any]:
        probes = {split: p.state() for split, p in self._probes.items()}
        return {"version": 2, "seed": self.seed, "measured_epochs": sorted(self._measured), "probes": probes}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version")
        if version not in (1, 2) or state_dict.get("seed", self.seed) != self.seed:
            self.warn_once(
                "state",
                f"{type(self).__name__}: the checkpoint's monitor state (version {version!r}, seed "
                f"{state_dict.get('seed')!r}) does not match this monitor (version 2, seed {self.seed}); its probe "
                "sets and measured epochs are not restored, fresh ones are drawn.",
            )
            return
        self._measured = {int(e) for e in state_dict.get("measured_epochs", [])}
        for split, p in state_dict.get("probes", {}).items():
            self._probes[split] = ProbeSet.from_state(p)

    @property
    def measured_epochs(self) -> list[int]:
        """Epochs already measured during ``fit`` (kept across a resume)."""
        return sorted(self._measured)

    @property
    def probe_sets(self) -> dict[str, ProbeSet]:
        """The probe sets drawn so far (``"val"``, ``"train"``, ``"test"``), on the CPU."""
        return dict(self._probes)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in (TrainerFn.FITTING, TrainerFn.VALIDATING, TrainerFn.TESTING):
            return
        if stage == TrainerFn.FITTING:
            # A new run; a resumed one gets probe sets and measured epochs back from `load_state_dict` (after setup).
            self._probes = dict(self._explicit)
            self._measured.clear()
            self._warned.clear()
            self._bridged.clear()
            self._undrawn = None
            self._fn_checked = False
        self._disabled = None
        strategy = unsupported_strategy(getattr(trainer, "strategy", None))
        if strategy is not None:
            self._disable(
                f"the {strategy} partitions the model's parameters behind its own engine, so no rank can evaluate "
                "the model for a measurement. Measure in a run with `strategy='ddp'`, FSDP or on a single device"
            )
            return
        sharding = sharding_strategy(getattr(trainer, "strategy", None))
        if sharding == "FSDPStrategy" and (self.forward_fn is not None or self.embed_fn is not None):
            self._disable(
                "`forward_fn`/`embed_fn` would call the LightningModule around the FSDPStrategy's wrapper, which "
                "gathers the sharded parameters. Measure the module's own forward (no `forward_fn`/`embed_fn`), "
                "or use `ModelParallelStrategy` with `fully_shard`, `strategy='ddp'` or a single device"
            )
            return
        if sharding == "FSDPStrategy" and self.needs_parameter_gradients:
            self._disable(
                f"the {sharding} (FSDP1) flattens the model's parameters into shards in which no per-parameter "
                f"tensor can be named, and {self.quantity} needs per-example gradients with respect to each. Use "
                "`ModelParallelStrategy` with `fully_shard` (FSDP2), `strategy='ddp'` or a single device (the "
                "input-gradient monitors -- Jacobian norms, transitions -- do run under it)"
            )
            return
        self._data_class_names = known_class_names(trainer, pl_module)
        num_classes = known_num_classes(trainer, pl_module)
        if num_classes is not None:
            self.check_classes(num_classes)
        required, optional = self.probe_splits()
        missing = [s for s in sorted(required) if s not in self._probes and not has_source(trainer, pl_module, s)]
        self._unavailable = set()
        available = {s: None for s in (required | optional) - set(missing)}
        if missing and stage != TrainerFn.FITTING and self.measurable(available):  # type: ignore[arg-type]
            # `trainer.validate`/`test` on a fresh trainer often has no training data: measure what it has.
            self._unavailable = set(missing)
            self.warn_once(
                f"unavailable {missing}",
                f"{type(self).__name__}: `trainer.{TrainerFn(stage).value}` has no {' or '.join(missing)} data, so "
                f"what needs it is skipped ({self.skipped_for(set(missing))}); the rest is measured. Pass "
                f"{' and '.join(f'`{s}_data=(inputs, targets)`' for s in missing)} to measure it too.",
            )
        elif missing:
            hint = {
                VAL: "`val_data=(inputs, targets)`, a datamodule with `val_dataloader`, or `val_dataloaders=` to "
                "`trainer.fit`",
                TRAIN: "`train_data=(inputs, targets)` or a datamodule with `train_dataloader`",
            }
            needs = "; ".join(f"{s} data: pass {hint[s]}" for s in missing)
            raise MisconfigurationException(
                f"{type(self).__name__} needs {' and '.join(missing)} probe data, but the trainer has no such source "
                f"during `{stage}`. {needs}.{self.missing_hint(missing)}"
            )

    def _disable(self, reason: str) -> None:
        self._disabled = reason
        self.warn_once("disabled", f"{type(self).__name__} is disabled for this run: {reason}. Training continues.")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Under a sharding strategy the model is called as it is (not through `functional_call`), and the
        # optimizers hold the shards while the modules may hold the gathered parameters: nothing to check.
        sharded = sharding_strategy(getattr(trainer, "strategy", None)) is not None
        hidden = 0 if sharded else unreachable_parameters(trainer, pl_module)
        if hidden and self._disabled is None:
            self._disable(
                f"the optimizers train {hidden} parameter tensor(s) that are not registered in the LightningModule "
                "(e.g. kept in a plain list or dict, or outside the module), so `torch.func.functional_call` cannot "
                "reach them and the measurements would be wrong. Register them as `nn.Parameter` attributes or in "
                "`nn.ParameterList`/`nn.ModuleList`"
            )
        self._maybe_measure_fit(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch counter is incremented after this hook: the epoch just finished is completed epoch + 1.
        self._maybe_measure_fit(trainer, pl_module, trainer.current_epoch + 1, epoch_end=True)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._measure(trainer, pl_module, trainer.current_epoch, fitting=False)
        elif trainer.state.fn == TrainerFn.FITTING and self._disabled is None:
            # ModelCheckpoint / EarlyStopping read their key when validation ends; before the first scheduled
            # measurement (at_init=False, val_check_interval < 1) there would be none, and they would end the run.
            wanted = _output.monitored_keys(trainer, self.quantity)
            epoch = trainer.current_epoch
            if any(k not in trainer.callback_metrics for k in wanted) and epoch not in self._bridged:
                self._bridged.add(epoch)
                self._measure(trainer, pl_module, epoch, fitting=True)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.TESTING:
            self._measure(trainer, pl_module, trainer.current_epoch, fitting=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The final state is always visible: draw the images of the last measurement if the schedule skipped them.
        if self._undrawn is not None and trainer.is_global_zero:
            result, step = self._undrawn
            self.attempt("its images", lambda: _output.write_figures(trainer, result, step), step, OUTPUT_HINT)
        self._undrawn = None
