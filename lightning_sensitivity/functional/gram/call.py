"""One Gram call as one object: :class:`GramCall` holds what every engine needs, validated once.

:func:`build_gram_call` checks the arguments of a public Gram function (``loss_gradient_gram``, ``stiffness``,
``per_layer_gram``...), unwraps ``torch.compile``, detaches the parameters (split into trainable and frozen ones),
moves the two example sets to the model and decides once whether the model's parameters are sharded (FSDP2);
every engine (:mod:`.layerwise`, :mod:`.per_example`, :mod:`.per_layer`, :mod:`.distributed`) then reads that
object instead of re-detecting or re-validating.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.functional._chunks import Progress, check_chunk_size, check_progress
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    check_loss_fn,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    prepare_targets,
    take,
)
from lightning_sensitivity.functional._purity import detached_state
from lightning_sensitivity.functional._sharding import has_sharded_parameters, is_fsdp1
from lightning_sensitivity.functional.gram import plan as plans
from lightning_sensitivity.functional.gram.blocks import LossFn, split_trainable
from lightning_sensitivity.functional.gram.sketch import GradientSketch
from lightning_sensitivity.functional.model import unwrap_model

__all__ = ["GRAM_METHODS", "ExampleSet", "GramCall", "GramMethod", "build_gram_call"]

GramMethod = Literal["auto", "layerwise", "per_example"]
GRAM_METHODS = ("auto", "layerwise", "per_example")


@dataclass(frozen=True)
class ExampleSet:
    """One side of a Gram: ``inputs [n, ...]`` on the model's device, ``targets [n, ...]`` and the per-example
    keyword inputs ``model_kwargs`` (each ``[n, ...]``)."""

    inputs: Tensor
    targets: Tensor
    model_kwargs: dict[str, Tensor]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def piece(self, index: slice | Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(inputs, targets, model_kwargs)`` of the examples ``index``."""
        return self.inputs[index], self.targets[index], take(self.model_kwargs, index)

    def subset(self, index: slice | Tensor) -> ExampleSet:
        return ExampleSet(*self.piece(index))


@dataclass(frozen=True)
class GramCall:
    """A validated Gram call ``G[i, j] = g_i . g_j``, rows from ``rows`` and columns from ``cols``.

    Attributes:
        model: the module measured (behind ``torch.compile``).
        trainable, frozen: its detached parameters, by ``requires_grad`` of the originals.
        buffers: its detached buffers.
        rows: the first set; cols: the second, or None when the columns are the rows (one set).
        loss_fn: ``loss_fn(logits, targets)`` of a batch of one.
        chunk_size: examples per forward and backward pass (None: all at once).
        method: ``"auto"``, ``"layerwise"`` or ``"per_example"``.
        progress: ``progress(done, total)`` or None.
        sketch_dim, sketch_seed: sketched Gram with ``k = sketch_dim`` projections (None: exact).
        sharded: whether the parameters are sharded across processes (FSDP2): decided once, when the call is built;
            the model is then run as it is, and only the layerwise engine applies.
    """

    model: nn.Module
    trainable: dict[str, Tensor]
    frozen: dict[str, Tensor]
    buffers: dict[str, Tensor]
    rows: ExampleSet
    cols: ExampleSet | None
    loss_fn: LossFn
    chunk_size: int | None = None
    method: str = "auto"
    progress: Progress | None = None
    sketch_dim: int | None = None
    sketch_seed: int = 0
    sharded: bool = False

    @property
    def same(self) -> bool:
        """Whether the columns are the rows (one set: only the upper blocks are formed)."""
        return self.cols is None

    @property
    def sets(self) -> tuple[tuple[Tensor, Tensor, dict[str, Tensor]], tuple]:
        """``((x1, y1, kwargs1), (x2, y2, kwargs2))`` (the second ``(None, None, {})`` for one set)."""
        second = (
            (None, None, {}) if self.cols is None else (self.cols.inputs, self.cols.targets, self.cols.model_kwargs)
        )
        return (self.rows.inputs, self.rows.targets, self.rows.model_kwargs), second

    @property
    def num_cols(self) -> int | None:
        return None if self.cols is None else len(self.cols)

    def structure_key(self) -> tuple:
        """What decides the engine beside the model's code (:func:`.plan.structure_key`)."""
        r = self.rows
        return plans.structure_key(self.trainable, r.inputs, r.targets, r.model_kwargs, self.loss_fn)

    def sketch(self) -> GradientSketch | None:
        """A fresh :class:`~.sketch.GradientSketch` (the same seed gives the same maps), or None when exact."""
        if self.sketch_dim is None:
            return None
        params = {**self.frozen, **self.trainable}
        return GradientSketch(self.sketch_dim, self.sketch_seed, {k: v.shape[0] for k, v in params.items() if v.dim()})

    def against_all(self, index: slice | Tensor) -> GramCall:
        """The rows ``index`` of a one-set call against all its examples (a two-set call): a process's block of
        Gram rows when several share the Gram (:mod:`.distributed`)."""
        if self.cols is not None:
            raise ValueError("`against_all` expected a one-set call (cols=None), got a two-set call")
        return dataclasses.replace(self, rows=self.rows.subset(index), cols=self.rows)


