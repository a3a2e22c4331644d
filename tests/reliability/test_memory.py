"""Memory bound: a probe set ten times larger than ``chunk_size`` stays within a fixed memory bound.

Peak memory is the process's peak resident set (``VmHWM``), reset before each measurement through
``/proc/self/clear_refs`` after returning freed heap pages to the OS (``malloc_trim``), so it counts what the
measurement itself allocates; it includes torch's CPU tensors and everything else. Linux only (skipped elsewhere).

The bound for ``N = 10 * C`` examples with ``chunk_size=C`` is four times the peak of ``C`` examples unchunked (a
blockwise Gram holds a row and a column chunk at once; the rest is headroom for allocator noise), plus what is
inherently ``O(N)`` or ``O(N^2)`` (the ``N x N`` stiffness matrices, budgeted as ``MATRICES`` float64 matrices; the
monitor's ellipse trajectories, materialised whole before the chunked evaluation, budgeted as ``TRAJECTORY_COPIES``
copies), plus a fixed slack. The same ``N`` in one pass must exceed the bound, so the test measures something
chunking controls. The model is a small CNN whose per-example activations dominate a chunk.
"""

from __future__ import annotations

import ctypes
import gc
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import loss_gradient_gram
from lightning_sensitivity.probes import probe_set_from_tensors
from reliability._helpers import report_figure

CHUNK = 32
MIB = 2**20
SLACK = 8 * MIB
MATRICES = 10  # N x N float64 matrices a stiffness measurement may hold (gram, sign, cosine, masks, distances)
TRAJECTORY_COPIES = 4
POINTS = 10  # per trajectory; TransitionMonitor gets N // 10 trajectories, so N points in all

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not Path("/proc/self/clear_refs").exists(),
        reason="needs Linux /proc/self/clear_refs to reset the peak resident set",
    ),
]


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def peak_bytes(fn: Any) -> int:
    """Peak resident-set growth while ``fn()`` runs."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is just less tight
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:
        pytest.skip(f"cannot reset the peak resident set: {err}")
    base = _status("VmRSS")
    fn()
    return _status("VmHWM") - base


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)
    )


def inherent(quantity: str, n: int) -> int:
    """Bytes a measurement of ``n`` probe examples needs whatever the chunk size."""
    if quantity == "stiffness":
        return MATRICES * n * n * 8
    if quantity == "transitions":
        return TRAJECTORY_COPIES * n * 3 * 32 * 32 * 4
    return 0


def make_monitor(quantity: str, n: int, chunk: int | None) -> Any:
    if quantity == "stiffness":
        return StiffnessMonitor(num_samples=n, chunk_size=chunk, groups=("val_val",))
    if quantity == "transitions":
        return TransitionMonitor(num_samples=n, chunk_size=chunk, num_trajectories=n // POINTS, num_points=POINTS)
    return JacobianNormMonitor(num_samples=n, chunk_size=chunk)


@pytest.mark.parametrize("quantity", ["jacobian_norm", "stiffness", "transitions"])
def test_ten_chunks_stay_within_a_fixed_bound(quantity):
    net = cnn()
    x = torch.randn(10 * CHUNK, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10 * CHUNK) % 10

    def measure(n: int, chunk: int | None) -> int:
        monitor = make_monitor(quantity, n, chunk)
        probes = {"val": probe_set_from_tensors(x[:n], y[:n], n, seed=0)}
        return peak_bytes(lambda: monitor.compute(net, probes, progress_factory("", False), 0))

    measure(3 * POINTS, None)  # warm-up: one-off allocations (kernels, thread pools) are not the measurement's
    small = measure(CHUNK, None)
    chunked = measure(10 * CHUNK, CHUNK)
    n = 10 * CHUNK
    # All N in one pass: the Gram's ``chunk_size=None``; the Jacobian and the transitions get one chunk of N asked for
    # explicitly, as their ``chunk_size=None`` sizes the chunks to the model on a CPU (the Jacobian's "auto", the
    # transitions' ``POINT_BUDGET``).
    unchunked = measure(n, None if quantity == "stiffness" else n)
    bound = 4 * small + inherent(quantity, n) + SLACK
    report_figure(
        f"memory {quantity}: peak MiB for N={CHUNK} unchunked / N={n} chunk {CHUNK} / N={n} unchunked / bound",
        [round(v / MIB, 1) for v in (small, chunked, unchunked, bound)],
    )
    assert chunked <= bound, (small / MIB, chunked / MIB, bound / MIB)
    assert unchunked > bound, (unchunked / MIB, bound / MIB)


def wide_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16 * 16, 10))


#: Bytes ``wide_conv`` keeps per example in a chunked Gram (functional/gram/blocks.py): the convolution's explicit
#: weight gradient 64 x 144 (its factors, 256 positions x (144 + 64), would be larger) and bias 64; the head's factor
#: pair, inputs with a constant 1 for the bias (16384 + 1) and output gradients (10). float32.
REPRESENTATION = (64 * 144 + 64 + 64 * 16 * 16 + 1 + 10) * 4


def test_chunked_gram_memory_follows_the_kept_representation():
    """Peak of a chunked Gram = N x the kept representation + one chunk's pass + the N x N result: one pass over the
    examples keeps each example's representation instead of recomputing column chunks."""
    net = wide_conv()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 16, 16, 16, generator=g), torch.arange(512) % 10

    def measure(n: int, chunk: int | None) -> int:
        return peak_bytes(lambda: loss_gradient_gram(net, x[:n], y[:n], chunk_size=chunk))

    measure(8, None)  # warm-up
    chunk = measure(CHUNK, None)
    peaks = {n: measure(n, CHUNK) for n in (128, 256, 512)}
    formula = {n: n * REPRESENTATION + chunk + n * n * 4 for n in peaks}
    report_figure(
        "memory chunked Gram: peak MiB at N = 128 / 256 / 512 (chunk 32), and the formula",
        [round(peaks[n] / MIB, 1) for n in peaks] + [round(formula[n] / MIB, 1) for n in peaks],
    )
    for n, peak in peaks.items():
        assert 0.8 * formula[n] - SLACK <= peak <= 1.25 * formula[n] + SLACK, (n, peak / MIB, formula[n] / MIB)
    slope = (peaks[512] - peaks[128]) / (384 * REPRESENTATION)  # bytes per added example / the representation
    assert 0.8 <= slope <= 1.35, slope
