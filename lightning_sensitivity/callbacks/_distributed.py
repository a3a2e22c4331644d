r"""Sharing one measurement between the ranks of a distributed run, without any rank ever waiting forever.

Each probe set of ``n`` examples is cut into ``world_size`` shards of the same size ``ceil(n / world_size)`` (the
last shards padded by repeating the last example), so every rank runs the same collectives on tensors of the same
shapes: :func:`map_sharded` runs ``fn`` on this rank's shard and ``all_gather``\\ s its per-example results, from which
the padding is dropped. Every rank then holds the whole result and logs identical values.

A failure on one rank must not leave the others blocked in a collective. Every collective of a measurement is
therefore preceded by an *agreement*: one ``all_gather`` of a status code per rank, at which every rank learns what
every other rank is about to do:

- all ranks are about to gather (``GATHER``): they gather;
- some rank failed computing its shard (``FAILED`` beside ``GATHER``): all ranks raise :class:`PeerFailure` (the
  failing rank its own error) at the same point, so they stay in lockstep and the rest of the measurement goes on
  the same way everywhere (a monitor skipping an optional split, say);
- some rank has left the measurement (``END_*`` beside ``GATHER``/``FAILED``: its ``compute`` failed outside a
  sharded call, or it had nothing to measure): the lockstep is broken, so from here on no rank issues another
  collective for this measurement; the ranks still inside raise, and the measurement is discarded on every rank;
- all ranks have finished (``END_OK``/``END_FAILED``): the measurement counts only if it succeeded on every rank.

Every measurement ends with :meth:`Lockstep.finish` on every rank (except after a broken lockstep), so the number of
agreements matches on all ranks whatever fails where.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_sensitivity.functional.gram.distributed import Exchange, PeerFailure, ShardMap

__all__ = [
    "Collective",
    "Lockstep",
    "PeerFailure",
    "TorchCollective",
    "lockstep_exchange",
    "map_sharded",
    "shard_index",
]

FAILED, GATHER, END_FAILED, END_OK = 0, 1, 2, 3
ShardFn = Callable[[Tensor], dict[str, Tensor]]


class Collective(Protocol):
    """The two collectives a shared measurement needs. ``all_gather`` returns one tensor per rank, in rank order."""

    world_size: int
    rank: int

    def all_gather(self, tensor: Tensor) -> list[Tensor]: ...


class TorchCollective:
    """:mod:`torch.distributed`'s default process group; tensors travel on ``device`` (the CUDA device under NCCL)."""

    def __init__(self, world_size: int, rank: int, device: torch.device | str = "cpu") -> None:
        self.world_size, self.rank, self.device = world_size, rank, torch.device(device)

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        import torch.distributed as dist

        back, dtype = tensor.device, tensor.dtype
        # gloo and NCCL do not all reduce/gather bool everywhere: bytes travel, bools come back.
        sent = (tensor.to(torch.uint8) if dtype == torch.bool else tensor).to(self.device).contiguous()
        parts = [torch.empty_like(sent) for _ in range(self.world_size)]
        dist.all_gather(parts, sent)
        return [p.to(device=back, dtype=dtype) for p in parts]


def distributed_collective(trainer: Any) -> TorchCollective | None:
    """A collective over the default process group when the trainer has more than one rank, else None."""
    import torch.distributed as dist

    world_size = int(getattr(trainer, "world_size", 1) or 1)
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    return TorchCollective(world_size, int(trainer.global_rank), trainer.strategy.root_device)


class Lockstep:
    """The agreements of one measurement over ``collective`` (see the module docstring)."""

    def __init__(self, collective: Collective) -> None:
        self.collective = collective
        self.broken = False  # a rank left early: no further collective in this measurement
        self.finished = False

    @property
    def world_size(self) -> int:
        return self.collective.world_size

    @property
    def rank(self) -> int:
        return self.collective.rank

    def agree(self, status: int) -> list[int]:
        """Every rank's status at this point, in rank order."""
        if self.broken or self.finished:
            raise PeerFailure("the ranks are no longer in lockstep in this measurement (a rank left it early)")
        mine = torch.tensor([status], dtype=torch.int64)
        return [int(t) for t in torch.cat(self.collective.all_gather(mine)).tolist()]

    def finish(self, ok: bool) -> bool:
        """End the measurement on this rank; whether it succeeded on every rank (False after a broken lockstep)."""
        if self.broken or self.finished:
            self.finished = True
            return False
        statuses = self.agree(END_OK if ok else END_FAILED)
        self.finished = True
        if any(s < END_FAILED for s in statuses):
            self.broken = True  # the others were still inside the measurement; they stop at this agreement too
            return False
        return all(s == END_OK for s in statuses)


