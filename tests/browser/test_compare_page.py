"""In a real browser: headless Chromium renders the ``compare.html`` of a real sweep of tiny runs.

``LS_UPDATE_SCREENSHOTS=1 pytest -m browser tests/browser/test_compare_page.py`` also refreshes the README picture
``docs/screenshots/compare.png`` from this page.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _chromium import DevToolsPage, run_cli
from make_screenshots import OUT, shrink
from test_dashboards import _ReportPage, colour_stats

from lightning_sensitivity.compare import DEFAULT_X, DEFAULT_Y, write_comparison

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1400, 1000


@pytest.fixture(scope="module")
def comparison(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """compare.html of eight 3-epoch runs (two widths x four learning rates) with Jacobian and stiffness monitors."""
    from test_compare import train_sweep

    root = tmp_path_factory.mktemp("compare")
    train_sweep(root / "sweep", (0.01, 0.05, 0.2, 0.6), epochs=3, stiffness=True, widths=(8, 64))
    return write_comparison(root / "sweep", root / "out", num_bootstrap=500)


def blue_point_pixels(path: Path) -> int:
    """Pixels of matplotlib's default blue (C0, #1f77b4) -- the scatter points."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        r, g, b = np.asarray(image.convert("RGB"), dtype=np.int32).transpose(2, 0, 1)
    return int(((abs(r - 31) < 25) & (abs(g - 119) < 25) & (abs(b - 180) < 25)).sum())


def test_compare_page_renders_in_the_browser(comparison: Path, tmp_path: Path) -> None:
    out = comparison.parent
    dom = run_cli(comparison.as_uri(), "--dump-dom", budget_ms=3000, timeout=60.0)
    parsed = _ReportPage()
    parsed.feed(dom)
    assert parsed.headings[0] == "Run comparison", parsed.headings
    assert "Rank correlations" in parsed.headings and set(DEFAULT_X) <= set(parsed.headings), parsed.headings
    assert len(parsed.images) == len(DEFAULT_X) * len(DEFAULT_Y), parsed.images
    for src in parsed.images:
        assert (out / src).is_file(), f"<img src={src!r}> points to no file in {out}"
        assert blue_point_pixels(out / src) > 200, f"{src} shows no scatter points"

    with DevToolsPage(window=(WIDTH, HEIGHT), timeout=30.0) as page:
        page.goto(comparison.as_uri())
        content = page.wait_for_text(["Spearman", "Kendall", "w64_lr0.2"], min_images=len(parsed.images), timeout=30.0)
        assert content["images"] == len(parsed.images), f"{content['images']} of {len(parsed.images)} images decoded"
        # the runs table (many hparams columns) scrolls inside its own box, not the whole page
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= WIDTH, f"the compare page is {width} px wide: a table widens it"
        shot = page.screenshot(tmp_path / "compare.png")
    size, colours, top_share = colour_stats(shot)
    assert size == (WIDTH, HEIGHT)
    assert colours > 64 and top_share < 0.95, f"compare screenshot looks blank: {colours} colours, {top_share:.0%}"
    assert blue_point_pixels(shot) > 200, "no scatter points in the first screen of the page"
    if os.environ.get("LS_UPDATE_SCREENSHOTS"):
        shrink(shot, OUT / "compare.png", (0, 0, WIDTH, HEIGHT))
