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

ROOT = "sensitivity"
JACOBIAN = "jacobian_norm"
TRANSITIONS = "transitions"
STIFFNESS = "stiffness"
QUANTITIES = (JACOBIAN, TRANSITIONS, STIFFNESS)

# Probe splits and the stiffness pair groups built from them.
TRAIN, VAL, TEST = "train", "val", "test"
GROUPS = ("train_train", "train_val", "val_val")
SAME_SET_GROUPS = ("train_train", "val_val")
STIFFNESS_KINDS = ("sign", "cosine")
JACOBIAN_STATS = ("mean", "median", "p90")
JACOBIAN_AUROCS = ("misclassification_auroc", "confidence_auroc", "entropy_auroc")
TRANSITION_STATS = ("activation", "region_changes", "prediction")

# The keys users read next to the sensitivity ones (the reference LitClassifier logs them).
GENERALIZATION_KEYS = ("generalization_gap/acc", "generalization_gap/loss", "val/acc", "val/loss")

__all__ = [
    "GENERALIZATION_KEYS",
    "GROUPS",
    "JACOBIAN",
    "QUANTITIES",
    "ROOT",
    "SCHEMA",
    "STIFFNESS",
    "TRANSITIONS",
    "config_tag",
    "matches",
    "metric",
    "prefix",
    "rename_split",
    "schema_keys",
    "split_array",
    "stiffness_array",
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


def split_array(split: str, name: str) -> str:
    """An artifact array of one probe split: ``val_norms``, ``train_correct``."""
    return f"{split}_{name}"


def transition_array(split: str, name: str) -> str:
    """Transition artifact arrays: bare for ``val`` (``activation``), ``{split}_`` prefixed otherwise."""
    return name if split == VAL else f"{split}_{name}"


def stiffness_array(group: str, name: str) -> str:
    """A per-group stiffness artifact array, e.g. ``train_val/class_sign``."""
    return f"{group}/{name}"


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


# The metric tags each monitor can log. Placeholders: {split} (val, train, test), {group} (a stiffness pair group),
# {c} (a class index), {kind} (sign or cosine), {layer} (a layer name).
SCHEMA: dict[str, tuple[str, ...]] = {
    JACOBIAN: (
        *(f"{ROOT}/{JACOBIAN}/{{split}}/{stat}" for stat in JACOBIAN_STATS),
        f"{ROOT}/{JACOBIAN}/train_val_ratio",
        *(f"{ROOT}/{JACOBIAN}/{{split}}/{name}" for name in JACOBIAN_AUROCS),
        f"{ROOT}/{JACOBIAN}/{{split}}/class_{{c}}",
    ),
    TRANSITIONS: tuple(f"{ROOT}/{TRANSITIONS}/{{split}}/{stat}_mean" for stat in TRANSITION_STATS),
    STIFFNESS: (
        f"{ROOT}/{STIFFNESS}/{{group}}/{{kind}}",
        f"{ROOT}/{STIFFNESS}/{{group}}/same_class_{{kind}}",
        f"{ROOT}/{STIFFNESS}/{{group}}/different_class_{{kind}}",
        f"{ROOT}/{STIFFNESS}/{{group}}/critical_length",
    ),
}

# TransitionMonitor: ellipses through shuffled (off-manifold) validation anchors, and the near-anchor density ratio.
TRANSITION_RANDOM = "random"
SCHEMA[TRANSITIONS] += tuple(f"{ROOT}/{TRANSITIONS}/{TRANSITION_RANDOM}/{stat}_mean" for stat in TRANSITION_STATS)
SCHEMA[TRANSITIONS] += tuple(f"{ROOT}/{TRANSITIONS}/{s}/near_anchor_ratio" for s in ("{split}", TRANSITION_RANDOM))
SCHEMA[STIFFNESS] += (f"{ROOT}/{STIFFNESS}/{{group}}/same_class_critical_length",)

_PLACEHOLDERS = {
    "split": "|".join((VAL, TRAIN, TEST)),
    "group": "|".join(GROUPS + tuple(g.replace(VAL, TEST) for g in GROUPS if VAL in g)),
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
