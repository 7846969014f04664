"""The sweep's dataset, in memory or in a zarr store that resumes.

Layout: an ``xarray.Dataset`` with dims ``optimizer``, one per grid key (the grid's order),
``seed`` and ``step`` (the recorded steps); variables ``loss`` (the recorded curve),
``final_loss``, ``best_loss``, ``steps_to_target`` (``-1``: not reached), ``diverged``,
``diverged_step`` (``-1``: did not) and ``mean_scale`` (the CProp scale averaged over the
elements and the recorded steps after the start; NaN without CProp), and in a store
``complete`` (``optimizer`` x grid), set for a unit's cells only after its results are
written. The sweep's configuration is the JSON attribute ``cprop_ref_sweep``.

A store is created whole (template written to a temporary folder, then renamed into
place), filled a unit at a time (``to_zarr(region=...)``: every unit covers whole zarr
chunks, so each chunk is written once) and read back by :func:`open_sweep`. A unit counts
as done only when all its ``complete`` cells are set, so a sweep killed at any moment
resumes by recomputing just the units whose flag is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .config import SweepConfig, Unit
from .engine import RESULT_VARIABLES

CONFIG_ATTRIBUTE = "cprop_ref_sweep"
_FILL: dict[str, Any] = {"steps_to_target": -1, "diverged": False, "diverged_step": -1}
_DTYPES: dict[str, Any] = {"steps_to_target": np.int64, "diverged": bool, "diverged_step": np.int64}


def require_sweep_extra() -> Any:
    """``xarray`` (and check zarr), or an ``ImportError`` naming the extra to install."""
    try:
        import xarray
        import zarr  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"sweeps need xarray and zarr ({err.name} is missing): pip install 'cprop-ref[sweep]'"
        ) from None
    return xarray


def _dims(config: SweepConfig) -> tuple[str, ...]:
    return ("optimizer", *config.keys, "seed")


def coordinates(config: SweepConfig) -> dict[str, np.ndarray]:
    coords: dict[str, np.ndarray] = {"optimizer": np.array(config.optimizers, dtype=object)}
    for key, values in config.grid.items():
        coords[key] = np.array(values, dtype=np.float64)
    coords["seed"] = np.array(config.seeds, dtype=np.int64)
    coords["step"] = config.record_steps()
    return coords


def attributes(config: SweepConfig) -> dict[str, Any]:
    problem = config.build_problem()
    return {
        CONFIG_ATTRIBUTE: config.to_json(),
        "problem": config.problem,
        "problem_minimum": np.nan if problem.minimum is None else float(problem.minimum),
        "steps": config.steps,
        "target": np.nan if config.target is None else config.target,
    }


def empty_arrays(config: SweepConfig) -> dict[str, np.ndarray]:
    """The result variables filled with their "missing" values (NaN, -1, False)."""
    lead = config.shape
    steps = len(config.record_steps())
    out = {}
    for name, extra in RESULT_VARIABLES.items():
        shape = lead + ((steps,) if extra else ())
        out[name] = np.full(shape, _FILL.get(name, np.nan), dtype=_DTYPES.get(name, np.float64))
    return out


def as_dataset(config: SweepConfig, arrays: dict[str, np.ndarray]) -> Any:
    xr = require_sweep_extra()
    dims = _dims(config)
    data = {name: ((*dims, *RESULT_VARIABLES[name]), value) for name, value in arrays.items()}
    return xr.Dataset(data, coords=coordinates(config), attrs=attributes(config))


def fill(config: SweepConfig, arrays: dict[str, np.ndarray], unit: Unit, result: dict[str, np.ndarray]) -> None:
    """Put a unit's results into the in-memory arrays (broadcast along keys it does not take)."""
    index = tuple(unit.region(config).values())
    for name, value in result.items():
        arrays[name][index] = value


# -- the zarr store ------------------------------------------------------------------------


