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
    raw = entries[META_KEY]
    if not isinstance(raw, np.ndarray) or raw.ndim != 0 or raw.dtype.kind != "U":
        raise CheckpointError(f"{source}: unreadable metadata (the {META_KEY} entry is not a text scalar)")
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{source}: unreadable metadata ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{source}: not a cprop-ref checkpoint (format {found!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {meta.get('version')!r}, this cprop-ref reads version {FORMAT_VERSION}"
        )

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_ARRAY_TAG}:
                key = node[_ARRAY_TAG]
                if not isinstance(key, str) or key == META_KEY or key not in entries:
                    raise CheckpointError(f"{source}: missing array entry {key!r}")
                return entries[key]
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    try:
        return walk(meta.get("tree"))
    except RecursionError:
        raise CheckpointError(f"{source}: unreadable metadata (nested too deeply)") from None


def save(path: str | os.PathLike[str], tree: Any) -> None:
    """Write ``tree`` to ``path`` atomically: a temporary file in the same folder is
    written, flushed to disk, then renamed over ``path``; a crash leaves the old file
    or the new one, never a truncated one. Where ``path`` is a symbolic link, the file it
    points to is replaced and the link stays (renaming over the link would replace the link
    itself by a regular file)."""
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    buffer = io.BytesIO()
    np.savez(buffer, **encode(tree))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        _keep_permissions(fd, target)
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _keep_permissions(fd: int, target: Path) -> None:
    # mkstemp creates the file readable by its owner only: a new checkpoint stays so, one
    # that replaces an existing file keeps that file's permission bits.
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        return
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)


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


#: How a zip archive (every ``.npz`` file) begins: a local file header, or the end
#: record of an empty archive. Anything else is refused before NumPy sees it (NumPy
#: would try to read a file without this signature as a pickle).
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, where the platform tells (``None`` otherwise)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _size_limit(max_bytes: int | None) -> tuple[int | None, str]:
    if max_bytes is None:
        memory = physical_memory()
        return memory, "the machine's physical memory"
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
    return max_bytes, "max_bytes"


def load(path: str | os.PathLike[str], max_bytes: int | None = None) -> Any:
    """Read a checkpoint written by :func:`save`; every failure is a :class:`CheckpointError`
    (or ``FileNotFoundError``) that names the file. Nothing in the file is unpickled.

    Before anything is decompressed, the sizes its entries declare must add up to at most
    ``max_bytes`` (by default the machine's physical memory): a hostile archive whose entries
    would decompress to more (a "zip bomb") is refused instead of filling the memory.
    """
    limit, limit_name = _size_limit(max_bytes)
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"checkpoint file not found: {source}")
    try:
        with open(source, "rb") as handle:
            signature = handle.read(len(_ZIP_SIGNATURES[0]))
    except OSError as err:
        raise CheckpointError(f"{source}: cannot be read ({type(err).__name__}: {err})") from None
    if signature not in _ZIP_SIGNATURES:
        raise CheckpointError(
            f"{source}: not a .npz checkpoint (the file is empty, truncated or in another format: "
            f"it starts with {signature!r}, not a zip signature)"
        )
    try:
        # NumPy reads only as many bytes as a member's header announces, so a damaged
        # header could go unnoticed; testzip checks every member's CRC-32 first.
        with zipfile.ZipFile(source) as archive:
            declared = sum(info.file_size for info in archive.infolist())
            if limit is not None and declared > limit:
                raise CheckpointError(
                    f"{source}: its entries declare {declared} bytes once decompressed, more than "
                    f"{limit_name} ({limit} bytes); nothing was read (pass max_bytes= to allow a larger checkpoint)"
                )
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"{source}: damaged checkpoint (CRC-32 mismatch in entry {damaged!r})")
        with np.load(source, allow_pickle=False) as npz:
            entries = {key: npz[key] for key in npz.files}
    except CheckpointError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):  # NumPy's refusal of an object array
            raise CheckpointError(
                f"{source}: refused to load an object (pickled) array; cprop-ref checkpoints hold no objects"
            ) from None
        raise CheckpointError(f"{source}: damaged array entry ({err})") from None
    except Exception as err:  # a damaged archive fails in zipfile, zlib or NumPy's header parser
        raise CheckpointError(f"{source}: damaged or truncated .npz checkpoint ({type(err).__name__}: {err})") from None
    for key, value in entries.items():
        if not isinstance(value, np.ndarray):  # NumPy returns a member that is not .npy as raw bytes
            raise CheckpointError(f"{source}: entry {key!r} is not a NumPy array")
    return decode(entries, source)
