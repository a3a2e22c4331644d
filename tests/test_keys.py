"""``keys.SCHEMA`` is the truth about the logged names: the monitors log exactly its tags, the README lists them.

Every test iterates over the declared quantities (``keys.declarations()``): a new quantity joins by its declaration
alone. One tiny fit (the monitor of every declared quantity, built with its ``full_options``: a train probe set,
train trajectories, all stiffness groups, ...) followed by ``trainer.test`` is shared by the per-monitor tests. For
each quantity:

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
from callbacks._tiny import TinyData, TinyModule, make_trainer, read_events

import lightning_sensitivity
from lightning_sensitivity import callbacks, keys
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
    monitors = {q.name: monitor_class(q)(**q.full_options) for q in keys.declarations() if q.monitor is not None}
    pl.seed_everything(0, verbose=False)
    module, data = TinyModule(), TinyData()
    trainer = make_trainer(tmp, list(monitors.values()))
    trainer.fit(module, datamodule=data)
    log_dir = Path(trainer.logger.log_dir)
    tags = read_events(log_dir).Tags()
    fit_keys = set(tags["scalars"])
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    images, histograms = set(read_events(log_dir).Tags()["images"]), set(read_events(log_dir).Tags()["histograms"])
    _RUN.update(
        fit=fit_keys, test=set(tested), log_dir=log_dir, monitors=monitors, images=images, histograms=histograms
    )
    return _RUN


def logged(found: set[str], quantity: str) -> set[str]:
    return {k for k in found if k.startswith(keys.prefix(quantity) + "/")}


def monitor_class(quantity: keys.Quantity) -> type:
    """The monitor a quantity declares, as the package exports it."""
    return getattr(callbacks, quantity.monitor)


def with_monitor() -> list[str]:
    return [q.name for q in keys.declarations() if q.monitor is not None]


def test_every_declared_monitor_is_exported_and_measures_its_quantity():
    assert set(keys.QUANTITIES) >= {keys.JACOBIAN, keys.TRANSITIONS, keys.STIFFNESS, keys.SHARPNESS}
    for quantity in keys.declarations():
        if quantity.monitor is None:
            continue
        assert quantity.monitor in callbacks.__all__, quantity.monitor
        assert quantity.monitor in lightning_sensitivity.__all__, quantity.monitor
        cls = getattr(lightning_sensitivity, quantity.monitor)
        assert cls is monitor_class(quantity)
        assert issubclass(cls, callbacks.SensitivityMonitor) and cls.quantity == quantity.name


def test_a_declaration_refuses_what_the_tests_could_not_check():
    with pytest.raises(ValueError, match="`name`"):
        keys.Quantity(name="Logit Margin", metrics=("sensitivity/x/{split}/mean",))
    with pytest.raises(ValueError, match="`metrics` expected tags under 'sensitivity/margin/'"):
        keys.Quantity(name="margin", metrics=("sensitivity/other/{split}/mean",))
    with pytest.raises(ValueError, match="placeholders"):
        keys.Quantity(name="margin", metrics=("sensitivity/margin/{fold}/mean",))
    with pytest.raises(ValueError, match="`conditional`"):
        keys.Quantity(name="margin", metrics=("sensitivity/margin/{split}/mean",),
                      conditional={"sensitivity/margin/{split}/p10": "why"})  # fmt: skip
    with pytest.raises(ValueError, match="`conditional_arrays`"):
        keys.Quantity(name="margin", metrics=("sensitivity/margin/{split}/mean",), arrays=("val_mean",),
                      conditional_arrays={"val_p10": "why"})  # fmt: skip
    with pytest.raises(TypeError, match="`charts`"):
        keys.Quantity(name="margin", metrics=("sensitivity/margin/{split}/mean",), charts=("a chart",))
    with pytest.raises(TypeError, match="`quantity`"):
        keys.register("margin")
    with pytest.raises(ValueError, match="already declared differently"):
        keys.register(keys.Quantity(name=keys.JACOBIAN, metrics=("sensitivity/jacobian_norm/{split}/mean",)))
    with pytest.raises(KeyError, match="declared quantity"):
        keys.declaration("no_such_quantity")


def test_a_registered_quantity_shows_in_the_tables_and_the_layout():
    from lightning_sensitivity.logging import sensitivity_layout

    name = "test_only_margin"
    declared = keys.Quantity(
        name=name, metrics=(f"sensitivity/{name}/{{split}}/mean",), arrays=("val_mean",),
        charts=(keys.Chart("Margin: {splits}", (f"sensitivity/{name}/{{split}}/mean",)),),
    )  # fmt: skip
    try:
        assert keys.register(declared) is declared and keys.register(declared) is declared  # again: nothing
        assert name in keys.QUANTITIES and keys.declaration(name) is declared
        assert keys.SCHEMA[name] == (f"sensitivity/{name}/{{split}}/mean", f"sensitivity/{name}/{{split}}/nonfinite")
        assert (
            keys.ARTIFACT_ARRAYS[name] == ("val_mean",)
            and f"sensitivity/{name}/{{split}}/nonfinite" in keys.CONDITIONAL
        )
        (chart,) = sensitivity_layout()["Test only margin"].items()
        assert chart[0] == "Margin: train vs val" and len(chart[1][1]) == 3  # train, val, test
    finally:
        keys.unregister(name)  # this test's own registration only


@pytest.mark.slow
@pytest.mark.parametrize("quantity", with_monitor())
def test_monitor_logs_exactly_the_schema(run, quantity):
    cls = monitor_class(keys.declaration(quantity))
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
@pytest.mark.parametrize("quantity", with_monitor())
def test_images_and_histograms_are_the_declared_ones(run, quantity):
    declared = keys.declaration(quantity)
    for kind, templates in (("images", declared.images), ("histograms", declared.histograms)):
        for tag in sorted(
            t for t in run[kind] if t.startswith(keys.prefix(quantity) + "/") or t == keys.prefix(quantity)
        ):
            assert any(keys.matches(tag, t) for t in templates), f"{quantity} logged the undeclared {kind} tag {tag}"


@pytest.mark.slow
@pytest.mark.parametrize("quantity", with_monitor())
def test_artifact_arrays_are_the_documented_ones(run, quantity):
    artifacts = load_artifacts(run["log_dir"], quantity)
    assert artifacts, quantity
    groups = keys.declaration(quantity).array_groups
    written: set[str] = set()
    for artifact in artifacts:
        names = set(artifact.arrays)
        if groups:
            assert all("/" in n and n.split("/", 1)[0] in groups for n in names), sorted(names)
            names = {n.split("/", 1)[1] for n in names}
        written |= names
    documented = set(keys.ARTIFACT_ARRAYS[quantity])
    assert written <= documented, f"{quantity} artifacts hold undocumented arrays {sorted(written - documented)}"
    missing = documented - set(keys.CONDITIONAL_ARRAYS[quantity]) - written
    assert not missing, f"{quantity} artifacts never held {sorted(missing)}"
