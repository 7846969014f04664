"""The pictures of ``cprop-ref compare``: loss curves, 2-D trajectories, the CProp scale.

matplotlib is the optional extra ``plot``; it is imported only when a picture is drawn,
with the non-interactive Agg backend (no display needed). PNGs at 100 dpi stay small.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from problems import Problem

from .runner import History

DPI = 100
FIGSIZE = (6.4, 4.2)
#: At most this many points per line: more only add PNG bytes, not information, at 100 dpi.
MAX_POINTS = 600
#: Paths keep more points, so that their zig-zags stay visible.
MAX_PATH_POINTS = 2000
#: Loss gaps below this are drawn at this value on the log axis (a run that hit the exact minimum).
LOG_FLOOR = 1e-16


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or an ``ImportError`` naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "the plots need matplotlib: install the optional extra with  pip install 'cprop-ref[plot]'  "
            "(or pass --no-plots)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def thin(length: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most about ``limit`` evenly spaced points out of ``length``, the last included."""
    stride = max(1, -(-length // limit))
    return np.unique(np.append(np.arange(0, length, stride), length - 1))


def _style(index: int, history: History) -> dict[str, Any]:
    """Same colour for an optimizer all through; dashed for optimizers without CProp."""
    has_cprop = history.scale_mean is not None
    return {"color": f"C{index % 10}", "linestyle": "-" if has_cprop else "--", "linewidth": 1.3}


def loss_gap(history: History, problem: Problem) -> tuple[np.ndarray, str]:
    """The loss minus the known minimum (or the loss itself), per step and run, and its axis label."""
    if problem.minimum is None:
        return history.loss, "training loss"
    return history.loss - problem.minimum, "loss - minimum"


def plot_losses(histories: Sequence[History], problem: Problem, path: Path, target: float | None = None) -> Path:
    """Loss (or loss gap) against steps on a log scale: the mean over runs, and the range
    over runs shaded when there are several."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    label = "loss"
    for i, history in enumerate(histories):
        gap, label = loss_gap(history, problem)
        steps = thin(gap.shape[0])
        gap = gap[steps][:, history.finished]  # diverged runs are counted in the legend, not averaged
        if gap.shape[1] == 0:
            continue
        style = _style(i, history)
        diverged = f" ({history.diverged_count} of {history.runs} diverged)" if history.diverged_count else ""
        ax.plot(steps, np.maximum(gap.mean(axis=1), LOG_FLOOR), label=history.optimizer + diverged, **style)
        if gap.shape[1] > 1:
            low, high = np.maximum(gap.min(axis=1), LOG_FLOOR), np.maximum(gap.max(axis=1), LOG_FLOOR)
            ax.fill_between(steps, low, high, color=style["color"], alpha=0.15, linewidth=0)
    if target is not None:
        level = target - problem.minimum if problem.minimum is not None else target
        if level > 0:
            ax.axhline(level, color="0.5", linewidth=0.8, linestyle=":", label="target")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    runs = histories[0].runs if histories else 1
    spread = f"; mean of {runs} runs, shaded: min to max" if runs > 1 else ""
    ax.set_ylabel(label)
    ax.set_title(f"{problem.name}: {label}{spread}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def plot_scales(histories: Sequence[History], problem: Problem, path: Path) -> Path | None:
    """The mean CProp scale over the elements (solid) and the share of elements at scale 1
    (dotted) against steps, averaged over runs; ``None`` if no optimizer has CProp."""
    with_scale = [(i, h) for i, h in enumerate(histories) if h.scale_mean is not None and h.scale_mean.size]
    if not with_scale:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, history in with_scale:
        rows = thin(history.scale_mean.shape[0])
        steps = rows + 1  # row k holds the scale of step k + 1
        colour = _style(i, history)["color"]
        ax.plot(
            steps,
            history.scale_mean[rows][:, history.finished].mean(axis=1),
            color=colour,
            linewidth=1.3,
            label=f"{history.optimizer}: mean",
        )
        ax.plot(
            steps,
            history.scale_ones[rows][:, history.finished].mean(axis=1),
            color=colour,
            linewidth=0.9,
            linestyle=":",
            label=f"{history.optimizer}: share at 1",
        )
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("CProp scale")
    ax.set_title(f"{problem.name}: CProp scale over the elements", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def plot_trajectories(histories: Sequence[History], problem: Problem, path: Path) -> Path | None:
    """For 2-D problems: the first run's path of every optimizer over the contour map of
    the loss (log-spaced levels), with the start (black circle) and the known minimisers
    (red stars) marked. ``None`` for other problems or histories without trajectories."""
    if problem.dim != 2 or not histories or any(h.trajectory is None for h in histories):
        return None
    plt = pyplot()
    from matplotlib.colors import LogNorm

    box = problem.plot_box or _box_around(histories)
    (x_low, x_high), (y_low, y_high) = box
    grid_x, grid_y = np.meshgrid(np.linspace(x_low, x_high, 240), np.linspace(y_low, y_high, 240))
    values = problem.value(np.stack([grid_x, grid_y], axis=-1))
    floor = problem.minimum if problem.minimum is not None else float(values.min())
    gap = values - floor
    positive = gap[gap > 0]
    low = max(float(positive.min()), 1e-3 * float(positive.max())) if positive.size else 1e-3
    levels = np.logspace(np.log10(low), np.log10(float(gap.max())), 25)
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    ax.contour(grid_x, grid_y, np.maximum(gap, low), levels=levels, norm=LogNorm(), cmap="Greys", linewidths=0.5)
    for i, history in enumerate(histories):
        path_xy = history.trajectory[thin(history.trajectory.shape[0], MAX_PATH_POINTS), 0, :]
        style = _style(i, history)
        ax.plot(path_xy[:, 0], path_xy[:, 1], label=history.optimizer, **style)
        ax.plot(path_xy[-1, 0], path_xy[-1, 1], marker="x", color=style["color"], markersize=7)
    start = histories[0].trajectory[0, 0]
    ax.plot(start[0], start[1], "o", color="black", markersize=6, label="start")
    if problem.minimisers is not None:
        ax.plot(problem.minimisers[:, 0], problem.minimisers[:, 1], "*", color="red", markersize=12, label="minimum")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_title(f"{problem.name}: paths of run 0 (x: end)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, plt)


def _box_around(histories: Sequence[History]) -> tuple[tuple[float, float], tuple[float, float]]:
    points = np.concatenate([h.trajectory[:, 0, :] for h in histories])
    low, high = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * np.maximum(high - low, 1e-3)
    return (float(low[0] - pad[0]), float(high[0] + pad[0])), (float(low[1] - pad[1]), float(high[1] + pad[1]))


def _save(fig: Any, path: Path, plt: Any) -> Path:
    """Save as a 256-colour palette PNG: line plots need no more colours, and the file is
    about 2.5 times smaller than matplotlib's true-colour PNG (Pillow comes with matplotlib)."""
    from PIL import Image

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def write_plots(
    histories: Sequence[History], problem: Problem, out_dir: Path, prefix: str, target: float | None = None
) -> list[Path]:
    """Write ``{prefix}-loss.png``, ``{prefix}-scale.png`` (if an optimizer has CProp) and
    ``{prefix}-trajectories.png`` (2-D problems) into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_losses(histories, problem, out_dir / f"{prefix}-loss.png", target)]
    for drawn in (
        plot_scales(histories, problem, out_dir / f"{prefix}-scale.png"),
        plot_trajectories(histories, problem, out_dir / f"{prefix}-trajectories.png"),
    ):
        if drawn is not None:
            written.append(drawn)
    return written
