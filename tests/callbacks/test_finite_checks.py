"""The finiteness checks shared by a trainer's monitors: one evaluation per equal probe set and model state."""

import torch
from torch import nn

from lightning_sensitivity.callbacks import _loop
from lightning_sensitivity.callbacks._loop import FiniteChecks
from lightning_sensitivity.functional.finite import nonfinite_examples
from lightning_sensitivity.probes import ProbeSet


def _probe(x: torch.Tensor) -> ProbeSet:
    return ProbeSet(inputs=x, targets=torch.zeros(len(x), dtype=torch.long), indices=torch.arange(len(x)))


def test_equal_sets_are_evaluated_once_per_model_state(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return nonfinite_examples(*args, **kwargs)

    monkeypatch.setattr(_loop, "nonfinite_examples", counted)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    checks, options = FiniteChecks(), (torch.float32, None)
    first = checks.find(model, _probe(x), None, options)
    again = checks.find(model, _probe(x.clone()), None, options)  # another monitor's equal copy
    assert len(calls) == 1 and again is first
    nan = x.clone()
    nan[2, 0] = float("nan")  # NaN != NaN: such a set is never taken for an equal one, it is evaluated again
    found = [checks.find(model, _probe(nan.clone()), None, options) for _ in range(2)]
    assert len(calls) == 3 and found[1].inputs.tolist() == [False, False, True, False, False, False]
    calls.clear()
    checks.find(model, _probe(x), None, options)
    assert not calls
    other = x.clone()
    other[0, 1] = 1e3
    checks.find(model, _probe(other), None, options)  # a different set
    checks.find(model, _probe(x), 2, options)  # other chunks
    checks.find(model, _probe(x), None, (torch.float64, None))  # other measurement options
    assert len(calls) == 3
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an optimizer step
    found = checks.find(model, _probe(x), None, options)
    assert len(calls) == 4
    model[1].running_mean.add_(1.0)  # a buffer updated in place
    checks.find(model, _probe(x), None, options)
    model[2].weight = nn.Parameter(torch.full((2, 4), float("inf")))  # a parameter reassigned
    diverged = checks.find(model, _probe(x), None, options)
    assert len(calls) == 6
    assert not found.outputs.any() and diverged.outputs[[0, 1, 3, 4, 5]].all()
    checks.find(nn.Linear(3, 2), _probe(x), None, options)  # another model
    assert len(calls) == 7
