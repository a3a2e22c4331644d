"""One source of class names: a monitor given none labels its pictures with the data's names.

The datamodule's ``class_names`` (or ``classes``), else the probe dataset's ``classes`` (torchvision's attribute,
looked up through ``Subset``-like wrappers), reach every monitor; the monitor's own ``class_names`` win; names that
do not fit the number of classes fall back to indices with one warning. Keys keep class indices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from callbacks._tiny import NUM_CLASSES, make_trainer
from helpers import Classifier, TinyData
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import Subset

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor
from lightning_sensitivity.callbacks._data_sources import dataset_class_names
from lightning_sensitivity.logging import load_artifacts

NAMES = [f"kind {c}" for c in range(NUM_CLASSES)]


class NamedData(TinyData):
    class_names = tuple(NAMES)


class ClassesOnTheDataset(TinyData):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        for dataset in (self.train_set, self.val_set, self.test_set):
            dataset.classes = list(NAMES)  # as torchvision's datasets have it
        self.val_set = Subset(self.val_set, range(len(self.val_set)))  # looked up through the wrapper


def fit(tmp_path: Path, data: TinyData, **jacobian: object) -> dict[str, list]:
    monitors = [
        JacobianNormMonitor(num_samples=30, every_n_epochs=None, **jacobian),
        StiffnessMonitor(num_samples=30, every_n_epochs=None, groups=("val_val",), num_distance_bins=4),
    ]
    trainer = make_trainer(tmp_path, monitors, max_epochs=1, logger=CSVLogger(str(tmp_path)), limit_train_batches=1)
    torch.manual_seed(0)
    trainer.fit(Classifier(), datamodule=data)
    log_dir = Path(trainer.logger.log_dir)
    return {q: load_artifacts(log_dir, q)[-1].meta.get("class_names") for q in ("jacobian_norm", "stiffness")}


@pytest.mark.slow
def test_every_monitor_picks_up_the_datamodules_names(tmp_path):
    assert fit(tmp_path, NamedData()) == {"jacobian_norm": NAMES, "stiffness": NAMES}


@pytest.mark.slow
def test_the_datasets_classes_and_the_monitors_own_names(tmp_path):
    own = [f"own {c}" for c in range(NUM_CLASSES)]
    got = fit(tmp_path, ClassesOnTheDataset(), class_names=own)
    assert got == {"jacobian_norm": own, "stiffness": NAMES}


def test_dataset_class_names_looks_through_wrappers():
    base = torch.utils.data.TensorDataset(torch.zeros(3, 1), torch.zeros(3))
    assert dataset_class_names(base) is None
    base.classes = ["a", "b"]
    assert dataset_class_names(Subset(Subset(base, [0, 1]), [0])) == ["a", "b"]
    base.classes = {0: "a", 1: "b"}  # an index -> name mapping
    assert dataset_class_names(base) == ["a", "b"]
    base.classes = ["a", 2]  # not names
    assert dataset_class_names(base) is None
