"""``python -m build`` gives a wheel and an sdist that hold the package, and the wheel installs and imports.

How, and why this way:

* The build runs on a copy of the source tree in ``tmp_path`` (so ``build/`` and ``*.egg-info`` are not written
  into the checkout, which other test runs may be reading) with ``--no-isolation``: an isolated build would
  download setuptools from PyPI, and tests never touch the network. The build backend is therefore the setuptools
  of the environment running the tests (``[build-system] requires`` is not re-resolved).
* ``python -m build`` makes the sdist first and the wheel *from the sdist*, so a file that the sdist forgets is
  missing from the wheel too, and the wheel check below catches it.
* The wheel is installed by pip (``--no-deps --no-index``) into a fresh venv made with ``--without-pip`` (pip is
  the one running these tests, pointed at the new interpreter with ``--python``; seconds instead of bootstrapping
  pip into it). The venv does not get torch/Lightning installed (gigabytes, and no network): a ``.pth`` file
  *appends* this environment's site-packages after the venv's own, so the dependencies resolve there while
  ``lightning_sensitivity`` itself can only come from the installed wheel -- this environment's editable install is
  not activated (``.pth`` files are only run for site directories, not for appended paths), and the import runs
  from a cwd outside the checkout with ``PYTHONPATH`` cleared. The test asserts where the package was imported
  from, so a silent fallback to the source tree would fail it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_sensitivity"
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "lightning_logs", ".pytest_cache", ".hypothesis"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("build") is None, reason="`build` not installed (pip install -e .[dev])"
    ),
]


def _source_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("packaging")
    src, out = tmp / "src", tmp / "dist"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        cwd=tmp, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0], "tmp": tmp}


def test_wheel_holds_every_package_module_and_nothing_else(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert _source_modules() <= modules, f"missing from the wheel: {sorted(_source_modules() - modules)}"
    stray = sorted(
        {n.split("/")[0] for n in names} - {PACKAGE} - {n.split("/")[0] for n in names if ".dist-info/" in n}
    )
    assert not stray, f"top-level entries in the wheel besides the package: {stray}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/", "experiments/"))]


def test_sdist_holds_readme_pyproject_and_the_package(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"README.md", "pyproject.toml", "PKG-INFO"} <= names
    assert _source_modules() <= names, f"missing from the sdist: {sorted(_source_modules() - names)}"
    assert not [n for n in names if n.startswith((".venv/", ".git/", "lightning_logs/"))]


def test_wheel_installs_into_a_fresh_venv_and_imports(dists):
    tmp = dists["tmp"]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(dists["wheel"])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # Dependencies (torch, Lightning, ...) from this environment, searched after the venv's own site-packages.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(purelib) / "_test_deps.pth").write_text("\n".join(deps) + "\n")

    script = f"""
import importlib.metadata, pathlib, torch, lightning_sensitivity as ls
from lightning_sensitivity.functional import jacobian_norm
from lightning_sensitivity.callbacks import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
import lightning_sensitivity.logging, lightning_sensitivity.models, lightning_sensitivity.report
assert pathlib.Path(ls.__file__).resolve().is_relative_to(pathlib.Path({purelib!r}).resolve()), ls.__file__
# The installed metadata (pyproject's version) and the package's __version__ agree, and the metadata is the wheel's.
dist = importlib.metadata.distribution("lightning-sensitivity")
assert dist.version == ls.__version__, (dist.version, ls.__version__)
assert pathlib.Path(dist.locate_file("")).resolve() == pathlib.Path({purelib!r}).resolve(), dist.locate_file("")
torch.manual_seed(0)
norms = jacobian_norm(torch.nn.Linear(3, 2), torch.randn(4, 3), output="logits")
assert norms.shape == (4,) and bool((norms > 0).all()), norms
print("ok", ls.__file__)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    proc = subprocess.run([str(python), "-c", script], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("ok"), proc.stdout
