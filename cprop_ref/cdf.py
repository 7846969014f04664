"""The four evaluations of the normal CDF that CProp offers.

Each function takes the standardized mean ``z = -m_hat / se`` and returns
``p = F(0; mean=m_hat, sd=se) = Phi(z)`` or its approximation (``docs/algorithm.md``,
"One step of CProp" and "The four CDFs").
All are evaluated in the dtype of ``z`` and saturate to exactly 0 or 1 for large
``|z|`` (including ``z = +-inf``) without NaN or floating-point warnings:
``scipy.special.expit`` and ``scipy.special.ndtr`` are written to do so.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import expit, ndtr

#: Bowling et al. (2009) "best fit two" coefficients.
BFT_CUBIC = 0.07056
BFT_LINEAR = 1.5976
#: Bowling et al. (2009) "best fit one" coefficient.
BFO_LINEAR = 1.702
#: A logistic with the variance of the standard normal has scale sqrt(3) / pi.
LOGISTIC_SLOPE = math.pi / math.sqrt(3.0)


def cdf_normal(z: np.ndarray) -> np.ndarray:
    """Exact normal CDF, ``Phi(z) = 0.5 * erfc(-z / sqrt(2))``.

    With ``z = -m_hat / se`` this is ``0.5 * erfc(m_hat / (se * sqrt(2)))``;
    ``scipy.special.ndtr`` evaluates it without cancellation in either tail.
    """
    return ndtr(z)


def cdf_bft(z: np.ndarray) -> np.ndarray:
    """Bowling's "best fit two": ``1 / (1 + exp(-0.07056 z^3 - 1.5976 z))``."""
    # z**3 overflows to +-inf only where the CDF has long saturated; the caller
    # silences that overflow (see ``scale.conformity_probability``).
    return expit(BFT_CUBIC * z**3 + BFT_LINEAR * z)


def cdf_bfo(z: np.ndarray) -> np.ndarray:
    """Bowling's "best fit one": ``1 / (1 + exp(-1.702 z))``."""
    return expit(BFO_LINEAR * z)


def cdf_logistic(z: np.ndarray) -> np.ndarray:
    """Logistic CDF with unit variance: ``1 / (1 + exp(m_hat / (se * sqrt(3) / pi)))``.

    With ``z = -m_hat / se`` the exponent is ``-z * pi / sqrt(3)``.
    """
    return expit(LOGISTIC_SLOPE * z)


#: The registry of CDFs: the one place a CDF is added to the reference (``docs/algorithm.md``,
#: "Adding a CDF" lists the other files a new CDF needs; each of them refuses a CDF it does not
#: know instead of computing another one's values).
CDFS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "normal": cdf_normal,
    "bft": cdf_bft,
    "bfo": cdf_bfo,
    "logistic": cdf_logistic,
}

#: The CDF names, in the registry's order (the kernels' integer codes follow it).
CDF_NAMES: tuple[str, ...] = tuple(CDFS)


def cdf_function(cdf: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function of the CDF named ``cdf``; ``ValueError`` naming it if it is not registered."""
    try:
        return CDFS[cdf]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cdf={cdf!r}: must be one of {', '.join(CDFS)}") from None
