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
#: Wide enough for the legend beside the axes.
FIGSIZE = (8.4, 4.2)
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


#: A diverged run's curve is drawn until it leaves the plot: up to this factor above the
#: highest loss of the runs that did not diverge (or above the start, if all diverged).
DIVERGED_HEADROOM = 1e3


def loss_range(curves: Sequence[np.ndarray], diverged: Sequence[bool]) -> tuple[float, float]:
    """The y range of the loss plot: from the lowest value of any curve (at least ``LOG_FLOOR``)
    to the highest of the curves that did not diverge, times ``DIVERGED_HEADROOM`` when some
    did (so that they visibly leave the plot); all diverged: the start times the headroom.
    Values are losses (or gaps) already floored at ``LOG_FLOOR``; non-finite ones are ignored."""
    finite = [c[np.isfinite(c)] for c in curves]
    low = min((float(c.min()) for c in finite if c.size), default=LOG_FLOOR)
    kept = [c for c, bad in zip(finite, diverged) if not bad and c.size]
    if kept:
        high = max(float(c.max()) for c in kept)
    else:
        high = max((float(c[0]) for c in finite if c.size), default=1.0)
    if any(diverged):
        high *= DIVERGED_HEADROOM
    high = max(high, low * 10)
    return max(low, LOG_FLOOR), high


def clip_to(values: np.ndarray, high: float) -> tuple[np.ndarray, bool]:
    """``values`` up to the first one above ``high`` (which is drawn at ``high``, where the
    curve leaves the plot), NaN after it: matplotlib never sees the huge values (no overflow
    warnings), and the plot shows where the curve left. Returns whether anything was cut."""
    above = np.flatnonzero(~(values <= high))  # NaN and inf count as above
    if not above.size:
        return values, False
    out = values.astype(np.float64, copy=True)
    out[above[0]] = high
    out[above[0] + 1 :] = np.nan
    return out, True


def plot_losses(histories: Sequence[History], problem: Problem, path: Path, target: float | None = None) -> Path:
    """Loss (or loss gap) against steps on a log scale: the mean over runs, and the range
    over runs shaded when there are several. The y axis spans the finite, meaningful range
    (:func:`loss_range`); a curve that leaves it (a diverged run) is cut where it leaves, and
    the plot says so under the axes."""
    return _save(loss_figure(histories, problem, target), path, pyplot())


def loss_figure(histories: Sequence[History], problem: Problem, target: float | None = None) -> Any:
    """The figure of :func:`plot_losses`, not yet saved."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    label = "loss"
    series = []
    for history in histories:
        gap, label = loss_gap(history, problem)
        steps = thin(gap.shape[0])
        gap = gap[steps]
        # The runs that did not diverge are averaged (the others are counted in the legend);
        # if every run diverged, their mean is drawn until the first divergence.
        series.append((steps, gap[:, history.finished] if history.finished.any() else gap))
    means = [np.maximum(gap.mean(axis=1), LOG_FLOOR) for _, gap in series]  # NaN stays NaN
    low, high = loss_range(means, [not h.finished.any() for h in histories])
    left_out = []
    for i, (history, (steps, gap), mean) in enumerate(zip(histories, series, means)):
        style = _style(i, history)
        shown, cut = clip_to(mean, high)
        name = history.optimizer
        if history.diverged_count:
            if history.runs == 1:
                name += f" (diverged at step {int(history.diverged_at[0])})"
            else:
                name += f" ({history.diverged_count} of {history.runs} diverged)"
        if cut or not history.finished.any():
            left_out.append(history.optimizer)
        ax.plot(steps, shown, label=name, **style)
        if gap.shape[1] > 1 and history.finished.any():
            lower, _ = clip_to(np.maximum(gap.min(axis=1), LOG_FLOOR), high)
            upper = np.minimum(np.maximum(gap.max(axis=1), LOG_FLOOR), high)
            upper[np.isnan(lower)] = np.nan
            ax.fill_between(steps, lower, upper, color=style["color"], alpha=0.15, linewidth=0)
    if target is not None:
        level = target - problem.minimum if problem.minimum is not None else target
        if low <= level <= high:
            ax.axhline(level, color="0.5", linewidth=0.8, linestyle=":", label="target")
    ax.set_yscale("log")
    ax.set_ylim(low / 2, high * 2)
    ax.set_xlabel("step")
    runs = histories[0].runs if histories else 1
    spread = f"; mean of {runs} runs, shaded: min to max" if runs > 1 else ""
    ax.set_ylabel(label)
    ax.set_title(f"{problem.name}: {label}{spread}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _legend_beside(ax)
    if left_out:
        fig.text(
            0.01,
            0.01,
            f"not drawn: {', '.join(left_out)} above {high:.1e} (diverged or left the range)",
            fontsize=7,
            color="0.3",
        )
    fig.tight_layout(rect=(0, 0.03, 1, 1) if left_out else None)  # room for the note under the axes
    return fig


def _legend_beside(ax: Any) -> None:
    """The legend to the right of the axes, where it can cover no curve."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def plot_scales(histories: Sequence[History], problem: Problem, path: Path) -> Path | None:
    """The mean CProp scale over the elements (solid) and the share of elements at scale 1
    (dotted) against steps, averaged over runs; ``None`` if no optimizer has CProp."""
    fig = scale_figure(histories, problem)
    return None if fig is None else _save(fig, path, pyplot())


