"""The monitors on a GPU: the same values as on the CPU, memory bounded by ``chunk_size``.

Marked ``cuda`` and skipped without a CUDA device. ``LS_TEST_DEVICE=cpu`` runs the same code with the CPU standing
in for the GPU (the comparisons then hold trivially and the memory test skips): a check of the tests themselves on
machines without one.

- Values: each monitor's ``compute`` on a CNN, an MLP and the reference text classifier, on the device and on the
  CPU from the same weights and probe sets, agree to 1e-5 (TF32 off: with it, CUDA matmuls round their inputs to
  10 bits). Transition counts are discrete -- a unit within float32 rounding of its threshold may flip on one
  device only -- so that monitor is compared in float64.
- Memory: the peak CUDA memory (``torch.cuda.max_memory_allocated``) of ``jacobian_norm`` and
  ``loss_gradient_gram`` with ``chunk_size=16`` grows by far less than N from N = 64 to N = 640, beyond the
  ``[N, N]`` result and the inputs themselves.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import REPO, load_module
from torch import nn

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import jacobian_norm, loss_gradient_gram
from lightning_sensitivity.models import MLP, SmallCNN, TextClassifier
from lightning_sensitivity.probes import ProbeSet

# TF32 off, restored after: the benchmarks' helper
no_tf32 = load_module(REPO / "benchmarks" / "_timing.py", "_timing").full_float32

DEVICE = os.environ.get("LS_TEST_DEVICE", "cuda")
TOLERANCE = 1e-5
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def probes(kind: str, n: int = 24) -> dict[str, ProbeSet]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for split in ("train", "val"):
        if kind == "text":
            x = torch.randint(1, 50, (n, 12), generator=g)
            x[:3, 8:] = 0  # padding
            kwargs = {"attention_mask": (x != 0).long()}
        else:
            x, kwargs = torch.rand(n, 1, 28, 28, generator=g), {}
        out[split] = ProbeSet(x, torch.arange(n) % 10, torch.arange(n), model_kwargs=kwargs)
    return out


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "text":
        return TextClassifier(vocab_size=50, num_classes=10, max_length=16).eval()
    return (SmallCNN(1, 10, channels=(8, 16), hidden=32) if kind == "cnn" else MLP(784, 10, hidden=(64, 32))).eval()


def measure(monitor, net: nn.Module, sets: dict[str, ProbeSet], device: str) -> dict[str, float]:
    net = net.to(device)
    on = {k: p.to(device) for k, p in sets.items()}
    if monitor.embed_fn is not None and monitor.differentiates_inputs:
        with torch.no_grad():  # as the monitors' measure loop does before `compute`
            on = {k: p.with_inputs(monitor.embed_fn(net, p.inputs)) for k, p in on.items()}
    result = monitor.compute(monitor.measured_model(net), on, progress_factory("", False), 0)
    return {k: float(v) for k, v in result.scalars.items()}


TEXT = {
    "embed_fn": lambda m, ids: m.embed(ids),
    "forward_fn": lambda m, embedded, attention_mask: m.forward_embedded(embedded, attention_mask),
}
MONITORS = {
    "jacobian": lambda **kw: JacobianNormMonitor(num_samples=24, **kw),
    "stiffness": lambda **kw: StiffnessMonitor(num_samples=24, num_distance_bins=6, chunk_size=10, **kw),
    "transitions": lambda **kw: TransitionMonitor(num_samples=24, num_trajectories=4, num_points=96, **kw),
}


@pytest.mark.parametrize("kind", ["cnn", "mlp", "text"])
@pytest.mark.parametrize("name", sorted(MONITORS))
def test_monitor_values_on_the_device_equal_the_cpu_values(kind, name):
    net, sets = model(kind), probes(kind)
    if name == "transitions":
        net = net.double()
        if kind != "text":
            sets = {k: p.with_inputs(p.inputs.double()) for k, p in sets.items()}
    options = TEXT if kind == "text" else {}
    with no_tf32():
        expected = measure(MONITORS[name](**options), net, sets, "cpu")
        got = measure(MONITORS[name](**options), net, sets, DEVICE)
    assert got.keys() == expected.keys() and len(expected) >= 3
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), key


def _peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    return peak - out.numel() * out.element_size()  # the result itself is N (or N x N) whatever the chunk


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA memory statistics need a CUDA device")
def test_cuda_memory_is_bounded_by_the_chunk():
    net = SmallCNN(1, 10, channels=(16, 32), hidden=64).eval().to(DEVICE)
    y = torch.arange(640, device=DEVICE) % 10
    x = torch.rand(640, 1, 28, 28, device=DEVICE)
    calls = {
        "jacobian_norm": lambda n, chunk: jacobian_norm(net, x[:n], chunk_size=chunk),
        "loss_gradient_gram": lambda n, chunk: loss_gradient_gram(net, x[:n], y[:n], chunk_size=chunk),
    }
    for name, fn in calls.items():
        fn(64, 16)  # warm-up: cuBLAS/cuDNN workspaces are allocated once
        peaks = {n: _peak(lambda n=n, fn=fn: fn(n, 16)) for n in (64, 640)}
        unchunked = _peak(lambda fn=fn: fn(640, None))
        assert peaks[640] <= 1.5 * peaks[64] + 2**20, (name, peaks)
        assert unchunked > 3 * peaks[640], (name, unchunked, peaks)  # the measure can see growth
