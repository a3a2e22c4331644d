"""Offline report: turn a run's saved sensitivity artifacts into PNG figures and one static HTML page.

Usage::

    python -m lightning_sensitivity.report LOG_DIR [--out OUT_DIR] [--import MODULE ...]

``LOG_DIR`` is searched recursively for ``sensitivity/`` folders written by
:func:`lightning_sensitivity.logging.save_artifact` (e.g. ``lightning_logs/version_0/sensitivity/...``); each folder
is one run and gets its own section. The page (``OUT_DIR/index.html``, default ``LOG_DIR/sensitivity_report``) uses
no JavaScript and no external URLs, so it can be copied off a cluster and opened anywhere.

Each quantity declared with :class:`lightning_sensitivity.keys.Quantity` (the built-in ones, and any registered with
:func:`lightning_sensitivity.keys.register` in this process, e.g. by a module given to ``--import``) gets a section
titled by its ``category``, with the figures its ``report_figures`` names
(:mod:`lightning_sensitivity.logging.report_figures`), drawn when the artifacts hold the arrays they need:

* ``"charts"`` (the default): each declared chart as curves over epochs, each line read from the scalar array
  ``report_arrays`` names for it, else from the array its tag names (``sensitivity/<name>/val/mean``: ``val_mean``);
* ``"histograms"`` (the default): each declared histogram at the last epoch, from the per-example array
  ``report_arrays`` names (``{split}_margins`` for ``sensitivity/logit_margin/{split}``);
* the built-in quantities' own figures:

  * ``jacobian_norm``: mean / median / p90 of the per-point norms over epochs (val and train, from ``{split}_mean``
    etc. or computed from ``{split}_norms``), the train/val ratio and misclassification AUROC; per-class mean norms
    at the last epoch (``val_norms`` + ``val_labels``); a histogram of the norms of correctly vs wrongly classified
    points at the last epoch (``val_norms`` + ``val_correct``).
  * ``transitions``: mean and spread of ``activation``, ``region_changes`` (as a fraction of the ``num_points``
    segments, 1 = saturated, with a note beside it when saturated) and ``prediction`` per trajectory over epochs,
    one line per split measured (val; ``train_*`` dashed; ``random_*`` dotted).
  * ``stiffness``, per group ``g``: ``g/same_class_*`` vs ``g/different_class_*`` vs ``g/*_mean`` over epochs;
    ``g/distance_sign`` / ``g/distance_cosine`` against ``g/bin_edges`` for every epoch with ``g/critical_length``
    (a note beside it when the last epoch has no zero crossing); per-layer cosine stiffness
    ``g/layer/<layer>/cosine`` as layers x epochs (``per_layer=True``); class matrices ``g/class_sign`` and
    ``g/class_cosine`` at the first and last epoch on the fixed range [-1, 1], drawn as in TensorBoard.

Every section ends with the scalar values of its last epoch. Artifacts of a quantity no declaration names get that
table and a note.
Figures sit in a grid (2-4 columns), notes beside their figure.

Example::

    from lightning_sensitivity.report import build_report
    index = build_report("lightning_logs")  # lightning_logs/sensitivity_report/index.html
"""

from __future__ import annotations

import argparse
import html
import importlib
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lightning_sensitivity import keys
from lightning_sensitivity.keys import ARTIFACT_DIR
from lightning_sensitivity.logging.artifacts import Artifact, load_artifacts
from lightning_sensitivity.logging.report_figures import FIGURES, Entry

__all__ = ["build_report", "find_runs", "main"]

DEFAULT_OUT = "sensitivity_report"
STATS = keys.JACOBIAN_STATS
TRANSITION_STATS = keys.TRANSITION_STATS
DEFAULT_GROUPS = keys.GROUPS
KINDS = keys.STIFFNESS_KINDS


