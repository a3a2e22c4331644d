"""``functional.input_gradient_norm`` and ``InputGradientNormMonitor`` against a float64 one-example-at-a-time oracle.

The schema, artifact arrays, histograms and layout of the quantity are checked by ``tests/test_keys.py`` from its
declaration (``functional/input_gradient_norm.py``); here: the values (several models, losses, both methods, chunk
sizes), the untouched model, the errors, token inputs, DDP sharing (ranks as threads, as ``test_distributed.py``),
a real fit against the oracle, and that a fit with the monitor trains bitwise as one without it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _ranks import compute_on_ranks, probes, small_model
from callbacks._tiny import TinyData, TinyModule, make_trainer
from helpers import MODEL_FACTORIES, assert_unchanged, state_snapshot
from torch import nn

from lightning_sensitivity import InputGradientNormMonitor, keys
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import input_gradient_norm, input_gradient_norm_summary
from lightning_sensitivity.logging import load_artifacts

Q = "input_gradient_norm"


def gradient_norm_loop(model, inputs, targets, loss_fn=F.cross_entropy, model_kwargs=None) -> torch.Tensor:
    """The definition: one example at a time, float64, eval mode, plain ``torch.autograd`` (no package import)."""
    model = copy.deepcopy(model).double().eval()
    targets = targets.double() if targets.is_floating_point() else targets
    out = []
    for i in range(inputs.shape[0]):
        x = inputs[i : i + 1].detach().double().clone().requires_grad_(True)
        kw = {k: v[i : i + 1] for k, v in (model_kwargs or {}).items()}
        loss = loss_fn(model(x, **kw), targets[i : i + 1]).sum()
        (g,) = torch.autograd.grad(loss, x)
        out.append(g.pow(2).sum().sqrt())
    return torch.stack(out).detach()


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))  # MLPs and a CNN with BatchNorm + Dropout (eval mode)
@pytest.mark.parametrize("method", ["batched", "per_example"])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_matches_the_loop_in_float64_and_leaves_the_model_alone(name, method, chunk_size):
    torch.manual_seed(0)
    factory, shape = MODEL_FACTORIES[name]
    model = factory().double()
    model.train()  # measured in eval mode, left in train mode
    inputs, targets = torch.randn(7, *shape, dtype=torch.float64), torch.randint(0, 4, (7,))
    before = state_snapshot(model)
    got = input_gradient_norm(model, inputs, targets, method=method, chunk_size=chunk_size)
    assert_unchanged(model, before)
    assert got.dtype == torch.float64 and got.shape == (7,)
    torch.testing.assert_close(got, gradient_norm_loop(model, inputs, targets), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("loss_fn", "make_targets"),
    [
        (nn.CrossEntropyLoss(reduction="none"), lambda n: torch.randint(0, 4, (n,))),
        (nn.CrossEntropyLoss(label_smoothing=0.1), lambda n: torch.randint(0, 4, (n,))),
        (F.mse_loss, lambda n: torch.randn(n, 4, dtype=torch.float64)),
        (F.binary_cross_entropy_with_logits, lambda n: torch.randint(0, 2, (n, 4)).double()),
    ],
    ids=["ce-none", "ce-smoothing", "mse", "bce-multilabel"],
)
@pytest.mark.parametrize("method", ["batched", "per_example"])
def test_other_losses_match_the_loop(loss_fn, make_targets, method):
    torch.manual_seed(2)
    model = MODEL_FACTORIES["bn_dropout_cnn"][0]().double()
    inputs, targets = torch.randn(6, 1, 6, 6, dtype=torch.float64), make_targets(6)
    got = input_gradient_norm(model, inputs, targets, loss_fn=loss_fn, method=method, chunk_size=4)
    torch.testing.assert_close(got, gradient_norm_loop(model, inputs, targets, loss_fn), rtol=1e-10, atol=1e-12)


def test_float32_inside_inference_mode():
    torch.manual_seed(1)
    model, shape = MODEL_FACTORIES["relu_mlp"][0](), (12,)
    inputs, targets = torch.randn(9, *shape), torch.randint(0, 4, (9,))
    with torch.inference_mode():
        got = input_gradient_norm(model, inputs, targets, chunk_size=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), gradient_norm_loop(model, inputs, targets), rtol=1e-5, atol=1e-7)


def test_a_closed_form_and_the_summary():
    # z = W x, cross-entropy: d loss / dx = W^T (softmax(z) - e_y), by hand for W = I (2 classes)
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    inputs = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    p = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))  # softmax([1, -1])[0]
    expected = torch.stack([torch.tensor(0.5).double() * 2**0.5, (1 - p) * 2**0.5])  # |p - e_y| = (1-p) * [1, 1]
    torch.testing.assert_close(input_gradient_norm(model, inputs, torch.tensor([0, 0])), expected)
    summary = input_gradient_norm_summary(torch.arange(11.0), torch.tensor([0] * 6 + [2] * 5))
    assert {k: summary[k] for k in ("mean", "median", "p90")} == pytest.approx({"mean": 5, "median": 5, "p90": 9})
    per_class = summary["per_class"].tolist()
    assert per_class[0] == 2.5 and per_class[1] != per_class[1] and per_class[2] == 8.0  # NaN: no class-1 example


class BatchCentred(nn.Module):
    """Subtracts the batch mean even in eval mode: examples interact, so one batched backward is not per example."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return torch.tanh(h - h.mean(dim=0, keepdim=True) + h)


