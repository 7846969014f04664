"""CProp-Adam's and CProp-SGD's one loop per element against the chunked stages, bit for bit.

The Numba kernel of CProp-Adam (without AMSGrad, except the float64 ``normal``) runs in one
loop per element (``adam._cprop_adam_loop``), compiled once per CDF marker and per sharing of
the moments; the chunked stages (``_moments_loop``, ``cprop_z_loop``, ``scale_loop``, then the
update) remain for AMSGrad, the float64 normal, and as the reference the loop is held to. Both
perform the same IEEE-754 operations in the same order on the same scalars, so the bound is
**0**: every parameter and state element is the same bits (NaN compared as NaN, whatever its
payload). The tests draw configurations (every CDF, shared and private moments, weight decay,
``beta = 0``, ``eps = 0``, ``c = 0``; in the ``ci`` and ``dev`` profiles every CDF with private
moments and every sharing with ``bft``, the whole cross-product under ``thorough``), sizes (empty, one element, odd, several chunks) and
states with zeros, huge and tiny moments, and overflowed ones (``inf``), and check first that
the flags do route the draw through the one loop, so that the comparison is never vacuous.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref import CPropAdam, CPropSGD
from cprop_ref.cdf import CDF_NAMES
from cprop_ref.functional import cprop_adam_sharing_allowed
from cprop_ref.kernels import adam as adam_kernels
from cprop_ref.kernels import dispatch
from cprop_ref.kernels import sgd as sgd_kernels
from cprop_ref.kernels.scale import CDF_CODES, CDF_MARKERS, cprop_scalars
from tests.hypothesis_budget import examples
from tests.optimizer_catalogue import BY_NAME, CATALOGUE, DRAWS, KERNEL_DTYPES, swept_cdf

SIZES = [0, 1, 7, 33, 2047, 2048, 2049, 5000]
#: Long enough for the software-pipelined loop (``adam._cprop_adam_pipeline``): exactly its
#: shortest range, with a remainder for the block-by-block loop, and more blocks.
BLOCK = adam_kernels.PIPELINE_BLOCK
PIPELINED_SIZES = [
    adam_kernels.PIPELINE_MIN_BLOCKS * BLOCK,
    adam_kernels.PIPELINE_MIN_BLOCKS * BLOCK + 2049,
    11 * BLOCK + 5,
]


def assert_same_bits(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal bit patterns, except that any NaN equals any NaN (the payload of a NaN is not a
    number the tolerance policy speaks of)."""
    both_nan = np.isnan(a) & np.isnan(b)
    view = np.uint32 if a.dtype == np.float32 else np.uint64
    differ = (a.view(view) != b.view(view)) & ~both_nan
    if differ.any():
        k = int(np.flatnonzero(differ)[0])
        raise AssertionError(f"{what}: element {k} differs: {a[k]!r} (one loop) vs {b[k]!r} (stages)")


def assert_runs_same_bits(params_one: list, states_one: list, params_stages: list, states_stages: list) -> None:
    """Every parameter and every per-parameter state entry of two runs: the same bits."""
    assert len(params_one) == len(params_stages) and len(states_one) == len(states_stages)
    for k, (a, b) in enumerate(zip(params_one, params_stages)):
        assert_same_bits(a, b, f"parameter {k}")
    for k, (one, stages) in enumerate(zip(states_one, states_stages)):
        assert sorted(one) == sorted(stages), f"state {k}: {sorted(one)} != {sorted(stages)}"
        for name, value in one.items():
            if isinstance(value, np.ndarray):
                assert_same_bits(value, stages[name], f"state {k}.{name}")
            else:
                assert value == stages[name], f"state {k}.{name}"


def initial_state(rng: np.random.Generator, n: int, dtype: Any, extreme: bool, at: tuple[int, ...] = ()) -> np.ndarray:
    """Five state rows (Adam's m, v, AMSGrad's maximum, CProp's m, v) with ``v >= m^2``, and,
    when ``extreme``, zeros, overflowed, huge and tiny entries scattered in, and an overflowed
    moment at each index of ``at`` (an element whose ``z`` meets an edge of the range)."""
    m = rng.standard_normal((2, n)) * 10.0 ** rng.integers(-3, 3, (2, n))
    v = m**2 * (1.0 + rng.random((2, n)))
    arena = np.stack([m[0], v[0], v[0], m[1], v[1]]).astype(dtype)
    if extreme and n:
        big = np.finfo(dtype).max
        for row in range(5):
            picks = rng.integers(0, n, 4)
            arena[row, picks[0]] = 0.0
            arena[row, picks[1]] = np.inf if row in (1, 4) else big
            arena[row, picks[2]] = big / 3 if row in (0, 3) else big
            arena[row, picks[3]] = np.finfo(dtype).tiny
    for k in at:
        arena[[0, 3], k] = np.finfo(dtype).max  # m_hat overflows: the guarded z, in the edge pass
    return arena


