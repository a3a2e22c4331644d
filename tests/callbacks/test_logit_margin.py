"""``functional.logit_margin`` and ``LogitMarginMonitor`` against a float64, one-example-at-a-time oracle.

The schema, artifact arrays, histograms and layout of the quantity are checked by ``tests/test_keys.py`` from its
declaration (``functional/logit_margin.py``); here: the values, the untouched model, the errors, DDP sharing (ranks
as threads, as ``test_distributed.py``) and a real fit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _ranks import compute_on_ranks, probes, small_model
from callbacks._tiny import TinyData, TinyModule, make_trainer
from helpers import MODEL_FACTORIES, assert_unchanged, state_snapshot
from torch import nn

from lightning_sensitivity import LogitMarginMonitor, keys
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import logit_margin, logit_margin_summary
from lightning_sensitivity.logging import load_artifacts


def margin_loop(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The definition: one example at a time, eval mode, the two largest logits by sorting (no package import)."""
    model = copy.deepcopy(model).double().eval()
    out = []
    with torch.no_grad():
        for x in inputs.double():
            logits = model(x.unsqueeze(0))[0]
            if logits.numel() == 1:
                logits = torch.cat([logits.new_zeros(1), logits])
            top = sorted(logits.tolist(), reverse=True)
            out.append(top[0] - top[1])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_matches_the_loop_in_float64_and_leaves_the_model_alone(name, chunk_size):
    torch.manual_seed(0)
    factory, shape = MODEL_FACTORIES[name]
    model = factory().double()
    model.train()  # measured in eval mode, left in train mode
    inputs = torch.randn(7, *shape, dtype=torch.float64)
    before = state_snapshot(model)
    got = logit_margin(model, inputs, chunk_size=chunk_size)
    assert_unchanged(model, before)
    torch.testing.assert_close(got, margin_loop(model, inputs), rtol=1e-12, atol=1e-12)
    assert (got >= 0).all()


def test_float32_and_a_single_binary_logit():
    torch.manual_seed(1)
    model, inputs = nn.Linear(5, 3), torch.randn(6, 5)
    torch.testing.assert_close(logit_margin(model, inputs).double(), margin_loop(model, inputs), rtol=1e-5, atol=1e-5)
    binary = nn.Linear(5, 1)
    torch.testing.assert_close(logit_margin(binary, inputs), binary(inputs)[:, 0].abs().detach())


def test_a_closed_form_and_the_summary():
    # logits [a, b, 0]: margin = the larger minus the middle one, by hand
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    inputs = torch.tensor([[3.0, 1.0], [1.0, 3.0], [-1.0, -2.0], [2.0, 2.0]])
    assert logit_margin(model, inputs).tolist() == [2.0, 2.0, 1.0, 0.0]
    summary = logit_margin_summary(torch.arange(11.0))  # 0..10: mean 5, median 5, 10th percentile 1
    assert summary == pytest.approx({"mean": 5.0, "median": 5.0, "p10": 1.0})


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: logit_margin(nn.Linear(2, 3), torch.randn(4, 2), chunk_size=0), ValueError, "`chunk_size`"),
        (lambda: logit_margin_summary(torch.zeros(0)), ValueError, "`margins` expected a non-empty 1-d tensor"),
        (lambda: logit_margin_summary(torch.zeros(2, 2)), ValueError, r"got \(2, 2\)"),
        (lambda: LogitMarginMonitor(quantile=0.1), TypeError, "quantile"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_probe_sets_and_log_the_single_process_values(world_size):
    model = small_model().float()
    data = {"val": probes(9, 1), "train": probes(8, 2)}
    monitor = LogitMarginMonitor(num_samples=9)
    progress = progress_factory("", False)
    single = monitor.compute(model, data, progress, 1)
    assert set(single.scalars) == {keys.metric("logit_margin", s, t) for s in ("val", "train")
                                   for t in ("mean", "median", "p10")}  # fmt: skip
    torch.testing.assert_close(
        single.arrays["val_margins"], margin_loop(model, data["val"].inputs), rtol=1e-5, atol=1e-6
    )
    results, calls, shards = compute_on_ranks(monitor, model, data, progress, world_size)
    for got in results:
        assert not isinstance(got, BaseException), got
        # float32 forwards of a shard may round differently from the whole set's
        assert got.scalars == pytest.approx(single.scalars, rel=1e-6, abs=1e-6)
        torch.testing.assert_close(got.arrays["train_margins"], single.arrays["train_margins"], rtol=1e-6, atol=1e-6)
    assert max(shards) < 9 and sum(shards) >= 17  # every rank a part of each set, not the whole
    assert calls == [4] * world_size  # per set: one agreement and one gather


@pytest.mark.slow
def test_a_fit_logs_the_oracle_values_of_its_probe_sets(tmp_path):
    torch.manual_seed(0)
    monitor = LogitMarginMonitor(num_samples=30)
    module = TinyModule()
    trainer = make_trainer(tmp_path, [monitor])
    trainer.fit(module, datamodule=TinyData())
    for split in ("val", "train"):
        probe = monitor.probe_sets[split]
        expected = logit_margin_summary(margin_loop(module, probe.inputs))
        for stat, value in expected.items():
            got = float(trainer.callback_metrics[keys.metric("logit_margin", split, stat)])
            assert got == pytest.approx(value, rel=1e-5, abs=1e-6), (split, stat)
    last = load_artifacts(trainer.logger.log_dir, "logit_margin")[-1]
    torch.testing.assert_close(torch.as_tensor(last.arrays["val_margins"]),
                               margin_loop(module, monitor.probe_sets["val"].inputs), rtol=1e-5, atol=1e-5)  # fmt: skip
