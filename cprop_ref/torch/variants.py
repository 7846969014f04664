"""``foreach`` and ``fused``: which of the port's three implementations computes a step,
with torch.optim's meaning and defaults.

- ``fused=True``: one compiled kernel per parameter (:mod:`.fused`, ``torch.compile``);
- ``foreach=True``: ``torch._foreach_*`` ops over the parameters of one device and dtype
  (:mod:`.foreach`);
- neither (``None``, the default): ``foreach`` where every parameter is on a device with
  foreach kernels (CUDA and the like), else the per-tensor path; never ``fused``, so the
  default never needs a compiler (``torch.optim._default_to_fused_or_foreach``).

All three compute the same numbers and keep the same state, so ``state_dict()`` moves
between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import _default_to_fused_or_foreach

#: Devices the compiled path takes (inductor's C++ backend and Triton).
FUSED_DEVICES: tuple[str, ...] = ("cpu", "cuda")
#: Parameter dtypes the compiled path takes (16-bit ones computed in float32).
FUSED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

SINGLE, FOREACH, FUSED = "single", "foreach", "fused"


def check_options(foreach: Any, fused: Any, where: str) -> None:
    """``ValueError`` naming ``where`` unless ``foreach`` and ``fused`` are each ``None`` or a
    bool and not both true."""
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{where}: invalid {name}={value!r}: must be None, True or False")
    if foreach and fused:
        raise ValueError(f"{where}: foreach=True and fused=True cannot be used together; choose one")


def check_parameters(params: Iterable[torch.Tensor], foreach: Any, fused: Any, where: str) -> None:
    """The checks torch.optim makes at construction, as ``ValueError`` naming the parameter:
    with ``fused=True`` every parameter is a floating tensor of a dtype and device that the
    compiled path takes, all on one device (a group's numbers go to the kernels as one tensor
    on that device; ``foreach`` groups the tensors by device and dtype as torch.optim does)."""
    check_options(foreach, fused, where)
    if fused:
        check_fused_parameters(list(params), where)


def check_fused_parameters(params: list[torch.Tensor], where: str) -> None:
    """``ValueError`` naming ``where`` and the parameter unless every parameter is on one device
    and of a dtype that the compiled path takes there, and that device's compiler is present."""
    if not params:
        return
    first = params[0].device
    for j, p in enumerate(params):
        if p.device != first:
            raise ValueError(
                f"{where}, parameter {j}: is on {p.device}, parameter 0 on {first}; with fused=True "
                "every parameter of a group must be on one device (put them in separate groups)"
            )
        if p.device.type not in FUSED_DEVICES or p.dtype not in FUSED_DTYPES:
            raise ValueError(
                f"{where}, parameter {j}: fused=True takes {', '.join(str(d).removeprefix('torch.') for d in FUSED_DTYPES)} "
                f"parameters on {' or '.join(FUSED_DEVICES)}; got {str(p.dtype).removeprefix('torch.')} on {p.device}"
            )
    from .fused import check_compiler

    check_compiler(first, where)


def implementation(params: list[torch.Tensor], foreach: bool | None, fused: bool | None) -> str:
    """Which path steps ``params`` (torch.optim's rule; see the module docstring)."""
    if fused:
        return FUSED
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return FOREACH if foreach else SINGLE
