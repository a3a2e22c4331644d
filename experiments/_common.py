"""Shared plumbing of the experiment scripts: arguments, data, one Lightning fit, JSON results and figures.

Every experiment trains with the package's own pieces end to end -- ``MNISTDataModule`` (or another bundled
datamodule), ``MLP`` inside ``LitClassifier``, the sensitivity callbacks, a ``TensorBoardLogger`` -- and reads its
numbers back from the per-epoch artifacts the callbacks save (``lightning_sensitivity.logging.load_artifacts``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OUTPUT_DIR = Path(__file__).resolve().parent / "output"
DATA_ENV = "LIGHTNING_SENSITIVITY_DATA"
# measure with the package of the checkout these scripts live in, whose commit `git_state` records: without this an
# installed copy elsewhere (an editable install of another worktree) is imported and measured under this commit
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# dataset name -> (datamodule class name, folder that must exist under the data dir)
DATASETS: dict[str, tuple[str, str]] = {
    "mnist": ("MNISTDataModule", "MNIST/raw"),
    "fashion_mnist": ("FashionMNISTDataModule", "FashionMNIST/raw"),
    "cifar10": ("CIFAR10DataModule", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100DataModule", "cifar-100-python"),
}


# what ``augment=True`` does in each datamodule (``_augmentation``: shifts of up to ``width // 14`` pixels for the
# 28x28 datasets, CIFAR's random crop with 4 pixels of padding and a horizontal flip)
AUGMENTATION: dict[str, str] = {
    "mnist": "random shifts of up to 2 pixels",
    "fashion_mnist": "random shifts of up to 2 pixels",
    "cifar10": "random crops (padding 4) and horizontal flips",
    "cifar100": "random crops (padding 4) and horizontal flips",
}
LABELS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                          "cifar100": "CIFAR-100"}  # fmt: skip


def default_data_dir() -> Path:
    """``$LIGHTNING_SENSITIVITY_DATA`` if set, else ``<repo>/../shared/data`` (the layout of this project's machine)."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def parse_args(name: str, description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line every experiment shares; ``name`` selects ``configs/<name>.json`` and the output folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test setting (seconds, used by the tests)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"folder holding MNIST/raw etc. (default: ${DATA_ENV} or ../shared/data)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: experiments/output/{name})")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"JSON config (default: experiments/configs/{name}.json)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 leaves cores to others)")
    parser.add_argument("--replot", action="store_true",
                        help="no training: recompute the statistics and figures from --out's results.json and logs")
    parser.add_argument("--merge-from", type=Path, nargs="+", default=None,
                        help="with --replot (sweep only): merge the seeds of these output folders into --out first")
    args = parser.parse_args(argv)
    args.name = name
    given = sys.argv[1:] if argv is None else argv
    args.command = " ".join(["python", f"experiments/{name}.py", *map(shlex.quote, given)])
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    args.out = (args.out or OUTPUT_DIR / name).expanduser().resolve()
    args.config = args.config or CONFIG_DIR / f"{name}.json"
    folder = DATASETS[args.dataset][1]
    if not (args.data_dir / folder).is_dir():
        parser.error(f"no {args.dataset} files: {args.data_dir / folder} does not exist (use --data-dir)")
    return args


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``"full"`` or ``"quick"`` section of the experiment's JSON config, with ``"common"`` merged underneath."""
    with open(args.config) as f:
        config = json.load(f)
    section = "quick" if args.quick else "full"
    return {**config.get("common", {}), **config[section]}


def setup(args: argparse.Namespace) -> float:
    """Quiet, seeded, single-threaded start; wipes ``args.out``; returns the start time for :func:`write_results`."""
    import logging

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: lower them afterwards)
    import torch

    # Lightning's per-fit banners ("GPU available: ...") would drown the progress lines of a 24-run sweep
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|treespec|LeafSpec|litlogger).*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    torch.set_num_threads(max(1, args.threads))
    if getattr(args, "replot", False):
        if getattr(args, "merge_from", None):
            merge_results(args)
        if not (args.out / "results.json").is_file():
            raise SystemExit(f"--replot: no results.json in {args.out}")
        return time.time()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    return time.time()


