"""The finiteness check of the multi-threaded launch: the non-finite gradient policy holds there too.

Steps over more than ``dispatch.PARALLEL_THRESHOLD`` elements run on several threads, and the
kernels check every gradient for NaN and inf in parallel (``pointers.chunks_finite_parallel``)
before any thread writes. The small tensors of ``test_reliability_nonfinite.py`` never reach
that path; here every optimizer steps 120,000 elements (a 70,000-element vector, a 50 x 1,000
matrix, a 3-element vector) on the Numba backend, and one bad value at a time (NaN, +inf, -inf;
first and last element of each worker's share, the matrix's middle, the small vector) must be
refused with the parameter and element named and nothing changed, byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest

from cprop_ref.kernels import dispatch
from tests.reliability_support import OPTIMIZERS, assert_identical, snapshot

SHAPES = [(70_000,), (50, 1_000), (3,)]
#: (parameter, flat index): the first element, the last element of the first worker's half of
#: the launch (the 60,000th of 120,003), the vector's last, the matrix's middle and last, the
#: small vector.
POSITIONS = [(0, 0), (0, 59_999), (0, 69_999), (1, 25_000), (1, 49_999), (2, 1)]
NAMES = ("parameter 0 (group 0, index 0)", "parameter 1 (group 0, index 1)", "parameter 2 (group 1, index 0)")


def _grads(rng: np.random.Generator, dtype: type) -> list[np.ndarray]:
    return [(0.3 + rng.standard_normal(shape)).astype(dtype) for shape in SHAPES]


# The refusal is the launch's, the same for both dtypes; each optimizer x dtype is a parallel
# kernel compilation of its own, so float64 is swept under -m slow.
@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_parallel_step_refuses_a_non_finite_gradient_and_changes_nothing(kind, dtype):
    assert sum(int(np.prod(s)) for s in SHAPES) >= dispatch.PARALLEL_THRESHOLD
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    optimizer = OPTIMIZERS[kind](params, "raise", "numba")
    for _ in range(2):
        optimizer.step(_grads(rng, dtype))
    for value in (np.nan, np.inf, -np.inf):
        for k, flat in POSITIONS:
            before = snapshot(optimizer)
            grads = _grads(rng, dtype)
            index = np.unravel_index(flat, SHAPES[k])
            grads[k][index] = value
            with pytest.raises(ValueError) as info:
                optimizer.step(grads)
            message = str(info.value)
            assert NAMES[k] in message and "nothing was changed" in message, message
            assert f"at element {tuple(int(i) for i in index)}" in message, message
            assert_identical(snapshot(optimizer), before, f"{kind} after a refused parallel step")
    optimizer.step(_grads(rng, dtype))  # and it still steps
    assert all(np.all(np.isfinite(p)) for p in params)
