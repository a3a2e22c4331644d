"""TensorBoard output written through a real SummaryWriter and read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import read_events
from matplotlib.figure import Figure
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.tensorboard import SummaryWriter

from lightning_sensitivity.logging import (
    add_sensitivity_layout,
    figure_to_array,
    find_tensorboard_writer,
    log_figure,
    log_histogram,
    log_text,
    plot_class_matrix,
    sensitivity_layout,
)

CONFIG_TAG = "custom_scalars__config__"


@pytest.fixture
def writer(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path))
    yield writer
    writer.close()


def layouts(path) -> list[layout_pb2.Layout]:
    acc = read_events(path)
    if CONFIG_TAG not in acc.Tags()["tensors"]:
        return []
    return [layout_pb2.Layout.FromString(e.tensor_proto.string_val[0]) for e in acc.Tensors(CONFIG_TAG)]


def test_log_figure_writes_image_of_rendered_size(writer, tmp_path):
    fig, _ = plot_class_matrix(np.array([[1.0, np.nan], [-1.0, 0.0]]), title="epoch 2")
    expected_shape = figure_to_array(fig).shape
    log_figure(writer, "sensitivity/stiffness/val_val/class_sign_matrix", fig, step=5)
    writer.flush()
    acc = read_events(tmp_path)
    assert acc.Tags()["images"] == ["sensitivity/stiffness/val_val/class_sign_matrix"]
    (event,) = acc.Images("sensitivity/stiffness/val_val/class_sign_matrix")
    assert event.step == 5
    assert (event.height, event.width) == expected_shape[:2]
    assert event.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_figure_closes_pyplot_figures(writer):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = plt.figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1])
    log_figure(writer, "some/figure", fig, step=0)
    assert not plt.fignum_exists(fig.number)


def test_log_histogram_skips_non_finite_and_empty(writer, tmp_path):
    values = torch.tensor([0.5, 1.5, float("nan"), 2.5, float("inf"), 3.0])
    log_histogram(writer, "sensitivity/jacobian_norm/val", values, step=3)
    log_histogram(writer, "sensitivity/jacobian_norm/train", torch.tensor([float("nan")]), step=3)
    log_histogram(writer, "sensitivity/transitions/val/activation", np.array([]), step=3)
    log_histogram(writer, "sensitivity/transitions/val/activation", np.array([[2, 4], [4, 6]]), step=4)
    writer.flush()
    acc = read_events(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == [
        "sensitivity/jacobian_norm/val",
        "sensitivity/transitions/val/activation",
    ]
    (event,) = acc.Histograms("sensitivity/jacobian_norm/val")
    histogram = event.histogram_value
    assert event.step == 3
    assert (histogram.num, histogram.min, histogram.max) == (4, 0.5, 3.0)
    assert histogram.sum == pytest.approx(7.5)
    (event,) = acc.Histograms("sensitivity/transitions/val/activation")
    assert (event.step, event.histogram_value.num, event.histogram_value.sum) == (4, 4, 16)


def test_log_text(writer, tmp_path):
    log_text(writer, "sensitivity/config/JacobianNormMonitor", "num_samples: **256**")
    writer.flush()
    acc = read_events(tmp_path)
    tag = "sensitivity/config/JacobianNormMonitor/text_summary"
    assert tag in acc.Tags()["tensors"]
    (event,) = acc.Tensors(tag)
    assert event.step == 0
    assert event.tensor_proto.string_val[0].decode() == "num_samples: **256**"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda w: log_figure(w, "", Figure(), 0), TypeError, "`tag`"),
        (lambda w: log_figure(w, "t", Figure(), -1), ValueError, "`step`"),
        (lambda w: log_figure(w, "t", "not a figure", 0), TypeError, "Figure"),
        (lambda w: log_histogram(w, "t", [1.0], 1.5), TypeError, "`step`"),
        (lambda w: log_histogram(w, "t", ["a"], 0), TypeError, "`values`"),
        (lambda w: log_text(w, "t", 3), TypeError, "`text`"),
        (lambda w: add_sensitivity_layout(w, "val_val"), TypeError, "`groups`"),
        (lambda w: add_sensitivity_layout(w, ["val_val", ""]), TypeError, "`groups`"),
    ],
)
def test_validation(writer, call, error, match):
    with pytest.raises(error, match=match):
        call(writer)


def chart_tags(layout: layout_pb2.Layout) -> dict[str, dict[str, list[str]]]:
    return {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}


def matches(regexes: list[str], tag: str) -> bool:
    # TensorBoard's custom-scalars plugin selects tags with re.match.
    return any(re.match(r, tag) for r in regexes)


def test_layout_groups_the_metric_keys(writer, tmp_path):
    add_sensitivity_layout(writer)
    writer.flush()
    (layout,) = layouts(tmp_path)
    charts = chart_tags(layout)
    assert {"Jacobian norm", "Transitions", "Stiffness"} <= set(charts)
    jac = charts["Jacobian norm"]
    train_vs_val = [r for r in jac.values() if matches(r, "sensitivity/jacobian_norm/train/mean")]
    assert any(matches(r, "sensitivity/jacobian_norm/val/mean") for r in train_vs_val)
    for tag in ["sensitivity/jacobian_norm/train_val_ratio", "generalization_gap/loss", "generalization_gap/acc"]:
        assert any(matches(r, tag) for r in jac.values()), tag
    for stat in ["activation", "region_changes", "prediction"]:
        assert any(matches(r, f"sensitivity/transitions/val/{stat}_mean") for r in charts["Transitions"].values())
    stiffness = charts["Stiffness"]
    for group in ["train_train", "train_val", "val_val"]:
        for kind in ["sign", "cosine"]:
            same = f"sensitivity/stiffness/{group}/same_class_{kind}"
            different = f"sensitivity/stiffness/{group}/different_class_{kind}"
            assert any(matches(r, same) and matches(r, different) for r in stiffness.values()), (group, kind)
        assert any(matches(r, f"sensitivity/stiffness/{group}/critical_length") for r in stiffness.values())
    # Exact tags: a chart for "sign" must not also pick up "same_class_sign" or another group's series.
    all_regexes = [r for category in charts.values() for regexes in category.values() for r in regexes]
    assert not any(re.match(r, "sensitivity/stiffness/val_val/sign_extra") for r in all_regexes)


def test_layout_is_idempotent_and_merges_new_groups(writer, tmp_path):
    add_sensitivity_layout(writer, groups=("val_val",))
    add_sensitivity_layout(writer, groups=("val_val",))
    writer.flush()
    assert len(layouts(tmp_path)) == 1
    add_sensitivity_layout(writer, groups=("train_val",))
    add_sensitivity_layout(writer, groups=["train_val", "val_val"])
    writer.flush()
    first, second = layouts(tmp_path)
    stiffness = chart_tags(second)["Stiffness"]
    for group in ["val_val", "train_val"]:
        assert any(matches(r, f"sensitivity/stiffness/{group}/same_class_sign") for r in stiffness.values())
    assert not any(matches(r, "sensitivity/stiffness/train_train/same_class_sign") for r in stiffness.values())
    assert not any(
        matches(r, "sensitivity/stiffness/train_val/same_class_sign") for r in chart_tags(first)["Stiffness"].values()
    )


def test_layout_per_writer(tmp_path):
    writers = [SummaryWriter(log_dir=str(tmp_path / name)) for name in ("a", "b")]
    for w in writers:
        add_sensitivity_layout(w)
        w.close()
    assert len(layouts(tmp_path / "a")) == len(layouts(tmp_path / "b")) == 1


def test_layout_without_groups_has_no_stiffness_category():
    assert "Stiffness" not in sensitivity_layout(())
    assert "Stiffness" in sensitivity_layout(("val_val",))


def test_find_tensorboard_writer_among_loggers(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(tmp_path, name="csv")
    first = TensorBoardLogger(tmp_path, name="tb1")
    second = TensorBoardLogger(tmp_path, name="tb2")
    trainer = Trainer(
        logger=[csv, first, second],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    found = find_tensorboard_writer(trainer)
    assert found is first.experiment
    assert isinstance(found, SummaryWriter)

    only_csv = Trainer(logger=CSVLogger(tmp_path, name="csv2"), default_root_dir=tmp_path, enable_progress_bar=False)
    assert find_tensorboard_writer(only_csv) is None
    no_logger = Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    assert find_tensorboard_writer(no_logger) is None
    assert find_tensorboard_writer(SimpleNamespace(loggers=[csv, second])) is second.experiment


def test_layout_charts_every_measured_split():
    # A split a monitor measures appears in the layout without editing it: TransitionMonitor(splits=("val", "random")).
    layout = sensitivity_layout(("val_val",), {"transitions": ("val", "random", "test")})
    charts = {title: spec[1] for title, spec in layout["Transitions"].items()}
    for stat in ("activation_mean", "region_changes_mean", "prediction_mean", "region_changes_fraction",
                 "near_anchor_ratio"):  # fmt: skip
        for split in ("val", "random", "test"):
            tag = f"sensitivity/transitions/{split}/{stat}"
            assert any(matches(r, tag) for r in charts.values()), tag
    assert not any(matches(r, "sensitivity/transitions/train/activation_mean") for r in charts.values())
    # the saturation is readable on the chart itself: the fraction of segments, 1 = saturated
    (fraction,) = [t for t in charts if "fraction of segments" in t]
    assert "saturated" in fraction and "random" in fraction
    # per-layer stiffness of the groups measured per layer, whatever the layer names
    layers = sensitivity_layout(("val_val",), {"stiffness/layer": ("val_val",)})["Stiffness"]
    per_layer = [r for t, spec in layers.items() if "per layer" in t for r in spec[1]]
    assert matches(per_layer, "sensitivity/stiffness/val_val/layer/net.0/cosine")
    assert not matches(per_layer, "sensitivity/stiffness/val_val/layer/net.0/sign")
    assert not any("per layer" in t for t in sensitivity_layout(("val_val",))["Stiffness"])


def test_layout_merges_new_splits(writer, tmp_path):
    add_sensitivity_layout(writer, groups=(), splits={"transitions": ("val",)})
    add_sensitivity_layout(writer, groups=(), splits={"transitions": ("val",)})
    add_sensitivity_layout(writer, groups=(), splits={"transitions": ("random",)})
    writer.flush()
    first, second = layouts(tmp_path)
    tag = "sensitivity/transitions/random/activation_mean"
    assert not any(matches(r, tag) for r in chart_tags(first)["Transitions"].values())
    assert any(matches(r, tag) for r in chart_tags(second)["Transitions"].values())
    with pytest.raises(TypeError, match="`splits`"):
        add_sensitivity_layout(writer, splits={"transitions": "val"})
