"""``python -m lightning_sensitivity.compare LOG_ROOT ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_sensitivity.compare.page import DEFAULT_OUT, _resolve, _write
from lightning_sensitivity.compare.runs import DEFAULT_X, DEFAULT_Y, _check_epoch, _collect

__all__ = ["main"]


def _epoch_arg(text: str) -> int | str:
    try:
        return _check_epoch(text, "--epoch")
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 on success, 1 when LOG_ROOT holds no runs. Bad arguments exit with 2."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sensitivity.compare",
        description="Compare runs: a CSV table and scatter plots of sensitivity vs generalization keys with rank "
        "correlations (Spearman, Kendall tau-b; exact permutation p-values below 10 runs, bootstrap 95% intervals from "
        "8 runs on).",
    )
    parser.add_argument("log_root", metavar="LOG_ROOT", help="directory searched recursively for TensorBoard runs")
    parser.add_argument("--x", nargs="+", default=None, metavar="KEY", help=f"x keys (default: {', '.join(DEFAULT_X)})")
    parser.add_argument("--y", nargs="+", default=None, metavar="KEY", help=f"y keys (default: {', '.join(DEFAULT_Y)})")
    parser.add_argument(
        "--epoch", type=_epoch_arg, default="last",
        help="'last' (default: each key's last value) or N: after N completed epochs (0: at init)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help=f"output directory (default: LOG_ROOT/{DEFAULT_OUT})")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args(argv)
    root = Path(args.log_root)
    if not root.is_dir():
        parser.error(f"argument LOG_ROOT: expected a directory, got {args.log_root!r}")
    if args.bootstrap < 0:
        parser.error(f"argument --bootstrap: expected an int >= 0, got {args.bootstrap}")
    try:
        rows, columns = _collect(root, args.epoch)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        rows, xs, ys, missing = _resolve(rows, columns, args.x, args.y, ("--x", "--y"))
    except ValueError as err:
        parser.error(str(err))
    page = _write(root, args.out, rows, xs, ys, args.epoch, args.bootstrap, args.seed, missing)
    print(f"{len(rows)} run(s), {len(xs) * len(ys)} plot(s): {page} and {page.with_name('compare.csv')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
