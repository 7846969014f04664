"""Sweeps: every optimizer over a grid of hyperparameters and seeds, as one dataset.

:func:`sweep` runs them (in this process, vectorised; on a local Dask cluster; or on an
existing one), optionally into a zarr store that resumes; :mod:`.report` reads the
results (best settings, the width of the good learning-rate band, tuning curves) and
:mod:`.plots` draws them. ``docs/sweeps.md`` is the user's guide. Needs the ``sweep``
extra (xarray, zarr, dask[distributed]).
"""

from .config import SweepConfig, Unit, make_config, parse_grid_values
from .execute import sweep
from .store import open_sweep

__all__ = ["SweepConfig", "Unit", "make_config", "open_sweep", "parse_grid_values", "sweep"]
