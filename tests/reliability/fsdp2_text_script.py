"""A 2-process FSDP2 fit of the reference text classifier on CPU (gloo), measured through ``embed_fn``/``forward_fn``.

The README's text-model recipe under ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` with
``fully_shard`` on each encoder layer and on the classifier: ``embed_fn`` calls ``m.model.embed`` directly, outside
the sharded root's forward. :func:`main` is run by ``test_sharded.py`` through ``tests/_ddp.py``
(``launcher="lightning"``). Each rank writes ``OUT/rank{r}.pt`` at initialisation: its sensitivity values, the
warnings raised, the full initial weights and the probe sets the monitors drew.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from helpers import make_trainer, sensitivity_metrics
from torch.utils.data import DataLoader

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.models import TextClassifier
from lightning_sensitivity.models.text_data import TokenDataset

VOCABULARY, LENGTH, NUM_SAMPLES = 40, 10, 16


def text_monitors() -> list[pl.Callback]:
    common = {
        "num_samples": NUM_SAMPLES,
        "embed_fn": lambda m, ids: m.model.embed(ids),
        "forward_fn": lambda m, embedded, attention_mask: m.model.forward_embedded(embedded, attention_mask),
        "batch_transform": lambda b: (b["input_ids"], b["labels"], {"attention_mask": b["attention_mask"]}),
    }
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=3, num_points=96, **common),
        StiffnessMonitor(num_distance_bins=6, **common),
    ]


def dataset(n: int, seed: int) -> TokenDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCABULARY, (n, LENGTH), generator=g)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return TokenDataset(ids * mask, mask, torch.arange(n) % 2)


class TextModule(pl.LightningModule):
    def __init__(self, shard: bool = True) -> None:
        super().__init__()
        self.shard = shard
        self.model = TextClassifier(vocab_size=VOCABULARY, num_classes=2, d_model=16, num_layers=2, num_heads=2,
                                    dim_feedforward=32, dropout=0.0, max_length=LENGTH)  # fmt: skip

    def configure_model(self) -> None:
        if not self.shard:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.model.encoder.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids, attention_mask)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(dataset(64, 0), batch_size=16)

    def val_dataloader(self):
        return DataLoader(dataset(32, 1), batch_size=16)


def main(out: Path) -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    from reliability.fsdp2_script import full_state

    class Recorder(pl.Callback):
        def __init__(self, monitors, caught) -> None:
            self.monitors, self.caught = monitors, caught

        def on_train_start(self, trainer, pl_module) -> None:
            from torch.distributed.tensor import DTensor

            torch.save({
                "sharded": any(isinstance(p, DTensor) for p in pl_module.parameters()),
                "metrics": sensitivity_metrics(trainer),
                "warnings": [str(w.message) for w in self.caught],
                "state_dict": full_state(pl_module),
                "probes": [{k: p.to("cpu") for k, p in m.probe_sets.items()} for m in self.monitors],
            }, out / f"rank{trainer.global_rank}.pt")  # fmt: skip

    pl.seed_everything(0, verbose=False)
    monitors = text_monitors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        trainer = make_trainer(out, [*monitors, Recorder(monitors, caught)], devices=2, strategy=strategy,
                               max_epochs=1, limit_train_batches=2, limit_val_batches=1)  # fmt: skip
        trainer.fit(TextModule())
