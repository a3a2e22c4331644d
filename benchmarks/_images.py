"""Rows for the pictures and the per-layer view: render times against their budgets, the cost of the default images
end to end (against the same fit with ``figures="none"``), and ``StiffnessMonitor(per_layer=True)`` against
``per_layer=False`` on the benchmark's MLP and CNN -- each measured in this run."""

from __future__ import annotations

import statistics

import torch

from lightning_sensitivity.logging.render import render_timings

CPU = torch.device("cpu")


def _row(row: str, quantity: str, model: str, time_s: float, limit: str, limit_s: float | None, ratio: float,
         target: str, met: bool) -> dict:  # fmt: skip
    return {"row": row, "quantity": quantity, "model": model, "time_s": time_s, "limit": limit, "limit_s": limit_s,
            "ratio_to_limit": ratio, "target": target, "baselines": {}, "refused": {}, "peak_bytes": None,
            "met": met}  # fmt: skip


def render_rows(repeats: int) -> list[dict]:
    """Median render times of one image against the issue's budgets (20 ms for 10x10, 100 ms for 100x100)."""
    ms = render_timings(repeats=repeats)
    rows = []
    for key, size, budget in (("class_matrix_10", "10x10", 20.0), ("class_matrix_100", "100x100", 100.0)):
        rows.append(_row(f"render {size}", f"one {size} class heatmap as an RGB array", "logging.render",
                         ms[key] / 1e3, f"{budget:.0f} ms budget", budget / 1e3, ms[key] / budget,
                         f"<= {budget:.0f} ms", ms[key] <= budget))  # fmt: skip
    return rows


def image_cost_row(with_images: dict | None, without_images: dict | None) -> dict | None:
    """The default images' share of an end-to-end fit: monitors with default images / monitors with none."""
    if with_images is None or without_images is None:
        return None
    ratio = with_images["time_s"] / without_images["time_s"]
    return _row("images end to end", "default monitors, default images vs figures='none'", with_images["model"],
                with_images["time_s"], "the same fit, figures='none'", without_images["time_s"], ratio,
                "<= 10 % overhead", ratio <= 1.10)  # fmt: skip


def per_layer_rows(n: int, rounds: int, device: torch.device = CPU) -> list[dict]:
    """``StiffnessMonitor(per_layer=True).compute`` against ``per_layer=False`` on the same probe sets."""
    from _cases import MODELS, data
    from _timing import clock

    from lightning_sensitivity import StiffnessMonitor
    from lightning_sensitivity.callbacks.progress import progress_factory
    from lightning_sensitivity.probes import probe_set_from_tensors

    rows = []
    for (name, build), label in zip(MODELS.items(), ("MLP", "CNN"), strict=True):
        torch.manual_seed(0)
        model, (x, y) = build().to(device), data(n)
        probes = {s: probe_set_from_tensors(x, y, n, seed=0).to(device) for s in ("train", "val")}
        now = clock(device)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for per_layer in (False, True):
                monitor = StiffnessMonitor(per_layer=per_layer, num_samples=n, figures="none")
                start = now()
                monitor.compute(model, probes, progress_factory("", False), 0)
                times[per_layer].append(now() - start)
        with_, without = statistics.median(times[True]), statistics.median(times[False])
        rows.append(_row(f"per_layer {label}", "StiffnessMonitor.compute, per_layer=True", name, with_,
                         "per_layer=False", without, with_ / without, "<= 1.2x", with_ / without <= 1.2))  # fmt: skip
    return rows
