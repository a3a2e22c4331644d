import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, state_snapshot
from oracles import transitions_loop
from torch import nn

from lightning_sensitivity.functional import (
    ellipse_trajectories,
    near_anchor_ratio,
    transition_counts,
    transition_summary,
)


def _check_against_oracle(model, traj, chunk_size=None):
    expected = transitions_loop(model, traj)
    got = transition_counts(model, traj, chunk_size=chunk_size)
    assert got.activation.tolist() == expected["activation"]
    assert got.region_changes.tolist() == expected["region_changes"]
    assert got.prediction.tolist() == expected["prediction"]
    assert got.segments.tolist() == expected["segments"]
    assert got.segment_prediction.tolist() == expected["segment_prediction"]
    return got


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 40])
def test_matches_naive_loop(chunk_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    model = model.double()
    traj = ellipse_trajectories(torch.randn(4, 3, 2, 3, dtype=torch.float64) * 3, 15)
    got = _check_against_oracle(model, traj, chunk_size)
    assert got.num_units == 24 and got.num_points == 15
    assert got.activation.sum() > 0  # the test would be vacuous otherwise
    assert got.segments.shape == (4, 15) and got.segment_prediction.shape == (4, 15)
    assert 0 < int((got.segments > 0).sum()) < got.segments.numel()  # some segments change, some do not


def test_chunks_sized_to_the_model_match_naive_loop(monkeypatch):
    """chunk_size=None: a first chunk finds the units, later chunks hold POINT_BUDGET // units points; the chunk
    boundaries (here inside trajectories and across them) never change a count."""
    from lightning_sensitivity.functional import transitions

    monkeypatch.setattr(transitions, "FIRST_CHUNK", 4)
    monkeypatch.setattr(transitions, "POINT_BUDGET", 24 * 7)  # 24 units: chunks of 7 points after the first 4
    sizes = []
    real = transitions._sized_chunks

    def spy(total, sized):
        for piece in real(total, sized):
            sizes.append(piece.stop - piece.start)
            yield piece

    monkeypatch.setattr(transitions, "_sized_chunks", spy)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    traj = ellipse_trajectories(torch.randn(4, 3, 2, 3, dtype=torch.float64) * 3, 15)
    got = _check_against_oracle(model.double(), traj)
    assert sizes[0] == 4 and set(sizes[1:-1]) == {7} and sum(sizes) == 60
    assert got.activation.sum() > 0


def test_cnn_with_batchnorm_and_dropout_matches_naive_loop():
    from helpers import bn_dropout_cnn

    torch.manual_seed(1)
    model = bn_dropout_cnn().double()
    traj = ellipse_trajectories(torch.randn(3, 3, 1, 6, 6, dtype=torch.float64), 12)
    got = _check_against_oracle(model, traj, chunk_size=5)
    assert got.num_units == 3 * 36 + 8


def test_hand_counted_one_dimensional_network():
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0], [1.0]]))
        model[0].bias.copy_(torch.tensor([-0.5, 0.0, 1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        model[2].bias.copy_(torch.tensor([0.1, 0.0]))
    # patterns (x>0.5, x<0, x>-1): -2:(0,1,0) -0.25:(0,1,1) 0.25:(0,0,1) 1:(1,0,1) 2:(1,0,1)
    # hamming of consecutive pairs incl. 2 -> -2: 1,1,1,0,3; classes 1,1,0,0,0
    traj = torch.tensor([[-2.0, -0.25, 0.25, 1.0, 2.0]], dtype=torch.float64).reshape(1, 5, 1)
    counts = transition_counts(model, traj)
    assert counts.activation.tolist() == [6]
    assert counts.region_changes.tolist() == [4]
    assert counts.prediction.tolist() == [2]


class FunctionalReLUs(nn.Module):
    """The same network written with every recognised call style."""

    def __init__(self, style):
        super().__init__()
        self.style = style
        self.l1, self.l2, self.l3 = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def act(self, h):
        return {
            "F.relu": F.relu,
            "torch.relu": torch.relu,
            "method": lambda t: t.relu(),
            "inplace": lambda t: F.relu(t, inplace=True),
            "relu_": lambda t: t.relu_(),
            "leaky": lambda t: F.leaky_relu(t, 0.1),
            "relu6": F.relu6,
        }[self.style](h)

    def forward(self, x):
        return self.l3(self.act(self.l2(self.act(self.l1(x)))))


MODULE_FOR_STYLE = {"leaky": lambda: nn.LeakyReLU(0.1), "relu6": nn.ReLU6}


@pytest.mark.parametrize("style", ["F.relu", "torch.relu", "method", "inplace", "relu_", "leaky", "relu6"])
def test_function_style_relus_are_recognised(style):
    torch.manual_seed(4)
    functional = FunctionalReLUs(style).double()
    act = MODULE_FOR_STYLE.get(style, nn.ReLU)
    # the module-based twin (same weights) is what the hook-based oracle can see
    twin = nn.Sequential(functional.l1, act(), functional.l2, act(), functional.l3)
    traj = ellipse_trajectories(torch.randn(3, 3, 5, dtype=torch.float64) * 4, 20)
    expected = transitions_loop(twin, traj)
    got = transition_counts(functional, traj, chunk_size=13)
    assert got.num_units == 16
    assert got.activation.tolist() == expected["activation"]
    assert got.prediction.tolist() == expected["prediction"]
    assert sum(expected["activation"]) > 0


def test_model_without_relu_raises_for_activation_but_counts_predictions():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    traj = ellipse_trajectories(torch.randn(2, 3, 4, dtype=torch.float64) * 3, 24)
    counts = transition_counts(model, traj)
    assert counts.num_units == 0
    with pytest.raises(ValueError, match="ReLU-family"):
        _ = counts.activation
    with pytest.raises(ValueError, match="ReLU-family"):
        _ = counts.region_changes
    with pytest.raises(ValueError, match="ReLU-family"):
        _ = counts.segments
    assert counts.prediction.tolist() == transitions_loop(model, traj)["prediction"]


def test_model_untouched_and_works_under_inference_mode():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3))
    model.train()
    traj = ellipse_trajectories(torch.randn(2, 3, 4), 9)
    before = state_snapshot(model)
    expected = transition_counts(model, traj)
    with torch.inference_mode():
        got = transition_counts(model, traj.clone())
    assert_unchanged(model, before)
    assert torch.equal(got.activation, expected.activation)


@pytest.mark.parametrize(
    "traj, kwargs, error, match",
    [
        (torch.randn(4, 5), {}, ValueError, r"`trajectories`.*at least 3 dimensions"),
        (torch.randn(2, 1, 5), {}, ValueError, "at least 2 points"),
        (torch.randn(2, 4, 5), {"chunk_size": -1}, ValueError, "`chunk_size`"),
        (torch.ones(2, 4, 5, dtype=torch.long), {}, TypeError, "floating"),
    ],
)
def test_bad_inputs(traj, kwargs, error, match):
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    with pytest.raises(error, match=match):
        transition_counts(model, traj, **kwargs)


@pytest.mark.parametrize("width", [1, 4])
def test_label_set_predictions_match_naive_loop(width):
    # A multi-label sigmoid head (4 outputs) or one binary logit: a prediction change is any output crossing 0.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, width)).double()
    traj = ellipse_trajectories(torch.randn(5, 3, 3, dtype=torch.float64) * 2, 40)
    expected = transitions_loop(model, traj, prediction="labels")
    got = transition_counts(model, traj, prediction="labels", chunk_size=7)
    assert got.prediction.tolist() == expected["prediction"]
    assert got.segment_prediction.tolist() == expected["segment_prediction"]
    assert got.activation.tolist() == expected["activation"]
    assert sum(expected["prediction"]) > 0  # some label flips: the comparison is not vacuous
    if width == 1:  # the arg-max of one output never changes
        assert transition_counts(model, traj).prediction.sum() == 0


def test_prediction_rule_is_checked():
    with pytest.raises(ValueError, match="`prediction` expected one of"):
        transition_counts(nn.Linear(2, 2), torch.randn(1, 4, 2), prediction="sign")


def test_transition_summary_equals_plain_means_of_the_counts():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    points = 24
    counts = transition_counts(net, ellipse_trajectories(torch.randn(3, 3, 5), points))
    out = transition_summary(
        num_points=points, prediction=counts.prediction, activation=counts.activation,
        region_changes=counts.region_changes, segments=counts.segments, near_anchor_fraction=1 / 12,
    )  # fmt: skip
    mean = lambda t: sum(float(v) for v in t.tolist()) / len(t)  # noqa: E731
    assert out["prediction_mean"] == pytest.approx(mean(counts.prediction), rel=1e-15)
    assert out["activation_mean"] == pytest.approx(mean(counts.activation), rel=1e-15)
    assert out["region_changes_mean"] == pytest.approx(mean(counts.region_changes), rel=1e-15)
    assert out["region_changes_fraction"] == pytest.approx(mean(counts.region_changes) / points, rel=1e-15)
    assert out["near_anchor_ratio"] == near_anchor_ratio(counts.segments, 1 / 12)
    assert set(transition_summary(num_points=points, prediction=counts.prediction)) == {"prediction_mean"}
    with pytest.raises(ValueError, match="`activation`, `region_changes` and `segments` expected"):
        transition_summary(num_points=points, activation=counts.activation)
