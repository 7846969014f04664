"""``cprop-ref compare``: CProp and its base optimizers side by side on a test problem.

``cprop-ref compare rosenbrock --optimizers sgd,cprop-sgd,adam,cprop-adam --steps 5000``
runs every optimizer from the same seed (same start, same noise stream), prints a table
(final loss, best loss, steps to reach a target loss, mean CProp scale, wall time) and
writes PNG plots (loss curves; paths over the contour map for 2-D problems; the CProp
scale over time). With no arguments it runs that command on the built-in default,
2-D Rosenbrock, in a few seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from problems import PROBLEMS, Problem, make_problem, parse_options

from .runner import History, OptimizerSpec, parse_optimizer_spec, run

DEFAULT_PROBLEM = "rosenbrock"
DEFAULT_OPTIMIZERS = "sgd,cprop-sgd,adam,cprop-adam"
DEFAULT_STEPS = 5000
DEFAULT_OUT = "out/compare"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="CProp against its base optimizers on a test problem: table and plots",
        description="Run CProp and its base optimizers on a test problem from the same seed; "
        "print a table and write PNG plots.",
        epilog="Optimizer specs: NAME[:KEY=VALUE...], e.g. cprop-sgd:c=3:beta=0.99:lr=0.1 "
        "(names: sgd, cprop-sgd, adam, cprop-adam, adamw, cprop-adamw). `cprop-ref problems` lists the problems.",
    )
    add_compare_arguments(parser)
    parser.set_defaults(func=run_compare)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "problem",
        nargs="?",
        default=DEFAULT_PROBLEM,
        help=f"test problem (default {DEFAULT_PROBLEM}); one of: {', '.join(PROBLEMS)}",
    )
    parser.add_argument(
        "--optimizers", default=DEFAULT_OPTIMIZERS, help=f"comma-separated specs (default {DEFAULT_OPTIMIZERS})"
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"steps per run (default {DEFAULT_STEPS})")
    parser.add_argument(
        "--runs", type=int, default=1, help="independent runs per optimizer, advanced as one array (default 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the start points and the gradient noise (default 0)"
    )
    parser.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="problem option, e.g. --set noise=0.1 (repeatable)",
    )
    parser.add_argument("--lr-sgd", type=float, help="learning rate of sgd and cprop-sgd (default: the problem's)")
    parser.add_argument(
        "--lr-adam", type=float, help="learning rate of adam, adamw and their CProp variants (default: the problem's)"
    )
    parser.add_argument("--target", type=float, help="loss that counts as reached (default: the problem's, if any)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the PNG plots (default {DEFAULT_OUT})")
    parser.add_argument("--prefix", help="file name prefix of the plots (default: the problem name)")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: for runs of 1000 steps or more when stderr is a terminal)",
    )


def optimizer_specs(text: str, lr_sgd: float | None = None, lr_adam: float | None = None) -> list[OptimizerSpec]:
    """Parse ``--optimizers``; ``lr_sgd`` / ``lr_adam`` fill in specs that set no ``lr``."""
    specs = []
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"--optimizers {text!r}: empty entry")
        spec = parse_optimizer_spec(item)
        family_lr = lr_sgd if spec.family == "sgd" else lr_adam
        if family_lr is not None and "lr" not in spec.options:
            spec = replace(spec, options={**spec.options, "lr": family_lr})
        specs.append(spec)
    return specs


def compare(
    problem: Problem,
    specs: Sequence[OptimizerSpec],
    steps: int,
    *,
    seed: int = 0,
    runs: int = 1,
    progress: bool | None = None,
) -> list[History]:
    """One :func:`~cprop_ref.runner.run` per spec, all from the same seed; trajectories
    are kept for 2-D problems (for the contour plot)."""
    return [
        run(problem, spec, steps, seed=seed, runs=runs, record_trajectory=problem.dim == 2, progress=progress)
        for spec in specs
    ]


def _number(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4e}"


#: The optimizer column is at least this wide; longer labels widen it (the rows stay aligned).
LABEL_WIDTH = 24


def format_table(histories: Sequence[History], target: float | None, minimum: float | None = None) -> str:
    """The comparison table. Losses are means over the runs that did not diverge (with the
    standard deviation over them when there are several; a note counts the others); with a known ``minimum`` they are shown as the gap
    ``loss - minimum``, which keeps its digits where the loss itself does not."""
    several = bool(histories) and histories[0].runs > 1
    offset = 0.0 if minimum is None else minimum
    final_name, best_name = ("final loss", "best loss") if minimum is None else ("final - min", "best - min")
    spread = " (+- sd over runs)" if several else ""
    width = max([LABEL_WIDTH, *(len(h.optimizer) for h in histories)])
    header = (
        f"{'optimizer':<{width}} {'lr':>8} {final_name:>11}{spread} "
        f"{best_name:>11} {'steps to target':>15} {'mean scale':>10} {'wall [s]':>8}"
    )
    lines = [header, "-" * len(header)]
    for h in histories:
        mean_loss = h.mean_loss()  # over the runs that did not diverge
        final = _number(float(mean_loss[-1] - offset))
        kept = h.loss[-1, h.finished]
        if several:
            final += f" (+- {kept.std(ddof=1):.2e})" if kept.size > 1 else " (+- -)"
        reached = h.steps_to_target(target) if target is not None else None
        if target is None:
            reached_text = "-"
        elif reached is not None:
            reached_text = str(reached)
        else:  # every run diverged: "> N" would claim N steps run without reaching the target
            reached_text = f"> {h.steps}" if h.finished.any() else "diverged"
        finished_scale = h.mean_scale[h.finished] if h.mean_scale is not None else np.empty(0)
        scale = f"{float(finished_scale.mean()):.3f}" if finished_scale.size else "-"
        lr = f"{h.lr:g}" if h.lr is not None else "-"
        lines.append(
            f"{h.optimizer:<{width}} {lr:>8} {final:>{11 + len(spread)}} {_number(float(mean_loss.min() - offset)):>11} "
            f"{reached_text:>15} {scale:>10} {h.wall_time:>8.2f}"
        )
    for h in histories:
        if h.diverged:
            lines.append(f"note: {h.diverged}")
    return "\n".join(lines)


def identical_runs(histories: Sequence[History]) -> bool:
    """Whether every history's runs are copies of each other (a noise-free problem that starts
    every run at the same point): then ``--runs`` only repeats the same numbers."""
    return all(h.runs > 1 and bool(np.all(h.loss == h.loss[:, :1])) for h in histories) and bool(histories)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"cprop-ref compare: {message}")


def _warn(message: str) -> None:
    print(f"cprop-ref compare: warning: {message}", file=sys.stderr)


def check_out_dir(out: str, prefix: str) -> Path:
    """The plot folder, created now (before any run) so that a bad ``--out`` or ``--prefix``
    fails at once, naming itself."""
    if not prefix or prefix in (".", "..") or "/" in prefix or os.sep in prefix:
        raise ValueError(f"invalid --prefix={prefix!r}: a file name prefix, without a folder separator")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out!r}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out!r}: the folder is not writeable")
    return folder


def check_specs(problem: Problem, specs: Sequence[OptimizerSpec]) -> list[str]:
    """Build every optimizer once on a scratch point, so that a bad hyperparameter anywhere
    in ``--optimizers`` is refused before the first run; return warnings for settings that
    make a run pointless (``lr=0``, ``c=0``)."""
    warnings = []
    for spec in specs:
        try:
            opt: Any = spec.build([np.zeros(problem.dim)], problem.default_lr.get(spec.family))
        except ValueError as err:
            message = str(err)
            prefix = f"optimizer {spec.label!r}"
            raise ValueError(message if message.startswith(prefix) else f"{prefix}: {message}") from None
        group = opt.param_groups[0]
        if group.get("lr") == 0.0:
            warnings.append(f"{spec.label}: lr=0, its parameters never move")
        c = group.get("cprop_c", getattr(opt, "c", None))
        if c == 0.0:
            warnings.append(f"{spec.label}: c=0, every CProp scale is 0 and its parameters never move")
    return warnings


def run_compare(args: argparse.Namespace) -> int:
    # Everything is checked before the first run (and before the header is printed): a bad
    # spec late in --optimizers, a bad --out or --prefix must not cost the runs before it.
    try:
        if args.steps < 1:
            raise ValueError(f"invalid --steps={args.steps}: must be >= 1")
        if args.runs < 1:
            raise ValueError(f"invalid --runs={args.runs}: must be >= 1")
        if args.seed < 0:
            raise ValueError(f"invalid --seed={args.seed}: must be >= 0")
        if args.target is not None and not math.isfinite(args.target):
            raise ValueError(f"invalid --target={args.target}: must be a finite loss")
        for option, value in (("--lr-sgd", args.lr_sgd), ("--lr-adam", args.lr_adam)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"invalid {option}={value}: must be a finite number >= 0")
        problem = make_problem(args.problem, **parse_options(args.problem, args.options))
        specs = optimizer_specs(args.optimizers, args.lr_sgd, args.lr_adam)
        warnings = check_specs(problem, specs)
        out_dir = None
        if not args.no_plots:
            from .compare_plots import pyplot

            pyplot()  # fail before running if matplotlib is missing
            out_dir = check_out_dir(args.out, args.prefix if args.prefix is not None else problem.name)
    except (ValueError, ImportError) as err:
        raise _fail(str(err)) from None
    for warning in warnings:
        _warn(warning)
    target = args.target if args.target is not None else problem.target_loss()
    minimum = "unknown" if problem.minimum is None else f"{problem.minimum:.6g}"
    print(f"{problem.name}: {problem.describe()}; dim={problem.dim}, minimum={minimum}")
    print(
        f"{args.steps} steps, {args.runs} run(s), seed={args.seed}, target loss={'-' if target is None else f'{target:.6g}'}; "
        "losses are of the full (noise-free) objective, averaged over runs"
    )
    try:
        histories = compare(problem, specs, args.steps, seed=args.seed, runs=args.runs, progress=args.progress)
    except ValueError as err:
        raise _fail(str(err)) from None
    print(format_table(histories, target, problem.minimum))
    if args.runs > 1 and identical_runs(histories):
        print(
            f"note: the {args.runs} runs of each optimizer are identical ({problem.name} as set has no gradient "
            "noise and starts every run at the same point); --runs adds nothing here (try --set noise=0.1)"
        )
    if out_dir is not None:
        from .compare_plots import write_plots

        try:
            written = write_plots(histories, problem, out_dir, args.prefix or problem.name, target)
        except OSError as err:
            raise _fail(f"cannot write the plots into {str(out_dir)!r} ({err.strerror or err})") from None
        print("plots: " + ", ".join(str(p) for p in written))
    return 0
