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

import importlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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
    "CONDITIONAL_ARRAYS",
    "Chart",
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
    "Quantity",
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
    "declaration",
    "declarations",
    "matches",
    "metric",
    "notes_tag",
    "prefix",
    "register",
    "unregister",
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


#: The shuffled (off-manifold) anchors of ``TransitionMonitor(splits=(..., "random"))``: tags ``.../random/...``.
TRANSITION_RANDOM = "random"
#: How many probe examples of a split a measurement left out for non-finite inputs, targets or model outputs; every
#: quantity's schema has ``sensitivity/<quantity>/{split}/nonfinite`` (the base monitor logs it).
NONFINITE = "nonfinite"
#: StiffnessMonitor(influence=True): the TracIn influence statistics, accumulated from the train_val Grams of a fit.
INFLUENCE_STATS = ("self_influence_mean", "self_influence_flipped_auroc", "loss_flipped_auroc")
#: Logged, as the sketch dimension ``k``, at each measurement of a ``StiffnessMonitor(sketch_dim=k)``: the marker that
#: the stiffness values of that step are estimates from a sketched Gram (the other tags keep their names).
STIFFNESS_SKETCH_DIM = f"{prefix(STIFFNESS)}/sketch_dim"

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


# ---------------------------------------------------------------- one declaration per quantity
@dataclass(frozen=True)
class Chart:
    """One chart of the TensorBoard custom-scalars layout (:func:`lightning_sensitivity.logging.sensitivity_layout`).

    Args:
        title: the chart's title; ``{splits}`` becomes the charted splits joined by ``" vs "`` (``test``, the held-out
            split under ``trainer.test``, is drawn but not named), and each placeholder of ``each`` its value.
        lines: tag templates (placeholders as in :data:`SCHEMA`); one line per combination of the values of their
            placeholders not in ``each``: ``{split}`` the charted splits, ``{held_out}`` val and test among them,
            ``{group}`` / ``{same_group}`` the charted stiffness pair groups, ``{kind}`` sign and cosine;
            ``{layer}`` and ``{c}`` match any layer / class in one line.
        each: placeholders that give one chart per value, e.g. ``("group", "kind")``.
        source: a key of the layout's ``splits`` mapping (e.g. ``"stiffness/layer"``) whose values the first ``each``
            placeholder takes instead of its default; no values there, no chart.

    Example:
        >>> Chart("Logit margin: {splits} (mean)", ("sensitivity/logit_margin/{split}/mean",)).lines
        ('sensitivity/logit_margin/{split}/mean',)
    """

    title: str
    lines: tuple[str, ...]
    each: tuple[str, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not self.title:
            raise TypeError(f"`title` expected a non-empty str, got {self.title!r}")
        object.__setattr__(self, "lines", _strings(self.lines, "lines"))
        object.__setattr__(self, "each", _strings(self.each, "each", allow_empty=True))
        for template in self.lines:
            _check_placeholders(template, "lines")
        unknown = [p for p in self.each if p not in _PLACEHOLDERS]
        if unknown:
            raise ValueError(f"`each` expected placeholders among {sorted(_PLACEHOLDERS)}, got {unknown}")


@dataclass(frozen=True)
class Quantity:
    """Everything named about one quantity, declared once: :data:`SCHEMA`, :data:`CONDITIONAL`, the artifact arrays,
    the dashboard charts and the tests are built from these declarations.

    A quantity of the package declares it as ``QUANTITY = keys.Quantity(...)`` in its ``functional`` module (found
    when :mod:`lightning_sensitivity.functional` is imported); any other code calls :func:`register`.

    Args:
        name: the quantity (``monitor.quantity``): tags ``sensitivity/<name>/...``, artifacts
            ``{log_dir}/sensitivity/<name>/epoch_NNNN.npz``.
        metrics: the scalar tag templates the monitor can log (placeholders ``{split}``, ``{group}``,
            ``{same_group}``, ``{held_out}``, ``{c}``, ``{kind}``, ``{layer}``); ``.../{split}/nonfinite`` is added.
        conditional: templates of ``metrics`` a correct run may leave out even with every option on, each with the
            reason (it needs class targets, an option, a zero crossing, ...). The rest is logged at every measurement.
        arrays: the names of the arrays in the artifact file (per pair group when ``array_groups`` is given).
        conditional_arrays: arrays a correct run may not write, each with the reason.
        array_groups: the pair groups the arrays are stored under (``{group}/{name}``); empty: names as they are.
        histograms: histogram tag templates.
        images: image tag templates (the figures the monitor draws).
        category: the custom-scalars category of ``charts`` (default: ``name`` in words).
        charts: the quantity's charts in the TensorBoard custom-scalars layout.
        layout_splits: the splits its charts draw when the monitor does not say (``SensitivityMonitor.layout_splits``).
        split_words: how a chart title names a split, e.g. ``{"random": "random (off-data)"}``.
        monitor: the class name of its monitor, exported by :mod:`lightning_sensitivity.callbacks` and the package
            (``None`` for a monitor outside the package).
        full_options: keyword arguments of the monitor, at a test's size, under which it logs every template that is
            not conditional and writes every array that is not (the key tests fit it with them).
        report_arrays: where the offline report (``python -m lightning_sensitivity.report``) reads a tag's values in
            the artifact files: tag template (of ``metrics`` or ``histograms``, or one instance of such a template,
            which then wins over it) -> artifact array template with the same placeholders, e.g.
            ``{"sensitivity/logit_margin/{split}": "{split}_margins"}``. A histogram is drawn from the per-example
            array named here (no entry: not drawn, and the report says so). A metric without an entry is read from
            the array its tag names: ``sensitivity/<name>/<a>/<b>`` from ``<a>_<b>`` (:func:`split_array`), or
            ``<a>/<b>`` (:func:`stiffness_array`) when ``array_groups`` is given; ``sensitivity/<name>/<a>`` from
            ``<a>``.
        report_figures: the figures of the quantity's report section, by name: ``"charts"`` (each of ``charts`` as
            curves over epochs, from the arrays of its lines), ``"histograms"`` (each of ``histograms`` at the last
            epoch) or a builder of :mod:`lightning_sensitivity.logging.report_figures` (the built-in quantities'
            own figures: class matrices, stiffness by distance, ...).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if a template is outside ``sensitivity/<name>/``, uses an unknown placeholder, or a conditional
            entry names no declared template or array.
    """

    name: str
    metrics: tuple[str, ...]
    conditional: Mapping[str, str] = field(default_factory=dict)
    arrays: tuple[str, ...] = ()
    conditional_arrays: Mapping[str, str] = field(default_factory=dict)
    array_groups: tuple[str, ...] = ()
    histograms: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    category: str = ""
    charts: tuple[Chart, ...] = ()
    layout_splits: tuple[str, ...] = (TRAIN, VAL, TEST)
    split_words: Mapping[str, str] = field(default_factory=dict)
    monitor: str | None = None
    full_options: Mapping[str, Any] = field(default_factory=dict)
    report_arrays: Mapping[str, str] = field(default_factory=dict)
    report_figures: tuple[str, ...] = ("charts", "histograms")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"`name` expected a lower-case identifier such as 'logit_margin', got {self.name!r}")
        own = prefix(self.name) + "/"
        for attr in ("metrics", "arrays", "array_groups", "histograms", "images", "layout_splits", "report_figures"):
            object.__setattr__(self, attr, _strings(getattr(self, attr), attr, allow_empty=attr != "metrics"))
        for attr in ("metrics", "histograms", "images"):
            for template in getattr(self, attr):
                _check_placeholders(template, attr)
                if not template.startswith(own) and template != prefix(self.name):
                    raise ValueError(f"`{attr}` expected tags under {own!r}, got {template!r}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"`metrics` expected distinct templates, got duplicates in {self.name!r}")
        for attr, known in (("conditional", self.metrics + (self.nonfinite,)), ("conditional_arrays", self.arrays)):
            value = getattr(self, attr)
            if not isinstance(value, Mapping):
                raise TypeError(f"`{attr}` expected a mapping of name to reason, got {type(value).__name__}")
            unknown = [k for k, why in value.items() if k not in known or not isinstance(why, str) or not why]
            if unknown:
                raise ValueError(f"`{attr}` expected declared names, each with a reason, got {unknown}")
            object.__setattr__(self, attr, MappingProxyType(dict(value)))
        for attr in ("split_words", "full_options"):
            value = getattr(self, attr)
            if not isinstance(value, Mapping):
                raise TypeError(f"`{attr}` expected a mapping, got {type(value).__name__}")
            object.__setattr__(self, attr, MappingProxyType(dict(value)))
        charts = tuple(self.charts)
        if not all(isinstance(c, Chart) for c in charts):
            raise TypeError(f"`charts` expected keys.Chart entries, got {charts!r}")
        object.__setattr__(self, "charts", charts)
        if not self.category:
            object.__setattr__(self, "category", self.name.replace("_", " ").capitalize())
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor.isidentifier()):
            raise ValueError(f"`monitor` expected a class name or None, got {self.monitor!r}")
        self._check_report_arrays()

    def _check_report_arrays(self) -> None:
        value = self.report_arrays
        if not isinstance(value, Mapping):
            raise TypeError(f"`report_arrays` expected a mapping of tag template to array, got {type(value).__name__}")
        declared = (*self.metrics, *self.histograms)
        stored = [stiffness_array(g, a) for g in self.array_groups for a in self.arrays] or list(self.arrays)
        for tag, array in value.items():
            if not isinstance(tag, str) or not (tag in declared or any(matches(tag, t) for t in declared)):
                raise ValueError(
                    f"`report_arrays` expected keys among the declared metrics and histograms of {self.name!r} (or "
                    f"an instance of one), got {tag!r}"
                )
            if not isinstance(array, str) or not array:
                raise TypeError(
                    f"`report_arrays` expected an array template (a non-empty str) for {tag!r}, got {array!r}"
                )
            _check_placeholders(array, "report_arrays")
            if set(re.findall(r"\{(\w+)\}", array)) != set(re.findall(r"\{(\w+)\}", tag)):
                raise ValueError(
                    f"`report_arrays` expected the placeholders of {tag!r} in its array template, got {array!r}"
                )
            if not any(_pattern(array).match(name) for name in stored):
                raise ValueError(
                    f"`report_arrays` expected an array template matching some of `arrays` for {tag!r}, got {array!r}"
                )
        object.__setattr__(self, "report_arrays", MappingProxyType(dict(value)))

    @property
    def nonfinite(self) -> str:
        """The template of the count of probe examples left out for non-finite values (every quantity has it)."""
        return f"{prefix(self.name)}/{{split}}/{NONFINITE}"

    @property
    def schema(self) -> tuple[str, ...]:
        """The metric templates: ``metrics`` and the non-finite count."""
        return (*self.metrics, self.nonfinite)

    def find_arrays(self, template: str, names: Iterable[str]) -> list[tuple[str, str, dict[str, str]]]:
        """Which of the artifact arrays ``names`` hold the values of tag ``template`` (see ``report_arrays``).

        Args:
            template: a tag template under ``sensitivity/<name>/`` (of ``metrics``, ``histograms`` or a chart line).
            names: array names of the quantity's artifact files.

        Returns:
            ``(tag, array, values)`` for each array found: the tag it holds, its name and the value of each
            placeholder; empty for a histogram without a ``report_arrays`` entry or a tag of another quantity.

        Example:
            >>> q = Quantity("margin", ("sensitivity/margin/{split}/mean",), arrays=("val_mean", "train_mean"))
            >>> q.find_arrays("sensitivity/margin/{split}/mean", ["val_mean", "val_margins"])
            [('sensitivity/margin/val/mean', 'val_mean', {'split': 'val'})]
        """
        names = list(names)
        entries = [(t, a) for t, a in self.report_arrays.items() if t != template and matches(t, template)]
        if template in self.report_arrays:
            entries.append((template, self.report_arrays[template]))
        elif template not in self.histograms and template.startswith(prefix(self.name) + "/"):
            first, _, rest = template[len(prefix(self.name)) + 1 :].partition("/")
            join = stiffness_array if self.array_groups else split_array
            entries.append((template, join(first, rest) if rest else first))
        found: dict[str, tuple[str, str, dict[str, str]]] = {}
        for tag_template, array_template in entries:
            regex = _pattern(array_template, named=True)
            for name in names:
                match = regex.match(name)
                if match is None:
                    continue
                values = {k: v for k, v in match.groupdict().items() if v is not None}
                tag = re.sub(r"\{(\w+)\}", lambda m, v=values: v[m.group(1)], tag_template)
                found.setdefault(tag, (tag, name, values))  # an instance's own entry wins over its template's
        return list(found.values())

    @property
    def conditional_schema(self) -> dict[str, str]:
        """``conditional`` and the non-finite count (logged only when there are such examples)."""
        return {
            **self.conditional,
            self.nonfinite: "only when probe examples have non-finite inputs, targets or model outputs (they are left "
            "out of the measurement)",
        }


