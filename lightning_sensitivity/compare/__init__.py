"""Compare many runs: one table row per run and scatter plots of sensitivity vs generalization with rank correlations.

Usage::

    python -m lightning_sensitivity.compare LOG_ROOT [--x KEY ...] [--y KEY ...] [--epoch last|N] [--out DIR]

Every directory under ``LOG_ROOT`` (itself included) that directly holds TensorBoard event files
(``events.out.tfevents.*``, e.g. ``LOG_ROOT/<name>/version_<k>/`` of Lightning's ``TensorBoardLogger``) is one run;
its ``hparams.yaml`` (when present) gives the ``hparams/<name>`` columns (nested keys joined with ``.``). Written to
``DIR`` (default ``LOG_ROOT/comparison``): ``compare.csv`` (one row per run: ``run``, the hyperparameters, every
``sensitivity/...`` scalar, :data:`GENERALIZATION_KEYS`, any other requested key, ``note``) and ``compare.html``
with one scatter plot (PNG beside it) of each x key against each y key, annotated with Spearman's rho and Kendall's
tau-b, their p-values and seeded bootstrap 95 % intervals -- Novak et al.'s (2018) Jacobian norm vs generalization
gap figure for your own sweep. Any column (a hyperparameter too) can be an x or y key.

Which value of a key a row holds (``--epoch``): ``last`` (default) takes the value written at the largest step.
``N`` means "after N completed training epochs", the monitors' numbering (0 = at initialisation). Lightning writes an
``epoch`` scalar (the 0-based training epoch) beside every metric logged with ``self.log``; with ``E`` the last step
at which ``epoch == N - 1``: a ``sensitivity/...`` key takes its value at step ``E`` (the monitors write at the step
of Lightning's own epoch-end metrics; for logs of earlier versions, which wrote one step later, at ``E + 1``); at
``N = 0`` at step 0. Any other key takes its last value in training epoch ``N - 1`` (steps after the previous
epoch's ``E``, up to ``E``); at ``N = 0`` it is missing. A run that never reached epoch ``N`` gets missing values and a
note. Missing values are empty cells in the CSV and NaN in :func:`compare_runs`' rows (``pandas.DataFrame(rows)``
makes a frame of them; pandas is not needed).

Statistics (numpy only): Spearman's rho on average ranks (ties), p-value from Student's t with ``n - 2`` degrees of
freedom; Kendall's tau-b, p-value exact (permutation distribution) without ties when ``n <= 33``, else the normal
approximation with tie-corrected variance -- the conventions of ``scipy.stats.spearmanr`` / ``kendalltau``. Runs lacking
either key are left out of that pair; fewer than 3 runs or a constant column give NaN and a note.

Example::

    from lightning_sensitivity.compare import write_comparison
    html_path = write_comparison("lightning_logs")  # lightning_logs/comparison/compare.html and compare.csv
"""

# ruff: noqa: F401 -- the package re-exports its modules' public names (and `_short_labels` for the tests)
from lightning_sensitivity.compare.cli import main
from lightning_sensitivity.compare.page import DEFAULT_OUT, _short_labels, write_comparison
from lightning_sensitivity.compare.ranking import rank_measures
from lightning_sensitivity.compare.runs import (
    DEFAULT_X,
    DEFAULT_Y,
    EPOCH_KEY,
    EVENTS_GLOB,
    GENERALIZATION_KEYS,
    HPARAMS_PREFIX,
    SENSITIVITY_PREFIX,
    compare_runs,
    find_event_runs,
)
from lightning_sensitivity.compare.stats import correlations

__all__ = ["compare_runs", "correlations", "find_event_runs", "main", "rank_measures", "write_comparison"]
