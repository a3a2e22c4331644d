"""Starting and stopping the helper processes of the end-to-end tests (TensorBoard, the quickstart, Chromium).

Every process is started in its own session, so that it and the children it spawns (Chromium's zygote and
renderers) form one process group whose id is the PID we got back. Stopping sends SIGTERM to that group, waits,
then SIGKILL: nothing outlives a test, and nothing is killed by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.py"
REPORT_MODULE = REPO / "lightning_sensitivity" / "report.py"

# Long enough that TensorBoard can be polled while it runs: since the images cost milliseconds, 4 fast epochs took
# about 5 s, all written before the event file's first flush reached TensorBoard; 12 take about 10-20 s here.
EPOCHS = 12
# Hard limits so that nothing can hang CI; far above the measured ~60 s for the whole quickstart.
QUICKSTART_TIMEOUT = 300.0
TENSORBOARD_START_TIMEOUT = 90.0

RUN = "version_0"  # the run name TensorBoard gives lightning_logs/version_0
PROBE_TAG = "sensitivity/jacobian_norm/val/mean"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: Sequence[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``args`` in a new session with stdout and stderr going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(args),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop the process group led by ``proc``: SIGTERM, up to ``grace`` seconds, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # The leader may be gone while children of its group live on (e.g. Chromium renderers).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for assertion messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"<no log: {err}>"


#: Seconds the live run pauses after each training epoch: the run must outlast TensorBoard's start-up and a few polls
#: however fast this machine trains (12 fast epochs took 10-20 s on a loaded machine, but 2 s on a quiet one after
#: the measurements got cheaper, all before TensorBoard had read a step).
SECONDS_PER_EPOCH = 1.0

# The quickstart, unchanged, with one callback added to its Trainer that sleeps after every training epoch.
_PACED = """
import runpy, sys, time
import lightning.pytorch as pl

class _Pace(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep({seconds})

_init = pl.Trainer.__init__

def _paced_init(self, *args, callbacks=None, **kwargs):
    _init(self, *args, callbacks=[*(callbacks or []), _Pace()], **kwargs)

pl.Trainer.__init__ = _paced_init
sys.argv = [{path!r}, *sys.argv[1:]]
runpy.run_path({path!r}, run_name="__main__")
"""


def quickstart_command(log_dir: Path, *extra: str, paced: bool = False) -> list[str]:
    """The quickstart's command line; ``paced``: with a pause of :data:`SECONDS_PER_EPOCH` after each epoch."""
    if paced:
        script = _PACED.format(seconds=SECONDS_PER_EPOCH, path=str(QUICKSTART))
        return [sys.executable, "-c", script, "--log-dir", str(log_dir), *extra]
    return [sys.executable, str(QUICKSTART), "--log-dir", str(log_dir), *extra]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The repository root on the path, so the children import this checkout even without `pip install -e`.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class TensorBoard:
    """A ``tensorboard`` server on 127.0.0.1 (the one installed next to this Python) and its HTTP data API."""

    def __init__(self, logdir: Path, workdir: Path) -> None:
        self.logdir = logdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "tensorboard.log"
        args = [
            sys.executable, "-m", "tensorboard.main",
            "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(self.port),
            # reread the event files every second, so that the live test sees new steps quickly
            "--reload_interval", "1",
        ]
        self.proc = start(args, cwd=workdir, log=self.log, env=child_env())

    def get(self, path: str, *, timeout: float = 10.0) -> Any:
        """GET ``path`` (e.g. ``/data/runs``) and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read().decode())

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server answers ``/data/runs``; raise with its log when it died or never answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                self.get("/data/runs", timeout=2.0)
                return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(0.3)
        raise RuntimeError(f"tensorboard did not answer within {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        stop(self.proc, grace=5.0)


@dataclass
class QuickstartRun:
    """The background quickstart, its working directory and the TensorBoard watching its logs."""

    proc: subprocess.Popen
    workdir: Path
    log: Path
    tensorboard: TensorBoard
    started: float
    # `python -m lightning_sensitivity.report`, started in the background as soon as the run has finished
    report: subprocess.Popen | None = None

    @property
    def log_dir(self) -> Path:
        return self.workdir / "lightning_logs"

    @property
    def report_dir(self) -> Path:
        return self.workdir / "report"

    def report_command(self) -> list[str]:
        return [sys.executable, "-m", "lightning_sensitivity.report", str(self.log_dir), "--out", str(self.report_dir)]

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return tail(self.log)


def scalar_steps(tensorboard: TensorBoard, tag: str, run: str = RUN) -> list[int]:
    """Steps TensorBoard currently serves for ``tag`` (empty while the run or tag is not there yet)."""
    try:
        points = tensorboard.get("/data/plugin/scalars/scalars?" + urlencode({"run": run, "tag": tag}))
    except Exception:  # 400/404 until the event file holds the tag
        return []
    return [int(step) for _, step, _ in points]
