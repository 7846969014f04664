"""Typed pointers from raw addresses, so that one kernel launch can reach many arrays.

A NumPy array's data never moves while the array is alive, so the optimizer passes the
kernel a table of addresses (``array.ctypes.data``) instead of a list of arrays, and the
kernel turns each address back into an array with :func:`numba.carray`.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic


@intrinsic
def _typed_pointer(typingctx, address, like):  # pragma: no cover - runs inside Numba
    """``address`` (an ``intp``) as a pointer to elements of ``like``'s dtype."""
    pointer_type = types.CPointer(like.dtype)
    signature = pointer_type(types.intp, like)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return signature, codegen


@njit(error_model="numpy", cache=True)
def array_at(address, size, like):
    """The 1-D array of ``size`` elements of ``like.dtype`` that starts at ``address``."""
    return carray(_typed_pointer(address, like), (size,))


def address(array: np.ndarray) -> int:
    """The address of the first element of a C-contiguous array."""
    return array.ctypes.data