def find_runs(log_dir: str | Path) -> list[Path]:
    """Directories under ``log_dir`` (itself included) that hold a ``sensitivity/`` folder with artifacts.

    Args:
        log_dir: where to search, recursively.

    Returns:
        The run directories, sorted; empty when there are no artifacts.

    Raises:
        FileNotFoundError: if ``log_dir`` is not a directory.
    """
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"`log_dir` {str(root)!r} is not a directory")
    candidates = [root / ARTIFACT_DIR] if root.name != ARTIFACT_DIR else [root]
    candidates += [p for p in root.rglob(ARTIFACT_DIR) if p.is_dir()]
    runs = {p.parent for p in candidates if p.is_dir() and any(p.glob("*/epoch_*.npz"))}
    return sorted(runs)


def _summary_rows(artifacts: Sequence[Artifact]) -> list[tuple[str, str]]:
    last = artifacts[-1]
    rows = []
    for key in sorted(last.arrays):
        value = last.scalar(key)
        if last.arrays[key].size == 1 and math.isfinite(value):
            rows.append((key, f"{value:.4g}"))
    return rows


def _render_run(run: Path, label: str, out_dir: Path, prefix: str) -> list[str]:
    artifacts = load_artifacts(run)
    # One monitor may have been given the class names and another not (say StiffnessMonitor but not
    # JacobianNormMonitor): the names of the run label every per-class figure.
    known = [a.meta["class_names"] for a in artifacts if isinstance(a.meta.get("class_names"), list)]
    for artifact in artifacts:
        if known and not isinstance(artifact.meta.get("class_names"), list):
            artifact.meta["class_names"] = known[-1]
    by_quantity: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        by_quantity.setdefault(artifact.quantity, []).append(artifact)
    parts = [f"<section><h2>{html.escape(label)}</h2>"]

    def save(fig: Figure | np.ndarray, name: str) -> str:
        filename = f"{prefix}{name}.png"
        if isinstance(fig, np.ndarray):  # an RGB image of the fast renderers (the pictures TensorBoard shows)
            from PIL import Image

            Image.fromarray(fig).save(out_dir / filename, format="PNG")
        else:
            fig.savefig(out_dir / filename, dpi=100)
        return filename

    # The declared quantities in the order of their declarations, then any other artifacts.
    declared = {q.name: q for q in keys.declarations()}
    order = {name: k for k, name in enumerate(declared)}
    ranked = sorted(by_quantity.items(), key=lambda item: (order.get(item[0].partition(".")[0], len(order)), item[0]))
    for quantity, arts in ranked:
        # The monitors write trainer.validate / trainer.test measurements as "{quantity}.validate" / ".test".
        base, _, context = quantity.partition(".")
        declaration = declared.get(base)
        title = (declaration.category if declaration else base) + (f" (trainer.{context})" if context else "")
        epochs = ", ".join(str(a.epoch) for a in arts)
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(f"<p class='meta'>{len(arts)} measurement(s) at epochs {html.escape(epochs)}</p>")
        entries: list[Entry] = []
        if declaration is None:
            entries.append(Entry("", "", (
                f"No keys.Quantity named {base!r} is declared in this process, so only its values are listed: "
                "pass the module that registers it with --import MODULE (build_report(..., imports=[...]))."
            )))  # fmt: skip
        for name in declaration.report_figures if declaration else ():
            builder = FIGURES.get(name)
            if builder is None:
                warnings.warn(
                    f"Skipping the {name!r} figures of {quantity}: `report_figures` of its declaration expected "
                    f"names among {sorted(FIGURES)}",
                    stacklevel=2,
                )
                continue
            try:
                entries += builder(declaration, arts, lambda fig, n, c=context: save(fig, f"{n}_{c}" if c else n))
            except Exception as err:  # one malformed artifact must not cost the user the whole report
                warnings.warn(f"Skipping the {name!r} figures of {quantity} of {run}: {err!r}", stacklevel=2)
        notes = [n for n in arts[-1].meta.get("notes") or [] if isinstance(n, str)]
        if notes and not any(e.note for e in entries if e.file):  # the monitor's own notes when no figure says it
            parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
        for section in dict.fromkeys(e.section for e in entries):
            if section:
                parts.append(f"<h4>{html.escape(section)}</h4>")
            parts.append("<div class='grid'>")
            for entry in (e for e in entries if e.section == section):
                note = f"<p class='note'>{html.escape(entry.note)}</p>" if entry.note else ""
                if not entry.file:  # a note on its own
                    parts.append(f"<div>{note}</div>")
                    continue
                parts.append(
                    f"<figure class='{'wide' if entry.wide else 'tile'}'><img src='{html.escape(entry.file)}' "
                    f"alt='{html.escape(entry.caption)}'><figcaption>{html.escape(entry.caption)}</figcaption>{note}"
                    "</figure>"
                )
            parts.append("</div>")
        rows = _summary_rows(arts)
        if rows:
            cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
            parts.append(
                f"<details><summary>Values at epoch {arts[-1].epoch}</summary><table>{cells}</table></details>"
            )
    parts.append("</section>")
    return parts


