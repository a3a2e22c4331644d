"""What the model's output head is, read from its output width and the probe targets, so that every monitor logs
only what is meaningful for it (a predicted class exists for a classifier, not for a regression head)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sensitivity.functional import predict_logits
from lightning_sensitivity.probes import ProbeSet, is_class_targets

#: ``"classes"``: logits ``[N, C > 1]`` with integer class targets (a predicted class is the arg-max);
#: ``"binary"``: one logit ``[N, 1]`` with integer targets (the predicted class is ``logit > 0``);
#: ``"labels"``: outputs ``[N, C]`` with 0/1 targets of the same shape (multi-label sigmoid heads, a binary head
#: trained on float targets): the prediction is the set of outputs above 0;
#: ``"values"``: anything else (regression): no predicted class.
Head = Literal["classes", "binary", "labels", "values"]


def output_width(model: nn.Module, probe: ProbeSet) -> int:
    """The number of outputs per example, from one forward of one probe example."""
    first = {k: v[:1] for k, v in probe.model_kwargs.items()} or None
    return int(predict_logits(model, probe.inputs[:1], model_kwargs=first).shape[1])


def head_kind(width: int, targets: Tensor) -> Head:
    """The kind of output head (see :data:`Head`) of a model with ``width`` outputs trained on ``targets``."""
    if is_class_targets(targets):
        return "classes" if width > 1 else "binary"
    shape_fits = tuple(targets.shape[1:]) == (width,) or (width == 1 and targets.dim() == 1)
    if shape_fits and targets.numel() and bool(((targets == 0) | (targets == 1)).all()):
        return "labels"
    return "values"


def two_class_logits(logits: Tensor) -> Tensor:
    """``[N, 2]`` logits ``[0, z]`` of a single binary logit ``z``: their softmax is ``(1 - sigmoid(z), sigmoid(z))``
    and their arg-max ``z > 0``, so class statistics read it as the binary classifier it is."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1)
