"""Optimizer checkpoints as ``.npz`` files: no pickle, a format version, atomic writes.

A state dict is a tree of dicts, lists, JSON scalars and NumPy arrays. :func:`encode`
moves every array into its own ``.npz`` entry (``a0``, ``a1``, ...) and replaces it in
the tree by ``{"__array__": "a0"}``; the tree itself is stored as JSON text in the
entry ``__meta__`` together with the format name and version. Loading uses
``allow_pickle=False``, so a file holding object arrays is refused, never unpickled.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "cprop-ref-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__meta__"
_ARRAY_TAG = "__array__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or was written for something else."""


def encode(tree: Any) -> dict[str, np.ndarray]:
    """Flatten a state-dict tree into ``.npz`` entries (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = node
            return {_ARRAY_TAG: key}
        if isinstance(node, dict):
            return {str(k): walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        if isinstance(node, np.generic):
            return node.item()
        return node

    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tree": walk(tree)}
    arrays[META_KEY] = np.array(json.dumps(meta, allow_nan=False))
    return arrays


def decode(entries: dict[str, np.ndarray], source: str = "checkpoint") -> Any:
    """Inverse of :func:`encode`; raises :class:`CheckpointError` naming ``source``."""
    if META_KEY not in entries:
        raise CheckpointError(f"{source}: not a cprop-ref checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(str(entries[META_KEY][()]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: unreadable metadata ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}: not a cprop-ref checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {meta.get('version')!r}, this cprop-ref reads version {FORMAT_VERSION}"
        )

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_ARRAY_TAG}:
                key = node[_ARRAY_TAG]
                if key not in entries:
                    raise CheckpointError(f"{source}: missing array entry {key!r}")
                return entries[key]
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(meta.get("tree"))


def save(path: str | os.PathLike[str], tree: Any) -> None:
    """Write ``tree`` to ``path`` atomically: a temporary file in the same folder is
    written, flushed to disk, then renamed over ``path``; a crash leaves the old file
    or the new one, never a truncated one."""
    target = Path(path)
    buffer = io.BytesIO()
    np.savez(buffer, **encode(tree))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | os.PathLike[str]) -> Any:
    """Read a checkpoint written by :func:`save`; every failure is a :class:`CheckpointError`
    (or ``FileNotFoundError``) that names the file."""
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"checkpoint file not found: {source}")
    try:
        with np.load(source, allow_pickle=False) as npz:
            entries = {key: npz[key] for key in npz.files}
    except ValueError as err:
        # allow_pickle=False raises ValueError on object arrays.
        raise CheckpointError(f"{source}: refused to load ({err}); cprop-ref checkpoints hold no objects") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"{source}: not a readable .npz checkpoint ({type(err).__name__}: {err})") from None
    return decode(entries, source)
