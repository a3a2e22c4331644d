"""`benchmarks/run.py --quick` runs and reports every row of its table (format only: no timing assertions)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
]
KEYS = {"row", "quantity", "model", "time_s", "limit", "limit_s", "ratio_to_limit", "target", "baselines",
        "peak_bytes", "met"}  # fmt: skip


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
    assert {"machine", "rounds", "num_examples", "timing", "rows", "total_wall_s"} <= result.keys()
    assert {"cpu_count", "torch", "threads"} <= result["machine"].keys()
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ROWS
    for name, row in rows.items():
        assert set(row) == KEYS, name
        assert row["ratio_to_limit"] > 0 and isinstance(row["met"], bool), name
        assert name in proc.stdout  # the printed table has the row too
    for name in ("stiffness MLP", "stiffness CNN"):
        baselines = rows[name]["baselines"]
        assert {"vmap(grad) + matmul", "per-example loop"} <= baselines.keys()
        assert all(b["time_s"] > 0 and b["speedup"] > 0 for b in baselines.values())
        peers = {"Opacus GradSampleModule + matmul": "opacus", "BackPACK BatchGrad + matmul": "backpack"}
        for label, module in peers.items():  # peer rows exactly when the peer is installed
            assert (label in baselines) == (importlib.util.find_spec(module) is not None)
    assert "per-example loop" in rows["jacobian_norm MLP"]["baselines"]
    peaks = rows["memory CNN"]["peak_bytes"]
    assert set(peaks) == {"jacobian_norm", "loss_gradient_gram"}
    assert all(set(p) == {"8", "80", "unchunked"} for p in peaks.values())


@pytest.mark.slow
def test_architecture_rows_report_every_model():
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _architectures
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = _architectures.architecture_rows(4, 1, per_example=False) + _architectures.jacobian_rows(4, 1)
    assert [r["row"] for r in rows] == [
        "gram resnet18", "gram ViT", "gram text", "jacobian_norm resnet18", "jacobian_norm ViT", "jacobian_norm text",
    ]  # fmt: skip
    for row in rows:
        assert set(row) == KEYS and row["ratio_to_limit"] > 0 and isinstance(row["met"], bool), row["row"]
