"""Test configuration: hypothesis profiles.

``ci`` (the default when the environment variable ``CI`` is set) is derandomized, so a
landing is reproducible; ``dev`` (the default otherwise) draws fresh random examples
each run, for exploring. ``HYPOTHESIS_PROFILE=dev|ci|thorough`` overrides.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=60, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["numpy", "numba"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both backends of every optimizer: the readable NumPy reference and the Numba kernels."""
    return request.param
