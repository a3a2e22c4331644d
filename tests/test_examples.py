"""Every example runs end to end in a fast mode, as a user would start it, and leaves the expected TensorBoard tags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import SHARED_DATA, load_module, read_events
from models._synthetic import write_cifar10, write_cifar100

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 600  # a loaded 2-core machine needs ~1 min per run, mostly imports

MODULE_SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "generalization_gap/loss", "generalization_gap/acc"}
SENSITIVITY_SCALARS = {
    "sensitivity/jacobian_norm/val/mean",
    "sensitivity/jacobian_norm/train/mean",
    "sensitivity/transitions/val/activation_mean",
    "sensitivity/transitions/val/region_changes_mean",
    "sensitivity/stiffness/train_train/sign",
    "sensitivity/stiffness/train_val/cosine",
    "sensitivity/stiffness/val_val/sign",
}
STIFFNESS_IMAGES = {"sensitivity/stiffness/train_val/class_sign_matrix", "sensitivity/stiffness/val_val/by_distance"}


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def tags(log_root: Path) -> dict[str, set[str]]:
    """Scalar and image tags of the single run under ``log_root`` (a ``lightning_logs`` folder)."""
    versions = sorted(log_root.glob("version_*"))
    assert len(versions) == 1, f"expected one run under {log_root}, found {versions}"
    found = read_events(versions[0]).Tags()
    return {"scalars": set(found["scalars"]), "images": set(found["images"])}


def fast_config(source: Path, target: Path, **data_args) -> Path:
    """A copy of a shipped config shrunk to a smoke run (one epoch, few batches, small probe sets)."""
    config = yaml.safe_load(source.read_text())
    config["trainer"].update(
        max_epochs=1, limit_train_batches=3, limit_val_batches=2, enable_checkpointing=False, enable_progress_bar=False
    )
    for callback in config["trainer"]["callbacks"]:
        init_args = callback.setdefault("init_args", {})
        init_args["num_samples"] = 16
        if callback["class_path"].endswith("TransitionMonitor"):
            init_args.update(num_trajectories=2, num_points=16)
    config["data"]["init_args"].update(data_args)
    target.write_text(yaml.safe_dump(config))
    return target


def test_quickstart_digits(tmp_path):
    out = run([str(EXAMPLES / "quickstart.py"), "--fast"], tmp_path)
    assert "tensorboard --logdir lightning_logs" in out
    found = tags(tmp_path / "lightning_logs")
    assert MODULE_SCALARS | SENSITIVITY_SCALARS | {"test/acc"} <= found["scalars"]
    assert STIFFNESS_IMAGES <= found["images"]


def test_quickstart_cifar100_cnn_superclasses(tmp_path):
    write_cifar100(tmp_path / "data")
    out = run(
        [str(EXAMPLES / "quickstart.py"), "--fast", "--dataset", "cifar100", "--model", "cnn", "--data-dir", "data",
         "--log-dir", "logs"],
        tmp_path,
    )  # fmt: skip
    assert "tensorboard --logdir logs/lightning_logs" in out
    found = tags(tmp_path / "logs" / "lightning_logs")
    assert MODULE_SCALARS | SENSITIVITY_SCALARS <= found["scalars"]
    assert "sensitivity/stiffness/train_val/superclass_sign_matrix" in found["images"]


def test_quickstart_missing_data_explains(tmp_path):
    # in-process: the error comes before any training, a subprocess would only add an import of Lightning
    quickstart = load_module(EXAMPLES / "quickstart.py", "quickstart_example")
    with pytest.raises(FileNotFoundError, match="download=True"):
        quickstart.main(["--fast", "--dataset", "mnist", "--data-dir", str(tmp_path / "x"), "--log-dir", str(tmp_path)])


def test_existing_trainer(tmp_path):
    run([str(EXAMPLES / "existing_trainer.py")], tmp_path)
    found = tags(tmp_path / "lightning_logs")
    expected = {"sensitivity/jacobian_norm/val/mean", "sensitivity/jacobian_norm/train/mean", "val_loss"}
    assert expected <= found["scalars"]


def test_cli_digits(tmp_path):
    config = fast_config(EXAMPLES / "configs" / "digits_mlp.yaml", tmp_path / "fast.yaml")
    run([str(EXAMPLES / "cli.py"), "fit", "--config", str(config)], tmp_path)
    found = tags(tmp_path / "lightning_logs")
    assert MODULE_SCALARS | SENSITIVITY_SCALARS <= found["scalars"]
    assert STIFFNESS_IMAGES <= found["images"]


def test_cli_cifar10_cnn(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=12)
    config = fast_config(EXAMPLES / "configs" / "cifar10_cnn.yaml", tmp_path / "fast.yaml", val_split=0.2)
    run([str(EXAMPLES / "cli.py"), "fit", "--config", str(config), "--data.data_dir", "data"], tmp_path)
    found = tags(tmp_path / "lightning_logs")
    assert MODULE_SCALARS | SENSITIVITY_SCALARS <= found["scalars"]


@pytest.mark.data
def test_cli_mnist_real_data(tmp_path):
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {SHARED_DATA}")
    config = fast_config(
        EXAMPLES / "configs" / "mnist_mlp.yaml", tmp_path / "fast.yaml", data_dir=str(SHARED_DATA), train_subset=512
    )
    run([str(EXAMPLES / "cli.py"), "fit", "--config", str(config)], tmp_path)
    found = tags(tmp_path / "lightning_logs")
    assert MODULE_SCALARS | SENSITIVITY_SCALARS <= found["scalars"]


def test_custom_quantity(tmp_path):
    # in-process, to reach the monitor's probe set and the trained model for an independent recomputation
    import numpy as np
    import torch

    from lightning_sensitivity import keys
    from lightning_sensitivity.logging import load_artifacts, sensitivity_layout

    example = load_module(EXAMPLES / "custom_quantity.py", "custom_quantity_example")
    trainer = example.main(["--fast", "--log-dir", str(tmp_path)])
    name = "prediction_entropy"
    expected = {f"sensitivity/{name}/{split}/{stat}" for split in ("val", "train") for stat in ("mean", "p90")}
    found = tags(tmp_path / "lightning_logs")
    assert {t for t in found["scalars"] if t.startswith("sensitivity/")} == expected
    # the declaration: every logged tag and array is declared, and the dashboard charts the quantity
    assert all(any(keys.matches(t, s) for s in keys.SCHEMA[name]) for t in expected)
    assert "Prediction entropy" in sensitivity_layout()

    # The entropy by its definition, on the monitor's val probe set with the final weights (nothing trains after the
    # last measurement): -sum p log p of the softmax, in float64.
    (monitor,) = [c for c in trainer.callbacks if isinstance(c, example.PredictionEntropyMonitor)]
    probe = monitor.probe_sets["val"]
    module = trainer.lightning_module.eval()
    with torch.no_grad():
        p = module(probe.inputs).double().softmax(dim=1).numpy()
    entropy = -(p * np.log(p)).sum(axis=1)
    assert len(entropy) == 64 and (entropy >= 0).all()
    last = load_artifacts(trainer.logger.log_dir, name)[-1]
    assert last.epoch == 1 and set(last.arrays) <= set(keys.ARTIFACT_ARRAYS[name])
    np.testing.assert_allclose(last.arrays["val_entropy"], entropy, rtol=1e-5, atol=1e-6)
    metrics = trainer.callback_metrics
    assert float(metrics[f"sensitivity/{name}/val/mean"]) == pytest.approx(entropy.mean(), rel=1e-5, abs=1e-6)
    assert float(metrics[f"sensitivity/{name}/val/p90"]) == pytest.approx(
        np.percentile(entropy, 90), rel=1e-5, abs=1e-6
    )


def test_custom_quantity_under_two_process_ddp(tmp_path):
    # The example's monitor on two CPU processes (gloo; Lightning re-runs the example's command line for rank 1):
    # the measurement at initialisation (same seed, same weights, same probe sets) equals the single-process one.
    import numpy as np

    from lightning_sensitivity.logging import load_artifacts

    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "custom_quantity.py"), "--fast", "--devices", str(devices),
             "--log-dir", str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        (log_dir,) = (out / "lightning_logs").iterdir()  # rank 0 alone writes
        runs[devices] = load_artifacts(log_dir, "prediction_entropy")
    assert [a.epoch for a in runs[2]] == [a.epoch for a in runs[1]] == [0, 1]
    single, shared = runs[1][0].arrays, runs[2][0].arrays
    assert set(shared) == set(single) and len(shared["val_entropy"]) == 64
    for key in single:
        np.testing.assert_allclose(shared[key], single[key], rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_text_classifier_example_measures_jacobians_with_respect_to_embeddings(tmp_path):
    """The text example on a tiny CSV (no corpus package needed): every monitor logs, and the val Jacobian norm is
    that of the embedded probe set through the classifier with its mask, recomputed one example at a time."""
    import csv

    import torch
    from oracles import embedding_jacobian_norm_loop

    words = ["good", "great", "fine", "bad", "awful", "dull", "plot", "actor", "scene", "music"]
    gen = torch.Generator().manual_seed(0)
    with open(tmp_path / "tiny.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "text"])
        for i in range(240):
            length = int(torch.randint(3, 12, (1,), generator=gen))
            picks = torch.randint(0, len(words), (length,), generator=gen).tolist()
            label = "fresh" if sum(p < 3 for p in picks) >= sum(3 <= p < 6 for p in picks) else "rotten"
            writer.writerow([label, " ".join(words[p] for p in picks) + f" r{i}"])
    example = load_module(EXAMPLES / "text_classifier.py", "text_example")
    trainer = example.main(["--fast", "--csv", str(tmp_path / "tiny.csv"), "--log-dir", str(tmp_path)])
    found = {t for t in tags(tmp_path / "lightning_logs")["scalars"] if t.startswith("sensitivity/")}
    for quantity in ("jacobian_norm", "transitions", "stiffness"):
        assert any(t.startswith(f"sensitivity/{quantity}/") for t in found), quantity
    monitor = next(c for c in trainer.callbacks if type(c).__name__ == "JacobianNormMonitor")
    probe = monitor.probe_sets["val"]
    expected = embedding_jacobian_norm_loop(
        trainer.lightning_module.model, probe.inputs, probe.model_kwargs["attention_mask"]
    )
    logged = float(trainer.callback_metrics["sensitivity/jacobian_norm/val/mean"])
    assert logged == pytest.approx(float(expected.mean()), rel=1e-4)
