"""The measure -> log loop every monitor shares: probe sets, the measured model, compute, outputs.

:class:`MeasureLoop` is a mixin of :class:`~lightning_sensitivity.callbacks.base.SensitivityMonitor`; it uses the
attributes that class sets in ``__init__`` and its public hooks (``probe_splits``, ``compute``, ``measurable``,
``attempt``, ``warn_once``, ``config``, ``layout_groups``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from lightning_sensitivity import keys
from lightning_sensitivity.callbacks import _output
from lightning_sensitivity.callbacks._compat import eager, fsdp_root, outer_groups_gathered, sharding_strategy
from lightning_sensitivity.callbacks._data_sources import dataset_class_names, find_dataset
from lightning_sensitivity.callbacks._distributed import Lockstep, distributed_collective, map_sharded
from lightning_sensitivity.callbacks._fn_check import PROBE_EXAMPLES, forward_fn_mismatch
from lightning_sensitivity.callbacks.measurement import Measurement
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import measurement_options
from lightning_sensitivity.functional.finite import NonFinite, nonfinite_examples
from lightning_sensitivity.functional.gram.distributed import Exchange, ShardMap, local_exchange
from lightning_sensitivity.functional.model import unwrap_model
from lightning_sensitivity.logging import find_tensorboard_writer, save_artifact
from lightning_sensitivity.probes import ProbeSet, draw_probe_set

TRAIN, VAL, TEST = keys.TRAIN, keys.VAL, keys.TEST

MEASURE_HINT = (
    "The model must map a batch of probe inputs to logits [N, C] (pass `forward_fn=` otherwise) and the probe data "
    "must fit it (see `batch_transform=`, `val_data=`, `train_data=`)."
)
DRAW_HINT = (
    "The data must be a dataset whose items collate to (inputs, targets) (see `batch_transform=`); or pass the probe "
    "tensors directly with `val_data=(inputs, targets)` / `train_data=(inputs, targets)`."
)
OUTPUT_HINT = "Check that the log directory is writable; the scalars were logged."
#: The hint of a failed output that is not a file-system error: the log directory is not the cause.
OUTPUT_ERROR_HINT = "The scalars were logged; the images or the artifact of this measurement could not be made."


class MeasureLoop:
    """When a scheduled measurement runs: draw what is missing, measure, name, write (see the module docstring)."""

    def _maybe_measure_fit(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, epoch_end: bool = False
    ) -> None:
        if self._disabled is not None or trainer.sanity_checking:
            return
        if epoch in self._measured or not self._schedule(epoch):
            return
        self._measure(trainer, pl_module, epoch, fitting=True, epoch_end=epoch_end)
        self._measured.add(epoch)

    def _ensure_probes(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, held_out: str
    ) -> dict[str, ProbeSet]:
        """``{"val": held-out probe set, "train": ...}`` as far as they can be drawn; ``held_out`` is the split the
        held-out set comes from (``"test"`` under ``trainer.test``)."""
        required, optional = self.probe_splits()
        wanted = {s: (held_out if s == VAL else s) for s in sorted(required | optional)}
        out: dict[str, ProbeSet] = {}
        for role, split in wanted.items():
            if role in getattr(self, "_unavailable", ()):
                continue  # said once in setup
            if split not in self._probes:
                probe = self.attempt(
                    f"the {split} probe set",
                    lambda s=split: self._draw(trainer, pl_module, s),
                    epoch,
                    DRAW_HINT,
                    key=f"probe set {split}",
                )
                if probe is None:
                    continue
                if len(probe) < self.num_samples:
                    self.warn_once(
                        f"small {split}",
                        f"{type(self).__name__}: the {split} probe set has {len(probe)} examples, fewer than "
                        f"`num_samples={self.num_samples}`, because the {split} data is that small; using all of it.",
                    )
                self._probes[split] = probe
            out[role] = self._probes[split]
        return out

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> ProbeSet | None:
        try:  # `val_dataloader_idx` chooses among the validation loaders only; test data is its first loader
            found = find_dataset(trainer, pl_module, split, self.val_dataloader_idx if split == VAL else 0)
        except ValueError as err:
            # An index beyond the loaders is a configuration error: say so once, plainly, and stop retrying.
            self._disable(str(err))
            return None
        if found is None:
            if split in self.probe_splits()[0] or split == TEST:
                raise MisconfigurationException(f"no {split} data source; pass `{split}_data=(inputs, targets)`")
            return None
        if found.num_loaders > 1:
            self.warn_once(
                f"loaders {split}",
                f"{type(self).__name__}: the {split} data has {found.num_loaders} loaders; the probe set is drawn from "
                f"loader {found.index} (set `val_dataloader_idx=` to choose another).",
            )
        if getattr(self, "_data_class_names", None) is None:
            self._data_class_names = dataset_class_names(found.dataset)
        return draw_probe_set(
            found.dataset,
            self.num_samples,
            seed=self.seed,
            batch_transform=self.batch_transform,
            collate_fn=found.collate_fn,
        )

    def _inputs_for(self, pl_module: pl.LightningModule, probes: dict[str, ProbeSet]) -> dict[str, ProbeSet]:
        """Probe sets as :meth:`compute` takes them: on the module's device, embedded when the quantity needs it."""
        on_device = {role: p.to(pl_module.device) for role, p in probes.items()}
        if self.embed_fn is None or not self.differentiates_inputs:
            return on_device
        with torch.no_grad():  # the embedding at the current weights; its graph is not needed
            return {role: p.with_inputs(self.embed_fn(pl_module, p.inputs).detach()) for role, p in on_device.items()}

    def sharded(self, fn: Callable[[slice | Tensor], dict[str, Tensor]], n: int) -> dict[str, Tensor]:
        """Evaluate per-example results of ``n`` examples, shared between the ranks of a distributed run.

        ``fn(index)`` computes the results of the examples at ``index`` (a slice or a ``[s]`` long tensor: index the
        probe tensors with it, e.g. through :func:`probe_shard`) as a dict of tensors of first dimension ``s``. In
        one process it is called once with ``slice(0, n)``; under DDP (and the strategies measured alike) each rank
        evaluates its shard and every rank receives all ``n`` results (see
        :func:`~lightning_sensitivity.callbacks._distributed.map_sharded`). Call it from :meth:`compute` the same
        way on every rank.
        """
        lockstep = getattr(self, "_lockstep", None)  # a subclass may skip `__init__`'s attributes
        if lockstep is None:
            return fn(slice(0, n))
        return map_sharded(fn, n, lockstep.world_size, lockstep.rank, lockstep)

    def shard_exchange(self, n: int) -> tuple[ShardMap, Exchange]:
        """This rank's :class:`~lightning_sensitivity.functional.gram.distributed.ShardMap` of ``n`` examples and the
        exchange that shares per-example results between the ranks (the functional layer's distributed Gram takes
        both); in one process ``(ShardMap(n), local_exchange)``. Call it from :meth:`compute` on every rank alike."""
        lockstep = getattr(self, "_lockstep", None)
        if lockstep is None:
            return ShardMap(n), local_exchange

        def exchange(fn: Callable[[Tensor], dict[str, Tensor]], shard: ShardMap) -> dict[str, Tensor]:
            return self.sharded(fn, shard.num_rows)  # the same shards (`shard_index` is the shard map's)

        return ShardMap(n, lockstep.world_size, lockstep.rank), exchange

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, *, fitting: bool, epoch_end: bool = False
    ) -> None:
        if self._disabled is not None:
            return
        if getattr(trainer, "fast_dev_run", False):
            self._dry_run_note(trainer)
            return
        held_out = TEST if trainer.state.fn == TrainerFn.TESTING else VAL
        # One collective of agreement per sharded call and one at the end, on every rank whatever fails where.
        collective = distributed_collective(trainer)
        self._lockstep = None if collective is None else Lockstep(collective)
        result = None
        try:
            result, probes = self._compute_on_probes(trainer, pl_module, epoch, held_out)
        finally:
            lockstep, self._lockstep = self._lockstep, None
            if lockstep is not None and not lockstep.finish(result is not None) and result is not None:
                self.warn_once(
                    f"{self.quantity} on another rank",
                    f"{type(self).__name__} could not produce {self.quantity} at epoch {epoch} on every rank (a rank "
                    "failed or had no probe data); it is logged by no rank. Training continues; further failures of "
                    "this kind are not reported.",
                )
                result = None
        if result is None:
            return
        if held_out != VAL:
            result = result.renamed(lambda tag: keys.rename_split(tag, VAL, held_out))
        scalars = {k: float(v) for k, v in result.scalars.items()}
        bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
        if bad:
            self.warn_once(
                f"non-finite {self.quantity}",
                f"{type(self).__name__}: non-finite values at epoch {epoch} for {', '.join(bad)}; they are not logged. "
                "The model may have diverged (check the learning rate) or its output may overflow in its dtype.",
            )
        scalars = {k: v for k, v in scalars.items() if math.isfinite(v)}
        step = _output.log_step(trainer, epoch_end)
        _output.log_scalars(trainer, pl_module, scalars, step, fitting)
        if not trainer.is_global_zero:
            return
        draw = self._draw_figures(fitting)
        self._undrawn = None if draw or not fitting else (result, step)
        probe_sizes = {f"{s} probe size": len(p) for s, p in probes.items()}
        # The measurement at initialisation spans a far wider range than the trained ones: in TensorBoard's offset
        # histogram view it squeezes every later histogram flat. Its histograms are left out when later epochs are
        # measured (its values are in the artifact).
        histograms = not (fitting and epoch == 0 and self._measures_later(trainer))
        self.attempt(
            "its logger output",
            lambda: self._write(trainer, result, step, probe_sizes, draw, histograms),
            epoch,
            OUTPUT_HINT,
        )
        self.attempt(
            "its artifact file",
            lambda: self._write_artifact(trainer, result, epoch, step, fitting),
            epoch,
            OUTPUT_HINT,
        )

    def _dry_run_note(self, trainer: pl.Trainer) -> None:
        """Under ``fast_dev_run`` nothing is measured or written; said once per trainer for all its monitors."""
        if getattr(trainer, "_sensitivity_dry_run_noted", False):
            return
        trainer._sensitivity_dry_run_noted = True  # type: ignore[attr-defined]
        names = sorted({type(c).__name__ for c in trainer.callbacks if isinstance(c, MeasureLoop)})
        self.warn_once(
            "fast_dev_run",
            f"{', '.join(names)}: `fast_dev_run` is a dry run of the loops, so the sensitivity monitors measure "
            "nothing and write nothing (no scalars, images or artifact files); run without it to measure.",
        )

    def _compute_on_probes(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, held_out: str
    ) -> tuple[Measurement | None, dict[str, ProbeSet]]:
        probes = self._ensure_probes(trainer, pl_module, epoch, held_out)
        if not self.measurable(probes):
            return None, probes
        enabled = trainer.is_global_zero and getattr(trainer.progress_bar_callback, "is_enabled", False)
        progress = progress_factory(f"{type(self).__name__} epoch {epoch}", enabled)

        # FSDP1: the root wrapper gathers the parameters for each forward; `forward_fn`/`embed_fn` are refused there.
        root = fsdp_root(trainer, pl_module)

        # FSDP2 with `forward_fn`/`embed_fn`: those call into the module outside its root's forward, which would
        # meet bare shards; the outermost groups stay gathered for the measurement instead.
        bypass = sharding_strategy(getattr(trainer, "strategy", None)) is not None and (
            self.forward_fn is not None or self.embed_fn is not None
        )

        def run() -> Measurement | None:
            model = root if root is not None else self.measured_model(pl_module)
            with outer_groups_gathered(pl_module, model) if bypass else contextlib.nullcontext():
                checks = finite_checks(trainer)
                measured, excluded = self._finite_probes(
                    model, self._inputs_for(pl_module, probes), epoch, held_out, checks
                )
                if not self.measurable(measured):
                    return None
                result = self.compute(model, measured, progress, epoch)
            for role, count in excluded.items():
                result.scalars[keys.metric(self.quantity, role, keys.NONFINITE)] = float(count)
            return result

        options = measurement_options(
            measure_dtype=getattr(self, "measure_dtype", torch.float32), output_key=getattr(self, "output_key", None)
        )
        with eager(), options:
            if root is None and sharding_strategy(getattr(trainer, "strategy", None)) is None:
                self._check_forward_fn(pl_module, probes)
            return self.attempt(self.quantity, run, epoch), probes

    def _check_forward_fn(self, pl_module: pl.LightningModule, probes: dict[str, ProbeSet]) -> None:
        """Once per run: ``forward_fn(embed_fn(x))`` against ``pl_module(x)`` (see :mod:`._fn_check`)."""
        if (self.forward_fn is None and self.embed_fn is None) or getattr(self, "_fn_checked", False) or not probes:
            return
        self._fn_checked = True
        probe = probes.get(VAL, next(iter(probes.values()))).to(pl_module.device)
        composed = self._models.get(pl_module, self.forward_fn, self.embed_fn)
        found = forward_fn_mismatch(unwrap_model(pl_module), composed, probe)
        if found is not None:
            difference, tolerance = found
            given = " and ".join(n for n in ("embed_fn", "forward_fn") if getattr(self, n) is not None)
            self.warn_once(
                "forward_fn mismatch",
                f"{type(self).__name__}: `{given}` do not compute the LightningModule's own output: on "
                f"{PROBE_EXAMPLES} probe examples the logits differ from `pl_module(x, **model_kwargs)` by up to "
                f"{difference:.3g} (tolerance {tolerance:.2g}), so the measurements are of another function (if that "
                "is meant, e.g. the module's forward is not the classifier, ignore this). For a Hugging Face decoder, "
                "pool the last real token from the attention mask (the README's text-model recipe).",
            )

    def _finite_probes(
        self,
        model: nn.Module,
        probes: dict[str, ProbeSet],
        epoch: int,
        held_out: str,
        checks: FiniteChecks,
    ) -> tuple[dict[str, ProbeSet], dict[str, int]]:
        """The probe sets without their examples of non-finite inputs, targets or model outputs, and how many each
        lost (a set that loses every example is left out); named in one warning per distinct finding. ``checks``:
        the trainer's checks of this model state, shared with its other monitors."""
        kept: dict[str, ProbeSet] = {}
        excluded: dict[str, int] = {}
        findings: list[str] = []
        causes: list[str] = []
        state = (getattr(self, "measure_dtype", torch.float32), getattr(self, "output_key", None))
        for role, probe in probes.items():
            found = checks.find(model, probe, self.chunk_size, state)
            bad = found.any
            if not bool(bad.any()):
                kept[role] = probe
                continue
            split, n = held_out if role == VAL else role, len(probe)
            for cause, mask in (("inputs", found.inputs), ("targets", found.targets), ("model outputs", found.outputs)):
                if bool(mask.any()):
                    shown = probe.indices[mask].tolist()
                    names = ", ".join(str(i) for i in shown[:10]) + (", ..." if len(shown) > 10 else "")
                    findings.append(
                        f"{int(mask.sum())} of {n} {split} probe examples have non-finite {cause} (positions in the "
                        f"{split} data: {names})"
                    )
                    causes.append(f"{split} {cause}")
            excluded[role] = int(bad.sum())
            left = n - int(bad.sum())
            findings[-1] += f"; {left} {split} examples are measured" if left else f"; no {split} example is left"
            if left:
                kept[role] = probe.subset((~bad).nonzero().flatten())
        if findings:
            diverged = any(c.endswith("model outputs") for c in causes)
            tags = ", ".join(
                f"`{keys.metric(self.quantity, held_out if r == VAL else r, keys.NONFINITE)}`" for r in excluded
            )
            self.warn_once(
                f"nonfinite {sorted(causes)}",
                f"{type(self).__name__} at epoch {epoch}: {'; '.join(findings)}. These examples are left out of every "
                f"quantity of the measurement (counted in {tags})"
                + (
                    ". The model may have diverged (check the learning rate) or overflow in its dtype."
                    if diverged
                    else "."
                ),
            )
        return kept, excluded

    def _draw_figures(self, fitting: bool) -> bool:
        if self.figures != "log_spaced":
            return self.figures == "all"
        if not fitting:
            return True
        count = len(self._measured) + 1  # this measurement's position in the fit: 1st, 2nd, 4th, 8th, ...
        return count & (count - 1) == 0

    def _measures_later(self, trainer: pl.Trainer) -> bool:
        last = getattr(trainer, "max_epochs", None)
        last = last if isinstance(last, int) and last > 0 else 1
        return any(self._schedule(e) for e in range(1, last + 1))

    def _write(
        self,
        trainer: pl.Trainer,
        result: Measurement,
        step: int,
        sizes: dict[str, int],
        draw: bool,
        histograms: bool = True,
    ) -> None:
        writer = find_tensorboard_writer(trainer)
        if writer is not None and writer not in self._summary_writers:
            self._summary_writers.add(writer)
            _output.write_run_summary(
                writer, type(self).__name__, {**self.config(), **sizes}, self.layout_groups(), self.layout_splits()
            )
        notes = result.meta.get("notes")
        if isinstance(notes, list) and notes:
            _output.write_notes(trainer, type(self).__name__, notes, step)
        if histograms:
            _output.write_histograms(trainer, result, step)
        if draw:
            _output.write_figures(trainer, result, step)

    def _write_artifact(self, trainer: pl.Trainer, result: Measurement, epoch: int, step: int, fitting: bool) -> None:
        # `trainer.validate`/`test` after `fit` share its epoch number (and often other weights, e.g. ckpt_path="best"):
        # their own folder keeps them from replacing the training run's file of that epoch.
        quantity = self.quantity if fitting else f"{self.quantity}.{trainer.state.fn.value}"
        root = _output.artifact_root(trainer)
        if root.fallback:
            self.warn_once(
                "no logger",
                f"{type(self).__name__}: the trainer has no logger with a log directory; artifacts are written under "
                f"{root.path}/sensitivity/ (`trainer.default_root_dir`).",
            )
        save_artifact(root.path, quantity, epoch, step, result.arrays, {**self.config(), **result.meta})


