"""512-bit vectors for the loops that compute, without changing the process's Numba settings.

LLVM's cost model prefers 256-bit vectors on most AVX-512 processors (the ``prefer-256-bit``
tuning of the CPU model), so a Numba loop over float32 runs 8 lanes wide even where 16 fit.
Numba has no per-function switch for it; the process-wide ``NUMBA_CPU_FEATURES`` is not a
library's to set. The LLVM function attribute ``"prefer-vector-width"="512"`` overrides the
tuning for one function: :func:`prefer_wide_vectors`, called first in a loop's function, sets
it there. On a processor without AVX-512 the attribute changes nothing (the widest legal
vector is then 256 bits), and it never changes a result: the vector width does not reorder
any operation (no reassociation is allowed in the kernels).

The attribute must be on the function in which the loop is vectorised, which is the
function that contains it in the source (Numba optimises each function before inlining it).
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic

#: The attribute, as LLVM IR spells a string attribute.
WIDE_VECTOR_ATTRIBUTE = '"prefer-vector-width"="512"'


@intrinsic
def prefer_wide_vectors(typingctx):  # pragma: no cover - runs inside Numba
    """Mark the calling function so that LLVM vectorises its loops 512 bits wide."""
    signature = types.none()

    def codegen(context, builder, sig, args):
        # llvmlite's FunctionAttributes accepts only the attributes it knows by name; a string
        # attribute is written into the function's definition as it stands. Should a future
        # llvmlite store attributes otherwise, the loops merely stay 256 bits wide.
        try:
            set.add(builder.function.attributes, WIDE_VECTOR_ATTRIBUTE)
        except TypeError:
            pass
        return context.get_dummy_value()

    return signature, codegen
