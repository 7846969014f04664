"""``kernels.wide.prefer_wide_vectors``: the LLVM attribute lands on the calling function, and
on a processor with AVX-512 it makes LLVM vectorise that function's float32 loop with 512-bit
(``zmm``) instructions, where the same loop without it uses no ``zmm`` register at all. The
results do not depend on it (the kernels' tests run with it everywhere)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from numba import njit

from cprop_ref.kernels.wide import WIDE_VECTOR_ATTRIBUTE, prefer_wide_vectors


def _axpy(x, y, a):
    for i in range(x.size):
        y[i] = a * x[i] + y[i] * y[i]


def _wide_axpy(x, y, a):
    prefer_wide_vectors()
    for i in range(x.size):
        y[i] = a * x[i] + y[i] * y[i]


def _compiled(function):
    # Not cached: inspecting the assembly needs a fresh compilation.
    jitted = njit(error_model="numpy")(function)
    x = np.arange(64, dtype=np.float32)
    y = np.ones(64, dtype=np.float32)
    jitted(x, y, np.float32(2.0))
    np.testing.assert_array_equal(y, 2.0 * np.arange(64, dtype=np.float32) + 1.0)
    return jitted


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return "avx512f" in handle.read()
    except OSError:
        return False


def test_the_attribute_is_on_the_calling_function():
    llvm = next(iter(_compiled(_wide_axpy).inspect_llvm().values()))
    definitions = [line for line in llvm.splitlines() if line.startswith("define") and "_wide_axpy" in line]
    assert definitions, "the function's definition was not found in its LLVM IR"
    attribute_groups = dict(re.findall(r"^attributes (#\d+) = \{(.*)\}$", llvm, re.MULTILINE))
    marked = [
        d
        for d in definitions
        if WIDE_VECTOR_ATTRIBUTE in d
        or any(WIDE_VECTOR_ATTRIBUTE in attribute_groups.get(group, "") for group in re.findall(r"#\d+", d))
    ]
    assert marked, definitions


@pytest.mark.skipif(not _has_avx512(), reason="the processor has no AVX-512: 256 bits is the widest vector")
def test_a_marked_loop_is_vectorised_512_bits_wide_and_an_unmarked_one_is_not():
    wide = next(iter(_compiled(_wide_axpy).inspect_asm().values()))
    plain = next(iter(_compiled(_axpy).inspect_asm().values()))
    assert re.search(r"v\w+ps\s+.*%zmm", wide), "the marked loop has no 512-bit float32 instruction"
    if "zmm" in plain:
        pytest.skip("LLVM already prefers 512-bit vectors on this processor: nothing to compare")
