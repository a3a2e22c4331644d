"""Lightning callbacks that measure sensitivity quantities on fixed probe sets and log them live.

``JacobianNormMonitor`` (input-output Jacobian norms), ``TransitionMonitor`` (linear-region transitions along
ellipses through the data) and ``StiffnessMonitor`` (gradient stiffness) share :class:`SensitivityMonitor`.

The monitor of every declared quantity (:attr:`lightning_sensitivity.keys.Quantity.monitor`) defined in a module of
this package is exported here (and from ``lightning_sensitivity``), so adding a quantity needs no edit of this file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from lightning_sensitivity import keys as _keys
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


def _export_monitors() -> None:
    declared = {q.monitor for q in _keys.declarations() if q.monitor is not None}
    for info in _pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = _importlib.import_module(f"{__name__}.{info.name}")
        for name in sorted(declared & set(vars(module))):
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, SensitivityMonitor) and name not in __all__:
                globals()[name] = cls
                __all__.append(name)


_export_monitors()
