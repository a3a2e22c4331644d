"""Sharded parameters: every monitor measures through the sharded model (FSDP2); under FSDP1 stiffness says why not.

- FSDP2 on this CPU machine: ``fsdp2_script.py`` runs a 2-process gloo fit with
  ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` and ``fully_shard`` on every layer; the
  values measured at initialisation (Jacobian norms, transitions and stiffness) equal single-process values of the
  same initial weights to 1e-6, on both ranks, each rank having evaluated half of every probe set.
- Lightning's ``FSDPStrategy`` (FSDP1) needs CUDA: the ``cuda`` tests run it on one GPU (skipped without one).
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from _ddp import run_distributed
from helpers import ReliableData, ReliableModule, sensitivity_metrics
from torch import nn

from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import jacobian_norm, loss_gradient_gram
from lightning_sensitivity.functional._sharding import has_sharded_parameters
from lightning_sensitivity.probes import draw_probe_set
from reliability import fsdp2_script as script
from reliability._helpers import all_monitors, make_trainer, report_figure

TIMEOUT = 120  # s; a healthy run takes ~20-30 s on 2 shared cores
TOLERANCE = 1e-6
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDPStrategy needs a CUDA device")


def expected_values(state_dict: dict, num_samples: int, device: str = "cpu", monitors: int = 3) -> dict[str, float]:
    """Scalars of the first ``monitors`` of :func:`all_monitors` (Jacobian norms, transitions, stiffness) of the same
    weights and probe sets, in one process."""
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
    for monitor in all_monitors(num_samples=num_samples)[:monitors]:
        needed = {"val": probes["val"]} if type(monitor).__name__ == "TransitionMonitor" else probes
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
    run = run_distributed(script.main, out, launcher="lightning", timeout=TIMEOUT)
    report_figure("sharded: wall time of the 2-process FSDP2 fit (s)", round(run.wall_s, 1))
    return {r: run.load(f"rank{r}.pt") for r in (0, 1)}


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
def test_fsdp2_ranks_share_the_probe_sets_and_no_monitor_is_disabled(fsdp2_run):
    half, joint = script.NUM_SAMPLES // 2, 2 * script.NUM_SAMPLES
    for rank, record in fsdp2_run.items():
        # Stiffness: the layer factors of each rank's half of the joint set, then each rank's half of the Gram rows.
        assert record["shards"] == {"JacobianNormMonitor": [(16, half), (16, half)], "TransitionMonitor": [(3, 2)],
                                    "StiffnessMonitor": [(joint, half * 2)] * 2}, rank  # fmt: skip
        assert not [w for w in record["warnings"] if "is disabled" in w or "could not" in w], rank
    assert any(k.startswith("sensitivity/stiffness/") for k in fsdp2_run[0]["metrics"])


@pytest.mark.slow
def test_fsdp2_grams_of_real_architectures_equal_single_process_grams(tmp_path):
    # Text classifier (token + position embeddings, attention), an encoder, tied weights, a block used twice.
    from reliability import fsdp2_gram_script

    records = run_distributed(fsdp2_gram_script.main, tmp_path, launcher="gloo", timeout=TIMEOUT).results
    after_on_rank_0 = records[0]["after"]
    worst = 0.0
    for r in (0, 1):
        record = dict(records[r])
        outcome, after = record.pop("one-rank check failure"), record.pop("after")
        # rank 1's injected failure is raised after the forwards rank 0 runs too; the next calls pair up on both
        assert outcome == "computed" if r == 0 else "injected check failure" in outcome, (r, outcome)
        assert after == pytest.approx(after_on_rank_0)
        assert set(record) == {"text", "encoder", "mlp", "tied_weights", "shared_block"}
        for name, entry in record.items():
            assert entry["sharded"] and all(entry["grads"]), (r, name)
            for kind, difference in entry["difference"].items():
                assert difference <= 1e-5, (r, name, kind, difference)  # relative to the Gram's largest entry
                worst = max(worst, difference)
    report_figure("sharded: FSDP2 Gram, largest relative difference from one process (5 models)", worst)


@pytest.mark.slow
def test_fsdp2_text_model_through_embed_fn_equals_single_process(tmp_path):
    # The README's text recipe: `embed_fn` calls `m.model.embed` outside the sharded root's forward.
    from reliability import fsdp2_text_script as text

    run = run_distributed(text.main, tmp_path, launcher="lightning", timeout=TIMEOUT)
    records = [run.load(f"rank{r}.pt") for r in (0, 1)]
    module = text.TextModule(shard=False)
    module.load_state_dict(records[0]["state_dict"])
    expected: dict[str, float] = {}
    for monitor, probes in zip(text.text_monitors(), records[0]["probes"], strict=True):
        measured = monitor.compute(monitor.measured_model(module), monitor._inputs_for(module, probes),
                                   progress_factory("", False), 0)  # fmt: skip
        expected.update(measured.scalars)
    assert {k.split("/")[1] for k in expected} == {"jacobian_norm", "transitions", "stiffness"}
    worst = 0.0
    for rank, record in enumerate(records):
        assert record["sharded"], rank
        assert not [w for w in record["warnings"] if "could not" in w or "is disabled" in w], rank
        worst = max(worst, assert_values(record["metrics"], expected))
    report_figure("sharded: FSDP2 text model via embed_fn, scalars compared with one process", len(expected))
    report_figure("sharded: FSDP2 text model via embed_fn, max abs difference", worst)


def test_plain_models_are_not_sharded_and_the_gram_refuses_sharded_ones():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert not has_sharded_parameters(model)

    class FlatParameter(nn.Parameter):  # FSDP1's flat parameters are recognised by their class name
        pass

    model[0].weight = FlatParameter(model[0].weight.detach().clone())
    assert has_sharded_parameters(model)
    with pytest.raises(ValueError, match="`model` expected parameters held whole .* got FSDP1 flat parameters"):
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


class Recorder(pl.Callback):
    """The sensitivity values measured at initialisation (in ``callback_metrics`` when training starts)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.metrics = sensitivity_metrics(trainer)


def fsdp1_fit(tmp_path, strategy) -> tuple[dict, dict, list]:
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
    assert_values(metrics, expected_values(initial, script.NUM_SAMPLES, "cuda", monitors=2))
    disabled = [m for m in messages if "is disabled" in m]
    assert len(disabled) == 1 and disabled[0].startswith("StiffnessMonitor") and "FSDPStrategy" in disabled[0]


@pytest.mark.cuda
@pytest.mark.slow
@cuda
def test_fsdp2_on_a_gpu_measures_every_quantity_exactly(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy

    class Sharded(ReliableModule):
        def configure_model(self) -> None:
            from torch.distributed.fsdp import fully_shard

            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=self.device_mesh["data_parallel"])
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    torch.manual_seed(0)
    module = Sharded(script.NET)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [*all_monitors(num_samples=script.NUM_SAMPLES, every_n_epochs=None),
                                      recorder], accelerator="gpu", devices=1,
                           strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), max_epochs=1,
                           limit_train_batches=2, deterministic=False)  # fmt: skip
    trainer.fit(module, datamodule=ReliableData())
    assert_values(recorder.metrics, expected_values(initial, script.NUM_SAMPLES, "cuda"))  # stiffness included