#: The optimizers with a one loop, from the optimizer catalogue (``tests/optimizer_catalogue.py``).
CPROP_ADAM, CPROP_SGD = BY_NAME["CPropAdam"], BY_NAME["CPropSGD"]
assert [info.name for info in CATALOGUE if info.one_loop] == ["CPropSGD", "CPropAdam"], "a new one loop: test it here"


@st.composite
def configurations(draw: Any) -> dict[str, Any]:
    """CProp-Adam without AMSGrad (the one loop's domain); the pairs of betas share both
    moments, one, or none with CProp's (``cprop_beta``)."""
    cprop_beta = draw(st.sampled_from(DRAWS["cprop_beta"]))
    betas = draw(st.sampled_from([(0.9, 0.999), (cprop_beta, cprop_beta), (0.9, cprop_beta), (cprop_beta, 0.99)]))
    cfg = {
        "lr": draw(st.sampled_from(DRAWS["lr"])),
        "betas": betas,
        "eps": draw(st.sampled_from(DRAWS["eps"])),
        "weight_decay": draw(st.sampled_from(DRAWS["weight_decay"])),
        "amsgrad": False,
        "cprop_beta": cprop_beta,
        "cprop_c": draw(st.sampled_from(DRAWS["cprop_c"])),
        "cprop_eps": draw(st.sampled_from(DRAWS["cprop_eps"])),
        "cprop_cdf": draw(st.sampled_from(CPROP_ADAM.cdfs)),
    }
    # Every CDF with private moments, every sharing with one CDF; the cross-product (a
    # compilation per CDF x sharing x dtype) under the thorough profile.
    cfg["cprop_cdf"] = swept_cdf(cfg["cprop_cdf"], privacy(cfg) == ANCHOR_PRIVACY)
    return cfg


#: The sharing every CDF is drawn with in ``ci`` and ``dev``: both moments CProp's own (weight
#: decay on, or betas unlike ``cprop_beta``), the sharing drawn most often.
ANCHOR_PRIVACY = (True, True)


def privacy(cfg: dict[str, Any]) -> tuple[bool, bool]:
    """Whether CProp keeps its own first and second moment (not Adam's): the library's rule."""
    share_m, share_v = cprop_adam_sharing_allowed(cfg)
    return not share_m, not share_v


def flag_row(cfg: dict[str, Any], one_loop: bool) -> np.ndarray:
    """The flags ``dispatch`` builds for CProp-Adam (never decoupled)."""
    private_m, private_v = privacy(cfg)
    flags = np.zeros(adam_kernels.FLAG_COUNT, np.int64)
    flags[adam_kernels.HAS_WEIGHT_DECAY] = cfg["weight_decay"] != 0.0
    flags[adam_kernels.CPROP] = 1
    flags[adam_kernels.PRIVATE_M] = private_m
    flags[adam_kernels.PRIVATE_V] = private_v
    flags[adam_kernels.CDF] = CDF_CODES[cfg["cprop_cdf"]]
    flags[adam_kernels.ONE_LOOP] = one_loop
    return flags


def scalar_row(cfg: dict[str, Any], t: int, dtype: Any) -> np.ndarray:
    row = adam_kernels.adam_scalars(cfg, t, False)
    row += cprop_scalars(cfg["cprop_beta"], cfg["cprop_c"], cfg["cprop_eps"], t, float(np.finfo(dtype).max))
    with np.errstate(over="ignore"):
        return np.array(row, dtype=dtype)


