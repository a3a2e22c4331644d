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
