"""The non-finite gradient policy of every optimizer.

- ``raise`` (default): a NaN or infinite gradient raises ``ValueError`` naming the
  parameter (index, group, index in the group) and the first offending element in C
  order, and the step changes nothing (parameters and state identical, byte for byte).
- ``skip``: that parameter and its state are untouched; every other parameter steps
  exactly as if the skipped one had been given ``None``.
- ``propagate``: the formulas are applied as they are. Checked against torch for the
  base optimizers (same NaN / inf positions and signs) and against a direct
  transcription of ``docs/algorithm.md`` for CProp.

Bad inputs tried (``docs/reliability.md``): the exhaustive grid below is
9 optimizers x 3 dtypes x 3 values (NaN, +inf, -inf) x 3 positions = 243 steps for
``raise`` and as many for ``skip``, plus the hypothesis-drawn cases.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cprop_ref import SGD, CProp
from tests.optimizer_catalogue import BY_NAME
from tests.reliability_support import (
    BACKENDS,
    DTYPES,
    INFOS,
    OPTIMIZERS,
    PARAM_SHAPES,
    assert_identical,
    build,
    make_grads,
    snapshot,
)

BAD_VALUES = (np.nan, np.inf, -np.inf)
#: (parameter index, flat element index): first element of the first parameter, last
#: element of the 2-D parameter in group 0, the 0-d parameter of group 1.
POSITIONS = ((0, 0), (1, 3), (2, 0))
PARAM_NAMES = ("parameter 0 (group 0, index 0)", "parameter 1 (group 0, index 1)", "parameter 2 (group 1, index 0)")


def _warm_up(optimizer, dtype, steps: int = 3, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        optimizer.step(make_grads(dtype, rng))


def _poison(grads: list[np.ndarray], k: int, flat: int, value: float) -> tuple[int, ...]:
    """Put ``value`` at flat index ``flat`` of ``grads[k]``; return that element's index tuple."""
    index = np.unravel_index(flat, PARAM_SHAPES[k]) if PARAM_SHAPES[k] else ()
    grads[k][index] = value
    return tuple(int(i) for i in index)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_raise_names_parameter_and_element_and_changes_nothing(kind, dtype, backend):
    optimizer, _ = build(kind, dtype, backend=backend)
    _warm_up(optimizer, dtype)
    rng = np.random.default_rng(2)
    for value in BAD_VALUES:
        for k, flat in POSITIONS:
            before = snapshot(optimizer)
            grads = make_grads(dtype, rng)
            index = _poison(grads, k, flat, value)
            with pytest.raises(ValueError) as info:
                optimizer.step(grads)
            message = str(info.value)
            assert PARAM_NAMES[k] in message
            assert f"non-finite value {float(value)!r} at element {index}" in message
            assert "nothing was changed" in message
            assert_identical(snapshot(optimizer), before, f"{kind} after a refused step")
    # The optimizer still works after the refusals, and from the same state.
    optimizer.step(make_grads(dtype, rng))


