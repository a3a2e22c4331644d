"""Per-epoch measurement files, so every result can be re-plotted offline (``python -m lightning_sensitivity.report``).

Layout: ``{log_dir}/sensitivity/{quantity}/epoch_{epoch:04d}.npz``, one NumPy archive per quantity and epoch holding
the measured arrays plus ``epoch``, ``step`` and ``meta`` (a JSON string). Files are written atomically (temporary
file + ``os.replace``), so a reader never sees a half-written file.

Key conventions (what the callbacks write and the report reads; every key is optional for the reader). The names
are built in :mod:`lightning_sensitivity.keys` (``ARTIFACT_ARRAYS``, ``split_array``, ``stiffness_array``):

``jacobian_norm`` (:data:`JACOBIAN_NORM`)
    ``val_norms`` ``[N]`` per-point norms, ``val_labels`` ``[N]`` int, ``val_correct`` ``[N]`` bool (prediction is
    right), ``train_norms`` / ``train_labels`` / ``train_correct`` likewise for the training probe set; scalars
    ``val_mean``, ``val_median``, ``val_p90``, ``train_mean``, ``train_median``, ``train_p90``, ``train_val_ratio``,
    ``misclassification_auroc``, ``confidence_auroc``, ``entropy_auroc``. ``meta``: ``class_names``, ``output``.
``transitions`` (:data:`TRANSITIONS`)
    ``activation``, ``region_changes``, ``prediction``: ``[K]`` counts per trajectory through validation points;
    ``anchor_indices`` ``[K, 3]`` probe positions of the anchors; optional ``train_activation``,
    ``train_region_changes``, ``train_prediction``, ``train_anchor_indices`` for trajectories through training
    points. ``meta``: ``num_points``, ``num_units``, ``splits``.
``stiffness`` (:data:`STIFFNESS`), for each pair group ``g`` in ``meta["groups"]`` (``train_train``, ``train_val``,
    ``val_val``), keys ``f"{g}/{name}"`` for ``name`` in :data:`STIFFNESS_GROUP_KEYS`: ``class_sign``,
    ``class_cosine`` ``[C, C]`` (NaN where a cell has no pairs), ``superclass_sign``, ``superclass_cosine`` (when
    class groups are given), ``bin_edges`` ``[B + 1]``, ``distance_sign``, ``distance_cosine``, ``distance_count``
    ``[B]``, scalars ``sign_mean``, ``cosine_mean``, ``same_class_sign``, ``different_class_sign``,
    ``same_class_cosine``, ``different_class_cosine``, ``critical_length``. ``meta``: ``class_names``, ``groups``,
    ``group_names`` (super-class names).
    With ``influence=True`` (fit only, from the first measurement after an optimizer step): ``train_val/influence``
    ``[N_train, N_val]`` TracIn influence so far, ``train_val/self_influence`` ``[N_train]``,
    ``train_val/influence_helpful`` / ``..._harmful`` ``[N_val, k]`` training-probe row indices with
    ``..._values``, ``train_val/influence_checkpoint_epochs`` / ``..._learning_rates`` ``[T]``,
    ``train_val/train_indices`` ``[N_train]`` dataset positions; with ``flipped_labels``: ``train_val/flipped``
    ``[N_train]`` bool and the scalars ``self_influence_flipped_auroc``, ``loss_flipped_auroc``.
``sharpness``
    per split ``s`` in ``meta["splits"]``: scalars ``{s}_loss``, ``{s}_top_eigenvalue``,
    ``{s}_top_eigenvalue_residual``, ``{s}_hessian_trace``, ``{s}_hessian_trace_se``, ``{s}_gauss_newton_trace``;
    ``{s}_ritz_values`` ``[k]``, ``{s}_hutchinson_samples`` ``[K]``, ``{s}_gauss_newton_per_example`` ``[N]``.

Example::

    path = save_artifact(trainer.log_dir, "jacobian_norm", epoch=3, step=120, arrays={"val_norms": norms})
    for artifact in load_artifacts(trainer.log_dir, "jacobian_norm"):
        print(artifact.epoch, artifact.arrays["val_norms"].mean())
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_sensitivity import keys

__all__ = [
    "Artifact",
    "save_artifact",
    "load_artifacts",
    "stiffness_key",
    "ARTIFACT_DIR",
    "JACOBIAN_NORM",
    "TRANSITIONS",
    "STIFFNESS",
    "JACOBIAN_KEYS",
    "TRANSITION_KEYS",
    "STIFFNESS_GROUP_KEYS",
]

# The names are built in lightning_sensitivity.keys; these aliases keep the older spellings importable.
ARTIFACT_DIR = keys.ARTIFACT_DIR
JACOBIAN_NORM = keys.JACOBIAN
TRANSITIONS = keys.TRANSITIONS
STIFFNESS = keys.STIFFNESS
JACOBIAN_KEYS = keys.ARTIFACT_ARRAYS[keys.JACOBIAN]
TRANSITION_KEYS = keys.ARTIFACT_ARRAYS[keys.TRANSITIONS]
STIFFNESS_GROUP_KEYS = keys.STIFFNESS_GROUP_ARRAYS
# Names numpy.savez takes as its own parameters cannot be array names either.
_RESERVED = ("epoch", "step", "meta", "file", "allow_pickle")
_QUANTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE = re.compile(r"^epoch_(\d+)\.npz$")


def stiffness_key(group: str, name: str) -> str:
    """Array key of a per-group stiffness entry, e.g. ``stiffness_key("train_val", "class_sign")``.

    The same as :func:`lightning_sensitivity.keys.stiffness_array`, kept under this name for existing callers.
    """
    return keys.stiffness_array(group, name)


@dataclass
class Artifact:
    """One saved measurement.

    Attributes:
        quantity: e.g. ``"jacobian_norm"``.
        epoch: completed training epochs at measurement time (0 = initialisation).
        step: the trainer's global step of the measurement.
        arrays: the saved arrays (0-dim arrays for scalars).
        meta: the JSON metadata (e.g. ``class_names``).
        path: the file it was read from.
    """

    quantity: str
    epoch: int
    step: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def scalar(self, key: str, default: float = math.nan) -> float:
        """The array ``key`` as a float (``default`` when it is missing or not a single number)."""
        value = self.arrays.get(key)
        if value is None or value.size != 1:
            return default
        return float(value.reshape(()))


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` expected a non-negative int, got {value!r}")
    return int(value)


def _to_array(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; not imported so that this module stays light
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        value = value.numpy()
    if isinstance(value, (bool, int, float, np.generic, np.ndarray, list, tuple)):
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return array
    raise TypeError(f"`arrays[{key!r}]` expected a tensor, array or number, got {type(value).__name__}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):  # tensors
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"`meta` values must be JSON-serialisable, got {type(value).__name__}")


def save_artifact(
    log_dir: str | os.PathLike[str],
    quantity: str,
    epoch: int,
    step: int,
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Save one measurement as ``{log_dir}/sensitivity/{quantity}/epoch_{epoch:04d}.npz`` (atomically).

    An existing file for the same quantity and epoch is replaced. The monitors write ``trainer.validate`` / ``test``
    measurements under the quantities ``{quantity}.validate`` / ``{quantity}.test``, so they never replace a fit file.

    Args:
        log_dir: the run's log directory (e.g. ``trainer.log_dir``); created if missing.
        quantity: ``"jacobian_norm"``, ``"transitions"``, ``"stiffness"`` or another name of letters, digits,
            ``_``, ``.`` and ``-``.
        epoch: completed training epochs (0 = initialisation).
        step: the trainer's global step.
        arrays: name -> tensor, array or number; names may contain ``/`` (e.g. ``"train_val/class_sign"``) but
            not be ``epoch``, ``step``, ``meta``, ``file`` or ``allow_pickle``.
        meta: JSON-serialisable metadata (class names, settings).

    Returns:
        The path of the written file.

    Raises:
        ValueError: for a bad ``quantity``, ``epoch``, ``step`` or a reserved array name.
        TypeError: if ``arrays`` is not a mapping of str to numeric values or ``meta`` is not JSON-serialisable.
    """
    if not isinstance(quantity, str) or not _QUANTITY.match(quantity):
        raise ValueError(f"`quantity` expected a name of letters, digits, '_', '.' or '-', got {quantity!r}")
    epoch = _check_int(epoch, "epoch")
    step = _check_int(step, "step")
    if not isinstance(arrays, Mapping):
        raise TypeError(f"`arrays` expected a mapping of name to array, got {type(arrays).__name__}")
    payload: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"`arrays` expected non-empty str keys, got {key!r}")
        if key in _RESERVED:
            raise ValueError(f"`arrays` may not use the reserved name {key!r} (one of {_RESERVED})")
        payload[key] = _to_array(value, key)
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"`meta` expected a mapping or None, got {type(meta).__name__}")
    meta_json = json.dumps(dict(meta or {}), default=_json_default, allow_nan=True)

    directory = Path(log_dir) / ARTIFACT_DIR / quantity
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / keys.artifact_file(epoch)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, epoch=np.int64(epoch), step=np.int64(step), meta=np.array(meta_json), **payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target


