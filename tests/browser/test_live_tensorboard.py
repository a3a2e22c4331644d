"""Watching it live: TensorBoard serves the sensitivity metrics of a run while it is still training.

The quickstart runs in the background (``conftest.quickstart_run``); this test polls TensorBoard's HTTP data API the
way its web page does and records, at each poll, whether the training process was still alive *after* the answer
arrived. It then requires that the sensitivity tags were served, and that the number of steps of a sensitivity
scalar grew, while training was running, i.e. before the last epoch.
"""

from __future__ import annotations

import time

import pytest
from _processes import EPOCHS, PROBE_TAG, QUICKSTART_TIMEOUT, RUN, QuickstartRun, scalar_steps

pytestmark = pytest.mark.slow

IMAGE_TAG = "sensitivity/stiffness/val_val/class_sign_matrix"
HISTOGRAM_TAG = "sensitivity/jacobian_norm/val"


def _tags(run: QuickstartRun, plugin: str) -> set[str]:
    try:
        return set(run.tensorboard.get(f"/data/plugin/{plugin}/tags").get(RUN, {}))
    except Exception:
        return set()


def test_sensitivity_metrics_appear_and_grow_while_training(quickstart_run: QuickstartRun) -> None:
    run = quickstart_run
    # (seconds since start, distinct steps of PROBE_TAG, image tag served, training still running after the answer)
    polls: list[tuple[float, int, bool, bool]] = []
    deadline = run.started + QUICKSTART_TIMEOUT
    while time.monotonic() < deadline:
        steps = len(set(scalar_steps(run.tensorboard, PROBE_TAG)))
        has_image = IMAGE_TAG in _tags(run, "images")
        alive = run.running()
        polls.append((round(time.monotonic() - run.started, 1), steps, has_image, alive))
        if not alive:
            break
        live = [p for p in polls if p[3] and p[1] > 0]
        if live and live[-1][1] >= live[0][1] + 2 and live[-1][2]:
            break  # seen enough: two more steps after the first one, and the heatmap, all during training
        time.sleep(0.5)
    else:
        pytest.fail(f"quickstart still running after {QUICKSTART_TIMEOUT:.0f} s; polls: {polls[-5:]}")

    live = [p for p in polls if p[3] and p[1] > 0]
    summary = f"polls (t, steps, image, running): {polls[::max(1, len(polls) // 40)]}\n{run.output()[-1500:]}"
    assert live, f"TensorBoard never served {PROBE_TAG} while the quickstart was running; {summary}"
    assert live[-1][1] > live[0][1], f"steps of {PROBE_TAG} did not grow during training; {summary}"
    assert any(p[2] for p in live), f"image {IMAGE_TAG} not served during training; {summary}"


def test_dashboard_data_of_the_finished_run(finished_run: QuickstartRun) -> None:
    """Everything the dashboards are built from is served: scalars of all three monitors, heatmaps with one image
    per measured epoch, histograms, the custom-scalars layout and the configuration text."""
    tb = finished_run.tensorboard
    assert tb.get("/data/runs") == [RUN]

    scalars = _tags(finished_run, "scalars")
    for tag in (
        PROBE_TAG,
        "sensitivity/jacobian_norm/train/mean",
        "sensitivity/transitions/val/region_changes_mean",
        "sensitivity/stiffness/val_val/same_class_sign",
        "sensitivity/stiffness/train_val/different_class_cosine",
        "generalization_gap/loss",
    ):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    steps = sorted(set(scalar_steps(tb, PROBE_TAG)))
    assert len(steps) == EPOCHS + 1 and steps[0] == 0, f"{PROBE_TAG}: expected init + {EPOCHS} epochs, got {steps}"

    images = tb.get("/data/plugin/images/tags")[RUN]
    assert IMAGE_TAG in images and "sensitivity/stiffness/val_val/by_distance" in images, sorted(images)
    assert images[IMAGE_TAG]["samples"] >= 1
    from urllib.parse import urlencode

    pictures = tb.get("/data/plugin/images/images?" + urlencode({"run": RUN, "tag": IMAGE_TAG}))
    assert len({p["step"] for p in pictures}) >= 3, f"class heatmap at too few steps: {[p['step'] for p in pictures]}"

    assert HISTOGRAM_TAG in tb.get("/data/plugin/histograms/tags")[RUN]

    layout = tb.get("/data/plugin/custom_scalars/layout")
    titles = {c["title"] for c in layout["category"]}
    assert {"Jacobian norm", "Transitions", "Stiffness"} <= titles, titles
    charts = {chart["title"] for c in layout["category"] for chart in c["chart"]}
    assert "Jacobian norm: train vs val (mean)" in charts, charts

    texts = tb.get("/data/plugin/text/tags")[RUN]
    for monitor in ("JacobianNormMonitor", "TransitionMonitor", "StiffnessMonitor"):
        assert any(monitor in t for t in texts), f"no configuration text of {monitor}: {texts}"
