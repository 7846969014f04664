"""``cprop-ref sweep`` and ``cprop-ref sweep-report``.

``cprop-ref sweep rosenbrock --optimizers sgd,cprop-sgd --grid lr=1e-4:1:17:log --grid c=0.5,1,2
--seeds 8 --steps 2000 --set noise=1 --store out/sweep.zarr`` runs the sweep (resuming the
store if it exists), prints the table and writes the PNGs; ``cprop-ref sweep-report STORE``
redraws them from a store; ``cprop-ref sweep --bench`` times a vectorised sweep against
looping ``run`` (see :mod:`cprop_ref.study.bench`). Bad input stops before any run with a
one-line message and exit code 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from problems import PROBLEMS, parse_options

DEFAULT_OUT = "out/sweep"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="optimizers over a grid of hyperparameters and seeds: table, sensitivity, heatmap, tuning curves",
        description="Run every optimizer at every grid point with every seed (vectorised; optionally on Dask), "
        "print the table and write PNGs. See docs/sweeps.md.",
        epilog="Grid values: a list (c=0.5,1,2) or a range LOW:HIGH:COUNT[:log|lin] (lr=1e-4:1:17:log). "
        "Keys: lr, momentum, dampening, weight_decay, eps, beta (cprop_beta), c (cprop_c), cprop_eps.",
    )
    parser.add_argument("problem", nargs="?", default="rosenbrock", help=f"test problem; one of: {', '.join(PROBLEMS)}")
    parser.add_argument("--optimizers", default="sgd,cprop-sgd", help="comma-separated specs (default sgd,cprop-sgd)")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=VALUES", help="a grid axis (repeatable; order kept)"
    )
    parser.add_argument("--seeds", default="4", help="a count n (seeds 0..n-1) or a list a,b,c (default 4)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument(
        "--set", dest="options", action="append", default=[], metavar="KEY=VALUE", help="problem option"
    )
    parser.add_argument("--target", type=float, help="loss that counts as reached (default: the problem's)")
    parser.add_argument("--record-every", type=int, help="steps between recorded losses (default steps // 100)")
    parser.add_argument("--chunk-rows", type=int, default=4096, help="rows (points x seeds) per unit (default 4096)")
    parser.add_argument("--store", help="zarr store (a folder): written unit by unit, resumed when run again")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run on a local Dask cluster of N worker processes")
    where.add_argument("--scheduler", help="run on the Dask cluster at this address (tcp://HOST:8786)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    parser.add_argument("--prefix", help="file name prefix of the PNGs (default: the problem name)")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar over units"
    )
    parser.add_argument(
        "--bench", action="store_true", help="time a vectorised sweep against looping run() and exit (see --help-bench)"
    )
    parser.add_argument("--bench-configs", type=int, default=256, help="--bench: learning rates (default 256)")
    parser.add_argument("--bench-loop-configs", type=int, default=16, help="--bench: of them, looped (default 16)")
    parser.set_defaults(func=run_sweep_command)

    report = subparsers.add_parser(
        "sweep-report",
        help="redraw a sweep's table and PNGs from its store",
        description="Print the table and write the PNGs of the sweep in a zarr store.",
    )
    report.add_argument("store", help="the zarr store of a finished sweep")
    report.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    report.add_argument("--prefix", help="file name prefix of the PNGs (default: the problem name)")
    report.add_argument("--no-plots", action="store_true", help="print the table only")
    report.set_defaults(func=run_report_command)


def parse_seeds(text: str) -> int | list[int]:
    text = text.strip()
    try:
        if "," in text:
            return [int(item) for item in text.split(",")]
        return int(text)
    except ValueError:
        raise ValueError(f"--seeds {text!r}: a count or a comma-separated list of integers") from None


def parse_grid(items: list[str]) -> dict[str, tuple[float, ...]]:
    from .config import parse_grid_values

    grid: dict[str, tuple[float, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--grid {item!r}: expected KEY=VALUES")
        if key in grid:
            raise ValueError(f"--grid {key} given twice")
        grid[key] = parse_grid_values(key, values)
    return grid


def run_sweep_command(args: argparse.Namespace) -> int:
    if args.bench:
        from .bench import run_bench

        return run_bench(args)
    from . import plots, report
    from .config import make_config
    from .execute import check_execution, run_sweep
    from .store import check_store_path, require_sweep_extra

    try:
        options = parse_options(args.problem, args.options)
        config = make_config(
            args.problem,
            args.optimizers,
            parse_grid(args.grid) if args.grid else _no_grid(),
            parse_seeds(args.seeds),
            args.steps,
            problem_options=options,
            target=args.target,
            record_every=args.record_every,
            chunk_rows=args.chunk_rows,
        )
        check_execution(args.workers, args.scheduler)
        require_sweep_extra()
        path = None if args.store is None else check_store_path(args.store)
        if not args.no_plots:
            from ..compare_plots import pyplot

            pyplot()  # fail before running if matplotlib is missing
    except (ValueError, OSError, ImportError) as err:
        raise SystemExit(f"cprop-ref sweep: {err}") from None
    runs = len(config.optimizers) * len(config.seeds)
    for values in config.grid.values():
        runs *= len(values)
    print(
        f"{config.problem} ({', '.join(f'{k}={v!r}' for k, v in config.problem_options.items()) or 'defaults'}): "
        f"{len(config.optimizers)} optimizer(s) x {' x '.join(f'{len(v)} {k}' for k, v in config.grid.items())} "
        f"x {len(config.seeds)} seeds = {runs} runs of {config.steps} steps"
    )
    try:
        ds = run_sweep(config, path, workers=args.workers, scheduler=args.scheduler, progress=args.progress)
    except (ValueError, OSError) as err:
        raise SystemExit(f"cprop-ref sweep: {err}") from None
    print(report.format_table(ds))
    if not args.no_plots:
        written = plots.write_plots(ds, Path(args.out), args.prefix or config.problem)
        print("plots: " + ", ".join(str(p) for p in written))
    return 0


def _no_grid() -> dict[str, tuple[float, ...]]:
    raise ValueError("no --grid given: add at least one, e.g. --grid lr=1e-4:1e-1:7:log")


def run_report_command(args: argparse.Namespace) -> int:
    from . import plots, report
    from .store import open_sweep

    try:
        if not args.no_plots:
            from ..compare_plots import pyplot

            pyplot()
        ds = open_sweep(args.store)
    except (ValueError, OSError, ImportError) as err:
        raise SystemExit(f"cprop-ref sweep-report: {err}") from None
    print(f"{args.store}: {ds.attrs.get('problem')}, {ds.attrs.get('steps')} steps")
    print(report.format_table(ds))
    if not args.no_plots:
        written = plots.write_plots(ds, Path(args.out), args.prefix or str(ds.attrs.get("problem")))
        print("plots: " + ", ".join(str(p) for p in written))
    return 0