def merge_results(args: argparse.Namespace) -> None:
    """Write ``args.out/results.json`` from the runs of several output folders of one script (seeds run as separate
    processes), each seed taken from the first folder that has it; they must share the config but ``num_seeds``."""
    merged: dict[str, Any] | None = None
    runs: list[Any] = []
    seeds: list[int] = []
    sources = []
    for folder in args.merge_from:
        with open(Path(folder) / "results.json") as f:
            data = json.load(f)
        strip = {"num_seeds", "num_seeds_completed", "num_runs_completed"}
        if merged is not None and {k: v for k, v in data["config"].items() if k not in strip} != {
            k: v for k, v in merged["config"].items() if k not in strip
        }:
            raise SystemExit(f"--merge-from: {folder} was run with another config")
        new = [s for s in data["results"]["seeds"] if s not in seeds]
        runs += [r for r in data["results"]["runs"] if r["seed"] in new]
        seeds += new
        sources.append({"folder": str(folder), "seeds": new, "command": data["command"],
                        "wall_time_s": data["wall_time_s"], "partial": data.get("partial", False),
                        "git": data.get("git")})  # fmt: skip
        merged = merged or data
    assert merged is not None
    merged = {**merged, "partial": False, "merged_from": sources,
              # the folders ran at the same time: the longest of them
              "wall_time_s": max(s["wall_time_s"] for s in sources),
              "command": " & ".join(s["command"] for s in sources),
              "partial_runs": [s["folder"] for s in sources if s["partial"]],
              "config": {**{k: v for k, v in merged["config"].items()
                            if k not in ("num_seeds_completed", "num_runs_completed")},
                         "num_seeds": len(seeds)},
              "results": {**merged["results"], "seeds": sorted(seeds), "runs": runs}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.json", "w") as f:
        json.dump(merged, f, indent=2)


def load_results(args: argparse.Namespace) -> dict[str, Any]:
    """The ``results.json`` an earlier run wrote into ``args.out`` (for ``--replot``)."""
    with open(args.out / "results.json") as f:
        return json.load(f)


def make_datamodule(args: argparse.Namespace, **kwargs: Any) -> Any:
    """A bundled datamodule for ``args.dataset`` reading ``args.data_dir`` (never downloads), already ``setup``."""
    import lightning_sensitivity.models as models

    cls = getattr(models, DATASETS[args.dataset][0])
    kwargs.setdefault("seed", args.seed)
    dm = cls(data_dir=args.data_dir, download=False, **kwargs)
    dm.setup("fit")
    return dm


def dataset_tensors(dataset: Any, limit: int | None = None) -> tuple[Any, Any]:
    """Stack ``(inputs, targets)`` of a map-style dataset (the first ``limit`` items: the splits are already
    shuffled)."""
    import torch

    count = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items]).long()


def build_mlp(dm: Any, width: int, depth: int, hidden: Sequence[int] | None = None, unit_sphere: bool = False) -> Any:
    """A ReLU ``MLP`` with ``depth`` hidden layers of ``width`` units (or the widths ``hidden``) for the datamodule's
    input shape; with ``unit_sphere`` the (already normalised) inputs are first projected onto the unit sphere."""
    import torch

    from lightning_sensitivity.models import MLP

    net = MLP(int(np.prod(dm.input_shape)), dm.num_classes, hidden=tuple(hidden) if hidden else (width,) * depth)
    return torch.nn.Sequential(UnitSphere(), net) if unit_sphere else net


def _unit_sphere_class() -> Any:
    import torch

    class _UnitSphere(torch.nn.Module):
        """``x / ||x||`` per example (flattened): Fort et al.'s inputs on the unit sphere. Cosine input distances
        are unchanged by it, so the monitors' distances on the datamodule's inputs are those on the sphere."""

        def forward(self, x: Any) -> Any:
            flat = x.flatten(1)
            return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)

    return _UnitSphere


def UnitSphere() -> Any:  # noqa: N802 (a factory standing in for the class, so torch is imported lazily)
    return _unit_sphere_class()()


def seeds(args: argparse.Namespace, cfg: Mapping[str, Any]) -> list[int]:
    """The seeds of the repeated runs: ``--seed`` and the ``num_seeds - 1`` following ones."""
    return [args.seed + i for i in range(int(cfg.get("num_seeds", 1)))]


