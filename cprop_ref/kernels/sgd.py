"""Fused kernel of the SGD family: SGD and CProp-SGD in one pass per element.

Per element: weight decay, momentum (with dampening and Nesterov), CProp's moments,
``z``, the CDF and the scale, then the parameter. CProp-SGD (except the float64 ``normal``)
runs in one loop per element (:func:`_cprop_sgd_loop`, one compiled variant per CDF and
with or without momentum, as in :mod:`.adam`); SGD and the rest are blocked in chunks as
in :mod:`.adam`. Each operation mirrors :func:`cprop_ref.functional.sgd_direction`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .columns import column_count, column_numbers
from .cprop import CHUNK, EDGE, EDGE_BLOCK, NO_EDGE, cprop_z_loop, scale_loop, slice_or_none
from .family import KernelFamily, Kernels, TensorStep
from .flat import FlatState
from .pointers import array_at, chunks_finite, chunks_finite_parallel, finite
from .scale import (
    C_ZERO,
    CDF_CODES,
    CDF_MARKERS,
    NO_CPROP_SCALARS,
    NORMAL,
    CPropScalars,
    cprop_constants,
    cprop_ema,
    cprop_scalars,
    edge_scale,
    half_conformity,
    standardized_unguarded,
)
from .wide import prefer_wide_vectors


class SgdScalars(NamedTuple):
    """SGD's scalars, the first columns of the scalar table (CProp's, :class:`.scale.CPropScalars`,
    follow from ``CPROP_BASE``), in double precision."""

    lr: float
    momentum: float
    one_minus_dampening: float
    weight_decay: float


class SgdFlags(NamedTuple):
    """The flag row of a tensor (0 or 1, and the CDF's code)."""

    has_weight_decay: bool
    has_momentum: bool
    #: The momentum buffer's first step: the buffer is written whole (``buf <- d``).
    first_buffer: bool
    nesterov: bool
    cprop: bool
    cdf: int
    #: 1 where the tensor runs the launch's one-loop variant (:func:`one_loop_variant`), 0 where
    #: it takes the chunked stages.
    one_loop: bool


#: Rows of the state arena: the state entries the kernels keep.
FIELDS = ("momentum_buffer", "cprop_m", "cprop_v")
MOMENTUM_BUFFER = FIELDS.index("momentum_buffer")
CPROP_M = FIELDS.index("cprop_m")
CPROP_V = FIELDS.index("cprop_v")
#: Columns of the scalar table (the Numba code indexes with these constants).
_S = column_numbers(SgdScalars)
LR = _S.lr
MOMENTUM = _S.momentum
ONE_MINUS_DAMPENING = _S.one_minus_dampening
WEIGHT_DECAY = _S.weight_decay
CPROP_BASE = column_count(SgdScalars)
SCALAR_COUNT = CPROP_BASE + column_count(CPropScalars)
#: Columns of the flag table.
_F = column_numbers(SgdFlags)
HAS_WEIGHT_DECAY = _F.has_weight_decay
HAS_MOMENTUM = _F.has_momentum
FIRST_BUFFER = _F.first_buffer
NESTEROV = _F.nesterov
CPROP = _F.cprop
CDF = _F.cdf
ONE_LOOP = _F.one_loop
FLAG_COUNT = column_count(SgdFlags)


def sgd_scalars(group: dict) -> SgdScalars:
    """SGD's scalars, in double precision."""
    return SgdScalars(
        lr=group["lr"],
        momentum=group["momentum"],
        one_minus_dampening=1.0 - group["dampening"],
        weight_decay=group["weight_decay"],
    )


@njit(error_model="numpy", cache=True)
def _direction_loop(p, g, direction, scalars, has_wd):
    wd = scalars[WEIGHT_DECAY]
    for j in range(p.size):
        direction[j] = g[j] + wd * p[j] if has_wd else g[j]


@njit(error_model="numpy", cache=True)
def _momentum_direction_loop(p, g, buffer, direction, scalars, has_wd, first, nesterov):
    wd, momentum, one_minus_dampening = scalars[WEIGHT_DECAY], scalars[MOMENTUM], scalars[ONE_MINUS_DAMPENING]
    for j in range(p.size):
        d = g[j] + wd * p[j] if has_wd else g[j]
        b = d if first else momentum * buffer[j] + one_minus_dampening * d
        buffer[j] = b
        direction[j] = d + momentum * b if nesterov else b


@njit(error_model="numpy", cache=True)
def _cprop_sgd_loop(cdf_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov):
    """CProp-SGD in one loop per element, gradient to parameter (``buffer`` is ``None``
    without momentum; ``cdf_marker`` names the CDF, :data:`.scale.CDF_MARKERS`). The
    operations and their order are those of the chunked stages (:func:`_direction_loop` or
    :func:`_momentum_direction_loop`, :func:`.cprop.cprop_z_loop`, :func:`.cprop.scale_loop`
    and the update in :func:`_chunk`): the same bits, in one pass, block by block with the
    edges of the range redone as in :func:`.adam._cprop_adam_loop`."""
    for lo in range(0, p.size, EDGE_BLOCK):
        hi = min(lo + EDGE_BLOCK, p.size)
        block = (p[lo:hi], g[lo:hi], slice_or_none(buffer, lo, hi), cm[lo:hi], cv[lo:hi])
        if _cprop_sgd_block(cdf_marker, *block, scalars, has_wd, first, nesterov):
            _cprop_sgd_edges(cdf_marker, *block, scalars, has_wd, first, nesterov)


@njit(error_model="numpy", cache=True)
def _cprop_sgd_block(cdf_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov):
    """The fast path of :func:`_cprop_sgd_loop` over one block (as :func:`.adam._cprop_adam_block`):
    returns whether some element's unguarded ``z`` was not finite; those keep their parameter."""
    prefer_wide_vectors()
    lr, wd, momentum, one_minus_dampening = (
        scalars[LR],
        scalars[WEIGHT_DECAY],
        scalars[MOMENTUM],
        scalars[ONE_MINUS_DAMPENING],
    )
    constants = cprop_constants(scalars, CPROP_BASE)
    beta, one_minus_beta, inv_bias, inv_denominator, one_sample, cprop_eps, two_c, one, zero, infinity, _ = constants
    edges = NO_EDGE
    for j in range(p.size):
        param = p[j]
        grad = g[j]
        d = grad + wd * param if has_wd else grad
        direction = d
        if buffer is not None:
            b = d if first else momentum * buffer[j] + one_minus_dampening * d
            buffer[j] = b
            direction = d + momentum * b if nesterov else b
        m = cprop_ema(cm[j], grad, beta, one_minus_beta)
        v = cprop_ema(cv[j], grad * grad, beta, one_minus_beta)
        cm[j] = m
        cv[j] = v
        # z, the CDF and the scale written out here, not through a helper: one more level of
        # calls made LLVM stop inlining the normal's erf, and the loop stopped vectorising
        # (ten times slower; tests/test_kernels_one_loop.py now checks the assembly).
        z = standardized_unguarded(m, v, inv_bias, inv_denominator, one_sample, cprop_eps, zero)
        fast = abs(z) < infinity
        edges = max(edges, NO_EDGE if fast else EDGE)  # a max: see adam._cprop_adam_block
        x = two_c * half_conformity(cdf_marker, z)
        s = one if x > one else x
        # scale.scale_update: a scale of 0 is no update, also where the direction is inf.
        stepped = param - lr * (zero if s == zero else direction * s)
        p[j] = stepped if fast else param
    return edges != NO_EDGE


@njit(error_model="numpy", cache=True)
def _cprop_sgd_edges(cdf_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov):
    """The parameter's step for the elements of a block that :func:`_cprop_sgd_block` left:
    the direction again from the gradient, the parameter (not yet stepped) and the updated
    momentum buffer, ``z`` with the guards, the same operations as the fast path."""
    lr, wd, momentum = scalars[LR], scalars[WEIGHT_DECAY], scalars[MOMENTUM]
    constants = cprop_constants(scalars, CPROP_BASE)
    zero = scalars[CPROP_BASE + C_ZERO]
    for j in range(p.size):
        edge, s = edge_scale(cdf_marker, cm[j], cv[j], constants)
        if not edge:
            continue  # stepped by the fast path
        param = p[j]
        d = g[j] + wd * param if has_wd else g[j]
        direction = d
        if buffer is not None:
            b = buffer[j]  # d itself on the first step
            direction = d + momentum * b if nesterov else b
        p[j] = param - lr * (zero if s == zero else direction * s)


def _cprop_sgd_variant(
    cdf_marker, momentum_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov
):  # pragma: no cover
    raise NotImplementedError("a stub: Numba compiles the overload below")


def _without_momentum(
    cdf_marker, momentum_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov
):  # pragma: no cover
    _cprop_sgd_loop(cdf_marker, p, g, None, cm, cv, scalars, has_wd, first, nesterov)


def _with_momentum(
    cdf_marker, momentum_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov
):  # pragma: no cover
    _cprop_sgd_loop(cdf_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov)


@overload(_cprop_sgd_variant)
def _cprop_sgd_variant_by_markers(cdf_marker, momentum_marker, p, g, buffer, cm, cv, scalars, has_wd, first, nesterov):
    # ``momentum_marker``: None without momentum, () with a buffer; only the variant given compiles.
    return _without_momentum if isinstance(momentum_marker, types.NoneType) else _with_momentum


def one_loop_variant(cprop: bool, single: bool, cdf_code: int, has_momentum: bool) -> tuple | None:
    """The one-loop variant ``(cdf_marker, momentum_marker)`` of a tensor, or ``None`` where
    it takes the chunked stages (plain SGD; the float64 ``normal``, whose ``erf`` is a scalar
    call). As :func:`.adam.one_loop_variant`."""
    if not cprop or (not single and cdf_code == NORMAL):
        return None
    return (CDF_MARKERS[cdf_code], () if has_momentum else None)


#: The variant arguments of a launch in which no tensor runs the one loop.
NO_ONE_LOOP = (None, None)


@njit(error_model="numpy", cache=True)
def _chunk(p, g, arena, offset, lo, hi, scalars, flags, direction, buf, cdf_marker, momentum_marker):
    count = hi - lo
    p = p[lo:hi]
    g = g[lo:hi]
    direction = direction[:count]
    buf = buf[:count]
    has_wd = flags[HAS_WEIGHT_DECAY] != 0
    if cdf_marker is not None:  # a launch with a one-loop variant (one_loop_variant)
        if flags[ONE_LOOP] != 0:
            _cprop_sgd_variant(
                cdf_marker,
                momentum_marker,
                p,
                g,
                arena[MOMENTUM_BUFFER, offset + lo : offset + hi],
                arena[CPROP_M, offset + lo : offset + hi],
                arena[CPROP_V, offset + lo : offset + hi],
                scalars,
                has_wd,
                flags[FIRST_BUFFER] != 0,
                flags[NESTEROV] != 0,
            )
            return
    if flags[HAS_MOMENTUM] != 0:
        momentum_buffer = arena[MOMENTUM_BUFFER, offset + lo : offset + hi]
        _momentum_direction_loop(
            p, g, momentum_buffer, direction, scalars, has_wd, flags[FIRST_BUFFER] != 0, flags[NESTEROV] != 0
        )
    else:
        _direction_loop(p, g, direction, scalars, has_wd)
    lr = scalars[LR]
    if flags[CPROP] != 0:
        cm = arena[CPROP_M, offset + lo : offset + hi]
        cv = arena[CPROP_V, offset + lo : offset + hi]
        cprop_z_loop(g, cm, cv, cm, cv, buf, scalars, CPROP_BASE, True, True)
        scale_loop(buf, count, scalars, CPROP_BASE, flags[CDF])
        zero = scalars[CPROP_BASE + C_ZERO]
        for j in range(count):
            # scale.scale_update: a scale of 0 is no update, also where the direction is inf.
            s = buf[j]
            p[j] = p[j] - lr * (zero if s == zero else direction[j] * s)
    else:
        for j in range(count):
            p[j] = p[j] - lr * direction[j]


@njit(error_model="numpy", cache=True)
def _chunks(
    first, last, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags, *variant
):
    direction = np.empty(CHUNK, arena.dtype)
    buf = np.empty(CHUNK, arena.dtype)
    c = first
    while c < last:
        k = chunk_tensor[c]
        p = array_at(p_addr[k], sizes[k], arena)
        g = array_at(g_addr[k], sizes[k], arena)
        end = c + 1
        if flags[k][ONE_LOOP] != 0:
            # One loop needs no scratch: the tensor's consecutive chunks go in one call.
            while end < last and chunk_tensor[end] == k:
                end += 1
        _chunk(p, g, arena, offsets[k], chunk_lo[c], chunk_hi[end - 1], scalars[k], flags[k], direction, buf, *variant)
        c = end


@njit(error_model="numpy", cache=True)
def sgd_one(p, g, arena, offset, scalars, flags, check_finite, cdf_marker, momentum_marker):
    """One step of one small tensor (``p``, ``g`` 1-D) on the calling thread. With
    ``check_finite``, a gradient with a NaN or inf changes nothing and returns False. The
    markers are the launch's one-loop variant (:func:`one_loop_variant`, :data:`NO_ONE_LOOP`)."""
    if check_finite and not finite(g):
        return False
    direction = np.empty(CHUNK, arena.dtype)
    buf = np.empty(CHUNK, arena.dtype)
    step = p.size if flags[ONE_LOOP] != 0 else CHUNK
    for lo in range(0, p.size, max(step, 1)):
        _chunk(
            p, g, arena, offset, lo, min(lo + step, p.size), scalars, flags, direction, buf, cdf_marker, momentum_marker
        )
    return True


@njit(error_model="numpy", cache=True)
def sgd_serial(
    p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags, check_finite, *variant
):
    """One step of every listed tensor on the calling thread (small totals); with
    ``check_finite``, any NaN or inf gradient changes nothing and returns False."""
    n = chunk_tensor.size
    if check_finite and not chunks_finite(0, n, g_addr, sizes, arena, chunk_tensor, chunk_lo, chunk_hi):
        return False
    _chunks(0, n, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags, *variant)
    return True


@njit(error_model="numpy", cache=True, parallel=True)
def sgd_parallel(
    p_addr,
    g_addr,
    sizes,
    offsets,
    arena,
    chunk_tensor,
    chunk_lo,
    chunk_hi,
    scalars,
    flags,
    check_finite,
    workers,
    cdf_marker,
    momentum_marker,
):
    """As :func:`sgd_serial`, the chunks split into ``workers`` contiguous runs. (The variant's
    markers are spelled out: Numba's parallel wrapper refuses a ``*variant`` tuple in a
    ``prange`` body.)"""
    n = chunk_tensor.size
    if check_finite and not chunks_finite_parallel(workers, g_addr, sizes, arena, chunk_tensor, chunk_lo, chunk_hi):
        return False
    for w in prange(workers):
        first, last = w * n // workers, (w + 1) * n // workers
        _chunks(
            first,
            last,
            p_addr,
            g_addr,
            sizes,
            offsets,
            arena,
            chunk_tensor,
            chunk_lo,
            chunk_hi,
            scalars,
            flags,
            cdf_marker,
            momentum_marker,
        )
    return True


class SgdFamily(KernelFamily):
    """The declaration of SGD (``cprop=False``) and CProp-SGD (``cprop=True``): the arena rows
    :data:`FIELDS`, the columns :class:`SgdScalars` (then :class:`.scale.CPropScalars`) and
    :class:`SgdFlags`, and the kernels above. The NumPy rule is :class:`cprop_ref.optim.SGD`'s
    (``CPropSGD``)."""

    state_rows = FIELDS
    chunk = CHUNK
    no_one_loop = NO_ONE_LOOP

    def __init__(self, name: str, *, cprop: bool = False) -> None:
        self.name, self.cprop = name, cprop

    @property
    def kernels(self) -> Kernels:
        return Kernels(sgd_one, sgd_serial, sgd_parallel)

    def tensor_step(
        self, arena: FlatState, k: int, state: dict[str, Any], group: dict[str, Any], rows: dict
    ) -> TensorStep:
        new: dict[str, Any] = {}
        t = None
        if self.cprop:
            fresh = not state
            t = 1 if fresh else state["step"] + 1
            new["step"] = t
            new["cprop_m"] = arena.adopt(k, "cprop_m", None if fresh else state["cprop_m"])
            new["cprop_v"] = arena.adopt(k, "cprop_v", None if fresh else state["cprop_v"])
        has_momentum = group["momentum"] != 0.0
        old_buffer = state.get("momentum_buffer")
        first = old_buffer is None
        if has_momentum:
            # The first step writes the buffer whole; later ones continue from the saved one.
            new["momentum_buffer"] = (
                arena.view(k, "momentum_buffer") if first else arena.adopt(k, "momentum_buffer", old_buffer)
            )
        else:
            new["momentum_buffer"] = None
        key = (id(group), t, first)
        shared = rows.get(key)
        if shared is None:
            shared = rows[key] = self._rows(group, t, first, arena)
        return TensorStep(new, *shared)

    def _rows(
        self, group: dict[str, Any], t: int | None, first: bool, arena: FlatState
    ) -> tuple[tuple, SgdFlags, tuple | None]:
        """The scalar row, the flag row and the one-loop variant of a tensor of ``group`` at its
        ``t``-th step (CProp-SGD), at its momentum buffer's ``first`` step or not (the same for
        every such tensor)."""
        cdf_code = CDF_CODES[group["cprop_cdf"]] if self.cprop else 0
        if self.cprop:
            cprop_row = cprop_scalars(group["cprop_beta"], group["cprop_c"], group["cprop_eps"], t, arena.largest)
        else:
            cprop_row = NO_CPROP_SCALARS
        has_momentum = group["momentum"] != 0.0
        flags = SgdFlags(
            has_weight_decay=group["weight_decay"] != 0.0,
            has_momentum=has_momentum,
            first_buffer=first,
            nesterov=group["nesterov"],
            cprop=self.cprop,
            cdf=cdf_code,
            one_loop=False,
        )
        variant = one_loop_variant(self.cprop, arena.single, cdf_code, has_momentum)
        return (*sgd_scalars(group), *cprop_row), flags, variant


#: The declarations of the SGD family's members (:data:`.family.KERNEL_FAMILIES`).
SGD = SgdFamily("sgd")
CPROP_SGD = SgdFamily("cprop_sgd", cprop=True)
