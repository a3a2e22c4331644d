"""The API reference (``docs/api``, Sphinx autodoc + napoleon) builds from the docstrings with warnings as errors.

The build runs in a subprocess, exactly as a contributor would run it::

    python -m sphinx -W --keep-going -b html docs/api /tmp/api-html

so a docstring that breaks RST (a role split across lines, a bad indent under ``Args:``, an unknown section) fails
this test with Sphinx's own message naming the file and line. It takes about 10 s on one core, hence ``slow``.

The ``Example:`` doctests in the package's docstrings run here too (fast, no Sphinx needed).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "api"

# page of docs/api -> the module whose ``__all__`` that page must document in full.
PAGES = {
    "callbacks": "lightning_sensitivity.callbacks",
    "functional": "lightning_sensitivity.functional",
    "logging": "lightning_sensitivity.logging",
    "models": "lightning_sensitivity.models",
    "probes": "lightning_sensitivity.probes",
    "schedules": "lightning_sensitivity.schedules",
    "report": "lightning_sensitivity.report",
    "keys": "lightning_sensitivity.keys",
}

needs_sphinx = pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None, reason="sphinx not installed (pip install -e .[docs])"
)


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api-html")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(out / ".doctrees"),
         str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"sphinx-build failed (warnings are errors):\n{proc.stderr}\n{proc.stdout[-4000:]}"
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    return out


@pytest.mark.slow
@needs_sphinx
def test_build_has_one_page_per_public_module(html_dir):
    assert (html_dir / "index.html").is_file()
    index = (html_dir / "index.html").read_text(encoding="utf-8")
    for page in PAGES:
        assert (html_dir / f"{page}.html").is_file(), page
        assert f'href="{page}.html"' in index, f"{page} is not in the index toctree"


@pytest.mark.slow
@needs_sphinx
@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_public_name_is_documented(html_dir, page):
    """Each name in the module's ``__all__`` has an entry (an autodoc import failure or a lost docstring shows here)."""
    module = PAGES[page]
    ids = set(re.findall(r'id="([^"]+)"', (html_dir / f"{page}.html").read_text(encoding="utf-8")))
    missing = [name for name in importlib.import_module(module).__all__ if f"{module}.{name}" not in ids]
    assert not missing, f"{page}.html lacks entries for {missing} (add a docstring or a `#:` comment)"


def test_docstring_examples_run():
    """Every ``>>>`` example in the package passes (``python -m pytest --doctest-modules lightning_sensitivity``)."""
    import torch

    import lightning_sensitivity

    names = [lightning_sensitivity.__name__] + [
        m.name
        for m in pkgutil.walk_packages(lightning_sensitivity.__path__, prefix=f"{lightning_sensitivity.__name__}.")
    ]
    failed, attempted = [], 0
    with torch.random.fork_rng(devices=[]):  # the examples draw random tensors; other tests keep their streams
        for name in names:
            result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
            attempted += result.attempted
            if result.failed:
                failed.append(name)
    assert not failed, f"doctest failures in {failed} (details above, in the captured stdout)"
    assert attempted > 0
