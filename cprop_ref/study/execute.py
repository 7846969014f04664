"""Running a sweep: :func:`sweep`, in this process (the default), on a local Dask cluster
(``workers=N``) or on an existing one (``scheduler="tcp://HOST:PORT"``).

Each unit (:mod:`~cprop_ref.study.config`) is computed by
:func:`~cprop_ref.study.engine.compute_unit`, a pure function of the configuration and the
unit, so where and in which order it runs changes nothing; this process alone writes the
results (to memory or to the store), a unit at a time as units complete, with a progress
bar over units.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from problems import Problem

from ..runner import OptimizerSpec
from . import store as stores
from .config import DEFAULT_CHUNK_ROWS, SweepConfig, Unit, make_config
from .engine import compute_unit

#: Seconds to wait for a Dask scheduler before giving up.
CONNECT_TIMEOUT_S = 5
#: How often Dask may restart a unit whose worker died.
RETRIES = 3
#: One thread per worker for NumPy's BLAS, OpenMP and Numba: the workers are the parallelism.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def sweep(
    problem: str | Problem,
    optimizers: Sequence[str | OptimizerSpec] | str,
    grid: Mapping[str, Sequence[float]],
    seeds: int | Sequence[int],
    steps: int,
    *,
    problem_options: Mapping[str, Any] | None = None,
    target: float | None = None,
    record_every: int | None = None,
    store: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool | None = None,
) -> Any:
    """Run every optimizer at every grid point with every seed; return an ``xarray.Dataset``.

    ``problem``: a name (with ``problem_options``) or a problem. ``optimizers``: specs as
    ``cprop-ref compare`` takes them (``"sgd"``, ``"cprop-sgd:c=2"``, ...). ``grid``: maps
    hyperparameter names (``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``eps``,
    ``cprop_beta`` or ``beta``, ``cprop_c`` or ``c``, ``cprop_eps``) to value lists; a key an
    optimizer does not take is computed once for it and broadcast along that axis.
    ``seeds``: a count ``n`` (seeds ``0..n-1``) or a list. ``target``: the loss that counts as
    reached (default: the problem's). ``record_every``: steps between recorded losses
    (default ``steps // 100``; the last step is always recorded).

    The dataset (dims ``optimizer``, the grid keys, ``seed``, ``step``) holds per entry
    what ``run(problem, "<optimizer>:<key>=<value>...", steps, seed=s)`` gives, bit for bit
    for element-wise problems: see :mod:`cprop_ref.study.store` for the variables.
    ``store``: a zarr folder that keeps every finished unit; running the same sweep again
    resumes it, a different sweep is refused. ``workers``: run on a local Dask cluster of
    that many worker processes; ``scheduler``: on the Dask cluster at that address.
    ``chunk_rows``: rows (grid points x seeds) advanced together per unit at most.
    ``progress``: a bar over units on stderr (default: when stderr is a terminal).
    """
    config = make_config(
        problem,
        optimizers,
        grid,
        seeds,
        steps,
        problem_options=problem_options,
        target=target,
        record_every=record_every,
        chunk_rows=chunk_rows,
    )
    check_execution(workers, scheduler)
    stores.require_sweep_extra()
    path = None if store is None else stores.check_store_path(store)
    return run_sweep(config, path, workers=workers, scheduler=scheduler, progress=progress)


def check_execution(workers: int | None, scheduler: str | None) -> None:
    if workers is not None and scheduler is not None:
        raise ValueError("give workers or scheduler, not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"invalid workers={workers!r}: must be an integer >= 1")
    if scheduler is not None and (not isinstance(scheduler, str) or "://" not in scheduler):
        raise ValueError(f"invalid scheduler={scheduler!r}: expected an address such as tcp://HOST:8786")
    if workers is not None or scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ImportError("workers= and scheduler= need Dask: pip install 'cprop-ref[sweep]'") from None


def run_sweep(
    config: SweepConfig,
    path: Path | None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
) -> Any:
    """Compute the units of ``config`` that are not done yet and return the dataset."""
    units = config.units()
    if path is not None:
        complete = stores.open_or_create(path, config)
        pending = [unit for unit in units if not stores.unit_done(config, complete, unit)]
        arrays = None
    else:
        pending = units
        arrays = stores.empty_arrays(config)
    bar = _bar(len(units), len(units) - len(pending), progress, config)
    try:
        for unit, result in _results(config, pending, workers, scheduler):
            if path is not None:
                stores.write_unit(path, config, unit, result)
            else:
                stores.fill(config, arrays, unit, result)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    if path is not None:
        return stores.open_sweep(path)
    return stores.as_dataset(config, arrays)


def _results(
    config: SweepConfig, units: list[Unit], workers: int | None, scheduler: str | None
) -> Iterator[tuple[Unit, dict[str, np.ndarray]]]:
    if not units:
        return
    if workers is None and scheduler is None:
        for unit in units:
            yield unit, compute_unit(config, unit)
        return
    from distributed import Client, LocalCluster, as_completed

    # set_as_default=False below: the sweep's clients must not become the process's Dask
    # scheduler (xarray and the caller's own dask code would go on using a closed client).

    cluster = None
    if workers is not None:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=WORKER_ENV,
        )
        client = Client(cluster, set_as_default=False)
    else:
        client = connect(scheduler)
    try:
        text = config.to_json()
        # Keys name the sweep (a digest of its configuration) and the unit: two sweeps on one
        # scheduler never share a task unless they are the same computation.
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        futures = {
            client.submit(compute_unit, text, unit, retries=RETRIES, key=f"cprop-sweep-{digest}-{unit.key()}"): unit
            for unit in units
        }
        for future in as_completed(futures, loop=client.loop):
            yield futures[future], future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def connect(scheduler: str) -> Any:
    """A Dask client of the scheduler at ``scheduler``; ``OSError`` within
    ``CONNECT_TIMEOUT_S`` seconds if it cannot be reached."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise OSError(
            f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT_S} s "
            f"({type(err).__name__}: {err}); is `dask scheduler` running there?"
        ) from None


def _bar(total: int, done: int, progress: bool | None, config: SweepConfig) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc=f"sweep on {config.problem}", unit="unit", file=sys.stderr)
