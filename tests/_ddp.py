"""The one multi-process runner of the tests: a module-level function on N CPU processes, its return values back.

:func:`run_distributed` starts ``python tests/_ddp.py`` (this file) in a fresh process group, with the
environment of a distributed run removed (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) and one
intra-op thread per process (``OMP_NUM_THREADS=1``: the ranks share the machine's cores). Two launchers:

- ``launcher="gloo"``: the runner starts ``world_size`` processes itself (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT`` on a free port); each initialises the default ``gloo`` process group, calls the function, waits for
  the others at a barrier and destroys the group.
- ``launcher="lightning"``: the runner starts one process (rank 0); the function's ``Trainer`` starts the others --
  ``strategy="ddp"`` and ``ModelParallelStrategy`` re-run this command line with ``LOCAL_RANK`` set (which inside
  pytest would re-run the test session: the reason for a subprocess), ``ddp_spawn``/``ddp_fork`` start workers from
  it (those do not call the function: pass ``ranks_returning=(0,)``).

The function is called as ``fn(out, *args)`` (``out``: a directory for whatever files it writes) in every process
that runs it; what it returns is pickled (``torch.save``) and comes back in :attr:`DistributedRun.results`, by
rank. When a process raises, its traceback is written beside the results; a non-zero exit, a timeout (a hang: the
whole process group is killed) or a missing result fails the test with every rank's traceback and the output tail.
The function must be importable in the child: a module-level function of a module under ``tests/``.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip
LAUNCHERS = ("gloo", "lightning")
TAIL = 5000  # characters of a process's output shown on failure
GRACE = 30.0  # s the Lightning-started ranks get to write their result after rank 0 exits


@dataclass
class DistributedRun:
    """The outcome of :func:`run_distributed`: what each rank's call returned, the output and the wall time."""

    out: Path
    results: dict[int, Any]
    wall_s: float
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    def load(self, name: str) -> Any:
        """A file the function wrote under ``out``, as ``torch.load`` reads it."""
        import torch

        return torch.load(self.out / name, weights_only=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(
    fn: Callable[..., Any],
    out: str | Path,
    *args: str,
    world_size: int = 2,
    launcher: str = "gloo",
    timeout: float = 120.0,
    cwd: str | Path | None = None,
    ranks_returning: tuple[int, ...] | None = None,
) -> DistributedRun:
    """Run ``fn(out, *args)`` on ``world_size`` CPU processes; fail the test with the ranks' tracebacks if any fails.

    Args:
        fn: a module-level function of a module under ``tests/`` (imported by name in each process).
        out: the directory passed to ``fn`` (created if missing).
        args: further string arguments of ``fn`` (they travel on the command line).
        world_size: the number of processes.
        launcher: ``"gloo"`` (the runner starts every rank and the process group) or ``"lightning"`` (the runner starts
            rank 0, the ``Trainer`` inside ``fn`` starts the others); see the module docstring.
        timeout: seconds before the run counts as hung and its process group is killed.
        cwd: the processes' working directory (default ``out``).
        ranks_returning: the ranks whose result must come back (default: every rank; ``(0,)`` for the Lightning
            strategies whose workers do not run ``fn``: ``ddp_spawn``, ``ddp_fork``).
    """
    import pytest

    if launcher not in LAUNCHERS:
        raise ValueError(f"`launcher` expected one of {LAUNCHERS}, got {launcher!r}")
    if world_size < 1:
        raise ValueError(f"`world_size` expected a positive number of processes, got {world_size!r}")
    module, name = fn.__module__, fn.__qualname__
    if "." in name or module == "__main__":
        raise ValueError(f"`fn` expected a module-level function of an importable module, got {module}.{name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    required = tuple(range(world_size)) if ranks_returning is None else ranks_returning
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="ddp-run-") as box:
        command = [sys.executable, __file__, box, _import_root(fn), module, name, str(out), *args]
        starts = range(world_size) if launcher == "gloo" else range(1)
        if launcher == "gloo":
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world_size))
        start = time.monotonic()
        procs, logs = [], []
        for rank in starts:  # output to files, not pipes: a full pipe would block a rank that is not being read
            logs.append((open(Path(box) / f"out{rank}.txt", "w+"), open(Path(box) / f"err{rank}.txt", "w+")))
            procs.append(subprocess.Popen(command, cwd=str(cwd or out), env={**env, "_DDP_RUNNER_RANK": str(rank)},
                                          stdout=logs[-1][0], stderr=logs[-1][1], start_new_session=True))  # fmt: skip
        hung = _wait(procs, start + timeout)
        outputs = [(_read(stdout), _read(stderr)) for stdout, stderr in logs]
        wall = time.monotonic() - start
        box_path = Path(box)
        if not hung and all(p.returncode == 0 for p in procs):
            deadline = time.monotonic() + (GRACE if launcher == "lightning" else 0.0)
            while not all((box_path / f"rank{r}.pt").exists() for r in required) and time.monotonic() < deadline:
                time.sleep(0.2)
        failed = hung or any(p.returncode != 0 for p in procs)
        missing = [r for r in required if not (box_path / f"rank{r}.pt").exists()]
        if failed or missing:
            pytest.fail(_failure(fn, world_size, launcher, timeout, procs, outputs, hung, missing, box_path))
        import torch

        results = {int(p.stem[4:]): torch.load(p, weights_only=False) for p in sorted(box_path.glob("rank*.pt"))}
        _kill(procs)  # what the ranks started and left behind (nothing, in a healthy run)
    return DistributedRun(out, results, wall, "".join(o for o, _ in outputs), "".join(e for _, e in outputs))


