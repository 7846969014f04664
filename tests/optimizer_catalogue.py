"""The optimizer catalogue: every optimizer the tests run, declared once.

In the spirit of PyTorch's ``OptimizerInfo`` database: one :class:`OptimizerInfo` per
optimizer that ``cprop_ref.optim`` exports (``SGD``, ``Adam``, ``AdamW``, ``CPropSGD``,
``CPropAdam``) and per base the ``CProp`` wrapper is tested over. An entry holds

- how to build it (:meth:`OptimizerInfo.make`, with every hyperparameter in one flat
  namespace: the wrapper's ``beta``, ``c``, ``eps``, ``cdf`` are written ``cprop_beta``,
  ``cprop_c``, ``cprop_eps``, ``cprop_cdf`` as for ``CPropSGD`` and ``CPropAdam``), the
  hyperparameters it takes and those it needs (``SGD``'s ``lr``);
- what it supports: backends, dtypes (``kernel_dtypes``: those the Numba backend steps
  with its kernels; float16 steps on the NumPy path on either backend) and CDFs (none for
  an optimizer without CProp);
- the configurations each test matrix runs (:class:`OptimizerInput`, under the matrix's
  name: ``core``, ``reliability``, ``golden``) and its name in the drawn matrices
  (``draw_id``: ``tests/test_backends.py``);
- its error inputs (:class:`ErrorInput`: a bad hyperparameter and the message fragment
  the ``ValueError`` must carry);
- its known skips (:class:`Skip`: a test, the cell it does not apply to, and why).

The matrices derive from the catalogue: ``tests/optimizer_matrix.py`` (the core tests),
``tests/reliability_support.py`` (the reliability tests), ``tests/test_backends.py`` (Numba
against NumPy), ``tests/test_kernels_one_loop.py`` (the one-loop kernels against the
stages), ``tests/golden_core_cases.py`` (the golden trajectories) and
``tests/test_core_errors.py`` (the error inputs). Adding an optimizer is one entry here
(and, for the golden matrix, regenerating the fixtures: ``python -m tests.golden_core_cases``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cprop_ref import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD
from cprop_ref.cdf import CDF_NAMES
from cprop_ref.functional import cprop_adam_sharing_allowed
from tests.hypothesis_budget import PROFILE

BACKENDS: tuple[str, ...] = ("numpy", "numba")
DTYPES: tuple[type, ...] = (np.float16, np.float32, np.float64)
#: The dtypes the Numba backend steps with its kernels; float16 takes the NumPy path.
KERNEL_DTYPES: tuple[type, ...] = (np.float32, np.float64)

#: Stands for the CDF a matrix runs the configuration with (its parametrized or drawn CDF).
MATRIX_CDF = "<the matrix's cdf>"

#: The prefix of CProp's hyperparameters in the flat namespace.
CPROP_PREFIX = "cprop_"
CPROP_HYPERPARAMETERS = ("cprop_beta", "cprop_c", "cprop_eps", "cprop_cdf")
SGD_HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
ADAM_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "amsgrad")

#: The values the drawn matrices (``test_backends``, ``test_kernels_one_loop``) sample each
#: hyperparameter from: the defaults, the edges (0), and values far apart. ``betas`` is
#: drawn by each matrix as pairs built from ``cprop_beta`` (the sharing of the moments is
#: what those pairs vary).
DRAWS: Mapping[str, tuple[Any, ...]] = {
    "lr": (1e-3, 0.1, 1.0),
    "momentum": (0.0, 0.5, 0.9),
    "dampening": (0.0, 0.5),
    "weight_decay": (0.0, 0.01),
    "eps": (1e-8, 0.0, 1e-3),
    "cprop_beta": (0.0, 0.5, 0.9, 0.999),
    "cprop_c": (0.0, 0.5, 1.0, 3.0),
    "cprop_eps": (1e-8, 0.0, 1e-3),
    "cprop_cdf": tuple(CDF_NAMES),
}


@dataclass(frozen=True)
class OptimizerInput:
    """One configuration of an optimizer, as a matrix runs it.

    ``hyperparameters`` are in the flat namespace; the value :data:`MATRIX_CDF` marks where
    the matrix's own CDF goes (a configuration without it runs its fixed or default CDF).
    ``second_group_lr``: the learning rate of the second parameter group, for the matrices
    that split the parameters into two groups (``tests/reliability_support.py``).
    """

    id: str
    hyperparameters: Mapping[str, Any]
    second_group_lr: float | None = None

    def resolved(self, cdf: str | None) -> dict[str, Any]:
        """The hyperparameters with the matrix's CDF in place of :data:`MATRIX_CDF`."""
        return {k: (cdf if v == MATRIX_CDF else v) for k, v in self.hyperparameters.items()}


