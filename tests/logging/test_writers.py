"""Image/histogram/text writers against the real ``wandb`` (offline) and ``mlflow`` (SQLite store) packages.

No network: W&B runs offline with its directories under the test's tmp folder, MLflow uses a local SQLite store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_sensitivity.logging.writers import (
    MLflowImageWriter,
    TensorBoardImageWriter,
    WandbImageWriter,
    check_image,
    image_writers,
)

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

TAG = "sensitivity/stiffness/val_val/class_sign_matrix"
HIST = "sensitivity/jacobian_norm/val"


def offline_wandb_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(name, str(root / name.lower()))
        (root / name.lower()).mkdir(exist_ok=True)


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (12, 20, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def loggers(tmp_path_factory):
    """One W&B and one MLflow logger for the module (creating the MLflow store takes seconds)."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    root = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as mp:
        offline_wandb_env(mp, root)
        wb = WandbLogger(save_dir=str(root), offline=True, project="test")
        ml = MLFlowLogger(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_location=str(root / "artifacts"))
        yield root, wb, ml
        wb.experiment.finish()


def test_image_writers_pick_one_writer_per_image_logger(loggers, tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    _, wb, ml = loggers
    tb = TensorBoardLogger(str(tmp_path))
    writers = image_writers([CSVLogger(str(tmp_path)), tb, wb, ml])
    assert [type(w) for w in writers] == [TensorBoardImageWriter, WandbImageWriter, MLflowImageWriter]
    assert writers[0].writer is tb.experiment
    assert image_writers(None) == [] and image_writers([CSVLogger(str(tmp_path))]) == []
    with pytest.raises(TypeError, match="`loggers` expected an iterable"):
        image_writers(3)


def test_wandb_writes_images_histograms_and_text(loggers):
    root, wb, _ = loggers
    writer = WandbImageWriter(wb)
    image = picture(1)
    writer.write_image(TAG, image, 5)
    writer.write_histogram(HIST, np.array([1.0, 2.0, np.nan, 4.0]), 5)
    writer.write_histogram("sensitivity/empty", np.array([np.nan]), 5)  # nothing finite: nothing logged
    writer.write_text("sensitivity/config/X", "| a | <b> |", 0)
    run_dir = Path(wb.experiment.dir)
    assert run_dir.is_relative_to(root)
    files = sorted((run_dir / "media" / "images").rglob("*.png"))
    assert any(f.name.startswith("class_sign_matrix") for f in files)
    stored = np.asarray(Image.open(next(f for f in files if f.name.startswith("class_sign_matrix"))).convert("RGB"))
    np.testing.assert_array_equal(stored, image)
    summary = wb.experiment.summary
    assert summary[HIST]["_type"] == "histogram"
    assert "sensitivity/empty" not in list(summary.keys())
    assert summary["trainer/global_step"] == 0  # the text came last, at step 0
    html = next((run_dir / "media" / "html").rglob("*.html")).read_text()
    assert "&lt;b&gt;" in html


def artifact_files(ml, folder: str) -> list[Path]:
    run = ml.experiment.get_run(ml.run_id)
    root = Path(run.info.artifact_uri.removeprefix("file://"))
    return sorted(f for f in (root / folder).rglob("*") if f.is_file())


def test_mlflow_writes_images_histograms_and_text(loggers):
    root, _, ml = loggers
    writer = MLflowImageWriter(ml)
    image = picture(2)
    writer.write_image(TAG, image, 7)
    writer.write_image("odd tag: with [chars]", picture(3), 8)
    pngs = [f for f in artifact_files(ml, "images") if f.suffix == ".png"]
    ours = [f for f in pngs if f.name.startswith("sensitivity~stiffness~val_val~class_sign_matrix+step+7+")]
    assert len(ours) == 1 and ours[0].is_relative_to(root / "artifacts")
    np.testing.assert_array_equal(np.asarray(Image.open(ours[0]).convert("RGB")), image)
    assert any(f.name.startswith("odd tag_ with _chars_+step+8+") for f in pngs)
    # the latest picture of each tag under a short, readable name
    (latest,) = artifact_files(ml, "latest/stiffness")
    assert latest.relative_to(latest.parents[2]).as_posix() == "stiffness/val_val/class_sign_matrix.png"
    np.testing.assert_array_equal(np.asarray(Image.open(latest).convert("RGB")), image)

    values = np.array([0.5, 1.5, np.inf, 2.5, 2.5])
    writer.write_histogram(HIST, values, 7)
    (hist,) = [f for f in artifact_files(ml, "histograms") if f.suffix == ".json"]
    assert hist.name == "step_00000007.json" and hist.parent.name == "val"
    data = json.loads(hist.read_text())
    finite = values[np.isfinite(values)]
    assert data["count"] == 4 and sum(data["counts"]) == 4
    assert data["min"] == 0.5 and data["max"] == 2.5 and data["mean"] == pytest.approx(finite.mean())
    assert len(data["bin_edges"]) == len(data["counts"]) + 1

    writer.write_text("sensitivity/config/X", "| a | b |", 0)
    (text,) = artifact_files(ml, "text/sensitivity/config")
    assert text.read_text() == "| a | b |"


def test_tensorboard_writer(tmp_path):
    from helpers import read_events
    from torch.utils.tensorboard import SummaryWriter

    sw = SummaryWriter(str(tmp_path))
    writer = TensorBoardImageWriter(sw)
    writer.write_image(TAG, picture(4), 2)
    writer.write_histogram(HIST, np.array([1.0, np.nan, 3.0]), 2)
    writer.write_histogram("sensitivity/empty", np.array([np.nan]), 2)
    writer.write_text("sensitivity/config/X", "hello", 0)
    sw.close()
    acc = read_events(tmp_path)
    (event,) = acc.Images(TAG)
    assert event.step == 2 and (event.width, event.height) == (20, 12)
    # the stored PNG decodes to the array written, pixel for pixel
    import io

    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")), picture(4))
    (hist,) = acc.Histograms(HIST)
    assert hist.histogram_value.num == 2 and hist.histogram_value.max == 3.0
    assert acc.Tags()["histograms"] == [HIST]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda w: w.write_image(TAG, np.zeros((4, 4)), 0), ValueError, r"\[H, W, 3\] uint8"),
        (lambda w: w.write_image(TAG, np.zeros((4, 4, 3), np.float32), 0), ValueError, "uint8"),
        (lambda w: w.write_image(TAG, [[0]], 0), TypeError, "`image` expected a numpy array"),
        (lambda w: w.write_image("", picture(0), 0), TypeError, "`tag`"),
        (lambda w: w.write_image(TAG, picture(0), -1), ValueError, "`step`"),
        (lambda w: w.write_histogram(TAG, ["a"], 0), TypeError, "`values`"),
        (lambda w: w.write_text(TAG, 3, 0), TypeError, "`text` expected a str"),
    ],
)
def test_bad_arguments(tmp_path, call, error, match):
    class Recorder:  # a SummaryWriter stand-in; nothing must reach it
        def __getattr__(self, name):
            raise AssertionError(f"{name} called despite bad input")

    with pytest.raises(error, match=match):
        call(TensorBoardImageWriter(Recorder()))


