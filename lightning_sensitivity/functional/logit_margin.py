"""Logit margin: each example's largest logit minus its second largest.

A small margin marks a point near the decision boundary of the model's top two classes; the distribution of margins
on held-out data is a cheap, forward-only measure of how confidently the network separates the classes (the margin
of the logits; Elsayed et al. 2018 and Jiang et al. 2019 study margins as generalization predictors). For one binary
logit ``z`` (the classes' logits ``[0, z]``) the margin is ``|z|``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_sensitivity import keys
from lightning_sensitivity.functional._inputs import ModelKwargs
from lightning_sensitivity.functional.predict import predict_logits

__all__ = ["logit_margin", "logit_margin_summary"]

#: The statistics of the margins the monitor logs per probe split: mean, median and 10th percentile.
MARGIN_STATS = ("mean", "median", "p10")


def logit_margin(
    model: nn.Module,
    inputs: Tensor,
    *,
    chunk_size: int | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    """``[N]`` top-1 minus top-2 logit of each example (eval mode, the model left exactly as it was).

    Args:
        model: maps ``[N, *input_shape]`` to logits ``[N, C]``.
        inputs: ``[N, *input_shape]`` (or integer token ids).
        chunk_size: examples per forward pass (default: all at once).
        model_kwargs: per-example keyword inputs of the model, each ``[N, ...]``.

    Returns:
        ``[N]`` non-negative margins in the logits' dtype; ``|z|`` for a single binary logit ``z``.

    Raises:
        ValueError: if ``chunk_size`` is not a positive int or the model does not return ``[N, C]`` logits.

    Example:
        >>> model = torch.nn.Linear(3, 4)
        >>> logit_margin(model, torch.randn(5, 3)).shape
        torch.Size([5])
    """
    logits = predict_logits(model, inputs, chunk_size, model_kwargs=model_kwargs)
    if logits.shape[1] == 1:
        return logits[:, 0].abs()
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def logit_margin_summary(margins: Tensor) -> dict[str, float]:
    """The :data:`MARGIN_STATS` of ``[N]`` margins, computed in float64 (``torch.quantile``, linear interpolation).

    Raises:
        ValueError: if ``margins`` is not a non-empty 1-d tensor.

    Example:
        >>> logit_margin_summary(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
        {'mean': 2.0, 'median': 2.0, 'p10': 0.4}
    """
    if not isinstance(margins, Tensor) or margins.ndim != 1 or margins.numel() == 0:
        got = tuple(margins.shape) if isinstance(margins, Tensor) else type(margins).__name__
        raise ValueError(f"`margins` expected a non-empty 1-d tensor, got {got}")
    m = margins.detach().double().cpu()
    return {"mean": float(m.mean()), "median": float(torch.quantile(m, 0.5)), "p10": float(torch.quantile(m, 0.1))}


# ---------------------------------------------------------------- the declaration (keys, arrays, charts)
NAME = "logit_margin"
_M = keys.prefix(NAME)
#: What ``LogitMarginMonitor`` logs and writes (see :class:`lightning_sensitivity.keys.Quantity`).
QUANTITY = keys.Quantity(
    name=NAME,
    monitor="LogitMarginMonitor",
    metrics=tuple(f"{_M}/{{split}}/{stat}" for stat in MARGIN_STATS),
    arrays=tuple(keys.split_array(s, n) for s in (keys.VAL, keys.TRAIN) for n in ("margins", "labels", *MARGIN_STATS)),
    histograms=(f"{_M}/{{split}}",),
    category="Logit margin",
    charts=(
        keys.Chart("Logit margin: {splits} (mean)", (f"{_M}/{{split}}/mean",)),
        keys.Chart(
            "Logit margin: {held_out} mean, median, p10",
            tuple(f"{_M}/{{held_out}}/{stat}" for stat in MARGIN_STATS),
            each=("held_out",),
        ),
    ),
    full_options={"num_samples": 40},
    report_arrays={f"{_M}/{{split}}": keys.split_array("{split}", "margins")},
)
