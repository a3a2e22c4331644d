"""Benchmark: per-rank measurement time with the work shared between 2 DDP ranks vs one process doing it all.

    python benchmarks/ddp_sharing.py [--quick] [--json PATH] [--rounds R] [--samples N]

Two CPU processes (``torch.multiprocessing``, gloo, one intra-op thread each) run each monitor's ``compute`` the
way ``SensitivityMonitor._measure`` does in a distributed run (a :class:`Lockstep` over the default process group;
each rank evaluates its shard, all results are gathered). The single-process time is rank 0 computing everything
while rank 1 waits idle at a barrier. Times are wall seconds (``time.perf_counter``: the collectives' waiting is part
of the cost), medians over rounds; the row's ratio is the slower rank's shared time over the single-process time.
CPU seconds (``time.process_time``) are reported beside them: on a machine whose cores other processes share, two
ranks running at once get less of a core each than one process alone, which inflates the wall ratio.
Target: <= 0.65 with 2 ranks. No Lightning ``Trainer`` is involved, so the figure is the measurement alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

TARGET = 0.65


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _monitors(samples: int) -> list:
    from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor

    return [
        JacobianNormMonitor(num_samples=samples),
        TransitionMonitor(num_trajectories=16, num_points=64, num_samples=samples),
        StiffnessMonitor(num_samples=samples, groups=("val_val",)),
    ]


def _worker(rank: int, port: int, samples: int, rounds: int, cnn: bool, queue) -> None:
    from lightning_sensitivity.callbacks._distributed import Lockstep, TorchCollective
    from lightning_sensitivity.callbacks.progress import progress_factory
    from lightning_sensitivity.models import SmallCNN
    from lightning_sensitivity.probes import ProbeSet

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same weights and probe sets on both ranks
    model = SmallCNN(1, 10, channels=(8, 16), hidden=64) if cnn else nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))  # fmt: skip
    probe = ProbeSet(torch.randn(samples, 1, 28, 28), torch.arange(samples) % 10, torch.arange(samples))
    probes = {"val": probe}
    progress = progress_factory("", False)
    times: dict[str, dict[str, list[float]]] = {}
    for monitor in _monitors(samples):
        name = type(monitor).__name__
        times[name] = {"single": [], "shared": [], "single_cpu": [], "shared_cpu": []}
        monitor.compute(model, probes, progress, 0)  # warm-up (the layerwise self-check, lazy initialisation)
        for _ in range(rounds):
            dist.barrier()
            if rank == 0:
                start, cpu = time.perf_counter(), time.process_time()
                monitor.compute(model, probes, progress, 0)
                times[name]["single"].append(time.perf_counter() - start)
                times[name]["single_cpu"].append(time.process_time() - cpu)
            dist.barrier()  # rank 1 idles here while rank 0 measures alone
            monitor._lockstep = Lockstep(TorchCollective(2, rank))
            start, cpu = time.perf_counter(), time.process_time()
            monitor.compute(model, probes, progress, 0)
            monitor._lockstep.finish(True)
            times[name]["shared"].append(time.perf_counter() - start)
            times[name]["shared_cpu"].append(time.process_time() - cpu)
            monitor._lockstep = None
    queue.put((rank, times))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the code path only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn", help="SmallCNN(8, 16) or a 784-256-256 MLP")
    args = parser.parse_args(argv)
    samples, rounds = (32, 1) if args.quick else (args.samples, args.rounds)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    start = time.perf_counter()
    worker_args = (_free_port(), samples, rounds, args.model == "cnn", queue)
    mp.start_processes(_worker, args=worker_args, nprocs=2, start_method="spawn")
    per_rank = dict(queue.get() for _ in range(2))
    rows = []
    med = {r: {n: {k: statistics.median(v) for k, v in t.items() if v} for n, t in per_rank[r].items()}
           for r in (0, 1)}  # fmt: skip
    names = list(med[0])
    for name, members in [*((n, [n]) for n in names), ("all three monitors", names)]:
        row: dict = {"row": f"ddp sharing {name}", "samples": samples, "model": args.model, "target": TARGET}
        for clock in ("", "_cpu"):
            single = sum(med[0][n]["single" + clock] for n in members)
            shared = {r: sum(med[r][n]["shared" + clock] for n in members) for r in (0, 1)}
            row.update({f"single{clock}_s": single, f"shared{clock}_s": shared,
                        f"ratio{clock}": max(shared.values()) / single})  # fmt: skip
        row["met"] = row["ratio"] <= TARGET
        rows.append(row)
    result = {"quick": args.quick, "rounds": rounds, "rows": rows, "total_wall_s": time.perf_counter() - start,
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": 1}}  # fmt: skip
    for row in rows:
        shared, shared_cpu = max(row["shared_s"].values()), max(row["shared_cpu_s"].values())
        print(
            f"{row['row']:40s} wall: single {row['single_s']:.3f} s, slower rank {shared:.3f} s, ratio "
            f"{row['ratio']:.2f} | CPU: single {row['single_cpu_s']:.3f} s, slower rank {shared_cpu:.3f} s, "
            f"ratio {row['ratio_cpu']:.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
