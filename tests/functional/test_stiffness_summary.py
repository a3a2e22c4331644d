"""stiffness_summary against double loops over pairs in float64: means, class splits, matrices, curve, length."""

import importlib
import math

import pytest
import torch
from oracles import first_crossing_loop, weighted_fit_zero

from lightning_sensitivity.functional import StiffnessSummary, stiffness_summary
from lightning_sensitivity.functional.stiffness_summary import _cosine_bin_index

# The module (the package's ``stiffness_summary`` attribute is the function of that name).
summary_module = importlib.import_module("lightning_sensitivity.functional.stiffness_summary")


def _pairs(n, m, self_pairs):
    return [(i, j) for i in range(n) for j in range(m) if not (self_pairs and i == j)]


def _mean_loop(matrix, pairs, keep=lambda i, j: True):
    vals = [float(matrix[i, j]) for i, j in pairs if keep(i, j)]
    return sum(vals) / len(vals) if vals else math.nan


def _class_matrix_loop(matrix, pairs, labels_r, labels_c, k):
    out = [[math.nan] * k for _ in range(k)]
    for a in range(k):
        for b in range(k):
            out[a][b] = _mean_loop(matrix, pairs, lambda i, j, a=a, b=b: labels_r[i] == a and labels_c[j] == b)
    return torch.tensor(out, dtype=torch.float64)


def _cos_distance(x, y):
    x, y = x.double().flatten(), y.double().flatten()
    return min(max(1.0 - float(x @ y) / float(x.norm() * y.norm()), 0.0), 2.0)


def _curve_loop(matrix, pairs, xr, xc, bins):
    sums, counts = [0.0] * bins, [0] * bins
    for i, j in pairs:
        v = float(matrix[i, j])
        if not math.isfinite(v):
            continue
        k = min(int(_cos_distance(xr[i], xc[j]) / (2.0 / bins)), bins - 1)
        sums[k] += v
        counts[k] += 1
    return [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)], counts


