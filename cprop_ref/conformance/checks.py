"""The three checks: open loop, one step from an injected state, closed loop.

Each check runs the reference (:mod:`.reference`) and the port side by side and compares,
after every step, every element of the parameters, and where the port exposes them the
scales and CProp's moments, against the bounds of :mod:`.bounds` and
:mod:`cprop_ref.tolerance`. The first element outside its bound raises
:class:`~.report.ConformanceMismatch`; otherwise the check returns its :class:`~.report.Coverage`.

Comparison rule, per element: ``|port - reference| <= bound``, or both equal (``inf``
included), or both NaN. A scale element whose bound is 1 is ill-conditioned (the scale
is discontinuous there in floating point): it is counted, not compared, unless the
port's value is impossible whatever the rounding (NaN where the reference is a number,
or outside [0, 1]). A parameter whose bound is infinite is counted the same way.
"""

from __future__ import annotations

import math
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .bounds import RunBounds
from .config import PortConfig
from .dtypes import storage_floor, storage_roundoff, to_storage
from .layouts import apply_layouts, gradient_layouts
from .protocol import MissingMethod, Unsupported, optional
from .reference import ReferenceRun
from .report import ConformanceMismatch, Coverage, Mismatch, array_literal, arrays_literal, snippet, state_literal

Grads = Sequence[np.ndarray | None]


class _Comparer:
    """Compares one quantity of one tensor and raises on the first element out of bounds."""

    def __init__(self, check: str, config: PortConfig, coverage: Coverage, make_snippet: Callable[[int], str]) -> None:
        self.check = check
        self.config = config
        self.coverage = coverage
        self.make_snippet = make_snippet
        self.unconstrained = 0  # in this case only (the coverage sums over cases)
        self.start_t = 0  # the injected state's step count (injected check), for the headline
        self.layouts: Sequence[str] | None = None  # the tensors' memory layouts, named in a param's report

    def fail(
        self,
        step: int,
        tensor: int,
        element: tuple[int, ...],
        quantity: str,
        port: float,
        ref: float,
        bound: float,
        detail: str = "",
        trace: str = "",
    ) -> None:
        raise ConformanceMismatch(
            Mismatch(
                check=self.check,
                step=step,
                tensor=tensor,
                element=element,
                quantity=quantity,
                port_value=port,
                reference_value=ref,
                bound=bound,
                config=self.config,
                detail=detail,
                snippet=self.make_snippet(step),
                unconstrained=self.unconstrained,
                trace=trace,
                start_t=self.start_t,
            )
        )

    def compare(
        self,
        step: int,
        tensor: int,
        quantity: str,
        port: Any,
        ref: Any,
        bound: Any,
        excused: Any = None,
        note: str = "",
    ) -> None:
        """``excused``: elements where a difference belongs to the wrapped framework optimizer,
        not to CProp (:attr:`.bounds.TensorBounds.base_overflow`): counted, never compared."""
        ref = np.asarray(ref)
        port = np.asarray(port)
        if port.shape != ref.shape:
            self.fail(
                step,
                tensor,
                (),
                quantity,
                float("nan"),
                float("nan"),
                0.0,
                f"the port's {quantity} has shape {port.shape}, the reference's {ref.shape}",
            )
        p64, r64 = port.astype(np.float64), ref.astype(np.float64)
        bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), r64.shape)
        with np.errstate(invalid="ignore"):
            diff = np.abs(p64 - r64)
            same = (p64 == r64) | (np.isnan(p64) & np.isnan(r64))
            impossible = np.isnan(p64) != np.isnan(r64)
            if quantity == "scale":
                impossible |= (p64 < 0.0) | (p64 > 1.0)
                unconstrained = bound >= 1.0
            else:
                unconstrained = ~np.isfinite(bound)
            bad = (~same) & (impossible | (~unconstrained & ~(diff <= bound)))
        if excused is not None and np.any(excused):
            excused = np.broadcast_to(excused, bad.shape)
            self.coverage.base_differences += int(np.count_nonzero(excused & ~same))
            bad = bad & ~excused
        self.coverage.add_compared(quantity, int(np.count_nonzero(~unconstrained)))
        if quantity in ("scale", "param"):
            self.unconstrained += int(np.count_nonzero(unconstrained))
            self.coverage.unconstrained += int(np.count_nonzero(unconstrained))
        if bad.any():
            element = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
            detail = ""
            if quantity == "scale" and (p64[element] < 0.0 or p64[element] > 1.0):
                detail = "a scale outside [0, 1] is wrong whatever the rounding"
            elif impossible[element]:
                detail = "NaN on one side only is wrong whatever the rounding"
            elif unconstrained[element]:
                detail = "unconstrained element"
            if quantity == "param" and self.layouts is not None and self.layouts[tensor] != "contiguous":
                note = "; ".join(
                    x for x in (note, f"the port was handed this tensor in layout {self.layouts[tensor]!r}") if x
                )
            detail = "; ".join(x for x in (note, detail) if x)
            self.fail(
                step, tensor, element, quantity, float(p64[element]), float(r64[element]), float(bound[element]), detail
            )


