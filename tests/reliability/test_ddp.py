"""DDP: two CPU processes (gloo), all three monitors, no hang, single-process values, rank-0 output.

``ddp_script.main`` runs the fit in a subprocess (``tests/_ddp.py``; ``strategy="ddp"`` re-launches its command
line for rank 1, which must not be pytest). The test then checks, from the files it wrote:

- it finished within the timeout (no collective waited forever) and both ranks saw every measurement;
- the probe sets are identical on both ranks and equal to a single-process draw from the same datasets;
- every sensitivity value logged under DDP (each rank measures its shard of every probe set; TensorBoard scalars,
  artifact arrays, each rank's ``callback_metrics``)
  equals the value computed here, in one process, from the same weights and probe sets, to 1e-6;
- images, histograms, the TensorBoard event file and the artifacts exist once (rank 0), nothing else was written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _ddp import run_distributed
from helpers import ReliableData, ReliableModule, read_events

from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.logging import load_artifacts
from lightning_sensitivity.probes import draw_probe_set
from reliability import ddp_script
from reliability._helpers import all_monitors, report_figure

pytestmark = pytest.mark.slow

TIMEOUT = 240  # s; a healthy run takes ~30-60 s on 2 shared cores, a hang runs into this
TOLERANCE = 1e-6
EPOCHS = list(range(ddp_script.MAX_EPOCHS + 1))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    out = root / "out"
    run = run_distributed(ddp_script.main, out, launcher="lightning", timeout=TIMEOUT, cwd=root)
    records = {(rank, epoch): run.load(f"rank{rank}_epoch{epoch}.pt") for rank in (0, 1) for epoch in EPOCHS}
    report_figure("ddp: wall time of the 2-process fit (s)", round(run.wall_s, 1))
    return {"root": root, "out": out, "records": records, "log_dir": out / "tb" / "version_0"}


def single_process_probes() -> dict[str, dict[str, tuple]]:
    """The probe sets drawn here, in one process, from the datasets the DDP run used."""
    data = ReliableData()
    data.setup("fit")
    val = draw_probe_set(data.val_set, ddp_script.NUM_SAMPLES, seed=0)
    train = draw_probe_set(data.train_set, ddp_script.NUM_SAMPLES, seed=0)
    return {"val": val, "train": train}


def test_ran_on_two_gloo_processes_and_every_rank_measured(ddp_run):
    for (rank, epoch), record in ddp_run["records"].items():
        assert record["world_size"] == 2 and record["backend"] == "gloo", (rank, epoch)
        assert len(record["metrics"]) >= 25, (rank, epoch)
    for epoch in EPOCHS:
        # each rank computed its shard; the gathered results give every rank the same values
        assert ddp_run["records"][0, epoch]["metrics"] == ddp_run["records"][1, epoch]["metrics"]


def test_probe_sets_identical_across_ranks_and_to_a_single_process_draw(ddp_run):
    expected = single_process_probes()
    count = 0
    for (rank, epoch), record in ddp_run["records"].items():
        for monitor, probes in record["probes"].items():
            assert probes.keys() == ({"val"} if monitor == "TransitionMonitor" else {"val", "train"})
            for split, (indices, inputs, targets) in probes.items():
                assert torch.equal(indices, expected[split].indices), (rank, epoch, monitor, split)
                assert torch.equal(inputs, expected[split].inputs), (rank, epoch, monitor, split)
                assert torch.equal(targets, expected[split].targets), (rank, epoch, monitor, split)
                count += 1
    report_figure("ddp: probe sets compared (ranks x epochs x monitors x splits)", count)


def test_logged_values_equal_single_process_values(ddp_run):
    probes = single_process_probes()
    events = read_events(ddp_run["log_dir"])
    artifacts = {(a.quantity, a.epoch): a for a in load_artifacts(ddp_run["log_dir"])}
    worst, worst_relative, compared = 0.0, 0.0, 0
    for epoch in EPOCHS:
        record = ddp_run["records"][0, epoch]
        assert torch.equal(  # the ranks hold the same weights
            torch.cat([v.flatten().float() for v in record["state_dict"].values()]),
            torch.cat([v.flatten().float() for v in ddp_run["records"][1, epoch]["state_dict"].values()]),
        )
        module = ReliableModule(ddp_script.NET)
        module.load_state_dict(record["state_dict"])
        for monitor in all_monitors(num_samples=ddp_script.NUM_SAMPLES):
            needed = {s: probes[s] for s in (("val",) if type(monitor).__name__ == "TransitionMonitor" else probes)}
            result = monitor.compute(monitor.measured_model(module), needed, progress_factory("", False), epoch)
            artifact = artifacts[monitor.quantity, epoch]
            for key, value in result.scalars.items():
                logged = [e for e in events.Scalars(key) if e.step == record["step"]]
                assert len(logged) == 1, (key, epoch)  # written once, by rank 0
                for got in (logged[0].value, record["metrics"][key], ddp_run["records"][1, epoch]["metrics"][key]):
                    worst = max(worst, abs(got - value))
                    worst_relative = max(worst_relative, abs(got - value) / max(abs(value), 1e-12))
                    assert got == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (key, epoch)
                    compared += 1
            for key, value in result.arrays.items():
                expected = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
                got = np.asarray(artifact.arrays[key], dtype=np.float64)
                np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True, err_msg=key)
                finite = np.isfinite(expected)
                if finite.any():
                    worst = max(worst, float(np.max(np.abs(got[finite] - expected[finite]))))
                compared += int(expected.size)
    report_figure("ddp: values compared with the single-process computation", compared)
    report_figure("ddp: max abs difference DDP vs single process", worst)
    report_figure("ddp: max relative difference of a logged scalar", worst_relative)


def test_images_histograms_events_and_artifacts_written_once_by_rank_zero(ddp_run):
    log_dir = ddp_run["log_dir"]
    event_files = sorted(p.name for p in log_dir.glob("events.out.tfevents.*"))
    assert len(event_files) == 1, event_files
    events = read_events(log_dir)
    steps = sorted(ddp_run["records"][0, e]["step"] for e in EPOCHS)
    tags = events.Tags()
    images = [t for t in tags["images"] if t.startswith("sensitivity/")]
    histograms = [t for t in tags["histograms"] if t.startswith("sensitivity/")]
    assert len(images) >= 10 and len(histograms) == 3
    for tag in images:
        assert sorted(e.step for e in events.Images(tag)) == steps, tag
    for tag in histograms:  # not the measurement at initialisation once later ones exist (see callbacks/_loop.py)
        assert sorted(e.step for e in events.Histograms(tag)) == steps[1:], tag
    for tag in (t for t in tags["scalars"] if t.startswith("sensitivity/")):
        assert len({e.step for e in events.Scalars(tag)}) == len(events.Scalars(tag)), tag
    artifact_dir = log_dir / "sensitivity"
    found = sorted(str(p.relative_to(artifact_dir)) for p in artifact_dir.rglob("*") if p.is_file())
    expected = sorted(f"{q}/epoch_{e:04d}.npz" for q in ("jacobian_norm", "stiffness", "transitions") for e in EPOCHS)
    assert found == expected
    # nothing outside the logger's directory and the ranks' own record files
    written = sorted(str(p.relative_to(ddp_run["root"])) for p in ddp_run["root"].rglob("*") if p.is_file())
    others = [p for p in written if not p.startswith("out/tb/version_0/") and not p.startswith("out/rank")]
    assert others == [], others
    report_figure("ddp: images per tag per measurement", 1)
