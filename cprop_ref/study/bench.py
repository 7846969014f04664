"""``cprop-ref sweep --bench``: a vectorised sweep against looping ``run`` over the same runs.

Workload (the issue's): CProp-SGD on 2-D Rosenbrock with gradient noise 1, ``--bench-configs``
learning rates (log-spaced, 1e-5 to 1e-3, all stable) x 8 seeds x 2000 steps. The sweep
runs all of them in this process; the loop runs ``run(problem, "cprop-sgd:lr=...", 2000,
seed=s)`` for the first ``--bench-loop-configs`` learning rates (every seed) and its time is
scaled to all configurations (a loop's time is proportional to its runs: each run is the same
work). Both include everything each does per step (noise, step, full loss). Also printed:
the in-memory size of a 10^4-configuration dataset with its recorded curves.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from problems import make_problem

from ..runner import run
from .config import make_config
from .execute import run_sweep
from .store import as_dataset, empty_arrays

BENCH_SEEDS = 8
BENCH_STEPS = 2000


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(args: argparse.Namespace) -> int:
    configs = args.bench_configs
    looped = min(args.bench_loop_configs, configs)
    if configs < 1 or looped < 1:
        raise SystemExit("cprop-ref sweep: --bench-configs and --bench-loop-configs must be >= 1")
    lrs = [float(f"{v:.12g}") for v in np.logspace(-5, -3, configs)]
    problem = make_problem("rosenbrock", noise=1.0)
    config = make_config(
        "rosenbrock", ["cprop-sgd"], {"lr": lrs}, BENCH_SEEDS, BENCH_STEPS, problem_options={"noise": 1.0}
    )
    # compile and warm every code path once, outside both timings
    run(problem, "cprop-sgd:lr=1e-4", 5)
    warm = make_config("rosenbrock", ["cprop-sgd"], {"lr": lrs[:2]}, 2, 5, problem_options={"noise": 1.0})
    run_sweep(warm, None, progress=False)

    began = time.perf_counter()
    ds = run_sweep(config, None, progress=False)
    vectorised = time.perf_counter() - began

    began = time.perf_counter()
    for lr in lrs[:looped]:
        for seed in range(BENCH_SEEDS):
            history = run(problem, f"cprop-sgd:lr={lr!r}", BENCH_STEPS, seed=seed, warm_up=False, progress=False)
            assert history.loss[-1, 0] == ds["final_loss"].sel(lr=lr, seed=seed).item() or np.isnan(history.loss[-1, 0])
    loop_measured = time.perf_counter() - began
    loop = loop_measured * configs / looped

    big = make_config(
        "rosenbrock", ["sgd"], {"lr": list(np.logspace(-6, 0, 10_000))}, BENCH_SEEDS, BENCH_STEPS, record_every=20
    )
    size = as_dataset(big, empty_arrays(big)).nbytes
    runs = configs * BENCH_SEEDS
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"workload: cprop-sgd on rosenbrock (noise 1), {configs} lrs x {BENCH_SEEDS} seeds x {BENCH_STEPS} steps")
    print(f"vectorised sweep: {vectorised:8.2f} s  ({vectorised / runs * 1e3:.3f} ms per run)")
    print(
        f"looping run():    {loop:8.2f} s  ({loop_measured / (looped * BENCH_SEEDS) * 1e3:.3f} ms per run; "
        f"{looped * BENCH_SEEDS} runs measured, scaled to {runs})"
    )
    print(f"speed-up:         {loop / vectorised:8.1f}x")
    print(
        f"a 10^4-configuration dataset ({BENCH_SEEDS} seeds, {BENCH_STEPS} steps recorded every 20): "
        f"{size / 2**20:.1f} MiB in memory"
    )
    return 0