#: Seconds one call into the port (building it, a step, a read-out) may take before the
#: harness reports it as hanging (``cprop-ref verify --time-limit``); ``None``: no limit.
CALL_TIME_LIMIT: list[float | None] = [60.0]


class PortTimeout(Exception):
    """Raised inside a port call that ran past :data:`CALL_TIME_LIMIT`."""


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the calling thread after ``seconds`` with :class:`PortTimeout` (POSIX main
    thread only: SIGALRM; elsewhere no limit). A hang inside C code that does not return to
    the interpreter cannot be interrupted this way."""
    usable = (
        seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise PortTimeout(f"did not return within {seconds:g} s (the per-call time limit)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def _port_call(comparer: _Comparer, step: int, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, a call into the port; a crash or a hang is a finding, reported as a mismatch of
    quantity ``exception`` with the port's own traceback (the harness's frames left out)."""
    try:
        with _time_limit(CALL_TIME_LIMIT[0]):
            return fn()
    except Unsupported:
        raise
    except ConformanceMismatch:
        raise
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        own = [f for f in frames if "cprop_ref/conformance/" not in f.filename.replace("\\", "/")]
        trace = "".join(traceback.format_list(own[-6:])).rstrip()
        comparer.fail(
            step,
            -1,
            (),
            "exception",
            float("nan"),
            float("nan"),
            0.0,
            f"{what}: {type(err).__name__}: {err}",
            trace=trace,
        )


def _note_config_paths(coverage: Coverage, config: PortConfig, layouts: Sequence[str] | None) -> None:
    cp, hp = config.cprop(), config.base_update()
    paths = coverage.paths
    paths.update(
        name
        for name, hit in (
            ("beta = 0 (n = 1 at every step)", cp["beta"] == 0.0),
            ("beta near 1 (>= 0.999)", cp["beta"] >= 0.999),
            ("c = 0", cp["c"] == 0.0),
            ("eps = 0", cp["eps"] == 0.0),
            (f"cdf {cp['cdf']}", True),
            ("momentum with dampening", hp.get("momentum", 0.0) > 0.0 and hp.get("dampening", 0.0) > 0.0),
            ("Nesterov", bool(hp.get("nesterov", False))),
            ("AMSGrad", bool(hp.get("amsgrad", False))),
            ("weight decay >= 1", hp.get("weight_decay", 0.0) >= 1.0),
            ("16-bit parameters", config.dtype in ("float16", "bfloat16")),
            ("non-contiguous layouts", layouts is not None and any(x != "contiguous" for x in layouts)),
        )
        if hit
    )
    if "betas" in hp:
        beta1, beta2 = hp["betas"]
        raw = config.optimizer == "CPropAdam" and hp["weight_decay"] == 0.0
        if raw and beta1 == cp["beta"]:
            paths.add("CPropAdam beta1 == cprop_beta (shared m)")
        if raw and beta2 == cp["beta"]:
            paths.add("CPropAdam beta2 == cprop_beta (shared v)")
        if 1.0 - cp["beta"] in (beta1, beta2):
            paths.add("Adam beta == 1 - cprop_beta")


