"""bf16/fp16 models are measured in float32 on upcast copies of their weights, never touching the model.

The reference is the float64 one-example-at-a-time oracle on a float64 copy of the *same* low-precision weights:
what the upcast measures is the model the user holds, to float32 accuracy.
"""

import copy
import warnings

import pytest
import torch
from helpers import assert_unchanged, state_snapshot
from oracles import gram_loop, jacobian_norm_loop
from torch import nn

from lightning_sensitivity.functional import (
    _model,
    jacobian_norm,
    loss_gradient_gram,
    measurement_options,
    predict_logits,
    stiffness,
)


class SmallResNet(nn.Module):
    """A resnet-ish CNN: stem, one GroupNorm residual block, a BatchNorm (its float buffers), pooled head."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.bn(h + self.block(h)))
        return self.head(h.mean(dim=(2, 3)))


def _model_in(dtype, seed=0):
    torch.manual_seed(seed)
    model = SmallResNet()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.to(dtype)


def _data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def _relative(got, want):
    scale = want.diagonal().sqrt()
    return ((got.double() - want) / (scale[:, None] * scale[None, :])).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["layerwise", "per_example"])
def test_gram_of_a_low_precision_model_is_float32_accurate(dtype, method):
    model = _model_in(dtype)
    x, y = _data()
    before = state_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = loss_gradient_gram(model, x, y, method=method)
    assert_unchanged(model, before)
    assert model.head.weight.dtype == dtype and model.bn.running_var.dtype == dtype
    assert got.dtype == torch.float32
    want = gram_loop(copy.deepcopy(model).double(), x.double(), y)
    assert _relative(got, want) < 1e-5
    # and it is the Gram of the float32 copy of those weights, computed the same way
    same = loss_gradient_gram(copy.deepcopy(model).float(), x, y, method=method)
    torch.testing.assert_close(got, same, rtol=1e-5, atol=1e-6)


def test_measured_in_the_model_dtype_only_when_asked():
    model = _model_in(torch.bfloat16)
    x, y = _data()
    want = gram_loop(copy.deepcopy(model).double(), x.double(), y)
    with measurement_options(measure_dtype=None):
        low = loss_gradient_gram(model, x, y)
    assert low.dtype == torch.bfloat16
    assert _relative(low, want) > 1e-4  # the precision the default avoids
    with measurement_options(measure_dtype=torch.float64):
        high = loss_gradient_gram(model, x, y)
    assert high.dtype == torch.float64
    torch.testing.assert_close(high, want, rtol=1e-10, atol=1e-12)


def test_jacobian_and_predictions_of_a_bf16_model():
    model = _model_in(torch.bfloat16)
    x, _ = _data()
    before = state_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = jacobian_norm(model, x)
        logits = predict_logits(model, x)
        stiffness(model, x, _data()[1])
    assert_unchanged(model, before)
    assert got.dtype == logits.dtype == torch.float32
    reference = copy.deepcopy(model).double().eval()
    torch.testing.assert_close(got.double(), jacobian_norm_loop(reference, x.double()), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits.double(), reference(x.double()).detach(), rtol=1e-5, atol=1e-6)


def test_token_ids_stay_integer_in_an_upcast_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(12, 3)).to(torch.bfloat16)
    ids = torch.randint(0, 20, (5, 3))
    y = torch.randint(0, 3, (5,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = loss_gradient_gram(model, ids, y)
    want = gram_loop(copy.deepcopy(model).double(), ids, y)
    assert _relative(got, want) < 1e-5


def test_the_upcast_is_said_once_per_dtype():
    _model._SAID.clear()
    model = _model_in(torch.bfloat16)
    x, y = _data()
    with pytest.warns(UserWarning, match=r"torch.bfloat16 parameters or buffers: measured in torch.float32"):
        loss_gradient_gram(model, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_gradient_gram(model, x, y)
        jacobian_norm(model, x)
        loss_gradient_gram(_model_in(torch.float32), x, y)  # nothing to upcast: nothing said


@pytest.mark.parametrize(
    ("value", "error"), [("float32", TypeError), (32, TypeError), (torch.int64, ValueError), (torch.bool, ValueError)]
)
def test_measure_dtype_is_validated(value, error):
    with pytest.raises(error, match="`measure_dtype` expected a floating-point torch.dtype"):
        with measurement_options(measure_dtype=value):
            pass


def test_options_end_with_the_block():
    with measurement_options(measure_dtype=torch.float64, output_key="scores"):
        assert _model.current_options().measure_dtype == torch.float64
    assert _model.current_options() == _model.MeasurementOptions()
