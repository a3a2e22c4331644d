"""Benchmark of issue 7: every quantity against its cost limit and its naive baselines, measured in one run.

    python benchmarks/run.py [--quick] [--json PATH] [--threads T] [--rounds R] [--architectures] [--device D]

On the CPU (``--device cpu``, the default) times are CPU seconds of this process (``time.process_time``) with ``T``
intra-op threads (default 1): on a shared machine wall time also counts the time other processes hold the cores,
CPU time does not. With ``--device cuda`` models and data live on the GPU and times are wall seconds around
``torch.cuda.synchronize()`` (``_timing.py``); the memory row reads ``torch.cuda.max_memory_allocated`` in
process, and the end-to-end rows fit with ``accelerator="gpu"``. Candidates of a row are
timed round-robin (limit, package, baselines, limit, package, ...) so load drifts hit all of them alike; a ratio
to the limit is the median over rounds of the per-round ratio. ``--quick`` shrinks
every size (formats and code paths only -- its ratios mean little) and finishes in well under a minute.
``--architectures`` adds the rows of ``_architectures.py`` (resnet18, a ViT, text transformers; minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cases as cases  # noqa: E402
from _timing import parse_device, timed, timing_note  # noqa: E402

from lightning_sensitivity.functional import (  # noqa: E402
    ellipse_trajectories,
    jacobian_norm,
    loss_gradient_gram,
    transition_counts,
)

ROW_KEYS = ("row", "quantity", "model", "time_s", "limit", "limit_s", "ratio_to_limit", "target", "baselines",
            "refused", "peak_bytes", "met")  # fmt: skip
CPU = torch.device("cpu")


def _ratio(times: dict[str, list[float]], name: str, limit: str, scale: float) -> float:
    return statistics.median(a / (scale * b) for a, b in zip(times[name], times[limit], strict=True))


def _row(row, quantity, model, times, ours, limit, scale, target, limit_label, baselines, met) -> dict:
    t = statistics.median(times[ours])
    return {
        "row": row,
        "quantity": quantity,
        "model": model,
        "time_s": t,
        "limit": limit_label,
        "limit_s": scale * statistics.median(times[limit]),
        "ratio_to_limit": _ratio(times, ours, limit, scale),
        "target": target,
        "baselines": {
            k: {"time_s": statistics.median(times[k]), "speedup": statistics.median(times[k]) / t} for k in baselines
        },
        "refused": {},  # peers that decline the model: {label: reason}
        "peak_bytes": None,
        "met": met,
    }


def jacobian_rows(n: int, rounds: int, device: torch.device = CPU) -> list[dict]:
    rows = []
    for label, factory in cases.MODELS.items():
        torch.manual_seed(0)
        model = factory().eval().to(device)
        x = cases.data(n)[0].to(device)
        fns = {
            "limit": cases.forward(model, x),
            "package": lambda model=model, x=x: jacobian_norm(model, x),
            "per-example loop": cases.jacobian_loop(model, x),
        }
        times = timed(fns, rounds, device)
        mlp = label.startswith("MLP")
        row = _row("jacobian_norm " + label.split()[0], "jacobian_norm", label, times, "package", "limit",
                   1 + cases.NUM_CLASSES, "<= 1.0 x limit_J" + (", >= 30x loop" if mlp else ""),
                   "limit_J = (1 + C) x forward", ["per-example loop"], None)  # fmt: skip
        row["met"] = row["ratio_to_limit"] <= 1.0 and (not mlp or row["baselines"]["per-example loop"]["speedup"] >= 30)
        rows.append(row)
    return rows


def stiffness_rows(n: int, rounds: int, device: torch.device = CPU) -> list[dict]:
    rows = []
    for label, factory in cases.MODELS.items():
        torch.manual_seed(0)
        model = factory().eval().to(device)
        x, y = (t.to(device) for t in cases.data(n))
        fns = {
            "limit": cases.forward_backward(model, x, y),
            "package": lambda model=model, x=x, y=y: loss_gradient_gram(model, x, y),
            "vmap(grad) + matmul": cases.gram_vmap(model, x, y),
            "per-example loop": cases.gram_loop(model, x, y),
        }
        peers, refused = cases.peer_baselines(model, x, y, fns["package"])
        fns.update(peers)
        times = timed(fns, rounds, device)
        mlp = label.startswith("MLP")
        need = 50 if mlp else 5
        row = _row("stiffness " + label.split()[0], "loss_gradient_gram / stiffness", label, times, "package", "limit",
                   1, f"<= 2 x limit_G, >= {need}x vmap(grad)", "limit_G = forward + backward",
                   [k for k in fns if k not in ("limit", "package")], None)  # fmt: skip
        row["met"] = row["ratio_to_limit"] <= 2.0 and row["baselines"]["vmap(grad) + matmul"]["speedup"] >= need
        row["refused"] = refused
        rows.append(row)
    return rows


def transition_rows(num_traj: int, num_points: int, rounds: int, device: torch.device = CPU) -> list[dict]:
    rows = []
    for label, factory in cases.MODELS.items():
        torch.manual_seed(0)
        model = factory().eval().to(device)
        anchors = cases.data(3 * num_traj)[0].to(device)
        traj = ellipse_trajectories(anchors.reshape(num_traj, 3, 1, 28, 28), num_points)
        points = traj.reshape(-1, 1, 28, 28)
        fns = {
            "limit": cases.forward(model, points),
            "package": lambda model=model, traj=traj: transition_counts(model, traj),
        }
        times = timed(fns, rounds, device)
        row = _row("transitions " + label.split()[0], f"transition_counts ({num_traj} x {num_points} points)",
                   label, times, "package", "limit", 1, "<= 1.3 x limit", "one forward over the K*P points", [],
                   None)  # fmt: skip
        row["met"] = row["ratio_to_limit"] <= 1.3
        rows.append(row)
    return rows


def memory_row(chunk: int, threads: int, device: torch.device = CPU) -> dict:
    """Peak memory of one call at N = chunk and N = 10 chunk: resident memory of a child process on the CPU
    (``_memory.py`` says why), ``torch.cuda.max_memory_allocated`` in this process on CUDA."""
    sizes = [chunk, 10 * chunk]
    if device.type == "cuda":
        from _memory import cuda_peaks

        peaks = cuda_peaks(chunk, sizes, device)
    else:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        spec = json.dumps({"chunk": chunk, "sizes": sizes, "threads": threads})
        out = subprocess.run([sys.executable, str(HERE / "_memory.py"), spec], env=env, capture_output=True,
                             text=True, timeout=900, check=True)  # fmt: skip
        peaks = json.loads(out.stdout.strip().splitlines()[-1])
    growth = {k: v[str(10 * chunk)] / v[str(chunk)] for k, v in peaks.items()}
    # The Gram keeps each example's gradient representation (one pass, functional/gram/blocks.py): its bound is the
    # chunk's peak plus N x that representation plus the N x N result.
    from _cases import data, mnist_cnn
    from _memory import representation_bytes

    n = 10 * chunk
    torch.manual_seed(0)
    gram = peaks["loss_gradient_gram"]
    gram_bound = gram[str(chunk)] + n * representation_bytes(mnist_cnn().eval(), *data(2), n) + n * n * 4
    ratio = max(growth["jacobian_norm"] / 1.5, gram[str(n)] / (1.25 * gram_bound))
    return {
        "row": "memory CNN",
        "quantity": f"jacobian_norm, loss_gradient_gram: N = {n} vs N = chunk = {chunk}",
        "model": "CNN conv32-conv64-pool-fc128",
        "time_s": None,
        "limit": "jacobian_norm: 1.5 x its peak at N = chunk; Gram: 1.25 x (its peak at N = chunk + N x the kept "
        "representation + 4 N^2)" + (" (CUDA allocator)" if device.type == "cuda" else ""),
        "limit_s": None,
        "ratio_to_limit": ratio,
        "target": "<= 1 x the limit (peak set by the chunk and the kept representation)",
        "baselines": {},
        "refused": {},
        "peak_bytes": peaks,
        "met": ratio <= 1,
    }


#: The end-to-end overhead each reference model's default monitors should stay within.
END_TO_END_TARGET = {"mlp": 0.10, "cnn": 0.15}


def monitor_row(num_train: int, epochs: int, rounds: int, figures: str = "log_spaced",
                device: torch.device = CPU, model: str = "mlp") -> dict | None:  # fmt: skip
    try:
        from _end_to_end import MODELS, fit_seconds
    except ImportError:  # the callbacks are not importable (e.g. Lightning missing)
        return None
    runs: dict[str, list[float]] = {"without": [], "with": []}
    hooks: list[float] = []
    for _ in range(rounds):
        for name in runs:
            runs[name].append(fit_seconds(name == "with", num_train, epochs, figures, device, model,
                                          hook_seconds=hooks if name == "with" else None))  # fmt: skip
    without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
    overhead = with_ / without - 1.0
    # The monitors' own time (their hooks) against the fit without them: what the wall-time difference holds
    # besides the indirect costs and the round-to-round noise of two separate fits.
    hook_share = statistics.median(hooks) / without
    label = "" if figures == "log_spaced" else f", figures={figures!r}"
    name = "" if model == "mlp" else f" {model.upper()} {num_train}"
    target = END_TO_END_TARGET[model]
    return {
        "row": f"monitors end to end{name}{label}",
        "quantity": f"default monitors{label}, {epochs} epochs, {num_train} examples"
        + (f", accelerator='gpu' ({device})" if device.type == "cuda" else ""),
        "model": MODELS[model][0],
        "time_s": with_,
        "limit": "the same fit without monitors",
        "limit_s": without,
        "ratio_to_limit": 1.0 + overhead,
        "target": f"<= {target:.0%} overhead",
        "baselines": {},
        "refused": {},
        "peak_bytes": None,
        "met": overhead <= target,
        "hook_share": hook_share,
        "rounds_s": runs,
    }


def _fmt_bytes(b: int) -> str:
    return f"{b / 2**20:.0f} MiB"


def _short(reason: str, limit: int = 70) -> str:
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def print_table(rows: list[dict]) -> None:
    head = f"{'row':<28} {'time':>9} {'x limit':>8} {'target':<34} {'met':<4} baselines (speedup) / peak memory"
    print(head)
    print("-" * len(head))
    for r in rows:
        t = "" if r["time_s"] is None else f"{r['time_s']:.4f}s"
        extra = ", ".join([f"{k}: {v['speedup']:.1f}x" for k, v in r["baselines"].items()]
                          + [f"{k.split()[0]}: refused ({_short(v)})" for k, v in r["refused"].items()])  # fmt: skip
        if r["peak_bytes"]:
            extra = "; ".join(f"{k}: " + ", ".join(f"N={n} {_fmt_bytes(b)}" for n, b in v.items())
                              for k, v in r["peak_bytes"].items())  # fmt: skip
        if r.get("hook_share") is not None:
            extra = f"the monitors' hooks alone: +{r['hook_share']:.1%}"
        met = "yes" if r["met"] else "NO"
        print(f"{r['row']:<28} {t:>9} {r['ratio_to_limit']:>7.2f}x {r['target']:<34} {met:<4} {extra}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: checks the code paths")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per row (default 5; quick 1)")
    parser.add_argument("--architectures", action="store_true", help="add resnet18 / ViT / text transformer rows")
    parser.add_argument("--device", default="cpu", help="'cpu' (default) or a CUDA device ('cuda', 'cuda:1')")
    args = parser.parse_args(argv)
    device = parse_device(parser, args.device)
    # Opacus and BackPACK hooks warn on every call when the inputs do not require gradients; noise in a table.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 5)
    n = 16 if args.quick else 256
    start = time.perf_counter()
    rows = jacobian_rows(n, rounds, device) + stiffness_rows(n, rounds, device)
    if args.architectures:
        from _architectures import architecture_rows
        from _architectures import jacobian_rows as architecture_jacobian_rows

        rows += architecture_rows(8 if args.quick else 128, rounds, device=device)
        rows += architecture_jacobian_rows(8 if args.quick else 128, rounds, device)
        from _chunking import chunking_rows

        rows += chunking_rows(8 if args.quick else 128, min(rounds, 3), ["resnet18", "vit", "text", "mobilenet"],
                              ["layerwise"], device)  # fmt: skip
    rows += transition_rows(4 if args.quick else 16, 32 if args.quick else 128, rounds, device)
    rows.append(memory_row(8 if args.quick else 64, args.threads, device))
    from _images import image_cost_row, per_layer_rows, render_rows

    rows += per_layer_rows(16 if args.quick else 128, rounds, device)
    rows += render_rows(2 if args.quick else 20)
    end_to_end = {}
    for figures in ("log_spaced", "none"):
        monitors = monitor_row(512 if args.quick else 60000, 1 if args.quick else 3, 1 if args.quick else 2, figures,
                               device)  # fmt: skip
        if monitors is not None:
            rows.append(monitors)
            end_to_end[figures] = monitors
    images = image_cost_row(end_to_end.get("log_spaced"), end_to_end.get("none"))
    if images is not None:
        rows.append(images)
    for num_train in (512,) if args.quick else (10000, 50000):  # the reference CNN on CIFAR-sized images
        cnn = monitor_row(num_train, 1 if args.quick else 3, 1 if args.quick else 2, device=device, model="cnn")
        if cnn is not None:
            rows.append(cnn)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
               "device": str(device)}  # fmt: skip
    if device.type == "cuda":
        machine.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    result = {
        "machine": machine,
        "quick": args.quick,
        "rounds": rounds,
        "num_examples": n,
        "device": str(device),
        "timing": timing_note(device),
        "rows": rows,
        "total_wall_s": time.perf_counter() - start,
    }
    print_table(rows)
    print(f"\n{len(rows)} rows in {result['total_wall_s']:.0f}s wall; device={device}, threads={args.threads}, "
          f"rounds={rounds}; times are {result['timing']} (end-to-end rows: wall seconds of trainer.fit)")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
