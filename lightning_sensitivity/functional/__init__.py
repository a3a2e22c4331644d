"""Pure-torch sensitivity measures: no Lightning import in this package.

Every function takes an ``nn.Module`` mapping ``[N, *input_shape]`` to logits ``[N, C]`` and leaves it exactly as it
found it (parameters, ``.grad``, buffers, every submodule's ``training`` flag, the global RNG). Work is done in
chunks of ``chunk_size`` examples so memory is bounded by the chunk, and every function works inside
``torch.no_grad()`` / ``torch.inference_mode()`` and on inference tensors. Extra per-example inputs of the model
(an attention mask) go in ``model_kwargs={"name": tensor [N, ...]}`` and are chunked with the inputs.
The model may return a tensor, a dict or Hugging Face ``ModelOutput`` (its ``"logits"``) or a tuple (its first
tensor); bf16/fp16 models are measured in float32 on upcast copies (see :func:`measurement_options`).

A module of this package that declares a quantity (``QUANTITY = keys.Quantity(...)``, see
:class:`lightning_sensitivity.keys.Quantity`) is found here: its declaration is registered in
:mod:`lightning_sensitivity.keys` and the names in its ``__all__`` are exported from this package, so adding a
quantity needs no edit of this file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from lightning_sensitivity import keys as _keys
from lightning_sensitivity.functional.critical_length import critical_length, critical_length_bootstrap
from lightning_sensitivity.functional.gram.per_layer import per_layer_gram
from lightning_sensitivity.functional.gram.plan import GramPlan, gram_engine_plan
from lightning_sensitivity.functional.gram.statistics import gram_statistics
from lightning_sensitivity.functional.influence import InfluenceTopK, influence_top_k, tracin_influence
from lightning_sensitivity.functional.jacobian import jacobian_norm
from lightning_sensitivity.functional.jacobian_estimate import jacobian_norm_estimate
from lightning_sensitivity.functional.model import measurement_options
from lightning_sensitivity.functional.predict import predict_logits
from lightning_sensitivity.functional.sharpness import (
    TopEigenvalue,
    TraceEstimate,
    gauss_newton_trace,
    gauss_newton_trace_per_example,
    hessian_top_eigenvalue,
    hessian_trace,
    hessian_vector_product,
    hutchinson_samples,
)
from lightning_sensitivity.functional.stiffness import (
    Stiffness,
    class_stiffness,
    loss_gradient_gram,
    stiffness,
    stiffness_by_distance,
    stiffness_from_gram,
)
from lightning_sensitivity.functional.stiffness_summary import StiffnessSummary, pair_means, stiffness_summary
from lightning_sensitivity.functional.summaries import (
    binary_auroc,
    jacobian_norm_summary,
    mean_standard_error,
    train_val_ratio,
)
from lightning_sensitivity.functional.trajectories import ellipse_trajectories, shuffled_anchors
from lightning_sensitivity.functional.transition_density import near_anchor_mask, near_anchor_ratio
from lightning_sensitivity.functional.transitions import TransitionCounts, transition_counts, transition_summary

__all__ = [
    "measurement_options",
    "predict_logits",
    "jacobian_norm",
    "jacobian_norm_estimate",
    "ellipse_trajectories",
    "shuffled_anchors",
    "near_anchor_mask",
    "near_anchor_ratio",
    "transition_counts",
    "TransitionCounts",
    "transition_summary",
    "loss_gradient_gram",
    "per_layer_gram",
    "stiffness",
    "Stiffness",
    "class_stiffness",
    "stiffness_by_distance",
    "critical_length",
    "critical_length_bootstrap",
    "binary_auroc",
    "jacobian_norm_summary",
    "train_val_ratio",
    "mean_standard_error",
    "stiffness_summary",
    "stiffness_from_gram",
    "pair_means",
    "StiffnessSummary",
    "gram_statistics",
    "gram_engine_plan",
    "GramPlan",
    "tracin_influence",
    "influence_top_k",
    "InfluenceTopK",
    "hessian_vector_product",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hutchinson_samples",
    "gauss_newton_trace",
    "gauss_newton_trace_per_example",
    "TopEigenvalue",
    "TraceEstimate",
]


def _declare_quantities() -> None:
    for info in _pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = _importlib.import_module(f"{__name__}.{info.name}")
        declared = getattr(module, "QUANTITY", None)
        if not isinstance(declared, _keys.Quantity):
            continue
        _keys.register(declared)
        for name in getattr(module, "__all__", ()):
            if name not in __all__:
                globals()[name] = getattr(module, name)
                __all__.append(name)


_declare_quantities()
