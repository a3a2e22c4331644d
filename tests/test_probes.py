"""Probe sets: class balance, determinism, fast label paths, and no trace left in the global random streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset

from lightning_sensitivity.probes import (
    class_balanced_indices,
    dataset_labels,
    draw_probe_set,
    isolated_global_rng,
    probe_set_from_tensors,
    split_batch,
)


def global_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def assert_same_states(a, b):
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2]


@pytest.mark.parametrize("num_samples", [1, 7, 10, 33, 100])
def test_counts_differ_by_at_most_one(num_samples):
    labels = torch.tensor([0] * 50 + [1] * 200 + [2] * 30 + [3] * 120 + [4] * 100)
    idx = class_balanced_indices(labels, num_samples, seed=3)
    assert len(idx) == num_samples == len(set(idx.tolist()))
    counts = torch.bincount(labels[idx], minlength=5)
    assert counts.max() - counts.min() <= 1


def test_exhausted_class_takes_all_its_members():
    labels = torch.tensor([0] * 3 + [1] * 100 + [2] * 100)
    idx = class_balanced_indices(labels, 51, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 24, 24]


def test_smaller_than_requested_returns_everything():
    labels = [2, 0, 1, 1]
    assert class_balanced_indices(labels, 10, seed=0).tolist() == [0, 1, 2, 3]


def test_seeded_deterministic_and_private_rng():
    labels = torch.arange(1000) % 7
    before = global_states()
    a = class_balanced_indices(labels, 50, seed=11)
    b = class_balanced_indices(labels.numpy(), 50, seed=11)
    c = class_balanced_indices(labels.tolist(), 50, seed=12)
    assert_same_states(before, global_states())
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, a.sort().values)


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "name"),
    [
        ([0, 1], {"num_samples": 0}, ValueError, "num_samples"),
        ([0, 1], {"num_samples": 2.0}, TypeError, "num_samples"),
        ([0, 1], {"num_samples": 1, "seed": "0"}, TypeError, "seed"),
        ([0.5, 1.0], {"num_samples": 1}, TypeError, "labels"),
        ([[0, 1]], {"num_samples": 1}, ValueError, "labels"),
        ([0, -1], {"num_samples": 1}, ValueError, "labels"),
        ([0, 5], {"num_samples": 1, "num_classes": 3}, ValueError, "labels"),
        ([0, 1], {"num_samples": 1, "num_classes": 0}, ValueError, "num_classes"),
    ],
)
def test_class_balanced_bad_arguments(labels, kwargs, error, name):
    kwargs.setdefault("seed", 0)
    with pytest.raises(error, match=f"`{name}`"):
        class_balanced_indices(labels, **kwargs)


class NoTargets(Dataset):
    """Labels only through __getitem__; a random transform draws from all three global generators."""

    def __init__(self, n=60, num_classes=3):
        self.x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4)
        self.y = torch.arange(n) % num_classes
        self.reads = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        noise = torch.rand(1).item() + np.random.rand() + random.random()
        return self.x[i] + noise, int(self.y[i])


def test_label_fast_paths():
    y = torch.arange(40) % 4
    base = TensorDataset(torch.randn(40, 2), y)
    assert torch.equal(dataset_labels(base), y)
    nested = Subset(Subset(base, list(range(10, 40))), [0, 5, 29])
    assert dataset_labels(nested).tolist() == [y[10].item(), y[15].item(), y[39].item()]
    assert torch.equal(dataset_labels(ConcatDataset([base, base])), torch.cat([y, y]))

    class WithTargets(NoTargets):
        @property
        def targets(self):
            return self.y.tolist()

    assert torch.equal(dataset_labels(WithTargets()), WithTargets().y)
    assert dataset_labels(NoTargets()) is None


def test_draw_reads_only_chosen_items_with_fast_path():
    ds = NoTargets(60)
    ds.targets = ds.y  # fast path
    probe = draw_probe_set(ds, 9, seed=0)
    assert ds.reads == 9
    assert torch.bincount(probe.targets).tolist() == [3, 3, 3]
    assert torch.equal(probe.targets, ds.y[probe.indices])
    # inputs are the dataset's examples (identified by their first feature up to the noise in [0, 3))
    assert torch.all((probe.inputs[:, 0] - probe.indices.float() >= 0) & (probe.inputs[:, 0] - probe.indices < 3))


def test_draw_restores_global_rng_and_is_reproducible():
    ds = NoTargets(60)
    torch.manual_seed(123)
    np.random.seed(4)
    random.seed(5)
    before = global_states()
    a = draw_probe_set(ds, 12, seed=7)
    assert_same_states(before, global_states())
    torch.manual_seed(999)  # a different global state must not change the probe set (same on every rank)
    b = draw_probe_set(ds, 12, seed=7)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.indices, b.indices)
    assert torch.bincount(a.targets).tolist() == [4, 4, 4]


def test_draw_smaller_dataset_and_dict_batches():
    class Dicts(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"image": torch.full((1, 2, 2), float(i)), "label": i % 2, "meta": "x"}

    probe = draw_probe_set(Dicts(), 100, seed=0)
    assert len(probe) == 5
    assert probe.inputs.shape == (5, 1, 2, 2)
    assert probe.targets.tolist() == [0, 1, 0, 1, 0]


def test_batch_transform():
    ds = TensorDataset(torch.randint(0, 3, (30,)), torch.randn(30, 2))  # target first
    probe = draw_probe_set(ds, 6, seed=0, batch_transform=lambda b: (b[1], b[0]))
    assert probe.inputs.shape == (6, 2)
    assert torch.equal(probe.targets, ds.tensors[0][probe.indices])


def test_draw_errors():
    class Empty(IterableDataset):
        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="empty"):
        draw_probe_set(Empty(), 4, seed=0)
    with pytest.raises(TypeError, match="map-style"):
        draw_probe_set(object(), 4, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        draw_probe_set(TensorDataset(torch.zeros(0, 2), torch.zeros(0)), 4, seed=0)
    with pytest.raises(TypeError, match="batch_transform"):
        split_batch({"a": torch.zeros(2)})
    with pytest.raises(TypeError, match="model_kwargs"):
        split_batch(torch.zeros(3, 2), lambda b: (b, b[:, 0], [b]))
    with pytest.raises(ValueError, match="first dimension 3"):
        split_batch(torch.zeros(3, 2), lambda b: (b, b[:, 0], {"mask": b[:2]}))


def test_streams_give_their_first_examples_class_balanced_with_the_global_rng_untouched():
    """An IterableDataset is read through a fresh iterator of the dataset itself (never the user's loader)."""

    class Stream(IterableDataset):
        def __init__(self):
            self.iterations = 0

        def __iter__(self):
            self.iterations += 1
            for i in range(5000):
                torch.rand(1)  # a random transform drawing from the global stream
                yield torch.full((2,), float(i)), i % 3

    stream = Stream()
    before = torch.get_rng_state()
    probe = draw_probe_set(stream, 30, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert stream.iterations == 1
    assert torch.bincount(probe.targets).tolist() == [10, 10, 10]
    # positions are stream positions, the inputs those items, all from the first pool of the stream
    assert torch.equal(probe.inputs[:, 0].long(), probe.indices)
    assert int(probe.indices.max()) < 1024
    assert torch.equal(draw_probe_set(Stream(), 30, seed=0).indices, probe.indices)


def test_token_ids_float_targets_and_model_kwargs_are_kept():
    ids = torch.randint(0, 50, (40, 7))
    mask = torch.ones(40, 7, dtype=torch.long)
    multi_hot = (torch.rand(40, 5) > 0.5).float()
    data = TensorDataset(ids, multi_hot, mask)
    probe = draw_probe_set(data, 16, seed=1, batch_transform=lambda b: (b[0], b[1], {"attention_mask": b[2]}))
    assert probe.inputs.dtype == torch.long and probe.targets.dtype == torch.float32 and not probe.class_targets
    assert torch.equal(probe.inputs, ids[probe.indices]) and torch.equal(probe.targets, multi_hot[probe.indices])
    assert torch.equal(probe.model_kwargs["attention_mask"], mask[probe.indices])
    assert len(probe) == 16 and len(set(probe.indices.tolist())) == 16
    restored = type(probe).from_state(probe.state())
    assert torch.equal(restored.model_kwargs["attention_mask"], probe.model_kwargs["attention_mask"])


def test_from_tensors_subsamples_balanced():
    x, y = torch.randn(100, 3), torch.arange(100) % 5
    probe = probe_set_from_tensors(x, y, 20, seed=0)
    assert torch.bincount(probe.targets).tolist() == [4] * 5
    assert torch.equal(probe.inputs, x[probe.indices])
    small = probe_set_from_tensors(x[:7], y[:7], 20, seed=0)
    assert torch.equal(small.inputs, x[:7])
    with pytest.raises(ValueError, match="targets"):
        probe_set_from_tensors(x, y[:5], 20, seed=0)


def test_isolated_global_rng_restores_on_error():
    before = global_states()
    with pytest.raises(RuntimeError):
        with isolated_global_rng(1):
            torch.rand(3)
            raise RuntimeError
    assert_same_states(before, global_states())