def _problem(n, m=None, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    xr = torch.randn(n, 3, 2, generator=g, dtype=torch.float64)
    xc = xr if m is None else torch.randn(m, 3, 2, generator=g, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(xr.flatten(1)[:, None], xc.flatten(1)[None], dim=-1)
    cosine = (0.8 * cos + 0.4 * torch.randn(cos.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    if m is None:
        cosine = (cosine + cosine.T) / 2
    sign = torch.sign(cosine)
    yr = torch.randint(0, classes, (n,), generator=g)
    yc = None if m is None else torch.randint(0, classes, (m,), generator=g)
    return sign, cosine, xr, xc, yr, yc


def _labels(yr, yc):
    return yr.tolist(), (yr if yc is None else yc).tolist()


@pytest.mark.parametrize("two_sets", [False, True])
def test_means_and_class_matrices_match_loops(two_sets):
    sign, cosine, xr, xc, yr, yc = _problem(14, 11 if two_sets else None, classes=4)
    groups = [0, 1, 1, 0]
    out = stiffness_summary(
        sign,
        cosine.float(),
        yr,
        yc,
        inputs_rows=xr,
        inputs_cols=xc if two_sets else None,
        num_classes=4,
        class_groups=groups,
        num_distance_bins=6,
    )
    assert isinstance(out, StiffnessSummary) and out.self_pairs is not two_sets
    n, m = sign.shape
    pairs = _pairs(n, m, not two_sets)
    lr, lc = _labels(yr, yc)
    assert out.num_pairs == len(pairs)
    assert out.num_same_class_pairs == sum(lr[i] == lc[j] for i, j in pairs)
    assert out.num_same_class_pairs + out.num_different_class_pairs == out.num_pairs
    for kind, matrix in (("sign", sign), ("cosine", cosine.float().double())):
        assert getattr(out, f"{kind}_mean") == pytest.approx(_mean_loop(matrix, pairs), rel=1e-9)
        same = _mean_loop(matrix, pairs, lambda i, j: lr[i] == lc[j])
        diff = _mean_loop(matrix, pairs, lambda i, j: lr[i] != lc[j])
        assert getattr(out, f"same_class_{kind}") == pytest.approx(same, rel=1e-9)
        assert getattr(out, f"different_class_{kind}") == pytest.approx(diff, rel=1e-9)
        expected = _class_matrix_loop(matrix, pairs, lr, lc, 4)
        torch.testing.assert_close(getattr(out, f"class_{kind}").double(), expected, equal_nan=True)
        coarse = _class_matrix_loop(matrix, pairs, [groups[v] for v in lr], [groups[v] for v in lc], 2)
        torch.testing.assert_close(getattr(out, f"superclass_{kind}").double(), coarse, equal_nan=True)
        curve, counts = _curve_loop(matrix, pairs, xr, xc, 6)
        torch.testing.assert_close(
            getattr(out, f"distance_{kind}"), torch.tensor(curve, dtype=torch.float64), equal_nan=True
        )
    assert out.distance_count.tolist() == _curve_loop(sign, pairs, xr, xc, 6)[1]
    torch.testing.assert_close(out.bin_edges, torch.linspace(0, 2, 7, dtype=torch.float64))
    assert out.class_splits_skipped is None
    centers = [(k + 0.5) / 3 for k in range(6)]
    curve, counts = _curve_loop(sign, pairs, xr, xc, 6)
    assert out.critical_length == pytest.approx(weighted_fit_zero(centers, curve, counts), rel=1e-9)
    assert out.critical_length_method == "linear_fit"


def test_first_crossing_and_arrays_keys():
    sign, cosine, xr, _, yr, _ = _problem(12, seed=1)
    out = stiffness_summary(
        sign, cosine, yr, inputs_rows=xr, critical_length_method="first_crossing", num_distance_bins=5
    )
    centers = [0.2 + 0.4 * k for k in range(5)]
    curve = out.distance_sign.tolist()
    expected = first_crossing_loop(centers, curve)  # interpolated from the last positive bin
    assert not math.isnan(expected)  # the data cross zero: the comparison is not NaN against NaN
    assert out.critical_length == pytest.approx(expected)
    arrays = out.arrays()
    assert "superclass_sign" not in arrays and "class_sign" in arrays and "distance_count" in arrays
    assert arrays["sign_mean"] == out.sign_mean and arrays["critical_length"] == out.critical_length


def test_nan_entries_make_means_nan_and_are_left_out_of_the_curve():
    sign, cosine, xr, _, yr, _ = _problem(8, classes=2, seed=2)
    sign[1, 2] = cosine[1, 2] = float("nan")
    out = stiffness_summary(sign, cosine, yr, inputs_rows=xr, num_distance_bins=4)
    assert math.isnan(out.sign_mean) and math.isnan(out.cosine_mean)
    assert int(out.distance_count.sum()) == 8 * 7 - 1
    a, b = int(yr[1]), int(yr[2])
    assert math.isnan(float(out.class_sign[a, b]))


@pytest.mark.parametrize("distance, upper", [("cosine", 2.0), ("euclidean", 1.0)])
def test_no_finite_pair_gives_nan_curve_with_the_functional_edges(distance, upper):
    sign = torch.full((5, 5), float("nan"))
    x = torch.randn(5, 3)
    out = stiffness_summary(
        sign, sign, torch.tensor([0, 1, 0, 1, 1]), inputs_rows=x, num_distance_bins=4, distance=distance
    )
    torch.testing.assert_close(out.bin_edges, torch.linspace(0, upper, 5, dtype=torch.float64))
    assert out.distance_sign.isnan().all() and out.distance_count.sum() == 0
    assert math.isnan(out.critical_length) and math.isnan(out.sign_mean)
    one = stiffness_summary(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0]), inputs_rows=x[:1])
    assert one.num_pairs == 0 and math.isnan(one.sign_mean) and math.isnan(one.same_class_sign)


@pytest.mark.parametrize("kind", ["multi_hot", "regression", "bool"])
def test_targets_that_are_not_class_indices_give_only_means_and_curve(kind):
    sign, cosine, xr, _, _, _ = _problem(9, seed=3)
    targets = {
        "multi_hot": (torch.rand(9, 4) < 0.5).float(),
        "regression": torch.randn(9),
        "bool": torch.rand(9) < 0.5,
    }[kind]
    out = stiffness_summary(sign, cosine, targets, inputs_rows=xr, num_distance_bins=4, class_groups=[0, 1])
    pairs = _pairs(9, 9, True)
    assert out.sign_mean == pytest.approx(_mean_loop(sign, pairs))
    assert out.class_sign is None and out.superclass_cosine is None
    assert math.isnan(out.same_class_sign) and math.isnan(out.different_class_cosine)
    assert out.num_same_class_pairs == 0
    assert "class indices" in out.class_splits_skipped
    torch.testing.assert_close(
        out.distance_cosine, torch.tensor(_curve_loop(cosine, pairs, xr, xr, 4)[0], dtype=torch.float64), equal_nan=True
    )
    assert "class_sign" not in out.arrays()


def test_stiffness_summary_bad_input():
    sign, cosine, xr, _, yr, _ = _problem(6)
    kw = {"inputs_rows": xr}
    with pytest.raises(TypeError, match="`sign`"):
        stiffness_summary(sign.tolist(), cosine, yr, **kw)
    with pytest.raises(ValueError, match="`cosine`"):
        stiffness_summary(sign, cosine[:5], yr, **kw)
    with pytest.raises(ValueError, match="`targets_rows`"):
        stiffness_summary(sign, cosine, yr[:5], **kw)
    with pytest.raises(ValueError, match="`inputs_rows`"):
        stiffness_summary(sign, cosine, yr, inputs_rows=xr[:5])
    with pytest.raises(ValueError, match="`inputs_cols`"):
        stiffness_summary(sign, cosine, yr, inputs_rows=xr, inputs_cols=xr)
    with pytest.raises(ValueError, match="`sign`"):
        stiffness_summary(sign[:, :5], cosine[:, :5], yr, **kw)
    with pytest.raises(ValueError, match="`targets_cols`"):
        stiffness_summary(sign, cosine, yr, yr + 10, inputs_rows=xr, inputs_cols=xr, num_classes=4)
    with pytest.raises(ValueError, match="`targets_rows`"):
        stiffness_summary(sign, cosine, yr, num_classes=1, **kw)
    with pytest.raises(ValueError, match="`class_groups`"):
        stiffness_summary(sign, cosine, yr, num_classes=4, class_groups=[0, 1], **kw)
    with pytest.raises(TypeError, match="`class_groups`"):
        stiffness_summary(sign, cosine, yr, class_groups="ab", **kw)
    with pytest.raises(ValueError, match="`distance`"):
        stiffness_summary(sign, cosine, yr, distance="l1", **kw)
    with pytest.raises(ValueError, match="`critical_length_method`"):
        stiffness_summary(sign, cosine, yr, critical_length_method="zero", **kw)
    with pytest.raises(ValueError, match="`num_distance_bins`"):
        stiffness_summary(sign, cosine, yr, num_distance_bins=0, **kw)


@pytest.mark.parametrize("method", ["linear_fit", "first_crossing"])
@pytest.mark.parametrize("two", [False, True])
def test_same_class_critical_length_matches_loop(method, two):
    sign, cosine, xr, xc, yr, yc = _problem(14, 11 if two else None, classes=2, seed=4)
    # same-class pairs of a noisy sign matrix whose stiffness falls with distance
    out = stiffness_summary(
        sign, cosine, yr, yc, inputs_rows=xr, inputs_cols=xc if two else None,
        critical_length_method=method, num_distance_bins=6, same_class_critical_length=True,
    )  # fmt: skip
    ly_r, ly_c = _labels(yr, yc)
    pairs = _pairs(14, 11 if two else 14, not two)
    same_pairs = [(i, j) for i, j in pairs if ly_r[i] == ly_c[j]]
    means, counts = _curve_loop(sign, same_pairs, xr, xc if two else xr, 6)
    centers = [(k + 0.5) * 2.0 / 6 for k in range(6)]
    if method == "linear_fit":
        expected = weighted_fit_zero(centers, means, counts)
    else:
        expected = first_crossing_loop(centers, means)
    assert not math.isnan(expected)
    assert out.same_class_critical_length == pytest.approx(expected, rel=1e-9)
    assert out.same_class_critical_length != pytest.approx(out.critical_length)  # a different curve
    assert math.isnan(stiffness_summary(sign, cosine, yr, yc, inputs_rows=xr, inputs_cols=xc if two else None,
                                        num_distance_bins=6).same_class_critical_length)  # off by default


@pytest.mark.parametrize("self_pairs", [True, False])
def test_pair_means_equal_a_loop_over_pairs(self_pairs):
    from lightning_sensitivity.functional import pair_means

    gen = torch.Generator().manual_seed(3)
    n, m = 9, (9 if self_pairs else 6)
    values = torch.randn(n, m, generator=gen, dtype=torch.float64)
    y_rows = torch.randint(0, 3, (n,), generator=gen)
    y_cols = y_rows if self_pairs else torch.randint(0, 3, (m,), generator=gen)
    groups = {"mean": [], "same_class": [], "different_class": []}
    for i in range(n):
        for j in range(m):
            if self_pairs and i == j:
                continue
            groups["mean"].append(float(values[i, j]))
            groups["same_class" if y_rows[i] == y_cols[j] else "different_class"].append(float(values[i, j]))
    got = pair_means(values, y_rows, None if self_pairs else y_cols, self_pairs=self_pairs)
    for key, entries in groups.items():
        assert got[key] == pytest.approx(sum(entries) / len(entries), abs=1e-12), key
    # float targets: only the overall mean; a NaN entry makes the means NaN
    floats = pair_means(values, torch.rand(n, 2), self_pairs=False) if not self_pairs else None
    if floats is not None:
        assert floats["same_class"] != floats["same_class"] and floats["mean"] == pytest.approx(float(values.mean()))
    values[0, 1] = float("nan")
    mean = pair_means(values, y_rows, None if self_pairs else y_cols, self_pairs=self_pairs)["mean"]
    assert mean != mean  # NaN


@pytest.mark.parametrize("two_sets", [False, True])
def test_precomputed_distances_give_the_same_summary(two_sets):
    """The monitor bins slices of one joint distance matrix: the summary equals the one computing them itself."""
    from lightning_sensitivity.functional.stiffness import pairwise_distance

    sign, cosine, xr, xc, yr, yc = _problem(12, 9 if two_sets else None, classes=3, seed=4)
    kwargs = dict(inputs_rows=xr, inputs_cols=xc if two_sets else None, num_classes=3, num_distance_bins=5,
                  same_class_critical_length=True)  # fmt: skip
    joint = pairwise_distance(torch.cat([xr, xc]) if two_sets else xr)
    dist = joint[:12, 12:] if two_sets else joint
    given = stiffness_summary(sign, cosine, yr, yc, distances=dist, **kwargs)
    own = stiffness_summary(sign, cosine, yr, yc, **kwargs)
    for name, value in own.arrays().items():
        torch.testing.assert_close(torch.as_tensor(given.arrays()[name]), torch.as_tensor(value), equal_nan=True)
    assert given.same_class_critical_length == pytest.approx(own.same_class_critical_length, nan_ok=True)
    with pytest.raises(ValueError, match="`distances` expected"):
        stiffness_summary(sign, cosine, yr, yc, distances=dist[:, :-1], **kwargs)


def test_nan_on_the_diagonal_of_a_set_with_itself_is_left_out_of_the_means():
    sign, cosine, xr, _, yr, _ = _problem(7, classes=2, seed=5)
    sign.fill_diagonal_(float("nan"))
    out = stiffness_summary(sign, cosine, yr, inputs_rows=xr, num_distance_bins=3)
    pairs = _pairs(7, 7, True)
    lr = yr.tolist()
    assert out.sign_mean == pytest.approx(_mean_loop(sign, pairs), rel=1e-12)
    assert out.same_class_sign == pytest.approx(_mean_loop(sign, pairs, lambda i, j: lr[i] == lr[j]), rel=1e-12)
    assert out.different_class_sign == pytest.approx(_mean_loop(sign, pairs, lambda i, j: lr[i] != lr[j]), rel=1e-12)


def test_cosine_bins_of_pairs_just_off_an_edge_are_the_float64_ones(monkeypatch):
    # Pairs 1e-7..1e-4 either side of each inner edge in 784 rotated features: the float32 distances are recomputed
    # in float64 near an edge, so the counts equal the float64 loop's. The near pairs are a tenth of all here: the
    # share that still takes the float32 path is raised to that, and the recompute runs 5 pairs at a time (its
    # chunk boundaries are crossed).
    g = torch.Generator().manual_seed(7)
    rot = torch.linalg.qr(torch.randn(784, 784, generator=g, dtype=torch.float64))[0]
    near = [0.2 * k + d for k in range(1, 10) for d in (1e-7, -1e-7, 1e-6, -1e-6, 3e-5, -3e-5, 1e-4, -1e-4)]
    far = [0.2 * k + 0.1 for k in range(10)] * 60  # most pairs mid-bin, so that the float32 path is taken
    cols = [rot[:, 0] * (1 - d) * 0.3 + rot[:, 1] * math.sqrt(1 - (1 - d) ** 2) * 0.3 for d in near + far]
    xr, xc = (rot[:, 0] * 2.5).float()[None], torch.stack(cols).float()
    n, m = 1, len(cols)
    sign = torch.ones(n, m)
    expected = _curve_loop(sign, _pairs(n, m, False), xr, xc, 10)[1]

    def counts() -> list[int]:
        y_rows, y_cols = torch.zeros(n, dtype=torch.long), torch.zeros(m, dtype=torch.long)
        out = stiffness_summary(sign, sign, y_rows, y_cols, inputs_rows=xr, inputs_cols=xc, num_distance_bins=10)
        return out.distance_count.tolist()

    assert _cosine_bin_index(xr, xc, 10) is None  # this many near pairs: the float64 matrix is cheaper
    assert counts() == expected
    monkeypatch.setattr(summary_module, "_RECOMPUTE_SHARE", 8)
    monkeypatch.setattr(summary_module, "_RECOMPUTE", 5 * 784)
    assert _cosine_bin_index(xr, xc, 10) is not None
    assert counts() == expected
