"""Every name the monitors write, built in one place: metric tags, image and histogram tags, artifact keys.

Metric and image tags are ``sensitivity/<quantity>/<split or group>/<stat>``; artifact keys are the names of the
arrays inside one quantity's NPZ file (``val_norms``, ``val_val/class_sign``, ...). Writers, the offline report, the
compare tool and the tests build and read names through these functions, and :data:`SCHEMA` documents the metric
tags each monitor can log (``{split}``-style placeholders), so a test can check a monitor logs exactly those.

Example:
    >>> metric(JACOBIAN, "val", "mean")
    'sensitivity/jacobian_norm/val/mean'
    >>> stiffness_array("train_val", "class_sign")
    'train_val/class_sign'
    >>> matches("sensitivity/jacobian_norm/val/class_3", "sensitivity/jacobian_norm/{split}/class_{c}")
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The first segment of every tag, and the artifact folder under the log directory.
ROOT = "sensitivity"
#: The quantity of ``JacobianNormMonitor``: tags ``sensitivity/jacobian_norm/...``.
JACOBIAN = "jacobian_norm"
#: The quantity of ``TransitionMonitor``.
TRANSITIONS = "transitions"
#: The quantity of ``StiffnessMonitor``.
STIFFNESS = "stiffness"
#: The quantity of ``SharpnessMonitor``.
SHARPNESS = "sharpness"
#: The built-in quantities, the keys of :data:`SCHEMA`.
QUANTITIES = (JACOBIAN, TRANSITIONS, STIFFNESS, SHARPNESS)

# Probe splits and the stiffness pair groups built from them.
TRAIN, VAL, TEST = "train", "val", "test"
#: The stiffness pair groups: rows' probe set, then columns' probe set.
GROUPS = ("train_train", "train_val", "val_val")
SAME_SET_GROUPS = ("train_train", "val_val")
STIFFNESS_KINDS = ("sign", "cosine")
JACOBIAN_STATS = ("mean", "median", "p90")
JACOBIAN_AUROCS = ("misclassification_auroc", "confidence_auroc", "entropy_auroc")
TRANSITION_STATS = ("activation", "region_changes", "prediction")
#: What ``SharpnessMonitor`` logs per probe split.
SHARPNESS_STATS = (
    "loss",
    "top_eigenvalue",
    "top_eigenvalue_residual",
    "hessian_trace",
    "hessian_trace_se",
    "gauss_newton_trace",
)
#: Statistics of one set's gradient Gram matrix (``functional.gram_statistics``), logged for the same-set groups.
GRAM_STATS = (
    "coherence",
    "m_coherence",
    "gradient_diversity",
    "fisher_trace",
    "label_alignment",
    "norm_test",
    "inner_product_test",
    "orthogonality_test",
)

#: The artifact folder: files ``{log_dir}/sensitivity/{quantity}/epoch_NNNN.npz``.
ARTIFACT_DIR = ROOT

#: The keys users read next to the sensitivity ones (the reference ``LitClassifier`` logs them).
GENERALIZATION_KEYS = ("generalization_gap/acc", "generalization_gap/loss", "val/acc", "val/loss")

__all__ = [
    "ARTIFACT_ARRAYS",
    "ARTIFACT_DIR",
    "COMPARE_X",
    "COMPARE_Y",
    "CONDITIONAL",
    "GENERALIZATION_KEYS",
    "GRAM_STATS",
    "GROUPS",
    "INFLUENCE_ARRAYS",
    "INFLUENCE_STATS",
    "JACOBIAN",
    "NONFINITE",
    "QUANTITIES",
    "ROOT",
    "SCHEMA",
    "SHARPNESS",
    "SHARPNESS_STATS",
    "STIFFNESS",
    "STIFFNESS_GROUP_ARRAYS",
    "STIFFNESS_SAME_SET_ARRAYS",
    "STIFFNESS_SKETCH_DIM",
    "TRANSITIONS",
    "artifact_file",
    "config_tag",
    "matches",
    "metric",
    "notes_tag",
    "prefix",
    "rename_split",
    "schema_keys",
    "split_array",
    "stiffness_array",
    "transition_array",
]


def prefix(quantity: str) -> str:
    """``sensitivity/<quantity>``: the common start of a quantity's tags."""
    return f"{ROOT}/{quantity}"


