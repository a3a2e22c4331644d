import pytest
import torch
from helpers import assert_unchanged, state_snapshot
from oracles import jacobian_norm_loop
from torch import nn

from lightning_sensitivity.functional import jacobian_norm


@pytest.mark.parametrize("method", ["auto", "batched", "per_example"])
@pytest.mark.parametrize("output", ["softmax", "logits", "log_softmax", "sigmoid"])
def test_matches_naive_loop_float64(model_and_shape, output, method):
    model, shape = model_and_shape
    model = model.double()
    x = torch.randn(7, *shape, dtype=torch.float64)
    expected = jacobian_norm_loop(model, x, output)
    got = jacobian_norm(model, x, output=output, method=method, chunk_size=3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


def test_matches_naive_loop_float32(model_and_shape):
    model, shape = model_and_shape
    x = torch.randn(9, *shape)
    expected = jacobian_norm_loop(model.double(), x.double()).float()
    got = jacobian_norm(model.float(), x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_linear_model_closed_form():
    torch.manual_seed(1)
    model = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w = model.weight.detach()
    # logits: J = W for every example
    torch.testing.assert_close(jacobian_norm(model, x, output="logits"), w.norm().expand(4), rtol=1e-12, atol=0)
    # softmax: J = (diag(s) - s s^T) W
    for i, s in enumerate(torch.softmax(model(x), -1).detach()):
        expected = ((torch.diag(s) - torch.outer(s, s)) @ w).norm()
        torch.testing.assert_close(jacobian_norm(model, x[i : i + 1])[0], expected, rtol=1e-12, atol=0)


def test_chunking_does_not_change_values():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.randn(11, 6, dtype=torch.float64)
    whole = jacobian_norm(model, x)
    for chunk in (1, 4, 11, 50):
        torch.testing.assert_close(jacobian_norm(model, x, chunk_size=chunk), whole, rtol=1e-12, atol=0)


def test_model_left_untouched_and_rng_not_advanced(model_and_shape):
    model, shape = model_and_shape
    model.train()
    model[0].eval() if isinstance(model, nn.Sequential) else None  # a mixture of flags must be restored as is
    x = torch.randn(5, *shape)
    model(x).sum().backward()  # a .grad that must survive
    before = state_snapshot(model)
    jacobian_norm(model, x)
    assert_unchanged(model, before)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(context):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    expected = jacobian_norm(model, x)
    with context():
        x_ctx = x.clone()  # an inference tensor under inference_mode
        got = jacobian_norm(model, x_ctx)
    torch.testing.assert_close(got, expected)


def test_compiled_wrapper_is_unwrapped():
    model = nn.Sequential(nn.Linear(4, 3))

    class Wrapper(nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            raise AssertionError("the original module must be measured, not the wrapper")

    x = torch.randn(3, 4)
    torch.testing.assert_close(jacobian_norm(Wrapper(model), x), jacobian_norm(model, x))


def test_progress_is_called_per_chunk():
    calls = []
    jacobian_norm(nn.Linear(3, 2), torch.randn(7, 3), chunk_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 7), (6, 7), (7, 7)]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"output": "probs"}, ValueError, "`output`.*'probs'"),
        ({"method": "fast"}, ValueError, "`method`.*'fast'"),
        ({"chunk_size": 0}, ValueError, "`chunk_size`.*0"),
        ({"chunk_size": 2.5}, TypeError, "`chunk_size`"),
        ({"progress": 3}, TypeError, "`progress`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        jacobian_norm(nn.Linear(3, 2), torch.randn(4, 3), **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"`inputs`.*at least 2 dimensions.*\(3,\)"):
        jacobian_norm(nn.Linear(3, 2), torch.randn(3))
    with pytest.raises(TypeError, match="`inputs`.*list"):
        jacobian_norm(nn.Linear(3, 2), [[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="`model`"):
        jacobian_norm(lambda x: x, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"logits of shape \[N, C\].*\(4, 2, 3\)"):
        jacobian_norm(nn.Unflatten(1, (2, 3)), torch.randn(4, 6))


def test_train_mode_refused_for_batchnorm_and_dropout():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="train_mode=True.*Dropout"):
        jacobian_norm(model, torch.randn(2, 3), train_mode=True)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    torch.testing.assert_close(jacobian_norm(plain, torch.randn(2, 3), train_mode=True).shape, torch.Size([2]))
