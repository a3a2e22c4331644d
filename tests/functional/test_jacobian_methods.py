"""Every Jacobian method against the float64 loop, the exact cotangent reduction, and the random-projection estimate."""

import pytest
import torch
from helpers import assert_unchanged, state_snapshot
from oracles import jacobian_norm_loop
from torch import nn

from lightning_sensitivity.functional import jacobian_norm, jacobian_norm_estimate
from lightning_sensitivity.functional.jacobian import cotangent_rows


@pytest.mark.parametrize("method", ["looped", "batched", "per_example"])
@pytest.mark.parametrize("output", ["softmax", "logits", "log_softmax", "sigmoid"])
@pytest.mark.parametrize("num_classes", [1, 2, 7])
def test_methods_match_loop_for_any_number_of_classes(method, output, num_classes):
    torch.manual_seed(num_classes)
    model = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, num_classes)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    expected = jacobian_norm_loop(model, x, output)
    got = jacobian_norm(model, x, output=output, method=method, chunk_size=4)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("output", ["softmax", "log_softmax", "logits", "sigmoid"])
def test_cotangent_rows_reproduce_the_output_jacobian_gram(output):
    # M_i^T M_i must equal A_i^T A_i with A_i the Jacobian of the output transform, computed here by autograd.
    logits = torch.randn(4, 6, dtype=torch.float64)
    rows = cotangent_rows(logits, output)
    transform = {
        "softmax": lambda z: z.softmax(-1),
        "log_softmax": lambda z: z.log_softmax(-1),
        "logits": lambda z: z,
        "sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
    }
    for i in range(4):
        a = torch.autograd.functional.jacobian(transform[output], logits[i])
        m = rows[:, i, :]
        torch.testing.assert_close(m.T @ m, a.T @ a, rtol=1e-10, atol=1e-12)
    assert rows.shape[0] == (6 if output in ("logits", "sigmoid") else 5)


def test_looped_under_inference_mode_leaves_model_untouched(model_and_shape):
    model, shape = model_and_shape
    x = torch.randn(5, *shape)
    model(x).sum().backward()
    before = state_snapshot(model)
    expected = jacobian_norm(model, x, method="per_example")
    with torch.inference_mode():
        got = jacobian_norm(model, x.clone(), method="looped")
    assert_unchanged(model, before)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("output", ["softmax", "log_softmax", "logits", "sigmoid"])
def test_estimate_is_unbiased_within_standard_errors(output):
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 50)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    exact_sq = jacobian_norm_loop(model, x, output) ** 2
    est, se = jacobian_norm_estimate(model, x, num_projections=400, output=output, seed=3, squared=True)
    assert ((est - exact_sq).abs() <= 4 * se).all(), (est, exact_sq, se)
    assert (se < 0.25 * exact_sq).all()  # 400 projections pin the value down, so the check above has teeth
    norm, norm_se = jacobian_norm_estimate(model, x, num_projections=400, output=output, seed=3)
    torch.testing.assert_close(norm, est.sqrt())
    assert ((norm - exact_sq.sqrt()).abs() <= 4 * norm_se).all()


def test_estimate_is_seeded_chunk_independent_and_leaves_global_rng():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 30))
    x = torch.randn(7, 4)
    rng = torch.get_rng_state()
    a = jacobian_norm_estimate(model, x, seed=5)
    b = jacobian_norm_estimate(model, x, seed=5, chunk_size=3)
    assert torch.equal(rng, torch.get_rng_state())
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], jacobian_norm_estimate(model, x, seed=6)[0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_projections": 1}, ValueError, "`num_projections`.*got 1"),
        ({"num_projections": 2.0}, TypeError, "`num_projections`"),
        ({"output": "probs"}, ValueError, "`output`.*'probs'"),
        ({"chunk_size": 0}, ValueError, "`chunk_size`"),
        ({"seed": "a"}, TypeError, "`seed`"),
    ],
)
def test_estimate_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        jacobian_norm_estimate(nn.Linear(3, 4), torch.randn(2, 3), **kwargs)


class _SkipConnection(nn.Module):
    """The input feeds a narrowing linear layer and, again, the output: the first-layer shortcut must not apply."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return torch.tanh(self.a(x.flatten(1))) + self.b(x.flatten(1)).pow(2)


@pytest.mark.parametrize("factory", [
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 4)),  # narrowing first layer
    _SkipConnection,
])  # fmt: skip
@pytest.mark.parametrize("output", ["softmax", "logits"])
def test_first_linear_layer_shortcut_is_exact(factory, output):
    torch.manual_seed(12)
    model = factory().double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    expected = jacobian_norm_loop(model, x, output)
    torch.testing.assert_close(jacobian_norm(model, x, output=output, method="looped"), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", ["looped", "batched", "per_example"])
def test_auto_chunks_and_returned_logits_match_the_loop(method, monkeypatch):
    import lightning_sensitivity.functional.jacobian as jac

    # A budget of ~3 examples per chunk after the first: several sized chunks, their boundaries inside the set.
    monkeypatch.setattr(jac, "AUTO_FIRST_CHUNK", 4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double().eval()
    per_example = 1 * 6 * 6 + 3 * 16 * 2 + 48 + 5  # input view + conv, relu outputs + flatten + logits (about)
    monkeypatch.setattr(jac, "ACTIVATION_BUDGET", 3 * per_example)
    x = torch.randn(11, 1, 6, 6, dtype=torch.float64)
    pieces = []
    norms, logits = jacobian_norm(
        model, x, method=method, chunk_size="auto", return_logits=True, progress=lambda d, t: pieces.append(d)
    )
    torch.testing.assert_close(norms, jacobian_norm_loop(model, x, "softmax"))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
    assert pieces[0] == 4 and pieces[-1] == 11 and len(pieces) > 2
    torch.testing.assert_close(jacobian_norm(model, x, method=method), norms)


def test_chunk_size_auto_is_the_only_string():
    with pytest.raises(ValueError, match="`chunk_size` expected an int >= 1, None or 'auto', got 'big'"):
        jacobian_norm(nn.Linear(3, 2), torch.randn(4, 3), chunk_size="big")
