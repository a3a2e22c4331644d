"""The multi-process runner of the tests (``tests/_ddp.py``): results by rank, a failing rank's traceback, a hang."""

from __future__ import annotations

from pathlib import Path

import pytest
from _ddp import run_distributed

pytestmark = pytest.mark.slow


def all_reduce_rank(out: Path, scale: str) -> dict:
    import torch
    import torch.distributed as dist

    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    (out / f"wrote{dist.get_rank()}").write_text("x")
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": float(value) * float(scale)}


def fail_on_rank_one(out: Path) -> None:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise RuntimeError("injected failure on rank 1")


def hang_on_rank_zero(out: Path) -> None:
    import torch
    import torch.distributed as dist

    if dist.get_rank() == 0:
        dist.recv(torch.zeros(1), src=1)  # rank 1 never sends


def test_every_rank_runs_in_one_gloo_group_and_returns_its_result(tmp_path):
    run = run_distributed(all_reduce_rank, tmp_path, "10", world_size=3, timeout=60)
    assert run.results == {r: {"rank": r, "world": 3, "sum": 60.0} for r in range(3)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrote0", "wrote1", "wrote2"]


def test_a_failing_rank_fails_the_test_with_its_traceback(tmp_path):
    with pytest.raises(pytest.fail.Exception) as info:
        run_distributed(fail_on_rank_one, tmp_path, timeout=60)
    message = str(info.value)
    assert "test_ddp_runner.fail_on_rank_one on 2 processes (gloo) failed" in message
    assert "traceback of rank1" in message and "RuntimeError: injected failure on rank 1" in message


def test_a_hang_is_killed_at_the_timeout(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="did not finish within 15 s"):
        run_distributed(hang_on_rank_zero, tmp_path, timeout=15)


def test_the_function_must_be_importable(tmp_path):
    def local(out):
        return None

    with pytest.raises(ValueError, match="`fn` expected a module-level function"):
        run_distributed(local, tmp_path)
    with pytest.raises(ValueError, match="`launcher` expected one of"):
        run_distributed(all_reduce_rank, tmp_path, launcher="mpi")
