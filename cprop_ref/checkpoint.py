"""Optimizer checkpoints as ``.npz`` files: no pickle, a format version, atomic writes.

A state dict is a tree of dicts, lists, JSON scalars and NumPy arrays. :func:`encode`
moves every array into its own ``.npz`` entry (``a0``, ``a1``, ...) and replaces it in
the tree by ``{"__array__": "a0"}``; the tree itself is stored as JSON text in the
entry ``__meta__`` together with the format name and version. Loading uses
``allow_pickle=False``, so a file holding object arrays is refused, never unpickled.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import stat
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


#: The array kinds a checkpoint holds: booleans, integers, floats and complex numbers. An
#: object array would be pickled by ``np.savez`` (and refused when loaded), a string or
#: structured one is no optimizer state.
NUMERIC_KINDS = "biufc"


def encode(tree: Any) -> dict[str, np.ndarray]:
    """Flatten a state-dict tree into ``.npz`` entries (see the module docstring).

    Everything is checked here, before a file is touched: arrays must be plain ``ndarray``
    of a numeric dtype, dict keys text, other leaves ``None``, booleans, integers, finite
    floats or text. Anything else raises ``ValueError`` naming its place in the tree
    (``state_dict['base']['state'][0]['buffer']``)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, np.ndarray):
            if type(node) is not np.ndarray or node.dtype.kind not in NUMERIC_KINDS or node.dtype.fields:
                kind = type(node).__name__ if type(node) is not np.ndarray else f"dtype {node.dtype}"
                raise ValueError(
                    f"cannot save {where}: a {kind} array; checkpoints hold plain numeric arrays only "
                    "(bool, integer, float, complex), never pickled objects"
                )
            key = f"a{len(arrays)}"
            arrays[key] = node
            return {_ARRAY_TAG: key}
        if isinstance(node, dict):
            for k in node:
                if not isinstance(k, str):
                    raise ValueError(f"cannot save {where}: the key {k!r} is not text")
            if set(node) == {_ARRAY_TAG}:
                raise ValueError(f"cannot save {where}: a dict with the one key {_ARRAY_TAG!r} is reserved")
            return {k: walk(v, f"{where}[{k!r}]") for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            node = node.item()
        if node is None or isinstance(node, (bool, int, str)):
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"cannot save {where}: the value {node!r} is not finite")
            return node
        raise ValueError(f"cannot save {where}: a {type(node).__name__} is not a checkpoint value")

    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tree": walk(tree, "state_dict")}
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


