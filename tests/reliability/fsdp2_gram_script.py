"""Loss-gradient Grams of models sharded by FSDP2 (``fully_shard``), on 2 CPU processes (gloo).

:func:`main` is run by ``test_sharded.py`` through ``tests/_ddp.py`` (``launcher="gloo"``: the runner starts both
ranks and the process group). Each rank builds the same models, computes ``loss_gradient_gram`` (whole, chunked, two
sets) and ``per_layer_gram`` before and after sharding them, and returns its record: the largest differences per
model, whether any ``.grad`` was written, and the parameter classes after sharding (``DTensor``).
"""

from __future__ import annotations

import copy
from pathlib import Path


def models():
    import torch
    from architectures import SharedBlock, TiedWeights
    from torch import nn

    from lightning_sensitivity.models import TextClassifier

    torch.manual_seed(0)
    text = TextClassifier(vocab_size=40, num_classes=3, max_length=8).eval()
    ids = torch.randint(1, 40, (10, 7))
    ids[0, 5:] = 0
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    encoder = nn.Sequential(nn.Linear(3, 8), nn.TransformerEncoder(layer, 1, enable_nested_tensor=False),
                            nn.Flatten(), nn.Linear(32, 3)).eval()  # fmt: skip
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 3))
    return {
        # name: (model, inputs, classes of submodules sharded on their own before the root)
        "text": (text, ids, (nn.TransformerEncoderLayer,)),
        "encoder": (encoder, torch.randn(10, 4, 3), (nn.TransformerEncoderLayer,)),
        "mlp": (mlp, torch.randn(10, 12), (nn.Linear,)),
        "tied_weights": (TiedWeights(), torch.randn(10, 1, 8, 8), ()),
        "shared_block": (SharedBlock(), torch.randn(10, 1, 8, 8), (nn.Sequential,)),
    }


def main(out: Path) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from lightning_sensitivity.functional import loss_gradient_gram, per_layer_gram

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    record = {}
    for name, (model, x, parts) in models().items():
        y = torch.arange(x.shape[0]) % 3

        def grams(m, x=x, y=y):
            return {
                "whole": loss_gradient_gram(m, x, y),
                "chunked": loss_gradient_gram(m, x, y, chunk_size=4),
                "two sets": loss_gradient_gram(m, x, y, x[:3], y[:3]),
                "per layer": sum(per_layer_gram(m, x, y, chunk_size=4).values()),
            }

        expected = grams(copy.deepcopy(model))
        for sub in reversed(list(model.modules())[1:]):
            if isinstance(sub, parts) and not any(isinstance(p, DTensor) for p in sub.parameters()):
                fully_shard(sub, mesh=mesh)
        fully_shard(model, mesh=mesh)
        got = grams(model)
        record[name] = {
            "difference": {k: float((got[k] - v).abs().max() / v.abs().max()) for k, v in expected.items()},
            "grads": [p.grad is None for p in model.parameters()],
            "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
        }
    # A self-check failing on one rank's data only: that rank must still run every forward the other runs (they
    # are FSDP's collectives) before it raises, or the next collective would pair mismatched calls.
    from lightning_sensitivity.functional.gram import layerwise
    from lightning_sensitivity.functional.gram.recognised_ops import LayerwiseUnsupported

    model, x, _ = models()["mlp"]
    for sub in model:
        if isinstance(sub, torch.nn.Linear):
            fully_shard(sub, mesh=mesh)
    fully_shard(model, mesh=mesh)
    checked = layerwise._check_against_explicit

    def failing_on_rank_1(*args, **kwargs):
        checked(*args, **kwargs)  # the check's own forwards, then its verdict: failed on rank 1
        if rank == 1:
            raise LayerwiseUnsupported("injected check failure")

    layerwise._check_against_explicit = failing_on_rank_1
    try:
        loss_gradient_gram(model, x, torch.arange(x.shape[0]) % 3, chunk_size=3)
        record["one-rank check failure"] = "computed"
    except ValueError as err:
        record["one-rank check failure"] = str(err)
    finally:
        layerwise._check_against_explicit = checked
    dist.barrier()  # reached by both, with nothing pending: the ranks ran the same collectives
    record["after"] = float(loss_gradient_gram(model, x, torch.arange(x.shape[0]) % 3).sum())
    return record
