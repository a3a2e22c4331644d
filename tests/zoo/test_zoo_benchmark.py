"""`benchmarks/zoo_table.py --quick` runs and reports its table (format only: no timing assertions)."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("zoo_benchmark", ROOT / "benchmarks" / "zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
