"""Lightning callbacks that measure sensitivity quantities on fixed probe sets and log them live.

``JacobianNormMonitor`` (input-output Jacobian norms), ``TransitionMonitor`` (linear-region transitions along
ellipses through the data) and ``StiffnessMonitor`` (gradient stiffness) share :class:`SensitivityMonitor`.
"""

from lightning_sensitivity.callbacks.base import (  # noqa: F401 (the type aliases are importable from here too)
    Measurement,
    ProbeSplits,
    SensitivityMonitor,
    SensitivityWarning,
)
from lightning_sensitivity.callbacks.jacobian import JacobianNormMonitor
from lightning_sensitivity.callbacks.progress import ProgressFactory  # noqa: F401
from lightning_sensitivity.callbacks.sharpness import SharpnessMonitor
from lightning_sensitivity.callbacks.stiffness import StiffnessMonitor
from lightning_sensitivity.callbacks.transitions import TransitionMonitor
from lightning_sensitivity.probes import model_kwargs, probe_shard

__all__ = [
    "JacobianNormMonitor",
    "TransitionMonitor",
    "StiffnessMonitor",
    "SharpnessMonitor",
    "SensitivityMonitor",
    "SensitivityWarning",
    "Measurement",
    "model_kwargs",
    "probe_shard",
]
