"""critical_length (first crossing, weighted linear fit) and its bootstrap over probe points, against numpy / loops."""

import math

import numpy as np
import pytest
import torch
from oracles import first_crossing_loop, weighted_fit_zero

from lightning_sensitivity.functional import critical_length, critical_length_bootstrap


def test_first_crossing_hand_cases():
    x = torch.tensor([0.5, 1.5, 2.5])
    assert critical_length(x, torch.tensor([0.6, 0.2, -0.2])) == pytest.approx(2.0)
    assert critical_length(x, torch.tensor([-0.1, 0.2, -0.2])) == 0.5  # first bin already non-positive
    assert math.isnan(critical_length(x, torch.tensor([0.6, 0.2, 0.1])))  # never reaches zero
    # An empty bin between the last positive and the first negative one is skipped: interpolate 0.5 -> 2.5.
    assert critical_length(x, torch.tensor([0.5, float("nan"), -0.5])) == pytest.approx(1.5)
    # A bin with count 0 is skipped too, whatever its mean says.
    assert critical_length(x, torch.tensor([0.5, -9.0, -0.5]), torch.tensor([3, 0, 2])) == pytest.approx(1.5)


def test_first_crossing_matches_loop_on_random_curves():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x = torch.linspace(0.05, 1.95, 10, dtype=torch.float64)
        y = 0.8 - x + 0.3 * torch.randn(10, generator=g, dtype=torch.float64)
        y[torch.rand(10, generator=g) < 0.2] = float("nan")
        expected = first_crossing_loop(x.tolist(), y.tolist())
        got = critical_length(x, y, method="first_crossing")
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-12)


def test_linear_fit_hand_case():
    # mean = 1 - x/2 exactly: zero at 2, whatever the weights.
    x = torch.tensor([0.0, 1.0, 3.0])
    y = 1 - x / 2
    assert critical_length(x, y, method="linear_fit") == pytest.approx(2.0)
    assert critical_length(x, y, torch.tensor([1, 100, 7]), method="linear_fit") == pytest.approx(2.0)
    # Two points (0, 1) and (1, 0) with a third at (2, 1) of weight 0 -> ignored.
    assert critical_length([0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [5, 5, 0], method="linear_fit") == pytest.approx(1.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_linear_fit_matches_numpy_weighted_least_squares(weighted):
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.linspace(0.05, 1.95, 12, dtype=torch.float64)
        y = 0.6 - 0.7 * x + 0.2 * torch.randn(12, generator=g, dtype=torch.float64)
        counts = torch.randint(0, 50, (12,), generator=g) if weighted else None
        y[torch.rand(12, generator=g) < 0.15] = float("nan")
        expected = weighted_fit_zero(x.numpy(), y.numpy(), None if counts is None else counts.numpy())
        got = critical_length(x, y, counts, method="linear_fit")
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-9)


def test_linear_fit_nan_cases():
    x = torch.tensor([0.5, 1.5, 2.5])
    assert math.isnan(critical_length(x, torch.tensor([0.1, 0.2, 0.3]), method="linear_fit"))  # rising
    assert math.isnan(critical_length(x, torch.tensor([0.1, 0.1, 0.1]), method="linear_fit"))  # flat
    assert math.isnan(critical_length(x, torch.tensor([0.1, float("nan"), float("nan")]), method="linear_fit"))
    assert math.isnan(critical_length(x, torch.tensor([0.5, 0.2, -0.1]), torch.tensor([0, 0, 4]), method="linear_fit"))
    assert math.isnan(critical_length(torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0]), method="linear_fit"))
    # zeros outside the measured distances: beyond the last bin, and below the first (negative)
    assert math.isnan(critical_length(x, torch.tensor([0.9, 0.8, 0.7]), method="linear_fit"))
    assert math.isnan(critical_length(x, torch.tensor([-0.1, -0.2, -0.3]), method="linear_fit"))
    # at the edge of the range it is still a crossing
    assert critical_length(x, torch.tensor([0.2, 0.1, 0.0]), method="linear_fit") == pytest.approx(2.5)


def test_critical_length_bad_input():
    x = torch.tensor([0.5, 1.5])
    with pytest.raises(ValueError, match="`method`"):
        critical_length(x, x, method="zero")
    with pytest.raises(ValueError, match="`bin_centers` and `mean`"):
        critical_length(x, torch.ones(3))
    with pytest.raises(ValueError, match="`counts`"):
        critical_length(x, x, torch.ones(3))
    with pytest.raises(ValueError, match="`counts`"):
        critical_length(x, x, torch.tensor([1, -1]))
    with pytest.raises(TypeError, match="`mean`"):
        critical_length(x, "ab")