def _read(path: Path, quantity: str) -> Artifact:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    epoch = int(arrays.pop("epoch"))
    step = int(arrays.pop("step"))
    meta_raw = arrays.pop("meta", None)
    meta = json.loads(str(meta_raw)) if meta_raw is not None else {}
    return Artifact(quantity=quantity, epoch=epoch, step=step, arrays=arrays, meta=meta, path=path)


def load_artifacts(log_dir: str | os.PathLike[str], quantity: str | None = None) -> list[Artifact]:
    """Load the artifacts saved under ``log_dir`` by :func:`save_artifact`.

    Args:
        log_dir: the directory given to :func:`save_artifact` (or its ``sensitivity`` sub-directory).
        quantity: only this quantity; ``None`` loads all.

    Returns:
        Artifacts sorted by ``(quantity, epoch)``; empty when nothing was saved. Unreadable files are skipped with
        a warning.

    Raises:
        FileNotFoundError: if ``log_dir`` does not exist.
        ValueError: if ``quantity`` is not a valid quantity name.
    """
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"`log_dir` {str(root)!r} is not a directory")
    if quantity is not None and (not isinstance(quantity, str) or not _QUANTITY.match(quantity)):
        raise ValueError(f"`quantity` expected a name of letters, digits, '_', '.' or '-', got {quantity!r}")
    base = root / ARTIFACT_DIR
    if not base.is_dir() and root.name == ARTIFACT_DIR:
        base = root
    if not base.is_dir():
        return []
    folders = [base / quantity] if quantity is not None else sorted(p for p in base.iterdir() if p.is_dir())
    artifacts: list[Artifact] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not _FILE.match(path.name):
                continue
            try:
                artifacts.append(_read(path, folder.name))
            except Exception as err:  # a foreign or damaged file must not hide the others
                warnings.warn(f"Skipping unreadable sensitivity artifact {path}: {err}", stacklevel=2)
    artifacts.sort(key=lambda a: (a.quantity, a.epoch))
    return artifacts
