"""Drop-in Lightning callbacks that measure how a network's sensitivity and gradient alignment evolve.

The package has three layers, each usable alone:

* :mod:`lightning_sensitivity.functional` -- pure torch: Jacobian norms, transitions, stiffness.
* :mod:`lightning_sensitivity.callbacks` -- thin Lightning callbacks (``JacobianNormMonitor``,
  ``TransitionMonitor``, ``StiffnessMonitor``).
* :mod:`lightning_sensitivity.logging` -- TensorBoard images/histograms, matplotlib figures, artifacts.

The callbacks are imported lazily so that ``import lightning_sensitivity.functional`` does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_LAZY = {
    "JacobianNormMonitor": "lightning_sensitivity.callbacks",
    "TransitionMonitor": "lightning_sensitivity.callbacks",
    "StiffnessMonitor": "lightning_sensitivity.callbacks",
    "SharpnessMonitor": "lightning_sensitivity.callbacks",
    "SensitivityMonitor": "lightning_sensitivity.callbacks",
}

__all__ = [
    "JacobianNormMonitor",
    "TransitionMonitor",
    "StiffnessMonitor",
    "SharpnessMonitor",
    "SensitivityMonitor",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from lightning_sensitivity.callbacks import (  # noqa: F401
        JacobianNormMonitor,
        SensitivityMonitor,
        SharpnessMonitor,
        StiffnessMonitor,
        TransitionMonitor,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_sensitivity' has no attribute {name!r}")