@np.errstate(all="ignore")
def _note_state_paths(
    coverage: Coverage,
    config: PortConfig,
    states: Sequence[dict[str, Any]],
    scales: Sequence[Any],
    grads: Grads,
    before: Sequence[np.ndarray],
    after: Sequence[np.ndarray],
) -> None:
    beta = config.cprop()["beta"]
    paths = coverage.paths
    for st, s, g, p0, p1 in zip(states, scales, grads, before, after):
        if g is None or s is None or not st:
            continue
        t = int(st["step"])
        m, v = np.asarray(st["cprop_m"], np.float64), np.asarray(st["cprop_v"], np.float64)
        b = 1.0 - beta**t
        checks = (
            ("t > 1000", t > 1000),
            ("v overflowed to inf", bool(np.isinf(v).any())),
            ("a variance of exactly 1.0", bool(np.any(v / b - (m / b) ** 2 == 1.0))),
            ("scale exactly 0", bool(np.any(np.asarray(s) == 0.0))),
            ("scale saturated at 1", bool(np.any(np.asarray(s) == 1.0))),
            ("zero gradient", bool(np.any(np.asarray(g) == 0.0))),
            ("update overflowed to inf", bool(np.any(np.isinf(p1) & np.isfinite(p0)))),
        )
        paths.update(name for name, hit in checks if hit)


def _read_outs(
    comparer: _Comparer, step: int, run: Any, shapes: Sequence[tuple[int, ...]], config: PortConfig
) -> tuple[list[np.ndarray], list[Any] | None, list[Any] | None]:
    """The port's ``params()``, ``scales()`` and ``cprop_state()`` (the last two ``None`` where
    absent), checked for count, shape and dtype: a malformed read-out is reported naming it."""
    n = len(shapes)

    def malformed(what: str, why: str) -> None:
        comparer.fail(step, -1, (), "read-out", math.nan, math.nan, 0.0, f"{what} is malformed: {why}")

    def as_list(value: Any, what: str) -> list[Any]:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            malformed(what, f"expected a list with one entry per tensor, got {type(value).__name__}")
        if len(value) != n:
            malformed(what, f"{len(value)} entries for {n} tensors")
        return list(value)

    def array(value: Any, what: str, k: int, dtype: np.dtype | None) -> np.ndarray:
        try:
            a = np.asarray(value)
        except Exception as err:  # noqa: BLE001 - any object the port returned
            malformed(what, f"tensor {k}: not an array ({type(err).__name__}: {err})")
        if a.shape != tuple(shapes[k]):
            malformed(what, f"tensor {k} has shape {a.shape}, the parameter's is {tuple(shapes[k])}")
        if a.dtype.kind != "f":
            malformed(what, f"tensor {k} has dtype {a.dtype}, not a floating dtype")
        if dtype is not None and a.dtype != dtype:
            malformed(what, f"tensor {k} has dtype {a.dtype}, expected {dtype} for {config.dtype} parameters")
        return a

    params = as_list(_port_call(comparer, step, "params()", run.params), "params()")
    params = [array(p, "params()", k, config.np_dtype) for k, p in enumerate(params)]
    scales = state = None
    read_scales, read_state = optional(run, "scales"), optional(run, "cprop_state")
    if read_scales:
        value = _port_call(comparer, step, "scales()", read_scales)
        if value is not None:
            scales = [
                None if s is None else array(s, "scales()", k, None) for k, s in enumerate(as_list(value, "scales()"))
            ]
    if read_state:
        value = _port_call(comparer, step, "cprop_state()", read_state)
        if value is not None:
            state = []
            for k, entry in enumerate(as_list(value, "cprop_state()")):
                if entry is None:
                    state.append(None)
                    continue
                if not isinstance(entry, (tuple, list)) or len(entry) != 3:
                    malformed("cprop_state()", f"tensor {k}: expected (m, v, t) or None, got {type(entry).__name__}")
                m, v, t = entry
                try:
                    t = int(t)
                except (TypeError, ValueError):
                    malformed("cprop_state()", f"tensor {k}: the step count t is {t!r}, not an integer")
                state.append((array(m, "cprop_state() m", k, None), array(v, "cprop_state() v", k, None), t))
    return params, scales, state


