"""Sharing a measurement between ranks (``callbacks/_distributed.py``), with ranks simulated by threads.

The threads exchange tensors through a barrier (:class:`ThreadCollective`), so the agreements and gathers of
:func:`map_sharded` run as they would under ``torch.distributed``; a barrier timeout is how a hang would show. The
real 2-process gloo run is ``tests/reliability/test_ddp.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import oracles
import pytest
import torch
from _ranks import probes, run_ranks, small_model
from torch import Tensor, nn

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks._distributed import (
    Lockstep,
    PeerFailure,
    lockstep_exchange,
    map_sharded,
    shard_index,
)
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import loss_gradient_gram, stiffness, stiffness_summary
from lightning_sensitivity.functional.gram import build_gram_call, gram_and_norms
from lightning_sensitivity.functional.gram.distributed import ShardMap, gram_factors, gram_rows
from lightning_sensitivity.functional.stiffness_rows import shared_stiffness_summaries


@pytest.mark.parametrize("n, world_size", [(1, 2), (5, 2), (8, 2), (7, 3), (2, 3)])
def test_shards_cover_every_example_once_and_pad_with_the_last(n, world_size):
    shards = [shard_index(n, world_size, r) for r in range(world_size)]
    assert len({s.shape[0] for s in shards}) == 1
    flat = torch.cat(shards).tolist()
    assert flat[:n] == list(range(n)) and set(flat[n:]) <= {n - 1}


@pytest.mark.parametrize("n, world_size", [(1, 2), (5, 2), (8, 2), (7, 3)])
def test_map_sharded_gathers_the_results_of_every_example_in_order(n, world_size):
    values = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))

    def body(lockstep: Lockstep, rank: int) -> dict[str, Tensor]:
        seen = []

        def fn(index: Tensor) -> dict[str, Tensor]:
            seen.append(index.tolist())
            return {"double": 2 * values[index], "flag": values[index, 0] > 0, "row": index.clone()}

        out = map_sharded(fn, n, world_size, rank, lockstep)
        assert lockstep.finish(True)
        return out, seen

    results, calls = run_ranks(world_size, body)
    for out, seen in results:
        assert torch.equal(out["double"], 2 * values) and torch.equal(out["flag"], values[:, 0] > 0)
        assert out["flag"].dtype == torch.bool and out["row"].tolist() == list(range(n))
        assert len(seen) == 1 and len(seen[0]) == -(-n // world_size)
    assert calls == [1 + 3 + 1] * world_size  # agreement, three gathers, the end


def test_a_failure_on_one_rank_raises_on_every_rank_and_keeps_them_in_lockstep():
    def body(lockstep: Lockstep, rank: int) -> list[str]:
        events = []

        def fn(index: Tensor) -> dict[str, Tensor]:
            if rank == 1:
                raise ZeroDivisionError("rank 1 fails")
            return {"x": index.float()}

        try:
            map_sharded(fn, 6, 2, rank, lockstep)
        except ZeroDivisionError:
            events.append("own error")
        except PeerFailure as err:
            events.append(f"peer: {err}")
        # the ranks go on together: a second sharded call still works
        events.append(map_sharded(lambda i: {"x": i.float()}, 6, 2, rank, lockstep)["x"].tolist())
        events.append(lockstep.finish(True))
        return events

    (r0, r1), _ = run_ranks(2, body)
    assert r0[0].startswith("peer: rank(s) [1]") and r1[0] == "own error"
    assert r0[1:] == r1[1:] == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], True]


def test_a_rank_leaving_the_measurement_early_releases_the_others():
    def body(lockstep: Lockstep, rank: int) -> tuple[Any, ...]:
        if rank == 1:  # e.g. its compute failed before its first sharded call
            return ("finished", lockstep.finish(False), lockstep.broken)
        try:
            map_sharded(lambda i: {"x": i.float()}, 4, 2, rank, lockstep)
        except PeerFailure as err:
            first = str(err)
        try:  # no collective any more: this raises at once instead of waiting for rank 1
            map_sharded(lambda i: {"x": i.float()}, 4, 2, rank, lockstep)
        except PeerFailure:
            second = "raised"
        return (first, second, lockstep.finish(True), lockstep.broken)

    (r0, r1), calls = run_ranks(2, body)
    assert "rank(s) [1] left" in r0[0] and r0[1:] == ("raised", False, True)
    assert r1 == ("finished", False, True)
    assert calls == [1, 1]


def test_the_end_agreement_fails_everywhere_when_one_rank_failed():
    results, _ = run_ranks(3, lambda lockstep, rank: lockstep.finish(rank != 2))
    assert results == [False, False, False]


def test_bad_shard_results_are_refused_on_the_rank_and_shared():
    def body(lockstep: Lockstep, rank: int) -> str:
        try:
            map_sharded(lambda i: {"x": torch.zeros(len(i) + rank)}, 4, 2, rank, lockstep)
        except (ValueError, PeerFailure) as err:
            return type(err).__name__
        return "gathered"

    results, _ = run_ranks(2, body)
    assert results == ["PeerFailure", "ValueError"]


def test_row_sharded_gram_equals_the_one_set_gram_and_the_loop():
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (7,), generator=gen)
    call = build_gram_call(model, x, y, loss_fn=torch.nn.functional.cross_entropy)
    rows = [gram_and_norms(call.against_all(shard_index(7, 2, r))) for r in range(2)]
    sharded = torch.cat([g for g, _, _ in rows])[:7]
    torch.testing.assert_close(sharded, loss_gradient_gram(model, x, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sharded, oracles.gram_loop(model, x, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat([s for _, s, _ in rows])[:7], sharded.diagonal(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_gram_factors_of_shards_give_the_rows_of_the_one_set_gram(net):
    torch.manual_seed(0)
    if net == "mlp":
        model, shape = small_model(), (6,)
    else:
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)).double()
        shape = (1, 4, 4)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, *shape, generator=gen, dtype=torch.float64), torch.randint(0, 3, (7,), generator=gen)
    shards = [shard_index(7, 2, r) for r in range(2)]
    call = build_gram_call(model, x, y, loss_fn=torch.nn.functional.cross_entropy)
    parts = [gram_factors(call.against_all(i), reference_rows=7) for i in shards]
    factors = {k: torch.cat([p[k] for p in parts])[:7] for k in parts[0]}
    rows = [gram_rows(factors, i) for i in shards]
    gram, sq = torch.cat([g for g, _ in rows])[:7], torch.cat([s for _, s in rows])[:7]
    torch.testing.assert_close(gram, oracles.gram_loop(model, x, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sq, gram.diagonal(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("world_size, chunk_size", [(2, None), (3, None), (2, 4)])
def test_every_monitor_computes_the_single_process_values_from_shards(world_size, chunk_size):
    model = small_model().float()
    data = {"val": probes(9, 1), "train": probes(8, 2)}
    common = {"num_samples": 9, "chunk_size": chunk_size}
    monitors = [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=5, num_points=9, splits=("val", "train"), **common),
        StiffnessMonitor(num_distance_bins=4, **common),
    ]
    progress = progress_factory("", False)
    single = [m.compute(model, data, progress, 1) for m in monitors]

    def body(lockstep: Lockstep, rank: int) -> list[Any]:
        out = []
        for monitor in copy.deepcopy(monitors):
            monitor._lockstep = lockstep  # what `_measure` sets for a distributed run
            out.append(monitor.compute(copy.deepcopy(model), data, progress, 1))
        return out

    results, calls = run_ranks(world_size, body)
    for rank, measured in enumerate(results):
        assert not isinstance(measured, BaseException), measured
        for expected, got in zip(single, measured, strict=True):
            assert got.scalars.keys() == expected.scalars.keys()
            for key, value in expected.scalars.items():
                assert got.scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-6, nan_ok=True), (rank, key)
            for key, value in expected.arrays.items():
                a = torch.as_tensor(value, dtype=torch.float64)
                torch.testing.assert_close(torch.as_tensor(got.arrays[key], dtype=torch.float64), a, rtol=1e-6,
                                           atol=1e-6, equal_nan=True, msg=key)  # fmt: skip
    # One agreement per sharded call plus one gather per dtype of its results (packed, however many tensors):
    # jacobian: 2 splits x (1 + 1, all float); transitions: 2 splits x (1 + 1, 5 int64 count tensors); stiffness: by
    # Gram rows' norms (1 + 1) with `chunk_size`, else factors (1 + 1, a dozen float tensors), then the summaries'
    # row sums with the Gram rows (1 + 1, all as float64)
    joint_x = torch.cat([data["train"].inputs, data["val"].inputs])
    joint_y = torch.cat([data["train"].targets, data["val"].targets])
    call = build_gram_call(model, joint_x, joint_y, loss_fn=torch.nn.functional.cross_entropy)
    factors = gram_factors(call, reference_rows=17)
    assert len(factors) > 2 and {t.dtype for t in factors.values()} == {torch.float32}
    assert calls == [4 + 4 + 4] * world_size


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_a_sketched_stiffness_from_shards_is_the_single_process_sketch(chunk_size):
    # Every rank draws the same maps from `sketch_seed`, so its rows of the sketched Gram are the one process's.
    model = small_model().float()
    data = {"val": probes(9, 1), "train": probes(8, 2)}
    monitor = StiffnessMonitor(num_samples=9, num_distance_bins=4, chunk_size=chunk_size, sketch_dim=16, sketch_seed=5)
    progress = progress_factory("", False)
    single = monitor.compute(model, data, progress, 1)
    exact = StiffnessMonitor(num_samples=9, num_distance_bins=4).compute(model, data, progress, 1)
    assert single.scalars["sensitivity/stiffness/sketch_dim"] == 16
    assert (
        single.scalars["sensitivity/stiffness/val_val/cosine"] != exact.scalars["sensitivity/stiffness/val_val/cosine"]
    )

    def body(lockstep: Lockstep, rank: int) -> Any:
        sharded = copy.deepcopy(monitor)
        sharded._lockstep = lockstep
        return sharded.compute(copy.deepcopy(model), data, progress, 1)

    results, _ = run_ranks(2, body)
    for got in results:
        assert not isinstance(got, BaseException), got
        assert got.scalars.keys() == single.scalars.keys()
        for key, value in single.scalars.items():
            assert got.scalars[key] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), key


class Unrecognised(nn.Module):
    """Its input mixes the examples of a batch (``x - x.mean(0)``): the layerwise check fails, so the shared Gram
    takes the two-set rows (per-example gradients, batches of one)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh((x - x.mean(dim=0, keepdim=True)) @ self.w.T))


