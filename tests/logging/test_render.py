"""The fast renderers: geometry-free checks by comparing renders that differ in one input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from lightning_sensitivity.logging.render import (
    colormap_lut,
    render_class_matrix,
    render_per_class,
    render_stiffness_by_distance,
    render_timings,
)

GREY = (200, 200, 200)
BLUE = (31, 119, 180)
RED = (214, 39, 40)
N = 25  # above the annotation limit: the cells carry no numbers, so a changed cell changes only its own colour


def reference_colour(fraction: float) -> np.ndarray:
    """RdBu_r straight from matplotlib, independent of the renderer's LUT."""
    return np.array(colormaps["RdBu_r"](fraction)[:3]) * 255


def changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.any(a != b, axis=2)


def is_image(image: np.ndarray) -> bool:
    return isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_shapes_and_dtype():
    assert is_image(render_class_matrix(np.zeros((3, 3)), title="t"))
    assert is_image(render_class_matrix(torch.zeros(2, 5), ["a", "b"], title="non-square"))
    assert is_image(render_per_class(torch.tensor([1.0, 2.0]), title="t", ylabel="y"))
    assert is_image(render_stiffness_by_distance([0, 1, 2], [0.5, -0.5], [3, 4], title="t"))


@pytest.mark.parametrize("value, fraction", [(-1.0, 0.0), (0.0, 0.5), (1.0, 1.0), (-7.0, 0.0), (3.0, 1.0)])
def test_cell_colours_come_from_the_colormap_and_clip(value, fraction):
    base = np.full((N, N), 0.5)
    other = base.copy()
    other[3, 4] = value
    a, b = render_class_matrix(base, title="x"), render_class_matrix(other, title="x")
    mask = changed_pixels(a, b)
    assert mask.any()
    colours = np.unique(b[mask], axis=0)
    assert len(colours) == 1
    np.testing.assert_allclose(colours[0], reference_colour(fraction), atol=1.01)
    # the changed region is one square cell
    rows, cols = np.nonzero(mask)
    assert rows.max() - rows.min() == cols.max() - cols.min() and mask.sum() == (np.ptp(rows) + 1) ** 2


def test_nan_cells_are_grey_and_the_legend_says_so():
    base = np.full((N, N), 0.5)
    one, two = base.copy(), base.copy()
    one[7, 2] = two[7, 2] = two[1, 1] = math.nan
    a, b, c = render_class_matrix(base), render_class_matrix(one), render_class_matrix(two)
    colours = np.unique(c[changed_pixels(b, c)], axis=0)
    assert [tuple(c) for c in colours] == [GREY]
    cell = int(changed_pixels(b, c).sum())
    # the NaN swatch under the colour bar is grey too; a matrix without any NaN has no such legend (nor grey)
    assert np.all(b == GREY, axis=2).sum() >= cell + 10 * 10
    assert not np.all(a == GREY, axis=2).any()
    assert a.shape == b.shape  # the same size with and without NaN: TensorBoard's slider does not jump


def test_a_rounded_zero_has_no_minus_sign():
    from lightning_sensitivity.logging.render import cell_text

    assert [cell_text(v) for v in (-0.001, -0.004, 0.0, -0.006, 0.37)] == ["0.00", "0.00", "0.00", "-0.01", "0.37"]


def test_heatmaps_and_charts_fit_a_tensorboard_card_unscaled():
    from lightning_sensitivity.logging.render import CARD_HEIGHT, CARD_WIDTH

    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    rng = np.random.default_rng(0)
    images = [
        render_class_matrix(
            rng.uniform(-1, 1, (10, 10)),
            names,
            title="train_val class sign stiffness, epoch 30",
            xlabel="val class",
            ylabel="train class",
        ),
        render_per_class(
            rng.uniform(0, 1, 10),
            names,
            title="Mean Jacobian norm per class (val probe set), epoch 4",
            ylabel="||d softmax / dx||_F",
        ),
        render_stiffness_by_distance(
            np.linspace(0, 10, 21),
            np.linspace(0.8, -0.3, 20),
            np.arange(20),
            critical_length=7.3,
            title="val_val sign stiffness by euclidean input distance, epoch 4",
        ),
    ]
    # TensorBoard's Time Series image card fits an image into 372 x 215 px: these are shown unscaled
    for image in images:
        assert image.shape[1] <= CARD_WIDTH and image.shape[0] <= CARD_HEIGHT, image.shape


def test_vmin_vmax_move_the_colours():
    m = np.full((N, N), 0.5)
    a = render_class_matrix(m, vmin=-1, vmax=1)
    b = render_class_matrix(m, vmin=0, vmax=1)
    assert changed_pixels(a, b).any()


def test_title_changes_only_the_title_band():
    m = np.eye(4)
    a, b = render_class_matrix(m, title="epoch 1"), render_class_matrix(m, title="epoch 2")
    rows = np.nonzero(changed_pixels(a, b).any(axis=1))[0]
    assert rows.size and rows.max() < 30
    assert changed_pixels(render_class_matrix(m), a).any()


def test_names_are_drawn():
    m = np.eye(3)
    default = render_class_matrix(m)
    named = render_class_matrix(m, ["cat", "dog", "car"])
    other = render_class_matrix(m, ["cat", "dog", "cab"])  # same width, another word
    assert default.shape != named.shape or changed_pixels(default, named).any()
    assert changed_pixels(named, other).any()
    bars = render_per_class([1.0, 2.0, 3.0], ["cat", "dog", "car"])
    assert changed_pixels(bars, render_per_class([1.0, 2.0, 3.0], ["cat", "dog", "cab"])).any()