def fisher_ci(rho: float | None, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """``level`` interval of a Spearman correlation over ``n`` pairs by Fisher's z (standard error
    ``sqrt(1.06 / (n - 3))``, Fieller et al. 1957); always within [-1, 1]. None for ``n < 4`` or no ``rho``."""
    from scipy.stats import norm

    if rho is None or not math.isfinite(rho) or n < 4:
        return None, None
    z = math.atanh(min(max(rho, -0.999999), 0.999999))
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def correlation_ci(values: Sequence[Any], level: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t ``level`` interval over seeds of correlations, on Fisher's z scale and back-transformed, so
    the interval stays within [-1, 1] (a plain t interval on the correlations runs past 1 with few seeds). ``mean``
    is the back-transformed mean z; ``raw_mean`` the plain mean of the correlations."""
    x = np.array([np.nan if v is None else v for v in values], dtype=float)
    x = x[np.isfinite(x)]
    z = np.arctanh(np.clip(x, -0.999999, 0.999999))
    out = mean_ci(z.tolist(), level)
    out["values"] = x.tolist()
    out["raw_mean"] = float(x.mean()) if x.size else None
    for key in ("mean", "low", "high"):
        if out[key] is not None:
            out[key] = float(np.tanh(out[key]))
    out["sd"] = None
    out["scale"] = "fisher_z"
    return out


def t_band(rows: Any, level: float = 0.95) -> tuple[Any, Any, Any]:
    """Per column of ``rows`` ``[runs, points]`` (NaN for missing): the mean and the Student-t ``level`` interval over
    the runs with a value there (the interval is NaN where fewer than 2 runs have one)."""
    from scipy.stats import t as student

    values = np.array(rows, dtype=float)
    count = np.isfinite(values).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nanmean(values, axis=0)
        sd = np.nanstd(values, axis=0, ddof=1)
    quantile = student.ppf(0.5 + level / 2, np.maximum(count - 1, 1))
    half = np.where(count >= 2, quantile * sd / np.sqrt(np.maximum(count, 1)), np.nan)
    return mean, mean - half, mean + half


def mean_ci(values: Sequence[Any], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation and Student-t ``level`` interval of the finite values (over seeds)."""
    from scipy.stats import t as student

    x = np.array([np.nan if v is None else v for v in values], dtype=float)
    x = x[np.isfinite(x)]
    out: dict[str, Any] = {"n": int(x.size), "mean": None, "sd": None, "low": None, "high": None, "values": x.tolist()}
    if x.size == 0:
        return out
    out["mean"] = float(x.mean())
    if x.size >= 2:
        sd = float(x.std(ddof=1))
        half = float(student.ppf(0.5 + level / 2, x.size - 1)) * sd / math.sqrt(x.size)
        out.update(sd=sd, low=out["mean"] - half, high=out["mean"] + half)
    return out


@dataclass
class FitOutcome:
    """What one ``Trainer.fit`` left behind."""

    log_dir: Path
    epochs: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    module: Any = None
    steps: int = 0


def fit(
    module: Any,
    dm: Any,
    *,
    out: Path,
    run_name: str,
    max_epochs: int,
    callbacks: Sequence[Any] = (),
    stop_at_train_acc: float | None = None,
    test: bool = False,
) -> FitOutcome:
    """Train ``module`` on ``dm`` with a ``TensorBoardLogger`` at ``out/logs/run_name/version_0``.

    ``stop_at_train_acc`` ends training after the first epoch whose running training accuracy (``train/acc``, on the
    labels trained on) reaches it, so runs are compared at a similar fit of the training set. ``test`` then runs
    ``trainer.test`` on the datamodule's test split: ``LitClassifier`` logs ``test/loss`` and ``test/acc`` and the
    sensitivity monitors measure the final weights once more (their test hook).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import TensorBoardLogger

    run_dir = out / "logs" / run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    logger = TensorBoardLogger(save_dir=out / "logs", name=run_name, version=0, default_hp_metric=False)
    all_callbacks = list(callbacks)
    if stop_at_train_acc is not None:
        all_callbacks.append(
            EarlyStopping(
                monitor="train/acc",
                mode="max",
                stopping_threshold=stop_at_train_acc,
                patience=10**9,
                check_on_train_epoch_end=True,
            )
        )
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=all_callbacks,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    start = time.time()
    trainer.fit(module, datamodule=dm)
    seconds = time.time() - start
    metrics = _scalars(trainer.callback_metrics)
    if test:
        metrics.update(_scalars(trainer.test(module, datamodule=dm, verbose=False)[0]))
    return FitOutcome(Path(trainer.log_dir), trainer.current_epoch, seconds, metrics, module, trainer.global_step)


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if getattr(v, "numel", lambda: 1)() == 1}


def evaluate(model: Any, inputs: Any, targets: Any, chunk: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (its training flag is restored)."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(targets), chunk):
            logits = model(inputs[start : start + chunk])
            y = targets[start : start + chunk]
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return loss / len(targets), correct / len(targets)


def artifacts(log_dir: Path, quantity: str) -> list[Any]:
    """The per-epoch artifacts of one quantity, sorted by epoch; raises if the callback wrote none."""
    from lightning_sensitivity.logging import load_artifacts

    found = load_artifacts(log_dir, quantity)
    if not found:
        raise RuntimeError(f"no `{quantity}` artifacts under {log_dir}/sensitivity: did the callback run?")
    return found


def final_artifact(log_dir: Path, quantity: str) -> Any:
    """The measurement on the final weights: the one ``trainer.test`` triggered, else the last one of the fit.

    Monitors save test-time measurements under ``sensitivity/<quantity>.test`` (older versions wrote them into the
    fit's folder under the current epoch, where the last file is the same measurement).
    """
    from lightning_sensitivity.logging import load_artifacts

    tested = load_artifacts(log_dir, f"{quantity}.test")
    return tested[-1] if tested else artifacts(log_dir, quantity)[-1]


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy/torch scalars to Python, NaN/inf to ``None``, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):
        return clean(value.tolist())
    if isinstance(value, float) or isinstance(value, np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def git_state() -> dict[str, Any]:
    """The repository commit and whether the package or the experiments differ from it (None outside git)."""
    import subprocess

    def git(*cmd: str) -> str | None:
        try:
            # only trailing whitespace: porcelain lines start with a meaningful space (" M path")
            done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
            return done.stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "lightning_sensitivity", "experiments/*.py", "experiments/configs")
    files = None if dirty is None else [line[3:] for line in dirty.splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": None if files is None else bool(files), "uncommitted_files": files}


def write_results(args: argparse.Namespace, start: float, config: Mapping[str, Any], results: Mapping[str, Any],
                  partial: bool = False) -> Path:
    """Write ``args.out/results.json`` with the results, the config, the command and the wall time; ``partial``
    marks the results of the seeds completed so far (the sweep writes them after every seed)."""
    import lightning
    import torch

    import lightning_sensitivity

    payload = {
        "experiment": args.name,
        "quick": bool(args.quick),
        "partial": partial,
        "dataset": args.dataset,
        "datamodule": DATASETS[args.dataset][0],
        "augmentation": AUGMENTATION[args.dataset],
        "seed": args.seed,
        "command": args.command,
        "wall_time_s": round(time.time() - start, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__
        },
        "threads": args.threads,
        "config_file": (
            os.path.relpath(args.config, REPO) if Path(args.config).resolve().is_relative_to(REPO) else str(args.config)
        ),
        "git": git_state(),
        # where the measuring package came from (the checkout above unless something was imported before us)
        "package_dir": str(Path(lightning_sensitivity.__file__).resolve().parent),
        "config": config,
        "results": results,
    }
    path = args.out / "results.json"
    if getattr(args, "replot", False):
        # the training run's record stays (command, wall time, versions, commit, config); only the analysis is new
        earlier = load_results(args)
        payload = {**earlier, "results": results,
                   "replotted": {"finished": payload["finished"], "git": payload["git"], "command": args.command}}
    with open(path, "w") as f:
        json.dump(clean(payload), f, indent=2)
    print(f"[{args.name}] wrote {path} after {payload['wall_time_s']} s")
    return path


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.4)) -> tuple[Any, Any]:
    """A pyplot-free figure on an Agg canvas with a grid of axes (a 2-D array)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: Path) -> Path:
    """Save as PNG at a resolution that keeps the file small (the figures are committed to ``docs/figures``)."""
    fig.savefig(path, format="png", dpi=fig.dpi)
    print(f"  figure {path.name}: {path.stat().st_size // 1024} KB")
    return path


def log(args: argparse.Namespace, message: str) -> None:
    """Progress line with the experiment name (flushed: the full runs go to a log file)."""
    print(f"[{args.name}] {message}", flush=True)