@given(
    kind=st.sampled_from(list(OPTIMIZERS)),
    dtype=st.sampled_from(DTYPES),
    backend=st.sampled_from(BACKENDS),
    bad=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.sampled_from(BAD_VALUES)), min_size=1, max_size=6),
)
def test_raise_reports_the_first_bad_element_in_parameter_then_c_order(kind, dtype, backend, bad):
    optimizer, _ = build(kind, dtype, backend=backend)
    _warm_up(optimizer, dtype, steps=1)
    grads = make_grads(dtype, np.random.default_rng(3))
    for k, flat, value in bad:
        _poison(grads, k, flat % max(1, grads[k].size), value)
    first_k = min(k for k, _, _ in bad)
    bad_mask = ~np.isfinite(grads[first_k])
    first_index = tuple(int(i) for i in np.argwhere(bad_mask)[0]) if grads[first_k].ndim else ()
    before = snapshot(optimizer)
    with pytest.raises(ValueError) as info:
        optimizer.step(grads)
    message = str(info.value)
    assert PARAM_NAMES[first_k] in message
    assert f"non-finite value {float(grads[first_k][first_index])!r} at element {first_index}" in message
    assert f"({int(bad_mask.sum())} non-finite in all)" in message
    assert_identical(snapshot(optimizer), before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_leaves_the_parameter_alone_and_steps_the_others_exactly(kind, dtype, backend):
    """A skipped parameter is exactly a ``None`` gradient: compared, byte for byte, with
    an optimizer in ``raise`` mode given ``None`` for that parameter."""
    skipping, skipping_params = build(kind, dtype, nonfinite="skip", backend=backend)
    reference, reference_params = build(kind, dtype, nonfinite="raise", backend=backend)
    _warm_up(skipping, dtype)
    _warm_up(reference, dtype)
    rng = np.random.default_rng(4)
    for value in BAD_VALUES:
        for k, flat in POSITIONS:
            grads = make_grads(dtype, rng)
            untouched = np.array(skipping_params[k], copy=True)
            state_before = _states_of(snapshot(skipping)[1], k)
            clean = [g.copy() for g in grads]
            clean[k] = None
            _poison(grads, k, flat, value)
            skipping.step(grads)
            reference.step(clean)
            assert skipping_params[k].tobytes() == untouched.tobytes()
            assert_identical(_states_of(snapshot(skipping)[1], k), state_before, f"state of parameter {k}")
            assert_identical(snapshot(skipping)[0], snapshot(reference)[0], f"{kind} parameters")
            _assert_same_state(skipping, reference)


def _states_of(tree: dict, k: int) -> list[dict]:
    """Parameter ``k``'s state: the optimizer's, and the base optimizer's for the wrapper."""
    return [tree["state"][k]] + ([tree["base"]["state"][k]] if "base" in tree else [])


def _assert_same_state(a, b) -> None:
    """State dicts equal except for the recorded ``nonfinite`` policy."""
    sa, sb = a.state_dict(), b.state_dict()
    for tree in (sa, sb, sa.get("base", {}), sb.get("base", {})):
        tree.pop("nonfinite", None)
    assert_identical(sa, sb)


# -- propagate ------------------------------------------------------------------------

TORCH_PAIRS = {
    "SGD": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "Adam": ("Adam", dict(lr=0.01, weight_decay=0.01)),
    "AdamW-amsgrad": ("AdamW", dict(lr=0.01, amsgrad=True)),
}


def _nonfinite_grad_sequence(rng: np.random.Generator, steps: int, size: int) -> list[np.ndarray]:
    """Gradients where a few elements turn NaN, +inf or -inf at some steps (and a few
    elements get +inf then -inf, the inf - inf case)."""
    grads = []
    for t in range(steps):
        g = 0.3 + rng.standard_normal(size)
        if t in (2, 5):
            g[rng.choice(size, 3, replace=False)] = rng.choice(BAD_VALUES, 3)
        if t == 3:
            g[0] = np.inf
        if t == 4:
            g[0] = -np.inf
        grads.append(g)
    return grads


def _assert_same_nonfinite_pattern(ours: np.ndarray, theirs: np.ndarray, rtol: float, where: str) -> None:
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), f"{where}: NaN positions differ"
    assert np.array_equal(np.isposinf(ours), np.isposinf(theirs)), f"{where}: +inf positions differ"
    assert np.array_equal(np.isneginf(ours), np.isneginf(theirs)), f"{where}: -inf positions differ"
    finite = np.isfinite(ours)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=rtol, atol=0.0, err_msg=where)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(TORCH_PAIRS))
