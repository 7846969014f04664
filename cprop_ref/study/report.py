"""Reading a sweep: best settings, the width of the good learning-rate band, tuning curves.

All on the *final gap*: the final loss minus the problem's known minimum (the loss itself
where the minimum is unknown), per optimizer, grid point and seed.

- A grid point's *score* is the median final gap over seeds, counting a diverged run as
  ``+inf`` (so a point where most seeds diverge cannot be best).
- The *best setting* of an optimizer is its grid point with the lowest score.
- The *good band* (DeepOBS-style robustness, in decades): along ``lr``, the other keys at
  their best values, the contiguous run of learning rates around the best one whose score
  is within ``GOOD_FACTOR`` (2x) of the best; its width is ``log10(high / low)``.
- *Tuning curves* (Dodge et al. 2019; Sivaprasad et al. 2020): the expected best final gap
  after ``k`` random trials, a trial being a grid point and a seed drawn uniformly with
  replacement. With the ``N`` trial outcomes sorted, ``v(1) <= ... <= v(N)``,
  ``E[min of k] = sum_i v(i) (((N - i + 1) / N)^k - ((N - i) / N)^k)``. A diverged trial
  counts as its starting gap (what a user who discards the run is left with), and so does
  one that ended above its start. The band is
  the 5%..95% range over bootstrap resamples of the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: A learning rate is in the good band if its score is within this factor of the best.
GOOD_FACTOR = 2.0
BOOTSTRAP_SAMPLES = 200


def problem_title(ds: Any) -> str:
    """``rosenbrock (noise=10.0)``: the problem and the options the sweep set."""
    import json

    from .store import CONFIG_ATTRIBUTE

    config = json.loads(ds.attrs.get(CONFIG_ATTRIBUTE, "{}"))
    options = ", ".join(f"{k}={v!r}" for k, v in config.get("problem_options", {}).items())
    return f"{ds.attrs.get('problem')} ({options})" if options else str(ds.attrs.get("problem"))


def final_gap(ds: Any) -> Any:
    """``final_loss - minimum`` (or the final loss where the minimum is unknown)."""
    minimum = float(ds.attrs.get("problem_minimum", np.nan))
    return ds["final_loss"] - (0.0 if np.isnan(minimum) else minimum)


def start_gap(ds: Any) -> Any:
    """The gap at step 0, per optimizer, grid point and seed."""
    minimum = float(ds.attrs.get("problem_minimum", np.nan))
    return ds["loss"].isel(step=0) - (0.0 if np.isnan(minimum) else minimum)


def scores(ds: Any) -> Any:
    """Median final gap over seeds with diverged runs as ``+inf``: dims ``optimizer`` x grid."""
    gap = final_gap(ds).where(~ds["diverged"], np.inf)
    return gap.median(dim="seed")


def grid_keys(ds: Any) -> list[str]:
    return [d for d in ds["final_loss"].dims if d not in ("optimizer", "seed")]


def taken_keys(ds: Any, optimizer: str) -> list[str]:
    """The grid keys the optimizer takes (along the others its results were broadcast)."""
    from ..runner import accepted_options, parse_optimizer_spec

    accepted = accepted_options(parse_optimizer_spec(optimizer).name)
    return [key for key in grid_keys(ds) if key in accepted]


@dataclass(frozen=True)
class Summary:
    """One row of the sweep table."""

    optimizer: str
    best: dict[str, float]
    best_score: float
    band: tuple[float, float] | None
    band_decades: float | None
    diverged_share: float


def summarise(ds: Any) -> list[Summary]:
    """The table: per optimizer, its best setting, the good band and the share of runs diverged."""
    score = scores(ds)
    rows = []
    for optimizer in ds["optimizer"].values:
        s = score.sel(optimizer=optimizer)
        keys = taken_keys(ds, str(optimizer))
        flat = int(np.argmin(s.values)) if np.isfinite(s.values).any() else None
        best: dict[str, float] = {}
        best_score = np.inf
        if flat is not None:
            index = np.unravel_index(flat, s.shape)
            best_score = float(s.values[index])
            best = {key: float(s[key].values[i]) for key, i in zip(s.dims, index) if key in keys}
        band = band_decades = None
        if "lr" in keys and flat is not None:
            band = good_band(s, best)
            band_decades = float(np.log10(band[1] / band[0]))
        diverged = ds["diverged"].sel(optimizer=optimizer)
        rows.append(Summary(str(optimizer), best, best_score, band, band_decades, float(diverged.mean())))
    return rows


def good_band(score: Any, best: dict[str, float]) -> tuple[float, float]:
    """The contiguous learning rates around the best whose score is within ``GOOD_FACTOR``
    of the best, the other keys at their best values: ``(lowest lr, highest lr)``."""
    others = {k: v for k, v in best.items() if k != "lr"}
    line = score.sel(others) if others else score
    for key in [d for d in line.dims if d != "lr"]:
        line = line.isel({key: 0})  # broadcast keys: every value is the same
    values = line.values
    lrs = line["lr"].values
    order = np.argsort(lrs)
    values, lrs = values[order], lrs[order]
    i = int(np.flatnonzero(lrs == best["lr"])[0])
    limit = GOOD_FACTOR * values[i]
    low = high = i
    while low > 0 and values[low - 1] <= limit:
        low -= 1
    while high < len(values) - 1 and values[high + 1] <= limit:
        high += 1
    return float(lrs[low]), float(lrs[high])


def expected_best(values: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``E[min of k draws with replacement]`` from ``values`` for every ``k`` (formula above)."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = v.size
    i = np.arange(1, n + 1)
    k = np.asarray(k, dtype=np.float64)[:, None]
    weights = ((n - i + 1) / n) ** k - ((n - i) / n) ** k
    return weights @ v


def trial_outcomes(ds: Any, optimizer: str) -> np.ndarray:
    """Final gaps of every grid point and seed, a diverged run or one that ended above its
    start counted as its starting gap: shape ``(grid points, seeds)``."""
    start = start_gap(ds).sel(optimizer=optimizer)
    gap = np.fmin(final_gap(ds).sel(optimizer=optimizer), start)
    outcome = gap.where(~ds["diverged"].sel(optimizer=optimizer), start)
    keys = [d for d in outcome.dims if d != "seed"]
    return outcome.transpose(*keys, "seed").values.reshape(-1, outcome.sizes["seed"])


def tuning_curve(
    outcomes: np.ndarray, k_max: int, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(k, expected best, 5% band, 95% band)`` for ``k = 1..k_max``; the band from
    ``samples`` bootstrap resamples of the seeds (columns of ``outcomes``)."""
    k = np.arange(1, k_max + 1)
    curve = expected_best(outcomes, k)
    rng = np.random.default_rng(seed)
    seeds = outcomes.shape[1]
    boot = np.array([expected_best(outcomes[:, rng.integers(0, seeds, seeds)], k) for _ in range(samples)])
    return k, curve, np.percentile(boot, 5, axis=0), np.percentile(boot, 95, axis=0)


