"""Fused kernel of the Adam family: Adam, AdamW and CProp-Adam in one pass per element.

Per element: weight decay, both moments (and AMSGrad's maximum), Adam's update, and for
CProp-Adam its own moments (only where they are not shared with Adam's), ``z``, the CDF
and the scale, then the parameter. CProp-Adam without AMSGrad (and except the float64
``normal``) runs in one loop per element over a tensor's whole share of a thread
(:func:`_cprop_adam_loop`, compiled per CDF and per sharing of the moments, 512 bits wide).
The rest is blocked in chunks of ``CHUNK`` elements: a first loop writes Adam's update and
``z`` into two chunk-sized scratch buffers (L1 resident), a second turns ``z`` into the scale
over the chunk (a SIMD loop, see :mod:`.vector_math`), a third applies it; the one loop gives
the same bits. Each operation mirrors :mod:`cprop_ref.functional` with the scalars rounded
once to the dtype.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..functional import cprop_adam_private_moments
from .columns import column_count, column_numbers
from .cprop import CHUNK, EDGE, EDGE_BLOCK, NO_EDGE, cprop_z_loop, scale_loop, slice_or_none
from .family import KernelFamily, Kernels, SteadyKernels, TensorStep
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
    ema,
    fill_cprop_scalars,
    half_conformity,
    nan_maximum,
    standardized_unguarded,
)
from .wide import prefer_wide_vectors


class AdamScalars(NamedTuple):
    """Adam's scalars of a tensor's ``t``-th step, the first columns of the scalar table (CProp's,
    :class:`.scale.CPropScalars`, follow from ``CPROP_BASE``), in double precision."""

    lr: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float
    weight_decay: float
    #: ``1 - lr * wd``: AdamW's decay of the parameter.
    decay_factor: float
    #: ``-lr / (1 - beta1^t)``.
    neg_step_size: float
    #: ``sqrt(1 - beta2^t)``.
    bc2_sqrt: float


class AdamFlags(NamedTuple):
    """The flag row of a tensor (0 or 1, and the CDF's code)."""

    decoupled: bool
    has_weight_decay: bool
    amsgrad: bool
    cprop: bool
    #: CProp keeps its own first (second) moment: Adam's is not CProp's (:func:`cprop_ref.functional.cprop_adam_private_moments`).
    private_m: bool
    private_v: bool
    cdf: int
    #: 1 where the tensor runs the launch's one-loop variant (:func:`one_loop_variant`), 0 where
    #: it takes the chunked stages.
    one_loop: bool


#: Rows of the state arena: the state entries the kernels keep.
FIELDS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "cprop_m", "cprop_v")
EXP_AVG = FIELDS.index("exp_avg")
EXP_AVG_SQ = FIELDS.index("exp_avg_sq")
MAX_EXP_AVG_SQ = FIELDS.index("max_exp_avg_sq")
CPROP_M = FIELDS.index("cprop_m")
CPROP_V = FIELDS.index("cprop_v")

#: Columns of the scalar table (the Numba code indexes with these constants).
_S = column_numbers(AdamScalars)
LR = _S.lr
BETA1 = _S.beta1
ONE_MINUS_BETA1 = _S.one_minus_beta1
BETA2 = _S.beta2
ONE_MINUS_BETA2 = _S.one_minus_beta2
EPS = _S.eps
WEIGHT_DECAY = _S.weight_decay
DECAY_FACTOR = _S.decay_factor
NEG_STEP_SIZE = _S.neg_step_size
BC2_SQRT = _S.bc2_sqrt
CPROP_BASE = column_count(AdamScalars)
SCALAR_COUNT = CPROP_BASE + column_count(CPropScalars)
#: Columns of the flag table.
_F = column_numbers(AdamFlags)
DECOUPLED = _F.decoupled
HAS_WEIGHT_DECAY = _F.has_weight_decay
AMSGRAD = _F.amsgrad
CPROP = _F.cprop
PRIVATE_M = _F.private_m
PRIVATE_V = _F.private_v
CDF = _F.cdf
ONE_LOOP = _F.one_loop
FLAG_COUNT = column_count(AdamFlags)


