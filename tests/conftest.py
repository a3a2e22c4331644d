"""Root test configuration: makes ``tests/`` importable (``helpers``, ``oracles``) and provides shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import helpers, oracles`

from helpers import MODEL_FACTORIES  # noqa: E402


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def model_and_shape(request):
    torch.manual_seed(0)
    factory, shape = MODEL_FACTORIES[request.param]
    return factory(), shape