_REGISTRY: dict[str, Quantity] = {}
_LOADING: list[bool] = []  # non-empty while the package's own declarations are being found


def register(quantity: Quantity) -> Quantity:
    """Declare a quantity: from now on :data:`SCHEMA`, :data:`CONDITIONAL`, :data:`ARTIFACT_ARRAYS` and the dashboard
    layout include it. Registering an equal declaration again does nothing.

    Args:
        quantity: the declaration.

    Returns:
        ``quantity``, so that ``QUANTITY = keys.register(keys.Quantity(...))`` reads as one statement.

    Raises:
        TypeError: if ``quantity`` is not a :class:`Quantity`.
        ValueError: if another, different declaration of the same name is registered.
    """
    if not isinstance(quantity, Quantity):
        raise TypeError(f"`quantity` expected a keys.Quantity, got {type(quantity).__name__}")
    known = _REGISTRY.get(quantity.name)
    if known is not None and known != quantity:
        raise ValueError(f"`quantity` {quantity.name!r} is already declared differently; pick another name")
    _REGISTRY[quantity.name] = quantity
    return quantity


def unregister(name: str) -> Quantity | None:
    """Forget the quantity ``name`` given to :func:`register`, e.g. to declare it anew after editing it in a
    notebook (:func:`register` refuses a different declaration of a name it holds).

    Returns:
        The declaration removed, or ``None`` if no quantity of that name was registered.
    """
    return _REGISTRY.pop(name, None)