def adam_scalars(group: dict, t: int, decoupled: bool = False) -> AdamScalars:
    """Adam's scalars for the ``t``-th step, in double precision (``functional.adam_delta``).
    (``decoupled`` changes none of them: the flags say which decay the kernel applies.)"""
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    return AdamScalars(
        lr=lr,
        beta1=beta1,
        one_minus_beta1=1.0 - beta1,
        beta2=beta2,
        one_minus_beta2=1.0 - beta2,
        eps=group["eps"],
        weight_decay=wd,
        decay_factor=1.0 - lr * wd,
        neg_step_size=-(lr / (1.0 - beta1**t)),
        bc2_sqrt=math.sqrt(1.0 - beta2**t),
    )


# The loops below index chunk-sized views with ``j in range(count)``: an index that Numba
# knows to be non-negative needs no wrap-around check, and the loop vectorises.


@njit(error_model="numpy", cache=True)
def _moments_loop(p, g, m1, m2, mx, delta, scalars, decoupled_wd, coupled_wd):
    """Weight decay, Adam's moments (and with ``mx`` an array, AMSGrad's running maximum of the
    second moment; ``None`` without AMSGrad, whose code Numba then drops) and the update:
    ``delta[j]`` (the parameter's new value is the decayed parameter plus ``delta``, scaled
    for CProp-Adam)."""
    beta1, one_minus_beta1 = scalars[BETA1], scalars[ONE_MINUS_BETA1]
    beta2, one_minus_beta2 = scalars[BETA2], scalars[ONE_MINUS_BETA2]
    wd, decay, neg_step_size, bc2_sqrt, eps = (
        scalars[WEIGHT_DECAY],
        scalars[DECAY_FACTOR],
        scalars[NEG_STEP_SIZE],
        scalars[BC2_SQRT],
        scalars[EPS],
    )
    for j in range(p.size):
        param = p[j] * decay if decoupled_wd else p[j]
        d = g[j] + wd * param if coupled_wd else g[j]
        first = ema(m1[j], d, beta1, one_minus_beta1)
        second = ema(m2[j], d * d, beta2, one_minus_beta2)
        m1[j] = first
        m2[j] = second
        if mx is not None:
            second = nan_maximum(mx[j], second)
            mx[j] = second
        delta[j] = neg_step_size * (first / (np.sqrt(second) / bc2_sqrt + eps))


@njit(error_model="numpy", cache=True)
def _cprop_adam_loop(cdf_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):
    """CProp-Adam without AMSGrad in one loop per element, moments to parameter.

    ``cm`` / ``cv`` are CProp's private moments, or ``None`` where Adam's moment is shared
    (Numba compiles one loop per combination, so neither case reads an array it does not
    need); ``cdf_marker`` names the CDF (:data:`.scale.CDF_MARKERS`), one compiled loop per
    CDF. The operations and their order are those of the chunked stages
    (:func:`_moments_loop`, :func:`cprop_z_loop`, :func:`scale_loop` and the update in
    :func:`_chunk`), so the results are the same to the bit; one loop lets the processor
    overlap the memory traffic with the arithmetic, which the stages over a cache-resident
    chunk cannot (measured in ``docs/design/kernels.md``). A long range runs software-pipelined
    (:func:`_cprop_adam_pipeline`) over whole blocks of ``PIPELINE_BLOCK``; the rest, and a
    short range, block by block (``EDGE_BLOCK``): the fast path, then the elements at the
    edges of the range, if the block has any.
    """
    done = 0
    if p.size >= PIPELINE_MIN_BLOCKS * PIPELINE_BLOCK:
        done = p.size - p.size % PIPELINE_BLOCK
        _cprop_adam_pipeline(
            cdf_marker,
            p[:done],
            g[:done],
            m1[:done],
            m2[:done],
            slice_or_none(cm, 0, done),
            slice_or_none(cv, 0, done),
            scalars,
            coupled_wd,
        )
    for lo in range(done, p.size, EDGE_BLOCK):
        hi = min(lo + EDGE_BLOCK, p.size)
        if _cprop_adam_block(
            cdf_marker,
            p[lo:hi],
            g[lo:hi],
            m1[lo:hi],
            m2[lo:hi],
            slice_or_none(cm, lo, hi),
            slice_or_none(cv, lo, hi),
            scalars,
            coupled_wd,
        ):
            _cprop_adam_edges(
                cdf_marker,
                p[lo:hi],
                m1[lo:hi],
                m2[lo:hi],
                slice_or_none(cm, lo, hi),
                slice_or_none(cv, lo, hi),
                scalars,
            )


