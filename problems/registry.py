"""Problems by name: list them, build them with keyword options, parse ``key=value`` options."""

from __future__ import annotations

import typing
from typing import Any

from .analytic import Beale, Branin, Rastrigin, Rosenbrock, StyblinskiTang
from .base import Problem
from .logistic import LogisticRegression
from .mlp import DigitsMLP
from .nqm import NoisyQuadraticModel
from .quadratic import IllConditionedQuadratic
from .quadratic_deep import QuadraticDeep

PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls
    for cls in (
        Rosenbrock,
        Beale,
        Branin,
        Rastrigin,
        StyblinskiTang,
        IllConditionedQuadratic,
        NoisyQuadraticModel,
        QuadraticDeep,
        LogisticRegression,
        DigitsMLP,
    )
}


def problem_class(name: str) -> type[Problem]:
    """The class registered as ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return PROBLEMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown problem {name!r}; known problems: {', '.join(PROBLEMS)}") from None


def make_problem(name: str, **options: Any) -> Problem:
    """Build the problem ``name`` with keyword ``options`` (see ``cprop-ref problems``).

    An unknown option is a ``ValueError`` naming it and the problem's options; invalid
    values are rejected by the problem itself, also with a ``ValueError``.
    """
    cls = problem_class(name)
    known = cls.options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"problem {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(known)}")
    return cls(**options)


def parse_options(name: str, assignments: list[str]) -> dict[str, Any]:
    """``["dim=10", "noise=0.1"]`` to ``{"dim": 10, "noise": 0.1}``, typed by the problem's fields."""
    cls = problem_class(name)
    types = typing.get_type_hints(cls)
    known = cls.options()
    options: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"problem option {item!r}: expected KEY=VALUE")
        if key not in known:
            raise ValueError(f"problem {name!r} has no option {key!r}; its options: {', '.join(known)}")
        options[key] = _convert(key, text.strip(), types[key])
    return options


def _convert(key: str, text: str, kind: Any) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"problem option {key}={text!r}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"problem option {key}={text!r}: expected {kind.__name__}") from None


def describe_problems() -> list[dict[str, Any]]:
    """One row per problem with its default options: name, summary, dim, minimum, noise, options."""
    rows = []
    for name, cls in PROBLEMS.items():
        row: dict[str, Any] = {"name": name, "summary": cls.summary, "noise": cls.noise_models}
        row["options"] = ", ".join(f"{k}={v!r}" for k, v in cls.options().items())
        try:
            problem = cls()
        except ImportError as err:  # an optional extra is missing
            row.update(dim="?", minimum="?", note=str(err))
        else:
            row.update(dim=problem.dim, minimum=problem.minimum)
        rows.append(row)
    return rows


__all__ = ["PROBLEMS", "problem_class", "make_problem", "parse_options", "describe_problems"]
