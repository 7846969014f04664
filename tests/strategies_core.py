"""Hypothesis strategies shared by the core tests (hyperparameters, gradient streams)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from cprop_ref.cdf import CDF_NAMES

cdfs = st.sampled_from(CDF_NAMES)
float_dtypes = st.sampled_from([np.float32, np.float64])
betas = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999]), st.floats(0.0, 0.9999))
overconfidence = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 3.0, 5.0]), st.floats(0.0, 10.0))


_STEPS = st.integers(1, 40)
_SIZES = st.integers(1, 16)


@st.composite
def gradient_streams(draw, steps=_STEPS, size=_SIZES, dtype=np.float64, scale_exp=(-3, 3)):
    """A (steps, size) array of gradients: per element a mean and a noise level drawn over
    orders of magnitude, so streams range from constant to pure noise; some exact zeros."""
    n_steps = draw(steps, label="steps")
    n = draw(size, label="size")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    magnitude = 10.0 ** rng.uniform(*scale_exp, size=n)
    mean = magnitude * rng.choice([-1.0, 0.0, 0.1, 1.0], size=n)
    noise = magnitude * rng.choice([0.0, 0.1, 1.0, 10.0], size=n)
    g = mean + noise * rng.standard_normal((n_steps, n))
    g[:, rng.random(n) < 0.1] = 0.0
    return g.astype(dtype)
