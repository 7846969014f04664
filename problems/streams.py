"""One random stream per run, drawn for many runs at once: :class:`RunStreams`.

A batch of runs advanced as one ``(runs, dim)`` array needs gradient noise whose row ``i``
depends only on run ``i``'s seed, never on how many runs share the batch or where run ``i``
sits in it; otherwise a run of a sweep could not be repeated on its own. One
``numpy.random.Generator`` per run would do it, at the price of a Python loop over the runs
at every step. :class:`RunStreams` instead gives every run its own SplitMix64 stream
(Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), a
counter-based generator whose ``n``-th output is a pure function of the seed and ``n``,

    ``state_n = key + (n + 1) * GAMMA  (mod 2^64)``,
    ``z = (state_n ^ (state_n >> 30)) * 0xBF58476D1CE4E5B9``,
    ``z = (z ^ (z >> 27)) * 0x94D049BB133111EB``,  ``output_n = z ^ (z >> 31)``,

so a draw for all runs is a handful of vectorised integer operations. The run's ``key`` is
64 bits of ``numpy.random.SeedSequence(seed)``. Every draw takes the same number of
values from every run's stream (the row length), so the streams stay in step. Doubles
are ``((output >> 11) + 0.5) * 2^-53``, uniform on ``(0, 1)``; normals are their inverse
normal CDF (``scipy.special.ndtri``); integers in ``[low, high)`` are
``low + floor(u * (high - low))``, whose bias (at most ``(high - low) / 2^53``) is far
below anything a test problem could show.

The problems use only ``standard_normal`` and ``integers`` of their random source, so a
:class:`RunStreams` stands in wherever a ``numpy.random.Generator`` is accepted; the
leading axis of every requested shape is the run axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtri

#: SplitMix64's increment (the odd integer closest to 2^64 / golden ratio) and mixing constants.
GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_DOUBLE_UNIT = 2.0**-53


def run_key(seed: int) -> int:
    """The 64-bit SplitMix64 key of the run with ``seed`` (an integer >= 0)."""
    return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint64)[0])


def splitmix64(keys: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Output number ``indices`` of the SplitMix64 streams with ``keys`` (uint64, broadcast)."""
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the definition
        z = keys + (indices + np.uint64(1)) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


class RunStreams:
    """Independent random streams, one per run, drawn as the rows of one array.

    ``RunStreams([s0, s1, ...])``: row ``i`` of every draw comes from the stream of seed
    ``s_i`` alone, so ``RunStreams([s0, s1]).standard_normal((2, d))[1]`` equals
    ``RunStreams([s1]).standard_normal((1, d))[0]`` bit for bit, and so on for any
    sequence of draws. See the module docstring for the generator.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        seeds = [int(s) for s in seeds]
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f"RunStreams needs at least one seed, each an integer >= 0; got {seeds!r}")
        self.seeds = tuple(seeds)
        self._keys = np.array([run_key(s) for s in seeds], dtype=np.uint64)[:, None]
        #: How many values each stream has given so far.
        self.position = 0

    @property
    def runs(self) -> int:
        return len(self.seeds)

    def _raw(self, size: int | Sequence[int]) -> np.ndarray:
        shape = (size,) if isinstance(size, (int, np.integer)) else tuple(int(n) for n in size)
        if not shape or shape[0] != self.runs:
            raise ValueError(f"RunStreams over {self.runs} runs: the leading axis of size={shape} must be {self.runs}")
        per_run = int(np.prod(shape[1:], dtype=np.int64))
        indices = np.arange(self.position, self.position + per_run, dtype=np.uint64)
        self.position += per_run
        return splitmix64(self._keys, indices[None, :]).reshape(shape)

    def random(self, size: int | Sequence[int]) -> np.ndarray:
        """Doubles uniform on the open interval ``(0, 1)``."""
        return ((self._raw(size) >> np.uint64(11)).astype(np.float64) + 0.5) * _DOUBLE_UNIT

    def standard_normal(self, size: int | Sequence[int], dtype: type | np.dtype = np.float64) -> np.ndarray:
        """Standard normal values (the inverse normal CDF of :meth:`random`), in ``dtype``."""
        return ndtri(self.random(size)).astype(dtype, copy=False)

    def integers(self, low: int, high: int, size: int | Sequence[int]) -> np.ndarray:
        """Integers uniform on ``[low, high)`` (int64)."""
        if high <= low:
            raise ValueError(f"integers: high={high} must exceed low={low}")
        drawn = np.floor(self.random(size) * (high - low)).astype(np.int64)
        return low + np.minimum(drawn, high - low - 1)  # u * n < n always; kept as a guard
