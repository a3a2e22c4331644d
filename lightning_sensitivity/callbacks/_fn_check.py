"""The check that ``forward_fn``/``embed_fn`` compute the model the user trains: ``forward_fn(embed_fn(x))`` against
``pl_module(x)`` on two probe examples, once per run.

A recipe that silently measures another function (a Hugging Face decoder pooling the last position of
``inputs_embeds`` instead of the last real token) would otherwise go unnoticed. The check needs the module's own
forward to give logits of the same shape; where it does not (a module whose ``forward`` is not the classifier), there
is nothing to compare and nothing is said.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_sensitivity.functional import predict_logits
from lightning_sensitivity.probes import ProbeSet

__all__ = ["PROBE_EXAMPLES", "forward_fn_mismatch"]

PROBE_EXAMPLES = 2


def forward_fn_mismatch(module: nn.Module, composed: nn.Module, probe: ProbeSet) -> tuple[float, float] | None:
    """``(max |difference|, tolerance)`` of the logits of ``composed`` (the measured model, raw inputs in) and
    ``module`` on the first :data:`PROBE_EXAMPLES` examples of ``probe`` (on the module's device) when they differ
    by more than the tolerance, else None. The tolerance is ``sqrt(eps)`` of the logits' dtype times their scale."""
    n = min(PROBE_EXAMPLES, len(probe))
    x = probe.inputs[:n]
    kwargs = {k: v[:n] for k, v in probe.model_kwargs.items()} or None
    try:
        direct = predict_logits(module, x, model_kwargs=kwargs)
        measured = predict_logits(composed, x, model_kwargs=kwargs)
    except Exception:
        # The module's own forward is not the classifier (nothing to compare with), or the composition fails (the
        # measurement itself reports that, with its advice).
        return None
    if measured.shape != direct.shape:
        return None
    difference = (measured.double() - direct.double()).abs().max().item()
    eps = torch.finfo(measured.dtype if measured.is_floating_point() else torch.float32).eps
    tolerance = eps**0.5 * max(1.0, direct.double().abs().max().item())
    return (difference, tolerance) if not difference <= tolerance else None
