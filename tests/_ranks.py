"""Ranks as threads: a monitor's measurement shared between ``world_size`` simulated ranks, in one process.

The threads exchange tensors through a barrier (:class:`ThreadCollective`), so the agreements and gathers of the
monitors' sharing (``callbacks/_distributed.py``) run as they would under ``torch.distributed``; a barrier timeout
is how a hang would show. Real multi-process runs use :mod:`_ddp`. A new quantity's DDP test is
:func:`compute_on_ranks` against the monitor's single-process ``compute``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sensitivity.callbacks._distributed import Lockstep
from lightning_sensitivity.probes import ProbeSet

TIMEOUT = 20.0  # s; a healthy exchange takes milliseconds


class Exchange:
    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=TIMEOUT)
        self.slots: list[Any] = [None] * world_size
        self.calls = [0] * world_size


class ThreadCollective:
    def __init__(self, exchange: Exchange, world_size: int, rank: int) -> None:
        self.exchange, self.world_size, self.rank = exchange, world_size, rank

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        ex = self.exchange
        ex.calls[self.rank] += 1
        ex.slots[self.rank] = tensor.clone()
        ex.barrier.wait()  # everyone has put theirs
        out = [t.clone() for t in ex.slots]
        ex.barrier.wait()  # everyone has read before the next exchange overwrites
        return out


def run_ranks(world_size: int, body: Callable[[Lockstep, int], Any]) -> tuple[list[Any], list[int]]:
    """``body(lockstep, rank)`` on ``world_size`` threads; their results (or exceptions) and collective counts."""
    exchange = Exchange(world_size)
    results: list[Any] = [None] * world_size

    def target(rank: int) -> None:
        try:
            results[rank] = body(Lockstep(ThreadCollective(exchange, world_size, rank)), rank)
        except BaseException as err:
            results[rank] = err

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    assert not any(t.is_alive() for t in threads), "a rank hangs"
    assert not any(isinstance(r, threading.BrokenBarrierError) for r in results), results
    return results, exchange.calls


def compute_on_ranks(
    monitor: Any, model: nn.Module, probes: Mapping[str, ProbeSet], progress: Any, world_size: int, epoch: int = 1
) -> tuple[list[Any], list[int], list[int]]:
    """``monitor.compute`` on ``world_size`` thread ranks (each its own copy of the monitor and model, as DDP has):
    each rank's measurement (or exception), the collective counts per rank, and the size of every shard a rank
    evaluated through ``monitor.sharded`` (so a test can check the work was split, not repeated)."""
    shards: list[int] = []

    def body(lockstep: Lockstep, rank: int) -> Any:
        ranked = copy.deepcopy(monitor)
        ranked._lockstep = lockstep  # what the base class's measurement sets for a distributed run
        original = ranked.sharded

        def recorded(fn: Callable[[Any], Any], n: int) -> Any:
            def sized(index: Any) -> Any:
                shards.append(len(range(n)[index]) if isinstance(index, slice) else int(index.shape[0]))
                return fn(index)

            return original(sized, n)

        ranked.sharded = recorded
        return ranked.compute(copy.deepcopy(model), probes, progress, epoch)

    results, calls = run_ranks(world_size, body)
    return results, calls, shards


def small_model() -> nn.Module:
    """A float64 6 -> 8 -> 3 ReLU MLP, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def probes(n: int, seed: int) -> ProbeSet:
    """``n`` seeded random 6-feature examples of 3 classes."""
    gen = torch.Generator().manual_seed(seed)
    return ProbeSet(torch.randn(n, 6, generator=gen), torch.arange(n) % 3, torch.arange(n))
