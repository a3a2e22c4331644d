"""Run the four experiments one after the other in one process, then assemble the findings.

One process shares the (slow) Lightning import between experiments; the tests use it with ``--quick``. For the full
runs, starting each script on its own works just as well (``make_findings.py`` only reads the results files).

Usage::

    python experiments/run_all.py [--quick] [--data-dir ../shared/data] [--out-root experiments/output]
        [--findings docs/findings.md] [--only NAME ...] [--dataset NAME]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

EXPERIMENTS = ("jacobian_vs_generalization", "per_point_prediction", "transitions", "stiffness")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--dataset", default=None,
                        help="forwarded to every script (mnist, fashion_mnist, cifar10, cifar100)")
    parser.add_argument("--out-root", type=Path, default=HERE / "output")
    parser.add_argument("--findings", type=Path, default=None,
                        help="where to write findings.md (default: docs/findings.md)")
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    args = parser.parse_args(argv)
    for name in args.only:
        start = time.time()
        forwarded = ["--out", str(args.out_root / name)] + (["--quick"] if args.quick else [])
        if args.data_dir is not None:
            forwarded += ["--data-dir", str(args.data_dir)]
        if args.dataset is not None:
            forwarded += ["--dataset", args.dataset]
        importlib.import_module(name).main(forwarded)
        print(f"[run_all] {name} done in {time.time() - start:.1f} s", flush=True)
    findings = ["--results-dir", str(args.out_root)]
    if args.findings is not None:
        findings += ["--output", str(args.findings)]
    importlib.import_module("make_findings").main(findings)


if __name__ == "__main__":
    main()