@settings(max_examples=examples(150), deadline=None)
@given(
    cfg=configurations(),
    dtype=st.sampled_from(CPROP_ADAM.kernel_dtypes),
    n=st.sampled_from(SIZES),
    extreme=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_loop_is_the_stages_bit_for_bit(cfg, dtype, n, extreme, seed):
    _assert_one_loop_is_the_stages(cfg, dtype, n, extreme, seed)


@settings(max_examples=examples(40), deadline=None)
@given(
    cfg=configurations(),
    dtype=st.sampled_from(CPROP_ADAM.kernel_dtypes),
    n=st.sampled_from(PIPELINED_SIZES),
    extreme=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_pipelined_one_loop_is_the_stages_bit_for_bit(cfg, dtype, n, extreme, seed):
    """Ranges long enough for the pipelined loop, with edge elements at the first and last
    element of its first and last block, of the next to last, and in the remainder: each is
    redone after the pass that steps its block (with the block after it already half done)."""
    count = n // BLOCK
    at = (0, BLOCK - 1, BLOCK, (count - 1) * BLOCK - 1, (count - 1) * BLOCK, count * BLOCK - 1, n - 1)
    _assert_one_loop_is_the_stages(cfg, dtype, n, extreme, seed, at)


def _assert_one_loop_is_the_stages(
    cfg: dict[str, Any], dtype: Any, n: int, extreme: bool, seed: int, at: tuple[int, ...] = ()
) -> None:
    single = dtype == np.float32
    variant = adam_kernels.one_loop_variant(True, False, single, CDF_CODES[cfg["cprop_cdf"]], *privacy(cfg))
    routed = variant is not None
    assert routed == (single or cfg["cprop_cdf"] != "normal"), "this draw is not routed as documented"
    one = (flag_row(cfg, routed), variant if routed else adam_kernels.NO_ONE_LOOP)
    stages = (flag_row(cfg, False), adam_kernels.NO_ONE_LOOP)
    rng = np.random.default_rng(seed)
    arena = initial_state(rng, n, dtype, extreme, at)
    p = (rng.standard_normal(n) * 10.0 ** rng.integers(-2, 3)).astype(dtype)
    runs = {"one loop": (p.copy(), arena.copy(), one), "stages": (p.copy(), arena.copy(), stages)}
    for t in range(1, 5):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 4, n)).astype(dtype)
        g[rng.random(n) < 0.2] = 0.0
        scalars = scalar_row(cfg, t, dtype)
        for params, state, (flags, markers) in runs.values():
            with np.errstate(all="ignore"):
                assert adam_kernels.adam_one(params, g, state, 0, scalars, flags, True, *markers)
    (p_one, a_one, _), (p_stages, a_stages, _) = runs.values()
    assert_same_bits(p_one, p_stages, "parameter")
    for row, name in enumerate(adam_kernels.FIELDS):
        assert_same_bits(a_one[row], a_stages[row], name)


def _parallel_launch_cases() -> list:
    """Every dtype x CDF; by default only ``bft`` in each dtype, the rest under ``-m slow``.
    The parallel launch's own work (runs of chunks per thread, a tensor's chunks merged into one
    call) is the same code for every CDF, and each CDF's one loop is held to the stages bit for
    bit by the serial tests above; each parallel kernel variant costs a compilation of its own
    (about 5 to 10 s of CPU on a cold cache), hence the sweep in the slow set."""
    cases = []
    for dtype in CPROP_ADAM.kernel_dtypes:
        for cdf in CPROP_ADAM.cdfs:
            marks = () if cdf == "bft" else (pytest.mark.slow,)
            cases.append(pytest.param(cdf, dtype, marks=marks, id=f"{np.dtype(dtype).name}-{cdf}"))
    return cases


@pytest.mark.parametrize(("cdf", "dtype"), _parallel_launch_cases())
def test_many_tensors_through_the_parallel_launch_are_the_stages_bit_for_bit(monkeypatch, cdf, dtype):
    """Three tensors over two threads' runs of chunks (a tensor's chunks merged into one call
    in the one loop), one without a gradient on some steps; the whole state compared."""
    sizes = [5, 70_000, 3_000]
    results = []
    for one_loop in (True, False):
        monkeypatch.setattr(dispatch, "ONE_LOOP", one_loop)
        rng = np.random.default_rng(7)
        params = [rng.standard_normal(s).astype(dtype) for s in sizes]
        opt = CPropAdam(params, lr=0.1, cprop_cdf=cdf, cprop_c=1.5)
        for step in range(5):
            grads = [(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3, s)).astype(dtype) for s in sizes]
            if step % 2:
                grads[2] = None
            opt.step(grads)
        results.append((params, opt.state_dict()))
    (params_one, state_one), (params_stages, state_stages) = results
    assert len(state_one["state"]) == len(sizes)
    assert_runs_same_bits(params_one, state_one["state"], params_stages, state_stages["state"])


def _sgd_run(cfg: dict[str, Any], dtype: Any, sizes: list[int], extreme: bool, seed: int, one_loop: bool) -> tuple:
    """Four CProp-SGD steps with or without the one loop; the parameters and the states."""
    saved = dispatch.ONE_LOOP
    dispatch.ONE_LOOP = one_loop
    try:
        rng = np.random.default_rng(seed)
        params = [(rng.standard_normal(n) * 10.0 ** rng.integers(-2, 3)).astype(dtype) for n in sizes]
        opt = CPropSGD(params, **cfg)
        for step in range(4):
            grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-4, 4, n)).astype(dtype) for n in sizes]
            if step == 2:
                grads[0] = None
            with np.errstate(all="ignore"):
                opt.step(grads)
            if step == 0 and extreme:  # overflowed, huge, tiny and zero CProp moments from here on
                for k, n in enumerate(sizes):
                    rows = initial_state(rng, n, dtype, True)
                    opt.state[k]["cprop_m"][...] = rows[3]
                    opt.state[k]["cprop_v"][...] = rows[4]
        return params, [dict(opt.state[k]) for k in range(len(sizes))]
    finally:
        dispatch.ONE_LOOP = saved


