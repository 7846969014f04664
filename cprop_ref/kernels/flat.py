"""One flat buffer per dtype for the optimizer state, with per-parameter views.

A :class:`FlatState` holds an *arena*, a 2-D array with one row per state field and one
column per parameter element (the parameters laid end to end), and hands out views
of it, shaped like each parameter, that go into the optimizer's per-parameter state
dicts. The kernels then reach every parameter's state through one array and an offset.
The dicts stay the source of truth: when an entry is not the arena's own view (after
``load_state_dict``, a NumPy-backend step, or a state written by hand) its values are
copied into the arena before the step (:meth:`FlatState.adopt`).

:func:`flat_parameters` gives users the same layout for their parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class FlatState:
    """State arena for the parameters ``members`` (index in the optimizer, array) of one dtype.

    ``rows`` names the arena's rows: the state fields, then any scratch rows.
    """

    def __init__(self, rows: Sequence[str], members: Sequence[tuple[int, np.ndarray]], dtype: np.dtype) -> None:
        self.rows = tuple(rows)
        self.key = layout_key(members)
        sizes = [p.size for _, p in members]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.intp)])[:-1] if sizes else np.zeros(0, np.intp)
        # np.zeros maps untouched pages lazily: rows a configuration never uses cost no memory.
        self.arena = np.zeros((len(self.rows), int(sum(sizes))), dtype)
        #: The dtype's largest finite value (CProp's clamp of an overflowed ``m_hat``).
        self.largest = float(np.finfo(self.arena.dtype).max)
        #: Whether the arena is float32 (the one loops' variants depend on it).
        self.single = self.arena.dtype == np.float32
        self.position = {k: i for i, (k, _) in enumerate(members)}
        self.sizes = np.asarray(sizes, dtype=np.intp)
        self.offsets = offsets.astype(np.intp)
        self.param_addresses = np.asarray([p.ctypes.data for _, p in members], dtype=np.intp)
        self._params = [p for _, p in members]
        #: The tables of the launches over this arena, by the tensors launched (``dispatch._Launch``).
        self.launches: dict[tuple[int, ...], tuple] = {}
        self._views: list[dict[str, np.ndarray]] = []
        for (_, p), off in zip(members, self.offsets):
            start, stop = int(off), int(off) + p.size
            self._views.append({row: self.arena[r, start:stop].reshape(p.shape) for r, row in enumerate(self.rows)})

    def param(self, k: int) -> np.ndarray:
        """Parameter ``k`` itself."""
        return self._params[self.position[k]]

    def view(self, k: int, row: str) -> np.ndarray:
        """Parameter ``k``'s view of ``row``."""
        return self._views[self.position[k]][row]

    def adopt(self, k: int, row: str, value: np.ndarray | None) -> np.ndarray:
        """Make the arena hold ``value`` (zeros for ``None``) in parameter ``k``'s ``row``; returns the view."""
        view = self._views[self.position[k]][row]
        if value is None:
            view[...] = 0
        elif value is not view:
            np.copyto(view, value)
        return view


def layout_key(members: Sequence[tuple[int, np.ndarray]]) -> tuple:
    """What fixes an arena's layout: which arrays, in which order, of which shapes."""
    return tuple((k, id(p), p.shape) for k, p in members)


def flat_parameters(
    shapes: Sequence[tuple[int, ...]], dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A zero buffer and one view per shape into it, laid end to end: parameters (and
    gradients) kept so are one contiguous block of memory, and the views are ordinary
    arrays for everything else."""
    shapes = [tuple(int(n) for n in shape) for shape in shapes]
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    buffer = np.zeros(sum(sizes), dtype)
    views, start = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(buffer[start : start + size].reshape(shape))
        start += size
    return buffer, views


def chunk_table(sizes: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split tensors of ``sizes`` elements into chunks of at most ``chunk`` elements:
    ``(tensor, lo, hi)`` per chunk, the tensors' chunks in order."""
    sizes = np.asarray(sizes, dtype=np.intp)
    counts = (sizes + chunk - 1) // chunk
    tensor = np.repeat(np.arange(sizes.size, dtype=np.intp), counts)
    first = np.cumsum(counts) - counts
    within = np.arange(tensor.size, dtype=np.intp) - np.repeat(first, counts)
    lo = within * chunk
    hi = np.minimum(lo + chunk, sizes[tensor])
    return tensor, lo, hi