class FiniteChecks:
    """The finiteness checks of one trainer's monitors at one state of the measured model.

    The monitors measuring at a step draw equal probe sets by default (same data, ``num_samples`` and ``seed``),
    and each would evaluate the model on its own copy: here each distinct set is evaluated once per model state.
    A set is reused only when its inputs, targets and model inputs are equal element for element (``torch.equal``;
    a set holding a NaN equals none and is evaluated again) and the model is the same object with every parameter
    and buffer the same tensor at the same version (an optimizer step, a running-statistics update or a
    reassignment changes the state), under the same measurement options and chunking.
    """

    def __init__(self) -> None:
        self._state: tuple[Any, ...] | None = None
        self._model: nn.Module | None = None
        self._found: list[tuple[ProbeSet, int | None, NonFinite]] = []

    def find(self, model: nn.Module, probe: ProbeSet, chunk_size: int | None, options: tuple[Any, ...]) -> NonFinite:
        """:func:`nonfinite_examples` of ``probe``, evaluated once per equal set and model state."""
        tensors = itertools.chain(model.parameters(), model.buffers())
        state = (options, tuple((id(t), t._version) for t in tensors))
        if model is not self._model or state != self._state:
            self._model, self._state, self._found = model, state, []
        for seen, chunks, found in self._found:
            if chunks == chunk_size and _equal_sets(seen, probe):
                return found
        found = nonfinite_examples(model, probe.inputs, probe.targets, chunk_size, model_kwargs=probe.model_kwargs)
        self._found.append((probe, chunk_size, found))
        return found


def finite_checks(trainer: pl.Trainer) -> FiniteChecks:
    """The trainer's :class:`FiniteChecks`, shared by its monitors (made on first use)."""
    checks = getattr(trainer, "_sensitivity_finite_checks", None)
    if not isinstance(checks, FiniteChecks):
        checks = FiniteChecks()
        trainer._sensitivity_finite_checks = checks  # type: ignore[attr-defined]
    return checks


def _equal_sets(a: ProbeSet, b: ProbeSet) -> bool:
    if a.model_kwargs.keys() != b.model_kwargs.keys():
        return False
    pairs = [
        (a.inputs, b.inputs),
        (a.targets, b.targets),
        *((a.model_kwargs[k], b.model_kwargs[k]) for k in a.model_kwargs),
    ]
    return all(_equal(x, y) for x, y in pairs)


def _equal(x: Any, y: Any) -> bool:
    if x is y:
        return True
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        return False
    same_kind = x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
    return same_kind and torch.equal(x, y)
