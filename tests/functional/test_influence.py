"""TracIn influence from Grams: against explicit per-example gradients (float64 loop) and Captum's TracInCP."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import relu_mlp
from oracles import per_example_gradients_loop

from lightning_sensitivity.functional import influence_top_k, loss_gradient_gram, tracin_influence


def _checkpoints(num: int = 3, seed: int = 0):
    """A few "checkpoints" of one model: its weights after some plain SGD steps, and the data."""
    torch.manual_seed(seed)
    model = relu_mlp(12, 4).double()
    x, y = torch.randn(10, 12, dtype=torch.float64), torch.randint(0, 4, (10,))
    xv, yv = torch.randn(6, 12, dtype=torch.float64), torch.randint(0, 4, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    states = []
    for _ in range(num):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        states.append(copy.deepcopy(model.state_dict()))
    return model, states, (x, y), (xv, yv)


def test_tracin_matches_explicit_per_example_gradients():
    model, states, (x, y), (xv, yv) = _checkpoints()
    lrs = [0.3, 0.1, 0.02]
    grams, self_grams = [], []
    expected, expected_self = torch.zeros(10, 6, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    for lr, state in zip(lrs, states, strict=True):
        model.load_state_dict(state)
        grams.append(loss_gradient_gram(model, x, y, xv, yv))
        self_grams.append(loss_gradient_gram(model, x, y).diagonal())
        g = per_example_gradients_loop(model, x, y, F.cross_entropy)
        gv = per_example_gradients_loop(model, xv, yv, F.cross_entropy)
        for i in range(10):
            expected_self[i] += lr * float(g[i] @ g[i])
            for j in range(6):
                expected[i, j] += lr * float(g[i] @ gv[j])
    torch.testing.assert_close(tracin_influence(grams, lrs), expected, rtol=1e-10, atol=1e-12)
    stacked = tracin_influence(torch.stack(grams), torch.tensor(lrs, dtype=torch.float64))
    torch.testing.assert_close(stacked, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(tracin_influence(self_grams, lrs), expected_self, rtol=1e-10, atol=1e-12)


def test_tracin_matches_captum_tracincp(tmp_path):
    pytest.importorskip("captum")
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    model, states, (x, y), (xv, yv) = _checkpoints()
    lrs = [0.3, 0.1, 0.02]
    paths = []
    for k, (lr, state) in enumerate(zip(lrs, states, strict=True)):
        path = tmp_path / f"ckpt_{k}.pt"
        torch.save({"state": state, "lr": lr}, path)
        paths.append(str(path))

    def load(net, path):
        saved = torch.load(path, weights_only=True)
        net.load_state_dict(saved["state"])
        return saved["lr"]

    grams, self_grams = [], []
    for state in states:
        model.load_state_dict(state)
        grams.append(loss_gradient_gram(model, x, y, xv, yv))
        self_grams.append(loss_gradient_gram(model, x, y).diagonal())
    ours, ours_self = tracin_influence(grams, lrs), tracin_influence(self_grams, lrs)

    net = copy.deepcopy(model).eval()
    tracin = TracInCP(
        net, TensorDataset(x, y), paths, checkpoints_load_func=load,
        loss_fn=torch.nn.CrossEntropyLoss(reduction="none"), batch_size=1, sample_wise_grads_per_batch=False,
    )  # fmt: skip
    theirs = tracin.influence((xv, yv), show_progress=False)  # [n_test, n_train]
    theirs_self = tracin.self_influence(show_progress=False)
    torch.testing.assert_close(ours, theirs.T.double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours_self, theirs_self.double(), rtol=1e-9, atol=1e-12)


def test_influence_top_k_against_a_sort_by_hand():
    gen = torch.Generator().manual_seed(3)
    inf = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    top = influence_top_k(inf, 3)
    for j in range(4):
        column = [(float(inf[i, j]), i) for i in range(9)]
        best = [i for _, i in sorted(column, key=lambda t: -t[0])[:3]]
        worst = [i for _, i in sorted(column)[:3]]
        assert top.helpful[j].tolist() == best
        assert top.harmful[j].tolist() == worst
        assert top.helpful_values[j].tolist() == [float(inf[i, j]) for i in best]
        assert top.harmful_values[j].tolist() == [float(inf[i, j]) for i in worst]
    assert influence_top_k(inf, 50).helpful.shape == (4, 9)  # k capped at N


def test_influence_ties_go_to_the_lower_index():
    top = influence_top_k(torch.zeros(4, 2), 2)
    assert top.helpful.tolist() == [[0, 1], [0, 1]] and top.harmful.tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize(
    ("grams", "lrs", "error", "match"),
    [
        ("gram", [1.0], TypeError, "`grams` expected a sequence"),
        ([[1.0]], [1.0], TypeError, "`grams` expected a sequence of tensors"),
        ([], [], ValueError, "at least one Gram"),
        (torch.zeros(2), [1.0], ValueError, r"\[T, N, M\]"),
        ([torch.zeros(2, 2), torch.zeros(2, 3)], [1.0, 1.0], ValueError, "one shape"),
        ([torch.zeros(2, 2, dtype=torch.long)], [1.0], ValueError, "floating-point"),
        ([torch.zeros(2, 2)], [1.0, 2.0], ValueError, "expected 1 values"),
        ([torch.zeros(2, 2)], [-1.0], ValueError, ">= 0"),
        ([torch.zeros(2, 2)], [float("nan")], ValueError, "finite"),
        ([torch.zeros(2, 2)], ["a"], TypeError, "`learning_rates` expected a sequence of floats"),
        ([torch.zeros(2, 2)], [True], TypeError, "`learning_rates`"),
        ([torch.zeros(2, 2)], 0.1, TypeError, "`learning_rates`"),
        ([torch.zeros(2, 2)], torch.zeros(1, 1), ValueError, "1-D tensor"),
    ],
)
def test_tracin_bad_arguments(grams, lrs, error, match):
    with pytest.raises(error, match=match):
        tracin_influence(grams, lrs)


@pytest.mark.parametrize(
    ("influence", "k", "error", "match"),
    [
        ([[1.0]], 1, TypeError, "`influence` expected a torch.Tensor"),
        (torch.zeros(3), 1, ValueError, r"\[N, M\]"),
        (torch.zeros(0, 2), 1, ValueError, "N >= 1"),
        (torch.zeros(2, 2, dtype=torch.long), 1, ValueError, "floating-point"),
        (torch.zeros(2, 2), 0, ValueError, "`k`"),
        (torch.zeros(2, 2), 1.5, TypeError, "`k`"),
    ],
)
def test_top_k_bad_arguments(influence, k, error, match):
    with pytest.raises(error, match=match):
        influence_top_k(influence, k)