#: Elements per block of the software-pipelined one loop (:func:`_cprop_adam_pipeline`), and
#: the fewest whole blocks for which a range runs pipelined (its first and last block each do
#: half their work on idle arrays). 4096 and 8192 measured alike, 2048 and less slower
#: (``docs/design/kernels.md``).
PIPELINE_BLOCK = 4096
PIPELINE_MIN_BLOCKS = 8


def idle_in_place_of(array, idle):  # pragma: no cover - a stub; Numba calls the overload below
    raise NotImplementedError


@overload(idle_in_place_of)
def _idle_in_place_of(array, idle):
    """``idle`` in place of ``array``, and ``None`` for ``None`` (a moment shared with Adam's)."""
    if isinstance(array, types.NoneType):
        return lambda array, idle: None
    return lambda array, idle: idle


@njit(error_model="numpy", cache=True)
def _cprop_adam_pipeline(cdf_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):
    """:func:`_cprop_adam_loop` over whole blocks of ``PIPELINE_BLOCK``, software-pipelined:
    one loop does the moments, Adam's update and ``z`` of block ``k`` (into a scratch block)
    together with the scale and the parameter of block ``k - 1`` (from the other scratch
    block), so that the memory traffic of one block and the long chain of arithmetic of the
    other are independent work the processor can overlap (the plain one loop keeps fewer
    memory requests in flight: 1.0 to 1.5 ms slower per 2^24 float32 elements, measured). Each element
    meets the same operations in the same order as in :func:`_cprop_adam_block`: the same bits.
    The first and last pass have no block ``k - 1`` or ``k``: that half works on idle arrays."""
    count = p.size // PIPELINE_BLOCK
    # scratch[k % 2] holds z (row 0) and Adam's update (row 1) of block k between its two halves.
    scratch = np.zeros((2, 2, PIPELINE_BLOCK), p.dtype)
    idle = np.zeros((6, PIPELINE_BLOCK), p.dtype)
    for k in range(count + 1):
        lo, hi = k * PIPELINE_BLOCK, (k + 1) * PIPELINE_BLOCK  # block k: its moments and z
        before = lo - PIPELINE_BLOCK  # block k - 1: its scale and parameter
        if k < count:
            p_block, g_block, m1_block, m2_block, cm_block, cv_block = (
                p[lo:hi],
                g[lo:hi],
                m1[lo:hi],
                m2[lo:hi],
                slice_or_none(cm, lo, hi),
                slice_or_none(cv, lo, hi),
            )
        else:
            p_block, g_block, m1_block, m2_block = idle[0], idle[1], idle[2], idle[3]
            cm_block, cv_block = idle_in_place_of(cm, idle[4]), idle_in_place_of(cv, idle[5])
        p_previous_block = p[before:lo] if k > 0 else idle[0]
        edges = _cprop_adam_pipeline_pass(
            cdf_marker,
            p_block,
            g_block,
            m1_block,
            m2_block,
            cm_block,
            cv_block,
            scratch[k % 2],
            p_previous_block,
            scratch[(k + 1) % 2],
            scalars,
            coupled_wd,
        )
        if k > 0 and edges:
            _cprop_adam_edges(
                cdf_marker,
                p[before:lo],
                m1[before:lo],
                m2[before:lo],
                slice_or_none(cm, before, lo),
                slice_or_none(cv, before, lo),
                scalars,
            )


