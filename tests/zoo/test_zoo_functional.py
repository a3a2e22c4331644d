"""Every zoo model through the functional layer: the loss-gradient Gram and the input-output Jacobian norm against
the float64 one-example-at-a-time loops of ``tests/oracles.py``, to 1e-8, the model left exactly as it was.

Text models: the Gram takes token ids and the attention mask directly (nothing is differentiated with respect to
the ids); the Jacobian is taken with respect to the token embeddings (``EmbeddedView``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import assert_unchanged, state_snapshot
from oracles import gram_loop, jacobian_norm_loop
from zoo.models import ZOO, EmbeddedView, build, image_batch, text_batch

from lightning_sensitivity.functional import jacobian_norm, loss_gradient_gram, predict_logits

pytestmark = pytest.mark.slow
N = 4
# Llama's RMSNorm and rotary embedding compute in float32 whatever the model's dtype (``.to(torch.float32)`` in
# forward, so gradients pass through float32 casts as well): its input gradients are float32-accurate by design, and
# two exact methods agree to ~1e-8 relative, not 1e-12. Its Gram sums over parameters and stays within 1e-8.
JACOBIAN_RTOL = {"llama": 1e-6}


def _model(name):
    pytest.importorskip(ZOO[name].requires)
    return build(name).double()


def _scaled_error(got, want):
    scale = want.diagonal().clamp_min(1e-300).sqrt()
    return ((got - want) / (scale[:, None] * scale[None, :])).abs().max().item()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_gram_equals_the_float64_loop(name):
    model = _model(name)
    if ZOO[name].text:
        x, y, kw = text_batch(N)
    else:
        (x, y), kw = image_batch(N), None
        x = x.double()
    before = state_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # which engine ran is the engine's message, tested with the engines
        got = loss_gradient_gram(model, x, y, model_kwargs=kw)
    assert_unchanged(model, before)
    want = gram_loop(model, x, y, model_kwargs=kw)
    assert got.dtype == torch.float64
    assert _scaled_error(got, want) < 1e-8


@pytest.mark.parametrize("name", sorted(ZOO))
def test_jacobian_norm_equals_the_float64_loop(name):
    model = _model(name)
    if ZOO[name].text:
        ids, _, kw = text_batch(N)
        with torch.no_grad():
            x = model.embed(ids)
        model = EmbeddedView(model)
    else:
        x, kw = image_batch(N)[0].double(), None
    before = state_snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = jacobian_norm(model, x, model_kwargs=kw)
    assert_unchanged(model, before)
    want = jacobian_norm_loop(model, x, "softmax", kw)
    torch.testing.assert_close(got, want, rtol=JACOBIAN_RTOL.get(name, 1e-8), atol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n, z in ZOO.items() if z.text))
def test_the_embedding_split_is_the_model(name):
    model = _model(name)
    ids, _, kw = text_batch(N)
    with torch.no_grad():
        torch.testing.assert_close(EmbeddedView(model)(model.embed(ids), **kw), model(ids, **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n, z in ZOO.items() if z.text and n != "t5_encoder"))
def test_a_raw_hugging_face_classifier_needs_no_adapter(name):
    """The ``*ForSequenceClassification`` model itself (its ``ModelOutput`` read for ``.logits``) gives the values of
    its adapter, which the float64 loop checks."""
    adapter = _model(name)
    raw = adapter.model
    ids, y, kw = text_batch(N)
    with torch.no_grad():
        torch.testing.assert_close(predict_logits(raw, ids, model_kwargs=kw), adapter(ids, **kw), rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = loss_gradient_gram(raw, ids, y, model_kwargs=kw)
    assert _scaled_error(got, gram_loop(adapter, ids, y, model_kwargs=kw)) < 1e-8
