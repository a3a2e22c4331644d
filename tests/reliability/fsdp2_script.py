"""A 2-process FSDP2 fit on CPU (gloo): ``ModelParallelStrategy`` and ``fully_shard`` on every layer.

``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``; the parameters are ``DTensor`` shards.
:func:`main` is run by ``test_sharded.py`` through ``tests/_ddp.py`` (``launcher="lightning"``: Lightning starts
rank 1).

Each rank writes ``OUT/rank{r}.pt`` at initialisation (after the monitors measured): its sensitivity values in
``callback_metrics``, the warnings raised, the full (gathered) initial weights and the per-rank shard sizes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

NUM_SAMPLES = 16
NET = "mlp"


def full_state(module) -> dict:
    from torch.distributed.tensor import DTensor

    # `full_tensor` is a collective: every rank calls it for every entry, in the same order.
    state = module.state_dict()
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in state.items()}


def main(out: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from helpers import ReliableData, ReliableModule, sensitivity_metrics
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch import nn

    from reliability._helpers import all_monitors, make_trainer

    class ShardedModule(ReliableModule):
        def configure_model(self) -> None:
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    class Recorder(pl.Callback):
        def __init__(self, monitors, caught) -> None:
            self.monitors, self.caught = monitors, caught

        def on_train_start(self, trainer, pl_module) -> None:
            from torch.distributed.tensor import DTensor

            record = {
                "world_size": trainer.world_size,
                "sharded": any(isinstance(p, DTensor) for p in pl_module.parameters()),
                "metrics": sensitivity_metrics(trainer),
                "warnings": [str(w.message) for w in self.caught],
                "state_dict": full_state(pl_module),
                "grads": [p.grad is None for p in pl_module.parameters()],
                "shards": {type(m).__name__: list(getattr(m, "seen", [])) for m in self.monitors},
            }
            torch.save(record, out / f"rank{trainer.global_rank}.pt")

    pl.seed_everything(0, verbose=False)
    monitors = all_monitors(num_samples=NUM_SAMPLES, every_n_epochs=None)
    for monitor in monitors:
        monitor.seen = []

        def sharded(fn, n, _original=monitor.sharded, _seen=monitor.seen):
            return _original(lambda index: (_seen.append((n, int(index.shape[0]))), fn(index))[1], n)

        monitor.sharded = sharded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        trainer = make_trainer(out, [*monitors, Recorder(monitors, caught)], logger="csv", max_epochs=1,
                               devices=2, strategy=strategy, limit_train_batches=2, limit_val_batches=1)  # fmt: skip
        trainer.fit(ShardedModule(NET), datamodule=ReliableData())