@njit(error_model="numpy", cache=True)
def _cprop_adam_pipeline_pass(cdf_marker, p, g, m1, m2, cm, cv, out, p_before, before, scalars, coupled_wd):
    """One pass of :func:`_cprop_adam_pipeline`: the moments, Adam's update and ``z`` of one
    block (``p`` .. ``cv``) into ``out`` (rows ``z`` and update), and the parameter of the
    block before, ``p_before``, from ``before`` (its ``z`` and update). Returns whether some
    element of the block before has a non-finite ``z``: those keep their parameter for
    :func:`_cprop_adam_edges` (as in :func:`_cprop_adam_block`)."""
    prefer_wide_vectors()
    beta1, one_minus_beta1 = scalars[BETA1], scalars[ONE_MINUS_BETA1]
    beta2, one_minus_beta2 = scalars[BETA2], scalars[ONE_MINUS_BETA2]
    wd, neg_step_size, bc2_sqrt, eps = scalars[WEIGHT_DECAY], scalars[NEG_STEP_SIZE], scalars[BC2_SQRT], scalars[EPS]
    constants = cprop_constants(scalars, CPROP_BASE)
    beta, one_minus_beta, inv_bias, inv_denominator, one_sample, cprop_eps, two_c, one, zero, infinity, _ = constants
    z_out, delta_out = out[0], out[1]
    z_before, delta_before = before[0], before[1]
    edges = NO_EDGE
    for j in range(p.size):
        # This block: the moments, Adam's update and z (as _cprop_adam_block).
        grad = g[j]
        d = grad + wd * p[j] if coupled_wd else grad
        first = ema(m1[j], d, beta1, one_minus_beta1)
        second = ema(m2[j], d * d, beta2, one_minus_beta2)
        m1[j] = first
        m2[j] = second
        delta_out[j] = neg_step_size * (first / (np.sqrt(second) / bc2_sqrt + eps))
        m = first
        v = second
        if cm is not None:
            m = cprop_ema(cm[j], grad, beta, one_minus_beta)
            cm[j] = m
        if cv is not None:
            v = cprop_ema(cv[j], grad * grad, beta, one_minus_beta)
            cv[j] = v
        z_out[j] = standardized_unguarded(m, v, inv_bias, inv_denominator, one_sample, cprop_eps, zero)
        # The block before: the CDF, the scale and the parameter (written out: see _cprop_adam_block).
        z = z_before[j]
        param = p_before[j]
        fast = abs(z) < infinity
        edges = max(edges, NO_EDGE if fast else EDGE)
        x = two_c * half_conformity(cdf_marker, z)
        s = one if x > one else x
        stepped = param + (zero if s == zero else delta_before[j] * s)
        p_before[j] = stepped if fast else param
    return edges != NO_EDGE


@njit(error_model="numpy", cache=True)
def _cprop_adam_block(cdf_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):
    """The fast path of :func:`_cprop_adam_loop` over one block: every moment, and the
    parameter of every element whose unguarded ``z`` is finite (there it is the guarded one,
    :func:`.scale.standardized_unguarded`). Returns whether some element's was not: those keep
    their parameter for :func:`_cprop_adam_edges`."""
    prefer_wide_vectors()
    beta1, one_minus_beta1 = scalars[BETA1], scalars[ONE_MINUS_BETA1]
    beta2, one_minus_beta2 = scalars[BETA2], scalars[ONE_MINUS_BETA2]
    wd, neg_step_size, bc2_sqrt, eps = scalars[WEIGHT_DECAY], scalars[NEG_STEP_SIZE], scalars[BC2_SQRT], scalars[EPS]
    constants = cprop_constants(scalars, CPROP_BASE)
    beta, one_minus_beta, inv_bias, inv_denominator, one_sample, cprop_eps, two_c, one, zero, infinity, _ = constants
    edges = NO_EDGE
    for j in range(p.size):
        param = p[j]
        grad = g[j]
        d = grad + wd * param if coupled_wd else grad
        first = ema(m1[j], d, beta1, one_minus_beta1)
        second = ema(m2[j], d * d, beta2, one_minus_beta2)
        m1[j] = first
        m2[j] = second
        delta = neg_step_size * (first / (np.sqrt(second) / bc2_sqrt + eps))
        m = first
        v = second
        if cm is not None:
            m = cprop_ema(cm[j], grad, beta, one_minus_beta)
            cm[j] = m
        if cv is not None:
            v = cprop_ema(cv[j], grad * grad, beta, one_minus_beta)
            cv[j] = v
        # z, the CDF and the scale written out here, not through a helper: one more level of
        # calls made LLVM stop inlining the normal's erf, and the loop stopped vectorising
        # (ten times slower; tests/test_kernels_one_loop.py now checks the assembly).
        z = standardized_unguarded(m, v, inv_bias, inv_denominator, one_sample, cprop_eps, zero)
        fast = abs(z) < infinity
        # A max, not an or: with an int32 or-reduction LLVM chose 256-bit vectors (measured).
        edges = max(edges, NO_EDGE if fast else EDGE)
        x = two_c * half_conformity(cdf_marker, z)
        s = one if x > one else x
        # scale.scale_update: a scale of 0 is no update, also where delta overflowed to inf.
        stepped = param + (zero if s == zero else delta * s)
        p[j] = stepped if fast else param
    return edges != NO_EDGE