#: The style sheet of the report and of the comparison page (``lightning_sensitivity.compare``): figures in a grid
#: (2-4 columns by window width; multi-panel figures span two), notes beside their figure, wide tables scrolling
#: inside their own box, so that a default run's report stays within a few screens.
PAGE_STYLE = """body{font-family:sans-serif;margin:1.2em;max-width:1600px}h2{margin:.8em 0 .3em}h3{margin:.6em 0 .2em}
h4{margin:.5em 0 .2em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.6em;align-items:start}
figure{margin:0}figure.wide{grid-column:span 2}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#444}.meta{color:#666;font-size:.9em;margin:.2em 0}
.note{background:#fff4e0;border-left:3px solid #e08a00;padding:.3em .6em;font-size:.85em;margin:.3em 0}
.scroll{overflow:auto;max-width:100%;max-height:75vh}details{margin:.3em 0}
table{border-collapse:collapse}td{border:1px solid #ddd;padding:2px 8px}"""


def build_report(log_dir: str | Path, out_dir: str | Path | None = None, imports: Sequence[str] = ()) -> Path:
    """Render every run's artifacts under ``log_dir`` into PNG figures and an ``index.html``.

    Args:
        log_dir: a directory containing (at any depth) ``sensitivity/`` folders written by the monitors.
        out_dir: where to write ``index.html`` and the PNGs; default ``log_dir/sensitivity_report``.
        imports: modules to import first, e.g. those declaring quantities of their own with ``keys.register``
            (a quantity declared nowhere in this process gets only its table of values).

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError: if ``log_dir`` is not a directory or holds no sensitivity artifacts.
        ImportError: if a module of ``imports`` cannot be imported.
    """
    if isinstance(imports, str):
        raise TypeError(f"`imports` expected a sequence of module names, got the str {imports!r}")
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"`imports` entry {module!r} could not be imported: {err}") from err
    root = Path(log_dir)
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(
            f"No sensitivity artifacts under {str(root)!r}: expected files like "
            f"'<run>/{ARTIFACT_DIR}/<quantity>/epoch_0000.npz', written by the monitors into the logger's log_dir."
        )
    out = Path(out_dir) if out_dir is not None else root / DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    body: list[str] = []
    for index, run in enumerate(runs):
        label = str(run.relative_to(root)) if run.is_relative_to(root) and run != root else str(run)
        prefix = f"run{index}_" if len(runs) > 1 else ""
        body += _render_run(run, label, out, prefix)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Sensitivity report: {html.escape(str(root))}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>Sensitivity report</h1><p class='meta'>Artifacts from {html.escape(str(root.resolve()))}</p>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    index_path = out / "index.html"
    index_path.write_text(page, encoding="utf-8")
    return index_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 on success, 1 when there is nothing to report)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sensitivity.report",
        description="Render saved sensitivity artifacts into PNG figures and a static HTML page.",
    )
    parser.add_argument("log_dir", help="log directory to search (recursively) for sensitivity/ artifact folders")
    parser.add_argument("--out", default=None, help=f"output directory (default: LOG_DIR/{DEFAULT_OUT})")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, e.g. one that declares a quantity with keys.register (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        index = build_report(args.log_dir, args.out, args.imports)
    except (FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Report written to {index}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
