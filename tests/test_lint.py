"""``ruff check`` over everything that is Python in the repository.

The rules are in ``pyproject.toml`` (``[tool.ruff]``): line length 120, pycodestyle, pyflakes, isort, bugbear,
pyupgrade and pydocstyle with the Google convention.

Run it yourself with ``ruff check lightning_sensitivity tests examples benchmarks experiments`` (``--statistics`` for
counts per rule). The clean-code test is ``xfail(strict=False)`` until the package is clean: the maintainer removes
the mark in one commit after the outstanding violations are fixed, so from then on any new one fails the suite.
The configuration test is not xfail, so a broken ``[tool.ruff]`` table fails now rather than hiding behind the mark.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["lightning_sensitivity", "tests", "examples", "benchmarks", "experiments"]

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


@pytest.mark.xfail(strict=False, reason="enabled once the package is clean")
def test_ruff_check_is_clean():
    proc = _ruff("check", "--no-cache", "--output-format", "concise", *TARGETS)
    assert proc.returncode == 0, f"ruff check found violations:\n{proc.stdout[-6000:]}{proc.stderr}"
