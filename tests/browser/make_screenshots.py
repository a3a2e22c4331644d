"""Make the README screenshots in ``docs/screenshots/`` from a real (not ``--fast``) quickstart run.

    python tests/browser/make_screenshots.py                    # runs examples/quickstart.py first (a few minutes)
    python tests/browser/make_screenshots.py --log-dir RUN_DIR  # reuse RUN_DIR/lightning_logs of a finished run

Needs Debian's ``chromium`` (``bash .ci/browser-setup.sh``). Starts TensorBoard on a free port, opens the dashboards
in headless Chromium, crops the interesting part and shrinks each PNG to well under 300 KB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from _chromium import DevToolsPage, chromium_path  # a script's own folder is on sys.path
from _processes import REPO, TensorBoard, child_env, quickstart_command

OUT = REPO / "docs" / "screenshots"
WIDTH, HEIGHT = 1400, 1000

TIMESERIES_FILTER = (
    "sensitivity/jacobian_norm/val/mean$|generalization_gap/loss$"
    "|sensitivity/stiffness/val_val/different_class_sign$|sensitivity/transitions/val/region_changes_mean$"
)


@dataclass(frozen=True)
class Shot:
    name: str
    address: str
    needles: tuple[str, ...]  # texts to wait for
    box: tuple[int, int, int, int]  # crop (left, top, right, bottom) of the viewport
    images: int = 0  # images to wait for
    viewport: tuple[int, int] = (WIDTH, HEIGHT)


SHOTS = [
    # 2 x 2 cards, settings pane closed (see main), so that the card titles are readable
    Shot("timeseries.png", "?tagFilter=" + quote(TIMESERIES_FILTER, safe="") + "#timeseries",
         ("sensitivity/jacobian_norm/val/mean", "generalization_gap/loss"), (236, 60, 1100, 960), viewport=(1100, 960)),
    Shot("custom_scalars.png", "#custom_scalars", ("Jacobian norm: train vs val (mean)", "Generalization gap"),
         (350, 60, 1100, 1000)),
    Shot("class_stiffness.png",
         "#images&tagFilter=" + quote("(val_val/class_sign_matrix|jacobian_norm/val/per_class)$", safe=""),
         ("sensitivity/stiffness/val_val/class_sign_matrix",), (350, 60, 1120, 640), images=2),
]  # fmt: skip


def shrink(source: Path, target: Path, box: tuple[int, int, int, int], max_bytes: int = 300_000) -> Path:
    """Crop ``box`` out of ``source`` and save it as an optimised palette PNG below ``max_bytes``."""
    from PIL import Image

    with Image.open(source) as image:
        picture = image.convert("RGB").crop(box)
    scale = 1.0
    while True:
        size = (int(picture.width * scale), int(picture.height * scale))
        small = picture if scale == 1.0 else picture.resize(size, Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        if target.stat().st_size <= max_bytes or scale < 0.4:
            return target
        scale *= 0.85


def run_quickstart(workdir: Path) -> Path:
    print(f"running the quickstart in {workdir} ...", flush=True)
    subprocess.run(quickstart_command(Path(".")), cwd=workdir, env=child_env(), check=True, timeout=1800)
    return workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-dir", type=Path, default=None, help="folder holding lightning_logs/ of a finished run")
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNGs go (default: %(default)s)")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        parser.error("chromium not found: run `bash .ci/browser-setup.sh`")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as scratch:
        scratch_dir = Path(scratch)
        workdir = args.log_dir.resolve() if args.log_dir else run_quickstart(scratch_dir)
        logs = workdir / "lightning_logs"
        tensorboard = TensorBoard(logs, scratch_dir)
        try:
            tensorboard.wait_ready()
            time.sleep(3)  # let TensorBoard load every event file once
            with DevToolsPage(window=(WIDTH, HEIGHT), timeout=60.0) as page:
                page.goto(tensorboard.url)
                # Time Series keeps its settings in localStorage; the open settings pane would take a third
                page.evaluate(
                    "localStorage.setItem('_tb_global_settings', JSON.stringify({timeSeriesSettingsPaneOpened: false}))"
                )
                for shot in SHOTS:
                    page.resize(*shot.viewport)
                    page.goto("about:blank")
                    page.goto(f"{tensorboard.url}/{shot.address}")
                    content = page.wait_for_text(list(shot.needles), min_images=shot.images, timeout=60.0)
                    if not all(n in content["text"] for n in shot.needles):
                        raise RuntimeError(f"{shot.name}: the page never showed {shot.needles}")
                    time.sleep(3)  # charts animate in; WebGL cards draw in later frames
                    raw = page.screenshot(scratch_dir / shot.name)
                    target = shrink(raw, args.out / shot.name, shot.box)
                    print(f"{target} ({target.stat().st_size // 1024} KB)")
                page.resize(WIDTH, HEIGHT)
                report_dir = scratch_dir / "report"
                subprocess.run(
                    [sys.executable, "-m", "lightning_sensitivity.report", str(logs), "--out", str(report_dir)],
                    env=child_env(), check=True, timeout=600,
                )
                page.goto("about:blank")
                page.goto((report_dir / "index.html").as_uri())
                page.wait_for_text(["Stiffness"], min_images=3, timeout=60.0)
                shot = page.screenshot(scratch_dir / "report.png")
                target = shrink(shot, args.out / "report.png", (0, 0, 1300, 1000))
                print(f"{target} ({target.stat().st_size // 1024} KB)")
        finally:
            tensorboard.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