def metric(quantity: str, *parts: str) -> str:
    """The tag ``sensitivity/<quantity>/<part>/...`` of a scalar, histogram or image."""
    return "/".join((ROOT, quantity, *parts))


def config_tag(monitor_name: str) -> str:
    """The TensorBoard text tag of a monitor's configuration table."""
    return f"{ROOT}/config/{monitor_name}"


def notes_tag(monitor_name: str) -> str:
    """The text tag of a monitor's notes on a measurement (e.g. saturated counts), beside its charts."""
    return f"{ROOT}/notes/{monitor_name}"


def split_array(split: str, name: str) -> str:
    """An artifact array of one probe split: ``val_norms``, ``train_correct``."""
    return f"{split}_{name}"


def transition_array(split: str, name: str) -> str:
    """Transition artifact arrays: bare for ``val`` (``activation``), ``{split}_`` prefixed otherwise."""
    return name if split == VAL else f"{split}_{name}"


def stiffness_array(group: str, name: str) -> str:
    """A per-group stiffness artifact array, e.g. ``train_val/class_sign``."""
    return f"{group}/{name}"


def artifact_file(epoch: int) -> str:
    """The file name of one epoch's artifact: ``epoch_0003.npz``."""
    return f"epoch_{epoch:04d}.npz"


def rename_split(tag: str, old: str, new: str) -> str:
    """``tag`` with the probe split ``old`` renamed ``new`` in its split/group segment.

    Example:
        >>> rename_split("sensitivity/stiffness/train_val/sign", "val", "test")
        'sensitivity/stiffness/train_test/sign'
    """
    parts = tag.split("/")
    if len(parts) > 2 and parts[0] == ROOT:
        parts[2] = "_".join(new if token == old else token for token in parts[2].split("_"))
    return "/".join(parts)


_J, _T, _S = prefix(JACOBIAN), prefix(TRANSITIONS), prefix(STIFFNESS)
#: The metric tags each monitor can log, per quantity. Placeholders: ``{split}`` (val, train, test), ``{group}`` (a
#: stiffness pair group), ``{same_group}`` (a group of one set with itself), ``{held_out}`` (val, or test under
#: ``trainer.test``), ``{c}`` (a class index), ``{kind}`` (sign or cosine), ``{layer}`` (a layer name). Add a new tag
#: here first: ``tests/test_keys.py`` checks that the monitors log exactly these and that the README's "Logged
#: metrics" table lists them.
SCHEMA: dict[str, tuple[str, ...]] = {
    JACOBIAN: (
        *(f"{_J}/{{split}}/{stat}" for stat in JACOBIAN_STATS),
        f"{_J}/train_{{held_out}}_ratio",
        *(f"{_J}/{{split}}/{name}" for name in JACOBIAN_AUROCS),
        f"{_J}/{{split}}/class_{{c}}",
    ),
    TRANSITIONS: (
        *(f"{_T}/{{split}}/{stat}_mean" for stat in TRANSITION_STATS),
        f"{_T}/{{split}}/region_changes_fraction",
        f"{_T}/{{split}}/near_anchor_ratio",
    ),
    STIFFNESS: (
        f"{_S}/{{group}}/{{kind}}",
        f"{_S}/{{group}}/same_class_{{kind}}",
        f"{_S}/{{group}}/different_class_{{kind}}",
        f"{_S}/{{group}}/critical_length",
        f"{_S}/{{same_group}}/critical_length_low",
        f"{_S}/{{same_group}}/critical_length_high",
        *(f"{_S}/{{same_group}}/{stat}" for stat in GRAM_STATS),
        f"{_S}/{{group}}/layer/{{layer}}/{{kind}}",
    ),
}

_H = prefix(SHARPNESS)
SCHEMA[SHARPNESS] = tuple(f"{_H}/{{split}}/{stat}" for stat in SHARPNESS_STATS)

# TransitionMonitor: ellipses through shuffled (off-manifold) validation anchors, and the near-anchor density ratio.
TRANSITION_RANDOM = "random"
SCHEMA[TRANSITIONS] += (
    *(f"{_T}/{TRANSITION_RANDOM}/{stat}_mean" for stat in TRANSITION_STATS),
    f"{_T}/{TRANSITION_RANDOM}/region_changes_fraction",
    f"{_T}/{TRANSITION_RANDOM}/near_anchor_ratio",
)
SCHEMA[STIFFNESS] += (f"{_S}/{{group}}/same_class_critical_length",)
#: How many probe examples of a split a measurement left out for non-finite inputs, targets or model outputs.
NONFINITE = "nonfinite"
for _quantity in QUANTITIES:
    SCHEMA[_quantity] += (f"{prefix(_quantity)}/{{split}}/{NONFINITE}",)