def test_propagate_matches_torch_on_nonfinite_gradients(kind, backend):
    """torch applies its formulas to NaN and inf as they are; so must ``propagate``.

    Tolerance on the finite elements: float64, 8 steps of a handful of roundings each,
    differently ordered than torch's (lerp, addcdiv): ``rtol = 1e-12`` is about 4500 ulp,
    far above those roundings and far below any formula difference.
    """
    torch = pytest.importorskip("torch")
    size = 12
    rng = np.random.default_rng(5)
    start = rng.standard_normal(size)
    grads = _nonfinite_grad_sequence(rng, 8, size)
    torch_name, hyper = TORCH_PAIRS[kind]
    ours_param = start.copy()
    optimizer = INFOS[kind].make([ours_param], **hyper, backend=backend, nonfinite="propagate")
    theirs_param = torch.tensor(start.copy(), dtype=torch.float64, requires_grad=True)
    theirs = getattr(torch.optim, torch_name)([theirs_param], **hyper)
    for t, g in enumerate(grads):
        optimizer.step([g.copy()])
        theirs_param.grad = torch.tensor(g)
        theirs.step()
        _assert_same_nonfinite_pattern(ours_param, theirs_param.detach().numpy(), 1e-12, f"{kind} step {t}")


def _spec_cprop_scale(m, v, t, beta, c, eps):
    """``docs/algorithm.md``, "One step of CProp", for the ``normal`` CDF, written out directly (float64)."""
    import math

    from scipy.special import erfc

    b = 1.0 - beta**t
    m_hat, v_hat = m / b, v / b
    n = b / (1.0 - beta)
    se = np.sqrt(np.maximum(v_hat - m_hat**2, 0.0) / (n - 1.0 + eps)) + eps
    p = 0.5 * erfc(m_hat / (se * math.sqrt(2.0)))
    return np.minimum(2.0 * c * np.abs(p - 0.5), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrapped", [False, True], ids=["CPropSGD", "CProp(SGD)"])
def test_propagate_follows_the_spec_on_nonfinite_gradients(wrapped, backend):
    """CProp-SGD (momentum) and the wrapper against the formulas of ``docs/algorithm.md`` written out here.

    The NaN / inf pattern must be identical; finite elements agree to ``rtol = 1e-12``
    (float64: the erfc and the EMAs round differently in the two transcriptions, a few
    hundred ulp at most after 8 steps of lr 0.1). Gradients stay far from overflow, so
    the project's limit rules (overflow of ``v``, eps = 0) do not apply here.
    """
    size, beta, c, eps, lr, momentum = 12, 0.9, 1.0, 1e-8, 0.1, 0.9
    rng = np.random.default_rng(6)
    start = rng.standard_normal(size)
    grads = _nonfinite_grad_sequence(rng, 8, size)
    param = start.copy()
    cprop = {"cprop_beta": beta, "cprop_c": c, "cprop_eps": eps, "cprop_cdf": "normal"}
    optimizer = BY_NAME["CProp(SGD)" if wrapped else "CPropSGD"].make(
        [param], lr=lr, momentum=momentum, **cprop, backend=backend, nonfinite="propagate"
    )
    x, m, v, buf = start.copy(), np.zeros(size), np.zeros(size), None
    with np.errstate(all="ignore"):
        for t, g in enumerate(grads, start=1):
            optimizer.step([g.copy()])
            m = beta * m + (1 - beta) * g
            v = beta * v + (1 - beta) * g * g
            s = _spec_cprop_scale(m, v, t, beta, c, eps)
            buf = g.copy() if buf is None else momentum * buf + g
            if wrapped:
                x = x + ((x - lr * buf) - x) * s
            else:
                x = x - lr * buf * s
            _assert_same_nonfinite_pattern(param, x, 1e-12, f"step {t}")
    assert np.isnan(param).any() and np.isfinite(param).any()  # the test did exercise both


def test_nonfinite_policy_is_validated_and_kept_in_checkpoints(tmp_path):
    params = [np.zeros(2)]
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        SGD(params, lr=0.1, nonfinite="ignore")
    with pytest.raises(ValueError, match="nonfinite"):
        CProp(SGD(params, lr=0.1), nonfinite=None)
    for kind in OPTIMIZERS:
        saved, _ = build(kind, np.float64, nonfinite="skip")
        saved.save(tmp_path / "c.npz")
        loaded, _ = build(kind, np.float64, nonfinite="raise")
        loaded.load(tmp_path / "c.npz")
        grads = [np.full(shape, np.nan) for shape in PARAM_SHAPES]
        loaded.step(grads)  # skipped, not raised: the policy came back with the checkpoint
        assert re.fullmatch("skip", loaded.state_dict()["nonfinite"])
