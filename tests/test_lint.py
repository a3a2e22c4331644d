"""``ruff check`` over everything that is Python in the repository.

The rules are in ``pyproject.toml`` (``[tool.ruff]``): line length 120, pycodestyle, pyflakes, isort, bugbear,
pyupgrade and pydocstyle with the Google convention.

Run it yourself with ``ruff check lightning_sensitivity tests benchmarks experiments examples`` and ``ruff format
--check lightning_sensitivity benchmarks examples``. Everything is clean under ``ruff check``, and the package, the
benchmarks and the examples under ``ruff format`` too; any new violation fails the suite. The tests and the
experiments are not held to ``ruff format`` (hand-aligned tables and calls marked ``# fmt: skip`` throughout; about
25 files would change).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["lightning_sensitivity", "tests", "examples", "benchmarks", "experiments"]
FORMATTED = ["lightning_sensitivity", "examples", "benchmarks"]

pytestmark = [
    pytest.mark.lint,
    pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff not installed (pip install -e .[dev])"),
]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_configuration_is_valid():
    # --exit-zero: violations do not count here, but an unparsable config or an unknown rule still exits 2.
    proc = _ruff("check", "--exit-zero", "--no-cache", *TARGETS)
    assert proc.returncode == 0, proc.stderr


def test_ruff_check_is_clean():
    proc = _ruff("check", "--no-cache", "--output-format", "concise", *TARGETS)
    assert proc.returncode == 0, f"ruff check found violations:\n{proc.stdout[-6000:]}{proc.stderr}"


def test_ruff_format_is_clean():
    proc = _ruff("format", "--check", "--no-cache", *FORMATTED)
    assert proc.returncode == 0, f"ruff format would change:\n{proc.stdout[-3000:]}{proc.stderr}"
