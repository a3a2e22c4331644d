"""Root test configuration: shared fixtures (``tests/`` itself is on the path through ``pythonpath`` in
``pyproject.toml``, so tests ``import helpers, oracles``)."""

from __future__ import annotations

import pytest
import torch
from helpers import MODEL_FACTORIES


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def model_and_shape(request):
    torch.manual_seed(0)
    factory, shape = MODEL_FACTORIES[request.param]
    return factory(), shape


@pytest.fixture(autouse=True)
def _declarations_of_this_test_only():
    """A quantity a test registers (``keys.register``, e.g. by loading ``examples/custom_quantity.py``) is forgotten
    after it, so the package-wide checks of later tests (the README key table) see the package's quantities only."""
    from lightning_sensitivity import keys

    before = {q.name for q in keys.declarations()}
    yield
    for quantity in keys.declarations():
        if quantity.name not in before:
            keys.unregister(quantity.name)
