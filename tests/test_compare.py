"""`python -m lightning_sensitivity.compare`: rank statistics against scipy and hand cases, the reader against event
files written here (fake sweeps with known values, and a real sweep of tiny `Trainer.fit` runs read back with
TensorBoard's own EventAccumulator), the CSV/HTML output and the command line."""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from helpers import make_trainer, read_events

from lightning_sensitivity.compare import (
    DEFAULT_X,
    DEFAULT_Y,
    _short_labels,
    compare_runs,
    correlations,
    main,
    write_comparison,
)

JAC = "sensitivity/jacobian_norm/val/mean"
SAME = "sensitivity/stiffness/val_val/same_class_cosine"
GAP = "generalization_gap/acc"


def rows_of(x, y, xk="a", yk="b"):
    return [{xk: a, yk: b} for a, b in zip(x, y, strict=True)]


# ------------------------------------------------------------------ statistics
def test_hand_case_without_ties():
    # ranks of y: 1 3 2 4 -> sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8; pairs: 5 concordant, 1 discordant
    r = correlations(rows_of([1, 2, 3, 4], [2.0, 3.5, 3.0, 9.0]), "a", "b", num_bootstrap=0)
    assert r["n"] == 4 and r["note"] == ""
    assert r["spearman"] == pytest.approx(0.8, abs=1e-12)
    # exact, below 10 runs: |rho| >= 0.8 <=> sum d^2 in {0, 2, 18, 20}: 1 + 3 + 3 + 1 of the 24 orderings
    assert r["spearman_p"] == pytest.approx(8 / 24, abs=1e-12)
    assert r["kendall"] == pytest.approx(4 / 6, abs=1e-12)
    # exact: P(at most 1 inversion among 4! permutations) = (1 + 3) / 24, two-sided 1/3
    assert r["kendall_p"] == pytest.approx(1 / 3, abs=1e-12)


def test_hand_case_with_ties():
    # x ties (0, 1), y ties (1, 2): S = 4 concordant, tau-b = 4 / sqrt((6 - 1)(6 - 1)) = 0.8
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    r = correlations(rows_of(x, y), "a", "b", num_bootstrap=0)
    assert r["kendall"] == pytest.approx(0.8, abs=1e-12)
    rx, ry = np.array([1.5, 1.5, 3, 4]), np.array([1, 2.5, 2.5, 4])  # average ranks
    assert r["spearman"] == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)


def permutation_oracle(x, y):
    """Two-sided permutation p-values by plain enumeration: every ordering of y, coefficients by scipy."""
    rho0, tau0 = scipy.stats.spearmanr(x, y).statistic, scipy.stats.kendalltau(x, y).statistic
    rhos, taus = [], []
    for order in itertools.permutations(range(len(y))):
        yp = [y[i] for i in order]
        rhos.append(scipy.stats.spearmanr(x, yp).statistic)
        taus.append(scipy.stats.kendalltau(x, yp).statistic)
    rhos, taus = np.nan_to_num(rhos), np.nan_to_num(taus)
    return float(np.mean(np.abs(rhos) >= abs(rho0) - 1e-9)), float(np.mean(np.abs(taus) >= abs(tau0) - 1e-9))


def test_perfect_ranking_of_four_runs_has_exact_p_2_of_24():
    # The sweep of the issue: 4 runs in perfect order. Only the identity and the reversal are as extreme.
    r = correlations(rows_of([0.01, 0.05, 0.2, 0.5], [0.1, 0.2, 0.3, 0.4]), "a", "b")
    assert r["spearman"] == r["kendall"] == 1.0
    assert r["spearman_p"] == r["kendall_p"] == pytest.approx(2 / 24, abs=1e-15)
    assert "exact permutation" in r["p_method"] and "24 orderings" in r["p_method"]
    assert math.isnan(r["spearman_low"]) and math.isnan(r["kendall_high"])  # no "[1.00, 1.00]"
    assert "too few runs" in r["note"]


@pytest.mark.parametrize("ties", [False, True])
def test_small_sweeps_against_plain_enumeration(ties):
    rng = np.random.default_rng(7 + ties)
    for n in [3, 4, 5, 6]:  # scipy per ordering is slow: 6! = 720 orderings at most
        for _ in range(3):
            x = rng.integers(0, 3, n).astype(float) if ties else rng.normal(size=n)
            y = np.round(0.7 * x + rng.normal(size=n)) if ties else 0.7 * x + rng.normal(size=n)
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                continue
            r = correlations(rows_of(x, y), "a", "b", num_bootstrap=0)
            assert (r["spearman_p"], r["kendall_p"]) == pytest.approx(permutation_oracle(list(x), list(y)), abs=1e-12)