@njit(error_model="numpy", cache=True)
def _cprop_adam_edges(cdf_marker, p, m1, m2, cm, cv, scalars):
    """The parameter's step for the elements of a block that :func:`_cprop_adam_block` left
    (their moments are updated, their parameter is not): Adam's update from the updated
    moments, ``z`` with the guards (:func:`.scale.standardized`), the CDF and the scale, the
    same operations as the fast path and the stages."""
    neg_step_size, bc2_sqrt, eps = scalars[NEG_STEP_SIZE], scalars[BC2_SQRT], scalars[EPS]
    constants = cprop_constants(scalars, CPROP_BASE)
    zero = scalars[CPROP_BASE + C_ZERO]
    for j in range(p.size):
        first = m1[j]
        second = m2[j]
        edge, s = edge_scale(cdf_marker, first if cm is None else cm[j], second if cv is None else cv[j], constants)
        if not edge:
            continue  # stepped by the fast path
        delta = neg_step_size * (first / (np.sqrt(second) / bc2_sqrt + eps))
        p[j] = p[j] + (zero if s == zero else delta * s)


# The one loop for one variant: ``m_marker`` (``v_marker``) is ``None`` where Adam's first
# (second) moment serves as CProp's, ``()`` where CProp keeps its own. The implementation is
# chosen from the markers' types when Numba compiles the caller, so that only the variant a
# launch needs is ever compiled (:func:`one_loop_variant`).


def _cprop_adam_variant(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):  # pragma: no cover
    raise NotImplementedError("a stub: Numba compiles the overload below")


def _both_shared(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):  # pragma: no cover
    _cprop_adam_loop(cdf_marker, p, g, m1, m2, None, None, scalars, coupled_wd)


def _private_m(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):  # pragma: no cover
    _cprop_adam_loop(cdf_marker, p, g, m1, m2, cm, None, scalars, coupled_wd)


def _private_v(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):  # pragma: no cover
    _cprop_adam_loop(cdf_marker, p, g, m1, m2, None, cv, scalars, coupled_wd)


def _both_private(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):  # pragma: no cover
    _cprop_adam_loop(cdf_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd)


@overload(_cprop_adam_variant)
def _cprop_adam_variant_by_markers(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd):
    private_m = not isinstance(m_marker, types.NoneType)
    private_v = not isinstance(v_marker, types.NoneType)
    return {(False, False): _both_shared, (True, False): _private_m, (False, True): _private_v}.get(
        (private_m, private_v), _both_private
    )


def one_loop_variant(
    cprop: bool, amsgrad: bool, single: bool, cdf_code: int, private_m: bool, private_v: bool
) -> tuple | None:
    """The one-loop variant ``(cdf_marker, m_marker, v_marker)`` of a tensor, or ``None`` where
    it takes the chunked stages: without CProp, with AMSGrad (its maximum needs another array
    in the loop; rare), and for the float64 ``normal`` (the C library's ``erf`` is a scalar
    call, which would keep the whole loop from vectorising). A launch passes one variant to
    the kernels (as three arguments, each kernel compiled once per variant it is given) and
    flags with ``ONE_LOOP`` the tensors of that variant."""
    if not cprop or amsgrad or (not single and cdf_code == NORMAL):
        return None
    return (CDF_MARKERS[cdf_code], () if private_m else None, () if private_v else None)


#: The variant arguments of a launch in which no tensor runs the one loop.
NO_ONE_LOOP = (None, None, None)


