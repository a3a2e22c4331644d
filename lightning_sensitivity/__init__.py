"""Drop-in Lightning callbacks that measure how a network's sensitivity and gradient alignment evolve.

The package has three layers, each usable alone:

* :mod:`lightning_sensitivity.functional` -- pure torch: Jacobian norms, transitions, stiffness.
* :mod:`lightning_sensitivity.callbacks` -- thin Lightning callbacks (``JacobianNormMonitor``,
  ``TransitionMonitor``, ``StiffnessMonitor``).
* :mod:`lightning_sensitivity.logging` -- TensorBoard images/histograms, matplotlib figures, artifacts.

The callbacks are imported lazily so that ``import lightning_sensitivity.functional`` does not import Lightning. The
monitor of every declared quantity (:attr:`lightning_sensitivity.keys.Quantity.monitor`) is importable from here as
well; the names below are spelled out for IDEs and type checkers only.
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

_STATIC = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from lightning_sensitivity.callbacks import (  # noqa: F401
        JacobianNormMonitor,
        SensitivityMonitor,
        SharpnessMonitor,
        StiffnessMonitor,
        TransitionMonitor,
    )


def _declared_monitors() -> list[str]:
    import importlib

    keys = importlib.import_module("lightning_sensitivity.keys")
    return [q.monitor for q in keys.declarations() if q.monitor is not None and q.monitor not in _STATIC]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "__all__":  # the static names, then every declared quantity's monitor
        return [*_STATIC, *_declared_monitors(), "__version__"]
    # only class-like names look at the declarations: a submodule name asked for by an import must not
    if name in _LAZY or (name[:1].isupper() and name in _declared_monitors()):
        return getattr(importlib.import_module(_LAZY.get(name, "lightning_sensitivity.callbacks")), name)
    raise AttributeError(f"module 'lightning_sensitivity' has no attribute {name!r}")