@dataclass(frozen=True)
class ErrorInput:
    """A hyperparameter value the constructor refuses with a ``ValueError`` matching ``message``."""

    hyperparameter: str
    value: Any
    message: str


@dataclass(frozen=True)
class Skip:
    """A test that does not apply to a cell of this optimizer's matrix, and why. ``None``
    in ``dtype``, ``cdf``, ``backend`` matches every value."""

    test: str
    reason: str
    dtype: Any = None
    cdf: str | None = None
    backend: str | None = None

    def applies(self, test: str, dtype: Any = None, cdf: str | None = None, backend: str | None = None) -> bool:
        return (
            self.test == test
            and (self.dtype is None or np.dtype(self.dtype) == np.dtype(dtype))
            and (self.cdf is None or self.cdf == cdf)
            and (self.backend is None or self.backend == backend)
        )


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer: how to build it, what it supports, how the matrices run it."""

    #: The name the golden manifest and the messages use: the class, or ``CProp(Base)``.
    name: str
    cls: type
    #: The hyperparameters the constructor takes, in the flat namespace.
    hyperparameters: tuple[str, ...]
    #: The wrapped optimizer's class (the wrapper's entries only).
    base: type | None = None
    #: Keyword arguments the constructor cannot do without.
    required: Mapping[str, Any] = field(default_factory=dict)
    backends: tuple[str, ...] = BACKENDS
    dtypes: tuple[type, ...] = DTYPES
    kernel_dtypes: tuple[type, ...] = KERNEL_DTYPES
    #: The CDFs of its CProp scale; empty for an optimizer without CProp.
    cdfs: tuple[str, ...] = ()
    #: The optimizer without CProp whose update the CProp scale multiplies.
    unscaled: str | None = None
    #: Whether its Numba kernels have the one loop per element (``test_kernels_one_loop``).
    one_loop: bool = False
    #: Its name in the drawn matrices (``test_backends``); ``None``: not drawn (see ``skips``).
    draw_id: str | None = None
    #: The configurations of each matrix, by the matrix's name.
    inputs: Mapping[str, tuple[OptimizerInput, ...]] = field(default_factory=dict)
    error_inputs: tuple[ErrorInput, ...] = ()
    skips: tuple[Skip, ...] = ()

    @property
    def cprop(self) -> bool:
        return bool(self.cdfs)

    @property
    def wraps(self) -> bool:
        return self.base is not None

    def make(self, params: Any, *, backend: str = "numpy", nonfinite: str = "raise", **hyperparameters: Any) -> Any:
        """The optimizer over ``params`` (a list of arrays or of parameter groups); the
        wrapper passes ``backend`` and ``nonfinite`` to its base as well."""
        extra = {"backend": backend, "nonfinite": nonfinite}
        if self.base is None:
            return self.cls(params, **hyperparameters, **extra)
        base = {k: v for k, v in hyperparameters.items() if not k.startswith(CPROP_PREFIX)}
        wrapper = {k[len(CPROP_PREFIX) :]: v for k, v in hyperparameters.items() if k.startswith(CPROP_PREFIX)}
        return self.cls(self.base(params, **base, **extra), **wrapper, **extra)

    def make_input(
        self, input: OptimizerInput, params: Any, cdf: str | None = None, *, backend: str = "numpy", **extra: Any
    ) -> Any:
        """``make`` with the configuration ``input`` (and the matrix's ``cdf``)."""
        return self.make(params, backend=backend, **input.resolved(cdf), **extra)

    def skip_reason(
        self, test: str, dtype: Any = None, cdf: str | None = None, backend: str | None = None
    ) -> str | None:
        """Why ``test`` does not apply to this cell, or ``None`` when it does."""
        for skip in self.skips:
            if skip.applies(test, dtype, cdf, backend):
                return skip.reason
        return None


def _bad_values(name: str, values: Sequence[Any]) -> tuple[ErrorInput, ...]:
    # The message names the hyperparameter and its value ("betas[0]=1.5" for an entry of a pair).
    return tuple(ErrorInput(name, value, rf"{name}(\[\d\])?=") for value in values)


#: Values each hyperparameter must refuse: of the wrong sign, non-finite, of the wrong type,
#: out of its range.
_BAD = {
    "lr": [-0.1, math.nan, math.inf, "0.1", True],
    "momentum": [-0.5, math.nan],
    "dampening": [-0.1, 1.5],
    "weight_decay": [-1e-3, math.inf],
    "nesterov": [1, "yes"],
    "betas": [(0.9,), (1.0, 0.999), (0.9, -0.1), 0.9],
    "eps": [-1e-8, math.nan],
    "amsgrad": [0, None],
    "cprop_beta": [1.0, -0.1, 2.0, math.nan],
    "cprop_c": [-1.0, math.inf],
    "cprop_eps": [-1e-8, math.inf],
    "cprop_cdf": ["gauss", "", None],
}


def _errors(names: Sequence[str]) -> tuple[ErrorInput, ...]:
    return tuple(e for name in names for e in _bad_values(name, _BAD[name]))


#: The wrapper's own hyperparameters refused with "CProp: invalid <name>=" (its base's are the base's).
WRAPPER_ERROR_INPUTS = tuple(
    ErrorInput(name, value, rf"CProp: invalid {name}=")
    for name, value in [("beta", 1.0), ("c", -1.0), ("eps", math.nan), ("cdf", "probit")]
)

_NO_ONE_LOOP_FLOAT64_NORMAL = Skip(
    "test_the_one_loop_is_vectorised",
    "the float64 normal takes the chunked stages (the C library's erf is scalar)",
    dtype=np.float64,
    cdf="normal",
)

_CORE = "core"
_RELIABILITY = "reliability"
_GOLDEN = "golden"

CATALOGUE: tuple[OptimizerInfo, ...] = (
    OptimizerInfo(
        name="SGD",
        cls=SGD,
        hyperparameters=SGD_HYPERPARAMETERS,
        required={"lr": 0.1},
        draw_id="sgd",
        inputs={
            _CORE: (OptimizerInput("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),),
            _RELIABILITY: (
                OptimizerInput("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, second_group_lr=0.05),
                OptimizerInput("SGD-nesterov", {"lr": 0.1, "momentum": 0.5, "nesterov": True}, second_group_lr=0.05),
            ),
            _GOLDEN: (OptimizerInput("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),),
        },
        error_inputs=_errors(SGD_HYPERPARAMETERS),
    ),
    OptimizerInfo(
        name="Adam",
        cls=Adam,
        hyperparameters=ADAM_HYPERPARAMETERS,
        draw_id="adam",
        inputs={
            _CORE: (OptimizerInput("adam", {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True}),),
            _RELIABILITY: (OptimizerInput("Adam", {"lr": 0.01, "weight_decay": 0.01}, second_group_lr=0.002),),
            _GOLDEN: (OptimizerInput("Adam", {"lr": 0.01, "amsgrad": True}),),
        },
        error_inputs=_errors(ADAM_HYPERPARAMETERS),
    ),
    OptimizerInfo(
        name="AdamW",
        cls=AdamW,
        hyperparameters=ADAM_HYPERPARAMETERS,
        draw_id="adamw",
        inputs={
            _CORE: (OptimizerInput("adamw", {"lr": 0.01}),),
            _RELIABILITY: (OptimizerInput("AdamW-amsgrad", {"lr": 0.01, "amsgrad": True}, second_group_lr=0.002),),
            _GOLDEN: (OptimizerInput("AdamW", {"lr": 0.01, "weight_decay": 0.1}),),
        },
        error_inputs=_errors(ADAM_HYPERPARAMETERS),
    ),
    OptimizerInfo(
        name="CPropSGD",
        cls=CPropSGD,
        hyperparameters=SGD_HYPERPARAMETERS + CPROP_HYPERPARAMETERS,
        required={"lr": 0.1},
        cdfs=tuple(CDF_NAMES),
        unscaled="SGD",
        one_loop=True,
        draw_id="cprop_sgd",
        inputs={
            _CORE: (
                OptimizerInput(
                    "cprop_sgd",
                    {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "cprop_cdf": MATRIX_CDF},
                ),
                OptimizerInput(
                    "cprop_sgd_plain", {"lr": 0.1, "cprop_cdf": MATRIX_CDF, "cprop_c": 3.0, "cprop_beta": 0.9}
                ),
            ),
            _RELIABILITY: (
                OptimizerInput("CPropSGD", {"lr": 0.1, "momentum": 0.9, "cprop_beta": 0.9}, second_group_lr=0.05),
            ),
            _GOLDEN: (
                OptimizerInput(
                    "CPropSGD-nesterov",
                    {
                        "lr": 0.1,
                        "momentum": 0.9,
                        "nesterov": True,
                        "weight_decay": 0.01,
                        "cprop_cdf": MATRIX_CDF,
                        "cprop_beta": 0.9,
                    },
                ),
                OptimizerInput(
                    "CPropSGD-dampened",
                    {"lr": 0.05, "momentum": 0.5, "dampening": 0.1, "cprop_cdf": MATRIX_CDF, "cprop_c": 3.0},
                ),
            ),
        },
        error_inputs=_errors(SGD_HYPERPARAMETERS + CPROP_HYPERPARAMETERS),
        skips=(_NO_ONE_LOOP_FLOAT64_NORMAL,),
    ),
    OptimizerInfo(
        name="CPropAdam",
        cls=CPropAdam,
        hyperparameters=ADAM_HYPERPARAMETERS + CPROP_HYPERPARAMETERS,
        cdfs=tuple(CDF_NAMES),
        unscaled="Adam",
        one_loop=True,
        draw_id="cprop_adam",
        inputs={
            _CORE: (
                OptimizerInput("cprop_adam", {"lr": 0.01, "cprop_cdf": MATRIX_CDF}),
                OptimizerInput("cprop_adam_shared_m", {"lr": 0.01, "betas": (0.999, 0.999), "cprop_cdf": MATRIX_CDF}),
                OptimizerInput(
                    "cprop_adam_unshared",
                    {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True, "cprop_beta": 0.99, "cprop_cdf": MATRIX_CDF},
                ),
            ),
            _RELIABILITY: (
                # beta2 == cprop_beta: the second moment is shared (the default configuration).
                OptimizerInput("CPropAdam", {"lr": 0.01, "cprop_cdf": "normal"}, second_group_lr=0.002),
                OptimizerInput(
                    "CPropAdam-unshared",
                    {"lr": 0.01, "cprop_beta": 0.99, "weight_decay": 0.01, "amsgrad": True},
                    second_group_lr=0.002,
                ),
            ),
            _GOLDEN: (
                OptimizerInput("CPropAdam", {"lr": 0.01, "cprop_cdf": MATRIX_CDF}),
                OptimizerInput(
                    "CPropAdam-amsgrad",
                    {
                        "lr": 0.01,
                        "betas": [0.9, 0.99],
                        "weight_decay": 0.1,
                        "amsgrad": True,
                        "cprop_cdf": MATRIX_CDF,
                        "cprop_beta": 0.99,
                        "cprop_eps": 1e-6,
                    },
                ),
            ),
        },
        error_inputs=_errors(ADAM_HYPERPARAMETERS + CPROP_HYPERPARAMETERS),
        skips=(_NO_ONE_LOOP_FLOAT64_NORMAL,),
    ),
    OptimizerInfo(
        name="CProp(SGD)",
        cls=CProp,
        base=SGD,
        hyperparameters=SGD_HYPERPARAMETERS + CPROP_HYPERPARAMETERS,
        required={"lr": 0.1},
        cdfs=tuple(CDF_NAMES),
        unscaled="SGD",
        draw_id="wrapper_sgd",
        inputs={
            _CORE: (OptimizerInput("cprop_wrapper_sgd", {"lr": 0.1, "momentum": 0.5, "cprop_cdf": MATRIX_CDF}),),
            _RELIABILITY: (
                OptimizerInput(
                    "CProp(SGD)",
                    {"lr": 0.1, "momentum": 0.9, "cprop_beta": 0.9, "cprop_cdf": "logistic"},
                    second_group_lr=0.05,
                ),
            ),
        },
        error_inputs=WRAPPER_ERROR_INPUTS,
    ),
    OptimizerInfo(
        name="CProp(Adam)",
        cls=CProp,
        base=Adam,
        hyperparameters=ADAM_HYPERPARAMETERS + CPROP_HYPERPARAMETERS,
        cdfs=tuple(CDF_NAMES),
        unscaled="Adam",
        draw_id="wrapper_adam",
        inputs={
            _RELIABILITY: (
                OptimizerInput("CProp(Adam)", {"lr": 0.01, "cprop_beta": 0.99, "cprop_c": 3.0}, second_group_lr=0.002),
            ),
        },
        error_inputs=WRAPPER_ERROR_INPUTS,
    ),
    OptimizerInfo(
        name="CProp(AdamW)",
        cls=CProp,
        base=AdamW,
        hyperparameters=ADAM_HYPERPARAMETERS + CPROP_HYPERPARAMETERS,
        cdfs=tuple(CDF_NAMES),
        unscaled="AdamW",
        inputs={
            _CORE: (
                OptimizerInput(
                    "cprop_wrapper_adamw", {"lr": 0.01, "cprop_beta": 0.99, "cprop_c": 2.0, "cprop_cdf": MATRIX_CDF}
                ),
            ),
            _GOLDEN: (
                OptimizerInput(
                    "CProp(AdamW)", {"lr": 0.01, "cprop_beta": 0.95, "cprop_c": 2.0, "cprop_cdf": MATRIX_CDF}
                ),
            ),
        },
        error_inputs=WRAPPER_ERROR_INPUTS,
        skips=(
            Skip(
                "test_backends",
                "the wrapper's kernel does not depend on its base, and AdamW's own kernel is drawn as adamw",
            ),
        ),
    ),
)

BY_NAME: Mapping[str, OptimizerInfo] = {info.name: info for info in CATALOGUE}

#: The CDF the default test set runs the Numba kernels with where the CDF is not what a test
#: is about (the constructors' default). Each CDF x dtype x variant of the kernels is a
#: compilation of its own (seconds of CPU each on a cold cache, most of the suite's time);
#: every CDF's kernels are held to the reference by ``test_backends`` and to the stages by
#: ``test_kernels_one_loop``, so the cross-products of the other matrices run the remaining
#: CDFs on the kernels under the ``slow`` marker (``pytest -m slow``).
DEFAULT_SET_CDF = "bft"


def sweep_marks(backend: str, dtype: Any, cdf: str) -> tuple[Any, ...]:
    """``(pytest.mark.slow,)`` for a cell of a CDF cross-product that compiles a kernel variant
    the default set leaves to the slow set: the Numba backend, a kernel dtype, a CDF other
    than :data:`DEFAULT_SET_CDF`. The NumPy backend and float16 (the NumPy path) compile nothing."""
    import pytest

    kernel = backend == "numba" and any(np.dtype(dtype) == np.dtype(k) for k in KERNEL_DTYPES)
    return (pytest.mark.slow,) if kernel and cdf != DEFAULT_SET_CDF else ()


def default_kernel_variant(hyperparameters: Mapping[str, Any]) -> bool:
    """Whether ``hyperparameters`` run the kernels' default variant: for the Adam family (they
    hold ``betas``, ``weight_decay``, ``cprop_beta``) CProp's moments private, the library's own
    rule (:func:`cprop_ref.functional.cprop_adam_sharing_allowed`) allowing neither to be shared;
    for the SGD family (``momentum``) a momentum buffer."""
    if "betas" in hyperparameters:
        return not any(cprop_adam_sharing_allowed(dict(hyperparameters)))
    return hyperparameters["momentum"] > 0.0


def swept_cdf(cdf: str, default_variant: bool) -> str:
    """The CDF a drawn kernel variant runs with: the drawn one for the optimizer's default
    variant (and for every variant under the ``thorough`` profile), :data:`DEFAULT_SET_CDF`
    for the others in ``ci`` and ``dev``. So the default set compiles every CDF once and
    every variant once, and ``thorough`` the whole cross-product."""
    return cdf if default_variant or PROFILE == "thorough" else DEFAULT_SET_CDF


def entries(matrix: str) -> list[tuple[OptimizerInfo, OptimizerInput]]:
    """Every ``(optimizer, configuration)`` pair of ``matrix``, in catalogue order."""
    return [(info, inp) for info in CATALOGUE for inp in info.inputs.get(matrix, ())]


def drawn() -> list[OptimizerInfo]:
    """The optimizers of the drawn matrices, in catalogue order."""
    return [info for info in CATALOGUE if info.draw_id is not None]


def by_draw_id(draw_id: str) -> OptimizerInfo:
    return next(info for info in CATALOGUE if info.draw_id == draw_id)
