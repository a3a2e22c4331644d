"""TensorBoard output, matplotlib figures and per-epoch artifact files for the sensitivity monitors.

Nothing here imports Lightning at import time (only :func:`find_tensorboard_writer` does, when called), nor
``wandb``/``mlflow`` (:mod:`lightning_sensitivity.logging.writers` imports them inside the writers). The monitors
render their images with :mod:`lightning_sensitivity.logging.render` (fast, NumPy + Pillow), and so do the offline
report and :mod:`lightning_sensitivity.logging.plots` (the same pictures as matplotlib figures, for scripts).
"""

from lightning_sensitivity.logging.artifacts import Artifact, load_artifacts, save_artifact, stiffness_key
from lightning_sensitivity.logging.plots import (
    figure_to_array,
    plot_class_matrix,
    plot_per_class,
    plot_stiffness_by_distance,
)
from lightning_sensitivity.logging.render import (
    render_class_matrix,
    render_per_class,
    render_stiffness_by_distance,
    render_timings,
)
from lightning_sensitivity.logging.tensorboard import (
    add_sensitivity_layout,
    find_tensorboard_writer,
    log_figure,
    log_histogram,
    log_text,
    sensitivity_layout,
)
from lightning_sensitivity.logging.writers import ImageWriter, image_writers

__all__ = [
    "Artifact",
    "ImageWriter",
    "add_sensitivity_layout",
    "figure_to_array",
    "image_writers",
    "find_tensorboard_writer",
    "load_artifacts",
    "log_figure",
    "log_histogram",
    "log_text",
    "plot_class_matrix",
    "plot_per_class",
    "plot_stiffness_by_distance",
    "render_class_matrix",
    "render_per_class",
    "render_stiffness_by_distance",
    "render_timings",
    "save_artifact",
    "sensitivity_layout",
    "stiffness_key",
]
