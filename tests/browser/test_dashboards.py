"""In a real browser: headless Chromium renders TensorBoard's dashboards of a finished quickstart run, and the
offline report page.

TensorBoard's dashboards are a single-page app (Angular for Time Series, Polymer with shadow DOM for the others),
so the checks run in the live page over the DevTools protocol: they wait until the rendered text -- shadow roots
included -- names the sensitivity tags, count the images the browser decoded, and take a screenshot that must show
a picture, not a blank page. The static report is checked with ``chromium --dump-dom`` as well.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from _chromium import DevToolsPage, run_cli
from _processes import QuickstartRun, tail

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1400, 900
#: The quickstart's report must fit in this many screens (it was 17,600 px with one heatmap per row).
REPORT_SCREENS = 6
#: A class label must be at least this many screen pixels high (a digit of a 10 px font is 7 px; scaled to half,
#: as TensorBoard's Time Series card showed the old 684 x 591 heatmaps, it is 3-4 px and unreadable).
MIN_LABEL_PX = 6


@dataclass(frozen=True)
class Dashboard:
    name: str
    address: str  # path and hash, with a tag filter so that the cards sit on the first page
    root: str  # the element holding the dashboard
    needles: tuple[str, ...]  # texts it must show
    min_images: int = 0  # <img> the browser must have decoded
    min_paths: int = 0  # SVG line-chart series it must have drawn (Polymer dashboards)


DASHBOARDS = [
    Dashboard(
        "timeseries",
        "?tagFilter=" + quote("sensitivity/jacobian_norm/val/(mean|p90)$", safe="") + "#timeseries",
        "metrics-dashboard",
        ("sensitivity/jacobian_norm/val/mean", "sensitivity/jacobian_norm/val/p90"),
    ),
    Dashboard(
        "scalars",
        "#scalars&tagFilter="
        + quote("sensitivity/(jacobian_norm/val/mean|stiffness/val_val/same_class_sign)$", safe=""),
        "tf-scalar-dashboard",
        ("sensitivity/jacobian_norm/val/mean", "sensitivity/stiffness/val_val/same_class_sign"),
        min_paths=2,
    ),
    Dashboard(
        "images",
        "#images&tagFilter=" + quote("class_sign_matrix", safe=""),
        "tf-image-dashboard",
        tuple(f"sensitivity/stiffness/{g}/class_sign_matrix" for g in ("train_train", "train_val", "val_val")),
        min_images=3,
    ),
    Dashboard(
        "custom_scalars",
        "#custom_scalars",
        "tf-custom-scalar-dashboard",
        ("Jacobian norm: train vs val (mean)", "sensitivity/jacobian_norm/val/mean", "Generalization gap"),
        min_paths=6,
    ),
    Dashboard("text", "#text", "tf-text-dashboard", ("sensitivity/config/StiffnessMonitor", "num_samples")),
]


def colour_stats(path: Path) -> tuple[tuple[int, int], int, float]:
    """(size, number of distinct colours, share of the most common colour) of a PNG, decoded by Pillow."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is a {image.format}, not a PNG"
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 24) or []
        top = max(count for count, _ in colours)
        return rgb.size, len(colours), top / (rgb.size[0] * rgb.size[1])


def heatmap_pixels(path: Path) -> tuple[int, int]:
    """Numbers of saturated red and saturated blue pixels (the two ends of the diverging RdBu colour map)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        r, g, b = np.asarray(image.convert("RGB"), dtype=np.int32).transpose(2, 0, 1)
    return int(((r > 150) & (g < 90) & (b < 90)).sum()), int(((b > 120) & (r < 90) & (g < 120)).sum())


@pytest.fixture(scope="module")
def page(chromium: str) -> Iterator[DevToolsPage]:
    with DevToolsPage(window=(WIDTH, HEIGHT), timeout=30.0) as browser:
        yield browser


def plotted_pixels(path: Path) -> int:
    """Pixels of the Time Series run colour (a dark slate blue, drawn with WebGL) in the card area."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        r, g, b = np.asarray(image.convert("RGB"), dtype=np.int32)[150:, 280:1120].transpose(2, 0, 1)
    # bluish, not grey: axis labels and the legend text are grey (b close to r)
    return int(((b - r > 25) & (r < 150)).sum())