def test_numbers_in_small_matrices_only():
    small = np.full((3, 3), 0.5)
    other = small.copy()
    other[0, 0] = 0.51  # the same colour index, another number in the cell
    assert changed_pixels(render_class_matrix(small), render_class_matrix(other)).any()
    big = np.full((N, N), 0.5)
    other = big.copy()
    other[0, 0] = 0.501
    assert not changed_pixels(render_class_matrix(big), render_class_matrix(other)).any()


def test_hundred_classes():
    rng = np.random.default_rng(0)
    names = [f"class_{i}" for i in range(100)]
    image = render_class_matrix(rng.uniform(-1, 1, (100, 100)), names, title="100 classes, epoch 5")
    assert is_image(image) and image.shape[0] < 1200 and image.shape[1] < 1200
    assert is_image(render_per_class(rng.uniform(0, 1, 100), names, title="bars"))


def test_per_class_bar_heights_and_nan():
    def blue(image: np.ndarray) -> np.ndarray:
        return np.all(image == BLUE, axis=2)

    image = render_per_class([1.0, 2.0])
    columns = blue(image).sum(axis=0)
    heights = sorted(set(columns[columns > 0].tolist()))
    assert len(heights) == 2 and heights[1] / heights[0] == pytest.approx(2.0, rel=0.03)
    full = blue(render_per_class([1.0, 1.0, 1.0])).sum()
    missing = blue(render_per_class([1.0, math.nan, 1.0])).sum()
    assert missing == pytest.approx(full * 2 / 3, rel=0.03)
    assert blue(render_per_class([math.nan, math.nan])).sum() == 0


def test_curve_marks_the_critical_length():
    def red(image: np.ndarray) -> int:
        return int(np.all(image == RED, axis=2).sum())

    edges, mean, count = np.linspace(0, 4, 5), [0.8, 0.3, -0.2, -0.4], [5, 6, 7, 8]
    assert red(render_stiffness_by_distance(edges, mean, count)) == 0
    assert red(render_stiffness_by_distance(edges, mean, count, critical_length=None)) == 0
    assert red(render_stiffness_by_distance(edges, mean, count, critical_length=2.5)) > 100
    # an empty bin leaves the curve; its mean is ignored
    a = render_stiffness_by_distance(edges, [0.8, 0.3, -0.2, -0.4], [5, 0, 7, 8])
    b = render_stiffness_by_distance(edges, [0.8, 99.0, -0.2, -0.4], [5, 0, 7, 8])
    assert not changed_pixels(a, b).any()
    assert is_image(render_stiffness_by_distance(edges, [math.nan] * 4))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: render_class_matrix(np.zeros(3)), ValueError, "`matrix` expected a non-empty 2-D"),
        (lambda: render_class_matrix(np.zeros((0, 0))), ValueError, "`matrix`"),
        (lambda: render_class_matrix([["a", "b"]]), TypeError, "`matrix`"),
        (lambda: render_class_matrix(np.zeros((2, 2)), vmin=1, vmax=1), ValueError, "vmin < vmax"),
        (lambda: render_class_matrix(np.zeros((2, 2)), vmin=math.nan), ValueError, "`vmin`"),
        (lambda: render_class_matrix(np.zeros((2, 2)), ["a"]), ValueError, "`names` expected 2 names"),
        (lambda: render_class_matrix(np.zeros((2, 2)), "ab"), TypeError, "`names`"),
        (lambda: render_class_matrix(np.zeros((2, 2)), title=3), TypeError, "`title` expected a str"),
        (lambda: render_per_class(np.zeros((2, 2))), ValueError, "`values` expected a non-empty 1-D"),
        (lambda: render_per_class([1.0], ylabel=None), TypeError, "`ylabel`"),
        (lambda: render_stiffness_by_distance([0, 1], [1.0, 2.0]), ValueError, "`bin_edges`"),
        (lambda: render_stiffness_by_distance([0, 1, 1], [1.0, 2.0]), ValueError, "increasing"),
        (lambda: render_stiffness_by_distance([0, 1, 2], [1.0, 2.0], [1]), ValueError, "`count`"),
        (lambda: render_stiffness_by_distance([0, 1, 2], [1.0, 2.0], critical_length="x"), TypeError, "critical"),
        (lambda: render_timings(0), ValueError, "`repeats`"),
        (lambda: colormap_lut("no such map"), TypeError, "colormap"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_lut_is_read_only_and_matches_matplotlib():
    lut = colormap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and not lut.flags.writeable
    np.testing.assert_allclose(lut[0], reference_colour(0.0), atol=0.51)
    np.testing.assert_allclose(lut[255], reference_colour(1.0), atol=0.51)


def test_timings_are_reported_and_well_under_matplotlib():
    timings = render_timings(repeats=3)
    assert set(timings) == {"class_matrix_10", "class_matrix_100", "per_class_10", "per_class_100", "by_distance"}
    assert all(t > 0 for t in timings.values())
    # matplotlib took ~300 ms / ~1000 ms here; a generous bound that a loaded machine still meets
    assert timings["class_matrix_10"] < 100 and timings["class_matrix_100"] < 300
