"""Elementwise error bounds for a port's parameters, propagated along a run.

The CProp moments and the scale are bounded by :mod:`cprop_ref.tolerance` (the lead's
policy). The parameters are open loop: a port whose scale differs by up to ``ds`` from
the reference's moves its parameter by up to ``lr |d| ds`` more, and that difference is
carried to every later step (through weight decay and momentum too). This module
carries, per tensor, a bound on the error of everything the update depends on, in the
same first-order-plus-rounding style (``docs/conformance.md``, "Tolerance policy"):

* SGD family: ``d0 = g + wd p``, momentum buffer ``buf``, direction ``d``;
  ``e(lr d s) <= lr (|d| ds + e_d (s + ds)) + 2 * 2 u lr |d| s`` (``d * s`` and ``lr * .``);
* Adam family: Adam's moments with :func:`~cprop_ref.tolerance.ema_error_bound` (plus the
  error of their input), ``den = sqrt(v) / sqrt(1 - b2^t) + eps`` through the conditioning
  of the square root, ``delta = step_size m / den`` as a quotient, where ``den`` is not
  pinned down by the bound the element is unconstrained (bound ``inf``); the wrapper
  around AdamW scales the decoupled decay ``-lr wd p`` too, so ``ds`` multiplies it;
* ``p_new = p + update`` adds ``2 u |p_new|``; the wrapper's ``before + (after - before) s``
  adds the rounding of the base optimizer's own write and of the difference,
  ``2 u (|p| + 2 |p_new - p|)``.

Every rounding is counted on both sides (:data:`BOTH_SIDES`): the reference rounds too.
Everything is computed in float64 from the *reference* values, so the bound is the same
whatever the port computes. ``g_error`` is the error of the port's gradient (0 in open
loop; ``h |e_x|`` plus rounding in the closed loop on a quadratic).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..tolerance import (
    EMA_ROUNDINGS,
    SQUARE_ROUNDINGS,
    CPropErrorBounds,
    ema_error_bound,
    subnormal_floor,
    unit_roundoff,
)
from .config import PortConfig
from .dtypes import HALF_DTYPES, compute_dtype, largest, storage_floor, storage_roundoff

#: Each rounding is counted on both sides: the reference rounds as much as the port does, and
#: the two roundings of one operation can go opposite ways (a port that computes in float64
#: and rounds once still differs from the float32 reference by up to one ulp of the result).
BOTH_SIDES = 2.0


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def sqrt_error(x: np.ndarray, x_bound: np.ndarray) -> np.ndarray:
    """``|sqrt(x') - sqrt(x)| <= min(e / (2 sqrt(x)), sqrt(e))`` for ``|x' - x| <= e``, ``x >= 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        linear = np.where(x > 0.0, x_bound / (2.0 * np.sqrt(x)), np.inf)
    return np.minimum(linear, np.sqrt(x_bound))


def quotient_error(num: np.ndarray, num_bound: np.ndarray, den: np.ndarray, den_bound: np.ndarray) -> np.ndarray:
    """``|a'/b' - a/b| <= (e_a + |a/b| e_b) / (b - e_b)`` for ``b > e_b``; ``inf`` otherwise."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.abs(num / den)
        bound = (num_bound + ratio * den_bound) / (den - den_bound)
    return np.where(den > den_bound, bound, np.inf)


class TensorBounds:
    """Error bounds of one tensor's port state against the reference's.

    ``u`` / ``tiny``: one rounding in the compute dtype (float32 for 16-bit parameters);
    ``p_u`` / ``p_tiny`` / ``p_max``: one rounding into the parameter's own format;
    ``base_u`` / ``base_tiny`` / ``base_max``: one rounding inside the base optimizer, which
    for the wrapper around a framework's optimizer (torch.optim.Adam ...) with 16-bit
    parameters is the parameter's format: torch keeps its state and computes in it.
    """

    def __init__(self, shape: tuple[int, ...], dtype: str, base_in_storage: bool = False) -> None:
        compute = compute_dtype(dtype)
        self.u = unit_roundoff(compute)
        self.tiny = subnormal_floor(compute)
        self.p_u, self.p_tiny, self.p_max = storage_roundoff(dtype), storage_floor(dtype), largest(dtype)
        self.base_in_storage = base_in_storage
        if base_in_storage:
            self.base_u, self.base_tiny, self.base_max = self.p_u, self.p_tiny, self.p_max
        else:
            self.base_u, self.base_tiny, self.base_max = self.u, self.tiny, float(np.finfo(compute).max)
        self.cprop = CPropErrorBounds(shape, compute)
        zero = np.zeros(shape)
        self.param = zero.copy()
        self.buf = zero.copy()
        self.m1 = zero.copy()
        self.v2 = zero.copy()
        self.vmax = zero.copy()
        #: Bound on the scale after the tensor's latest step (1: ill-conditioned).
        self.scale = np.ones(shape)
        #: Elements where the wrapped framework optimizer's own EMA in ``lerp`` form overflows
        #: (``|d - m| > max``) where the reference's weighted sum does not: from there on the
        #: parameter is the framework's business (:func:`base_overflow`), counted, not compared.
        self.base_overflow = np.zeros(shape, dtype=bool)
        #: The base optimizer's step ``|after - before|`` of the latest step (reference values).
        self.base_step = zero.copy()


#: The families (:data:`.config.FAMILIES`) whose base update the bounds below follow.
BOUNDED_FAMILIES: tuple[str, ...] = ("sgd", "adam")


class RunBounds:
    """Bounds for every tensor of a run of ``config``; :meth:`advance` once per step and tensor."""

    def __init__(self, config: PortConfig, shapes: list[tuple[int, ...]]) -> None:
        if config.family not in BOUNDED_FAMILIES:
            raise ValueError(
                f"RunBounds: no error bounds for the family {config.family!r} of {config.name} "
                f"(cprop_ref/conformance/bounds.py bounds {', '.join(BOUNDED_FAMILIES)})"
            )
        self.config = config
        base_in_storage = config.optimizer == "CProp" and config.dtype in HALF_DTYPES
        self.tensors = [TensorBounds(shape, config.dtype, base_in_storage) for shape in shapes]

    # Overflowing squares (gradients near the dtype's range) make some bounds inf or NaN; a NaN
    # bound is an unknown one and becomes inf: the element is counted, not compared.
    @np.errstate(all="ignore")
    def advance(
        self,
        k: int,
        param_before: np.ndarray,
        grad: np.ndarray,
        state_before: dict[str, Any],
        state_after: dict[str, Any],
        scale: np.ndarray,
        param_after: np.ndarray,
        grad_error: np.ndarray | float = 0.0,
    ) -> dict[str, np.ndarray]:
        """Bounds after one step of tensor ``k``: ``cprop_m``, ``cprop_v``, ``scale``, ``param``.

        ``state_before`` / ``state_after`` are the reference's states in the protocol's names
        (``{}`` before the first gradient), ``scale`` the reference's scale of this step.
        """
        tb, cfg = self.tensors[k], self.config
        cp = cfg.cprop()
        u = tb.u
        g, e_g = _f64(grad), _f64(grad_error)
        zeros = np.zeros_like(g)
        m_before = _f64(state_before.get("cprop_m", zeros))
        v_before = _f64(state_before.get("cprop_v", zeros))
        tb.cprop.update(m_before, v_before, g, cp["beta"])
        # The port's gradient may itself be off by e_g (closed loop): it enters the EMAs with weight 1 - beta.
        tb.cprop.m_bound = tb.cprop.m_bound + (1.0 - cp["beta"]) * e_g
        tb.cprop.v_bound = tb.cprop.v_bound + (1.0 - cp["beta"]) * (2.0 * np.abs(g) * e_g + e_g * e_g)
        tb.cprop.m_bound = np.nan_to_num(tb.cprop.m_bound, nan=np.inf)
        tb.cprop.v_bound = np.nan_to_num(tb.cprop.v_bound, nan=np.inf)
        t = int(state_after["step"])
        m_after, v_after = _f64(state_after["cprop_m"]), _f64(state_after["cprop_v"])
        scale_bound = tb.cprop.scale_tolerance(m_after, v_after, t, **cp)
        tb.scale = scale_bound
        s = _f64(scale)
        p, p_new = _f64(param_before), _f64(param_after)
        if cfg.family == "sgd":
            update_bound = self._sgd(tb, p, g, e_g, state_before, s, scale_bound)
        else:  # "adam": RunBounds refuses any other family
            update_bound = self._adam(tb, p, g, e_g, state_before, state_after, s, scale_bound)
        # The final rounding into the parameter's format (for 16-bit parameters: from float32).
        rounding = BOTH_SIDES * (tb.p_u * np.abs(p_new) + tb.p_tiny)
        if cfg.optimizer == "CProp":
            # the base optimizer's own write (|p|), after - before and its product with s (|p_new - p|)
            rounding = rounding + BOTH_SIDES * u * (np.abs(p) + 2.0 * np.abs(p_new - p))
            if cfg.dtype in HALF_DTYPES:
                # the base writes ``after`` in 16 bits; its rounding reaches p_new times s
                rounding = rounding + BOTH_SIDES * (tb.p_u * (np.abs(p) + tb.base_step) + tb.p_tiny) * s
        bound = update_bound + rounding
        # Range, not rounding: a parameter within its bound of the format's largest value may
        # round to inf on one side only.
        bound = np.where(np.abs(p_new) + bound >= tb.p_max, np.inf, bound)
        bound = np.where(tb.base_overflow, np.inf, bound)
        tb.param = np.nan_to_num(bound, nan=np.inf, posinf=np.inf)
        return {"cprop_m": tb.cprop.m_bound, "cprop_v": tb.cprop.v_bound, "scale": scale_bound, "param": tb.param}

    def _sgd(
        self,
        tb: TensorBounds,
        p: np.ndarray,
        g: np.ndarray,
        e_g: np.ndarray,
        before: dict[str, Any],
        s: np.ndarray,
        ds: np.ndarray,
    ) -> np.ndarray:
        """Bound on the parameter after ``p - lr (d s)``, excluding the final rounding."""
        hp, u = self.config.base_update(), tb.base_u
        lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
        momentum, dampening = hp.get("momentum", 0.0), hp.get("dampening", 0.0)
        d0 = g + wd * p
        e_d0 = e_g + wd * tb.param + 2.0 * u * (np.abs(wd * p) + np.abs(d0))
        d, e_d = d0, e_d0
        if momentum != 0.0:
            buf_prev = before.get("momentum_buffer")
            if buf_prev is None:
                buf, tb.buf = d0, e_d0
            else:
                buf_prev = _f64(buf_prev)
                buf = momentum * buf_prev + (1.0 - dampening) * d0
                tb.buf = (
                    momentum * tb.buf
                    + (1.0 - dampening) * e_d0
                    + EMA_ROUNDINGS * u * (momentum * np.abs(buf_prev) + (1.0 - dampening) * np.abs(d0))
                )
            if hp.get("nesterov", False):
                d = d0 + momentum * buf
                e_d = e_d0 + momentum * tb.buf + 2.0 * u * (momentum * np.abs(buf) + np.abs(d))
            else:
                d, e_d = buf, tb.buf
        step = lr * np.abs(d)
        tb.base_step = step
        if tb.base_in_storage:  # torch.optim.SGD in 16 bits: a direction past 65504 is inf (lr = 0: NaN)
            tb.base_overflow |= (np.abs(d) + e_d >= tb.base_max) | (np.abs(d0) + e_d0 >= tb.base_max)
        bound = tb.param + step * ds + lr * e_d * (s + ds) + BOTH_SIDES * 2.0 * (u * step + tb.base_tiny) * s
        # the base's direction past its format's range is inf on one side only (range, not rounding)
        return np.where(np.maximum(np.abs(d) + e_d, step) >= tb.base_max, np.inf, bound)

    def _adam(
        self,
        tb: TensorBounds,
        p: np.ndarray,
        g: np.ndarray,
        e_g: np.ndarray,
        before: dict[str, Any],
        after: dict[str, Any],
        s: np.ndarray,
        ds: np.ndarray,
    ) -> np.ndarray:
        """Bound on the parameter after ``p + delta s`` (AdamW: ``p (1 - lr wd) + delta s``)."""
        cfg, u = self.config, tb.base_u
        hp = cfg.base_update()
        lr, wd, eps = hp["lr"], hp.get("weight_decay", 0.0), hp.get("eps", 1e-8)
        beta1, beta2 = hp.get("betas", (0.9, 0.999))
        zeros = np.zeros_like(g)
        if cfg.decoupled_weight_decay:
            # Only the wrapper has AdamW as its base, and it scales the whole base step,
            # decay included: p + s (-lr wd p + delta). The decay term's error is
            # lr wd (|p| ds + e_p (s + ds)); the rounding of p (1 - lr wd) adds 3 u |p|.
            decay = lr * wd
            e_p = tb.param + decay * (np.abs(p) * ds + tb.param * (s + ds)) + BOTH_SIDES * 2.0 * u * np.abs(p)
            d0, e_d0 = g, e_g
        else:
            e_p = tb.param
            d0 = g + wd * p
            e_d0 = e_g + wd * tb.param + (2.0 * u * (np.abs(wd * p) + np.abs(d0)) if wd != 0.0 else 0.0)
        m1_prev = _f64(before.get("exp_avg", zeros))
        v2_prev = _f64(before.get("exp_avg_sq", zeros))
        if cfg.optimizer == "CProp" and beta1 != 1.0:
            tb.base_overflow |= np.abs(d0 - m1_prev) > tb.base_max
        tb.m1 = ema_error_bound(tb.m1, m1_prev, d0, beta1, u, EMA_ROUNDINGS, tb.base_tiny) + (1.0 - beta1) * e_d0
        tb.v2 = ema_error_bound(tb.v2, v2_prev, d0 * d0, beta2, u, EMA_ROUNDINGS + SQUARE_ROUNDINGS, tb.base_tiny) + (
            1.0 - beta2
        ) * (2.0 * np.abs(d0) * e_d0 + e_d0 * e_d0)
        m1 = _f64(after["exp_avg"])
        if hp.get("amsgrad", False):
            tb.vmax = np.maximum(tb.vmax, tb.v2)
            second, e_second = _f64(after["max_exp_avg_sq"]), tb.vmax
        else:
            second, e_second = _f64(after["exp_avg_sq"]), tb.v2
        t = int(after["step"])
        step_size = lr / (1.0 - beta1**t)
        bc2 = math.sqrt(1.0 - beta2**t)
        root = np.sqrt(second)
        den = root / bc2 + eps
        # + eps rounds in the base's format: in float16 an eps of 1e-8 is below half its subnormal
        e_den = (sqrt_error(second, e_second) + BOTH_SIDES * u * root) / bc2 + BOTH_SIDES * 2.0 * (
            u * den + tb.base_tiny
        )
        if cfg.optimizer == "CProp" and cfg.dtype in HALF_DTYPES:
            # torch.optim's Adam in 16 bits: d^2 or v past 65504, or a denominator that rounds
            # to 0 (eps = 1e-8 is below float16's half subnormal), gives inf or 0/0 there
            tb.base_overflow |= (d0 * d0 >= tb.base_max) | (second + e_second >= tb.base_max) | (den <= e_den)
        ratio = m1 / den
        e_delta = step_size * quotient_error(m1, tb.m1, den, e_den) + BOTH_SIDES * 2.0 * (
            u * step_size * np.abs(ratio) + tb.base_tiny
        )
        delta = step_size * np.abs(ratio)
        # a quotient or step within its bound of the base's largest value may be inf on one side only
        e_delta = np.where(np.maximum(np.abs(ratio), delta) + e_delta >= tb.base_max, np.inf, e_delta)
        tb.base_step = delta + (lr * wd * np.abs(p) if cfg.decoupled_weight_decay else 0.0)
        return e_p + delta * ds + e_delta * (s + ds) + BOTH_SIDES * u * delta * s
