"""``cprop_ref.sweep.sweep``: the entry point of :mod:`cprop_ref.study` under its short name."""

from .study import open_sweep, sweep

__all__ = ["open_sweep", "sweep"]
