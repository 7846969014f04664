"""The pictures of a sweep: learning-rate sensitivity, an lr x c heatmap, tuning curves.

Each takes the dataset of :func:`~cprop_ref.study.sweep` (or of a store) and writes one
PNG; the quantities are those of :mod:`~cprop_ref.study.report`. matplotlib is the extra
``plot`` (pulled in by ``sweep``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..compare_plots import FIGSIZE, LOG_FLOOR, _save, pyplot
from . import report


def _label(ds: Any) -> str:
    minimum = float(ds.attrs.get("problem_minimum", np.nan))
    return "final loss" if np.isnan(minimum) else "final loss - minimum"


def _style(index: int, optimizer: str) -> dict[str, Any]:
    """Same colour per optimizer as in ``compare``'s plots; dashed without CProp."""
    return {"color": f"C{index % 10}", "linestyle": "-" if optimizer.startswith("cprop-") else "--"}


def plot_sensitivity(ds: Any, path: Path) -> Path | None:
    """Final gap against lr per optimizer (the other keys at their best): the median over
    seeds with the 25%..75% range shaded; a cross on the top edge where every seed
    diverged, an open triangle where some did. ``None`` without an ``lr`` grid key."""
    if "lr" not in report.grid_keys(ds):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    summaries = {row.optimizer: row for row in report.summarise(ds)}
    gap = report.final_gap(ds).where(~ds["diverged"])
    lowest = _start_level(ds)
    for i, optimizer in enumerate(ds["optimizer"].values):
        row = summaries[str(optimizer)]
        line = _line(gap.sel(optimizer=optimizer), row.best)
        diverged = _line(ds["diverged"].sel(optimizer=optimizer), row.best).mean("seed")
        lrs = line["lr"].values
        # values past the top of the axis (see below) are drawn just beyond it
        ceiling = 100.0 * _start_level(ds)
        low, median, high = np.minimum(_quantiles(line.transpose("lr", "seed").values, (0.25, 0.5, 0.75)), ceiling)
        drawn = np.maximum(low[np.isfinite(low)], LOG_FLOOR)
        lowest = min(lowest, float(drawn.min())) if drawn.size else lowest
        style = _style(i, str(optimizer))
        ax.plot(lrs, np.maximum(median, LOG_FLOOR), marker="o", markersize=3, label=str(optimizer), **style)
        ax.fill_between(lrs, np.maximum(low, LOG_FLOOR), np.maximum(high, LOG_FLOOR), color=style["color"], alpha=0.15)
        all_gone = diverged.values == 1.0
        some = (diverged.values > 0) & ~all_gone
        top = ax.get_xaxis_transform()
        ax.scatter(lrs[all_gone], np.full(all_gone.sum(), 0.97), marker="x", color=style["color"], transform=top)
        ax.scatter(
            lrs[some],
            np.full(some.sum(), 0.93),
            marker="^",
            facecolors="none",
            edgecolors=style["color"],
            transform=top,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Runs that blow up without overflowing (1e100) would squash the picture: the axis
    # ends an order of magnitude above the start, and worse values run off its top.
    ax.set_ylim(0.5 * lowest, 10.0 * _start_level(ds))
    ax.set_xlabel("learning rate")
    ax.set_ylabel(_label(ds))
    ax.set_title(
        f"{report.problem_title(ds)}: {_label(ds)} after {ds.attrs.get('steps')} steps\n"
        f"median and 25-75% over {ds.sizes['seed']} seed(s); x: every seed diverged, ^: some did",
        fontsize=8,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def _start_level(ds: Any) -> float:
    """The largest gap at the start (over optimizers, grid points and seeds)."""
    return max(float(report.start_gap(ds).max()), LOG_FLOOR)


def _quantiles(rows: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """Quantiles of the finite values of every row (NaN for a row with none), one row per level."""
    out = np.full((len(levels), rows.shape[0]), np.nan)
    for i, row in enumerate(rows):
        finite = row[np.isfinite(row)]
        if finite.size:
            out[:, i] = np.quantile(finite, levels)
    return out


def _line(values: Any, best: dict[str, float]) -> Any:
    """``values`` along lr (and seed): other grid keys at ``best``, broadcast keys at their first value."""
    others = {k: v for k, v in best.items() if k != "lr"}
    line = values.sel(others) if others else values
    for key in [d for d in line.dims if d not in ("lr", "seed")]:
        line = line.isel({key: 0})
    return line.sortby("lr")


def plot_heatmap(ds: Any, path: Path, x_key: str = "lr", y_key: str | None = None) -> Path | None:
    """The median final gap over two grid keys (lr and the next key, e.g. cprop_c) for every
    optimizer that takes both, the other keys at their best; diverged cells (score inf) in
    grey with a cross. ``None`` if no optimizer takes two grid keys."""
    keys = report.grid_keys(ds)
    if y_key is None:
        rest = [k for k in keys if k != x_key]
        y_key = rest[0] if rest else None
    if y_key is None or x_key not in keys:
        return None
    summaries = {row.optimizer: row for row in report.summarise(ds)}
    chosen = [str(o) for o in ds["optimizer"].values if {x_key, y_key} <= set(report.taken_keys(ds, str(o)))]
    if not chosen:
        return None
    plt = pyplot()
    score = report.scores(ds)
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen) + 0.8, 3.8), squeeze=False)
    finite = score.sel(optimizer=chosen).values
    finite = finite[np.isfinite(finite)]
    vmin = np.log10(max(float(finite.min()), LOG_FLOOR)) if finite.size else 0.0
    vmax = np.log10(max(float(finite.max()), LOG_FLOOR)) if finite.size else 1.0
    vmax = min(vmax, np.log10(_start_level(ds)))  # worse than the start: all one colour
    image = None
    for ax, optimizer in zip(axes[0], chosen):
        best = summaries[optimizer].best
        others = {k: v for k, v in best.items() if k not in (x_key, y_key)}
        grid = score.sel(optimizer=optimizer)
        grid = (grid.sel(others) if others else grid).transpose(y_key, x_key, ...)
        for key in [d for d in grid.dims if d not in (x_key, y_key)]:
            grid = grid.isel({key: 0})
        values = grid.values
        shown = np.log10(np.maximum(np.where(np.isfinite(values), values, np.nan), LOG_FLOOR))
        image = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_facecolor("0.8")
        bad_y, bad_x = np.nonzero(~np.isfinite(values))
        ax.scatter(bad_x, bad_y, marker="x", color="0.3", s=12)
        ax.set_xticks(range(grid.sizes[x_key]), [f"{v:.2g}" for v in grid[x_key].values], rotation=90, fontsize=6)
        ax.set_yticks(range(grid.sizes[y_key]), [f"{v:.6g}" for v in grid[y_key].values], fontsize=7)
        ax.set_xlabel(x_key)
        ax.set_ylabel(y_key)
        ax.set_title(optimizer, fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label=f"log10 median {_label(ds)}")
    fig.suptitle(f"{report.problem_title(ds)}: {x_key} x {y_key} (grey x: median run diverged)", fontsize=9)
    return _save_untight(fig, path, plt)


