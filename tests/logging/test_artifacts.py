"""Artifact files: round trip, ordering, atomic replacement and argument checks."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest
import torch

from lightning_sensitivity.logging import Artifact, load_artifacts, save_artifact, stiffness_key
from lightning_sensitivity.logging import artifacts as artifacts_module


def test_round_trip_arrays_scalars_and_meta(tmp_path):
    norms = torch.tensor([0.5, 1.25, 3.0])
    matrix = torch.tensor([[1.0, float("nan")], [-0.5, 0.25]], dtype=torch.float64)
    path = save_artifact(
        tmp_path,
        "stiffness",
        epoch=3,
        step=120,
        arrays={
            "val_norms": norms,
            "val_correct": torch.tensor([True, False, True]),
            "val_labels": np.array([0, 1, 1]),
            "train_val/class_sign": matrix,
            "train_val/critical_length": math.nan,
            "half": torch.tensor([1.5], dtype=torch.float16),
            "count": 7,
        },
        meta={"class_names": ["cat", "dog"], "num_points": np.int64(128), "seed": torch.tensor(4)},
    )
    assert path == tmp_path / "sensitivity" / "stiffness" / "epoch_0003.npz"
    (artifact,) = load_artifacts(tmp_path)
    assert isinstance(artifact, Artifact)
    assert (artifact.quantity, artifact.epoch, artifact.step, artifact.path) == ("stiffness", 3, 120, path)
    assert set(artifact.arrays) == {
        "val_norms", "val_correct", "val_labels", "train_val/class_sign", "train_val/critical_length", "half", "count",
    }  # fmt: skip
    np.testing.assert_array_equal(artifact.arrays["val_norms"], [0.5, 1.25, 3.0])
    assert artifact.arrays["val_norms"].dtype == np.float32
    assert artifact.arrays["val_correct"].dtype == np.bool_
    np.testing.assert_array_equal(artifact.arrays["val_correct"], [True, False, True])
    np.testing.assert_array_equal(artifact.arrays["train_val/class_sign"], matrix.numpy())
    assert artifact.arrays["half"].dtype == np.float32
    assert math.isnan(artifact.scalar("train_val/critical_length"))
    assert artifact.scalar("count") == 7.0
    assert artifact.scalar("missing", default=-1.0) == -1.0
    assert artifact.scalar("val_norms", default=-2.0) == -2.0  # not a single number
    assert artifact.meta == {"class_names": ["cat", "dog"], "num_points": 128, "seed": 4}
    # A plain NumPy reader needs no pickle and sees the same file.
    with np.load(path, allow_pickle=False) as data:
        assert int(data["epoch"]) == 3 and int(data["step"]) == 120


def test_stiffness_key():
    assert stiffness_key("train_val", "class_sign") == "train_val/class_sign"


def test_load_sorted_by_quantity_then_epoch_and_filtered(tmp_path):
    for quantity, epoch in [("transitions", 10), ("jacobian_norm", 2), ("transitions", 1), ("jacobian_norm", 0)]:
        save_artifact(tmp_path, quantity, epoch, epoch * 10, {"x": float(epoch)})
    loaded = load_artifacts(tmp_path)
    assert [(a.quantity, a.epoch) for a in loaded] == [
        ("jacobian_norm", 0), ("jacobian_norm", 2), ("transitions", 1), ("transitions", 10),
    ]  # fmt: skip
    assert [a.step for a in loaded] == [0, 20, 10, 100]
    assert [a.epoch for a in load_artifacts(tmp_path, "transitions")] == [1, 10]
    assert load_artifacts(tmp_path, "stiffness") == []
    # The `sensitivity` folder itself is accepted too.
    assert len(load_artifacts(tmp_path / "sensitivity")) == 4
    assert (tmp_path / "sensitivity" / "transitions" / "epoch_0010.npz").is_file()


def test_same_epoch_is_replaced(tmp_path):
    save_artifact(tmp_path, "jacobian_norm", 1, 5, {"val_mean": 1.0})
    save_artifact(tmp_path, "jacobian_norm", 1, 9, {"val_mean": 2.0})
    (artifact,) = load_artifacts(tmp_path)
    assert (artifact.step, artifact.scalar("val_mean")) == (9, 2.0)
    assert sorted(os.listdir(tmp_path / "sensitivity" / "jacobian_norm")) == ["epoch_0001.npz"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    save_artifact(tmp_path, "jacobian_norm", 1, 5, {"val_mean": 1.0})
    folder = tmp_path / "sensitivity" / "jacobian_norm"
    real_savez = np.savez

    def broken_savez(file, **arrays):
        real_savez(file, **arrays)  # the bytes are on disk ...
        raise OSError("disk full")  # ... and then the write fails

    monkeypatch.setattr(artifacts_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path, "jacobian_norm", 1, 6, {"val_mean": 2.0})
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path, "jacobian_norm", 2, 7, {"val_mean": 3.0})
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == ["epoch_0001.npz"]
    (artifact,) = load_artifacts(tmp_path)
    assert (artifact.step, artifact.scalar("val_mean")) == (5, 1.0)


def test_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(artifacts_module.os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        save_artifact(tmp_path, "transitions", 0, 0, {"activation": np.arange(3)})
    monkeypatch.undo()
    assert os.listdir(tmp_path / "sensitivity" / "transitions") == []


def test_load_skips_damaged_and_foreign_files(tmp_path):
    save_artifact(tmp_path, "transitions", 0, 0, {"activation": np.arange(3)})
    folder = tmp_path / "sensitivity" / "transitions"
    (folder / "epoch_0001.npz").write_bytes(b"not a zip")
    (folder / ".epoch_0002.npz.abc.tmp").write_bytes(b"partial")
    (folder / "notes.txt").write_text("hello")
    with zipfile.ZipFile(folder / "epoch_0003.npz", "w") as archive:  # a valid zip without the epoch array
        archive.writestr("x.npy", b"")
    with pytest.warns(UserWarning, match="unreadable") as record:
        loaded = load_artifacts(tmp_path)
    assert [a.epoch for a in loaded] == [0]
    assert len(record) == 2


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_artifacts(tmp_path / "missing")
    assert load_artifacts(tmp_path) == []
    with pytest.raises(ValueError, match="`quantity`"):
        load_artifacts(tmp_path, "../x")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"quantity": "a/b"}, ValueError, "`quantity`"),
        ({"quantity": ""}, ValueError, "`quantity`"),
        ({"epoch": -1}, ValueError, "`epoch` expected a non-negative int, got -1"),
        ({"epoch": 1.0}, ValueError, "`epoch`"),
        ({"step": True}, ValueError, "`step`"),
        ({"arrays": [("x", 1)]}, TypeError, "`arrays` expected a mapping"),
        ({"arrays": {"epoch": 1}}, ValueError, "reserved"),
        ({"arrays": {"meta": 1}}, ValueError, "reserved"),
        ({"arrays": {"file": 1}}, ValueError, "reserved"),
        ({"arrays": {1: 1}}, TypeError, "str keys"),
        ({"arrays": {"x": "text"}}, TypeError, r"`arrays\['x'\]`"),
        ({"arrays": {"x": None}}, TypeError, r"`arrays\['x'\]`"),
        ({"arrays": {"x": np.array([object()])}}, TypeError, r"`arrays\['x'\]`"),
        ({"meta": {"f": object()}}, TypeError, "`meta`"),
        ({"meta": ["a"]}, TypeError, "`meta` expected a mapping"),
    ],
)
def test_save_validation(tmp_path, kwargs, error, match):
    arguments = {"quantity": "jacobian_norm", "epoch": 0, "step": 0, "arrays": {"x": 1.0}} | kwargs
    with pytest.raises(error, match=match):
        save_artifact(tmp_path, **arguments)
    assert not (tmp_path / "sensitivity").exists() or not any((tmp_path / "sensitivity").rglob("*.npz"))
