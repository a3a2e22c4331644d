"""The benchmark's device and clock, in one place: which device rows run on, how a call is timed there.

On the CPU a call is timed in CPU seconds of this process (``time.process_time``): on a shared machine wall time
also counts the time other processes hold the cores, CPU time does not. On a CUDA device the host only queues
kernels, so CPU time of the process says nothing about the GPU's work: a call is timed in wall seconds
(``time.perf_counter``) between two ``torch.cuda.synchronize()`` calls, so the span covers the kernels it queued.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from collections.abc import Callable, Iterator

import torch


def parse_device(parser: argparse.ArgumentParser, value: str) -> torch.device:
    """``--device``: ``"cpu"`` or an available CUDA device (``"cuda"``, ``"cuda:1"``); ``parser.error`` otherwise."""
    expected = "`--device` expected 'cpu' or an available CUDA device"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        parser.error(f"{expected}, got {value!r}")
    if device.type == "cpu" and device.index in (None, 0):
        return torch.device("cpu")
    if device.type != "cuda":
        parser.error(f"{expected}, got {value!r}")
    if not torch.cuda.is_available():
        parser.error(f"{expected}, got {value!r} (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        parser.error(f"{expected}, got {value!r} (torch.cuda.device_count() is {count})")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU, where calls return when they are done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> Callable[[], float]:
    """The benchmark's clock on ``device``: CPU seconds on the CPU, wall seconds after a synchronize on CUDA."""
    if device.type == "cuda":

        def wall() -> float:
            sync(device)
            return time.perf_counter()

        return wall
    return time.process_time


def timing_note(device: torch.device) -> str:
    """What the times of a run on ``device`` are (the JSON ``timing`` field and the printed footer)."""
    if device.type == "cuda":
        return f"wall seconds (time.perf_counter around torch.cuda.synchronize()) on {device}, medians over rounds"
    return "CPU seconds (time.process_time), medians over rounds"


def timed(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    once: frozenset[str] = frozenset(),
) -> dict[str, list[float]]:
    """Times per candidate on ``device``, round-robin; candidates in ``once`` are timed in the first round only."""
    now = clock(device)
    for name, fn in fns.items():
        if name not in once:
            fn()  # warm-up: lazy initialisation (kernels, thread pools, cuDNN plans) is not part of a measurement
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            if name in once and r > 0:
                continue
            gc.collect()
            start = now()
            fn()
            times[name].append(now() - start)
    return times


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 in CUDA matmuls and convolutions (it rounds their inputs to 10 bits): for comparing two results."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
