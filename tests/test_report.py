"""Offline report on synthetic artifacts written with save_artifact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from callbacks._tiny import TinyData, TinyModule, make_trainer, read_events
from PIL import Image

from lightning_sensitivity import LogitMarginMonitor, keys, report
from lightning_sensitivity.callbacks import Measurement, SensitivityMonitor
from lightning_sensitivity.functional import predict_logits
from lightning_sensitivity.logging import load_artifacts, save_artifact
from lightning_sensitivity.logging import report_figures as figures

EPOCHS = (0, 1, 2, 4, 8)
CLASS_NAMES = ["zero", "one", "two"]
GROUPS = ("train_train", "train_val")
PROJECT = Path(__file__).resolve().parents[1]


def write_run(run_dir: Path, epochs=EPOCHS, groups=GROUPS, seed: int = 0) -> None:
    """A full set of artifacts as the three monitors write them."""
    rng = np.random.default_rng(seed)
    for epoch in epochs:
        step = epoch * 10
        labels = np.repeat(np.arange(3), 6)
        val_norms = rng.gamma(2.0, 1.0 + epoch, size=labels.size)
        train_norms = rng.gamma(2.0, 0.5 + epoch, size=labels.size)
        correct = rng.random(labels.size) > 0.3
        correct[:2] = [True, False]
        save_artifact(
            run_dir,
            "jacobian_norm",
            epoch,
            step,
            {
                "val_norms": val_norms.astype(np.float32),
                "val_labels": labels,
                "val_correct": correct,
                "train_norms": train_norms,
                "train_labels": labels,
                "val_mean": val_norms.mean(),
                "train_val_ratio": train_norms.mean() / val_norms.mean(),
                "misclassification_auroc": 0.6,
            },
            meta={"class_names": CLASS_NAMES, "output": "softmax"},
        )
        save_artifact(
            run_dir,
            "transitions",
            epoch,
            step,
            {k: rng.integers(0, 50, size=4) for k in ("activation", "region_changes", "prediction")},
            meta={"num_points": 32},
        )
        arrays = {}
        for group in groups:
            matrix = np.clip(rng.normal(0.0, 0.5, size=(3, 3)), -1, 1)
            matrix[2, 0] = np.nan
            edges = np.linspace(0.0, 1.5, 6)
            arrays |= {
                f"{group}/class_sign": matrix,
                f"{group}/class_cosine": matrix / 2,
                f"{group}/bin_edges": edges,
                f"{group}/distance_sign": np.linspace(0.8, -0.4, 5),
                f"{group}/distance_cosine": np.linspace(0.5, -0.1, 5),
                f"{group}/distance_count": np.array([4, 8, 10, 0, 2]),
                f"{group}/sign_mean": 0.2,
                f"{group}/cosine_mean": 0.1,
                f"{group}/same_class_sign": 0.5,
                f"{group}/different_class_sign": 0.1,
                f"{group}/same_class_cosine": 0.3,
                f"{group}/different_class_cosine": 0.05,
                f"{group}/critical_length": 0.9 - 0.05 * epoch,
            }
        save_artifact(run_dir, "stiffness", epoch, step, arrays, meta={"class_names": CLASS_NAMES, "groups": groups})


def image_sources(index: Path) -> list[str]:
    return re.findall(r"<img src='([^']+)'", index.read_text())


def assert_valid_page(index: Path) -> list[str]:
    text = index.read_text()
    sources = image_sources(index)
    assert sources, "no figures on the page"
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    for name in sources:
        path = index.parent / name
        assert path.is_file(), name
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
    assert sorted(p.name for p in index.parent.glob("*.png")) == sorted(sources)
    return sources


def test_full_run_report(tmp_path, monkeypatch):
    log_dir = tmp_path / "logs"
    write_run(log_dir / "lightning_logs" / "version_0")
    per_class_calls, matrix_calls = [], []
    real_per_class, real_matrix = figures.render_per_class, figures.render_class_matrix

    def spy_per_class(values, class_names=None, **kwargs):
        per_class_calls.append((np.asarray(values), class_names, kwargs))
        return real_per_class(values, class_names, **kwargs)

    def spy_matrix(matrix, class_names=None, **kwargs):
        matrix_calls.append((np.asarray(matrix), class_names, kwargs))
        return real_matrix(matrix, class_names, **kwargs)

    monkeypatch.setattr(figures, "render_per_class", spy_per_class)
    monkeypatch.setattr(figures, "render_class_matrix", spy_matrix)

    index = report.build_report(log_dir)
    assert index == log_dir / "sensitivity_report" / "index.html"
    sources = assert_valid_page(index)
    expected = {
        "jacobian_norm_curves.png",
        "jacobian_norm_per_class.png",
        "jacobian_norm_correct_vs_misclassified.png",
        "transitions_curves.png",
        "transitions_histogram_0.png",  # its declared histogram: activation transitions per val trajectory
    }
    for group in GROUPS:
        expected |= {f"stiffness_{group}_same_vs_different.png", f"stiffness_{group}_by_distance.png"}
        for kind in ("sign", "cosine"):
            expected |= {f"stiffness_{group}_class_{kind}_epoch_{e:04d}.png" for e in (0, 8)}
    assert set(sources) == expected
    assert "lightning_logs/version_0" in index.read_text()

    # Per-class means at the last epoch, checked against a plain loop over the saved points.
    (last,) = [a for a in load_artifacts(log_dir / "lightning_logs" / "version_0", "jacobian_norm") if a.epoch == 8]
    pairs = list(zip(last.arrays["val_norms"], last.arrays["val_labels"], strict=True))
    naive = [np.mean([n for n, y in pairs if y == c]) for c in range(3)]
    ((values, names, kwargs),) = per_class_calls
    np.testing.assert_allclose(values, naive, rtol=1e-6)
    assert names == CLASS_NAMES and "epoch 8" in kwargs["title"]

    # Heatmaps: first and last epoch, class names on the axes, the epoch in the title, default fixed range.
    titles = [kwargs["title"] for _, _, kwargs in matrix_calls]
    assert len(matrix_calls) == len(GROUPS) * 2 * 2
    assert {re.search(r"epoch (\d+)", t).group(1) for t in titles} == {"0", "8"}
    assert all(names == CLASS_NAMES for _, names, _ in matrix_calls)
    assert all("vmin" not in kwargs and "vmax" not in kwargs for _, _, kwargs in matrix_calls)


def test_partial_artifacts_skip_figures_and_several_runs(tmp_path):
    write_run(tmp_path / "lightning_logs" / "version_0", epochs=(0, 1), groups=("train_val",))
    # A second run holding only summary scalars of the Jacobian norm: no per-point figures, nothing crashes.
    sparse = tmp_path / "lightning_logs" / "version_1"
    for epoch in (0, 1, 2):
        save_artifact(sparse, "jacobian_norm", epoch, epoch, {"val_mean": 1.0 + epoch, "train_mean": 0.5})
    save_artifact(sparse, "stiffness", 0, 0, {"val_val/sign_mean": 0.1}, meta={"groups": ["val_val"]})
    save_artifact(sparse, "transitions", 0, 0, {"num_units": 3})
    out = tmp_path / "out"
    index = report.build_report(tmp_path, out)
    assert index == out / "index.html"
    sources = assert_valid_page(index)
    run1 = [s for s in sources if s.startswith("run1_")]
    assert run1 == ["run1_jacobian_norm_curves.png", "run1_stiffness_val_val_same_vs_different.png"]
    assert any(s.startswith("run0_stiffness_train_val_class_sign_epoch_0001") for s in sources)
    text = index.read_text()
    assert "lightning_logs/version_0" in text and "lightning_logs/version_1" in text


def test_single_epoch_and_sensitivity_folder_as_log_dir(tmp_path):
    write_run(tmp_path / "run", epochs=(3,), groups=("train_val",))
    index = report.build_report(tmp_path / "run" / "sensitivity", tmp_path / "out")
    sources = assert_valid_page(index)
    assert "stiffness_train_val_class_sign_epoch_0003.png" in sources


def test_auroc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=200), 1)  # rounded so that ties occur
    wrong = rng.random(200) < 0.3
    assert figures._auroc(scores, wrong) == pytest.approx(metrics.roc_auc_score(wrong, scores))
    assert np.isnan(figures._auroc(scores, np.zeros(200, dtype=bool)))


def test_no_artifacts_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "lightning_logs" / "version_0" / "sensitivity" / "stiffness").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No sensitivity artifacts"):
        report.build_report(tmp_path)
    assert report.main([str(tmp_path)]) == 1
    assert "No sensitivity artifacts" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_cli(tmp_path):
    write_run(tmp_path / "logs" / "version_0", epochs=(0,), groups=())
    out = tmp_path / "html"
    ok = subprocess.run(
        [sys.executable, "-m", "lightning_sensitivity.report", str(tmp_path / "logs"), "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert str(out / "index.html") in ok.stdout
    assert_valid_page(out / "index.html")
    empty = subprocess.run(
        [sys.executable, "-m", "lightning_sensitivity.report", str(tmp_path / "html")],
        capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )  # fmt: skip
    assert empty.returncode != 0
    assert "No sensitivity artifacts" in empty.stderr


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (`apt-get install -y --no-install-recommends chromium`)")
    return chromium


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    chromium = chromium_or_skip()
    write_run(tmp_path / "logs" / "version_0", epochs=(0, 1), groups=("train_val",))
    index = report.build_report(tmp_path / "logs", tmp_path / "out")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--allow-file-access-from-files",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=3000",
    ]  # fmt: skip
    dom = subprocess.run([chromium, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Sensitivity report" in dom.stdout and "version_0" in dom.stdout
    for name in image_sources(index):
        assert f'src="{name}"' in dom.stdout, name
    shot = tmp_path / "shot.png"
    run = subprocess.run([chromium, *flags, f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=90)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    # The first figures draw in matplotlib's default blue (C0); a page with broken images would show alt text only.
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert (np.abs(pixels - np.array([31, 119, 180])).sum(axis=-1) < 40).sum() > 300


def test_validate_and_test_measurements_get_their_own_figures(tmp_path):
    run = tmp_path / "run"
    write_run(run, epochs=(0, 1), groups=("train_val",))
    for context in ("validate", "test"):  # how the monitors store trainer.validate / trainer.test measurements
        for epoch in (1, 2):
            save_artifact(run, f"jacobian_norm.{context}", epoch, epoch, {"val_mean": 1.0 + epoch, "train_mean": 0.5})
    sources = assert_valid_page(report.build_report(run, tmp_path / "out"))
    assert {"jacobian_norm_curves.png", "jacobian_norm_curves_validate.png", "jacobian_norm_curves_test.png"} <= set(
        sources
    )
    text = (tmp_path / "out" / "index.html").read_text()
    assert "Jacobian norm (trainer.validate)" in text and "Jacobian norm (trainer.test)" in text


def write_skewed_jacobian_run(run_dir: Path, jacobian_names=None, stiffness_names=None) -> None:
    """Realistic skew: ~8 % misclassified with norms 20x larger, spanning orders of magnitude (log-scaled bins)."""
    rng = np.random.default_rng(0)
    labels = np.arange(500) % 3
    correct = rng.random(500) > 0.08
    norms = np.where(correct, rng.lognormal(-3, 1, 500), rng.lognormal(0, 1, 500))
    arrays = {"val_norms": norms.astype(np.float32), "val_labels": labels, "val_correct": correct}
    save_artifact(run_dir, "jacobian_norm", 1, 10, arrays, meta={"class_names": jacobian_names})
    if stiffness_names is not None:
        matrix = rng.uniform(-1, 1, (3, 3))
        meta = {"class_names": stiffness_names}
        save_artifact(run_dir, "stiffness", 1, 10, {"val_val/class_sign": matrix}, meta=meta)


def reddish(image: np.ndarray) -> int:
    r, g, b = image.astype(int).transpose(2, 0, 1)
    return int(((r > g + 40) & (r > b + 40)).sum())


def bluish(image: np.ndarray) -> int:
    r, g, b = image.astype(int).transpose(2, 0, 1)
    return int(((b > r + 40) & (b > g + 10)).sum())


def test_point_histogram_shows_both_groups(tmp_path):
    write_skewed_jacobian_run(tmp_path / "run")
    out = report.build_report(tmp_path / "run", tmp_path / "out").parent
    image = np.asarray(Image.open(out / "jacobian_norm_correct_vs_misclassified.png").convert("RGB"))
    # C0 (correct) and C3 (misclassified), filled or outlined: each group covers a real area of the plot. On
    # density-normalised log bins the misclassified group was a sliver.
    blue, red = bluish(image), reddish(image)
    assert blue > 5000 and red > 5000, (blue, red)


def test_class_names_of_another_monitor_label_the_jacobian_bars(tmp_path):
    names = ["zero", "one", "two"]
    for run, jac, stiff in (("given", names, None), ("borrowed", None, names), ("none", None, None)):
        write_skewed_jacobian_run(tmp_path / run, jac, stiff)
        report.build_report(tmp_path / run, tmp_path / f"out_{run}")

    def bars(run: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / f"out_{run}" / "jacobian_norm_per_class.png").convert("RGB"))

    np.testing.assert_array_equal(bars("borrowed"), bars("given"))
    assert bars("none").shape != bars("given").shape or (bars("none") != bars("given")).any()


def test_every_split_per_layer_figure_and_notes_beside_their_figures(tmp_path):
    run = tmp_path / "run"
    for epoch in (0, 1, 2):
        counts = {f"{prefix}{k}": np.full(4, 31 if k == "region_changes" else 3)
                  for prefix in ("", "random_") for k in ("activation", "region_changes", "prediction")}  # fmt: skip
        save_artifact(run, "transitions", epoch, epoch, counts, meta={"num_points": 32, "splits": ["val", "random"]})
        edges = np.linspace(0.0, 1.0, 5)
        arrays = {
            "val_val/bin_edges": edges, "val_val/distance_sign": np.array([0.9, 0.6, 0.4, 0.2]),
            "val_val/distance_count": np.array([3, 3, 3, 3]), "val_val/critical_length": np.nan,
            **{f"val_val/layer/net.{k}/cosine": 0.1 * k + 0.01 * epoch for k in (0, 2, 4)},
        }  # fmt: skip
        save_artifact(run, "stiffness", epoch, epoch, arrays, meta={"groups": ["val_val"]})
    index = report.build_report(run, tmp_path / "out")
    sources = assert_valid_page(index)
    text = index.read_text()
    assert "stiffness_val_val_per_layer.png" in sources
    # 31 of 32 segments change region: saturated, said next to the transitions figure, the random split named
    figure = text.split("transitions_curves.png", 1)[1].split("</figure>", 1)[0]
    assert "class='note'" in figure and "Saturated" in figure and "random (97%)" in figure, figure
    # the binned sign stiffness stays positive: no zero crossing, said next to the by-distance figure
    figure = text.split("stiffness_val_val_by_distance.png", 1)[1].split("</figure>", 1)[0]
    assert "No zero crossing at epoch 2" in figure and "positive" in figure, figure
    # the per-layer heatmap: layers x epochs, the output layer marked (the last row)
    image = np.asarray(Image.open(index.parent / "stiffness_val_val_per_layer.png").convert("RGB"))
    assert image.shape[1] <= 372 and image.shape[0] <= 215


# ---------------------------------------------------------------- sections built from the declarations
TOY = "toy_confidence"
_P = keys.prefix(TOY)
#: A quantity of this test only, declared as a contributor would: the report knows nothing else about it.
TOY_QUANTITY = keys.Quantity(
    name=TOY,
    metrics=(f"{_P}/{{split}}/mean", f"{_P}/{{split}}/low"),
    arrays=tuple(keys.split_array(s, n) for s in ("val", "train") for n in ("confidence", "mean", "low")),
    histograms=(f"{_P}/{{split}}",),
    category="Toy confidence",
    charts=(
        keys.Chart("Toy confidence: {splits} (mean)", (f"{_P}/{{split}}/mean",)),
        keys.Chart(
            "Toy confidence: {held_out} mean and low",
            (f"{_P}/{{held_out}}/mean", f"{_P}/{{held_out}}/low"),
            each=("held_out",),
        ),
    ),
    report_arrays={f"{_P}/{{split}}": "{split}_confidence"},
)


class ToyConfidenceMonitor(SensitivityMonitor):
    """The largest softmax probability of each probe example: its mean and smallest value per probe set."""

    quantity = TOY
    state_fields = ("num_samples", "seed")
    differentiates_inputs = False

    def probe_splits(self):
        return frozenset({"val"}), frozenset({"train"})

    def compute(self, model, probes, progress, epoch):
        result = Measurement()
        for split, probe in probes.items():
            confidence = predict_logits(model, probe.inputs).double().softmax(dim=1).amax(dim=1).cpu()
            for stat, value in (("mean", float(confidence.mean())), ("low", float(confidence.min()))):
                result.scalars[keys.metric(TOY, split, stat)] = value
                result.arrays[keys.split_array(split, stat)] = value
            result.histograms[keys.metric(TOY, split)] = confidence
            result.arrays[keys.split_array(split, "confidence")] = confidence
        return result


@pytest.fixture
def toy_declared():
    keys.register(TOY_QUANTITY)
    yield TOY_QUANTITY
    keys.unregister(TOY)  # this test's own registration only


@pytest.fixture(scope="module")
def margin_fit(tmp_path_factory):
    """A real tiny fit with LogitMarginMonitor and the toy monitor (3 measurements: epochs 0, 1, 2)."""
    tmp_path = tmp_path_factory.mktemp("fit")
    keys.register(TOY_QUANTITY)
    try:
        torch.manual_seed(0)
        monitors = [LogitMarginMonitor(num_samples=40), ToyConfidenceMonitor(num_samples=40)]
        trainer = make_trainer(tmp_path, monitors)
        trainer.fit(TinyModule(), datamodule=TinyData())
    finally:
        keys.unregister(TOY)
    return tmp_path, trainer.logger.log_dir


def section(text: str, title: str) -> str:
    return text.split(f"<h3>{title}</h3>", 1)[1].split("<h3>", 1)[0]


def test_a_registered_quantity_gets_its_charts_and_histograms(margin_fit, toy_declared):
    log_root, log_dir = margin_fit
    index = report.build_report(log_root, log_root / "out")
    sources = set(assert_valid_page(index))
    toy = section(index.read_text(), "Toy confidence")
    # one chart over splits, one per held-out split, the histogram of the per-example confidences at the last epoch
    for name in ("toy_confidence_chart_0.png", "toy_confidence_chart_1_val.png", "toy_confidence_histogram_0.png"):
        assert name in sources and name in toy, name
    assert "Toy confidence: train vs val (mean)" in toy and "Toy confidence: val mean and low" in toy
    assert "Not drawn" not in toy and "not drawn" not in toy
    # the curves are the values the monitor logged to TensorBoard, epoch by epoch
    events = read_events(log_dir)
    arts = load_artifacts(Path(log_dir), TOY)
    curves = figures.chart_curves(toy_declared, toy_declared.charts[0], arts)
    assert [label for label, *_ in curves[()]] == ["train", "val"]  # the order of the declared layout_splits
    for label, epochs, values in curves[()]:
        logged = [e.value for e in events.Scalars(keys.metric(TOY, label, "mean"))]
        np.testing.assert_array_equal(epochs, [0, 1, 2])
        np.testing.assert_allclose(values, logged, rtol=1e-6)
    (lines,) = figures.chart_curves(toy_declared, toy_declared.charts[1], arts).values()
    assert [label for label, *_ in lines] == ["mean", "low"]  # "val" is in the chart's title
    epoch, found = figures.histogram_values(toy_declared, f"{_P}/{{split}}", arts)
    assert epoch == 2 and [(tag, array) for tag, array, _ in found] == [
        (f"{_P}/train", "train_confidence"), (f"{_P}/val", "val_confidence")
    ]  # fmt: skip
    np.testing.assert_array_equal(found[1][2], arts[-1].arrays["val_confidence"])


def test_logit_margin_section_in_a_real_fit(margin_fit):
    log_root, _ = margin_fit
    index = report.build_report(log_root, log_root / "out_margin")
    sources = set(assert_valid_page(index))
    text = index.read_text()
    margin = section(text, "Logit margin")
    for name in ("logit_margin_chart_0.png", "logit_margin_chart_1_val.png", "logit_margin_histogram_0.png"):
        assert name in sources and name in margin, name
    assert "Logit margin: train vs val (mean)" in margin and "Values at epoch 2" in margin
    # declared nowhere in this process (the fixture's registration is gone): a note and its values, no figure
    toy = section(text, TOY)
    assert "No keys.Quantity named &#x27;toy_confidence&#x27;" in toy and "<img" not in toy and "val_mean" in toy


def test_report_arrays_are_checked_and_the_cli_imports_declarations(tmp_path):
    with pytest.raises(ValueError, match="`report_arrays` expected keys among the declared"):
        keys.Quantity(name="m", metrics=("sensitivity/m/{split}/mean",), arrays=("val_x",),
                      report_arrays={"sensitivity/m/{split}": "{split}_x"})  # fmt: skip
    declared = {
        "metrics": ("sensitivity/m/{split}/mean",),
        "arrays": ("val_x",),
        "histograms": ("sensitivity/m/{split}",),
    }
    with pytest.raises(ValueError, match="the placeholders of"):
        keys.Quantity(name="m", **declared, report_arrays={"sensitivity/m/{split}": "val_x"})
    with pytest.raises(ValueError, match="matching some of `arrays`"):
        keys.Quantity(name="m", **declared, report_arrays={"sensitivity/m/{split}": "{split}_y"})
    with pytest.raises(TypeError, match="`report_figures`"):
        keys.Quantity(name="m", metrics=("sensitivity/m/{split}/mean",), report_figures="charts")
    # A declaration in a module of the user's: `--import` brings it into the report's process.
    (tmp_path / "my_quantity.py").write_text(
        "from lightning_sensitivity import keys\n"
        "keys.register(keys.Quantity(name='my_quantity', metrics=('sensitivity/my_quantity/{split}/mean',),\n"
        "    arrays=('val_mean',), charts=(keys.Chart('Mine', ('sensitivity/my_quantity/{split}/mean',)),)))\n"
    )
    for epoch in (0, 1):
        save_artifact(tmp_path / "run", "my_quantity", epoch, epoch, {"val_mean": 1.0 + epoch})
    env = {**os.environ, "PYTHONPATH": f"{PROJECT}:{tmp_path}"}
    out = tmp_path / "o"
    command = [sys.executable, "-m", "lightning_sensitivity.report", str(tmp_path / "run"), "--out", str(out)]
    ok = subprocess.run([*command, "--import", "my_quantity"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert image_sources(out / "index.html") == ["my_quantity_chart_0.png"]
    bad = subprocess.run([*command, "--import", "no_such_module"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1 and "`imports` entry 'no_such_module'" in bad.stderr
