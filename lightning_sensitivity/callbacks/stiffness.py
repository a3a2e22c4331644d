"""``StiffnessMonitor``: gradient alignment between examples (Fort et al. 2019), per class and by input distance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity._checks import check_int, check_names
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor
from lightning_sensitivity.functional import (
    class_stiffness,
    critical_length,
    predict_logits,
    stiffness,
    stiffness_by_distance,
)
from lightning_sensitivity.functional.gram import LayerwiseUnsupported, gram_and_norms
from lightning_sensitivity.functional.gram.shared import gram_factors, gram_rows
from lightning_sensitivity.functional.stiffness import stiffness_from_gram
from lightning_sensitivity.probes import ProbeSet

PREFIX = "sensitivity/stiffness"
GROUPS = ("train_train", "train_val", "val_val")
DISTANCES = ("cosine", "euclidean")
KINDS = ("sign", "cosine")


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    return float(values[mask].double().mean()) if bool(mask.any()) else float("nan")


def _check_class_groups(class_groups: Any) -> list[int] | None:
    if class_groups is None:
        return None
    if isinstance(class_groups, Mapping):
        keys = list(class_groups)
        if sorted(keys) != list(range(len(keys))):
            raise ValueError(f"`class_groups` expected a mapping with keys 0..C-1 (fine labels), got keys {keys}")
        class_groups = [class_groups[k] for k in range(len(keys))]
    if isinstance(class_groups, Tensor):
        class_groups = class_groups.tolist()
    if isinstance(class_groups, (str, bytes)) or not isinstance(class_groups, Sequence) or not class_groups:
        raise TypeError(
            f"`class_groups` expected a non-empty sequence (fine label -> super-class) or mapping of ints, got "
            f"{type(class_groups).__name__} {class_groups!r}"
        )
    for value in class_groups:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`class_groups` expected non-negative int super-class indices, got {value!r}")
    return list(class_groups)


class StiffnessMonitor(SensitivityMonitor):
    """Log gradient stiffness between probe examples: do gradient steps on one example help or hurt another?

    For per-example loss gradients ``g_i`` (all trainable parameters, eval mode), sign stiffness is
    ``sign(g_i . g_j)`` and cosine stiffness ``cos(g_i, g_j)`` (Fort et al. 2019, "Stiffness: a new perspective on
    generalization in neural networks"). For each pair group -- ``"train_train"`` (training probe set with itself),
    ``"train_val"`` (training rows, validation columns), ``"val_val"`` -- the monitor logs the overall mean, the
    same-class and different-class means (pairs of an example with itself excluded), class-by-class matrices, and
    the stiffness as a function of the input distance of the pair with its critical length (the distance where the
    binned sign stiffness first reaches zero). Per-example gradients of all needed probe examples are computed once
    per measurement and shared by the groups.

    Logged scalars (at ``trainer.global_step``), for each group ``g``:

    - ``sensitivity/stiffness/{g}/sign``, ``sensitivity/stiffness/{g}/cosine``
    - ``sensitivity/stiffness/{g}/same_class_sign``, ``.../same_class_cosine``, ``.../different_class_sign``,
      ``.../different_class_cosine``
    - ``sensitivity/stiffness/{g}/critical_length`` (only when the binned sign stiffness crosses zero)

    TensorBoard images (rank 0), titled with the epoch: ``sensitivity/stiffness/{g}/class_sign_matrix``,
    ``.../class_cosine_matrix`` (C x C, diverging colormap on the fixed range [-1, 1]),
    ``.../superclass_sign_matrix``, ``.../superclass_cosine_matrix`` (with ``class_groups``), and
    ``sensitivity/stiffness/{g}/by_distance``. Artifact ``{log_dir}/sensitivity/stiffness/epoch_XXXX.npz`` with the
    keys ``{g}/class_sign``, ``{g}/class_cosine``, ``{g}/superclass_*``, ``{g}/bin_edges``, ``{g}/distance_sign``,
    ``{g}/distance_cosine``, ``{g}/distance_count`` and the scalars (see
    :mod:`lightning_sensitivity.logging.artifacts`).

    Frozen parameters (``requires_grad=False``) are not part of the gradients.

    Args:
        loss_fn: ``loss_fn(logits, targets)``, the loss whose gradients are compared (default cross-entropy).
        groups: which pair groups to measure; groups with ``"train"`` need training data.
        class_names: names of the classes for the matrix axes.
        class_groups: fine class -> super-class index (a sequence of length C or a mapping), e.g. CIFAR-100's 20
            coarse classes; adds the super-class matrices.
        group_names: names of the super-classes (needs ``class_groups``).
        num_distance_bins: bins of the stiffness-by-distance curve.
        distance: ``"cosine"`` (``1 - cos(x_i, x_j)``, Fort et al.) or ``"euclidean"`` input distance.
        **kwargs: the common arguments of :class:`SensitivityMonitor`.

    Raises:
        TypeError / ValueError: a bad argument, naming it.
        MisconfigurationException: in ``setup``, when a group needs training data and none is reachable.

    Example::

        monitor = StiffnessMonitor(groups=("train_val", "val_val"), class_names=dm.classes, every_n_epochs=5)
        trainer = Trainer(callbacks=[monitor])
    """

    quantity = "stiffness"
    needs_parameter_gradients = True
    state_fields = ("num_samples", "seed", "groups")

    def __init__(
        self,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        groups: Sequence[str] = GROUPS,
        class_names: Sequence[str] | None = None,
        class_groups: Sequence[int] | Mapping[int, int] | None = None,
        group_names: Sequence[str] | None = None,
        num_distance_bins: int = 20,
        distance: str = "cosine",
        **kwargs: Any,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"`loss_fn` expected a callable (logits, targets) -> loss, got {type(loss_fn).__name__}")
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
            raise TypeError(
                f"`groups` expected a sequence of names from {GROUPS}, got {type(groups).__name__} {groups!r}"
            )
        if not groups or any(g not in GROUPS for g in groups) or len(set(groups)) != len(groups):
            raise ValueError(f"`groups` expected distinct names from {GROUPS}, got {list(groups)!r}")
        check_int(num_distance_bins, "num_distance_bins", minimum=1)
        if distance not in DISTANCES:
            raise ValueError(f"`distance` expected one of {DISTANCES}, got {distance!r}")
        self.class_names = check_names(class_names, "class_names")
        self.class_groups = _check_class_groups(class_groups)
        self.group_names = check_names(group_names, "group_names")
        if (
            self.class_names is not None
            and self.class_groups is not None
            and len(self.class_names) != len(self.class_groups)
        ):
            raise ValueError(
                f"`class_groups` expected one entry per class ({len(self.class_names)} class names), "
                f"got {len(self.class_groups)}"
            )
        if self.group_names is not None:
            if self.class_groups is None:
                raise ValueError("`group_names` expected `class_groups` to be given too, got class_groups=None")
            if len(self.group_names) != max(self.class_groups) + 1:
                raise ValueError(
                    f"`group_names` expected {max(self.class_groups) + 1} names (one per super-class in "
                    f"`class_groups`), got {len(self.group_names)}"
                )
        self.loss_fn = loss_fn
        self.groups = tuple(groups)
        self.num_distance_bins = num_distance_bins
        self.distance = distance
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        return frozenset(split for g in self.groups for split in g.split("_")), frozenset()

    @override
    def missing_hint(self, missing: list[str]) -> str:
        return " Or measure validation pairs only: `groups=('val_val',)`." if TRAIN in missing else ""

    @override
    def layout_groups(self) -> tuple[str, ...]:
        return self.groups

    @override
    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "groups": self.groups,
            "loss_fn": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
            "num_distance_bins": self.num_distance_bins,
            "distance": self.distance,
            "class_names": self.class_names,
            "class_groups": self.class_groups,
            "group_names": self.group_names,
        }

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        splits = [s for s in (TRAIN, VAL) if s in self.probe_splits()[0]]
        # One set of per-example gradients for all groups: the stiffness of a slice of the joint matrix is the
        # stiffness between the two slices' examples.
        inputs = torch.cat([probes[s].inputs for s in splits])
        targets = torch.cat([probes[s].targets for s in splits])
        offsets, start = {}, 0
        for s in splits:
            offsets[s] = slice(start, start + len(probes[s]))
            start += len(probes[s])
        joint = self._joint_stiffness(model, inputs, targets, progress)
        num_classes = max(int(targets.max()) + 1, predict_logits(model, inputs[:1]).shape[1])
        if self.class_groups is not None and len(self.class_groups) < num_classes:
            raise ValueError(
                f"`class_groups` expected an entry for each of {num_classes} classes, got {len(self.class_groups)}"
            )
        names = self.class_names if self.class_names and len(self.class_names) == num_classes else None
        result = Measurement(
            meta={
                "class_names": names,
                "groups": self.groups,
                "group_names": self.group_names,
                "distance": self.distance,
                "num_classes": num_classes,
            }
        )
        for group in self.groups:
            rows, cols = group.split("_")
            self._group(
                result,
                group,
                joint,
                offsets[rows],
                offsets[cols],
                rows == cols,
                inputs,
                targets,
                num_classes,
                names,
                epoch,
            )
        return result

    def _joint_stiffness(self, model: nn.Module, inputs: Tensor, targets: Tensor, progress: ProgressFactory) -> Any:
        if getattr(self, "_lockstep", None) is None:  # one process: the whole Gram at once
            with progress("per-example gradients") as bar:
                return stiffness(model, inputs, targets, loss_fn=self.loss_fn, chunk_size=self.chunk_size, progress=bar)

        n = inputs.shape[0]
        if self.chunk_size is None and self._layerwise(model, inputs, targets):
            # Each rank the layer factors of its examples, exchanged; then each its block of rows from all factors.
            def factors_of(index: Tensor) -> dict[str, Tensor]:
                return gram_factors(model, inputs[index], targets[index], reference_rows=n, loss_fn=self.loss_fn)

            def rows_of(index: Tensor) -> dict[str, Tensor]:
                gram, sq = gram_rows(factors, index)
                return {"gram": gram, "sq": sq}

            factors = self.sharded(factors_of, n)
            out = self.sharded(rows_of, n)
        else:

            def rows(index: Tensor) -> dict[str, Tensor]:
                # A rank's block of Gram rows against every example (memory bounded by `chunk_size`).
                with progress("per-example gradients") as bar:
                    gram, sq_rows, _ = gram_and_norms(
                        model, inputs[index], targets[index], inputs, targets, self.loss_fn, self.chunk_size, bar
                    )
                return {"gram": gram, "sq": sq_rows}

            out = self.sharded(rows, n)
        return stiffness_from_gram(out["gram"], out["sq"], out["sq"], self_pairs=True)

    def _layerwise(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> bool:
        """Whether the layerwise engine covers ``model``: decided on the same two examples on every rank."""
        try:
            gram_factors(model, inputs[:2], targets[:2], reference_rows=inputs.shape[0], loss_fn=self.loss_fn)
        except LayerwiseUnsupported:
            return False
        return True

    def _group(
        self,
        result: Measurement,
        group: str,
        joint: Any,
        rows: slice,
        cols: slice,
        self_pairs: bool,
        inputs: Tensor,
        targets: Tensor,
        num_classes: int,
        names: list[str] | None,
        epoch: int,
    ) -> None:
        tag = f"{PREFIX}/{group}"
        y_rows, y_cols = targets[rows], targets[cols]
        pair = torch.ones(y_rows.shape[0], y_cols.shape[0], dtype=torch.bool, device=targets.device)
        if self_pairs:
            pair.fill_diagonal_(False)
        same = y_rows[:, None] == y_cols[None, :]
        arrays: dict[str, Any] = {}
        finite = joint.gram[rows, cols].isfinite()
        for kind in KINDS:
            # torch.sign(nan) is 0 and a NaN norm gives cosine 0: put the NaN back so divergence is reported.
            matrix = getattr(joint, kind)[rows, cols].masked_fill(~finite, float("nan"))
            labels2 = None if self_pairs else y_cols
            arrays[f"class_{kind}"] = class_stiffness(matrix, y_rows, labels2, num_classes=num_classes).cpu()
            if self.class_groups is not None:
                coarse = torch.tensor(self.class_groups, device=targets.device)
                arrays[f"superclass_{kind}"] = class_stiffness(
                    matrix,
                    coarse[y_rows],
                    None if self_pairs else coarse[y_cols],
                    num_classes=max(self.class_groups) + 1,
                ).cpu()
            arrays[f"{kind}_mean"] = _masked_mean(matrix, pair)
            arrays[f"same_class_{kind}"] = _masked_mean(matrix, pair & same)
            arrays[f"different_class_{kind}"] = _masked_mean(matrix, pair & ~same)
            if bool((pair & finite).any()):
                edges, mean, count = stiffness_by_distance(
                    matrix,
                    inputs[rows],
                    None if self_pairs else inputs[cols],
                    num_bins=self.num_distance_bins,
                    distance=self.distance,
                )
            else:  # no finite pair at all: the functional version fails on an empty bincount
                edges = torch.linspace(0.0, 2.0, self.num_distance_bins + 1, dtype=torch.float64)
                mean = torch.full((self.num_distance_bins,), float("nan"), dtype=torch.float64)
                count = torch.zeros(self.num_distance_bins, dtype=torch.long)
            arrays["bin_edges"], arrays[f"distance_{kind}"], arrays["distance_count"] = (
                edges.cpu(),
                mean.cpu(),
                count.cpu(),
            )
            result.scalars[f"{tag}/{kind}"] = arrays[f"{kind}_mean"]
            for which in ("same_class", "different_class"):
                value = arrays[f"{which}_{kind}"]
                if value == value:  # no pairs of this kind (e.g. one class only) is not a failure
                    result.scalars[f"{tag}/{which}_{kind}"] = value
        edges = arrays["bin_edges"]
        centres = (edges[1:] + edges[:-1]) / 2
        length = critical_length(centres, arrays["distance_sign"])
        arrays["critical_length"] = length
        if length == length:
            result.scalars[f"{tag}/critical_length"] = length
        result.arrays.update({f"{group}/{k}": v for k, v in arrays.items()})
        self._figures(result, group, arrays, names, epoch)

    def _figures(
        self, result: Measurement, group: str, arrays: dict[str, Any], names: list[str] | None, epoch: int
    ) -> None:
        from lightning_sensitivity.logging import plot_class_matrix, plot_stiffness_by_distance

        tag = f"{PREFIX}/{group}"
        for kind in KINDS:
            result.figures.append(
                (
                    f"{tag}/class_{kind}_matrix",
                    lambda k=kind: plot_class_matrix(
                        arrays[f"class_{k}"],
                        names,
                        title=f"{group} class {k} stiffness, epoch {epoch}",
                        vmin=-1.0,
                        vmax=1.0,
                    ),
                )
            )
            if f"superclass_{kind}" in arrays:
                result.figures.append(
                    (
                        f"{tag}/superclass_{kind}_matrix",
                        lambda k=kind: plot_class_matrix(
                            arrays[f"superclass_{k}"],
                            self.group_names,
                            title=f"{group} super-class {k} stiffness, epoch {epoch}",
                            vmin=-1.0,
                            vmax=1.0,
                        ),
                    )
                )
        result.figures.append(
            (
                f"{tag}/by_distance",
                lambda: plot_stiffness_by_distance(
                    arrays["bin_edges"],
                    arrays["distance_sign"],
                    arrays["distance_count"],
                    critical_length=arrays["critical_length"],
                    title=f"{group} sign stiffness by {self.distance} input distance, epoch {epoch}",
                ),
            )
        )