def _compare_step(
    comparer: _Comparer,
    step: int,
    run: Any,
    ref: ReferenceRun,
    bounds: RunBounds,
    params_before: list[np.ndarray],
    states_before: list[dict[str, Any]],
    grads: Grads,
    grad_errors: list[np.ndarray | float] | None = None,
) -> None:
    """Compare every tensor after both took the step ``grads``."""
    states_after = ref.states()
    params_after = ref.params()
    ref_scales = ref.scales()
    shapes = [np.shape(p) for p in params_after]
    port_params, port_scales, port_state = _read_outs(comparer, step, run, shapes, bounds.config)
    _note_state_paths(comparer.coverage, bounds.config, states_after, ref_scales, grads, params_before, params_after)
    # Where the wrapped framework optimizer left its range on an earlier step, the closed loop's
    # gradients (taken at the port's own iterate) are the framework's business too.
    excused_before = [tb.base_overflow.copy() if grad_errors is not None else None for tb in bounds.tensors]
    for k, g in enumerate(grads):
        if g is not None:
            err = 0.0 if grad_errors is None else grad_errors[k]
            bounds.advance(
                k, params_before[k], g, states_before[k], states_after[k], ref_scales[k], params_after[k], err
            )
    # Upstream quantities first, so the report names where the port first goes wrong:
    # CProp's moments, then the scale computed from them, then the parameter it moves.
    for k, tb in enumerate(bounds.tensors):
        if port_state is None or ref_scales[k] is None:
            continue
        if port_state[k] is None:
            comparer.fail(
                step, k, (), "step", 0.0, float(states_after[k]["step"]), 0.0, "no statistics for a stepped tensor"
            )
        m, v, t = port_state[k]
        after = states_after[k]
        if int(t) != int(after["step"]):
            comparer.fail(step, k, (), "step", float(t), float(after["step"]), 0.0, "CProp's step count t differs")
        comparer.compare(step, k, "cprop_m", m, after["cprop_m"], tb.cprop.m_bound, excused_before[k])
        comparer.compare(step, k, "cprop_v", v, after["cprop_v"], tb.cprop.v_bound, excused_before[k])
    for k, tb in enumerate(bounds.tensors):
        if port_scales is None or ref_scales[k] is None:
            continue
        if port_scales[k] is None:
            comparer.fail(
                step, k, (), "scale", float("nan"), float("nan"), 0.0, "the port has no scale for a stepped tensor"
            )
        comparer.compare(step, k, "scale", port_scales[k], ref_scales[k], tb.scale, excused_before[k])
    for k, tb in enumerate(bounds.tensors):
        comparer.compare(step, k, "param", port_params[k], params_after[k], tb.param, tb.base_overflow)


def _start(
    comparer: _Comparer,
    port: Any,
    config: PortConfig,
    params: Sequence[np.ndarray],
    layouts: Sequence[str] | None = None,
) -> tuple[Any, ReferenceRun]:
    params = [to_storage(p, config.dtype).copy() for p in params]
    ref = ReferenceRun(config, params)
    _note_config_paths(comparer.coverage, config, layouts)
    comparer.layouts = layouts
    run = _port_call(comparer, 0, "building the optimizer", lambda: port(config, apply_layouts(params, layouts)))
    _check_run(comparer, run, 0)
    return run, ref


def _check_run(comparer: _Comparer, run: Any, step: int) -> None:
    """A factory must return a run with ``step(grads)`` and ``params()``."""
    missing = [name for name in ("step", "params") if optional(run, name) is None]
    if missing:
        comparer.fail(
            step,
            -1,
            (),
            "exception",
            math.nan,
            math.nan,
            0.0,
            f"building the optimizer: the factory returned {type(run).__name__}, which has no "
            + " and no ".join(f"{name}()" for name in missing)
            + " (a port factory returns a run with step(grads) and params())",
        )


def _step_both(
    comparer: _Comparer,
    step: int,
    run: Any,
    ref: ReferenceRun,
    bounds: RunBounds,
    grads: Grads,
    layouts: Sequence[str] | None = None,
) -> None:
    """One step of the reference and the port with the same gradients, then the comparison."""
    gs = [None if g is None else to_storage(g, bounds.config.dtype) for g in grads]
    params_before, states_before = ref.params(), ref.states()
    ref.step(gs)
    port_grads = apply_layouts(gs, gradient_layouts(layouts))
    _port_call(comparer, step, "step(grads)", lambda: run.step(port_grads))
    _compare_step(comparer, step, run, ref, bounds, params_before, states_before, gs)
    comparer.coverage.steps += 1


def _done(coverage: Coverage, config: PortConfig) -> Coverage:
    coverage.examples += 1
    coverage.configurations.add(config.describe())
    return coverage


