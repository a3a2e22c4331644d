"""End to end, the training setups a newcomer tries first, each a tiny MLP in a real ``Trainer`` for a few steps.

Non-finite probe examples, regression / multi-label / single-logit heads, activation checkpointing, manual
optimization with two optimizers, notebook-style repeated fits, ``fast_dev_run``, ``trainer.validate`` on a fresh
trainer, pickling (``ddp_spawn``) and the single-machine DDP strategies. Values are compared with the same
measurement on clean data / the plain model (same weights), or with ``tests/oracles.py``; training is compared
bitwise with a run without monitors. BatchNorm/dropout, accumulation + clipping, resume, compile and mixed precision
are covered in ``tests/reliability/`` (``test_non_perturbation``, ``test_resume``, ``test_compile``,
``test_precision``).
"""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from _ddp import run_distributed
from helpers import Classifier, fit, last_artifact, make_trainer, mlp, sensitivity_metrics
from oracles import jacobian_norm_loop
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks.measurement import SensitivityWarning

pytestmark = pytest.mark.slow

IN, N = 6, 40


def data(n: int = N, seed: int = 0, classes: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=gen)
    return x, torch.randint(0, classes, (n,), generator=gen)


def loaders(x: Tensor, y: Tensor, batch_size: int = 10) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(root: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer with a CSV logger (artifacts under its log directory)."""
    return make_trainer(root, callbacks, **{"logger": "csv", **kwargs})


def monitors(val: tuple, train: tuple, loss_fn: Any = F.cross_entropy, **kwargs: Any) -> list[pl.Callback]:
    """The three monitors measuring once, at initialisation, on explicit probe data."""
    common = {"every_n_epochs": None, "at_init": True, "num_samples": 64, "val_data": val, "train_data": train}
    common.update(kwargs)
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=4, num_points=30, **common),
        StiffnessMonitor(num_distance_bins=4, loss_fn=loss_fn, **common),
    ]


def measure_at_init(root: Path, module: pl.LightningModule, callbacks: list[pl.Callback], train: tuple) -> tuple:
    """One training step after the measurement at initialisation; the metrics and the warnings."""
    t = trainer(root, callbacks, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    messages = fit(t, module, loaders(*train))
    return sensitivity_metrics(t), messages


# ---------------------------------------------------------------- non-finite probe examples
@pytest.mark.parametrize("monitor", ["jacobian_norm", "transitions", "stiffness"])
def test_nonfinite_probe_examples_are_named_left_out_and_counted(tmp_path, monitor):
    x, y = data()
    train = data(seed=1)
    bad = torch.tensor([3, 10, 11, 25, 30, 39])
    dirty = x.clone()
    dirty[bad[:4], 2] = float("nan")
    dirty[bad[4:], 0] = float("inf")
    keep = torch.tensor([i for i in range(N) if i not in bad.tolist()])

    def run(name: str, val: tuple) -> tuple:
        torch.manual_seed(0)
        module = Classifier(mlp(IN, 3), lr=0.05)
        callbacks = [c for c in monitors(val, train) if c.quantity == monitor]
        return measure_at_init(tmp_path / name, module, callbacks, train)

    got, messages = run("dirty", (dirty, y))
    want, clean_messages = run("clean", (x[keep], y[keep]))
    tag = f"sensitivity/{monitor}/val/nonfinite"
    assert got.pop(tag) == 6
    assert tag not in want
    assert got == want  # every quantity: exactly the measurement on the finite examples
    assert len(got) > 3
    named = [m for m in messages if "non-finite inputs" in m]
    assert len(named) == 1, messages
    assert "6 of 40 val probe examples" in named[0] and "3, 10, 11, 25, 30, 39" in named[0] and tag in named[0]
    assert not any("diverged" in m for m in messages)


def test_a_diverged_model_is_named_and_nothing_is_logged(tmp_path):
    x, y = data()
    torch.manual_seed(0)
    module = Classifier(mlp(IN, 3), lr=0.05)
    with torch.no_grad():
        module.net[0].weight[0, 0] = float("nan")
    got, messages = measure_at_init(tmp_path, module, monitors((x, y), data(seed=1))[:1], data(seed=1))
    assert got == {}
    named = [m for m in messages if "non-finite model outputs" in m]
    assert len(named) == 1 and "40 of 40 val" in named[0] and "40 of 40 train" in named[0], messages
    assert "may have diverged" in named[0]


# ---------------------------------------------------------------- output heads
def test_single_output_regression_head(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, IN, generator=gen)
    y = x[:, :1] * 2 + 0.1 * torch.randn(N, 1, generator=gen)
    train = (x.flip(0), y.flip(0))
    torch.manual_seed(0)
    module = Classifier(mlp(IN, 1), loss_fn=F.mse_loss, lr=0.05)
    net = copy.deepcopy(module.net)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    t = trainer(tmp_path, monitors((x, y), train, loss_fn=F.mse_loss), max_epochs=1, limit_train_batches=1,
                limit_val_batches=0, logger=logger)  # fmt: skip
    messages = fit(t, module, loaders(*train))
    got = sensitivity_metrics(t)
    # Jacobian of the output itself (the softmax of one output is constant), said once.
    assert sum("whose softmax is constant" in m for m in messages) == 1, messages
    norms = torch.as_tensor(last_artifact(logger.log_dir, "jacobian_norm").arrays["val_norms"], dtype=torch.float64)
    torch.testing.assert_close(norms, jacobian_norm_loop(net.double(), x.double(), output="logits"), rtol=1e-4, atol=0)
    assert got["sensitivity/jacobian_norm/val/mean"] > 0
    # Transitions: activation and region changes, no prediction changes (one note).
    assert "sensitivity/transitions/val/activation_mean" in got
    assert not any(k.endswith("prediction_mean") for k in got)
    assert sum("predicts no class" in m for m in messages) == 1
    # Stiffness: values and figures without class matrices, no failure.
    assert "sensitivity/stiffness/val_val/cosine" in got
    assert not any("could not produce" in m for m in messages), messages
    assert not any("class_" in k for k in got if k.startswith("sensitivity/stiffness"))


@pytest.mark.parametrize("head", ["multi_label", "binary_logit"])
def test_label_heads_count_outputs_crossing_zero(tmp_path, head):
    x, _ = data()
    if head == "multi_label":
        y = (x[:, :4] > 0).float()
        outputs, loss = 4, F.binary_cross_entropy_with_logits
    else:
        y = (x[:, 0] > 0).long()
        outputs, loss = 1, lambda out, t: F.binary_cross_entropy_with_logits(out[:, 0], t.float())
    train = (x.flip(0), y.flip(0))
    torch.manual_seed(0)
    module = Classifier(mlp(IN, outputs), loss_fn=loss, lr=0.05)
    got, messages = measure_at_init(tmp_path, module, monitors((x, y), train, loss_fn=loss), train)
    assert sum("an output crossing 0" in m for m in messages) == 1, messages
    assert "sensitivity/transitions/val/prediction_mean" in got
    assert not any("could not produce" in m for m in messages), messages
    if head == "multi_label":
        assert sum("pass `output='sigmoid'`" in m for m in messages) == 1
    else:  # a binary classifier: class statistics of the logit's two classes
        assert got["sensitivity/jacobian_norm/val/mean"] > 0
        assert "sensitivity/stiffness/val_val/same_class_cosine" in got


# ---------------------------------------------------------------- activation checkpointing
class CheckpointedMLP(nn.Module):
    def __init__(self, mode: str | None) -> None:
        super().__init__()
        self.mode = mode
        self.body = nn.Sequential(nn.Linear(IN, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is None:
            return self.head(self.body(x))
        return self.head(checkpoint(self.body, x, use_reentrant=self.mode == "reentrant"))


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
def test_activation_checkpointing_is_measured_like_the_plain_model_and_training_is_unchanged(tmp_path, mode):
    x, y = data()
    train = data(seed=1)

    def run(name: str, mode: str | None, every_n_epochs: int | None, with_monitors: bool = True) -> tuple:
        torch.manual_seed(0)
        module = Classifier(CheckpointedMLP(mode), lr=0.05)
        callbacks = monitors((x, y), train, every_n_epochs=every_n_epochs) if with_monitors else []
        t = trainer(tmp_path / name, callbacks, max_epochs=2, limit_val_batches=0)
        messages = fit(t, module, loaders(*train))
        return sensitivity_metrics(t), messages, module.state_dict()

    # The values at initialisation (same weights) equal the plain model's.
    got, messages, _ = run("ckpt_init", mode, None)
    want, _, _ = run("plain_init", None, None)
    assert not messages, messages
    assert len(got) > 20 and got.keys() == want.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    # Measuring every epoch leaves the checkpointed training bitwise as it is without monitors.
    _, messages, state = run("ckpt", mode, 1)
    _, _, untouched = run("bare", mode, 1, with_monitors=False)
    assert not messages, messages
    assert all(torch.equal(state[k], untouched[k]) for k in state)


# ---------------------------------------------------------------- manual optimization, repeated fits
class TwoOptimizers(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.body, self.head = nn.Sequential(nn.Linear(IN, 16), nn.ReLU()), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_body, opt_head = self.optimizers()
        for opt in (opt_body, opt_head):
            opt.zero_grad()
            self.manual_backward(F.cross_entropy(self(batch[0]), batch[1]))
            opt.step()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.body.parameters(), lr=0.1), torch.optim.Adam(self.head.parameters(), lr=0.01)


def test_manual_optimization_with_two_optimizers(tmp_path):
    x, y = data()
    train = data(seed=1)

    def run(name: str, callbacks: list) -> tuple:
        torch.manual_seed(0)
        module = TwoOptimizers()
        t = trainer(tmp_path / name, callbacks, max_epochs=2, limit_val_batches=0)
        messages = fit(t, module, loaders(*train))
        return module, t, messages

    module, t, messages = run("monitors", monitors((x, y), train, every_n_epochs=1))
    bare, bare_t, _ = run("bare", [])
    assert not messages, messages
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), bare.state_dict().values(), strict=True))
    for opt, bare_opt in zip(t.optimizers, bare_t.optimizers, strict=True):
        assert str(opt.state_dict()) == str(bare_opt.state_dict())
    assert {e for c in t.callbacks if hasattr(c, "measured_epochs") for e in c.measured_epochs} == {0, 1, 2}


def test_notebook_style_repeated_fits_reuse_the_monitors(tmp_path):
    x, y = data()
    train = data(seed=1)
    callbacks = monitors((x, y), train)
    results = []
    for i in range(2):  # one cell run twice: the same callback objects, a fresh model and trainer
        torch.manual_seed(0)
        got, messages = measure_at_init(tmp_path / str(i), Classifier(mlp(IN, 3), lr=0.05), callbacks, train)
        results.append(got)
        assert not [m for m in messages if "could not" in m], messages
    assert results[0] == results[1] and len(results[0]) > 10


def test_compiled_module_with_bf16_mixed_is_measured_like_the_plain_float32_module(tmp_path):
    x, y = data()
    train = data(seed=1)

    def run(name: str, compiled: bool, with_monitors: bool = True, **kwargs: Any) -> tuple:
        torch.manual_seed(0)
        module = Classifier(mlp(IN, 3), lr=0.05)
        fitted = torch.compile(module, backend="eager") if compiled else module
        callbacks = monitors((x, y), train) if with_monitors else []
        t = trainer(tmp_path / name, callbacks, max_epochs=1, limit_train_batches=2, limit_val_batches=0, **kwargs)
        messages = fit(t, fitted, loaders(*train))
        return sensitivity_metrics(t), messages, module.state_dict()

    got, messages, state = run("compiled", True, precision="bf16-mixed")
    want, _, _ = run("plain", False)  # float32, not compiled, the same initial weights
    _, _, untouched = run("bare", True, with_monitors=False, precision="bf16-mixed")
    assert not messages, messages
    assert got == want and len(got) > 20  # measured outside autocast, through the original forward
    assert all(torch.equal(state[k], untouched[k]) for k in state)


# ---------------------------------------------------------------- dry runs, validate/test on a fresh trainer
def test_fast_dev_run_measures_nothing_says_so_once_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = data()
    train = data(seed=1)
    torch.manual_seed(0)
    t = pl.Trainer(fast_dev_run=True, callbacks=monitors((x, y), train, every_n_epochs=1), accelerator="cpu",
                   enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    messages = fit(t, Classifier(mlp(IN, 3), lr=0.05), loaders(*train), loaders(x, y))
    assert sensitivity_metrics(t) == {}
    assert len(messages) == 1 and "fast_dev_run" in messages[0], messages
    assert all(name in messages[0] for name in ("JacobianNormMonitor", "StiffnessMonitor", "TransitionMonitor"))
    assert list(Path(tmp_path).rglob("*.npz")) == []


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_validate_on_a_fresh_trainer_measures_the_groups_with_data(tmp_path, stage):
    x, y = data()
    torch.manual_seed(0)
    callbacks = [
        StiffnessMonitor(num_samples=N, num_distance_bins=4),
        JacobianNormMonitor(num_samples=N),
        TransitionMonitor(num_trajectories=3, num_points=30, splits=("val", "train"), num_samples=N),
    ]
    t = trainer(tmp_path, callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = getattr(t, stage)(Classifier(mlp(IN, 3), lr=0.05), loaders(x, y), verbose=False)[0]
    messages = [str(w.message) for w in caught if issubclass(w.category, SensitivityWarning)]
    split = "val" if stage == "validate" else "test"
    assert f"sensitivity/stiffness/{split}_{split}/cosine" in out
    assert f"sensitivity/jacobian_norm/{split}/mean" in out
    assert f"sensitivity/transitions/{split}/activation_mean" in out
    assert not any("train" in k.split("/")[2] for k in out if k.startswith("sensitivity/"))
    skipped = [m for m in messages if f"`trainer.{stage}` has no train data" in m]
    assert len(skipped) == 2, messages  # stiffness and transitions (the Jacobian's train set is optional)
    assert any("groups train_train, train_val" in m for m in skipped)
    assert not [m for m in messages if m not in skipped], messages


# ---------------------------------------------------------------- pickling and the single-machine DDP strategies
def test_monitors_pickle_before_and_after_a_measurement(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    x, y = data()
    train = data(seed=1)
    callbacks = monitors((x, y), train, every_n_epochs=1)
    for c in callbacks:
        pickle.loads(pickle.dumps(c))
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)  # the monitors keep its writer (weakly)
    t = trainer(tmp_path, callbacks, max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=logger)
    fit(t, Classifier(mlp(IN, 3), lr=0.05), loaders(*train))
    for c in callbacks:
        copy_ = pickle.loads(pickle.dumps(c))
        assert copy_.measured_epochs == c.measured_epochs == [0, 1]
        assert copy_.probe_sets.keys() == c.probe_sets.keys()
        assert torch.equal(copy_.probe_sets["val"].inputs, c.probe_sets["val"].inputs)


def ddp_fit(out: Path, strategy: str) -> str:
    """A 2-device CPU fit with the three monitors under ``strategy`` (run by ``tests/_ddp.py``, not by pytest)."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    common = {"num_samples": 16, "at_init": False}
    callbacks = [JacobianNormMonitor(**common), TransitionMonitor(num_trajectories=2, num_points=12, **common),
                 StiffnessMonitor(num_distance_bins=4, **common)]  # fmt: skip
    trainer = make_trainer(out, callbacks, max_epochs=1, devices=2, strategy=strategy, limit_train_batches=2,
                           limit_val_batches=1, logger=True, deterministic=False)  # fmt: skip
    trainer.fit(Classifier(mlp(6, 3), lr=0.05), loader, loader)
    return strategy


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_single_machine_ddp_strategies_run_the_monitors(tmp_path, strategy):
    run = run_distributed(ddp_fit, tmp_path / "out", strategy, launcher="lightning", timeout=240, cwd=tmp_path,
                          ranks_returning=(0,))  # the spawned/forked workers do not run `ddp_fit`
    assert run.results == {0: strategy}
    assert "could not produce" not in run.stderr, run.stderr[-4000:]
    files = sorted(p.relative_to(tmp_path / "out").parts[-2] for p in (tmp_path / "out").rglob("*.npz"))
    assert files == ["jacobian_norm", "stiffness", "transitions"]  # written once, by rank 0
