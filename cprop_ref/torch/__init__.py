"""The PyTorch port of CProp: ``CPropSGD``, ``CPropAdam`` and the ``CProp`` wrapper as
``torch.optim.Optimizer`` subclasses, with the hyperparameter names of the authors' package.

Needs the ``torch`` extra (``pip install 'cprop-ref[torch]'``). It follows ``docs/algorithm.md`` as
the NumPy reference does (statistics from the raw gradient, ``n = 1`` gives ``se = eps``, all
four CDFs saturating without NaN) and passes the conformance harness in float32 and float64;
float16 and bfloat16 parameters keep CProp's statistics and compute the update in float32.
Each optimizer takes ``foreach`` and ``fused`` as torch.optim's do (:mod:`.variants`): a
multi-tensor path and one compiled kernel per parameter (``torch.compile``), the same
numbers and state (docs/torch.md).
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cprop_ref.torch needs PyTorch, which is the optional 'torch' extra of cprop-ref: "
        "pip install 'cprop-ref[torch]' (or pip install torch>=2.1)"
    ) from err

from .adam import CPropAdam
from .functional import cprop_scale, update_statistics_
from .sgd import CPropSGD
from .wrapper import CProp

__all__ = ["CPropSGD", "CPropAdam", "CProp", "cprop_scale", "update_statistics_"]
