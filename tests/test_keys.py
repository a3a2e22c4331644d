"""``keys.SCHEMA`` is the truth about the logged names: the monitors log exactly its tags, the README lists them.

One tiny fit (all three monitors, every option that adds tags: a train probe set, train trajectories, all stiffness
groups) followed by ``trainer.test`` is shared by the per-monitor tests. For each quantity:

- every logged ``sensitivity/<quantity>/...`` scalar matches some template of ``SCHEMA[<quantity>]``;
- every template is matched by some logged scalar, except those in ``keys.CONDITIONAL``, which say why they may be
  missing. Today these are the tags that depend on the data or the model (AUROCs need right and wrong predictions,
  per-class and same/different-class means need class targets, activation counts need ReLU units, the critical
  length needs a zero crossing) -- the tiny fit does produce them, but a correct run may not -- and the tags of
  monitor changes not merged yet (Gram statistics, bootstrap critical-length interval, transitions'
  ``near_anchor_ratio``, per-layer stiffness), which the merge turns on by deleting their ``CONDITIONAL`` entry.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from callbacks._tiny import TinyData, TinyModule, make_trainer, read_events, small_monitors

from lightning_sensitivity import JacobianNormMonitor, SharpnessMonitor, StiffnessMonitor, TransitionMonitor, keys
from lightning_sensitivity.logging import load_artifacts

README = Path(__file__).resolve().parents[1] / "README.md"

# One value per placeholder (two where the README spells the alternatives out), for instantiating templates.
SAMPLES = {
    "split": ("val",),
    "group": keys.GROUPS,
    "same_group": keys.SAME_SET_GROUPS,
    "held_out": ("val",),
    "c": ("3",),
    "kind": keys.STIFFNESS_KINDS,
    "layer": ("net.0",),
}
# Artifact arrays a correct fit may lack: super-class matrices need `class_groups`; the rest are not written yet or
# depend on data and model like the CONDITIONAL tags above.
CONDITIONAL_ARRAYS = {
    keys.JACOBIAN: set(keys.JACOBIAN_AUROCS) | {"train_val_ratio", "val_stderr", "train_stderr"},
    keys.TRANSITIONS: {n for n in keys.ARTIFACT_ARRAYS[keys.TRANSITIONS] if n.startswith("random_")},  # with "random"
    keys.SHARPNESS: set(),
    keys.STIFFNESS: {"superclass_sign", "superclass_cosine", *keys.STIFFNESS_SAME_SET_ARRAYS, *keys.INFLUENCE_ARRAYS},
}


def instances(template: str) -> list[str]:
    """``template`` with its placeholders replaced by every combination of their :data:`SAMPLES` values."""
    names = re.findall(r"\{(\w+)\}", template)
    out = []
    for values in itertools.product(*(SAMPLES[n] for n in names)):
        key = template
        for name, value in zip(names, values, strict=True):
            key = key.replace(f"{{{name}}}", value, 1)
        out.append(key)
    return out


def templates() -> list[tuple[str, str]]:
    return [(q, t) for q, ts in keys.SCHEMA.items() for t in ts]


# ---------------------------------------------------------------- the schema itself (fast)
def test_schema_is_consistent():
    assert set(keys.SCHEMA) == set(keys.QUANTITIES)
    for quantity, ts in keys.SCHEMA.items():
        assert len(set(ts)) == len(ts), f"duplicate templates in SCHEMA[{quantity!r}]"
        for template in ts:
            assert template.startswith(keys.prefix(quantity) + "/"), template
            assert set(re.findall(r"\{(\w+)\}", template)) <= set(SAMPLES), template
    every = {t for _, t in templates()}
    assert set(keys.CONDITIONAL) <= every, set(keys.CONDITIONAL) - every
    assert all(isinstance(why, str) and why for why in keys.CONDITIONAL.values())


@pytest.mark.parametrize(("quantity", "template"), templates())
def test_each_instance_matches_its_template_only(quantity, template):
    # An ambiguous schema (a key matching two templates) could not tell which tag a key is.
    for key in instances(template):
        assert [t for t in keys.SCHEMA[quantity] if keys.matches(key, t)] == [template], key
        assert keys.schema_keys(quantity, [key]) == {template: [key]}


def test_matches_refuses_other_names():
    mean = f"{keys.prefix(keys.JACOBIAN)}/{{split}}/mean"
    assert keys.matches("sensitivity/jacobian_norm/test/mean", mean)
    for key in ("sensitivity/jacobian_norm/holdout/mean", "sensitivity/jacobian_norm/val/mean/x",
                "xsensitivity/jacobian_norm/val/mean", "sensitivity/jacobian_norm/val/meanx"):  # fmt: skip
        assert not keys.matches(key, mean), key
    same = f"{keys.prefix(keys.STIFFNESS)}/{{same_group}}/coherence"
    assert keys.matches("sensitivity/stiffness/val_val/coherence", same)
    assert not keys.matches("sensitivity/stiffness/train_val/coherence", same)
    assert keys.schema_keys(keys.STIFFNESS, ["sensitivity/stiffness/val_val/nonsense"]) == {
        "?": ["sensitivity/stiffness/val_val/nonsense"]
    }


def test_compare_defaults_are_schema_keys():
    from lightning_sensitivity import compare

    for key in compare.DEFAULT_X:
        quantity = key.split("/")[1]
        assert any(keys.matches(key, t) for t in keys.SCHEMA[quantity]), key
    assert set(compare.DEFAULT_Y) <= set(compare.GENERALIZATION_KEYS) == set(keys.GENERALIZATION_KEYS)


# ---------------------------------------------------------------- the README table (fast)
def readme_keys() -> list[str]:
    """The key column of the README's "## Logged metrics" table, brace alternatives ``{a,b}`` expanded."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Logged metrics\n", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert cells, "no `| `key` | meaning |` rows under ## Logged metrics"
    out = []
    for cell in cells:
        parts = re.split(r"\{([^{}]*,[^{}]*)\}", cell)  # odd parts: "a,b" alternatives; even: literal text
        choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
        out += ["".join(c) for c in itertools.product(*choices)]
    return out