def check_open_loop(
    port: Any,
    config: PortConfig,
    params: Sequence[np.ndarray],
    grads: Sequence[Grads],
    *,
    layouts: Sequence[str] | None = None,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(a) The same gradient stream into the reference and the port, every step compared.

    ``grads[i][k]`` is the gradient of tensor ``k`` at step ``i + 1`` (or ``None``).
    """
    coverage = Coverage() if coverage is None else coverage

    def make_snippet(step: int) -> str:
        stream = "[" + ", ".join(arrays_literal(gs) for gs in grads[:step]) + "]"
        return snippet(
            port_spec,
            config,
            "check_open_loop(port, config, params, grads, layouts=layouts)",
            params=arrays_literal(params, config.np_dtype),
            grads=stream,
            layouts=repr(None if layouts is None else list(layouts)),
        )

    comparer = _Comparer("open_loop", config, coverage, make_snippet)
    run, ref = _start(comparer, port, config, params, layouts)
    bounds = RunBounds(config, [np.shape(p) for p in params])
    initial, _, _ = _read_outs(comparer, 0, run, [np.shape(p) for p in params], config)
    for k, (port_p, ref_p) in enumerate(zip(initial, ref.params())):
        comparer.compare(0, k, "param", port_p, ref_p, 0.0)  # the initial parameters, exactly
    for step, gs in enumerate(grads, start=1):
        _step_both(comparer, step, run, ref, bounds, gs, layouts)
    return _done(coverage, config)


def check_injected_step(
    port: Any,
    config: PortConfig,
    params: Sequence[np.ndarray],
    states: Sequence[dict[str, Any]],
    grads: Grads,
    *,
    layouts: Sequence[str] | None = None,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(b) Both given the same state (moments, step count, base optimizer state), one step.

    Reaches states a short stream never does: ``t`` in the millions, a mean many
    standard errors from zero or within rounding of it, a variance that is rounding noise.
    """
    coverage = Coverage() if coverage is None else coverage

    def make_snippet(step: int) -> str:
        return snippet(
            port_spec,
            config,
            "check_injected_step(port, config, params, states, grads, layouts=layouts)",
            params=arrays_literal(params, config.np_dtype),
            states="[" + ", ".join(state_literal(st) for st in states) + "]",
            grads=arrays_literal(grads),
            layouts=repr(None if layouts is None else list(layouts)),
        )

    comparer = _Comparer("injected", config, coverage, make_snippet)
    comparer.start_t = max((int(st.get("step", 0)) for st in states), default=0)
    run, ref = _start(comparer, port, config, params, layouts)
    load = optional(run, "load_state")
    if load is None:
        raise MissingMethod("the port has no load_state(): the injected-state check needs it")
    ref.load_state(states)
    _port_call(comparer, 0, "load_state(states)", lambda: load([dict(st) for st in states]))
    _step_both(comparer, 1, run, ref, RunBounds(config, [np.shape(p) for p in params]), grads, layouts)
    return _done(coverage, config)


def check_closed_loop(
    port: Any,
    config: PortConfig,
    start: np.ndarray,
    curvature: np.ndarray,
    noises: np.ndarray,
    *,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(c) Each side takes its gradients at its own iterate on the noisy diagonal quadratic
    of :class:`problems.NoisyQuadratic`: ``g = h * x + noise_i`` (``noises[i]`` fixed in advance).

    The port's gradient differs from the reference's by ``h |x_port - x_ref|`` plus the
    rounding of each side's gradient to the dtype, which the bounds carry into the moments.
    """
    coverage = Coverage() if coverage is None else coverage
    h = np.asarray(curvature, dtype=np.float64)
    u, tiny = storage_roundoff(config.dtype), storage_floor(config.dtype)  # each side rounds its gradient

    def make_snippet(step: int) -> str:
        return snippet(
            port_spec,
            config,
            "check_closed_loop(port, config, start, curvature, noises)",
            start=array_literal(to_storage(start, config.dtype)),
            curvature=array_literal(h),
            noises=array_literal(np.asarray(noises)[:step]),
        )

    def gradient(x: np.ndarray, i: int) -> np.ndarray:
        with np.errstate(all="ignore"):  # a diverged port's iterate may overflow the dtype
            return to_storage(h * np.asarray(x, dtype=np.float64) + noises[i], config.dtype)

    comparer = _Comparer("closed_loop", config, coverage, make_snippet)
    run, ref = _start(comparer, port, config, [start])
    bounds = RunBounds(config, [np.shape(start)])
    for i in range(len(noises)):
        step = i + 1
        params_before, states_before = ref.params(), ref.states()
        x_port = _read_outs(comparer, step, run, [np.shape(start)], config)[0][0]
        g_ref, g_port = gradient(params_before[0], i), gradient(x_port, i)
        e_x = bounds.tensors[0].param
        with np.errstate(all="ignore"):  # an infinite bound on x is an infinite bound on g
            g_error = h * e_x * (1.0 + 2.0 * u) + 4.0 * (
                u * (np.abs(g_ref.astype(np.float64)) + h * np.abs(params_before[0])) + tiny
            )
        ref.step([g_ref])
        _port_call(comparer, step, "step(grads)", lambda g=g_port: run.step([g]))
        _compare_step(comparer, step, run, ref, bounds, params_before, states_before, [g_ref], [g_error])
        coverage.steps += 1
    return _done(coverage, config)


def check_resume(
    port: Any,
    config: PortConfig,
    params: Sequence[np.ndarray],
    grads: Sequence[Grads],
    resume_at: int,
    *,
    layouts: Sequence[str] | None = None,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
) -> Coverage:
    """(d) Save and restore through the port's own mechanism after ``resume_at`` steps, then go on.

    The port's ``save()`` gives its serialised state (bytes); the harness builds a fresh run
    from the same configuration and the parameters at that point, calls ``restore(data)`` on
    it and continues the stream. Every later step is compared with the reference (within the
    bounds, as the open loop) and with the uninterrupted run of the same port, which must be
    equal bit for bit (``resume`` quantity: the same code on the same data).
    """
    coverage = Coverage() if coverage is None else coverage
    if not 1 <= resume_at < len(grads):
        raise ValueError(f"check_resume: resume_at={resume_at} must be in [1, {len(grads) - 1}] for {len(grads)} steps")

    def make_snippet(step: int) -> str:
        stream = "[" + ", ".join(arrays_literal(gs) for gs in grads[: max(step, resume_at + 1)]) + "]"
        return snippet(
            port_spec,
            config,
            f"check_resume(port, config, params, grads, {resume_at}, layouts=layouts)",
            params=arrays_literal(params, config.np_dtype),
            grads=stream,
            layouts=repr(None if layouts is None else list(layouts)),
        )

    comparer = _Comparer("resume", config, coverage, make_snippet)
    straight, _ = _start(comparer, port, config, params, layouts)
    if optional(straight, "save") is None or optional(straight, "restore") is None:
        raise MissingMethod("the port has no save() / restore(): the resume check needs them")
    uninterrupted = []
    shapes = [np.shape(p) for p in params]
    for step, gs in enumerate(grads, start=1):
        port_grads = apply_layouts(
            [None if g is None else to_storage(g, config.dtype) for g in gs], gradient_layouts(layouts)
        )
        _port_call(comparer, step, "step(grads)", lambda g=port_grads: straight.step(g))
        read = _read_outs(comparer, step, straight, shapes, config)
        uninterrupted.append((read[0], read[2]))
    run, ref = _start(comparer, port, config, params, layouts)
    bounds = RunBounds(config, [np.shape(p) for p in params])
    for step, gs in enumerate(grads, start=1):
        if step == resume_at + 1:
            data = _port_call(comparer, step - 1, "save()", run.save)
            current = [to_storage(p, config.dtype) for p in _read_outs(comparer, step - 1, run, shapes, config)[0]]
            run = _port_call(
                comparer,
                step - 1,
                "building the optimizer to resume",
                lambda c=current: port(config, apply_layouts(c, layouts)),
            )
            _check_run(comparer, run, step - 1)
            restore = optional(run, "restore")
            if restore is None:
                comparer.fail(
                    step - 1, -1, (), "exception", math.nan, math.nan, 0.0, "the rebuilt run has no restore()"
                )
            _port_call(comparer, step - 1, "restore(data)", lambda d=data, r=restore: r(d))
        _step_both(comparer, step, run, ref, bounds, gs, layouts)
        if step > resume_at:
            params_straight, state_straight = uninterrupted[step - 1]
            resumed_params, _, state = _read_outs(comparer, step, run, shapes, config)
            for k in range(len(params)):
                if state is not None and state_straight is not None and state_straight[k] is not None:
                    if state[k] is None:
                        comparer.fail(
                            step, k, (), "resume", math.nan, math.nan, 0.0, "the resumed run lost CProp's statistics"
                        )
                    for name, index in (("cprop_m", 0), ("cprop_v", 1)):
                        comparer.compare(
                            step,
                            k,
                            "resume",
                            state[k][index],
                            state_straight[k][index],
                            0.0,
                            note=f"{name} against the uninterrupted run of the same port",
                        )
                comparer.compare(
                    step,
                    k,
                    "resume",
                    resumed_params[k],
                    params_straight[k],
                    0.0,
                    note="param against the uninterrupted run of the same port",
                )
    return _done(coverage, config)
