"""Sharpness: Hessian top eigenvalue, Hutchinson trace and Gauss-Newton trace against dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import MODEL_FACTORIES, assert_unchanged, state_snapshot
from oracles_curvature import dense_hessian_loop, gauss_newton_loop

from lightning_sensitivity.functional import (
    gauss_newton_trace,
    gauss_newton_trace_per_example,
    hessian_top_eigenvalue,
    hessian_trace,
    hessian_vector_product,
    hutchinson_samples,
)
from lightning_sensitivity.functional.sharpness import _rademacher


def _setup(name: str, seed: int = 0, n: int = 7, dtype=torch.float64):
    torch.manual_seed(seed)
    factory, shape = MODEL_FACTORIES[name]
    model = factory().to(dtype)
    x = torch.randn(n, *shape, dtype=dtype)
    y = torch.randint(0, 4, (n,))
    return model, x, y


@pytest.fixture(scope="module", params=sorted(MODEL_FACTORIES))
def case(request):
    model, x, y = _setup(request.param)
    return model, x, y, dense_hessian_loop(model, x, y, F.cross_entropy)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_hvp_matches_dense_hessian(case, chunk_size):
    model, x, y, hess = case
    v = torch.randn(hess.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = state_snapshot(model)
    hv = hessian_vector_product(model, x, y, v, chunk_size=chunk_size)
    assert_unchanged(model, before)
    torch.testing.assert_close(hv, hess @ v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_top_eigenvalue_matches_dense_eigvalsh(case, chunk_size):
    model, x, y, hess = case
    expected = float(torch.linalg.eigvalsh(hess)[-1])
    before = state_snapshot(model)
    top = hessian_top_eigenvalue(model, x, y, num_iterations=80, tol=1e-10, chunk_size=chunk_size)
    assert_unchanged(model, before)
    assert top.value == pytest.approx(expected, rel=1e-7, abs=1e-10)
    assert top.value <= expected + 1e-9  # a Ritz value never exceeds the largest eigenvalue
    assert top.residual <= 1e-7 * max(abs(expected), 1e-6) + 1e-10
    assert top.num_iterations <= 80 and top.ritz_values.shape == (top.num_iterations,)


def test_top_eigenvalue_residual_bounds_the_error_when_stopped_early():
    model, x, y = _setup("relu_mlp")
    hess = dense_hessian_loop(model, x, y, F.cross_entropy)
    eigs = torch.linalg.eigvalsh(hess)
    top = hessian_top_eigenvalue(model, x, y, num_iterations=4, tol=0.0)
    assert top.num_iterations == 4
    # some eigenvalue lies within the residual of the Ritz value, and it is a lower bound of the largest
    assert float((eigs - top.value).abs().min()) <= top.residual + 1e-10
    assert top.value <= float(eigs[-1]) + 1e-10


def test_hutchinson_samples_are_the_quadratic_forms_and_the_estimate_is_unbiased(case):
    model, x, y, hess = case
    p = hess.shape[0]
    samples = hutchinson_samples(model, x, y, [0, 3, 5], seed=2)
    for value, k in zip(samples.tolist(), [0, 3, 5], strict=True):
        v = _rademacher(p, 2, k)
        assert set(v.unique().tolist()) <= {-1.0, 1.0}
        assert value == pytest.approx(float(v @ hess @ v), rel=1e-9, abs=1e-11)
    # vector k is the same whichever others are drawn: shards of one estimate agree with the whole
    whole = hutchinson_samples(model, x, y, range(6), seed=2)
    torch.testing.assert_close(whole[[0, 3, 5]], samples)
    est = hessian_trace(model, x, y, num_vectors=400, seed=0)
    assert est.samples.shape == (400,)
    assert est.standard_error == pytest.approx(float(est.samples.std() / 20.0))
    assert abs(est.value - float(hess.trace())) < 4 * est.standard_error


def _ce(logits, targets):  # not `F.cross_entropy` itself: takes the general (Jacobian) path
    return F.cross_entropy(logits, targets)


@pytest.mark.parametrize("loss_fn", [F.cross_entropy, _ce], ids=["fisher_path", "jacobian_path"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_gauss_newton_trace_matches_dense(case, chunk_size, loss_fn):
    model, x, y, _ = case
    ggn = gauss_newton_loop(model, x, y, F.cross_entropy)
    before = state_snapshot(model)
    per = gauss_newton_trace_per_example(model, x, y, chunk_size=chunk_size, loss_fn=loss_fn)
    assert_unchanged(model, before)
    assert per.shape == (7,) and per.dtype == torch.float64
    got = gauss_newton_trace(model, x, y, chunk_size=chunk_size, loss_fn=loss_fn)
    assert got == pytest.approx(float(ggn.trace()), rel=1e-9)
    assert float(per.mean()) == pytest.approx(float(ggn.trace()), rel=1e-9)


def test_gauss_newton_of_mse_on_a_linear_model_is_the_closed_form():
    # z = W x + b, loss = mean over outputs of (z - t)^2: d2l/dz2 = 2/C I, J J^T = (|x|^2 + 1) I.
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    x, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    expected = float(((x**2).sum(1) + 1).mean() * 2)  # tr = (2/C) * C * (|x|^2 + 1), averaged
    assert gauss_newton_trace(model, x, t, loss_fn=F.mse_loss) == pytest.approx(expected, rel=1e-12)
    # and the Hessian is (2 / C) * mean [x, 1][x, 1]^T (x) I: its top eigenvalue in closed form
    xa = torch.cat([x, torch.ones(6, 1, dtype=torch.float64)], dim=1)
    top = float(torch.linalg.eigvalsh(xa.T @ xa / 6)[-1]) * 2 / 3
    got = hessian_top_eigenvalue(model, x, t, loss_fn=F.mse_loss, num_iterations=30, tol=1e-12)
    assert got.value == pytest.approx(top, rel=1e-9)


def test_float32_close_to_float64():
    model, x, y = _setup("tanh_mlp", dtype=torch.float32)
    hess = dense_hessian_loop(model, x, y, F.cross_entropy)
    top = hessian_top_eigenvalue(model, x, y, num_iterations=60, tol=1e-6)
    assert top.value == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-4)
    assert gauss_newton_trace(model, x, y) == pytest.approx(
        float(gauss_newton_loop(model, x, y, F.cross_entropy).trace()), rel=1e-4
    )


def test_global_rng_and_grad_modes_untouched():
    model, x, y = _setup("bn_dropout_cnn")
    state = torch.get_rng_state()
    model.train()
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
    with torch.no_grad():
        top = hessian_top_eigenvalue(model, xi, yi, num_iterations=3)
        est = hessian_trace(model, xi, yi, num_vectors=2)
        gn = gauss_newton_trace(model, xi, yi)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(m.training for m in model.modules())
    assert math.isfinite(top.value) and math.isfinite(est.value) and gn > 0


def test_frozen_parameters_are_left_out():
    model, x, y = _setup("relu_mlp")
    for p in model[1].parameters():
        p.requires_grad_(False)
    hess = dense_hessian_loop(model, x, y, F.cross_entropy)
    assert hess.shape[0] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    top = hessian_top_eigenvalue(model, x, y, num_iterations=80, tol=1e-10)
    assert top.value == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-7)


def test_against_curvlinops_on_a_small_cnn():
    curvlinops = pytest.importorskip("curvlinops")
    model, x, y = _setup("bn_dropout_cnn", n=10)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    loss = torch.nn.CrossEntropyLoss()
    p = sum(q.numel() for q in params)
    eye = torch.eye(p, dtype=torch.float64)
    hess = curvlinops.HessianLinearOperator(model, loss, params, data) @ eye
    ggn = curvlinops.GGNLinearOperator(model, loss, params, data) @ eye
    top = hessian_top_eigenvalue(model, x, y, num_iterations=100, tol=1e-10)
    assert top.value == pytest.approx(float(torch.linalg.eigvalsh((hess + hess.T) / 2)[-1]), rel=1e-7)
    assert gauss_newton_trace(model, x, y) == pytest.approx(float(ggn.trace()), rel=1e-9)
    v = _rademacher(p, 0, 0)
    assert hutchinson_samples(model, x, y, [0])[0] == pytest.approx(float(v @ hess @ v), rel=1e-9)


@pytest.mark.parametrize(
    ("fn", "kwargs", "error", "match"),
    [
        (hessian_top_eigenvalue, {"num_iterations": 0}, ValueError, "`num_iterations`"),
        (hessian_top_eigenvalue, {"num_iterations": 2.0}, TypeError, "`num_iterations`"),
        (hessian_top_eigenvalue, {"tol": -1.0}, ValueError, "`tol`"),
        (hessian_top_eigenvalue, {"tol": "x"}, TypeError, "`tol`"),
        (hessian_top_eigenvalue, {"seed": 1.5}, TypeError, "`seed`"),
        (hessian_top_eigenvalue, {"progress": 3}, TypeError, "`progress`"),
        (hessian_top_eigenvalue, {"chunk_size": 0}, ValueError, "`chunk_size`"),
        (hessian_top_eigenvalue, {"loss_fn": 3}, TypeError, "`loss_fn`"),
        (hessian_trace, {"num_vectors": 0}, ValueError, "`num_vectors`"),
        (hessian_trace, {"num_vectors": None}, TypeError, "`num_vectors`"),
        (hessian_trace, {"seed": "0"}, TypeError, "`seed`"),
        (hutchinson_samples, {"indices": "01"}, TypeError, "`indices`"),
        (hutchinson_samples, {"indices": [1.0]}, TypeError, "`indices`"),
        (hutchinson_samples, {"indices": [-1]}, ValueError, "`indices`"),
        (gauss_newton_trace, {"chunk_size": -2}, ValueError, "`chunk_size`"),
        (gauss_newton_trace, {"progress": "x"}, TypeError, "`progress`"),
        (hessian_vector_product, {"vector": [1.0]}, TypeError, "`vector`"),
        (hessian_vector_product, {"vector": torch.zeros(3)}, ValueError, "`vector` expected a floating-point tensor"),
    ],
)
def test_bad_arguments(fn, kwargs, error, match):
    model, x, y = _setup("tanh_mlp")
    if fn is hutchinson_samples:
        kwargs = {"indices": [0], **kwargs}
        args = (model, x, y, kwargs.pop("indices"))
    elif fn is hessian_vector_product:
        args = (model, x, y, kwargs.pop("vector"))
    else:
        args = (model, x, y)
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


def test_bad_inputs_and_targets():
    model, x, y = _setup("tanh_mlp")
    with pytest.raises(ValueError, match="`targets`"):
        hessian_trace(model, x, y[:3])
    with pytest.raises(TypeError, match="`inputs`"):
        gauss_newton_trace(model, x.tolist(), y)


def test_gauss_newton_chunks_by_the_jacobian_budget(monkeypatch):
    import lightning_sensitivity.functional.sharpness as sharpness

    model, x, y = _setup("tanh_mlp")
    whole = gauss_newton_trace_per_example(model, x, y, loss_fn=_ce)
    seen = []
    monkeypatch.setattr(sharpness, "JACOBIAN_BUDGET", 1)  # one example per chunk
    per = gauss_newton_trace_per_example(model, x, y, loss_fn=_ce, progress=lambda done, total: seen.append(total))
    torch.testing.assert_close(per, whole, rtol=1e-12, atol=1e-14)
    assert seen[-1] == 7
