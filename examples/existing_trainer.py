"""You already have a LightningModule and a Trainer: add one callback, change nothing else.

python examples/existing_trainer.py
tensorboard --logdir lightning_logs
"""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from lightning_sensitivity import JacobianNormMonitor


class MyClassifier(pl.LightningModule):
    """Your own model: nothing in it knows about lightning_sensitivity."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target))
    train, val = random_split(data, [1500, 297], generator=torch.Generator().manual_seed(0))

    trainer = pl.Trainer(max_epochs=3, callbacks=[JacobianNormMonitor()])  # <- the only addition
    trainer.fit(MyClassifier(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256))
    print(f"Logs: {trainer.log_dir}  ->  tensorboard --logdir lightning_logs")