def test_errors_propagate():
    class Broken:
        def add_image(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        TensorBoardImageWriter(Broken()).write_image(TAG, picture(0), 0)
    assert check_image(picture(0)).shape == (12, 20, 3)


def test_no_network_settings_hold():
    # a stray WANDB_MODE=online here would mean a leak
    assert os.environ.get("WANDB_MODE") in (None, "offline", "dryrun", "disabled")  # WandbLogger sets "dryrun"


@pytest.mark.slow
def test_fit_with_tensorboard_wandb_mlflow_and_csv(tmp_path, monkeypatch):
    """A real fit with four loggers at once: every image logger gets the images, CSV the scalars."""
    from helpers import Classifier, TinyData, make_trainer, read_events
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor

    offline_wandb_env(monkeypatch, tmp_path)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0, default_hp_metric=False)
    wb = WandbLogger(save_dir=str(tmp_path), offline=True, project="e2e")
    ml = MLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts"))
    csv = CSVLogger(str(tmp_path), name="csv", version=0)
    monitors = [
        JacobianNormMonitor(num_samples=40, figures="all"),
        StiffnessMonitor(num_samples=40, num_distance_bins=6, groups=("val_val",), figures="all"),
    ]
    trainer = make_trainer(tmp_path, monitors, logger=[tb, wb, ml, csv], max_epochs=1)
    try:
        trainer.fit(Classifier(), datamodule=TinyData(n_train=100, n_val=50))
    finally:
        wb.experiment.finish()
    assert [m._warned for m in monitors] == [set(), set()]  # no output (or other) failure was reported

    expected = {
        "sensitivity/jacobian_norm/val/per_class",
        "sensitivity/stiffness/val_val/class_sign_matrix",
        "sensitivity/stiffness/val_val/by_distance",
    }
    tb_images = set(read_events(tb.log_dir).Tags()["images"])
    assert expected <= tb_images
    wb_images = {
        str(p.relative_to(Path(wb.experiment.dir) / "media" / "images").parent / p.name.rsplit("_", 2)[0])
        for p in (Path(wb.experiment.dir) / "media" / "images").rglob("*.png")
    }
    assert expected <= wb_images
    ml_images = {p.name.split("+")[0].replace("~", "/") for p in artifact_files(ml, "images") if p.suffix == ".png"}
    assert expected <= ml_images
    assert artifact_files(ml, "histograms/sensitivity/jacobian_norm/val")
    metrics = (Path(csv.log_dir) / "metrics.csv").read_text()
    assert "sensitivity/jacobian_norm/val/mean" in metrics
    # the artifact NPZ files go to the first logger's folder only
    assert list(Path(tb.log_dir).rglob("*.npz"))


def test_importing_the_logging_package_imports_no_logger_library():
    import subprocess
    import sys

    code = (
        "import sys, lightning_sensitivity.logging as m; m.image_writers([]);"
        "print(sorted(k for k in ('wandb', 'mlflow', 'lightning') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
