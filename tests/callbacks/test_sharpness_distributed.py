"""``SharpnessMonitor`` under DDP, ranks simulated by threads (``test_distributed.py``): the Hutchinson vectors and the
Gauss-Newton examples are shared between the ranks, the Lanczos iteration runs whole on each, and every rank gets
the single-process values."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from _ranks import probes, run_ranks, small_model

from lightning_sensitivity import SharpnessMonitor
from lightning_sensitivity.callbacks._distributed import Lockstep
from lightning_sensitivity.callbacks.progress import progress_factory


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_work_and_agree_with_one_process(world_size):
    model = small_model().float()
    data = {"val": probes(9, 1), "train": probes(8, 2)}
    monitor = SharpnessMonitor(splits=("train", "val"), num_samples=9, num_iterations=8, num_vectors=5)
    progress = progress_factory("", False)
    single = monitor.compute(model, data, progress, 1)
    shares: dict[int, list[int]] = {}

    def body(lockstep: Lockstep, rank: int) -> Any:
        mine = copy.deepcopy(monitor)
        mine._lockstep = lockstep  # what `_measure` sets for a distributed run
        original = mine.sharded

        def spy(fn, n):
            def counted(index):
                out = fn(index)
                shares.setdefault(rank, []).append(next(iter(out.values())).shape[0])
                return out

            return original(counted, n)

        mine.sharded = spy
        return mine.compute(copy.deepcopy(model), data, progress, 1)

    results, calls = run_ranks(world_size, body)
    for rank, got in enumerate(results):
        assert not isinstance(got, BaseException), got
        assert got.scalars.keys() == single.scalars.keys()
        for key, value in single.scalars.items():
            assert got.scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (rank, key)
        for key, value in single.arrays.items():
            torch.testing.assert_close(torch.as_tensor(got.arrays[key]).double(), torch.as_tensor(value).double(),
                                       rtol=1e-6, atol=1e-7, msg=key)  # fmt: skip
    # each rank evaluated only its shard: 2 splits x (Hutchinson over 5 vectors, Gauss-Newton over 8 or 9 examples)
    for rank in range(world_size):
        assert len(shares[rank]) == 4
        assert all(size <= -(-9 // world_size) for size in shares[rank])
    assert calls == [2 * 2 * 2] * world_size  # per sharded call: one agreement and one gather
