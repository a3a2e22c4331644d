"""Sharded parameters: Jacobian norms and transitions measure through the sharded model; stiffness says why not.

- FSDP2 on this CPU machine: ``fsdp2_script.py`` runs a 2-process gloo fit with
  ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` and ``fully_shard`` on every layer; the
  values measured at initialisation equal single-process values of the same initial weights to 1e-6, on both ranks,
  each rank having evaluated half of every probe set.
- Lightning's ``FSDPStrategy`` (FSDP1) needs CUDA: the ``cuda`` tests run it on one GPU (skipped without one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import jacobian_norm, loss_gradient_gram
from lightning_sensitivity.functional._model import has_sharded_parameters
from lightning_sensitivity.probes import draw_probe_set
from reliability import fsdp2_script as script
from reliability._helpers import ReliableData, ReliableModule, all_monitors, make_trainer, report_figure

TIMEOUT = 120  # s; a healthy run takes ~20-30 s on 2 shared cores
TOLERANCE = 1e-6
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDPStrategy needs a CUDA device")


def expected_values(state_dict: dict, num_samples: int, device: str = "cpu") -> dict[str, float]:
    """Jacobian-norm and transition scalars of the same weights and probe sets, in one process."""
    data = ReliableData()
    data.setup("fit")
    probes = {
        "val": draw_probe_set(data.val_set, num_samples, seed=0).to(device),
        "train": draw_probe_set(data.train_set, num_samples, seed=0).to(device),
    }
    module = ReliableModule(script.NET)
    module.load_state_dict(state_dict)
    module.to(device)
    values: dict[str, float] = {}
    for monitor in all_monitors(num_samples=num_samples)[:2]:
        needed = probes if type(monitor).__name__ == "JacobianNormMonitor" else {"val": probes["val"]}
        values.update(monitor.compute(monitor.measured_model(module), needed, progress_factory("", False), 0).scalars)
    return values


def assert_values(got: dict[str, float], expected: dict[str, float]) -> float:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), key
    return max(abs(got[k] - v) for k, v in expected.items())


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("fsdp2")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, script.__file__, str(out)], cwd=out, env=env, timeout=TIMEOUT,
                              capture_output=True, text=True)  # fmt: skip
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the FSDP2 run did not finish within {TIMEOUT} s (a hang?):\n{(err.stderr or b'')[-3000:]!r}")
    report_figure("sharded: wall time of the 2-process FSDP2 fit (s)", round(time.monotonic() - start, 1))
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)}


@pytest.mark.slow
def test_fsdp2_values_at_initialisation_equal_single_process_values(fsdp2_run):
    expected = expected_values(fsdp2_run[0]["state_dict"], script.NUM_SAMPLES)
    worst = 0.0
    for rank, record in fsdp2_run.items():
        assert record["world_size"] == 2 and record["sharded"], rank  # the parameters were DTensor shards
        worst = max(worst, assert_values(record["metrics"], expected))
        assert all(record["grads"]), rank  # no parameter `.grad` was written by the measurement
    report_figure("sharded: FSDP2 scalars compared with one process", len(expected))
    report_figure("sharded: FSDP2 max abs difference", worst)


@pytest.mark.slow
def test_fsdp2_ranks_share_the_probe_sets_and_stiffness_says_why_it_is_off(fsdp2_run):
    half = script.NUM_SAMPLES // 2
    for rank, record in fsdp2_run.items():
        assert record["shards"] == {"JacobianNormMonitor": [(16, half), (16, half)], "TransitionMonitor": [(3, 2)],
                                    "StiffnessMonitor": []}, rank  # fmt: skip
    messages = [w for w in fsdp2_run[0]["warnings"] if "is disabled" in w]
    assert len(messages) == 1 and messages[0].startswith("StiffnessMonitor")
    assert "ModelParallelStrategy" in messages[0] and "per-example gradients" in messages[0]


def test_plain_models_are_not_sharded_and_the_gram_refuses_sharded_ones():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert not has_sharded_parameters(model)

    class FlatParameter(nn.Parameter):  # FSDP1's flat parameters are recognised by their class name
        pass

    model[0].weight = FlatParameter(model[0].weight.detach().clone())
    assert has_sharded_parameters(model)
    with pytest.raises(ValueError, match="`model` expected parameters held whole"):
        loss_gradient_gram(model, torch.randn(2, 3), torch.tensor([0, 1]))


def test_a_sharded_model_is_called_as_it_is_and_gives_the_same_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(5, 6)
    expected = jacobian_norm(model, x)

    class FlatParameter(nn.Parameter):
        pass

    calls = []
    model[1].weight = FlatParameter(model[1].weight.detach().clone())
    model.register_forward_pre_hook(lambda m, a: calls.append(1))  # functional_call would run it too: count calls
    torch.testing.assert_close(jacobian_norm(model, x), expected, rtol=1e-6, atol=1e-6)
    assert calls and all(p.grad is None for p in model.parameters())


def fsdp1_fit(tmp_path, strategy) -> tuple[dict, dict, list]:
    from lightning.pytorch import Callback

    class Recorder(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("sensitivity/")}

    torch.manual_seed(0)
    module = ReliableModule(script.NET)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [*all_monitors(num_samples=script.NUM_SAMPLES, every_n_epochs=None), recorder],
                           accelerator="gpu", devices=1, strategy=strategy, max_epochs=1, limit_train_batches=2,
                           deterministic=False)  # fmt: skip
    with pytest.warns(Warning) as record:
        trainer.fit(module, datamodule=ReliableData())
    return recorder.metrics, initial, [str(w.message) for w in record]


@pytest.mark.cuda
@pytest.mark.slow
@cuda
def test_fsdp1_on_a_gpu_measures_the_input_gradient_quantities_exactly(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy

    metrics, initial, messages = fsdp1_fit(tmp_path, FSDPStrategy())
    assert_values(metrics, expected_values(initial, script.NUM_SAMPLES, "cuda"))
    disabled = [m for m in messages if "is disabled" in m]
    assert len(disabled) == 1 and disabled[0].startswith("StiffnessMonitor") and "FSDPStrategy" in disabled[0]


@pytest.mark.cuda
@pytest.mark.slow
@cuda
def test_fsdp2_on_a_gpu_measures_the_input_gradient_quantities_exactly(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy

    class Sharded(ReliableModule):
        def configure_model(self) -> None:
            from torch.distributed.fsdp import fully_shard

            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=self.device_mesh["data_parallel"])
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    from lightning.pytorch import Callback

    class Recorder(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("sensitivity/")}

    torch.manual_seed(0)
    module = Sharded(script.NET)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [*all_monitors(num_samples=script.NUM_SAMPLES, every_n_epochs=None)[:2],
                                      recorder], accelerator="gpu", devices=1,
                           strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), max_epochs=1,
                           limit_train_batches=2, deterministic=False)  # fmt: skip
    trainer.fit(module, datamodule=ReliableData())
    assert_values(recorder.metrics, expected_values(initial, script.NUM_SAMPLES, "cuda"))
