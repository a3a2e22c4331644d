"""DDP shares each measurement between the ranks, and a failure on one rank hangs none.

``trainer.validate`` on two CPU processes (gloo) with failures injected on rank 1 (``ddp_validate_script.main``, run
by ``tests/_ddp.py`` for the reason given in ``test_ddp.py``):

- each rank evaluates half of every probe set (padded shards of equal size) and both log the same values, equal to
  a single-process computation from the same weights to 1e-6;
- a failure on rank 1 -- inside its shard, or before its first shared call -- hangs no rank: the quantity is logged
  by neither rank, the other monitors are unaffected, and the next call measures everything again;
- Lightning's "use sync_dist=True" warning is raised for no sensitivity key, with no process-wide warning filter.
"""

from __future__ import annotations

import math

import pytest
from _ddp import run_distributed
from helpers import ReliableData, ReliableModule

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.probes import draw_probe_set
from reliability import ddp_validate_script as script
from reliability._helpers import report_figure

pytestmark = pytest.mark.slow

TIMEOUT = 120  # s; a healthy run takes ~20-30 s on 2 shared cores, a hang runs into this
MONITORS = ("JacobianNormMonitor", "FailingTransitions", "StiffnessMonitor")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ddp_sharing")
    ran = run_distributed(script.main, out, launcher="lightning", timeout=TIMEOUT)
    report_figure("ddp sharing: wall time of the 2-process validate run (s)", round(ran.wall_s, 1))
    return ran.results


def expected_values(state_dict: dict) -> dict[str, float]:
    data = ReliableData()
    data.setup("fit")
    probes = {
        "val": draw_probe_set(data.val_set, script.NUM_SAMPLES, seed=0),
        "train": draw_probe_set(data.train_set, script.NUM_SAMPLES, seed=0),
    }
    module = ReliableModule(script.NET)
    module.load_state_dict(state_dict)
    common = {"num_samples": script.NUM_SAMPLES}
    monitors = [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=6, num_points=12, **common),
        StiffnessMonitor(groups=("val_val",), num_distance_bins=6, **common),
    ]
    values: dict[str, float] = {}
    for monitor in monitors:
        needed = probes if isinstance(monitor, JacobianNormMonitor) else {"val": probes["val"]}
        result = monitor.compute(monitor.measured_model(module), needed, progress_factory("", False), 0)
        values.update(result.scalars)
    return values


def test_each_rank_evaluates_its_half_of_every_probe_set(run):
    for record in run.values():
        assert record["world_size"] == 2
        shards = record["calls"]["none"]["shards"]
        assert shards["JacobianNormMonitor"] == [(script.NUM_SAMPLES, script.NUM_SAMPLES // 2)] * 2  # val, train
        assert shards["FailingTransitions"] == [(6, 3)]  # trajectories
        # stiffness: the layer factors of each rank's examples, then its block of Gram rows
        assert shards["StiffnessMonitor"] == [(script.NUM_SAMPLES, script.NUM_SAMPLES // 2)] * 2


def test_both_ranks_log_the_single_process_values(run):
    expected = expected_values(run[0]["state_dict"])
    got0, got1 = run[0]["calls"]["none"]["metrics"], run[1]["calls"]["none"]["metrics"]
    assert got0 == got1
    assert set(got0) == {k for k, v in expected.items() if math.isfinite(v)}
    worst = 0.0
    for key, value in got0.items():
        assert value == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key
        worst = max(worst, abs(value - expected[key]))
    report_figure("ddp sharing: scalars compared with the single-process computation", len(got0))
    report_figure("ddp sharing: max abs difference of a scalar", worst)


@pytest.mark.parametrize("mode", ["shard", "early"])
def test_a_failure_on_rank_one_drops_that_quantity_on_every_rank_and_nothing_hangs(run, mode):
    full = run[0]["calls"]["none"]["metrics"]
    for rank in (0, 1):
        metrics = run[rank]["calls"][mode]["metrics"]
        assert set(metrics) == {k for k in full if not k.startswith("sensitivity/transitions/")}, (rank, mode)
    assert run[0]["calls"][mode]["metrics"] == run[1]["calls"][mode]["metrics"]
    # rank 1 dropped out before its first shared call in "early" mode, and the others did not wait for it
    assert run[1]["calls"][mode]["shards"]["FailingTransitions"] == ([] if mode == "early" else [(6, 3)])


def test_no_sync_dist_warning_for_sensitivity_keys(run):
    for rank, record in run.items():
        for mode, call in record["calls"].items():
            sync = [m for _, m in call["warnings"] if "sync_dist=True" in m and "sensitivity/" in m]
            assert sync == [], (rank, mode, sync)
    # the module's own unsynced `val/loss` does trigger it: the warnings were being recorded
    assert any("sync_dist=True" in m for _, m in run[0]["calls"]["shard"]["warnings"])
    peer = [m for _, m in run[0]["calls"]["shard"]["warnings"] if "FailingTransitions" in m]
    assert len(peer) == 1 and "rank(s) [1]" in peer[0], peer


def test_per_rank_time_is_reported(run):
    for rank, record in run.items():
        for name in MONITORS:
            report_figure(f"ddp sharing: rank {rank} {name} shared/single time (48 examples, tiny MLP)",
                          round(record["shared_s"][name] / record["single_s"][name], 2))  # fmt: skip