def check_store_path(path: str | os.PathLike[str]) -> Path:
    """A store path must be a folder or not exist yet (its parent is created); ``OSError`` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OSError(f"store {str(path)!r} is a file, not a zarr store (a folder)")
    if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").exists() and not (path / ".zgroup").exists():
        raise OSError(f"store {str(path)!r} is a folder that holds something else than a zarr store")
    return path


def open_or_create(path: Path, config: SweepConfig) -> np.ndarray:
    """The ``complete`` flags of the store at ``path`` (creating it for ``config`` if it does
    not exist); ``ValueError`` saying what differs if it holds another sweep."""
    xr = require_sweep_extra()
    if not path.exists() or not any(path.iterdir()):
        _create(path, config)
    try:
        stored = xr.open_zarr(path, consolidated=False, chunks=None)
        text = stored.attrs[CONFIG_ATTRIBUTE]
    except (KeyError, OSError, ValueError) as err:
        raise OSError(f"store {str(path)!r} is not a cprop-ref sweep store ({err})") from None
    saved = SweepConfig.from_json(text)
    if saved != config:
        raise ValueError(
            f"store {str(path)!r} holds a different sweep: {'; '.join(config.differences(saved))}; "
            "use another store or delete this one"
        )
    return stored["complete"].values


def _create(path: Path, config: SweepConfig) -> None:
    """Write the template (coordinates, attributes, no chunk data) whole, then rename it into place."""
    import dask.array as da

    xr = require_sweep_extra()
    dims = _dims(config)
    chunks = (1, *config.chunks, len(config.seeds))
    steps = len(config.record_steps())
    data: dict[str, Any] = {}
    for name, extra in RESULT_VARIABLES.items():
        shape = config.shape + ((steps,) if extra else ())
        dtype = _DTYPES.get(name, np.float64)
        lazy = da.full(shape, _FILL.get(name, np.nan), dtype=dtype, chunks=chunks + ((steps,) if extra else ()))
        data[name] = ((*dims, *extra), lazy)
    data["complete"] = (dims[:-1], da.zeros(config.shape[:-1], dtype=bool, chunks=chunks[:-1]))
    template = xr.Dataset(data, coords=coordinates(config), attrs=attributes(config))
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    template.to_zarr(staging, mode="w", compute=False, consolidated=False)
    if path.exists():
        path.rmdir()  # an empty folder (checked by check_store_path)
    os.replace(staging, path)


def unit_done(config: SweepConfig, complete: np.ndarray, unit: Unit) -> bool:
    region = unit.region(config)
    return bool(complete[tuple(region[d] for d in ("optimizer", *config.keys))].all())


def write_unit(path: Path, config: SweepConfig, unit: Unit, result: dict[str, np.ndarray]) -> None:
    """The unit's results, then its ``complete`` flags (so a flag implies the data)."""
    xr = require_sweep_extra()
    dims = _dims(config)
    region = unit.region(config)
    full_shape = tuple(
        len(config.grid[key]) if region[key] == slice(None) else region[key].stop - region[key].start
        for key in config.keys
    )
    data = {}
    for name, value in result.items():
        shape = (1, *full_shape, *value.shape[len(full_shape) + 1 :])
        data[name] = ((*dims, *RESULT_VARIABLES[name]), np.broadcast_to(value, shape))
    zarr_region = {**region, "seed": slice(None), "step": slice(None)}
    xr.Dataset(data).to_zarr(path, region=zarr_region, mode="r+", consolidated=False)
    flags = np.ones((1, *full_shape), dtype=bool)
    xr.Dataset({"complete": (dims[:-1], flags)}).to_zarr(path, region=region, mode="r+", consolidated=False)


def open_sweep(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> Any:
    """The dataset of the sweep store at ``path``, loaded into memory (``complete`` dropped);
    ``ValueError`` if some unit is not done, unless ``allow_incomplete``."""
    xr = require_sweep_extra()
    path = Path(path)
    if not path.is_dir():
        raise OSError(f"store {str(path)!r} does not exist or is not a folder")
    try:
        ds = xr.open_zarr(path, consolidated=False, chunks=None).load()
        ds.attrs[CONFIG_ATTRIBUTE]
    except (KeyError, OSError, ValueError) as err:
        raise OSError(f"store {str(path)!r} is not a cprop-ref sweep store ({err})") from None
    complete = ds["complete"].values
    if not allow_incomplete and not complete.all():
        raise ValueError(
            f"store {str(path)!r} is not complete ({int(complete.sum())} of {complete.size} grid cells done): "
            "run the same sweep again to finish it"
        )
    return ds.drop_vars("complete")