def _referenced(meta_text: str, source: str) -> set[str]:
    """The array entries the metadata refers to (the tree is walked again by :func:`decode`)."""
    try:
        meta = json.loads(meta_text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{source}: unreadable metadata ({type(err).__name__}: {err})") from None
    found: set[str] = set()
    stack = [meta.get("tree") if isinstance(meta, dict) else None]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if set(node) == {_ARRAY_TAG} and isinstance(node[_ARRAY_TAG], str):
                found.add(node[_ARRAY_TAG])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def save(path: str | os.PathLike[str], tree: Any) -> None:
    """Write ``tree`` to ``path`` atomically: a temporary file in the same folder is
    written, flushed to disk, then renamed over ``path``; a crash leaves the old file
    or the new one, never a truncated one. Where ``path`` is a symbolic link, the file it
    points to is replaced and the link stays (renaming over the link would replace the link
    itself by a regular file)."""
    target = _save_target(path)
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


def _save_target(path: str | os.PathLike[str]) -> Path:
    """The file a save replaces: ``path``, or the file a symbolic link there points to.
    Raises ``ValueError`` for an empty path and ``OSError`` naming the path for one that names
    a folder (``x.npz/``, an existing directory), a missing folder or a loop of links."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise ValueError("checkpoint path is empty")
    if text.endswith(("/", os.sep)) or os.path.isdir(text):
        raise IsADirectoryError(errno.EISDIR, "checkpoint path names a folder, not a file", text)
    target = Path(text)
    if target.is_symlink():
        try:
            target = target.resolve(strict=False)
            target.stat()  # a loop shows here (ELOOP) on every Python version
        except FileNotFoundError:
            pass  # a dangling link: the save creates the file it points to
        except (OSError, RuntimeError) as err:
            raise OSError(errno.ELOOP, f"checkpoint path cannot be resolved ({err})", text) from None
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "checkpoint path links to a folder, not a file", text)
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the checkpoint's folder does not exist", str(folder))
    return target


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


#: What :func:`load` accepts by default when the caller does not know what to expect (an
#: optimizer's ``load`` passes the size of its own state plus a margin, :func:`size_budget`):
#: 1 GiB, or a quarter of the physical memory where that is less.
DEFAULT_MAX_BYTES = 1 << 30


def default_max_bytes() -> int:
    memory = physical_memory()
    return DEFAULT_MAX_BYTES if memory is None else min(DEFAULT_MAX_BYTES, memory // 4)


def size_budget(array_bytes: int, arrays: int, fixed: int = 1 << 20) -> int:
    """What a checkpoint may declare for a state of ``array_bytes`` bytes in ``arrays`` arrays:
    those bytes, plus 1 KiB per array (its ``.npy`` header and its share of the metadata),
    plus an eighth and ``fixed`` bytes (1 MiB) for the rest of the metadata."""
    return array_bytes + array_bytes // 8 + 1024 * arrays + fixed


def _size_limit(max_bytes: int | None) -> tuple[int, str]:
    if max_bytes is None:
        return default_max_bytes(), "the default limit"
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
    return max_bytes, "max_bytes"


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _open_regular(source: str) -> io.BufferedReader:
    """``source`` opened for reading, if it is a regular file. Opened without blocking, so a
    named pipe is refused at once instead of waiting for a writer; ``FileNotFoundError`` or
    another ``OSError`` naming the path, or :class:`CheckpointError` for what is not a file."""
    if not source:
        raise ValueError("checkpoint path is empty")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(source, flags)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", source) from None
    except IsADirectoryError:  # Windows opens no directory
        raise CheckpointError(f"{source}: cannot be read: it is a directory, not a checkpoint file") from None
    except OSError as err:
        raise OSError(err.errno, f"checkpoint file cannot be opened ({err.strerror})", source) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise CheckpointError(f"{source}: cannot be read: it is {kind}, not a checkpoint file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load(path: str | os.PathLike[str], max_bytes: int | None = None, *, limit_name: str | None = None) -> Any:
    """Read a checkpoint written by :func:`save`; every failure is a :class:`CheckpointError`
    (a ``ValueError``) or an ``OSError`` (``FileNotFoundError`` ...) that names the file.
    Nothing in the file is unpickled, and only a regular file is read (a named pipe or a
    device is refused without waiting on it).

    Before anything is decompressed, the sizes its entries declare must add up to at most
    ``max_bytes`` (default :func:`default_max_bytes`; an optimizer's ``load`` passes the size
    of its own state plus a margin): a hostile archive whose entries would decompress to more
    (a "zip bomb") is refused unread, and so is an entry the metadata does not refer to.
    """
    limit, default_name = _size_limit(max_bytes)
    limit_name = limit_name or default_name
    source = os.fsdecode(os.fspath(path))
    with _open_regular(source) as handle:
        signature = handle.read(len(_ZIP_SIGNATURES[0]))
        if signature not in _ZIP_SIGNATURES:
            raise CheckpointError(
                f"{source}: not a .npz checkpoint (the file is empty, truncated or in another format: "
                f"it starts with {signature!r}, not a zip signature)"
            )
        handle.seek(0)
        entries = _read_entries(handle, source, limit, limit_name)
    return decode(entries, source)


def _read_entries(handle: io.BufferedReader, source: str, limit: int, limit_name: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
            declared = sum(info.file_size for info in infos)
            if declared > limit:
                raise CheckpointError(
                    f"{source}: its entries declare {declared} bytes once decompressed, more than "
                    f"{limit_name} ({limit} bytes); nothing was read (pass max_bytes= to allow a larger checkpoint)"
                )
            names = [info.filename for info in infos]
            meta_member = META_KEY + ".npy"
            if meta_member in names:
                # Only the entries the metadata refers to are read: any other (an extra gigabyte
                # beside a valid checkpoint) is refused before it is decompressed.
                try:
                    with archive.open(meta_member) as member:
                        meta = np.lib.format.read_array(member, allow_pickle=False)
                except Exception:  # unreadable metadata: refused below, with the reason
                    meta = None
                if isinstance(meta, np.ndarray) and meta.ndim == 0 and meta.dtype.kind == "U":
                    wanted = {key + ".npy" for key in _referenced(str(meta[()]), source)} | {meta_member}
                    extra = sorted(set(names) - wanted)
                    if extra:
                        shown = ", ".join(repr(n) for n in extra[:5]) + (" ..." if len(extra) > 5 else "")
                        raise CheckpointError(
                            f"{source}: {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} the metadata does not "
                            f"refer to ({shown}); nothing else was read"
                        )
            # NumPy reads only as many bytes as a member's header announces, so a damaged
            # header could go unnoticed; testzip checks every member's CRC-32 first.
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"{source}: damaged checkpoint (CRC-32 mismatch in entry {damaged!r})")
        handle.seek(0)
        with np.load(handle, allow_pickle=False) as npz:
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
    return entries