def test_bootstrap_interval_from_eight_runs_on():
    rng = np.random.default_rng(1)
    x = rng.normal(size=8)
    r7 = correlations(rows_of(x[:7], x[:7] + rng.normal(size=7)), "a", "b", num_bootstrap=50)
    assert math.isnan(r7["spearman_low"]) and "too few runs for a bootstrap interval (n=7 < 8)" in r7["note"]
    r8 = correlations(rows_of(x, x + rng.normal(size=8)), "a", "b", num_bootstrap=50)
    assert math.isfinite(r8["spearman_low"]) and "too few runs" not in r8["note"]


@pytest.mark.parametrize("ties", [False, True])
def test_against_scipy(ties):
    # From 10 runs on the approximations of scipy.stats (below, the p-values are exact: tested above).
    rng = np.random.default_rng(3 + ties)
    checked = 0
    for n in [10, 11, 13, 20, 33, 34, 60, 150]:
        for _ in range(4):
            x = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n)
            y = 0.7 * x + rng.normal(size=n)
            y = np.round(y) if ties else y
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                continue
            r = correlations(rows_of(x, y), "a", "b", num_bootstrap=0)
            s, k = scipy.stats.spearmanr(x, y), scipy.stats.kendalltau(x, y)
            assert r["spearman"] == pytest.approx(s.statistic, abs=1e-12)
            assert r["kendall"] == pytest.approx(k.statistic, abs=1e-12)
            assert r["spearman_p"] == pytest.approx(s.pvalue, rel=1e-9, abs=1e-300)
            assert r["kendall_p"] == pytest.approx(k.pvalue, rel=1e-9, abs=1e-300)
            checked += 1
    assert checked >= 28


def test_perfect_and_reversed_order():
    r = correlations(rows_of(range(6), [1, 4, 9, 16, 25, 36]), "a", "b", num_bootstrap=0)
    assert (r["spearman"], r["kendall"]) == (1.0, 1.0)
    assert r["spearman_p"] == r["kendall_p"] == pytest.approx(2 / math.factorial(6))
    r = correlations(rows_of(range(6), [-v for v in range(6)]), "a", "b", num_bootstrap=0)
    assert (r["spearman"], r["kendall"]) == (-1.0, -1.0)


