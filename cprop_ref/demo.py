"""``cprop-ref demo``: CProp-SGD / CProp-Adam against SGD / Adam on a built-in noisy quadratic."""

from __future__ import annotations

import argparse
import time

import numpy as np

from problems import NoisyQuadratic

from .optim import SGD, Adam, CPropAdam, CPropSGD, Optimizer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="CProp against its base optimizers on a noisy quadratic")
    add_demo_arguments(parser)
    parser.set_defaults(func=run_demo)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run (default 2000)")
    parser.add_argument("--dim", type=int, default=20, help="dimension of the quadratic (default 20)")
    parser.add_argument("--condition", type=float, default=100.0, help="condition number (default 100)")
    parser.add_argument("--noise", type=float, default=0.1, help="gradient noise standard deviation (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gradient noise (default 0)")


def _optimizers(x: np.ndarray) -> dict[str, Optimizer]:
    return {
        "sgd": SGD([x.copy()], lr=0.5),
        "cprop-sgd": CPropSGD([x.copy()], lr=0.5),
        "adam": Adam([x.copy()], lr=0.01),
        "cprop-adam": CPropAdam([x.copy()], lr=0.01),
    }


def run_demo(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise SystemExit(f"cprop-ref demo: invalid --steps={args.steps}: must be >= 1")
    problem = NoisyQuadratic(dim=args.dim, condition=args.condition, noise=args.noise)
    print(
        f"noisy quadratic: dim={problem.dim}, condition={problem.condition:g}, noise={problem.noise:g}, "
        f"start=ones, {args.steps} steps, seed={args.seed}"
    )
    print(
        f"{'optimizer':<12} {'lr':>6} {'final loss':>12} {'mean loss, last 10%':>20} {'mean scale':>11} {'time [s]':>9}"
    )
    for name, opt in _optimizers(problem.default_start()).items():
        rng = np.random.default_rng(args.seed)
        (x,) = opt.params
        tail = max(1, args.steps // 10)
        tail_losses = []
        start = time.perf_counter()
        for step in range(args.steps):
            opt.step([problem.stochastic_gradient(x, rng)])
            if step >= args.steps - tail:
                tail_losses.append(float(problem.value(x)))
        elapsed = time.perf_counter() - start
        scales = opt.scales() if hasattr(opt, "scales") else [None]
        mean_scale = f"{float(np.mean(scales[0])):.3f}" if scales[0] is not None else "-"
        lr = opt.param_groups[0]["lr"]
        print(
            f"{name:<12} {lr:>6g} {float(problem.value(x)):>12.4e} {np.mean(tail_losses):>20.4e} "
            f"{mean_scale:>11} {elapsed:>9.2f}"
        )
    return 0