# --- bootstrap ----------------------------------------------------------------------------------------------------


def _curve_loop(matrix, inputs, idx, num_bins, keep_pair=lambda a, b: True):
    """Binned mean of matrix over pairs of the resampled points (copies of one point left out), cosine distance."""
    sums, counts = [0.0] * num_bins, [0] * num_bins
    for a in range(len(idx)):
        for b in range(len(idx)):
            i, j = idx[a], idx[b]
            if i == j or not keep_pair(i, j):
                continue
            xi, xj = inputs[i].double(), inputs[j].double()
            d = min(max(1.0 - float(xi @ xj) / float(xi.norm() * xj.norm()), 0.0), 2.0)
            k = min(int(d / (2.0 / num_bins)), num_bins - 1)
            sums[k] += float(matrix[i, j])
            counts[k] += 1
    centers = [(k + 0.5) * 2.0 / num_bins for k in range(num_bins)]
    means = [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)]
    return centers, means, counts


def _problem(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    sim = torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)
    matrix = (sim + 0.3 * torch.randn(n, n, generator=g, dtype=torch.float64)).clamp(-1, 1)
    y = torch.randint(0, 2, (n,), generator=g)
    return matrix, x, y


@pytest.mark.parametrize("same_class_only", [False, True])
def test_bootstrap_matches_loop_over_resampled_points(same_class_only):
    matrix, x, y = _problem()
    n, reps, bins = x.shape[0], 12, 6
    keep = (lambda i, j: bool(y[i] == y[j])) if same_class_only else (lambda i, j: True)
    est, low, high = critical_length_bootstrap(
        matrix, x, y, num_bootstrap=reps, seed=3, num_bins=bins, method="linear_fit", same_class_only=same_class_only
    )
    centers, means, counts = _curve_loop(matrix, x, list(range(n)), bins, keep)
    assert est == pytest.approx(weighted_fit_zero(centers, means, counts), rel=1e-9)
    g = torch.Generator().manual_seed(3)  # the documented draws: N indices with replacement per replicate
    values = []
    for _ in range(reps):
        idx = torch.randint(0, n, (n,), generator=g).tolist()
        values.append(weighted_fit_zero(*_curve_loop(matrix, x, idx, bins, keep)))
    values = [v for v in values if not math.isnan(v)]
    assert low == pytest.approx(np.percentile(values, 2.5), rel=1e-9)
    assert high == pytest.approx(np.percentile(values, 97.5), rel=1e-9)
    assert low <= high


def test_bootstrap_is_seeded_and_leaves_global_rng_alone():
    matrix, x, _ = _problem(n=12, seed=1)
    state = torch.get_rng_state()
    a = critical_length_bootstrap(matrix, x, num_bootstrap=20, seed=5, num_bins=5, method="first_crossing")
    assert torch.equal(state, torch.get_rng_state())
    assert a == critical_length_bootstrap(matrix, x, num_bootstrap=20, seed=5, num_bins=5, method="first_crossing")
    assert a != critical_length_bootstrap(matrix, x, num_bootstrap=20, seed=6, num_bins=5, method="first_crossing")


def test_bootstrap_without_any_crossing_is_nan():
    x = torch.randn(6, 3, dtype=torch.float64)
    est, low, high = critical_length_bootstrap(torch.ones(6, 6), x, num_bootstrap=5, num_bins=4)
    assert math.isnan(est) and math.isnan(low) and math.isnan(high)


def test_bootstrap_bad_input():
    matrix, x, y = _problem(n=5)
    with pytest.raises(ValueError, match="`matrix`"):
        critical_length_bootstrap(matrix[:, :4], x)
    with pytest.raises(ValueError, match="`inputs`"):
        critical_length_bootstrap(matrix, x[:4])
    with pytest.raises(TypeError, match="`targets`"):
        critical_length_bootstrap(matrix, x, same_class_only=True)
    with pytest.raises(ValueError, match="`targets`"):
        critical_length_bootstrap(matrix, x, y.double(), same_class_only=True)
    with pytest.raises(ValueError, match="`num_bootstrap`"):
        critical_length_bootstrap(matrix, x, num_bootstrap=0)
    with pytest.raises(ValueError, match="`method`"):
        critical_length_bootstrap(matrix, x, method="zero")
    with pytest.raises(ValueError, match="`distance`"):
        critical_length_bootstrap(matrix, x, distance="manhattan")
