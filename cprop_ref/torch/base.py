"""What the torch port's optimizers share: hyperparameter checks, the CProp statistics of a
parameter, the scale read-out and a ``load_state_dict`` that keeps 16-bit parameters'
statistics in float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..hyperparams import Validator, validated
from .foreach import Workspace
from .functional import cprop_scale, statistics_dtype, update_statistics_
from .variants import check_parameters, implementation


def with_variant_options(defaults: dict[str, Any], foreach: Any, fused: Any) -> dict[str, Any]:
    """``defaults`` with ``foreach`` and ``fused``. They are checked, as every group's are, by
    ``add_param_group`` (:func:`.variants.check_parameters`), which the constructor calls for each
    group: one check, whose message names the group."""
    return {**defaults, "foreach": foreach, "fused": fused}


def gradients_to_apply(
    param_groups: list[dict[str, Any]], checked_groups: list[dict[str, Any]], name: str
) -> list[list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]]:
    """Per param group, ``(param, grad, hyperparameters)`` for every parameter with a gradient,
    all checked before the step changes anything (a sparse or misshapen gradient raises
    ``ValueError``)."""
    work: list[list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]] = []
    for index, (group, hp) in enumerate(zip(param_groups, checked_groups)):
        work.append([])
        for j, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            where = f"{name} param group {index}, parameter {j}"
            if grad.is_sparse:
                raise ValueError(f"{where}: sparse gradients are not supported")
            if grad.shape != p.shape:
                raise ValueError(f"{where}: gradient shape {tuple(grad.shape)} does not match {tuple(p.shape)}")
            work[-1].append((p, grad, hp))
    return work


class CPropOptimizerMixin:
    """Methods of a torch optimizer whose per-parameter state holds CProp's ``step``,
    ``cprop_m`` and ``cprop_v`` (CPropAdam may keep ``m`` / ``v`` in ``exp_avg`` /
    ``exp_avg_sq``). Subclasses of the port override the small steps named here; each param
    group is stepped by ``_step_single``, ``_step_foreach`` or ``_step_fused`` as its
    ``foreach`` and ``fused`` say (:mod:`.variants`)."""

    param_groups: list[dict[str, Any]]
    state: Any
    hyperparams: dict[str, Validator]

    def _check_group(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """One group's hyperparameters, checked (``ValueError`` naming ``where``)."""
        return validated(self.hyperparams, group, where)

    def _check_groups(self) -> list[dict[str, Any]]:
        """The groups' hyperparameters checked before anything changes (users edit
        ``param_groups`` between steps)."""
        name = type(self).__name__
        return [self._check_group(g, f"{name} param group {i}") for i, g in enumerate(self.param_groups)]

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter that has a gradient (``None``: skipped, its state
        unchanged). Hyperparameters and gradients are all checked before anything changes.
        16-bit parameters are computed in float32 and rounded once."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = gradients_to_apply(self.param_groups, self._check_groups(), type(self).__name__)
        for group, items in zip(self.param_groups, work):
            if items:
                how = implementation([p for p, _, _ in items], group.get("foreach"), group.get("fused"))
                getattr(self, f"_step_{how}")(items)
        return loss

    def _workspace(self) -> Workspace:
        """The scratch of the ``foreach`` path (:class:`.foreach.Workspace`): kept between steps,
        not state (``torch.optim.Optimizer.__getstate__`` leaves it out of copies and pickles)."""
        workspace = self.__dict__.get("_foreach_workspace")
        if workspace is None:
            workspace = self.__dict__["_foreach_workspace"] = Workspace()
        return workspace

    def _step_single(self, items: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]) -> None:
        """The per-tensor path: the eager operations, one parameter at a time."""
        for p, grad, hp in items:
            dtype = statistics_dtype(p.dtype)
            p.copy_(self._step_tensor(p.to(dtype), grad.to(dtype), self.state[p], hp))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, then the checks of ``fused`` (:func:`.variants.check_parameters`)
        and of every hyperparameter (as the constructor checks the defaults, not only at the
        next step); a group that fails them is not added."""
        super().add_param_group(param_group)  # type: ignore[misc]
        group = self.param_groups[-1]
        where = f"{type(self).__name__} param group {len(self.param_groups) - 1}"
        try:
            check_parameters(group["params"], group.get("foreach"), group.get("fused"), where)
            self._check_group(group, where)  # the new group only: the others were checked when added
        except Exception:
            self.param_groups.pop()
            raise

    def _step_tensor(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> torch.Tensor:
        """The new value of one parameter (in the compute dtype); updates ``state`` in place."""
        raise NotImplementedError

    # -- the CProp part of one step, in overridable pieces ------------------------------

    def _statistics(self, p: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """This parameter's ``(m, v)`` tensors, created as zeros on its first step."""
        if "cprop_m" not in state:
            dtype = statistics_dtype(p.dtype)
            state["cprop_m"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            state["cprop_v"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        return state["cprop_m"], state["cprop_v"]

    def _scale(self, m: torch.Tensor, v: torch.Tensor, t: int, hp: dict[str, Any]) -> torch.Tensor:
        """The scale ``s`` from statistics after ``t`` gradients (``docs/algorithm.md``, "One step of CProp")."""
        return cprop_scale(
            m, v, t, beta=hp["cprop_beta"], c=hp["cprop_c"], eps=hp["cprop_eps"], cdf_name=hp["cprop_cdf"]
        )

    def _statistics_input(self, p: torch.Tensor, g: torch.Tensor, hp: dict[str, Any]) -> torch.Tensor:
        """What CProp's statistics see: the raw gradient (never the weight-decayed one)."""
        return g

    def _update_and_scale(
        self, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]
    ) -> torch.Tensor:
        """Statistics first, then the scale from the updated statistics; advances ``step``."""
        update_statistics_(m, v, g, hp["cprop_beta"])
        state["step"] = state.get("step", 0) + 1
        return self._scale(m, v, state["step"], hp)

    # -- read-outs ------------------------------------------------------------------------

    def _cprop_view(self, p: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        return state["cprop_m"], state["cprop_v"], state["step"]

    def cprop_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor, int] | None]:
        """``(m, v, t)`` of every parameter in ``param_groups`` order; ``None`` before its first
        gradient. The tensors are the live state: clone them to keep them."""
        out: list[tuple[torch.Tensor, torch.Tensor, int] | None] = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p) if p in self.state else None
                out.append(self._cprop_view(p, state) if state else None)
        return out

    def scales(self) -> list[torch.Tensor | None]:
        """The per-element scale of every parameter (``None`` before its first gradient): a pure
        function of the statistics, so the scale the most recent step applied."""
        out: list[torch.Tensor | None] = []
        for group, hp in zip(self.param_groups, self._check_groups()):
            for p in group["params"]:
                state = self.state.get(p) if p in self.state else None
                if not state:
                    out.append(None)
                    continue
                m, v, t = self._cprop_view(p, state)
                out.append(self._scale(m, v, t, hp))
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, keeping 16-bit parameters' state in float32 and each
        group's own ``foreach`` / ``fused`` (how to compute is not state: a state_dict saved
        by one variant continues in another)."""
        options = [(g.get("foreach"), g.get("fused")) for g in self.param_groups]
        _load_keeping_precision(self, state_dict)
        for group, (foreach, fused) in zip(self.param_groups, options):
            group["foreach"], group["fused"] = foreach, fused


def keep_statistics_precision(load: Callable[[Any, dict[str, Any]], None]) -> Callable[[Any, dict[str, Any]], None]:
    """Wrap ``load_state_dict`` so that 16-bit parameters get their float32 state back.

    ``torch.optim.Optimizer.load_state_dict`` casts every saved floating tensor to the
    parameter's dtype; for float16 / bfloat16 parameters that would round CProp's float32
    statistics (and momentum) to 16 bits. The saved values are re-read after loading.
    """

    def load_state_dict(self: Any, state_dict: dict[str, Any]) -> None:
        load(self, state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for p, saved_id in zip(params, saved_ids):
            wanted = statistics_dtype(p.dtype)
            if wanted == p.dtype or p not in self.state:
                continue
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=wanted, copy=True)

    load_state_dict.__doc__ = load.__doc__
    return load_state_dict


_load_keeping_precision = keep_statistics_precision(torch.optim.Optimizer.load_state_dict)