def build_gram_call(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    inputs2: Tensor | None = None,
    targets2: Tensor | None = None,
    *,
    loss_fn: LossFn,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    method: str = "auto",
    model_kwargs: ModelKwargs | None = None,
    model_kwargs2: ModelKwargs | None = None,
    sketch_dim: int | None = None,
    sketch_seed: int = 0,
) -> GramCall:
    """Validate the arguments of a Gram function (as documented in
    :func:`~lightning_sensitivity.functional.loss_gradient_gram`) and build its :class:`GramCall`.

    Raises:
        ValueError / TypeError: a bad argument, naming it; FSDP1 flat parameters; ``method="per_example"`` for a
            model sharded by FSDP2.
    """
    if method not in GRAM_METHODS:
        raise ValueError(f"`method` expected one of {GRAM_METHODS}, got {method!r}")
    check_loss_fn(loss_fn)
    check_chunk_size(chunk_size)
    check_progress(progress)
    check_int(sketch_dim, "sketch_dim", minimum=1, allow_none=True)
    check_int(sketch_seed, "sketch_seed", minimum=0)
    if (inputs2 is None) != (targets2 is None):
        raise ValueError(
            "`inputs2` and `targets2` expected to be given together, got "
            f"inputs2={'None' if inputs2 is None else 'a tensor'} and "
            f"targets2={'None' if targets2 is None else 'a tensor'}"
        )
    if inputs2 is None and model_kwargs2 is not None:
        raise ValueError("`model_kwargs2` expected None when `inputs2` is None (one set), got a mapping")
    if inputs2 is not None and model_kwargs and model_kwargs2 is None:
        # A second set silently run without the first set's keyword inputs (a mask) would measure another model.
        raise ValueError(
            f"`model_kwargs2` expected the second set's keyword inputs {sorted(model_kwargs)} since `model_kwargs` "
            "and `inputs2` are given, got None"
        )
    model = unwrap_model(model)
    sharded = has_sharded_parameters(model)
    if sharded:
        if is_fsdp1(model):
            raise ValueError(
                "`model` expected parameters held whole by this process or sharded by FSDP2 (`fully_shard`), got "
                "FSDP1 flat parameters (`FullyShardedDataParallel`): no per-parameter tensor can be named in them"
            )
        if method == "per_example":
            raise ValueError(
                "`method='per_example'` expected a model holding its parameters whole, got one sharded by FSDP2: "
                "explicit per-example gradients need every parameter on every process (use 'auto' or 'layerwise')"
            )
    x1 = prepare_inputs(inputs, allow_integer=True)
    y1 = prepare_targets(targets, x1.shape[0])
    params, buffers = detached_state(model)
    x1 = match_model(x1, params)
    rows = ExampleSet(x1, y1.to(x1.device), prepare_model_kwargs(model_kwargs, x1.shape[0], params))
    cols = None
    if inputs2 is not None:
        x2 = prepare_inputs(inputs2, name="inputs2", allow_integer=True)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"`inputs2` expected examples of shape {tuple(x1.shape[1:])} like `inputs`, got {tuple(x2.shape[1:])}"
            )
        y2 = prepare_targets(targets2, x2.shape[0], name="targets2", inputs_name="inputs2")
        x2 = match_model(x2, params)
        kw2 = prepare_model_kwargs(model_kwargs2, x2.shape[0], params, name="model_kwargs2", inputs_name="inputs2")
        cols = ExampleSet(x2, y2.to(x2.device), kw2)
    trainable, frozen = split_trainable(params, model)
    return GramCall(
        model=model, trainable=trainable, frozen=frozen, buffers=buffers, rows=rows, cols=cols, loss_fn=loss_fn,
        chunk_size=chunk_size, method=method, progress=progress, sketch_dim=sketch_dim, sketch_seed=sketch_seed,
        sharded=sharded,
    )  # fmt: skip
