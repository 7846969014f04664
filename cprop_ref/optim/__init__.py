"""Optimizers: stateful shells over the pure functions of :mod:`cprop_ref.scale` and
:mod:`cprop_ref.functional`."""

from .adam import Adam, AdamW, CPropAdam
from .base import Optimizer
from .sgd import SGD, CPropSGD
from .wrapper import CProp, OptimizerProtocol

__all__ = ["SGD", "Adam", "AdamW", "CPropSGD", "CPropAdam", "CProp", "Optimizer", "OptimizerProtocol"]