#: StiffnessMonitor(influence=True): the TracIn influence statistics, accumulated from the train_val Grams of a fit.
INFLUENCE_STATS = ("self_influence_mean", "self_influence_flipped_auroc", "loss_flipped_auroc")
SCHEMA[STIFFNESS] += tuple(f"{_S}/train_val/{stat}" for stat in INFLUENCE_STATS)
# JacobianNormMonitor(num_projections=K): the standard error of the estimated mean norm.
SCHEMA[JACOBIAN] += (f"{_J}/{{split}}/mean_stderr",)
#: Logged, as the sketch dimension ``k``, at each measurement of a ``StiffnessMonitor(sketch_dim=k)``: the marker that
#: the stiffness values of that step are estimates from a sketched Gram (the other tags keep their names).
STIFFNESS_SKETCH_DIM = f"{_S}/sketch_dim"
SCHEMA[STIFFNESS] += (STIFFNESS_SKETCH_DIM,)

#: SCHEMA templates a monitor may leave out even with every option that enables it on, and why. Every other
#: template is logged at each measurement of a fit whose options enable it.
CONDITIONAL: dict[str, str] = {
    f"{_J}/train_{{held_out}}_ratio": "needs the train probe set and a non-zero val mean norm",
    **{
        f"{_J}/{{split}}/{name}": "needs integer class targets and both right and wrong predictions on the probe set"
        for name in JACOBIAN_AUROCS
    },
    f"{_J}/{{split}}/class_{{c}}": "needs integer class targets",
    f"{_J}/{{split}}/mean_stderr": "only with `num_projections=` (the estimated norm)",
    f"{_T}/{{split}}/activation_mean": "needs ReLU-family units (a model without them has no activation pattern)",
    f"{_T}/{{split}}/region_changes_mean": "needs ReLU-family units",
    f"{_T}/{{split}}/prediction_mean": "needs a predicted class (not logged for real-valued, regression targets)",
    f"{_T}/{{split}}/region_changes_fraction": "needs ReLU-family units",
    f"{_T}/{{split}}/near_anchor_ratio": "NaN (so not logged) when no segment away from the anchors changes",
    f"{_S}/{{group}}/same_class_{{kind}}": "needs a pair of distinct examples of one class",
    f"{_S}/{{group}}/different_class_{{kind}}": "needs two classes in the group",
    f"{_S}/{{group}}/critical_length": "only when the binned sign stiffness crosses zero",
    **{
        f"{_S}/{{same_group}}/critical_length_{end}": "only with `critical_length_bootstrap=` > 0 and a finite "
        "bootstrap interval"
        for end in ("low", "high")
    },
    f"{_S}/{{same_group}}/label_alignment": "needs integer class targets and at least two classes",
    f"{_S}/{{group}}/layer/{{layer}}/{{kind}}": "only with `per_layer=True`",
    **{f"{_T}/{TRANSITION_RANDOM}/{stat}_mean": 'only with "random" in `splits`' for stat in TRANSITION_STATS},
    f"{_T}/{TRANSITION_RANDOM}/near_anchor_ratio": 'only with "random" in `splits`',
    f"{_T}/{TRANSITION_RANDOM}/region_changes_fraction": 'only with "random" in `splits`',
    f"{_S}/{{group}}/same_class_critical_length": "only with `critical_length_same_class=True` and a zero crossing",
    **{
        f"{prefix(q)}/{{split}}/{NONFINITE}": "only when probe examples have non-finite inputs, targets or model "
        "outputs (they are left out of the measurement)"
        for q in QUANTITIES
    },
    f"{_H}/{{split}}/hessian_trace": "only with `num_vectors=` > 0",
    f"{_H}/{{split}}/hessian_trace_se": "only with `num_vectors=` > 1 (one vector has no standard error)",
    f"{_H}/{{split}}/gauss_newton_trace": "only with `gauss_newton=True`",
    f"{_S}/train_val/self_influence_mean": "only with `influence=True`, during fit, after the first optimizer step",
    **{
        f"{_S}/train_val/{stat}": "only with `influence=True` and `flipped_labels=` flagging some but not all "
        "training probe examples"
        for stat in INFLUENCE_STATS[1:]
    },
    STIFFNESS_SKETCH_DIM: "only with `sketch_dim=`; the stiffness values of that step are then estimates",
}

