"""Reference networks, a LightningModule and DataModules for trying the monitors.

Nothing here is needed to use the callbacks with your own code; these are the pieces the examples and the
LightningCLI configs are built from.
"""

from lightning_sensitivity.models.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SensitivityDataModule,
)
from lightning_sensitivity.models.lit import LitClassifier
from lightning_sensitivity.models.nets import MLP, SmallCNN
from lightning_sensitivity.models.text import TextClassifier
from lightning_sensitivity.models.text_data import TextDataModule

__all__ = [
    "MLP",
    "SmallCNN",
    "TextClassifier",
    "TextDataModule",
    "LitClassifier",
    "SensitivityDataModule",
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
]
