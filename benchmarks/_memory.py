"""Child process of the memory row: peak resident memory of one call, for several probe-set sizes.

Why resident memory, and why a child process: on the CPU torch allocates tensors with the C library's ``malloc``,
which torch's own memory statistics do not track (they cover CUDA). With ``MALLOC_MMAP_THRESHOLD_`` fixed (set by
the parent), every block above 64 KiB is its own ``mmap`` and goes back to the kernel when freed, so the resident
set follows live tensor memory closely. Before each call the kernel's high-water mark is reset
(``/proc/self/clear_refs``, Linux >= 4.0); the peak of the call is ``VmHWM`` afterwards minus ``VmRSS`` before.

Usage: ``python _memory.py '{"chunk": 64, "sizes": [64, 640]}'`` prints one JSON object. On a CUDA device none of
this is needed: ``run.py --device cuda`` calls :func:`cuda_peaks` in its own process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cases import data, mnist_cnn  # noqa: E402

from lightning_sensitivity.functional import jacobian_norm, loss_gradient_gram  # noqa: E402

CPU = torch.device("cpu")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak(fn) -> int:
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before


def peaks(chunk: int, sizes: list[int], peak: Callable[[Callable[[], object]], int],
          device: torch.device = CPU) -> dict[str, dict[str, int]]:  # fmt: skip
    """``peak(call)`` of ``jacobian_norm`` and ``loss_gradient_gram`` with ``chunk_size=chunk`` on the benchmark's
    CNN for each probe-set size, and unchunked on the largest."""
    torch.manual_seed(0)
    model = mnist_cnn().eval().to(device)

    def probes(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(t.to(device) for t in data(n))

    calls = {
        "jacobian_norm": lambda x, y: jacobian_norm(model, x, chunk_size=chunk),
        "loss_gradient_gram": lambda x, y: loss_gradient_gram(model, x, y, chunk_size=chunk),
    }
    result: dict[str, dict[str, int]] = {}
    for name, call in calls.items():
        call(*probes(2))  # lazy initialisation (kernels, thread pools) is not part of a measurement
        result[name] = {}
        for n in sizes:
            x, y = probes(int(n))
            result[name][str(n)] = peak(lambda call=call, x=x, y=y: call(x, y))
        # The same largest probe set in one piece: shows that the measure does see memory growing with N.
        unchunked = {"jacobian_norm": jacobian_norm, "loss_gradient_gram": loss_gradient_gram}[name]
        x, y = probes(int(max(sizes)))
        args = (model, x) if name == "jacobian_norm" else (model, x, y)
        result[name]["unchunked"] = peak(lambda unchunked=unchunked, args=args: unchunked(*args))
    return result


def representation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> int:
    """Bytes the layerwise Gram keeps per example in a call on ``n`` examples (``functional/gram/blocks.py``)."""
    import torch.nn.functional as F

    from lightning_sensitivity.functional._purity import detached_state
    from lightning_sensitivity.functional.gram import layerwise_factors as capture
    from lightning_sensitivity.functional.gram.blocks import nbytes, split_trainable

    params, buffers = detached_state(model)
    trainable, frozen = split_trainable(params, model)
    feats = capture.layer_features(model, trainable, frozen, buffers, x, y, F.cross_entropy, n, sharded=False)
    return nbytes(feats) // x.shape[0]


def cuda_peaks(chunk: int, sizes: list[int], device: torch.device) -> dict[str, dict[str, int]]:
    """:func:`peaks` on a CUDA device, in this process: ``torch.cuda.max_memory_allocated`` over the call minus
    the memory allocated before it (the caching allocator's statistics see every tensor there)."""

    def peak(fn: Callable[[], object]) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    return peaks(chunk, sizes, peak, device)


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(spec.get("threads", 1)))
    print(json.dumps(peaks(int(spec["chunk"]), [int(n) for n in spec["sizes"]], _peak)))


if __name__ == "__main__":
    main()