#: The arrays the stiffness artifact holds for each pair group, stored as :func:`stiffness_array` ``(group, name)``.
STIFFNESS_GROUP_ARRAYS = (
    "class_sign",
    "class_cosine",
    "superclass_sign",
    "superclass_cosine",
    "bin_edges",
    "distance_sign",
    "distance_cosine",
    "distance_count",
    "sign_mean",
    "cosine_mean",
    "same_class_sign",
    "different_class_sign",
    "same_class_cosine",
    "different_class_cosine",
    "critical_length",
)
#: Per-group stiffness artifact arrays written for the same-set groups only.
STIFFNESS_SAME_SET_ARRAYS = (*GRAM_STATS, "critical_length_low", "critical_length_high")
#: The influence arrays of ``StiffnessMonitor(influence=True)``, stored as ``train_val/<name>``.
INFLUENCE_ARRAYS = (
    "influence",
    "self_influence",
    "influence_helpful",
    "influence_helpful_values",
    "influence_harmful",
    "influence_harmful_values",
    "influence_checkpoint_epochs",
    "influence_learning_rates",
    "train_indices",
    "flipped",
    *INFLUENCE_STATS[1:],
)
#: The arrays (NPZ keys) of each quantity's artifact file as the monitors write them; for ``stiffness`` the names
#: per pair group (the same-set ones only for ``train_train`` and ``val_val``).
ARTIFACT_ARRAYS: dict[str, tuple[str, ...]] = {
    JACOBIAN: (
        *(split_array(s, n) for s in (VAL, TRAIN) for n in ("norms", "labels", "correct", *JACOBIAN_STATS)),
        *(split_array(s, "stderr") for s in (VAL, TRAIN)),  # with num_projections: per-example standard errors
        "train_val_ratio",
        *JACOBIAN_AUROCS,
    ),
    TRANSITIONS: tuple(
        transition_array(s, n)
        for s in (VAL, TRAIN, "random")
        for n in (*TRANSITION_STATS, "anchor_indices", "segments")  # segments: [K, P] per-segment Hamming distances
    ),
    STIFFNESS: STIFFNESS_GROUP_ARRAYS + STIFFNESS_SAME_SET_ARRAYS + INFLUENCE_ARRAYS,
    SHARPNESS: tuple(
        split_array(s, n)
        for s in (TRAIN, VAL)
        for n in (*SHARPNESS_STATS, "ritz_values", "hutchinson_samples", "gauss_newton_per_example")
    ),
}

#: The default axes of ``python -m lightning_sensitivity.compare``: sensitivity keys (x) against generalization (y).
COMPARE_X = (
    metric(JACOBIAN, VAL, "mean"),
    metric(STIFFNESS, "val_val", "same_class_cosine"),
    metric(STIFFNESS, "val_val", "different_class_cosine"),
)
#: The default y axes of the compare tool.
COMPARE_Y = ("generalization_gap/acc", "generalization_gap/loss", "val/acc")

_PLACEHOLDERS = {
    "split": "|".join((VAL, TRAIN, TEST)),
    "group": "|".join(GROUPS + tuple(g.replace(VAL, TEST) for g in GROUPS if VAL in g)),
    "same_group": "|".join(SAME_SET_GROUPS + ("test_test",)),
    "held_out": f"{VAL}|{TEST}",
    "c": r"\d+",
    "kind": "|".join(STIFFNESS_KINDS),
    "layer": r"[^/]+",
}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?:{_PLACEHOLDERS[p]})" for i, p in enumerate(parts))
    return re.compile(f"^{regex}$")


def matches(key: str, template: str) -> bool:
    """Whether ``key`` is an instance of a :data:`SCHEMA` template."""
    return bool(_pattern(template).match(key))


def schema_keys(quantity: str, keys: Iterable[str]) -> dict[str, list[str]]:
    """The given keys grouped by the :data:`SCHEMA` template of ``quantity`` they match (``"?"``: none)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        template = next((t for t in SCHEMA[quantity] if matches(key, t)), "?")
        out.setdefault(template, []).append(key)
    return out
