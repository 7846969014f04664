"""Memory layouts in which the harness hands a port its parameters and gradients.

A layout is a name per tensor; the values are the same whatever the layout, so the reference
runs on plain copies and the comparison is by value. What a layout tests is that the port
updates every element of a parameter that is not one contiguous block, in place:

- ``contiguous``: C order;
- ``transposed``: the transpose of a C-ordered array of the reversed shape (2-d and up);
- ``strided``: every second element of a larger buffer;
- ``shared``: all tensors of the case with this layout are views of one buffer, with gaps;
- ``channels_last``: a 4-d ``(N, C, H, W)`` tensor stored as ``(N, H, W, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LAYOUTS: tuple[str, ...] = ("contiguous", "transposed", "strided", "shared", "channels_last")


def _one(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "transposed" and a.ndim >= 2:
        return np.ascontiguousarray(a.T).T
    if layout == "channels_last" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout in ("strided", "shared") and a.size > 0:
        buffer = np.zeros(2 * a.size, dtype=a.dtype)
        buffer[::2] = a.reshape(-1)
        return buffer[::2].reshape(a.shape)
    return np.array(a, copy=True)


def apply_layouts(arrays: Sequence[np.ndarray | None], layouts: Sequence[str] | None) -> list[np.ndarray | None]:
    """Copies of ``arrays`` (C-ordered values) in ``layouts``; ``None`` stays ``None``.

    Parameters with layout ``shared`` become views of one buffer (each followed by a gap of
    one element); for gradients pass ``shared=False`` semantics by giving their own layouts.
    """
    if layouts is None:
        return [None if a is None else np.array(a, copy=True) for a in arrays]
    if len(layouts) != len(arrays):
        raise ValueError(f"layouts: {len(layouts)} given for {len(arrays)} tensors")
    bad = [layout for layout in layouts if layout not in LAYOUTS]
    if bad:
        raise ValueError(f"layouts: invalid {bad[0]!r}: one of {', '.join(LAYOUTS)}")
    out = [None if a is None else _one(np.asarray(a), layout) for a, layout in zip(arrays, layouts)]
    shared = [k for k, (a, layout) in enumerate(zip(arrays, layouts)) if layout == "shared" and a is not None]
    if len(shared) > 1 and len({np.asarray(arrays[k]).dtype for k in shared}) == 1:
        sizes = [np.asarray(arrays[k]).size for k in shared]
        buffer = np.zeros(sum(sizes) + len(sizes), dtype=np.asarray(arrays[shared[0]]).dtype)
        start = 0
        for k, size in zip(shared, sizes):
            view = buffer[start : start + size].reshape(np.shape(arrays[k]))
            view[...] = arrays[k]
            out[k] = view
            start += size + 1
    return out


def gradient_layouts(layouts: Sequence[str] | None) -> list[str] | None:
    """The gradients' layouts: a parameter's own, a shared one as a strided slice."""
    return None if layouts is None else [("strided" if layout == "shared" else layout) for layout in layouts]