def format_table(ds: Any) -> str:
    """The table printed by ``cprop-ref sweep`` and ``sweep-report``."""
    gap_name = (
        "median final gap" if not np.isnan(float(ds.attrs.get("problem_minimum", np.nan))) else "median final loss"
    )
    header = f"{'optimizer':<24} {'best setting':<34} {gap_name:>17} {'good lr band (2x)':>21} {'decades':>7} {'diverged':>8}"
    lines = [header, "-" * len(header)]
    for row in summarise(ds):
        setting = ", ".join(f"{k}={v:.4g}" for k, v in row.best.items()) or (
            "-" if np.isinf(row.best_score) else "(none)"
        )
        band = "-" if row.band is None else f"{row.band[0]:.3g} .. {row.band[1]:.3g}"
        decades = "-" if row.band_decades is None else f"{row.band_decades:.2f}"
        score = "all diverged" if np.isinf(row.best_score) else f"{row.best_score:.4e}"
        lines.append(
            f"{row.optimizer:<24} {setting:<34} {score:>17} {band:>21} {decades:>7} {row.diverged_share:>7.1%}"
        )
    lines.append(
        f"{ds.sizes['seed']} seeds per setting; a setting's score is the median over seeds (diverged = inf); "
        "the band holds the contiguous lrs within 2x of the best, other keys at their best"
    )
    return "\n".join(lines)
