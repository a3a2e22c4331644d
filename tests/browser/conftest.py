"""Fixtures of the end-to-end tests: one quickstart run watched live by one TensorBoard, shared by the whole session.

The quickstart (``examples/quickstart.py --fast --epochs 5``) and ``tensorboard`` start together in the background;
the live test polls TensorBoard while training runs, the browser tests wait for the run to finish and look at the
same server. Both processes are stopped by their process-group ids at the end of the session, with time limits.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _chromium import chromium_path  # this folder is on sys.path: pytest puts a conftest's folder there
from _processes import (
    EPOCHS,
    PROBE_TAG,
    QUICKSTART,
    QUICKSTART_TIMEOUT,
    REPORT_MODULE,
    TENSORBOARD_START_TIMEOUT,
    QuickstartRun,
    TensorBoard,
    child_env,
    quickstart_command,
    scalar_steps,
    start,
    stop,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the live test first: it must see the quickstart while it trains, the others need it finished."""
    def watches_live(item: pytest.Item) -> bool:
        names = getattr(item, "fixturenames", ())
        return "quickstart_run" in names and "finished_run" not in names

    live = [i for i in items if watches_live(i)]
    if live:
        items[:] = live + [i for i in items if i not in live]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickstartRun]:
    """Start the fast quickstart and a TensorBoard on its (not yet existing) log folder; stop both afterwards."""
    if not QUICKSTART.is_file():
        pytest.skip(f"{QUICKSTART} is missing")
    workdir = tmp_path_factory.mktemp("quickstart")
    log = workdir / "quickstart.log"
    command = quickstart_command(Path("."), "--fast", "--epochs", str(EPOCHS), paced=True)
    proc = start(command, cwd=workdir, log=log, env=child_env())
    tensorboard = run = None
    try:
        (workdir / "lightning_logs").mkdir(exist_ok=True)
        tensorboard = TensorBoard(workdir / "lightning_logs", workdir)
        tensorboard.wait_ready(TENSORBOARD_START_TIMEOUT)
        run = QuickstartRun(proc, workdir, log, tensorboard, time.monotonic())
        yield run
    finally:
        stop(proc, grace=10.0)
        if run is not None and run.report is not None:
            stop(run.report, grace=5.0)
        if tensorboard is not None:
            tensorboard.stop()


@pytest.fixture(scope="session")
def finished_run(quickstart_run: QuickstartRun) -> QuickstartRun:
    """The same run once the quickstart exited with 0 and TensorBoard has loaded every measurement."""
    proc = quickstart_run.proc
    try:
        proc.wait(timeout=max(1.0, QUICKSTART_TIMEOUT - (time.monotonic() - quickstart_run.started)))
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"quickstart did not finish within {QUICKSTART_TIMEOUT:.0f} s:\n{quickstart_run.output()}")
    if proc.returncode != 0:
        pytest.fail(f"quickstart exited with {proc.returncode}:\n{quickstart_run.output()}")
    # measured at initialisation and after each epoch; TensorBoard rereads the files every second
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if len(set(scalar_steps(quickstart_run.tensorboard, PROBE_TAG))) >= EPOCHS + 1:
            break
        time.sleep(0.5)
    if REPORT_MODULE.is_file() and quickstart_run.report is None:
        # overlaps with the dashboard tests; test_offline_report_renders_in_the_browser waits for it
        quickstart_run.report = start(
            quickstart_run.report_command(), cwd=quickstart_run.workdir, log=quickstart_run.workdir / "report.log",
            env=child_env(),
        )
    return quickstart_run


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the headless browser; the browser tests skip (with the way to install it) when there is none.

    Session-scoped so that the skip happens before the quickstart is started for nothing.
    """
    path = chromium_path()
    if path is None:
        pytest.skip("chromium not found: run `bash .ci/browser-setup.sh` (Debian: apt-get install chromium)")
    return path