def test_readme_table_lists_every_schema_template():
    rows = readme_keys()
    for _, template in templates():
        for key in instances(template):
            assert any(keys.matches(key, row) for row in rows), f"README ## Logged metrics lacks {template} ({key})"


def test_readme_table_lists_only_schema_templates():
    for row in readme_keys():
        quantity = row.split("/")[1]
        assert quantity in keys.SCHEMA, row
        for key in instances(row):
            assert any(keys.matches(key, t) for t in keys.SCHEMA[quantity]), f"README lists {row}, not in SCHEMA"


# ---------------------------------------------------------------- what a real fit logs (slow)
_RUN: dict[str, Any] = {}


@pytest.fixture
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-epoch fit and a ``trainer.test`` with every tag-adding option; cached for the module."""
    if _RUN:
        return _RUN
    import lightning.pytorch as pl

    tmp = tmp_path_factory.mktemp("keys")
    jacobian, _, stiffness = small_monitors()
    transitions = TransitionMonitor(num_trajectories=4, num_points=24, num_samples=40, splits=("val", "train"))
    sharpness = SharpnessMonitor(splits=("train", "val"), num_samples=24, num_iterations=4, num_vectors=2)
    monitors = [jacobian, transitions, stiffness, sharpness]
    pl.seed_everything(0, verbose=False)
    module, data = TinyModule(), TinyData()
    trainer = make_trainer(tmp, monitors)
    trainer.fit(module, datamodule=data)
    log_dir = Path(trainer.logger.log_dir)
    fit_keys = set(read_events(log_dir).Tags()["scalars"])
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    _RUN.update(fit=fit_keys, test=set(tested), log_dir=log_dir, monitors=monitors)
    return _RUN


def logged(found: set[str], quantity: str) -> set[str]:
    return {k for k in found if k.startswith(keys.prefix(quantity) + "/")}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cls", "quantity"),
    [
        (JacobianNormMonitor, keys.JACOBIAN),
        (TransitionMonitor, keys.TRANSITIONS),
        (StiffnessMonitor, keys.STIFFNESS),
        (SharpnessMonitor, keys.SHARPNESS),
    ],
)
def test_monitor_logs_exactly_the_schema(run, cls, quantity):
    assert cls.quantity == quantity
    fit, test = logged(run["fit"], quantity), logged(run["test"], quantity)
    assert fit and test, (quantity, sorted(run["fit"]), sorted(run["test"]))
    for key in sorted(fit | test):
        assert any(keys.matches(key, t) for t in keys.SCHEMA[quantity]), f"{key} is logged but not in keys.SCHEMA"
    by_template = keys.schema_keys(quantity, fit)
    missing = [t for t in keys.SCHEMA[quantity] if t not in keys.CONDITIONAL and t not in by_template]
    assert not missing, f"{cls.__name__} never logged {missing}"
    # trainer.test measures the held-out set as `test`: no `val` tag is left, the train split keeps its name.
    assert not any("val" in k.split("/")[2].split("_") for k in test), sorted(test)
    assert any("test" in k.split("/")[2].split("_") for k in test), sorted(test)


@pytest.mark.slow
def test_stiffness_logs_every_group_and_jacobian_both_splits(run):
    fit = run["fit"]
    for group in keys.GROUPS:
        for kind in keys.STIFFNESS_KINDS:
            assert keys.metric(keys.STIFFNESS, group, kind) in fit
    for split in (keys.VAL, keys.TRAIN):
        for stat in keys.JACOBIAN_STATS:
            assert keys.metric(keys.JACOBIAN, split, stat) in fit
        assert keys.metric(keys.TRANSITIONS, split, "prediction_mean") in fit


@pytest.mark.slow
@pytest.mark.parametrize("quantity", keys.QUANTITIES)
def test_artifact_arrays_are_the_documented_ones(run, quantity):
    artifacts = load_artifacts(run["log_dir"], quantity)
    assert artifacts, quantity
    written: set[str] = set()
    for artifact in artifacts:
        names = set(artifact.arrays)
        if quantity == keys.STIFFNESS:
            assert all("/" in n and n.split("/", 1)[0] in keys.GROUPS for n in names), sorted(names)
            names = {n.split("/", 1)[1] for n in names}
        written |= names
    documented = set(keys.ARTIFACT_ARRAYS[quantity])
    assert written <= documented, f"{quantity} artifacts hold undocumented arrays {sorted(written - documented)}"
    missing = documented - CONDITIONAL_ARRAYS[quantity] - written
    assert not missing, f"{quantity} artifacts never held {sorted(missing)}"
