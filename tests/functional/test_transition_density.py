"""near_anchor_mask / near_anchor_ratio against a plain loop, shuffled_anchors' properties, bad input."""

import math

import pytest
import torch
from oracles import near_anchor_ratio_loop

from lightning_sensitivity.functional import near_anchor_mask, near_anchor_ratio, shuffled_anchors


def test_mask_hand_case():
    # 24 segments, midpoints (k + 0.5) / 24; half-width 1/24 takes the segment on each side of each anchor
    near = near_anchor_mask(24).nonzero().flatten().tolist()
    assert near == [0, 7, 8, 15, 16, 23]


@pytest.mark.parametrize("num_points, half_width", [(24, 1 / 24), (960, 1 / 24), (97, 0.05), (30, 0.1)])
def test_ratio_matches_loop(num_points, half_width):
    g = torch.Generator().manual_seed(num_points)
    segments = torch.randint(0, 9, (5, num_points), generator=g)
    expected = near_anchor_ratio_loop(segments.tolist(), half_width)
    assert near_anchor_ratio(segments, half_width) == pytest.approx(expected, rel=1e-12)
    assert expected != 1.0


def test_ratio_sees_fewer_transitions_near_the_anchors():
    segments = torch.full((3, 96), 4.0)
    segments[:, near_anchor_mask(96)] = 1.0
    assert near_anchor_ratio(segments) == pytest.approx(0.25)


def test_ratio_without_transitions_away_is_nan():
    segments = torch.zeros(2, 48)
    assert math.isnan(near_anchor_ratio(segments))
    segments[:, 0] = 3  # near the first anchor only
    assert math.isnan(near_anchor_ratio(segments))


@pytest.mark.parametrize(
    "segments, kwargs, error",
    [
        ([[1, 2, 3]], {}, TypeError),
        (torch.ones(4), {}, ValueError),
        (torch.ones(2, 2), {}, ValueError),
        (torch.ones(2, 12, dtype=torch.bool), {}, TypeError),
        (-torch.ones(2, 12), {}, ValueError),
        (torch.ones(2, 12), {"half_width": 0.2}, ValueError),
        (torch.ones(2, 12), {"half_width": 0}, ValueError),
        (torch.ones(2, 12), {"half_width": "a"}, TypeError),
    ],
)
def test_ratio_bad_input(segments, kwargs, error):
    with pytest.raises(error, match="segments|half_width"):
        near_anchor_ratio(segments, **kwargs)


def test_shuffled_anchors_keep_each_examples_values_and_break_structure():
    x = torch.rand(6, 1, 5, 5)
    y = shuffled_anchors(x, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    # the same multiset of values per example (intensity histogram, norm), not the same image
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert not torch.equal(y, x)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    # one permutation per example: two identical examples get different shuffles
    same = torch.rand(1, 25).repeat(2, 1)
    out = shuffled_anchors(same, seed=0)
    assert not torch.equal(out[0], out[1])


def test_shuffled_anchors_seeded_and_global_rng_untouched():
    x = torch.rand(4, 10)
    state = torch.get_rng_state()
    a, b = shuffled_anchors(x, seed=1), shuffled_anchors(x, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, shuffled_anchors(x, seed=2))


@pytest.mark.parametrize(
    "inputs, seed, error", [([1.0, 2.0], 0, TypeError), (torch.ones(3), 0, ValueError),
                            (torch.ones(2, 3, dtype=torch.long), 0, TypeError), (torch.ones(2, 3), 1.5, TypeError)]
)  # fmt: skip
def test_shuffled_anchors_bad_input(inputs, seed, error):
    with pytest.raises(error, match="inputs|seed"):
        shuffled_anchors(inputs, seed=seed)