@njit(error_model="numpy", cache=True)
def _chunk(p, g, arena, offset, lo, hi, scalars, flags, delta, buf, cdf_marker, m_marker, v_marker):
    count = hi - lo
    p = p[lo:hi]
    g = g[lo:hi]
    delta = delta[:count]
    buf = buf[:count]
    m1 = arena[EXP_AVG, offset + lo : offset + hi]
    m2 = arena[EXP_AVG_SQ, offset + lo : offset + hi]
    decoupled = flags[DECOUPLED] != 0
    has_wd = flags[HAS_WEIGHT_DECAY] != 0
    decoupled_wd, coupled_wd = has_wd and decoupled, has_wd and not decoupled
    cdf = flags[CDF]
    if cdf_marker is not None:  # a launch with a one-loop variant (one_loop_variant)
        if flags[ONE_LOOP] != 0:
            cm = arena[CPROP_M, offset + lo : offset + hi]
            cv = arena[CPROP_V, offset + lo : offset + hi]
            _cprop_adam_variant(cdf_marker, m_marker, v_marker, p, g, m1, m2, cm, cv, scalars, coupled_wd)
            return
    if flags[AMSGRAD] != 0:
        mx = arena[MAX_EXP_AVG_SQ, offset + lo : offset + hi]
        _moments_loop(p, g, m1, m2, mx, delta, scalars, decoupled_wd, coupled_wd)
    else:
        _moments_loop(p, g, m1, m2, None, delta, scalars, decoupled_wd, coupled_wd)
    if flags[CPROP] != 0:  # CProp-Adam: never decoupled, so the decayed parameter is p itself
        private_m, private_v = flags[PRIVATE_M] != 0, flags[PRIVATE_V] != 0
        cm = arena[CPROP_M, offset + lo : offset + hi]
        cv = arena[CPROP_V, offset + lo : offset + hi]
        m_source = cm if private_m else m1
        v_source = cv if private_v else m2
        cprop_z_loop(g, m_source, v_source, cm, cv, buf, scalars, CPROP_BASE, private_m, private_v)
        scale_loop(buf, count, scalars, CPROP_BASE, cdf)
        zero = scalars[CPROP_BASE + C_ZERO]
        for j in range(count):
            # scale.scale_update: a scale of 0 is no update, also where delta overflowed to inf.
            s = buf[j]
            p[j] = p[j] + (zero if s == zero else delta[j] * s)
    elif decoupled_wd:
        decay = scalars[DECAY_FACTOR]
        for j in range(count):
            p[j] = p[j] * decay + delta[j]
    else:
        for j in range(count):
            p[j] = p[j] + delta[j]


@njit(error_model="numpy", cache=True)
def _chunks(
    first, last, p_addr, g_addr, sizes, offsets, arena, chunk_tensor, chunk_lo, chunk_hi, scalars, flags, *variant
):
    delta = np.empty(CHUNK, arena.dtype)
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
        _chunk(p, g, arena, offsets[k], chunk_lo[c], chunk_hi[end - 1], scalars[k], flags[k], delta, buf, *variant)
        c = end


@njit(error_model="numpy", cache=True)
def adam_one(p, g, arena, offset, scalars, flags, check_finite, cdf_marker, m_marker, v_marker):
    """One step of one small tensor (``p``, ``g`` 1-D) on the calling thread. With
    ``check_finite``, a gradient with a NaN or inf changes nothing and returns False. The
    markers are the launch's one-loop variant (:func:`one_loop_variant`, :data:`NO_ONE_LOOP`)."""
    if check_finite and not finite(g):
        return False
    delta = np.empty(CHUNK, arena.dtype)
    buf = np.empty(CHUNK, arena.dtype)
    step = p.size if flags[ONE_LOOP] != 0 else CHUNK
    for lo in range(0, p.size, max(step, 1)):
        _chunk(
            p, g, arena, offset, lo, min(lo + step, p.size), scalars, flags, delta, buf, cdf_marker, m_marker, v_marker
        )
    return True


