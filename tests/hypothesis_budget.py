"""The hypothesis profiles and the example budget of the heavy property tests.

``ci`` (the default when the environment variable ``CI`` is set) is derandomized, so a
landing is reproducible; ``dev`` (the default otherwise) draws fresh random examples each
run, for exploring; ``thorough`` draws 1,000 examples per property, and at least ten times
a heavy test's own budget (:func:`examples`). ``HYPOTHESIS_PROFILE=dev|ci|thorough``
overrides. ``docs/testing.md`` lists what each profile and the ``slow`` marker run.
"""

from __future__ import annotations

import os

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

#: The active profile's name.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")

#: How much more a heavy test draws under ``thorough`` than its own budget.
THOROUGH_FACTOR = 10


def examples(budget: int) -> int:
    """``max_examples`` for a test whose own budget (in ``ci`` and ``dev``) is ``budget``: an
    explicit ``@settings(max_examples=...)`` would otherwise override the ``thorough`` profile
    too, and the exhaustive draws would never run."""
    return max(budget * THOROUGH_FACTOR, 1000) if PROFILE == "thorough" else budget
