"""The tiny-step path computes its scalars inside the kernel (``adam.fill_scalars``); they must
be, bit for bit, the table the general path builds in Python (``adam_scalars`` and
``cprop_scalars`` rounded once to the dtype), so that both paths give the same numbers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref.kernels import adam as adam_kernels
from cprop_ref.kernels.scale import cprop_scalars
from tests.hypothesis_budget import examples

decays = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999]), st.floats(0.0, 0.99999))


@settings(max_examples=examples(200))
@given(
    lr=st.floats(1e-8, 10.0),
    beta1=decays,
    beta2=decays,
    eps=st.sampled_from([0.0, 1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.01, 0.5]),
    cprop_beta=decays,
    cprop_c=st.floats(0.0, 10.0),
    cprop_eps=st.sampled_from([0.0, 1e-8, 1e-3]),
    t=st.integers(1, 10**6),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_kernel_scalars_are_the_python_table_bit_for_bit(
    lr, beta1, beta2, eps, weight_decay, cprop_beta, cprop_c, cprop_eps, t, dtype
):
    group = dict(
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        cprop_beta=cprop_beta,
        cprop_c=cprop_c,
        cprop_eps=cprop_eps,
    )
    largest = float(np.finfo(dtype).max)
    with np.errstate(over="ignore"):  # as dispatch._table: a value past float32's range is inf there
        expected = np.array(
            adam_kernels.adam_scalars(group, t, False) + cprop_scalars(cprop_beta, cprop_c, cprop_eps, t, largest),
            dtype,
        )
    out = np.empty(adam_kernels.SCALAR_COUNT, dtype)
    row = np.array(adam_kernels.hyperparameter_row(group, largest))
    powers = np.array(adam_kernels.powers(group, t))
    adam_kernels.fill_scalars(row, powers, out, True)
    np.testing.assert_array_equal(out, expected)