def _import_root(fn: Callable[..., Any]) -> str:
    """The ``sys.path`` entry under which ``fn.__module__`` imports by its dotted name."""
    file = Path(sys.modules[fn.__module__].__file__).resolve()
    return str(file.parents[fn.__module__.count(".")])


def _read(file: Any) -> str:
    file.seek(0)
    text = file.read()
    file.close()
    return text


def _wait(procs: list[subprocess.Popen], deadline: float) -> bool:
    """Wait for every process until ``deadline``; on a hang kill them all, with what they started. Hung or not."""
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        return False
    except subprocess.TimeoutExpired:
        _kill(procs)
        for proc in procs:
            proc.wait()
        return True


def _kill(procs: list[subprocess.Popen]) -> None:
    """Kill each rank's process group: the rank and whatever it started (Lightning's other ranks)."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _failure(fn, world_size, launcher, timeout, procs, outputs, hung, missing, box: Path) -> str:
    what = f"{fn.__module__}.{fn.__qualname__} on {world_size} processes ({launcher})"
    lines = [f"{what} did not finish within {timeout:g} s (a hang?)" if hung else f"{what} failed"]
    for rank, (proc, (stdout, stderr)) in enumerate(zip(procs, outputs, strict=True)):
        lines.append(f"--- process {rank}: exit code {proc.returncode}")
        lines.append(f"stderr (tail):\n{stderr[-TAIL:]}" if stderr else "stderr: (empty)")
        if stdout:
            lines.append(f"stdout (tail):\n{stdout[-TAIL // 5 :]}")
    for path in sorted(box.glob("rank*.traceback")):
        lines.append(f"--- traceback of {path.stem}:\n{path.read_text()}")
    if missing:
        lines.append(f"no result came back from rank(s) {missing}")
    return "\n".join(lines)


def _child(box: Path, root: str, module: str, name: str, out: Path, args: list[str]) -> None:
    """One process: the process group (``gloo`` launcher), the call, its result or its traceback."""
    for entry in (root, str(TESTS)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    gloo = "RANK" not in os.environ and "LOCAL_RANK" not in os.environ and "MASTER_PORT" in os.environ
    if gloo:  # started by the runner: this process's rank is the one it was given
        os.environ["RANK"] = os.environ["_DDP_RUNNER_RANK"]
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    try:
        import torch

        if gloo:
            import torch.distributed as dist

            dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
        fn = getattr(importlib.import_module(module), name)
        result = fn(out, *args)
        torch.save(result, box / f"rank{rank}.partial")
        os.replace(box / f"rank{rank}.partial", box / f"rank{rank}.pt")  # whole or absent when the runner reads it
        if gloo:
            dist.barrier()  # neither rank tears the group down while the other still uses it
            dist.destroy_process_group()
    except BaseException:
        (box / f"rank{rank}.traceback").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    _child(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]), sys.argv[6:])