@st.composite
def sgd_configurations(draw: Any) -> dict[str, Any]:
    momentum = draw(st.sampled_from(DRAWS["momentum"]))
    nesterov = momentum > 0.0 and draw(st.booleans())
    return {
        "lr": draw(st.sampled_from(DRAWS["lr"])),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else draw(st.sampled_from(DRAWS["dampening"])),
        "nesterov": nesterov,
        "weight_decay": draw(st.sampled_from(DRAWS["weight_decay"])),
        "cprop_beta": draw(st.sampled_from(DRAWS["cprop_beta"])),
        "cprop_c": draw(st.sampled_from(DRAWS["cprop_c"])),
        "cprop_eps": draw(st.sampled_from(DRAWS["cprop_eps"])),
        "cprop_cdf": draw(st.sampled_from(CPROP_SGD.cdfs)),
    }


@settings(max_examples=examples(100), deadline=None)
@given(
    cfg=sgd_configurations(),
    dtype=st.sampled_from(CPROP_SGD.kernel_dtypes),
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=3),
    extreme=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_cprop_sgd_one_loop_is_the_stages_bit_for_bit(cfg, dtype, sizes, extreme, seed):
    """CProp-SGD through the optimizer (single-tensor and many-tensor launches), from states
    with extreme CProp moments; momentum from its first step on, gradients missing on some steps."""
    single = dtype == np.float32
    variant = sgd_kernels.one_loop_variant(True, single, CDF_CODES[cfg["cprop_cdf"]], cfg["momentum"] != 0.0)
    assert (variant is not None) == (single or cfg["cprop_cdf"] != "normal"), "not routed as documented"
    results = [_sgd_run(cfg, dtype, sizes, extreme, seed, one_loop) for one_loop in (True, False)]
    (params_one, states_one), (params_stages, states_stages) = results
    assert_runs_same_bits(params_one, states_one, params_stages, states_stages)


def _x86_with_avx() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return " avx2 " in handle.read().replace("\n", " ")
    except OSError:
        return False


# The functions that hold the loops (the one loops' functions call them block by block, or
# pass by pass), and a call of each on zeros.
LOOPS = {
    "adam": (
        adam_kernels._cprop_adam_block,
        lambda loop, marker, a: loop(marker, a, a, a, a, a, None, np.zeros(40, a.dtype), False),
    ),
    "adam, pipelined": (
        adam_kernels._cprop_adam_pipeline_pass,
        lambda loop, marker, a: loop(
            marker,
            a,
            a,
            a,
            a,
            a,
            None,
            np.zeros((2, a.size), a.dtype),
            a,
            np.zeros((2, a.size), a.dtype),
            np.zeros(40, a.dtype),
            False,
        ),
    ),
    "sgd": (
        sgd_kernels._cprop_sgd_block,
        lambda loop, marker, a: loop(marker, a, a, a, a, a, np.zeros(40, a.dtype), False, False, False),
    ),
}


@pytest.mark.skipif(not _x86_with_avx(), reason="checks x86 AVX assembly")
@pytest.mark.parametrize("family", list(LOOPS))
@pytest.mark.parametrize("cdf", CDF_NAMES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_the_one_loop_is_vectorised(family, cdf, dtype):
    """The one loop is only fast while LLVM vectorises it, and that rests on LLVM inlining the
    whole chain down to the exponential (one more level of helper calls once made it stop, and
    the float32 normal ran ten times slower with every result still right). The compiled loop
    must hold packed divisions (Adam's or SGD's update, z, the CDF) in 256- or 512-bit registers."""
    info = CPROP_SGD if family == "sgd" else CPROP_ADAM
    reason = info.skip_reason("test_the_one_loop_is_vectorised", dtype=dtype, cdf=cdf)
    if reason is not None:
        pytest.skip(reason)
    from numba import njit

    source, call = LOOPS[family]
    loop = njit(error_model="numpy")(source.py_func)  # a fresh compilation: cached code has no assembly
    call(loop, CDF_MARKERS[CDF_CODES[cdf]], np.zeros(64, dtype))
    asm = next(iter(loop.inspect_asm().values()))
    packed = "vdivps" if dtype == np.float32 else "vdivpd"
    vector_divisions = re.findall(rf"{packed}\s+[^\n]*%[yz]mm", asm)
    assert len(vector_divisions) >= 2, f"the {family} loop for {cdf} ({np.dtype(dtype).name}) is not vectorised"
