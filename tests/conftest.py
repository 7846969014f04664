"""Test configuration: the hypothesis profiles (``tests/hypothesis_budget.py``: ``ci``,
``dev``, ``thorough``) and the ``backend`` fixture."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.hypothesis_budget import PROFILE

settings.load_profile(PROFILE)


@pytest.fixture(params=["numpy", "numba"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both backends of every optimizer: the readable NumPy reference and the Numba kernels."""
    return request.param
