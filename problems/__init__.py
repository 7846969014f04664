"""Analytic test problems with hand-derived gradients (no autograd)."""

from .quadratic import NoisyQuadratic

__all__ = ["NoisyQuadratic"]
