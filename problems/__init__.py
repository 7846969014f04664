"""Test problems with hand-derived gradients (no autograd), built by name.

Every problem takes points of shape ``(..., dim)``, so independent runs advance as one
array; see :mod:`problems.base` for the interface and the noise models, and
``cprop-ref problems`` for the list.
"""

from .analytic import Beale, Branin, Rastrigin, Rosenbrock, StyblinskiTang
from .base import Problem
from .logistic import LogisticRegression
from .mlp import DigitsMLP
from .nqm import NoisyQuadraticModel
from .quadratic import IllConditionedQuadratic, NoisyQuadratic
from .quadratic_deep import QuadraticDeep
from .registry import PROBLEMS, describe_problems, make_problem, parse_options, problem_class
from .streams import RunStreams

__all__ = [
    "Problem",
    "RunStreams",
    "Rosenbrock",
    "Beale",
    "Branin",
    "Rastrigin",
    "StyblinskiTang",
    "IllConditionedQuadratic",
    "NoisyQuadratic",
    "NoisyQuadraticModel",
    "QuadraticDeep",
    "LogisticRegression",
    "DigitsMLP",
    "PROBLEMS",
    "make_problem",
    "parse_options",
    "problem_class",
    "describe_problems",
]