def test_a_model_outside_the_layerwise_engine_falls_back_on_every_rank_alike():
    model = Unrecognised()
    data = {"val": probes(9, 1), "train": probes(8, 2)}
    monitor = StiffnessMonitor(num_samples=9, num_distance_bins=4)
    progress = progress_factory("", False)
    expected = monitor.compute(model, data, progress, 1)

    def body(lockstep: Lockstep, rank: int) -> Any:
        shared = copy.deepcopy(monitor)
        shared._lockstep = lockstep
        return shared.compute(copy.deepcopy(model), data, progress, 1)

    results, calls = run_ranks(2, body)
    for got in results:
        assert not isinstance(got, BaseException), got
        for key, value in expected.scalars.items():
            assert got.scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-6, nan_ok=True), key
    # factors (agreement: every rank's LayerwiseUnsupported is shared there), then the norms of the rows by the
    # two-set Gram (1 + 1), then the summaries' row sums (1 + 1)
    assert calls == [1 + 2 + 2] * 2


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("targets", ["classes", "regression"])
def test_summaries_summed_by_rows_equal_the_single_process_summaries(world_size, distance, targets):
    # Every field of every pair group's summary from each rank's own rows, summed over the ranks, against
    # `stiffness_summary` of the whole float64 Gram's stiffness in one process; the whole Gram is on every rank too.
    model = small_model()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(17, 6, generator=gen, dtype=torch.float64)
    if targets == "classes":
        y, loss_fn, num_classes, groups = torch.arange(17) % 3, torch.nn.functional.cross_entropy, 3, [0, 0, 1]
    else:
        y, loss_fn, num_classes, groups = torch.randn(17, 3, generator=gen, dtype=torch.float64), mse, None, None
    pairs = {"train_train": (slice(0, 8), slice(0, 8)), "train_val": (slice(0, 8), slice(8, 17)),
             "val_val": (slice(8, 17), slice(8, 17))}  # fmt: skip
    options = {"num_classes": num_classes, "class_groups": groups, "num_distance_bins": 5, "distance": distance,
               "critical_length_method": "first_crossing",
               "same_class_critical_length": num_classes is not None}  # fmt: skip
    whole = stiffness(model, x, y, loss_fn=loss_fn)
    expected = {}
    for g, (r, c) in pairs.items():
        same = r == c
        expected[g] = stiffness_summary(whole.sign[r, c], whole.cosine[r, c], y[r], None if same else y[c],
                                        inputs_rows=x[r], inputs_cols=None if same else x[c], **options)  # fmt: skip

    def body(lockstep: Lockstep, rank: int) -> Any:
        # each rank its own model, as under DDP (threads sharing one model would share its capture state)
        call = build_gram_call(copy.deepcopy(model), x, y, loss_fn=loss_fn)
        shard = ShardMap(17, world_size, rank)
        return shared_stiffness_summaries(call, shard, lockstep_exchange(lockstep), pairs, x, **options)

    results, _ = run_ranks(world_size, body)
    for got in results:
        assert not isinstance(got, BaseException), got
        summaries, gram, sq = got
        torch.testing.assert_close(gram, whole.gram, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sq, whole.gram.diagonal(), rtol=1e-12, atol=1e-12)
        for g, want in expected.items():
            for field in dataclasses.fields(want):
                a, b = getattr(summaries[g], field.name), getattr(want, field.name)
                if isinstance(b, Tensor):
                    assert a.dtype == b.dtype, (g, field.name)
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True, msg=(g, field.name))
                elif isinstance(b, float):
                    assert a == pytest.approx(b, rel=1e-12, abs=1e-12, nan_ok=True), (g, field.name)
                else:
                    assert a == b, (g, field.name)


def mse(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.mse_loss(logits, targets)