class AdamHyperparameters(NamedTuple):
    """A group's hyperparameters as :func:`adam_one_from_hyperparameters` reads them (CProp's
    are 0 for Adam and AdamW), and ``largest``, the dtype's largest finite value."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    cprop_beta: float
    cprop_c: float
    cprop_eps: float
    largest: float


#: Columns of the hyperparameter row of :func:`adam_one_from_hyperparameters`.
_H = column_numbers(AdamHyperparameters)
HP_LR = _H.lr
HP_BETA1 = _H.beta1
HP_BETA2 = _H.beta2
HP_EPS = _H.eps
HP_WEIGHT_DECAY = _H.weight_decay
HP_CPROP_BETA = _H.cprop_beta
HP_CPROP_C = _H.cprop_c
HP_CPROP_EPS = _H.cprop_eps
HP_LARGEST = _H.largest
HP_COUNT = column_count(AdamHyperparameters)


def hyperparameter_row(group: dict, largest: float) -> AdamHyperparameters:
    """A group's hyperparameters in the columns ``HP_*`` (CProp's as 0 for Adam and AdamW),
    and ``largest``, the dtype's largest finite value."""
    beta1, beta2 = group["betas"]
    cprop = "cprop_beta" in group
    return AdamHyperparameters(
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        cprop_beta=group["cprop_beta"] if cprop else 0.0,
        cprop_c=group["cprop_c"] if cprop else 0.0,
        cprop_eps=group["cprop_eps"] if cprop else 0.0,
        largest=largest,
    )


def powers(group: dict, t: int) -> tuple[float, float, float, float]:
    """``beta1**t``, ``beta2**t``, ``cprop_beta**t``, ``cprop_beta**(t-1)``: Python's powers,
    which :func:`fill_scalars` needs to reproduce :func:`adam_scalars` to the bit."""
    beta1, beta2 = group["betas"]
    beta = group.get("cprop_beta", 0.0)
    return beta1**t, beta2**t, beta**t, beta ** (t - 1)


@njit(error_model="numpy", cache=True)
def fill_scalars(hyperparameters, beta_powers, out, cprop):
    """:func:`adam_scalars` (and CProp's) inside Numba, into ``out``, from the hyperparameter
    row ``hyperparameters`` (columns ``HP_*``) and the four powers ``beta_powers``
    (:func:`powers`): the same double-precision operations in the same order, rounded once to
    ``out``'s dtype."""
    lr, beta1, beta2, wd = (
        hyperparameters[HP_LR],
        hyperparameters[HP_BETA1],
        hyperparameters[HP_BETA2],
        hyperparameters[HP_WEIGHT_DECAY],
    )
    out[LR] = lr
    out[BETA1] = beta1
    out[ONE_MINUS_BETA1] = 1.0 - beta1
    out[BETA2] = beta2
    out[ONE_MINUS_BETA2] = 1.0 - beta2
    out[EPS] = hyperparameters[HP_EPS]
    out[WEIGHT_DECAY] = wd
    out[DECAY_FACTOR] = 1.0 - lr * wd
    out[NEG_STEP_SIZE] = -(lr / (1.0 - beta_powers[0]))
    out[BC2_SQRT] = math.sqrt(1.0 - beta_powers[1])
    if cprop:
        fill_cprop_scalars(
            hyperparameters[HP_CPROP_BETA],
            hyperparameters[HP_CPROP_C],
            hyperparameters[HP_CPROP_EPS],
            beta_powers[2],
            beta_powers[3],
            hyperparameters[HP_LARGEST],
            out,
            CPROP_BASE,
        )
    else:
        out[CPROP_BASE:] = 0.0


@njit(error_model="numpy", cache=True)
def adam_one_from_hyperparameters(
    p,
    g,
    arena,
    offset,
    hyperparameters,
    beta1_power,
    beta2_power,
    cprop_beta_power,
    cprop_beta_power_before,
    flags,
    check_finite,
    cdf_marker,
    m_marker,
    v_marker,
):
    """:func:`adam_one` with the scalars computed here from the hyperparameter row
    ``hyperparameters`` (columns ``HP_*``) and the powers ``beta1**t``, ``beta2**t``,
    ``cprop_beta**t``, ``cprop_beta**(t-1)`` (:func:`powers`; the steady-state path of a tiny
    step: no scalar table in Python)."""
    scalars = np.empty(SCALAR_COUNT, arena.dtype)
    fill_scalars(
        hyperparameters,
        (beta1_power, beta2_power, cprop_beta_power, cprop_beta_power_before),
        scalars,
        flags[CPROP] != 0,
    )
    return adam_one(p, g, arena, offset, scalars, flags, check_finite, cdf_marker, m_marker, v_marker)