@pytest.mark.parametrize("board", DASHBOARDS, ids=[d.name for d in DASHBOARDS])
def test_dashboard_shows_sensitivity_tags(
    page: DevToolsPage, finished_run: QuickstartRun, tmp_path: Path, board: Dashboard
) -> None:
    page.goto("about:blank")  # a full load per dashboard: the SPA keeps the DOM of tabs visited before
    page.goto(f"{finished_run.tensorboard.url}/{board.address}")
    content = page.wait_for_text(
        list(board.needles), root=board.root, min_images=board.min_images, min_paths=board.min_paths, timeout=30.0
    )
    shown = content["text"][:3000]
    assert content["found"], f"<{board.root}> never appeared on the {board.name} page"
    missing = [n for n in board.needles if n not in content["text"]]
    assert not missing, f"{board.name} dashboard does not show {missing}; it shows:\n{shown}"
    assert content["images"] >= board.min_images, f"{board.name}: only {content['images']} images decoded"
    assert content["paths"] >= board.min_paths, f"{board.name}: only {content['paths']} chart lines drawn"

    shot = page.screenshot(tmp_path / f"{board.name}.png")
    size, colours, top_share = colour_stats(shot)
    assert size == (WIDTH, HEIGHT), size
    # a rendered dashboard has text, an orange header and plotted data: many colours, no single colour everywhere
    assert colours > 64 and top_share < 0.95, f"{board.name} screenshot looks blank: {colours} colours, {top_share:.0%}"
    if board.name == "images":
        red, blue = heatmap_pixels(shot)
        assert red > 50 and blue > 50, f"no red/blue class-stiffness heatmap in the screenshot ({red=}, {blue=})"
    if board.name == "timeseries":
        # measured: ~1300 with the two curves drawn, ~170 (legend dots) when WebGL drew nothing
        deadline = time.monotonic() + 15.0
        while plotted_pixels(shot) <= 500 and time.monotonic() < deadline:
            time.sleep(1.0)  # the canvas is drawn in animation frames after the text is there
            shot = page.screenshot(shot)
        assert plotted_pixels(shot) > 500, f"no curve drawn in the Time Series cards ({plotted_pixels(shot)} px)"


class _ReportPage(HTMLParser):
    """Headings and image sources of the report page, as the browser serialised it."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3"):
            self._in_heading = True
            self.headings.append("")
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3"):
            self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings[-1] += data


def test_offline_report_renders_in_the_browser(page: DevToolsPage, finished_run: QuickstartRun, tmp_path: Path) -> None:
    if finished_run.report is None:
        pytest.skip("lightning_sensitivity/report.py is not there yet")
    try:
        finished_run.report.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(finished_run.report_command())} did not finish within 180 s")
    log = tail(finished_run.workdir / "report.log")
    assert finished_run.report.returncode == 0, f"report exited with {finished_run.report.returncode}:\n{log}"
    out = finished_run.report_dir
    index = out / "index.html"
    assert index.is_file(), f"no index.html; {out} holds {sorted(p.name for p in out.glob('*'))}"

    dom = run_cli(index.as_uri(), "--dump-dom", budget_ms=3000, timeout=60.0)
    parsed = _ReportPage()
    parsed.feed(dom)
    headings = " | ".join(parsed.headings)
    for heading in ("Jacobian norm", "Transitions", "Stiffness"):
        assert any(heading.lower() in h.lower() for h in parsed.headings), f"no '{heading}' heading in: {headings}"
    # curves for each quantity and class heatmaps for each of the three stiffness groups
    assert len(parsed.images) >= 6, parsed.images
    for src in parsed.images:
        assert (out / src).is_file(), f"<img src={src!r}> points to no file in {out}"

    # every image decodes in the browser, and the page is not blank
    page.goto("about:blank")
    page.goto(index.as_uri())
    content = page.wait_for_text(["Jacobian norm"], min_images=len(parsed.images), timeout=30.0)
    assert content["images"] == len(parsed.images), f"{content['images']} of {len(parsed.images)} images decoded"
    shot = page.screenshot(tmp_path / "report.png")
    _, colours, top_share = colour_stats(shot)
    assert colours > 64 and top_share < 0.95, f"report screenshot looks blank: {colours} colours, {top_share:.0%}"
    # compact: figures in a grid, the whole run within a few screens, nothing wider than the window
    height = page.evaluate("document.documentElement.scrollHeight")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert height <= REPORT_SCREENS * HEIGHT, f"the report is {height} px tall ({height / HEIGHT:.1f} screens)"
    assert width <= WIDTH, f"the report is {width} px wide"
    columns = page.evaluate(
        "Math.max(...[...document.querySelectorAll('.grid')].map(g => "
        "getComputedStyle(g).gridTemplateColumns.split(' ').length))"
    )
    assert columns >= 3, f"the figure grid has {columns} column(s) at {WIDTH} px"


# ---------------------------------------------------------------- legible at TensorBoard's card size
_IMAGE_BOXES = r"""
(() => { const out = [];
  const walk = (root) => { for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) walk(el.shadowRoot);
    if (el.tagName === 'IMG' && el.complete && el.naturalWidth > 100) { const r = el.getBoundingClientRect();
      out.push([el.naturalWidth, el.naturalHeight, r.left, r.top, r.width, r.height]); } } };
  walk(document); return JSON.stringify(out); })()
