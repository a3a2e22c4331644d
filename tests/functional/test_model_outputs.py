"""Model outputs other than a tensor: a dict or Hugging Face ``ModelOutput`` (its ``"logits"``), a tuple or
namedtuple (its first tensor), an object with ``.logits``, or the part ``output_key`` names -- through every
functional entry point, equal to the same model returning the logits tensor."""

import collections
from dataclasses import dataclass

import pytest
import torch
from oracles import gram_loop, jacobian_norm_loop
from torch import nn

from lightning_sensitivity.functional import (
    jacobian_norm,
    jacobian_norm_estimate,
    loss_gradient_gram,
    measurement_options,
    predict_logits,
    transition_counts,
)

Pair = collections.namedtuple("Pair", ["logits", "hidden"])


@dataclass
class Holder:
    logits: torch.Tensor


def _hf_output(logits, hidden):
    from transformers.modeling_outputs import SequenceClassifierOutput

    return SequenceClassifierOutput(logits=logits, hidden_states=(hidden,))


WRAP = {
    "dict": lambda logits, hidden: {"hidden": hidden, "logits": logits},
    "tuple": lambda logits, hidden: (logits, hidden),
    "namedtuple": lambda logits, hidden: Pair(logits, hidden),
    "attribute": lambda logits, hidden: Holder(logits),
    "ModelOutput": _hf_output,
}


class Wrapped(nn.Module):
    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)
        self.kind = kind

    def forward(self, x):
        hidden = self.body(x)
        logits = self.head(hidden)
        return logits if self.kind == "tensor" else WRAP[self.kind](logits, hidden)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)


@pytest.mark.parametrize("kind", sorted(WRAP))
def test_every_entry_point_reads_the_logits(kind):
    if kind == "ModelOutput":
        pytest.importorskip("transformers")
    model, plain = Wrapped(kind).double(), Wrapped("tensor").double()
    x, y = _data()
    torch.testing.assert_close(predict_logits(model, x), plain(x).detach())
    torch.testing.assert_close(jacobian_norm(model, x), jacobian_norm_loop(plain, x), rtol=1e-10, atol=1e-12)
    for method in ("looped", "batched", "per_example"):
        torch.testing.assert_close(jacobian_norm(model, x, method=method), jacobian_norm(plain, x, method=method))
    torch.testing.assert_close(
        jacobian_norm_estimate(model, x, num_projections=2, seed=0),
        jacobian_norm_estimate(plain, x, num_projections=2, seed=0),
    )
    for method in ("layerwise", "per_example"):
        got = loss_gradient_gram(model, x, y, method=method)
        torch.testing.assert_close(got, gram_loop(plain, x, y), rtol=1e-10, atol=1e-12)
    traj = x[:3].reshape(1, 3, 4)
    got, want = transition_counts(model, traj), transition_counts(plain, traj)
    assert torch.equal(got.prediction, want.prediction) and torch.equal(got.activation, want.activation)


def test_output_key_names_another_part():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return {"logits": self.a(x), "scores": self.b(x)}, (self.b(x), self.a(x))

    model = TwoHeads().double()
    x, _ = _data()
    with measurement_options(output_key="scores"):
        with pytest.raises(TypeError, match=r"logits \[N, C\] under `output_key='scores'`"):
            predict_logits(model, x)  # a tuple has no key "scores"
    model.forward = lambda x: {"logits": model.a(x), "scores": model.b(x)}
    with measurement_options(output_key="scores"):
        torch.testing.assert_close(predict_logits(model, x), model.b(x).detach())
    model.forward = lambda x: (model.b(x), model.a(x))
    with measurement_options(output_key=1):
        torch.testing.assert_close(predict_logits(model, x), model.a(x).detach())
    model.forward = lambda x: {"hidden": model.b(x), "logits": model.a(x)}
    with measurement_options(output_key=0):
        torch.testing.assert_close(predict_logits(model, x), model.b(x).detach())


def test_an_output_without_logits_is_refused_with_what_it_holds():
    model = nn.Linear(4, 3).double()
    model.forward = lambda x: {"scores": x}
    with pytest.raises(TypeError, match=r"got dict with keys \['scores'\]; name the part holding the logits"):
        predict_logits(model, _data()[0])


@pytest.mark.parametrize("value", [1.5, True, ["logits"]])
def test_output_key_is_validated(value):
    with pytest.raises(TypeError, match="`output_key` expected a str"):
        with measurement_options(output_key=value):
            pass