def declarations() -> tuple[Quantity, ...]:
    """Every declared quantity: the package's own (found by importing :mod:`lightning_sensitivity.functional`),
    then those given to :func:`register`, in order of registration."""
    if not _LOADING and "lightning_sensitivity.functional" not in sys.modules:
        _LOADING.append(True)
        try:
            importlib.import_module("lightning_sensitivity.functional")
        finally:
            _LOADING.clear()
    elif _LOADING:
        raise RuntimeError(
            "the quantity declarations were read while lightning_sensitivity.functional was being imported; read "
            "keys.SCHEMA and friends inside functions, not at import time of a functional module"
        )
    return tuple(_REGISTRY.values())


def declaration(name: str) -> Quantity:
    """The declaration of quantity ``name``.

    Raises:
        KeyError: if no quantity of that name is declared (the message lists the declared ones).
    """
    for quantity in declarations():
        if quantity.name == name:
            return quantity
    raise KeyError(f"`name` expected a declared quantity {[q.name for q in declarations()]}, got {name!r}")


class _Table(Mapping):
    """A read-only mapping built from the declarations on each access, so a later :func:`register` shows in it."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> Any:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


class _Names(Sequence):
    """The names of the declared quantities, as a read-only sequence that follows :func:`register`."""

    def __getitem__(self, index: Any) -> Any:
        return tuple(q.name for q in declarations())[index]

    def __len__(self) -> int:
        return len(declarations())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _Names)) else other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


#: The declared quantities' names (the built-in ones: :data:`JACOBIAN`, :data:`TRANSITIONS`, :data:`STIFFNESS`,
#: :data:`SHARPNESS`), the keys of :data:`SCHEMA`.
QUANTITIES: Sequence[str] = _Names()
#: The metric tags each monitor can log, per quantity (:attr:`Quantity.schema`). Placeholders: ``{split}`` (val,
#: train, test), ``{group}`` (a stiffness pair group), ``{same_group}`` (a group of one set with itself),
#: ``{held_out}`` (val, or test under ``trainer.test``), ``{c}`` (a class index), ``{kind}`` (sign or cosine),
#: ``{layer}`` (a layer name). ``tests/test_keys.py`` checks that the monitors log exactly these and that the README's
#: "Logged metrics" table lists them.
SCHEMA: Mapping[str, tuple[str, ...]] = _Table(lambda: {q.name: q.schema for q in declarations()})
#: SCHEMA templates a monitor may leave out even with every option that enables it on, and why. Every other
#: template is logged at each measurement of a fit whose options enable it.
CONDITIONAL: Mapping[str, str] = _Table(lambda: {t: w for q in declarations() for t, w in q.conditional_schema.items()})
#: The arrays (NPZ keys) of each quantity's artifact file as the monitors write them; for ``stiffness`` the names
#: per pair group (the same-set ones only for ``train_train`` and ``val_val``).
ARTIFACT_ARRAYS: Mapping[str, tuple[str, ...]] = _Table(lambda: {q.name: q.arrays for q in declarations()})
#: Per quantity, the artifact arrays a correct run may not write, and why.
CONDITIONAL_ARRAYS: Mapping[str, Mapping[str, str]] = _Table(
    lambda: {q.name: q.conditional_arrays for q in declarations()}
)


def _strings(value: Any, name: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"`{name}` expected a tuple of str, got {type(value).__name__}")
    out = tuple(value)
    if not all(isinstance(v, str) and v for v in out) or (not out and not allow_empty):
        raise TypeError(f"`{name}` expected a {'' if allow_empty else 'non-empty '}tuple of non-empty str, got {out!r}")
    return out


def _check_placeholders(template: str, name: str) -> None:
    unknown = [p for p in re.findall(r"\{(\w+)\}", template) if p not in _PLACEHOLDERS]
    if unknown:
        raise ValueError(f"`{name}` expected placeholders among {sorted(_PLACEHOLDERS)}, got {unknown} in {template!r}")


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


def _pattern(template: str, named: bool = False) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    seen: set[str] = set()
    regex = ""
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex += re.escape(part)
        elif named and part in seen:
            regex += f"(?P={part})"
        else:
            regex += f"(?P<{part}>{_PLACEHOLDERS[part]})" if named else f"(?:{_PLACEHOLDERS[part]})"
            seen.add(part)
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