"""


def image_boxes(page: DevToolsPage, timeout: float = 30.0) -> list[list[float]]:
    """``[natural width, natural height, left, top, shown width, shown height]`` of every loaded image."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        boxes = json.loads(page.evaluate(_IMAGE_BOXES))
        if boxes or time.monotonic() > deadline:
            return boxes
        time.sleep(0.5)


def label_heights(shot: Path, box: list[float]) -> list[int]:
    """Screen heights of the row labels of a heatmap shown at ``box`` in the screenshot ``shot``.

    The labels are the dark glyphs just left of the matrix (whose left edge is the first column of strongly
    coloured cells): each label's rightmost glyph is one run of dark rows in the few columns next to the matrix.
    """
    import numpy as np
    from PIL import Image

    _, _, left, top, width, height = box
    with Image.open(shot) as image:
        crop = np.asarray(image.convert("RGB").crop((int(left), int(top), int(left + width), int(top + height))))
    rgb = crop.astype(np.int32)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    coloured = (saturation > 60).mean(axis=0) > 0.25
    edge = int(np.argmax(coloured))
    assert coloured.any() and edge > 4, "no coloured matrix found in the image"
    dark = (rgb.mean(axis=2) < 120) & (saturation < 60)
    columns = np.flatnonzero(dark[:, : edge - 1].any(axis=0))
    assert columns.size, "no label left of the matrix"
    right = int(columns.max())
    # the labels' last glyphs (and the 1 px tick marks), over the rows of the matrix only (not the title's)
    inside = saturation[:, min(edge + 2, crop.shape[1] - 1)] > 60
    strip = dark[:, max(0, right - 12) : right + 1].any(axis=1) & inside
    runs, length = [], 0
    for value in strip:
        if value:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return [r for r in runs + ([length] if length else []) if r > 2]  # a tick mark alone is 1 px high


def test_class_labels_are_legible_in_tensorboards_default_card(page: DevToolsPage, finished_run: QuickstartRun,
                                                              tmp_path: Path) -> None:  # fmt: skip
    # Time Series, TensorBoard's default dashboard, fits each image into a 372 x 215 box at the default card width
    tag = "sensitivity/stiffness/val_val/class_sign_matrix"
    page.goto("about:blank")
    page.goto(f"{finished_run.tensorboard.url}/?tagFilter={quote(tag + '$', safe='')}#timeseries")
    boxes = image_boxes(page)
    assert boxes, "Time Series shows no heatmap card"
    (box,) = boxes[:1]
    natural_w, natural_h, _, _, shown_w, shown_h = box
    assert shown_w >= 0.95 * natural_w and shown_h >= 0.95 * natural_h, f"the card scales the image down: {box}"
    time.sleep(1.0)  # the image is decoded; let it paint
    runs = label_heights(page.screenshot(tmp_path / "card.png"), box)
    assert len(runs) >= 5, f"found {len(runs)} row labels: {runs}"
    assert np_median(runs) >= MIN_LABEL_PX, f"row labels are {runs} px high on screen"


def np_median(values: list[int]) -> float:
    import numpy as np

    return float(np.median(values))


def test_heatmap_labels_are_legible_in_a_card_sized_box(page: DevToolsPage, tmp_path: Path) -> None:
    """Without TensorBoard: a heatmap with Fashion-MNIST's long names in a box of the Time Series card's size (the
    image shrinks to fit, as there), read back from the browser's rendering."""
    from PIL import Image

    from lightning_sensitivity.logging.render import CARD_HEIGHT, CARD_WIDTH, render_class_matrix

    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    import numpy as np

    matrix = np.random.default_rng(0).uniform(-1, 1, (10, 10))
    image = render_class_matrix(matrix, names, title="train_val class sign stiffness, epoch 30", xlabel="val class",
                                ylabel="train class")  # fmt: skip
    Image.fromarray(image).save(tmp_path / "heatmap.png")
    (tmp_path / "card.html").write_text(
        "<!DOCTYPE html><html><body style='margin:20px;background:white'>"
        f"<div style='width:{CARD_WIDTH}px;height:{CARD_HEIGHT}px;display:flex;justify-content:center'>"
        "<img src='heatmap.png' style='max-width:100%;max-height:100%'></div></body></html>",
        encoding="utf-8",
    )
    page.goto("about:blank")
    page.goto((tmp_path / "card.html").as_uri())
    boxes = image_boxes(page)
    assert boxes, "the heatmap did not load"
    box = boxes[0]
    assert box[4] == box[0] and box[5] == box[1], f"scaled in a {CARD_WIDTH} x {CARD_HEIGHT} box: {box}"
    time.sleep(0.5)
    runs = label_heights(page.screenshot(tmp_path / "card.png"), box)
    assert len(runs) >= 8 and np_median(runs) >= MIN_LABEL_PX, runs
