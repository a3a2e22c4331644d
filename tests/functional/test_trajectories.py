import math

import pytest
import torch

from lightning_sensitivity.functional import ellipse_trajectories


def test_anchors_lie_on_the_curve():
    anchors = torch.randn(5, 3, 2, 3, dtype=torch.float64)
    traj = ellipse_trajectories(anchors, 30)
    assert traj.shape == (5, 30, 2, 3)
    torch.testing.assert_close(traj[:, 0], anchors[:, 0])
    torch.testing.assert_close(traj[:, 10], anchors[:, 1])
    torch.testing.assert_close(traj[:, 20], anchors[:, 2])


def test_points_are_an_equally_spaced_planar_ellipse():
    anchors = torch.randn(4, 3, 7, dtype=torch.float64)
    num = 17
    traj = ellipse_trajectories(anchors, num)
    h = 2 * math.pi / num
    center = anchors.mean(dim=1)
    for k in range(4):
        pts = traj[k]
        # planar: all points in the affine plane of the three anchors
        basis = torch.stack([anchors[k, 1] - anchors[k, 0], anchors[k, 2] - anchors[k, 0]])
        offsets = pts - anchors[k, 0]
        coef = torch.linalg.lstsq(basis.T, offsets.T).solution
        torch.testing.assert_close(basis.T @ coef, offsets.T, rtol=1e-9, atol=1e-9)
        # equally spaced samples of c + u cos t + v sin t satisfy x[j+1] + x[j-1] = 2 cos(h) x[j] + 2 (1 - cos h) c,
        # cyclically (closed curve), with c the anchors' mean
        for j in range(num):
            lhs = pts[(j + 1) % num] + pts[j - 1]
            rhs = 2 * math.cos(h) * pts[j] + 2 * (1 - math.cos(h)) * center[k]
            torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


def test_dtype_and_device_follow_anchors():
    traj = ellipse_trajectories(torch.randn(2, 3, 4, dtype=torch.float16), 6)
    assert traj.dtype == torch.float16


@pytest.mark.parametrize(
    "anchors, num_points, error, match",
    [
        (torch.randn(2, 3, 4), 2, ValueError, "`num_points`.*got 2"),
        (torch.randn(2, 3, 4), 4.0, TypeError, "`num_points`"),
        (torch.randn(2, 2, 4), 8, ValueError, r"`anchors`.*\[K, 3.*\(2, 2, 4\)"),
        (torch.randn(3, 4), 8, ValueError, "`anchors`"),
        (torch.ones(2, 3, 4, dtype=torch.long), 8, TypeError, "floating"),
        ([[1.0]], 8, TypeError, "`anchors`"),
    ],
)
def test_bad_inputs(anchors, num_points, error, match):
    with pytest.raises(error, match=match):
        ellipse_trajectories(anchors, num_points)
