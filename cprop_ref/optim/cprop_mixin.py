"""What the optimizers with CProp built in share: their statistics and the scale read-out."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..gradients import compute_dtype
from ..scale import CPropStats, cprop_scale, init_stats
from .rows import has_run_arrays, scale_by_class


class CPropStatsMixin:
    """For optimizers whose state holds CProp's ``step``, ``cprop_m`` and ``cprop_v``
    (CProp-Adam may hold ``m`` and ``v`` in Adam's ``exp_avg`` and ``exp_avg_sq`` instead)."""

    param_groups: list[dict[str, Any]]
    state: list[dict[str, Any]]

    def _cprop_stats(self, state: dict[str, Any], p: np.ndarray) -> CPropStats:
        """The CProp statistics stored in ``state`` (zero for a parameter never stepped)."""
        if not state:
            return init_stats(p.shape, compute_dtype(p.dtype))
        return CPropStats(state["cprop_m"], state["cprop_v"], state["step"])

    def scales(self) -> list[np.ndarray | None]:
        """The per-element CProp scale ``s`` of every parameter, in ``params`` order.

        It is a pure function of the CProp statistics, so this is exactly the scale the
        parameter's most recent step applied (unless ``cprop_c``, ``cprop_cdf``,
        ``cprop_beta`` or ``cprop_eps`` were changed since). ``None`` for a parameter that
        has not yet received a gradient.
        """
        out: list[np.ndarray | None] = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[len(out)]
                if not state:
                    out.append(None)
                    continue
                stats = self._cprop_stats(state, p)
                if has_run_arrays(group, self.hyperparams):  # type: ignore[attr-defined]
                    s = scale_by_class(_group_scale, stats, group, self.hyperparams, p.shape)  # type: ignore[attr-defined]
                else:
                    s = _group_scale(stats, group)
                out.append(np.asarray(s))
        return out


def _group_scale(stats: CPropStats, group: dict[str, Any]) -> np.ndarray:
    return cprop_scale(stats, group["cprop_beta"], group["cprop_c"], group["cprop_eps"], group["cprop_cdf"])