def shard_index(n: int, world_size: int, rank: int) -> Tensor:
    """Positions ``[ceil(n / world_size)]`` of rank ``rank``'s shard of ``n`` examples, padded with ``n - 1``
    (:meth:`~lightning_sensitivity.functional.gram.distributed.ShardMap.index`).

    Example:
        >>> shard_index(5, 2, 0).tolist(), shard_index(5, 2, 1).tolist()
        ([0, 1, 2], [3, 4, 4])
    """
    return ShardMap(n, world_size, rank).index()


def lockstep_exchange(lockstep: Lockstep) -> Exchange:
    """The functional layer's :class:`~lightning_sensitivity.functional.gram.distributed.Exchange` over a
    measurement's :class:`Lockstep`: each rank's results of its shard, gathered after an agreement."""

    def exchange(fn: ShardFn, shard: ShardMap) -> dict[str, Tensor]:
        return map_sharded(fn, shard.num_rows, shard.world_size, shard.rank, lockstep)

    return exchange


def map_sharded(fn: ShardFn, n: int, world_size: int, rank: int, collective: Lockstep) -> dict[str, Tensor]:
    """Run ``fn(index)`` on this rank's shard of ``n`` examples and gather every rank's results.

    Args:
        fn: maps the shard's positions ``index`` ``[s]`` to a dict of tensors whose first dimension is ``s``; the
            same keys, dtypes and trailing shapes on every rank.
        n: number of examples.
        world_size: number of ranks (that of ``collective``).
        rank: this process's rank (that of ``collective``).
        collective: the measurement's :class:`Lockstep`.

    Returns:
        For each key, the ``[n, ...]`` results of all examples in order (the padding dropped), on every rank.

    Raises:
        PeerFailure: on every other rank when ``fn`` failed on some rank (which raises its own error), or when a
            rank has left the measurement.
    """
    if world_size != collective.world_size or rank != collective.rank:
        raise ValueError(
            f"`world_size`/`rank` expected those of the collective ({collective.world_size}, {collective.rank}), "
            f"got ({world_size}, {rank})"
        )
    index = shard_index(n, world_size, rank)
    error: BaseException | None = None
    try:
        local = fn(index)
        _check_shard(local, index.shape[0])
    except Exception as err:  # shared with the other ranks at the agreement below, then re-raised
        error, local = err, {}
    statuses = collective.agree(FAILED if error is not None else GATHER)
    if any(s >= END_FAILED for s in statuses):
        collective.broken = True
        left = [r for r, s in enumerate(statuses) if s >= END_FAILED]
        raise PeerFailure(f"rank(s) {left} left the measurement early; it is discarded on every rank") from error
    if error is not None:
        raise error
    failed = [r for r, s in enumerate(statuses) if s == FAILED]
    if failed:
        raise PeerFailure(f"rank(s) {failed} could not compute their shard (their own error is raised there)")
    return _gather(collective.collective, local, n)


def _gather(collective: Collective, local: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """Every rank's ``local`` results, concatenated in rank order and cut to ``n``: one ``all_gather`` per dtype
    (the results of a dtype packed into one flat tensor), not one per key -- a shared Gram's layer factors are a
    dozen keys, and each collective waits for the slowest rank."""
    by_dtype: dict[torch.dtype, list[str]] = {}
    for key in sorted(local):
        by_dtype.setdefault(local[key].dtype, []).append(key)
    out: dict[str, Tensor] = {}
    for keys in by_dtype.values():
        sizes = [local[k].numel() for k in keys]
        parts = collective.all_gather(torch.cat([local[k].reshape(-1) for k in keys]))  # same sizes on every rank
        pieces = [part.split(sizes) for part in parts]
        for i, key in enumerate(keys):
            out[key] = torch.cat([rank_pieces[i].reshape(local[key].shape) for rank_pieces in pieces])[:n]
    return {key: out[key] for key in sorted(out)}


def _check_shard(local: Any, size: int) -> None:
    if not isinstance(local, dict) or not all(isinstance(v, Tensor) for v in local.values()):
        raise TypeError(f"`fn` expected to return a dict of tensors, got {type(local).__name__}")
    for key, value in local.items():
        if value.dim() == 0 or value.shape[0] != size:
            raise ValueError(f"`fn` expected results with first dimension {size} (the shard), got {key!r} of shape "
                             f"{tuple(value.shape)}")  # fmt: skip
