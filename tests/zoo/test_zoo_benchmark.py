"""`benchmarks/zoo_table.py --quick` runs and reports its table (format only: no timing assertions)."""

import json
from pathlib import Path

import pytest
from helpers import load_module

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _script():
    return load_module(ROOT / "benchmarks" / "zoo_table.py", "zoo_benchmark")


def test_quick_run_reports_every_requested_model(tmp_path, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    out = tmp_path / "zoo.json"
    assert _script().main(["--quick", "--models", "deit_tiny", "llama", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| model | parameters | engine | Gram / one forward+backward | Jacobian / (1+C) forwards |" in table
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["deit_tiny", "llama"]
    for row in rows:
        assert row["jacobian_over_limit_J"] > 0 and row["engine"]
        assert (row["gram_over_limit_G"] is None) == row["engine"].startswith("none")
        assert f"| {row['model']} |" in table


def test_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script().main(["--models", "resnet9000"])
    assert exit_.value.code == 2
    assert "`--models` expected names among" in capsys.readouterr().err
