"""Figures: ``logging.plots`` shows the renderer's pictures (one drawing per picture), colours checked against
matplotlib's own colormap, not against the plotting code."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from lightning_sensitivity.logging import (
    figure_to_array,
    plot_class_matrix,
    plot_per_class,
    plot_stiffness_by_distance,
    render_class_matrix,
    render_per_class,
    render_stiffness_by_distance,
)
from lightning_sensitivity.logging.plots import image_figure, legend, new_figure


@pytest.mark.parametrize(
    ("plot", "render", "args", "kwargs"),
    [
        (plot_class_matrix, render_class_matrix, (torch.tensor([[1.0, -1.0], [float("nan"), 0.5]]), ["a", "b"]),
         {"title": "train_val class sign stiffness, epoch 7"}),
        (plot_class_matrix, render_class_matrix, (np.random.default_rng(0).uniform(-1, 1, (37, 23)),), {}),
        (plot_class_matrix, render_class_matrix, (np.zeros((3, 3)),),
         {"vmin": 0.0, "vmax": 2.0, "cmap": "viridis", "annotate": False}),
        (plot_per_class, render_per_class, (torch.tensor([0.3, float("nan"), 0.9]), ["a", "b", "c"]),
         {"title": "epoch 4", "ylabel": "Jacobian norm"}),
        (plot_stiffness_by_distance, render_stiffness_by_distance,
         (np.linspace(0.0, 2.0, 5), np.array([0.8, 0.3, np.nan, -0.2]), np.array([10, 5, 0, 3])),
         {"critical_length": 1.2, "title": "val_val, epoch 2"}),
    ],
)  # fmt: skip
def test_a_plot_is_the_rendered_picture_pixel_for_pixel(plot, render, args, kwargs):
    fig, ax = plot(*args, **kwargs)
    assert isinstance(fig, Figure) and ax in fig.axes
    image = figure_to_array(fig)
    expected = render(*args, **kwargs)
    assert image.shape == expected.shape and image.dtype == np.uint8
    np.testing.assert_array_equal(image, expected)


def test_cmap_and_annotate_reach_the_renderer():
    matrix = np.full((2, 2), 1.5)
    image = figure_to_array(plot_class_matrix(matrix, vmin=0.0, vmax=2.0, cmap="viridis", annotate=False)[0])
    # 1.5 on [0, 2]: three quarters up the colormap, sampled at 256 points as TensorBoard images are
    expected = np.round(np.asarray(colormaps["viridis"](np.rint(0.75 * 255) / 255)[:3]) * 255).astype(int)
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    non_white = [(n, tuple(c)) for c, n in zip(colours, counts, strict=True) if tuple(c) != (255, 255, 255)]
    cells = np.array(max(non_white)[1])  # the most frequent non-white colour: the four cells
    assert np.abs(cells - expected).max() <= 1
    with_numbers = figure_to_array(plot_class_matrix(matrix, vmin=0.0, vmax=2.0, annotate=True)[0])
    without = figure_to_array(plot_class_matrix(matrix, vmin=0.0, vmax=2.0, annotate=False)[0])
    assert (with_numbers != without).any()
    np.testing.assert_array_equal(with_numbers, figure_to_array(plot_class_matrix(matrix, vmin=0.0, vmax=2.0)[0]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"matrix": np.zeros(3)}, ValueError, "2-D"),
        ({"matrix": np.zeros((0, 0))}, ValueError, "non-empty"),
        ({"matrix": np.zeros((2, 2)), "vmin": 1.0, "vmax": 1.0}, ValueError, "vmin < vmax"),
        ({"matrix": np.zeros((2, 2)), "class_names": ["a"]}, ValueError, "`class_names` expected 2 names"),
        ({"matrix": np.zeros((2, 2)), "class_names": "ab"}, TypeError, "`class_names` expected a sequence of names"),
        ({"matrix": np.zeros((2, 2)), "cmap": "no_such_map"}, TypeError, "`cmap`.*colormap"),
        ({"matrix": np.zeros((2, 2)), "annotate": "yes"}, TypeError, "`annotate`"),
        ({"matrix": "abc"}, TypeError, "`matrix`"),
    ],
)
def test_class_matrix_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_class_matrix(**kwargs)


def test_stiffness_by_distance_and_per_class_validation():
    with pytest.raises(ValueError, match="one more entry"):
        plot_stiffness_by_distance(np.arange(3), np.arange(3))
    with pytest.raises(ValueError, match="`count`"):
        plot_stiffness_by_distance(np.arange(3), np.arange(2), np.arange(3))
    with pytest.raises(ValueError, match="1-D"):
        plot_per_class(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="`class_names` expected 3 names"):
        plot_per_class([0.3, 0.1, 0.2], ["a"])
    # no critical length (None or NaN): the same picture, with no marker
    edges, mean = torch.linspace(0, 1, 3), torch.tensor([0.5, 0.1])
    np.testing.assert_array_equal(
        figure_to_array(plot_stiffness_by_distance(edges, mean, critical_length=None)[0]),
        figure_to_array(plot_stiffness_by_distance(edges, mean, critical_length=float("nan"))[0]),
    )


def test_image_figure_round_trips_and_checks_its_input():
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_array_equal(figure_to_array(image_figure(image)[0]), image)
    with pytest.raises(ValueError, match="`image`"):
        image_figure(np.zeros((4, 4)))


def test_new_figure_panels_and_legend_only_with_labels():
    fig, axes = new_figure(3, 2.0, 1.5)
    assert len(axes) == 3 and figure_to_array(fig).shape == (150, 600, 3)
    legend(axes[0])
    assert axes[0].get_legend() is None
    axes[1].plot([0, 1], label="a")
    legend(axes[1])
    assert axes[1].get_legend() is not None


def test_figure_to_array_any_figure_and_type_check():
    fig = Figure(figsize=(2, 1), dpi=50)
    fig.add_subplot().plot([0, 1])
    image = figure_to_array(fig)
    assert image.shape == (50, 100, 3) and image.dtype == np.uint8
    with pytest.raises(TypeError, match="Figure"):
        figure_to_array(np.zeros((2, 2)))


def test_plots_leave_pyplot_and_backend_alone():
    backend = matplotlib.get_backend()
    pyplot = sys.modules.get("matplotlib.pyplot")
    before = pyplot.get_fignums() if pyplot is not None else None
    plot_class_matrix(np.eye(2))
    plot_per_class([1.0, 2.0])
    plot_stiffness_by_distance([0, 1], [0.5])
    new_figure(2)
    assert matplotlib.get_backend() == backend
    if pyplot is not None:
        assert pyplot.get_fignums() == before
