"""Figures: rendered pixels checked against matplotlib's own colormap, not against the plotting code."""

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
)


def cell_pixel(fig, ax, image: np.ndarray, row: int, col: int) -> np.ndarray:
    """RGB of the pixel at the centre of matrix cell (row, col) in the rendered image."""
    x, y = ax.transData.transform((col, row))
    height = image.shape[0]
    return image[int(round(height - y)), int(round(x))].astype(int)


def test_class_matrix_renders_rgb_uint8_with_nan_cell():
    matrix = torch.tensor([[1.0, -1.0, 0.0], [float("nan"), 0.5, -0.5], [0.2, 0.1, 1.0]])
    fig, ax = plot_class_matrix(matrix, ["cat", "dog", "car"], title="train_val class sign stiffness, epoch 7")
    image = figure_to_array(fig)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert ax.get_title() == "train_val class sign stiffness, epoch 7"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "car"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "car"]


def test_class_matrix_colours_sign_and_nan_grey():
    matrix = np.array([[1.0, -1.0], [np.nan, 0.0]])
    fig, ax = plot_class_matrix(matrix, annotate=False)
    image = figure_to_array(fig)
    plus, minus, nan = (cell_pixel(fig, ax, image, *rc) for rc in [(0, 0), (0, 1), (1, 0)])
    assert plus[0] > plus[2] + 50  # red
    assert minus[2] > minus[0] + 50  # blue
    assert np.abs(plus - minus).sum() > 150
    assert max(nan) - min(nan) <= 6 and 150 < nan[0] < 240  # grey, neither red nor blue nor white


@pytest.mark.parametrize("others", [0.5, 1.0])
def test_class_matrix_keeps_fixed_colour_range(others):
    # The 0.5 cell must get the same colour whatever the rest of the matrix holds (no autoscaling).
    matrix = np.full((2, 2), others)
    matrix[0, 0] = 0.5
    matrix[1, 1] = -others
    fig, ax = plot_class_matrix(matrix, annotate=False)
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    expected = np.array(colormaps["RdBu_r"]((0.5 + 1.0) / 2.0)[:3]) * 255
    got = cell_pixel(fig, ax, figure_to_array(fig), 0, 0)
    np.testing.assert_allclose(got, expected, atol=3)


def test_class_matrix_custom_range_and_cmap():
    fig, ax = plot_class_matrix(np.array([[0.0, 2.0]]), vmin=0.0, vmax=2.0, cmap="viridis", annotate=False)
    assert ax.images[0].get_clim() == (0.0, 2.0)
    got = cell_pixel(fig, ax, figure_to_array(fig), 0, 1)
    np.testing.assert_allclose(got, np.array(colormaps["viridis"](1.0)[:3]) * 255, atol=3)


def test_class_matrix_annotates_small_matrices_only():
    _, ax = plot_class_matrix(np.zeros((3, 3)))
    assert sorted(t.get_text() for t in ax.texts) == ["0.00"] * 9
    _, ax = plot_class_matrix(np.array([[np.nan, 0.25]]))
    assert sorted(t.get_text() for t in ax.texts) == ["0.25", "–"]
    _, ax = plot_class_matrix(np.zeros((21, 21)))
    assert len(ax.texts) == 0
    _, ax = plot_class_matrix(np.zeros((3, 3)), annotate=False)
    assert len(ax.texts) == 0


def test_class_matrix_large_shows_subset_of_names():
    names = [f"c{i}" for i in range(100)]
    fig, ax = plot_class_matrix(np.zeros((100, 100)), names)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 10 <= len(labels) <= 40 and labels[0] == "c0" and set(labels) <= set(names)
    assert figure_to_array(fig).dtype == np.uint8


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"matrix": np.zeros(3)}, ValueError, "2-D"),
        ({"matrix": np.zeros((0, 0))}, ValueError, "non-empty"),
        ({"matrix": np.zeros((2, 2)), "vmin": 1.0, "vmax": 1.0}, ValueError, "vmin < vmax"),
        ({"matrix": np.zeros((2, 2)), "class_names": ["a"]}, ValueError, "2 names"),
        ({"matrix": np.zeros((2, 2)), "class_names": "ab"}, TypeError, "sequence of names"),
        ({"matrix": np.zeros((2, 2)), "cmap": "no_such_map"}, TypeError, "colormap"),
        ({"matrix": "abc"}, TypeError, "`matrix`"),
    ],
)
def test_class_matrix_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_class_matrix(**kwargs)


def test_stiffness_by_distance_curve_critical_length_and_counts():
    edges = np.linspace(0.0, 2.0, 5)
    mean = np.array([0.8, 0.3, np.nan, -0.2])
    count = np.array([10, 5, 0, 3])
    fig, ax = plot_stiffness_by_distance(edges, mean, count, critical_length=1.2, title="val_val, epoch 2")
    assert ax.get_title() == "val_val, epoch 2"
    curve = ax.lines[1]
    np.testing.assert_allclose(curve.get_xdata(), [0.25, 0.75, 1.25, 1.75])
    np.testing.assert_allclose(curve.get_ydata(), mean)
    verticals = [line for line in ax.lines if np.ptp(np.asarray(line.get_xdata(), dtype=float)) == 0]
    assert any(np.isclose(np.asarray(line.get_xdata(), dtype=float)[0], 1.2) for line in verticals)
    bars = fig.axes[-1].patches
    assert [b.get_height() for b in bars] == [10, 5, 0, 3]
    assert figure_to_array(fig).shape[2] == 3


def test_stiffness_by_distance_without_count_or_finite_critical_length():
    edges = torch.linspace(0, 1, 3)
    fig, ax = plot_stiffness_by_distance(edges, torch.tensor([0.5, 0.1]), critical_length=float("nan"))
    assert len(fig.axes) == 1
    assert len(ax.lines) == 2  # zero line and curve, no critical-length marker
    with pytest.raises(ValueError, match="one more entry"):
        plot_stiffness_by_distance(np.arange(3), np.arange(3))
    with pytest.raises(ValueError, match="`count`"):
        plot_stiffness_by_distance(np.arange(3), np.arange(2), np.arange(3))


def test_per_class_bars():
    values = torch.tensor([0.3, float("nan"), 0.9])
    fig, ax = plot_per_class(values, ["a", "b", "c"], title="epoch 4", ylabel="Jacobian norm")
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.3, 0.0, 0.9]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_ylabel() == "Jacobian norm" and ax.get_title() == "epoch 4"
    assert figure_to_array(fig).dtype == np.uint8
    with pytest.raises(ValueError, match="1-D"):
        plot_per_class(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="3 names"):
        plot_per_class(values, ["a"])


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
    assert matplotlib.get_backend() == backend
    if pyplot is not None:
        assert pyplot.get_fignums() == before
