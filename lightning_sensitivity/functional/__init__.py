"""Pure-torch sensitivity measures: no Lightning import in this package.

Every function takes an ``nn.Module`` mapping ``[N, *input_shape]`` to logits ``[N, C]`` and leaves it exactly as it
found it (parameters, ``.grad``, buffers, every submodule's ``training`` flag, the global RNG). Work is done in
chunks of ``chunk_size`` examples so memory is bounded by the chunk, and every function works inside
``torch.no_grad()`` / ``torch.inference_mode()`` and on inference tensors.
"""

from lightning_sensitivity.functional._model import predict_logits
from lightning_sensitivity.functional.jacobian import jacobian_norm
from lightning_sensitivity.functional.jacobian_estimate import jacobian_norm_estimate
from lightning_sensitivity.functional.per_layer import per_layer_gram
from lightning_sensitivity.functional.stiffness import (
    Stiffness,
    class_stiffness,
    critical_length,
    loss_gradient_gram,
    stiffness,
    stiffness_by_distance,
)
from lightning_sensitivity.functional.trajectories import ellipse_trajectories
from lightning_sensitivity.functional.transitions import TransitionCounts, transition_counts

__all__ = [
    "predict_logits",
    "jacobian_norm",
    "jacobian_norm_estimate",
    "ellipse_trajectories",
    "transition_counts",
    "TransitionCounts",
    "loss_gradient_gram",
    "per_layer_gram",
    "stiffness",
    "Stiffness",
    "class_stiffness",
    "stiffness_by_distance",
    "critical_length",
]
