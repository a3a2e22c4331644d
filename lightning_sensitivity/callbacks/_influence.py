"""TracIn checkpoint influence for :class:`~lightning_sensitivity.callbacks.StiffnessMonitor` (``influence=True``):
the train-val Gram the monitor forms at every measurement, weighted by the learning rate, summed over the fit.

Each measurement during ``fit`` is one TracInCP checkpoint (Pruthi et al. 2020). Its weight is the mean learning
rate of the optimizer steps taken since the previous measurement (read from the first optimizer's first parameter
group in ``on_before_optimizer_step``: the rate each step really used, schedules included); a measurement with no
step since the previous one (the one at initialisation, a second one of the same epoch) adds nothing. The sum is
kept in the checkpoint state, so a resumed run goes on accumulating. ``validate``/``test`` measurements do not
count: their held-out set is not the one the influence is summed over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_bool, check_int, describe
from lightning_sensitivity.callbacks.measurement import Measurement
from lightning_sensitivity.functional import binary_auroc, influence_top_k, predict_logits, tracin_influence
from lightning_sensitivity.probes import ProbeSet, model_kwargs

__all__ = ["InfluenceMixin", "check_flipped"]

GROUP = "train_val"
#: Rows of the influence picture (held-out examples shown).
GRID_ROWS = 8


def check_flipped(flipped: Any) -> Tensor | None:
    """``flipped_labels``: positions in the training data (what :attr:`ProbeSet.indices` holds), or None."""
    if flipped is None:
        return None
    if isinstance(flipped, Tensor):
        if flipped.dtype == torch.bool:
            return flipped.nonzero().reshape(-1).cpu()
        if flipped.is_floating_point() or flipped.is_complex() or flipped.dim() != 1:
            raise TypeError(
                "`flipped_labels` expected a 1-D integer or bool tensor of training-data positions, got "
                f"{flipped.dtype} of shape {tuple(flipped.shape)}"
            )
        values = flipped.long().cpu()
    elif isinstance(flipped, (Sequence, set, frozenset)) and not isinstance(flipped, (str, bytes)):
        items = list(flipped)
        if any(isinstance(i, bool) or not isinstance(i, int) for i in items):
            raise TypeError(f"`flipped_labels` expected a collection of int positions, got {describe(flipped)}")
        values = torch.tensor(items, dtype=torch.long)
    else:
        raise TypeError(f"`flipped_labels` expected a collection of int positions or a tensor, got {describe(flipped)}")
    if values.numel() and int(values.min()) < 0:
        raise ValueError(f"`flipped_labels` expected positions >= 0, got {int(values.min())}")
    return values.unique()


class InfluenceMixin:
    """The influence part of the stiffness monitor; the monitor calls :meth:`init_influence` and
    :meth:`add_influence` (see the module docstring)."""

    def init_influence(self, influence: bool, top_k: int, flipped_labels: Any, groups: Sequence[str]) -> None:
        self.influence = check_bool(influence, "influence")
        self.influence_top_k = check_int(top_k, "influence_top_k", minimum=1)
        self.flipped_labels = check_flipped(flipped_labels)
        if self.influence and GROUP not in groups:
            raise ValueError(f"`influence=True` expected {GROUP!r} in `groups`, got {list(groups)!r}")
        if self.flipped_labels is not None and not self.influence:
            raise ValueError("`flipped_labels` expected `influence=True` to be given too, got influence=False")
        self._reset_influence()
        self._stage: str | None = None

    def _reset_influence(self) -> None:
        self._influence: Tensor | None = None  # [N_train, N_val] float64, sum_t lr_t G_t
        self._self_influence: Tensor | None = None  # [N_train] float64, sum_t lr_t |g_i(t)|^2
        self._checkpoints: list[tuple[int, float]] = []  # (epoch, learning rate) of each accumulated measurement
        self._lr_sum, self._steps = 0.0, 0

    def influence_config(self) -> dict[str, Any]:
        return {
            "influence": self.influence,
            "influence_top_k": self.influence_top_k,
            "flipped_labels": None if self.flipped_labels is None else len(self.flipped_labels),
        }

    # ------------------------------------------------------------ Lightning hooks (chained through super())
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # type: ignore[misc]
        self._stage = stage
        if stage == TrainerFn.FITTING:
            self._reset_influence()  # a resumed run gets the sums back from load_state_dict (after setup)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if not self.influence:
            return
        if optimizer is not trainer.optimizers[0]:
            self.warn_once(  # type: ignore[attr-defined]
                "influence optimizers",
                f"{type(self).__name__}: the influence is weighted by the learning rate of the first optimizer only; "
                "steps of the other optimizers are not counted.",
            )
            return
        rates = {float(g["lr"]) for g in optimizer.param_groups}
        if len(rates) > 1:
            self.warn_once(  # type: ignore[attr-defined]
                "influence param groups",
                f"{type(self).__name__}: the optimizer's parameter groups have different learning rates "
                f"{sorted(rates)}; the influence is weighted by the first group's (one rate per checkpoint, as in "
                "TracInCP).",
            )
        self._lr_sum += float(optimizer.param_groups[0]["lr"])
        self._steps += 1

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        if self.influence:
            state["influence"] = {
                "influence": self._influence,
                "self_influence": self._self_influence,
                "checkpoints": list(self._checkpoints),
                "lr_sum": self._lr_sum,
                "steps": self._steps,
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        saved = state_dict.get("influence")
        if self.influence and saved is not None:
            self._influence, self._self_influence = saved["influence"], saved["self_influence"]
            self._checkpoints = [(int(e), float(lr)) for e, lr in saved["checkpoints"]]
            self._lr_sum, self._steps = float(saved["lr_sum"]), int(saved["steps"])

    # ------------------------------------------------------------ one measurement
    def add_influence(
        self,
        result: Measurement,
        gram: Tensor,
        rows: slice,
        cols: slice,
        train: ProbeSet,
        val: ProbeSet,
        model: Any,
        epoch: int,
    ) -> None:
        """Accumulate this measurement's Gram (during ``fit``) and log the influence so far."""
        if not self.influence or self._stage != TrainerFn.FITTING:
            return
        if self._steps:
            lr = self._lr_sum / self._steps
            block = gram[rows, cols].detach().cpu()
            diagonal = gram[rows, rows].diagonal().detach().cpu()
            new = tracin_influence([block], [lr])
            new_self = tracin_influence([diagonal], [lr])
            self._influence = new if self._influence is None else self._influence + new
            self._self_influence = new_self if self._self_influence is None else self._self_influence + new_self
            self._checkpoints.append((epoch, lr))
            self._lr_sum, self._steps = 0.0, 0
        if self._influence is None:
            return
        self._log(result, train, val, model, epoch)

    def _log(self, result: Measurement, train: ProbeSet, val: ProbeSet, model: Any, epoch: int) -> None:
        influence, self_inf = self._influence, self._self_influence
        top = influence_top_k(influence, self.influence_top_k)
        arr = keys.stiffness_array
        result.arrays.update(
            {
                arr(GROUP, "influence"): influence.float(),
                arr(GROUP, "self_influence"): self_inf,
                arr(GROUP, "influence_helpful"): top.helpful,
                arr(GROUP, "influence_helpful_values"): top.helpful_values,
                arr(GROUP, "influence_harmful"): top.harmful,
                arr(GROUP, "influence_harmful_values"): top.harmful_values,
                arr(GROUP, "influence_checkpoint_epochs"): torch.tensor([e for e, _ in self._checkpoints]),
                arr(GROUP, "influence_learning_rates"): torch.tensor([lr for _, lr in self._checkpoints]),
                arr(GROUP, "train_indices"): train.indices,
            }
        )
        result.scalars[keys.metric(keys.STIFFNESS, GROUP, "self_influence_mean")] = float(self_inf.mean())
        result.histograms[keys.metric(keys.STIFFNESS, GROUP, "self_influence")] = self_inf.float()
        if self.flipped_labels is not None:
            flipped = torch.isin(train.indices.cpu(), self.flipped_labels)
            result.arrays[arr(GROUP, "flipped")] = flipped
            loss = self._losses(model, train)
            for name, score in (("self_influence_flipped_auroc", self_inf), ("loss_flipped_auroc", loss)):
                value = binary_auroc(score, flipped)
                if value == value:  # NaN when no (or every) training probe example is flagged
                    result.scalars[keys.metric(keys.STIFFNESS, GROUP, name)] = value
                    result.arrays[arr(GROUP, name)] = value
        if is_images(train.inputs) and is_images(val.inputs):
            rows = min(GRID_ROWS, len(val))
            result.figures.append(
                (
                    keys.metric(keys.STIFFNESS, GROUP, "influence_examples"),
                    lambda: self._grid(train, val, top, rows, epoch),
                )
            )

    def _losses(self, model: Any, probe: ProbeSet) -> Tensor:
        logits = predict_logits(model, probe.inputs, self.chunk_size, **model_kwargs(probe))  # type: ignore[attr-defined]
        targets = probe.targets.to(logits.device)
        return (
            torch.stack(
                [self.loss_fn(logits[i : i + 1], targets[i : i + 1]).sum() for i in range(len(probe))]  # type: ignore[attr-defined]
            )
            .double()
            .cpu()
        )

    def _grid(self, train: ProbeSet, val: ProbeSet, top: Any, rows: int, epoch: int) -> Any:
        from lightning_sensitivity.logging.influence_grid import render_influence_grid

        return render_influence_grid(
            val.inputs[:rows].detach().float().cpu(), val.targets[:rows].tolist(),
            train.inputs.detach().float().cpu(), train.targets.tolist(),
            top.helpful[:rows], top.helpful_values[:rows], top.harmful[:rows], top.harmful_values[:rows],
            title=f"TracIn influence over {len(self._checkpoints)} checkpoints, epoch {epoch}",
        )  # fmt: skip


def is_images(inputs: Tensor) -> bool:
    from lightning_sensitivity.logging.influence_grid import is_image_batch

    return inputs.is_floating_point() and is_image_batch(inputs.shape)