def test_bootstrap_interval_is_seeded_and_matches_a_plain_resampling():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + 0.8 * rng.normal(size=12)
    rows = rows_of(x, y)
    r = correlations(rows, "a", "b", num_bootstrap=300, seed=5)
    assert r == correlations(rows, "a", "b", num_bootstrap=300, seed=5)
    assert r["spearman_low"] != correlations(rows, "a", "b", num_bootstrap=300, seed=6)["spearman_low"]
    # the same resamples drawn here, coefficients by scipy, percentile interval
    draws = np.random.default_rng(5).integers(0, 12, size=(300, 12))
    rhos = [scipy.stats.spearmanr(x[i], y[i]).statistic for i in draws if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    taus = [scipy.stats.kendalltau(x[i], y[i]).statistic for i in draws if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    assert (r["spearman_low"], r["spearman_high"]) == pytest.approx(tuple(np.percentile(rhos, [2.5, 97.5])))
    assert (r["kendall_low"], r["kendall_high"]) == pytest.approx(tuple(np.percentile(taus, [2.5, 97.5])))
    assert r["spearman_low"] <= r["spearman"] <= r["spearman_high"]


def test_degenerate_cases_give_nan_and_a_note():
    two = correlations(rows_of([1, 2], [3, 4]), "a", "b")
    assert math.isnan(two["spearman"]) and math.isnan(two["kendall_p"]) and "fewer than 3" in two["note"]
    flat = correlations(rows_of([1, 2, 3, 4], [5, 5, 5, 5]), "a", "b")
    assert math.isnan(flat["spearman"]) and math.isnan(flat["kendall"]) and "b constant" in flat["note"]
    rows = rows_of([1, 2, 3, 4, 5], [1, 3, 2, float("nan"), 5]) + [{"a": 6}, {"b": 7}, {"a": "wide", "b": 1}]
    partial = correlations(rows, "a", "b", num_bootstrap=0)
    assert partial["n"] == 4 and "4 of 8 runs lack a value of a or b" in partial["note"]
    assert partial["spearman"] == pytest.approx(scipy.stats.spearmanr([1, 2, 3, 5], [1, 3, 2, 5]).statistic)
    absent = correlations(rows, "a", "nope")
    assert absent["n"] == 0 and math.isnan(absent["spearman"])
    with pytest.raises(ValueError, match="`num_bootstrap`"):
        correlations(rows, "a", "b", num_bootstrap=-1)


# ------------------------------------------------------------------ reader on fake sweeps with known values
BATCHES = 4  # steps per epoch of the fake runs


def fake_value(run: int, key: str, step: int) -> float:
    return float(np.float32(1 + run + 0.01 * step + 0.001 * (hash(key) % 97)))  # stored as float32


def write_fake_run(directory: Path, run: int, epochs: int, *, lr: float, sensitivity=True, generalization=True) -> None:
    """Steps as Lightning writes them: epoch-end metrics and `epoch` at B*(e+1)-1, the monitors at global_step B*N."""
    from torch.utils.tensorboard import SummaryWriter

    directory.mkdir(parents=True)
    writer = SummaryWriter(str(directory))
    for n in range(epochs + 1):
        if sensitivity:
            for key in (JAC, SAME):
                writer.add_scalar(key, fake_value(run, key, BATCHES * n), BATCHES * n)
        if n and generalization:
            step = BATCHES * n - 1
            for key in (GAP, "val/acc", "val/loss", "train/loss"):
                writer.add_scalar(key, fake_value(run, key, step), step)
        if n:
            writer.add_scalar("epoch", n - 1, BATCHES * n - 1)
    writer.close()
    (directory / "hparams.yaml").write_text(f"lr: {lr}\nmodel:\n  hidden: [{run}, 8]\n  act: relu\n")


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    for run, lr in enumerate([0.01, 0.03, 0.1, 0.3]):
        write_fake_run(root / f"lr_{lr}" / "version_0", run, epochs=3, lr=lr)
    write_fake_run(root / "short" / "version_2", 4, epochs=1, lr=1.0, generalization=False)
    (root / "not_a_run").mkdir()
    return root


def test_rows_hold_the_last_values_and_the_hparams(fake_sweep):
    rows = compare_runs(fake_sweep)
    assert [r["run"] for r in rows] == [f"lr_{lr}/version_0" for lr in (0.01, 0.03, 0.1, 0.3)] + ["short/version_2"]
    assert [r["hparams/lr"] for r in rows] == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert rows[1]["hparams/model.act"] == "relu" and rows[1]["hparams/model.hidden"] == "[1, 8]"
    for run, row in enumerate(rows[:4]):
        assert row[JAC] == fake_value(run, JAC, 3 * BATCHES)
        assert row[GAP] == fake_value(run, GAP, 3 * BATCHES - 1)
        assert row["val/loss"] == fake_value(run, "val/loss", 3 * BATCHES - 1)
        assert "train/loss" not in row and "epoch" not in row  # neither sensitivity nor generalization keys
        assert row["note"] == ""
    assert rows[4][JAC] == fake_value(4, JAC, BATCHES) and math.isnan(rows[4][GAP])
    assert list(rows[0])[:2] == ["run", "hparams/lr"] and list(rows[0])[-1] == "note"


def test_tensor_scalars_and_odd_hparams(tmp_path):
    """Scalars stored as tensors (TensorBoard's own summary API) count too; python-object tags in hparams.yaml are
    read as their plain content, an empty hparams.yaml gives no column."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    for name, hparams in (("a", "!!python/object:argparse.Namespace\nlr: 0.5\n"), ("b", "{}\n")):
        run = tmp_path / name / "version_0"
        run.mkdir(parents=True)
        writer = EventFileWriter(str(run))
        for step, value in ((0, 1.5), (7, 2.5)):
            plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            metadata = summary_pb2.SummaryMetadata(plugin_data=plugin)
            tensor = tensor_util.make_tensor_proto(np.float32(value + (name == "b")))
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=JAC, tensor=tensor, metadata=metadata)])
            writer.add_event(event_pb2.Event(step=step, summary=summary))
        writer.close()
        (run / "hparams.yaml").write_text(hparams)
    rows = compare_runs(tmp_path)
    assert [r[JAC] for r in rows] == [2.5, 3.5]
    assert rows[0]["hparams/lr"] == 0.5 and math.isnan(rows[1]["hparams/lr"])
    assert not [k for r in rows for k in r if k.startswith("hparams/") and k != "hparams/lr"]


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_epoch_n_maps_to_the_steps_of_n_completed_epochs(fake_sweep, epoch):
    rows = compare_runs(fake_sweep, epoch=epoch, x=["train/loss"])
    for run, row in enumerate(rows[:4]):
        # the monitors' measurement after `epoch` epochs sits at global_step B*epoch (0 = at init) ...
        assert row[JAC] == fake_value(run, JAC, BATCHES * epoch)
        # ... Lightning's epoch-end metrics of training epoch epoch-1 one step earlier; none at init
        for key in (GAP, "train/loss"):
            assert (row[key] == fake_value(run, key, BATCHES * epoch - 1)) if epoch else math.isnan(row[key])
    short = rows[4]
    if epoch >= 2:
        assert math.isnan(short[JAC]) and f"epoch {epoch} not reached (logged epochs: [0])" in short["note"]
    else:
        assert short[JAC] == fake_value(4, JAC, BATCHES * epoch)


def test_bad_arguments_of_the_api(fake_sweep, tmp_path):
    with pytest.raises(FileNotFoundError, match="`log_root`.*expected a directory"):
        compare_runs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no runs"):
        compare_runs(tmp_path / "empty")
    for bad, error in (("first", ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="`epoch` expected 'last' or an int >= 0"):
            compare_runs(fake_sweep, epoch=bad)
    with pytest.raises(ValueError, match=r"`x` got unknown key\(s\) \['nope'\]; keys that exist: hparams/lr.*val/acc"):
        compare_runs(fake_sweep, x=["nope"])
    with pytest.raises(ValueError, match=r"`y` got unknown key"):
        write_comparison(fake_sweep, tmp_path / "out", y=["val/accuracy"])
    with pytest.raises(TypeError, match="`x` expected a sequence of key names"):
        compare_runs(fake_sweep, x=JAC)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def check_outputs(page_path: Path, rows: list[dict], plots: int) -> Page:
    table = read_csv(page_path.with_name("compare.csv"))
    assert len(table) == len(rows)
    for cells, row in zip(table, rows, strict=True):
        assert list(cells) == list(row)
        for key, value in row.items():
            if isinstance(value, float):
                assert (cells[key] == "") if math.isnan(value) else (float(cells[key]) == value), key
            else:
                assert cells[key] == str(value), key
    page = Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    assert len(page.images) == plots
    for src in page.images:
        assert (page_path.parent / src).is_file() and (page_path.parent / src).read_bytes()[:4] == b"\x89PNG"
    return page


def test_write_comparison_of_the_fake_sweep(fake_sweep, tmp_path):
    page_path = write_comparison(fake_sweep, tmp_path / "out", num_bootstrap=100)
    rows = compare_runs(fake_sweep)
    # neither the stiffness different-class key nor generalization_gap/loss is in any run: 2 x 2 plots
    page = check_outputs(page_path, rows, plots=2 * 2)
    text = " ".join(page.text)
    assert "sensitivity/stiffness/val_val/different_class_cosine, generalization_gap/loss" in text  # named left out
    stats = correlations(rows, JAC, GAP, num_bootstrap=100)
    assert stats["n"] == 4 and "1 of 5 runs lack" in stats["note"]
    assert f"{stats['spearman']:.3f}" in text
    default = write_comparison(fake_sweep, x=["hparams/lr"], y=[JAC])
    assert default == fake_sweep / "comparison" / "compare.html"
    check_outputs(default, compare_runs(fake_sweep), plots=1)
    # the output folder holds no event files, so it is not a run next time
    assert len(compare_runs(fake_sweep)) == 5


def test_point_labels_drop_the_path_parts_all_runs_share():
    assert _short_labels(["s/lr0.1/version_0", "s/lr1/version_0"]) == ["lr0.1", "lr1"]
    assert _short_labels(["a/version_0", "a/version_1"]) == ["version_0", "version_1"]
    assert _short_labels(["x/version_0", "y/z/version_0"]) == ["x", "y/z"]
    assert _short_labels(["only/version_0"]) == ["version_0"] and _short_labels(["."]) == ["."]


# ------------------------------------------------------------------ command line
def test_help_prints_percent_signs_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "95%" in out and "%%" not in out


def test_cli_in_process(fake_sweep, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [str(fake_sweep), "--out", str(out), "--epoch", "2", "--x", JAC, "hparams/lr", "--bootstrap", "50"]
    assert main(argv) == 0
    assert "5 run(s), 4 plot(s)" in capsys.readouterr().out
    rows = compare_runs(fake_sweep, epoch=2, x=["hparams/lr"])
    check_outputs(out / "compare.html", rows, plots=2 * 2)
    assert "epoch 2 (2 completed epochs)" in (out / "compare.html").read_text(encoding="utf-8")

    for argv, needle in (
        ([str(tmp_path / "missing")], "argument LOG_ROOT: expected a directory"),
        ([str(fake_sweep), "--epoch", "-3"], "argument --epoch: --epoch expected 'last' or an int >= 0, got '-3'"),
        ([str(fake_sweep), "--epoch", "end"], "--epoch expected 'last' or an int >= 0, got 'end'"),
        ([str(fake_sweep), "--x", "sensitivity/jac"], "--x got unknown key(s) ['sensitivity/jac']; keys that exist:"),
        ([str(fake_sweep), "--y", "val/accuracy"], "--y got unknown key(s) ['val/accuracy']"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert needle in capsys.readouterr().err, argv
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "holds no runs" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess(fake_sweep, tmp_path):
    out = tmp_path / "sub"
    done = subprocess.run(
        [sys.executable, "-m", "lightning_sensitivity.compare", str(fake_sweep), "--out", str(out), "--bootstrap", "9"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    check_outputs(out / "compare.html", compare_runs(fake_sweep), plots=2 * 2)


# ------------------------------------------------------------------ a real sweep
def train_sweep(root: Path, lrs, *, epochs: int = 2, stiffness: bool = False, widths=(32,)) -> list[Path]:
    """One tiny `Trainer.fit` of `LitClassifier(MLP)` per (lr, width) on a 4-class synthetic problem."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor
    from lightning_sensitivity.models import MLP, LitClassifier

    def data(n: int, seed: int) -> TensorDataset:
        prototypes = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
        gen = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 4
        return TensorDataset(prototypes[y] + 1.5 * torch.randn(n, 16, generator=gen), y)

    log_dirs = []
    for width in widths:
        for lr in lrs:
            pl.seed_everything(0, verbose=False)
            monitors = [JacobianNormMonitor(num_samples=20, figures="none")]
            if stiffness:
                monitors.append(StiffnessMonitor(num_samples=20, figures="none"))
            logger = TensorBoardLogger(str(root), name=f"w{width}_lr{lr}")
            trainer = make_trainer(root, monitors, logger=logger, max_epochs=epochs, log_every_n_steps=1)
            train = DataLoader(data(80, 1), batch_size=20, shuffle=True)
            val = DataLoader(data(40, 2), batch_size=20)
            trainer.fit(LitClassifier(MLP(16, 4, hidden=(width,)), lr=lr), train, val)
            log_dirs.append(Path(trainer.logger.log_dir))
    return log_dirs


def event_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    acc = read_events(log_dir)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_real_sweep_end_to_end(tmp_path):
    lrs = (0.01, 0.05, 0.2, 0.5)
    log_dirs = train_sweep(tmp_path / "sweep", lrs, epochs=2)
    page_path = write_comparison(tmp_path / "sweep", tmp_path / "out", num_bootstrap=200)
    rows = compare_runs(tmp_path / "sweep")
    assert [r["run"] for r in rows] == [d.relative_to(tmp_path / "sweep").as_posix() for d in log_dirs]
    assert [r["hparams/lr"] for r in rows] == list(lrs)
    for row, log_dir in zip(rows, log_dirs, strict=True):
        events = event_scalars(log_dir)
        keys = sorted(k for k in events if k.startswith("sensitivity/"))
        keys += ["generalization_gap/acc", "generalization_gap/loss", "val/acc", "val/loss"]
        assert JAC in keys and set(keys) <= set(row)
        for key in keys:
            assert row[key] == events[key][max(events[key])], key
        epoch_one = compare_runs(tmp_path / "sweep", epoch=1)[rows.index(row)]
        end = max(step for step, value in events["epoch"].items() if value == 0)  # last step of training epoch 0
        assert epoch_one[JAC] == events[JAC][end]  # the monitors write at the step of Lightning's epoch-end metrics
        assert epoch_one["val/acc"] == events["val/acc"][end]
        assert compare_runs(tmp_path / "sweep", epoch=0)[rows.index(row)][JAC] == events[JAC][0]
    check_outputs(page_path, rows, plots=len(DEFAULT_Y))  # only the Jacobian norm of the default x keys is there
    for y_key in DEFAULT_Y:
        stats = correlations(rows, DEFAULT_X[0], y_key, num_bootstrap=0)
        x, y = [r[DEFAULT_X[0]] for r in rows], [r[y_key] for r in rows]
        assert stats["n"] == 4
        assert stats["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        spearman_p, kendall_p = permutation_oracle(x, y)  # 4 runs: exact permutation p-values
        assert stats["spearman_p"] == pytest.approx(spearman_p, abs=1e-12)
        assert stats["kendall_p"] == pytest.approx(kendall_p, abs=1e-12)
