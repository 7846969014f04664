"""The parameter dtypes of the harness and how their arrays travel through the protocol.

========  ===================  ==============  ===========================================
dtype     protocol's arrays    compute dtype   storage rounding of a parameter
========  ===================  ==============  ===========================================
float64   float64              float64         ``u = 2^-53``
float32   float32              float32         ``u = 2^-24``
float16   float16              float32         ``u = 2^-11``, subnormals below ``2^-14``
bfloat16  float32 (carrier)    float32         ``u = 2^-8``, float32's exponent range
========  ===================  ==============  ===========================================

NumPy has no bfloat16, so a bfloat16 configuration hands the port float32 arrays whose
values are exactly representable in bfloat16 (the port converts them to its bfloat16 type,
exactly) and expects its parameters back the same way (a bfloat16 value converts to float32
exactly). CProp's statistics of 16-bit parameters are kept in float32, the *compute dtype*
(``docs/algorithm.md``, "Precision"), and the update is computed in float32 and rounded once
to the parameter's dtype.
"""

from __future__ import annotations

import numpy as np

#: Every dtype the harness drives a port with, in the order of ``--dtypes``.
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
HALF_DTYPES: tuple[str, ...] = ("float16", "bfloat16")

#: NumPy dtype of the protocol's arrays for each dtype (bfloat16: a float32 carrier).
CARRIER: dict[str, str] = {"float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "float32"}

#: ``(unit roundoff, smallest subnormal, largest finite)`` of each storage format.
_FORMAT: dict[str, tuple[float, float, float]] = {
    "float64": (2.0**-53, float(np.finfo(np.float64).smallest_subnormal), float(np.finfo(np.float64).max)),
    "float32": (2.0**-24, float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max)),
    "float16": (2.0**-11, 2.0**-24, 65504.0),
    "bfloat16": (2.0**-8, 2.0**-133, float.fromhex("0x1.fep127")),
}


def carrier(dtype: str) -> np.dtype:
    """The NumPy dtype of the protocol's arrays for ``dtype``."""
    return np.dtype(CARRIER[dtype])


def compute_dtype(dtype: str) -> np.dtype:
    """float32 for 16-bit parameters, else the dtype itself (``cprop_ref.gradients.compute_dtype``)."""
    return np.dtype(np.float32) if dtype in HALF_DTYPES else np.dtype(dtype)


def storage_roundoff(dtype: str) -> float:
    """Unit roundoff ``u`` of the parameter's own format (one rounding: ``<= u |x|``)."""
    return _FORMAT[dtype][0]


def storage_floor(dtype: str) -> float:
    """Absolute error of one rounding into the format where ``u |x|`` no longer holds (gradual
    underflow): half its smallest subnormal, or the smallest subnormal itself where half of it
    is not a float64 number (float64: ``2^-1075`` rounds to 0)."""
    tiny = _FORMAT[dtype][1]
    return tiny / 2.0 if tiny / 2.0 > 0.0 else tiny


def largest(dtype: str) -> float:
    """The largest finite value of the format (beyond it a rounding gives ``inf``)."""
    return _FORMAT[dtype][2]


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) rounded to the nearest bfloat16, ties to even, as a float32 array:
    the upper 16 bits of the float32 pattern after adding half of the dropped part. NaN
    stays NaN; values past bfloat16's largest finite value round to ``inf`` (the carry runs
    into the exponent), as an IEEE conversion does."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, rounded).astype(np.float32)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and returned in the protocol's array dtype (:data:`CARRIER`)."""
    with np.errstate(over="ignore"):
        if dtype == "bfloat16":
            return round_to_bfloat16(np.asarray(x, dtype=np.float32))
        return np.asarray(x, dtype=CARRIER[dtype])
