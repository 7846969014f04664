"""cprop-ref: the reference implementation of CProp (Preechakul & Kijsirikul 2019) in NumPy.

Optimizers (``SGD``, ``Adam``, ``AdamW``, ``CPropSGD``, ``CPropAdam`` and the ``CProp``
wrapper) update lists of NumPy arrays in place; the mathematics lives in the pure
functions of :mod:`cprop_ref.scale`, :mod:`cprop_ref.cdf` and :mod:`cprop_ref.functional`.
"""

from .cdf import CDF_NAMES
from .checkpoint import CheckpointError
from .optim import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD, Optimizer, OptimizerProtocol
from .scale import CPropStats, cprop_scale, cprop_step

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CPropSGD",
    "CPropAdam",
    "CProp",
    "Optimizer",
    "OptimizerProtocol",
    "CPropStats",
    "cprop_scale",
    "cprop_step",
    "CDF_NAMES",
    "CheckpointError",
    "__version__",
]
