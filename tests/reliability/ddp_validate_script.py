"""``trainer.validate`` under 2-process DDP (CPU, gloo) with failures injected on rank 1.

:func:`main`, run by ``test_ddp_sharing.py`` through ``tests/_ddp.py`` (``launcher="lightning"``: Lightning starts
rank 1).

Three ``validate`` calls on the same trainer; ``FailingTransitions.mode`` decides what rank 1 does:

- ``"shard"``: rank 1 raises inside its shard of the transition counts (the others wait at the agreement);
- ``"early"``: rank 1 raises in ``compute`` before its first sharded call (the others are inside one);
- ``"none"``: nothing fails.

Each rank returns its record: per call the returned sensitivity metrics, the warnings raised (message and
category), the shard sizes each monitor evaluated, and per monitor the time of its shared ``compute`` and of a
single-process ``compute`` of the whole probe sets in the same process (``time.perf_counter``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

NUM_SAMPLES = 48
NET = "mlp"
MODES = ("shard", "early", "none")


def main(out: Path) -> dict:
    import lightning.pytorch as pl
    from helpers import ReliableData, ReliableModule

    from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
    from lightning_sensitivity.callbacks.progress import progress_factory
    from reliability._helpers import make_trainer

    class FailingTransitions(TransitionMonitor):
        mode = "none"

        def _rank(self) -> int:
            return -1 if self._lockstep is None else self._lockstep.rank

        def compute(self, model, probes, progress, epoch):
            if self.mode == "early" and self._rank() == 1:
                raise RuntimeError("injected failure before sharing, rank 1")
            return super().compute(model, probes, progress, epoch)

        def _counts(self, model, trajectories, split, progress, kwargs=None):
            if self.mode == "shard" and self._rank() == 1:
                raise RuntimeError("injected failure in the shard, rank 1")
            return super()._counts(model, trajectories, split, progress, kwargs)

    pl.seed_everything(0, verbose=False)
    common = {"num_samples": NUM_SAMPLES}
    monitors = [
        JacobianNormMonitor(**common),
        FailingTransitions(num_trajectories=6, num_points=12, **common),
        StiffnessMonitor(groups=("val_val",), num_distance_bins=6, **common),
    ]
    shards: dict[str, list[tuple[int, int]]] = {}
    timings: dict[str, list[float]] = {}
    for monitor in monitors:
        name = type(monitor).__name__
        shards[name], timings[name] = [], []

        def sharded(fn, n, _original=monitor.sharded, _name=name):
            def recorded(index):
                shards[_name].append((n, len(range(n)[index]) if isinstance(index, slice) else int(index.shape[0])))
                return fn(index)

            return _original(recorded, n)

        def compute(*args, _original=monitor.compute, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                timings[_name].append(time.perf_counter() - start)

        monitor.sharded, monitor.compute = sharded, compute

    trainer = make_trainer(out, monitors, logger="tb", devices=2, strategy="ddp")
    module, data = ReliableModule(NET), ReliableData()
    calls = {}
    for mode in MODES:
        FailingTransitions.mode = mode
        for key in shards:
            shards[key].clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
        calls[mode] = {
            "metrics": {k: float(v) for k, v in metrics.items() if k.startswith("sensitivity/")},
            "warnings": [(w.category.__name__, str(w.message)) for w in caught],
            "shards": {k: list(v) for k, v in shards.items()},
        }
    shared = {name: times[-1] for name, times in timings.items()}  # the last call: nothing failed
    single = {}
    for monitor in monitors:
        probes = {s: p for s, p in monitor.probe_sets.items() if s == "val"}
        model = monitor.measured_model(module)
        monitor.compute(model, probes, progress_factory("", False), 0)  # warm-up, as the shared call had
        start = time.perf_counter()
        monitor.compute(model, probes, progress_factory("", False), 0)
        single[type(monitor).__name__] = time.perf_counter() - start
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "calls": calls,
        "shared_s": shared,
        "single_s": single,
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
    }
    for name in shared:
        print(f"[ddp-sharing] rank {trainer.global_rank} {name}: shared {shared[name]:.4f} s, single "
              f"{single[name]:.4f} s, ratio {shared[name] / single[name]:.2f}")  # fmt: skip
    return record