@njit(error_model="numpy", cache=True)
def adam_serial(
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
def adam_parallel(
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
    m_marker,
    v_marker,
):
    """As :func:`adam_serial`, the chunks split into ``workers`` contiguous runs. (The variant's
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
            m_marker,
            v_marker,
        )
    return True


class AdamFamily(KernelFamily):
    """The declaration of Adam (``cprop=False``), AdamW (``decoupled=True``) and CProp-Adam
    (``cprop=True``): the arena rows :data:`FIELDS`, the columns :class:`AdamScalars` (then
    :class:`.scale.CPropScalars`) and :class:`AdamFlags`, and the kernels above. The NumPy rule
    is :class:`cprop_ref.optim.Adam`'s (``AdamW``, ``CPropAdam``)."""

    state_rows = FIELDS
    chunk = CHUNK
    no_one_loop = NO_ONE_LOOP

    def __init__(self, name: str, *, cprop: bool = False, decoupled: bool = False) -> None:
        self.name, self.cprop, self.decoupled = name, cprop, decoupled

    @property
    def kernels(self) -> Kernels:
        return Kernels(adam_one, adam_serial, adam_parallel)

    @property
    def steady(self) -> SteadyKernels:
        return SteadyKernels(hyperparameter_row, powers, adam_one_from_hyperparameters)

    def tensor_step(
        self, arena: FlatState, k: int, state: dict[str, Any], group: dict[str, Any], rows: dict
    ) -> TensorStep:
        fresh = not state
        t = 1 if fresh else state["step"] + 1
        new: dict[str, Any] = {"step": t}
        new["exp_avg"] = arena.adopt(k, "exp_avg", None if fresh else state["exp_avg"])
        new["exp_avg_sq"] = arena.adopt(k, "exp_avg_sq", None if fresh else state["exp_avg_sq"])
        old_max = state.get("max_exp_avg_sq")
        new["max_exp_avg_sq"] = arena.adopt(k, "max_exp_avg_sq", old_max) if group["amsgrad"] else old_max
        private_m = private_v = False
        if self.cprop:
            private_m, private_v = cprop_adam_private_moments(state, group)
            # A moment that stops being shared continues, private, from Adam's (CPropAdam._compute).
            if private_m:
                new["cprop_m"] = arena.adopt(k, "cprop_m", None if fresh else state.get("cprop_m", state["exp_avg"]))
            if private_v:
                source = None if fresh else state.get("cprop_v", state["exp_avg_sq"])
                new["cprop_v"] = arena.adopt(k, "cprop_v", source)
        key = (id(group), t, private_m, private_v)
        shared = rows.get(key)
        if shared is None:
            shared = rows[key] = self._rows(group, t, private_m, private_v, arena)
        return TensorStep(new, *shared)

    def _rows(
        self, group: dict[str, Any], t: int, private_m: bool, private_v: bool, arena: FlatState
    ) -> tuple[tuple, AdamFlags, tuple | None]:
        """The scalar row, the flag row and the one-loop variant of a tensor of ``group`` at its
        ``t``-th step with this sharing of the moments (the same for every such tensor)."""
        cdf_code = CDF_CODES[group["cprop_cdf"]] if self.cprop else 0
        if self.cprop:
            cprop_row = cprop_scalars(group["cprop_beta"], group["cprop_c"], group["cprop_eps"], t, arena.largest)
        else:
            cprop_row = NO_CPROP_SCALARS
        flags = AdamFlags(
            decoupled=self.decoupled,
            has_weight_decay=group["weight_decay"] != 0.0,
            amsgrad=group["amsgrad"],
            cprop=self.cprop,
            private_m=private_m,
            private_v=private_v,
            cdf=cdf_code,
            one_loop=False,
        )
        variant = one_loop_variant(self.cprop, group["amsgrad"], arena.single, cdf_code, private_m, private_v)
        return (*adam_scalars(group, t, self.decoupled), *cprop_row), flags, variant


#: The declarations of the Adam family's members (:data:`.family.KERNEL_FAMILIES`).
ADAM = AdamFamily("adam")
ADAMW = AdamFamily("adamw", decoupled=True)
CPROP_ADAM = AdamFamily("cprop_adam", cprop=True)