def scale_figure(histories: Sequence[History], problem: Problem) -> Any:
    """The figure of :func:`plot_scales`, not yet saved (``None`` if no optimizer has CProp)."""
    with_scale = [(i, h) for i, h in enumerate(histories) if h.scale_mean is not None and h.scale_mean.size]
    if not with_scale:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, history in with_scale:
        rows = thin(history.scale_mean.shape[0])
        steps = rows + 1  # row k holds the scale of step k + 1
        colour = _style(i, history)["color"]
        # The runs that did not diverge; if none, all of them until the first divergence.
        runs = history.finished if history.finished.any() else slice(None)
        name = history.optimizer if history.finished.any() else f"{history.optimizer} (diverged)"
        ax.plot(
            steps,
            history.scale_mean[rows][:, runs].mean(axis=1),
            color=colour,
            linewidth=1.3,
            label=f"{name}: mean",
        )
        ax.plot(
            steps,
            history.scale_ones[rows][:, runs].mean(axis=1),
            color=colour,
            linewidth=0.9,
            linestyle=":",
            label=f"{name}: share at 1",
        )
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("CProp scale")
    ax.set_title(f"{problem.name}: CProp scale over the elements", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_beside(ax)
    fig.tight_layout()
    return fig


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
        path_xy = inside_box(history.trajectory[thin(history.trajectory.shape[0], MAX_PATH_POINTS), 0, :], box)
        style = _style(i, history)
        name = history.optimizer + (" (left the map)" if np.isnan(path_xy).any() else "")
        ax.plot(path_xy[:, 0], path_xy[:, 1], label=name, **style)
        last = path_xy[np.isfinite(path_xy).all(axis=1)][-1:]
        if last.size and not history.diverged:
            ax.plot(last[0, 0], last[0, 1], marker="x", color=style["color"], markersize=7)
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
    fig.tight_layout()
    return _save(fig, path, plt)


def inside_box(points: np.ndarray, box: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    """``points`` (``(n, 2)``) with those far outside ``box`` (more than its size beyond an
    edge) or not finite set to NaN: a diverged path leaves the map without huge coordinates
    reaching matplotlib (overflow warnings)."""
    (x_low, x_high), (y_low, y_high) = box
    wx, wy = x_high - x_low, y_high - y_low
    near = (
        np.isfinite(points).all(axis=1)
        & (points[:, 0] >= x_low - wx)
        & (points[:, 0] <= x_high + wx)
        & (points[:, 1] >= y_low - wy)
        & (points[:, 1] <= y_high + wy)
    )
    out = points.astype(np.float64, copy=True)
    out[~near] = np.nan
    return out


def _box_around(histories: Sequence[History]) -> tuple[tuple[float, float], tuple[float, float]]:
    points = np.concatenate(
        [h.trajectory[:, 0, :] for h in histories if not h.diverged] or [histories[0].trajectory[:1, 0, :]]
    )
    points = points[np.isfinite(points).all(axis=1)]
    low, high = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * np.maximum(high - low, 1e-3)
    return (float(low[0] - pad[0]), float(high[0] + pad[0])), (float(low[1] - pad[1]), float(high[1] + pad[1]))


def _save(fig: Any, path: Path, plt: Any) -> Path:
    """Save ``fig`` (laid out by its builder) as a 256-colour palette PNG: line plots need no more colours, and the file is
    about 2.5 times smaller than matplotlib's true-colour PNG (Pillow comes with matplotlib)."""
    from PIL import Image

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
