"""``StiffnessMonitor``: gradient alignment between examples (Fort et al. 2019), per class and by input distance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity._checks import (
    check_bool,
    check_choice,
    check_class_groups,
    check_class_names,
    check_int,
    check_loss_fn,
    check_names,
    describe,
)
from lightning_sensitivity.callbacks._gram import joint_stiffness, shared_joint_summaries
from lightning_sensitivity.callbacks._influence import InfluenceMixin
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import (
    critical_length_bootstrap,
    gram_engine_plan,
    gram_statistics,
    pair_means,
    per_layer_gram,
    predict_logits,
    stiffness_from_gram,
    stiffness_summary,
)
from lightning_sensitivity.functional.critical_length import METHODS as CRITICAL_METHODS
from lightning_sensitivity.functional.stiffness import DISTANCES, pairwise_distance
from lightning_sensitivity.keys import GROUPS, TRAIN, VAL
from lightning_sensitivity.keys import STIFFNESS_KINDS as KINDS
from lightning_sensitivity.probes import ProbeSet, is_class_targets


class StiffnessMonitor(InfluenceMixin, SensitivityMonitor):
    """Log gradient stiffness between probe examples: do gradient steps on one example help or hurt another?

    For per-example loss gradients ``g_i`` (all trainable parameters, eval mode), sign stiffness is
    ``sign(g_i . g_j)`` and cosine stiffness ``cos(g_i, g_j)`` (Fort et al. 2019, "Stiffness: a new perspective on
    generalization in neural networks"). For each pair group -- ``"train_train"`` (training probe set with itself),
    ``"train_val"`` (training rows, validation columns), ``"val_val"`` -- the monitor logs the overall mean, the
    same-class and different-class means (pairs of an example with itself excluded), class-by-class matrices, and
    the stiffness as a function of the input distance of the pair with its critical length (the distance where the
    binned sign stiffness first reaches zero). Per-example gradients of all needed probe examples are computed once
    per measurement and shared by the groups.

    Logged scalars (at the step of Lightning's epoch-end metrics), for each group ``g``:

    - ``sensitivity/stiffness/{g}/sign``, ``sensitivity/stiffness/{g}/cosine``
    - ``sensitivity/stiffness/{g}/same_class_sign``, ``.../same_class_cosine``, ``.../different_class_sign``,
      ``.../different_class_cosine``
    - ``sensitivity/stiffness/{g}/critical_length`` (only when the binned sign stiffness crosses zero)
    - ``sensitivity/stiffness/sketch_dim`` (only with ``sketch_dim``: the values of that step are estimates)

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
        critical_length_method: ``"first_crossing"`` (default) or ``"linear_fit"``
            (:func:`~lightning_sensitivity.functional.critical_length`). On trained MNIST MLPs the first crossing
            moved less than the linear fit when the probe set was redrawn (``docs/findings.md``, section 4).
        critical_length_bootstrap: bootstrap replicates over probe points for a 95 % interval of the critical length
            of same-set groups (``critical_length_low`` / ``critical_length_high``); 0 = off.
        critical_length_same_class: also log ``{g}/same_class_critical_length``, the critical length of the
            same-class pairs only (Fort et al. read the length scale within a class), with its bootstrap interval
            when ``critical_length_bootstrap`` is on.
        influence: accumulate the ``train_val`` Gram of every ``fit`` measurement, weighted by the learning rate,
            into TracIn checkpoint influence (Pruthi et al. 2020; no extra pass): per val probe example the
            ``influence_top_k`` most helpful and most harmful training probe examples (artifact arrays
            ``train_val/influence_helpful``, ``..._harmful``, indices into the training probe set, whose dataset
            positions are ``train_val/train_indices``; image ``sensitivity/stiffness/train_val/influence_examples``
            for image inputs), the self-influence of each training probe example (histogram
            ``sensitivity/stiffness/train_val/self_influence``) and the full influence matrix. Needs ``"train_val"``
            in ``groups``. See :mod:`lightning_sensitivity.callbacks._influence` for the learning-rate weights.
        influence_top_k: how many helpful and harmful training examples per val example.
        flipped_labels: positions in the training data (dataset indices, or rows of ``train_data``) whose labels
            are known to be wrong; then the AUROC of self-influence (and of the loss, the baseline) for finding them
            among the training probe examples is logged (``train_val/self_influence_flipped_auroc``,
            ``train_val/loss_flipped_auroc``). Needs ``influence=True``.
        sketch_dim: estimate the Gram from ``k`` random projections per example
            (:func:`~lightning_sensitivity.functional.loss_gradient_gram`'s ``sketch_dim``): ``O(N k)`` memory,
            relative error about ``1 / sqrt(k)`` of ``|g_i| |g_j|``; every stiffness value is then an estimate, and
            ``sensitivity/stiffness/sketch_dim`` is logged with it. Not with ``per_layer``. None (default): exact.
        sketch_seed: seed of the sketch (the same maps at every measurement, so epochs compare).
        **kwargs: the common arguments of :class:`SensitivityMonitor`.

    Raises:
        TypeError / ValueError: a bad argument, naming it.
        MisconfigurationException: in ``setup``, when a group needs training data and none is reachable.

    Example::

        monitor = StiffnessMonitor(groups=("train_val", "val_val"), class_names=dm.class_names, every_n_epochs=5)
        trainer = Trainer(callbacks=[monitor])
    """

    quantity = "stiffness"
    needs_parameter_gradients = True
    state_fields = ("num_samples", "seed", "groups")
    # Loss gradients are taken w.r.t. the parameters: with `embed_fn` the composition (embedding table included).
    differentiates_inputs = False

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
        critical_length_method: str = "first_crossing",
        critical_length_bootstrap: int = 0,
        per_layer: bool = False,
        layer_groups: Mapping[str, Sequence[str]] | None = None,
        critical_length_same_class: bool = False,
        influence: bool = False,
        influence_top_k: int = 5,
        flipped_labels: Sequence[int] | Tensor | None = None,
        sketch_dim: int | None = None,
        sketch_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.loss_fn = check_loss_fn(loss_fn)
        self.per_layer = check_bool(per_layer, "per_layer")
        self.sketch_dim = check_int(sketch_dim, "sketch_dim", minimum=1, allow_none=True)
        self.sketch_seed = check_int(sketch_seed, "sketch_seed", minimum=0)
        if self.sketch_dim is not None and self.per_layer:
            raise ValueError("`sketch_dim` expected None with `per_layer=True` (per-layer blocks are exact), got "
                             f"{self.sketch_dim}")  # fmt: skip
        if layer_groups is not None:
            if not isinstance(layer_groups, Mapping):
                raise TypeError(
                    f"`layer_groups` expected a mapping {{name: [module prefix, ...]}}, got {describe(layer_groups)}"
                )
            if not per_layer:
                raise ValueError("`layer_groups` expected `per_layer=True` to be given too, got per_layer=False")
        self.layer_groups = None if layer_groups is None else {k: list(v) for k, v in layer_groups.items()}
        self._layer_history: dict[str, list[tuple[int, dict[str, dict[str, float]]]]] = {}
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
            raise TypeError(
                f"`groups` expected a sequence of names from {GROUPS}, got {type(groups).__name__} {groups!r}"
            )
        if not groups or any(g not in GROUPS for g in groups) or len(set(groups)) != len(groups):
            raise ValueError(f"`groups` expected distinct names from {GROUPS}, got {list(groups)!r}")
        self.num_distance_bins = check_int(num_distance_bins, "num_distance_bins", minimum=1)
        self.distance = check_choice(distance, "distance", DISTANCES)
        self.critical_length_method = check_choice(critical_length_method, "critical_length_method", CRITICAL_METHODS)
        self.critical_length_bootstrap = check_int(critical_length_bootstrap, "critical_length_bootstrap", minimum=0)
        self.critical_length_same_class = check_bool(critical_length_same_class, "critical_length_same_class")
        self.class_names = check_names(class_names, "class_names")
        self.class_groups = check_class_groups(class_groups)
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
        self.groups = tuple(groups)
        # Which Gram engine served the model (functional ``gram_engine_plan``), once it has been measured.
        self._gram_engine: str | None = None
        self.init_influence(influence, influence_top_k, flipped_labels, self.groups)
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        return frozenset(split for g in self.groups for split in g.split("_")), frozenset()

    @override
    def measurable(self, probes: dict[str, ProbeSet]) -> bool:
        # A split that could not be drawn (reported once) must not silence the groups that do not need it.
        return any(set(g.split("_")) <= probes.keys() for g in self.groups)

    @override
    def skipped_for(self, missing: set[str]) -> str:
        skipped = [g for g in self.groups if set(g.split("_")) & missing]
        return f"groups {', '.join(skipped)}"

    @override
    def missing_hint(self, missing: list[str]) -> str:
        return " Or measure validation pairs only: `groups=('val_val',)`." if TRAIN in missing else ""

    @override
    def layout_groups(self) -> tuple[str, ...]:
        return self.groups

    @override
    def layout_splits(self) -> dict[str, tuple[str, ...]]:
        return {"stiffness/layer": tuple(self.groups)} if self.per_layer else {}

    @override
    def check_classes(self, num_classes: int) -> None:
        check_class_names(self.class_names, num_classes, "class_names")
        if self.class_groups is not None and len(self.class_groups) != num_classes:
            raise ValueError(
                f"`class_groups` expected one super-class per class of the data ({num_classes}), got "
                f"{len(self.class_groups)}"
            )

    @override
    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "groups": self.groups,
            "loss_fn": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
            "num_distance_bins": self.num_distance_bins,
            "distance": self.distance,
            "critical_length_method": self.critical_length_method,
            "critical_length_bootstrap": self.critical_length_bootstrap,
            "per_layer": self.per_layer,
            "layer_groups": self.layer_groups,
            "critical_length_same_class": self.critical_length_same_class,
            "sketch_dim": self.sketch_dim,
            "sketch_seed": self.sketch_seed,
            "class_names": self.class_names,
            "class_groups": self.class_groups,
            "group_names": self.group_names,
            "gram_engine": self._gram_engine,
            **self.influence_config(),
        }

    def _say_engine(self, model: nn.Module) -> None:
        """Name the Gram engine in the configuration text, and warn once per distinct plan that took a slower path
        (the parameters that forced it and why)."""
        plan = gram_engine_plan(model)
        if plan is None:
            return
        self._gram_engine = plan.describe()
        if plan.slower:
            self.warn_once(f"gram engine: {self._gram_engine}", f"{type(self).__name__}: {self._gram_engine}")

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        groups = [g for g in self.groups if set(g.split("_")) <= probes.keys()]
        skipped = [g for g in self.groups if g not in groups]
        if skipped and not self._unavailable:  # under validate/test without training data: said in setup
            self.warn_once(
                f"groups {skipped}",
                f"{type(self).__name__}: groups {skipped} are not measured because their probe sets could not be drawn "
                f"(see the earlier warning); {groups} are.",
            )
        splits = [s for s in (TRAIN, VAL) if any(s in g.split("_") for g in groups)]
        # One set of per-example gradients for all groups: the stiffness of a slice of the joint matrix is the
        # stiffness between the two slices' examples.
        inputs = torch.cat([probes[s].inputs for s in splits])
        targets = torch.cat([probes[s].targets for s in splits])
        kwargs = {k: torch.cat([probes[s].model_kwargs[k] for s in splits]) for k in probes[splits[0]].model_kwargs}
        offsets, start = {}, 0
        for s in splits:
            offsets[s] = slice(start, start + len(probes[s]))
            start += len(probes[s])
        classes = is_class_targets(targets)
        num_classes = None
        if classes:
            first = {k: v[:1] for k, v in kwargs.items()} or None
            num_classes = max(int(targets.max()) + 1, predict_logits(model, inputs[:1], model_kwargs=first).shape[1])
        else:
            self.warn_once(
                "not classes",
                f"{type(self).__name__}: the targets are not integer class indices [N] (got {targets.dtype} of shape "
                f"{tuple(targets.shape)}), so same-/different-class stiffness and the class matrices are not logged.",
            )
        distance_inputs = inputs if inputs.is_floating_point() else inputs.double()
        layers: dict[str, Any] = {}
        shared: dict[str, Any] = {}
        shard, exchange = self.shard_exchange(inputs.shape[0])
        if self.per_layer:
            # One pass gives every layer's block; the full Gram is their sum, so the per-layer view costs little more.
            layers = per_layer_gram(
                model, inputs, targets, layer_groups=self.layer_groups, loss_fn=self.loss_fn,
                chunk_size=self.chunk_size, model_kwargs=kwargs or None,
            )  # fmt: skip
            joint = stiffness_from_gram(sum(layers.values()), self_pairs=True)
            # Each layer's stiffness of the joint set once (every example's own norm is on its diagonal).
            layers = {name: stiffness_from_gram(block, self_pairs=True) for name, block in layers.items()}
        elif shard.world_size > 1:
            # DDP: each rank forms its rows of the Gram and sums the summaries over them; the sums are reduced.
            shared, joint = shared_joint_summaries(
                self, model, inputs, targets, kwargs, progress, shard, exchange,
                {g: tuple(offsets[s] for s in g.split("_")) for g in groups}, distance_inputs, num_classes,
                self.class_groups if classes else None,
            )  # fmt: skip
        else:
            joint = joint_stiffness(self, model, inputs, targets, kwargs, progress)
        self._say_engine(model)
        names = self.display_names(num_classes)
        result = Measurement(
            meta={
                "class_names": names,
                "groups": list(groups),
                "group_names": self.group_names,
                "distance": self.distance,
                "num_classes": num_classes,
                "sketch_dim": self.sketch_dim,
            }
        )
        if self.sketch_dim is not None:
            result.scalars[keys.STIFFNESS_SKETCH_DIM] = float(self.sketch_dim)
        # One input-distance matrix of the joint set; each group bins its slice (instead of one per group and kind).
        distances = None if shared else pairwise_distance(distance_inputs.cpu(), None, self.distance)
        for group in groups:
            rows, cols = (offsets[s] for s in group.split("_"))
            same = rows == cols
            summary = (
                shared[group]
                if shared
                else stiffness_summary(
                    joint.sign[rows, cols],
                    joint.cosine[rows, cols],
                    targets[rows],
                    None if same else targets[cols],
                    inputs_rows=distance_inputs[rows],
                    inputs_cols=None if same else distance_inputs[cols],
                    num_classes=num_classes,
                    class_groups=self.class_groups if classes else None,
                    num_distance_bins=self.num_distance_bins,
                    distance=self.distance,
                    critical_length_method=self.critical_length_method,
                    same_class_critical_length=self.critical_length_same_class and classes,
                    distances=None if distances is None else distances[rows, cols],
                )
            )
            arrays = summary.arrays()
            scalars = {
                "sign": summary.sign_mean,
                "cosine": summary.cosine_mean,
                "critical_length": summary.critical_length,
            }
            if classes:
                scalars.update(
                    {f"{w}_{k}": getattr(summary, f"{w}_{k}") for w in ("same_class", "different_class") for k in KINDS}
                )
                if self.critical_length_same_class:
                    scalars["same_class_critical_length"] = summary.same_class_critical_length
            if same:
                scalars.update(
                    gram_statistics(joint.gram[rows, rows], targets[rows] if classes else None, num_classes=num_classes)
                )
                if self.critical_length_bootstrap:
                    _, low, high = critical_length_bootstrap(
                        joint.sign[rows, rows], distance_inputs[rows], num_bootstrap=self.critical_length_bootstrap,
                        seed=self.seed, num_bins=self.num_distance_bins, distance=self.distance,
                        method=self.critical_length_method,
                    )  # fmt: skip
                    scalars.update(critical_length_low=low, critical_length_high=high)
                    if self.critical_length_same_class and classes:
                        _, low, high = critical_length_bootstrap(
                            joint.sign[rows, rows], distance_inputs[rows], targets[rows],
                            num_bootstrap=self.critical_length_bootstrap, seed=self.seed,
                            num_bins=self.num_distance_bins, distance=self.distance,
                            method=self.critical_length_method, same_class_only=True,
                        )  # fmt: skip
                        scalars.update(same_class_critical_length_low=low, same_class_critical_length_high=high)
            for name, value in scalars.items():
                if name not in ("sign", "cosine"):  # stored as sign_mean / cosine_mean
                    arrays.setdefault(name, value)
                # NaN in the overall means is a diverged model (reported by the base class); elsewhere it means no
                # pairs of this kind, no zero crossing or too few examples -- not a failure, just not logged.
                if value == value or name in ("sign", "cosine"):
                    result.scalars[keys.metric(keys.STIFFNESS, group, name)] = value
            result.arrays.update({keys.stiffness_array(group, k): v for k, v in arrays.items()})
            self._figures(result, group, arrays, names, epoch)
            if layers:
                self._layers(result, group, layers, targets[rows], None if same else targets[cols], rows, cols, epoch)
            if group == "train_val":
                self.add_influence(result, joint.gram, rows, cols, probes[TRAIN], probes[VAL], model, epoch)
        return result

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._layer_history = {}

    def _layers(self, result: Measurement, group: str, layers: dict[str, Tensor], y_rows: Tensor, y_cols: Tensor | None,
                rows: slice, cols: slice, epoch: int) -> None:  # fmt: skip
        """Per-layer sign and cosine stiffness of one group, and the layers x measured epochs image."""
        cosines: dict[str, dict[str, float]] = {}
        for layer, s in layers.items():
            for kind in KINDS:
                means = pair_means(getattr(s, kind)[rows, cols], y_rows, y_cols, self_pairs=y_cols is None)
                if means["mean"] == means["mean"]:
                    result.scalars[keys.metric(keys.STIFFNESS, group, "layer", layer, kind)] = means["mean"]
                if kind == "cosine":
                    cosines[layer] = means
            result.arrays[keys.stiffness_array(group, f"layer/{layer}/cosine")] = cosines[layer]["mean"]
        history = self._layer_history.setdefault(group, [])
        history[:] = [h for h in history if h[0] != epoch] + [(epoch, cosines)]
        classes = is_class_targets(y_rows)
        parts = ("same_class", "different_class") if classes else ("mean",)
        output = list(layers)[-1]  # in module order: the last layer is the one producing the logits
        row_names = [f"{layer}{' (output)' if layer == output else ''} {part.split('_')[0] if classes else ''}".strip()
                     for part in parts for layer in layers]  # fmt: skip
        matrix = torch.tensor([[h[1][layer][part] for h in history] for part in parts for layer in layers])
        epochs = [str(h[0]) for h in history]
        title = f"{group} per-layer cosine stiffness by epoch"
        ylabel = "layer, same / different class" if classes else "layer (all pairs)"

        def draw() -> Any:
            from lightning_sensitivity.logging.render import render_class_matrix

            return render_class_matrix(matrix, row_names, col_names=epochs, title=title, xlabel="epoch", ylabel=ylabel)

        result.figures.append((keys.metric(keys.STIFFNESS, group, "per_layer_cosine"), draw))

    def _figures(
        self, result: Measurement, group: str, arrays: dict[str, Any], names: list[str] | None, epoch: int
    ) -> None:
        from lightning_sensitivity.logging.render import render_class_matrix, render_stiffness_by_distance

        tag = partial(keys.metric, keys.STIFFNESS, group)
        for kind in KINDS:
            if f"class_{kind}" not in arrays:  # no classes (regression, multi-label targets): no class matrices
                continue
            result.figures.append(
                (
                    tag(f"class_{kind}_matrix"),
                    lambda k=kind: render_class_matrix(
                        arrays[f"class_{k}"],
                        names,
                        title=f"{group} class {k} stiffness, epoch {epoch}",
                        vmin=-1.0,
                        vmax=1.0,
                        xlabel=f"{group.split('_')[1]} class",
                        ylabel=f"{group.split('_')[0]} class",
                    ),
                )
            )
            if f"superclass_{kind}" in arrays:
                result.figures.append(
                    (
                        tag(f"superclass_{kind}_matrix"),
                        lambda k=kind: render_class_matrix(
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
                tag("by_distance"),
                lambda: render_stiffness_by_distance(
                    arrays["bin_edges"],
                    arrays["distance_sign"],
                    arrays["distance_count"],
                    critical_length=arrays["critical_length"],
                    title=f"{group} sign stiffness by {self.distance} input distance, epoch {epoch}",
                ),
            )
        )