def test_per_example_makes_no_independence_assumption():
    torch.manual_seed(3)
    model = BatchCentred().double()
    inputs, targets = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 4, (5,))
    expected = gradient_norm_loop(model, inputs, targets)
    torch.testing.assert_close(input_gradient_norm(model, inputs, targets, method="per_example"), expected)
    batched = input_gradient_norm(model, inputs, targets, method="batched")
    assert not torch.allclose(batched, expected)  # what the "batched" docstring warns of


V, T, D, C = 20, 5, 6, 3


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.body = EmbeddedNet()

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.body(self.embed(ids), attention_mask)


class EmbeddedNet(nn.Module):
    """The token model after its embedding: masked mean of the embeddings -> logits."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, C)

    def forward(self, e: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.to(e.dtype)[..., None]
        return self.head(torch.tanh(self.mix((e * m).sum(1) / m.sum(1))))


def token_data(n: int = 8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (n, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.randint(2, T + 1, (n,), generator=g)[:, None]
    return ids, torch.randint(0, C, (n,), generator=g), mask


@pytest.mark.parametrize("method", ["batched", "per_example"])
def test_token_ids_are_refused_and_the_embedding_output_is_measured(method):
    torch.manual_seed(4)
    model = TokenNet().double()
    ids, y, mask = token_data()
    with pytest.raises(TypeError, match="`inputs` expected a floating-point tensor, got dtype torch.int64.*embed_fn"):
        input_gradient_norm(model, ids, y, model_kwargs={"attention_mask": mask})
    e = model.embed(ids).detach()
    got = input_gradient_norm(model.body, e, y, method=method, chunk_size=3, model_kwargs={"attention_mask": mask})
    expected = gradient_norm_loop(model.body, e, y, model_kwargs={"attention_mask": mask})
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: input_gradient_norm(nn.Linear(2, 3), torch.randn(4, 2), torch.zeros(4).long(), method="loop"),
         ValueError, r"`method` expected one of \('batched', 'per_example'\), got 'loop'"),
        (lambda: input_gradient_norm(nn.Linear(2, 3), torch.randn(4, 2), torch.zeros(4).long(), chunk_size=0),
         ValueError, "`chunk_size`.*0"),
        (lambda: input_gradient_norm(nn.Linear(2, 3), torch.randn(4, 2), torch.zeros(3).long()),
         ValueError, "`targets` expected 4 entries along dimension 0 to match `inputs`, got 3"),
        (lambda: input_gradient_norm(nn.Linear(2, 3), torch.randn(4, 2), torch.zeros(4).long(),
                                     loss_fn=nn.CrossEntropyLoss), TypeError, "`loss_fn` .*class CrossEntropyLoss"),
        (lambda: input_gradient_norm(nn.Linear(2, 3), torch.randn(4, 2), torch.zeros(4).long(), progress=1),
         TypeError, "`progress` expected a callable"),
        (lambda: input_gradient_norm(nn.Linear(2, 3), [[1.0, 2.0]], torch.zeros(1).long()),
         TypeError, "`inputs` expected a torch.Tensor.*got list"),
        (lambda: input_gradient_norm_summary(torch.zeros(0)), ValueError, "`norms` expected at least one value"),
        (lambda: input_gradient_norm_summary(torch.zeros(2, 2)), ValueError, r"`norms` expected a 1-D tensor, got "
         r"shape \(2, 2\)"),
        (lambda: input_gradient_norm_summary(torch.ones(2), torch.ones(2)), TypeError, "`targets` expected an integer"),
        (lambda: InputGradientNormMonitor(method="loop"), ValueError, "`method` expected one of .*got 'loop'"),
        (lambda: InputGradientNormMonitor(loss_fn=nn.MSELoss), TypeError, "`loss_fn` .*class MSELoss"),
        (lambda: InputGradientNormMonitor(loss_fn=3), TypeError, "`loss_fn`.*3|`loss_fn`.*int"),
        (lambda: InputGradientNormMonitor(quantile=0.9), TypeError, "quantile"),
    ],
)  # fmt: skip
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_probe_sets_and_log_the_single_process_values(world_size):
    model = small_model().float()
    data = {"val": probes(9, 1), "train": probes(8, 2)}
    monitor = InputGradientNormMonitor(num_samples=9)
    progress = progress_factory("", False)
    single = monitor.compute(model, data, progress, 1)
    stats = {keys.metric(Q, s, t) for s in ("val", "train") for t in ("mean", "median", "p90", "class_0", "class_1",
                                                                       "class_2")}  # fmt: skip
    assert set(single.scalars) == stats | {keys.metric(Q, "train_val_ratio")}
    for split in ("val", "train"):
        expected = gradient_norm_loop(model, data[split].inputs, data[split].targets)
        torch.testing.assert_close(single.arrays[f"{split}_norms"], expected, rtol=1e-5, atol=1e-7)
    ratio = single.scalars[keys.metric(Q, "train", "mean")] / single.scalars[keys.metric(Q, "val", "mean")]
    assert single.scalars[keys.metric(Q, "train_val_ratio")] == pytest.approx(ratio)
    results, calls, shards = compute_on_ranks(monitor, model, data, progress, world_size)
    for got in results:
        assert not isinstance(got, BaseException), got
        assert got.scalars == pytest.approx(single.scalars, rel=1e-6, abs=1e-7)
        torch.testing.assert_close(got.arrays["train_norms"], single.arrays["train_norms"], rtol=1e-6, atol=1e-7)
    assert max(shards) < 9 and sum(shards) >= 17  # every rank a part of each set, not the whole
    assert calls == [4] * world_size  # per set: one agreement and one gather


@pytest.mark.slow
def test_a_fit_logs_the_oracle_values_of_its_probe_sets(tmp_path):
    torch.manual_seed(0)
    monitor = InputGradientNormMonitor(num_samples=30)
    module = TinyModule()
    trainer = make_trainer(tmp_path, [monitor])
    trainer.fit(module, datamodule=TinyData())
    for split in ("val", "train"):
        probe = monitor.probe_sets[split]
        expected = input_gradient_norm_summary(gradient_norm_loop(module, probe.inputs, probe.targets), probe.targets)
        for stat in ("mean", "median", "p90"):
            got = float(trainer.callback_metrics[keys.metric(Q, split, stat)])
            assert got == pytest.approx(expected[stat], rel=1e-4, abs=1e-7), (split, stat)
        c = int(probe.targets[0])
        got = float(trainer.callback_metrics[keys.metric(Q, split, f"class_{c}")])
        assert got == pytest.approx(float(expected["per_class"][c]), rel=1e-4, abs=1e-7)
    last = load_artifacts(trainer.logger.log_dir, Q)[-1]
    val = monitor.probe_sets["val"]
    torch.testing.assert_close(torch.as_tensor(last.arrays["val_norms"]),
                               gradient_norm_loop(module, val.inputs, val.targets), rtol=1e-4, atol=1e-7)  # fmt: skip


class TokenModule(TinyModule):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(net=TokenNet(), lr=0.5)

    def forward(self, ids, attention_mask):
        return self.net(ids, attention_mask)

    def training_step(self, batch, batch_idx):
        ids, y, mask = batch
        return F.cross_entropy(self(ids, mask), y)

    def train_dataloader(self):
        ids, y, mask = token_data(16)
        return torch.utils.data.DataLoader(list(zip(ids, y, mask, strict=True)), batch_size=8)


@pytest.mark.slow
def test_a_fit_with_embed_fn_measures_the_embedding_output(tmp_path):
    ids, y, mask = token_data(12)
    data = (ids, y, {"attention_mask": mask})
    monitor = InputGradientNormMonitor(
        val_data=data, train_data=data, num_samples=12, embed_fn=lambda m, x: m.net.embed(x),
        forward_fn=lambda m, e, attention_mask: m.net.body(e, attention_mask),
    )  # fmt: skip
    module = TokenModule()
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, logger=False)
    trainer.fit(module)
    probe = monitor.probe_sets["val"]
    with torch.no_grad():
        e = module.net.embed(probe.inputs)
    expected = gradient_norm_loop(module.net.body, e, probe.targets, model_kwargs=probe.model_kwargs)
    got = float(trainer.callback_metrics[keys.metric(Q, "val", "mean")])
    assert got == pytest.approx(float(expected.mean()), rel=1e-4)


@pytest.mark.slow
def test_training_with_the_monitor_is_bitwise_the_training_without_it(tmp_path):
    # The seeded fit of the non-perturbation tests (shuffling, augmentation from every global RNG, BatchNorm,
    # Dropout, gradient accumulation and clipping, StepLR), measured at initialisation and every epoch.
    from reliability._helpers import seeded_fit, training_differences

    reference = seeded_fit(tmp_path / "without", [], net="cnn")
    monitor = InputGradientNormMonitor(num_samples=24)
    monitored = seeded_fit(tmp_path / "with", [monitor], net="cnn")
    assert training_differences(reference, monitored) == []
    assert monitor.measured_epochs == [0, 1, 2, 3] and set(monitor.probe_sets) == {"val", "train"}
    assert keys.metric(Q, "train_val_ratio") in monitored.trainer.callback_metrics
