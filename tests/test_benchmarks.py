"""`benchmarks/run.py --quick` runs and reports every row of its table (format only: no timing assertions);
`--device` accepts the CPU and refuses a CUDA device that is not there."""

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "jacobian_norm MLP",
    "jacobian_norm CNN",
    "stiffness MLP",
    "stiffness CNN",
    "transitions MLP",
    "transitions CNN",
    "memory CNN",
    "per_layer MLP",
    "per_layer CNN",
    "render 10x10",
    "render 100x100",
    "monitors end to end",
    "monitors end to end, figures='none'",
    "images end to end",
    "monitors end to end CNN 512",
]
KEYS = {"row", "quantity", "model", "time_s", "limit", "limit_s", "ratio_to_limit", "target", "baselines",
        "refused", "peak_bytes", "met"}  # fmt: skip
PEERS = {"Opacus": "opacus", "BackPACK": "backpack"}


def _benchmark_module(name: str):
    return load_module(ROOT / "benchmarks" / f"{name}.py", name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for a machine without CUDA")
@pytest.mark.parametrize("script", ["run", "_architectures"])
def test_device_cuda_without_cuda_is_a_usage_error(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        _benchmark_module(script).main(["--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "`--device` expected 'cpu' or an available CUDA device, got 'cuda'" in err
    assert "torch.cuda.is_available() is False" in err


@pytest.mark.parametrize("value", ["tpu", "mps", "not a device"])
def test_device_other_than_cpu_or_cuda_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        _benchmark_module("run").main(["--device", value])
    assert exit_.value.code == 2
    assert f"`--device` expected 'cpu' or an available CUDA device, got {value!r}" in capsys.readouterr().err


def test_device_cpu_is_accepted():
    timing = _benchmark_module("_timing")
    parser = argparse.ArgumentParser()
    assert timing.parse_device(parser, "cpu") == timing.parse_device(parser, "cpu:0") == torch.device("cpu")
    assert timing.timing_note(torch.device("cpu")).startswith("CPU seconds")


@pytest.mark.slow
def test_quick_benchmark_reports_every_row(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert {"machine", "rounds", "num_examples", "device", "timing", "rows", "total_wall_s"} <= result.keys()
    assert {"cpu_count", "torch", "threads", "device"} <= result["machine"].keys()
    assert result["device"] == "cpu" and result["timing"].startswith("CPU seconds")
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ROWS
    for name, row in rows.items():
        end_to_end = name.startswith("monitors end to end")
        assert set(row) == KEYS | ({"hook_share", "rounds_s"} if end_to_end else set()), name
        if end_to_end:  # the monitors' own time: within the fit with them, and what the table prints
            assert 0 < row["hook_share"] * row["limit_s"] < row["time_s"], name
            assert f"+{row['hook_share']:.1%}" in proc.stdout
        assert row["ratio_to_limit"] > 0 and isinstance(row["met"], bool), name
        assert name in proc.stdout  # the printed table has the row too
    for name in ("stiffness MLP", "stiffness CNN"):
        baselines = rows[name]["baselines"]
        assert {"vmap(grad) + matmul", "per-example loop"} <= baselines.keys()
        assert all(b["time_s"] > 0 and b["speedup"] > 0 for b in baselines.values())
        peers = {"Opacus GradSampleModule + matmul": "opacus", "BackPACK BatchGrad + matmul": "backpack"}
        for label, module in peers.items():  # peer rows exactly when the peer is installed: both run on these
            assert (label in baselines) == (importlib.util.find_spec(module) is not None)
        assert rows[name]["refused"] == {}
    assert "per-example loop" in rows["jacobian_norm MLP"]["baselines"]
    peaks = rows["memory CNN"]["peak_bytes"]
    assert set(peaks) == {"jacobian_norm", "loss_gradient_gram"}
    assert all(set(p) == {"8", "80", "unchunked"} for p in peaks.values())


@pytest.mark.slow
def test_architecture_rows_report_every_model():
    pytest.importorskip("torchvision")
    architectures = _benchmark_module("_architectures")
    rows = architectures.architecture_rows(4, 1, per_example=False) + architectures.jacobian_rows(4, 1)
    models = ["resnet18", "ViT", "text", "TextClassifier"]
    assert [r["row"] for r in rows] == [f"gram {m}" for m in models] + [f"jacobian_norm {m}" for m in models]
    for row in rows:
        assert set(row) == KEYS and row["ratio_to_limit"] > 0 and isinstance(row["met"], bool), row["row"]
    for row in rows[: len(models)]:  # each installed peer is timed or refused, with a reason
        for peer, module in PEERS.items():
            timed = [k for k in row["baselines"] if k.startswith(peer)]
            refused = [k for k in row["refused"] if k.startswith(peer)]
            installed = importlib.util.find_spec(module) is not None
            assert len(timed) + len(refused) == installed, (row["row"], peer)
        assert all(isinstance(v, str) and v for v in row["refused"].values()), row["row"]
        assert all(b["time_s"] > 0 for b in row["baselines"].values()), row["row"]