def _save_untight(fig: Any, path: Path, plt: Any) -> Path:
    """:func:`_save` without ``tight_layout`` (a shared colour bar does not take it)."""
    fig.tight_layout = lambda *args, **kwargs: None  # colorbar axes confuse tight_layout
    return _save(fig, path, plt)


def plot_tuning_curves(ds: Any, path: Path, k_max: int | None = None) -> Path:
    """Expected best final gap after k random trials (grid point and seed), per optimizer,
    with the 5%..95% bootstrap band over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    points = max(
        int(np.prod([ds.sizes[k] for k in report.taken_keys(ds, str(o))] or [1])) for o in ds["optimizer"].values
    )
    limit = k_max or max(2, min(4 * points, 200))
    for i, optimizer in enumerate(ds["optimizer"].values):
        outcomes = report.trial_outcomes(ds, str(optimizer))
        k, curve, low, high = report.tuning_curve(outcomes, limit)
        style = _style(i, str(optimizer))
        ax.plot(k, np.maximum(curve, LOG_FLOOR), label=str(optimizer), **style)
        ax.fill_between(k, np.maximum(low, LOG_FLOOR), np.maximum(high, LOG_FLOOR), color=style["color"], alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("random trials k (grid point and seed drawn uniformly)")
    ax.set_ylabel(f"expected best {_label(ds)}")
    ax.set_title(
        f"{report.problem_title(ds)}: tuning curves, {ds.attrs.get('steps')} steps per trial\n"
        "a diverged trial or one worse than its start counts as the start; band: 5-95% bootstrap over seeds",
        fontsize=8,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def write_plots(ds: Any, out_dir: Path, prefix: str) -> list[Path]:
    """``{prefix}-sensitivity.png``, ``{prefix}-heatmap.png`` and ``{prefix}-tuning.png``
    (the first two where the grid has the keys they need)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_sensitivity(ds, out_dir / f"{prefix}-sensitivity.png"),
        plot_heatmap(ds, out_dir / f"{prefix}-heatmap.png"),
        plot_tuning_curves(ds, out_dir / f"{prefix}-tuning.png"),
    ]
    return [p for p in written if p is not None]
