"""Reading runs: every folder of TensorBoard event files is a run; one row per run at the chosen epoch."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_sensitivity import keys as _keys

# The names are built in lightning_sensitivity.keys.
SENSITIVITY_PREFIX = _keys.ROOT + "/"
GENERALIZATION_KEYS = _keys.GENERALIZATION_KEYS
DEFAULT_X = _keys.COMPARE_X
DEFAULT_Y = _keys.COMPARE_Y
EPOCH_KEY = "epoch"
HPARAMS_PREFIX = "hparams/"
EVENTS_GLOB = "events.out.tfevents.*"

Row = dict[str, Any]

__all__ = ["compare_runs", "find_event_runs"]


def find_event_runs(log_root: str | Path) -> list[Path]:
    """Directories under ``log_root`` (itself included) that directly hold TensorBoard event files, sorted.

    Raises:
        FileNotFoundError: if ``log_root`` is not a directory.
    """
    root = Path(log_root)
    if not root.is_dir():
        raise FileNotFoundError(f"`log_root` (LOG_ROOT) expected a directory, got {str(root)!r}")
    return sorted({p.parent for p in root.rglob(EVENTS_GLOB) if p.is_file()})


def _read_scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run's event files (oldest file first) as ``tag -> {step: value}``; a later write wins."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob(EVENTS_GLOB)):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                elif value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                else:
                    continue
                scalars.setdefault(value.tag, {})[int(event.step)] = number
    return scalars


def _read_hparams(run: Path) -> dict[str, Any]:
    path = run / "hparams.yaml"
    if not path.is_file():
        return {}
    import yaml

    class _Lenient(yaml.SafeLoader):  # Lightning may write python-object tags; keep their plain content
        pass

    def _any(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    _Lenient.add_multi_constructor("", _any)
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_Lenient)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        warnings.warn(f"Ignoring unreadable {path}: {err}", stacklevel=3)
        return {}
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            plain = isinstance(node, (int, float, str, bool)) or node is None
            flat[HPARAMS_PREFIX + prefix] = node if plain else str(node)

    if isinstance(loaded, dict) and loaded:
        visit("", loaded)
    return flat


def _value_at(series: dict[int, float], key: str, epoch: int | str, ends: dict[int, int]) -> float:
    if epoch == "last":
        return series[max(series)]
    assert isinstance(epoch, int)
    if epoch == 0:
        return series.get(0, math.nan) if key.startswith(SENSITIVITY_PREFIX) else math.nan
    end = ends[epoch - 1]
    if key.startswith(SENSITIVITY_PREFIX):
        # The monitors log at Lightning's epoch-end step E; runs written before 0.1 logged at E + 1.
        return series.get(end, series.get(end + 1, math.nan))
    start = ends.get(epoch - 2, -1)
    steps = [s for s in series if start < s <= end]
    return series[max(steps)] if steps else math.nan


def _check_epoch(epoch: Any, name: str = "`epoch`") -> int | str:
    if epoch == "last":
        return "last"
    if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer, str)):
        raise TypeError(f"{name} expected 'last' or an int >= 0, got {type(epoch).__name__} {epoch!r}")
    try:
        value = int(epoch)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name} expected 'last' or an int >= 0, got {epoch!r}")
    return value


def _collect(log_root: str | Path, epoch: int | str) -> tuple[list[Row], list[str]]:
    """Rows with every scalar of every run and the ordered column names (scalars beyond the default columns too)."""
    root = Path(log_root)
    runs = find_event_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"`log_root` (LOG_ROOT) {str(root)!r} holds no runs: expected TensorBoard event files like "
            f"'<name>/version_0/{EVENTS_GLOB}' written by Lightning's TensorBoardLogger"
        )
    rows: list[Row] = []
    for run in runs:
        scalars, notes = _read_scalars(run), []
        ends: dict[int, int] = {}
        for step, value in scalars.get(EPOCH_KEY, {}).items():
            ends[int(round(value))] = max(step, ends.get(int(round(value)), step))
        reached = epoch == "last" or epoch == 0 or (epoch - 1) in ends
        if not reached:
            notes.append(f"epoch {epoch} not reached (logged epochs: {sorted(ends) or 'none'})")
        values = {
            k: _value_at(s, k, epoch, ends) if reached and s else math.nan for k, s in scalars.items() if k != EPOCH_KEY
        }
        label = run.relative_to(root).as_posix() if run != root else "."
        rows.append({"run": label, **_read_hparams(run), **values, "note": "; ".join(notes)})
    hparams = sorted({k for r in rows for k in r if k.startswith(HPARAMS_PREFIX)})
    scalar_keys = sorted({k for r in rows for k in r if k not in ("run", "note") and not k.startswith(HPARAMS_PREFIX)})
    columns = ["run", *hparams, *scalar_keys, "note"]
    return [{c: r.get(c, math.nan) for c in columns} for r in rows], columns


def _check_keys(keys: Sequence[str] | None, columns: Sequence[str], name: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        raise TypeError(f"{name} expected a sequence of key names, got the str {keys!r} (wrap it in a list)")
    unknown = [k for k in keys if k not in columns or k in ("run", "note")]
    if unknown:
        available = ", ".join(c for c in columns if c not in ("run", "note"))
        raise ValueError(f"{name} got unknown key(s) {unknown}; keys that exist: {available}")
    return list(keys)


def _select(rows: list[Row], columns: list[str], extra: Sequence[str]) -> list[Row]:
    """Columns in table order: run, hyperparameters, sensitivity scalars, generalization keys, other requested, note."""
    hparams = [c for c in columns if c.startswith(HPARAMS_PREFIX)]
    sensitivity = [c for c in columns if c.startswith(SENSITIVITY_PREFIX)]
    kept = ["run", *hparams, *sensitivity, *GENERALIZATION_KEYS]
    kept += [k for k in dict.fromkeys(extra) if k not in kept]
    return [{c: r.get(c, math.nan) for c in [*kept, "note"]} for r in rows]


def compare_runs(
    log_root: str | Path, *, x: Sequence[str] | None = None, y: Sequence[str] | None = None, epoch: int | str = "last"
) -> list[Row]:
    """One dict per run under ``log_root`` (see the module docstring for which runs, columns and epoch).

    Args:
        log_root: directory searched recursively for TensorBoard event files.
        x, y: extra keys the table must hold (any scalar tag or ``hparams/...`` column); checked to exist.
        epoch: ``"last"`` or the number of completed epochs ``N >= 0``.

    Raises:
        FileNotFoundError: ``log_root`` is not a directory or holds no event files.
        TypeError / ValueError: bad ``epoch``; a key of ``x`` / ``y`` in no run (the message lists those that exist).
    """
    epoch = _check_epoch(epoch)
    rows, columns = _collect(log_root, epoch)
    extra = _check_keys(x, columns, "`x`") + _check_keys(y, columns, "`y`")
    return _select(rows, columns, extra)
