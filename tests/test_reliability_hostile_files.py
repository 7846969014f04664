"""Damaged and hostile checkpoint files: loading a damaged or hostile file gives a clear
``CheckpointError`` naming the file, never unpickles or executes anything, and leaves the
optimizer it was loaded into unchanged, byte for byte.

Figures for ``docs/reliability.md`` (counted by the tests themselves, see the asserts
on the counts): every truncation of a real checkpoint, a single-bit flip at every byte
of one, random byte strings, pickle payloads in five disguises, foreign ``.npy`` /
``.npz`` / zip files, and hypothesis-drawn damaged metadata.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprop_ref import CheckpointError, checkpoint
from tests.reliability_support import BACKENDS, OPTIMIZERS, PARAM_SHAPES, assert_identical, build, snapshot

#: The optimizer whose checkpoint is damaged below: CProp around Adam holds the most
#: kinds of entries (wrapper state, base state, per-group hyperparameters).
VICTIM = "CProp(Adam)"


def _stepped(kind: str = VICTIM, steps: int = 2, backend: str = "numpy"):
    optimizer, params = build(kind, np.float64, backend=backend)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        optimizer.step([rng.standard_normal(shape) for shape in PARAM_SHAPES])
    return optimizer, params


def _assert_refused(path: Path, optimizer, expected: str | None = None) -> CheckpointError:
    """Loading ``path`` into ``optimizer`` raises a CheckpointError that names the file
    (and contains ``expected``), and the optimizer is unchanged."""
    before = snapshot(optimizer)
    with pytest.raises(CheckpointError) as info:
        optimizer.load(path)
    assert str(path) in str(info.value)
    if expected is not None:
        assert expected in str(info.value)
    assert_identical(snapshot(optimizer), before, f"after refusing {path.name}")
    return info.value


#: The checkpoint cut and flipped byte by byte: plain SGD (momentum), the smallest one
#: (3.4 kB), so that every byte costs little; zip structure, CRC and NumPy headers are
#: the same as in any other.
SMALL_VICTIM = "SGD"


@pytest.fixture
def saved(tmp_path):
    optimizer, _ = _stepped(SMALL_VICTIM)
    path = tmp_path / "good.npz"
    optimizer.save(path)
    return path, path.read_bytes(), optimizer


def test_every_truncation_is_refused(saved, tmp_path):
    """All ``len(data)`` proper prefixes of a checkpoint, the empty file included."""
    path, data, _ = saved
    target, _ = _stepped(SMALL_VICTIM, steps=5)
    damaged = tmp_path / "cut.npz"
    tried = 0
    for length in range(len(data)):
        damaged.write_bytes(data[:length])
        before = snapshot(target) if length % 512 == 0 else None  # a full snapshot is slow
        with pytest.raises(CheckpointError, match="truncated") as info:
            target.load(damaged)
        assert str(damaged) in str(info.value)
        if before is not None:
            assert_identical(snapshot(target), before)
        tried += 1
    assert tried == len(data) > 3000  # the figure in docs/reliability.md


def test_every_single_bit_flip_is_refused_or_harmless(saved, tmp_path):
    """A flipped bit anywhere (bit ``offset % 8`` of byte ``offset``) is detected (zip
    structure, CRC-32, NumPy header) or falls in a field that carries no data; then the
    loaded tree is identical to the saved one. It never loads a different checkpoint."""
    path, data, _ = saved
    original = checkpoint.load(path)
    damaged = tmp_path / "flipped.npz"
    refused = harmless = 0
    in_data = _member_data_offsets(path)
    for offset in range(len(data)):
        corrupt = bytearray(data)
        corrupt[offset] ^= 1 << (offset % 8)
        damaged.write_bytes(bytes(corrupt))
        try:
            tree = checkpoint.load(damaged)
        except CheckpointError as err:
            assert str(damaged) in str(err)
            refused += 1
        else:
            # Only bytes outside the members' contents (timestamps, version and attribute
            # fields, zip64 placeholders) may be harmless: the contents are CRC-checked.
            assert offset not in in_data, f"bit flip at byte {offset} inside a member was not detected"
            assert_identical(tree, original, f"bit flip at byte {offset}")
            harmless += 1
    assert refused + harmless == len(data)
    assert refused >= len(in_data) > len(data) / 2


def _member_data_offsets(path: Path) -> set[int]:
    """Byte offsets of the members' stored contents (after each local file header)."""
    offsets: set[int] = set()
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            handle.seek(info.header_offset + 26)
            name_length, extra_length = np.frombuffer(handle.read(4), "<u2")
            start = info.header_offset + 30 + int(name_length) + int(extra_length)
            offsets.update(range(start, start + info.compress_size))
    return offsets


@given(st.binary(min_size=0, max_size=300), st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"]))
@settings(max_examples=60)
def test_random_bytes_are_refused(tmp_path_factory, noise, prefix):
    path = tmp_path_factory.mktemp("random") / "noise.npz"
    path.write_bytes(prefix + noise)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


# -- pickles: nothing is ever unpickled --------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file: the proof that something was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _object_array(marker: Path) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = _Payload(marker)
    return array


def _pickle_disguises(marker: Path, good: bytes) -> dict[str, bytes]:
    """Five ways to smuggle a pickle into a checkpoint file."""
    meta = checkpoint.encode({"x": 1})[checkpoint.META_KEY]

    def npz(**entries: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **entries)
        return buffer.getvalue()

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        return buffer.getvalue()

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr(f"{checkpoint.META_KEY}.npy", npy(meta))
        archive.writestr("a0.npy", pickle.dumps(_Payload(marker)))  # a member that is a raw pickle
    return {
        "raw pickle file": pickle.dumps(_Payload(marker)),
        "pickle after a zip signature": b"PK\x03\x04" + pickle.dumps(_Payload(marker)),
        "object array as metadata": npz(**{checkpoint.META_KEY: _object_array(marker)}),
        "object array beside valid metadata": npz(**{checkpoint.META_KEY: meta, "a0": _object_array(marker)}),
        "raw pickle as a zip member": zipped.getvalue(),
        ".npy file holding an object array": npy(_object_array(marker)),
    }


def test_pickles_are_never_unpickled(saved, tmp_path):
    path, data, optimizer = saved
    marker = tmp_path / "EXECUTED"
    disguises = _pickle_disguises(marker, data)
    for name, payload in disguises.items():
        hostile = tmp_path / "hostile.npz"
        hostile.write_bytes(payload)
        _assert_refused(hostile, optimizer)
        assert not marker.exists(), f"{name}: the payload ran"
    # The payloads are live: unpickled on purpose, the first one does create the marker.
    pickle.loads(disguises["raw pickle file"]).close()
    assert marker.exists()
    assert len(disguises) == 6


# -- foreign but well-formed files -------------------------------------------------------


def _write_npz(path: Path, **entries) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **entries)


def _meta(tree=None, **overrides) -> np.ndarray:
    meta = {"format": checkpoint.FORMAT_NAME, "version": checkpoint.FORMAT_VERSION, "tree": tree or {}}
    meta.update(overrides)
    return np.array(json.dumps(meta))


FOREIGN = {
    "plain .npy": (lambda p: p.write_bytes(_npy_bytes(np.arange(3.0))), "not a .npz checkpoint"),
    "npz without metadata": (lambda p: _write_npz(p, x=np.zeros(3)), "no __meta__ entry"),
    "empty zip": (lambda p: zipfile.ZipFile(p, "w").close(), "no __meta__ entry"),
    "metadata not text": (lambda p: _write_npz(p, __meta__=np.zeros(3)), "not a text scalar"),
    "metadata not JSON": (lambda p: _write_npz(p, __meta__=np.array("{not json")), "unreadable metadata"),
    "metadata a JSON list": (lambda p: _write_npz(p, __meta__=np.array("[1, 2]")), "format 'list'"),
    "other format": (lambda p: _write_npz(p, __meta__=_meta(format="keras")), "format 'keras'"),
    "version 2": (lambda p: _write_npz(p, __meta__=_meta(version=2)), "format version 2"),
    "version missing": (
        lambda p: _write_npz(p, __meta__=np.array('{"format": "cprop-ref-checkpoint"}')),
        "version None",
    ),
    "dangling array": (lambda p: _write_npz(p, __meta__=_meta({"x": {"__array__": "a9"}})), "missing array entry 'a9'"),
    "array key not text": (lambda p: _write_npz(p, __meta__=_meta({"x": {"__array__": [1]}})), "missing array entry"),
    "metadata as array": (lambda p: _write_npz(p, __meta__=_meta({"x": {"__array__": "__meta__"}})), "missing array"),
    "deep nesting": (lambda p: _write_npz(p, __meta__=np.array("[" * 100000 + "]" * 100000)), "unreadable metadata"),
    "member not .npy": (lambda p: _zip_with(p, {"__meta__.npy": b"hello"}), "not a NumPy array"),
    "compressed, damaged": (lambda p: _damaged_compressed(p), None),
}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _zip_with(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def _damaged_compressed(path: Path) -> None:
    optimizer, _ = _stepped()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **checkpoint.encode(optimizer.state_dict()))
    data = bytearray(buffer.getvalue())
    data[200:260] = bytes(range(60))  # inside the deflate stream of the first member
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_files_are_refused_with_the_reason(name, tmp_path):
    optimizer, _ = _stepped()
    path = tmp_path / "foreign.npz"
    FOREIGN[name][0](path)
    _assert_refused(path, optimizer, FOREIGN[name][1])


def test_a_directory_or_a_missing_file(tmp_path):
    optimizer, _ = _stepped()
    _assert_refused(tmp_path, optimizer, "cannot be read")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        optimizer.load(tmp_path / "nope.npz")


# -- damaged metadata: every node of a real state dict replaced --------------------------


def _paths(tree, prefix=()):
    """Every path (tuple of keys / indices) to a node of a state-dict tree."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, (*prefix, i))


def _replace(tree, path, value, delete=False):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        out = dict(tree)
    else:
        out = list(tree)
    if not rest and delete:
        del out[head]
    else:
        out[head] = _replace(tree[head], rest, value, delete)
    return out


HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(
        [
            np.zeros(3),
            np.zeros((2, 2), np.float32),
            np.zeros((), np.int64),
            np.array(["x"]),
            np.full(3, np.nan),
            np.zeros(0),
        ]
    ),
)


@st.composite
def damaged_state_dicts(draw):
    kind = draw(st.sampled_from(list(OPTIMIZERS)))
    optimizer, _ = _stepped(kind, steps=draw(st.integers(0, 2)))
    tree = optimizer.state_dict()
    path = draw(st.sampled_from(list(_paths(tree))))
    delete = bool(path) and draw(st.booleans())
    backend = draw(st.sampled_from(BACKENDS))  # of the optimizer it is loaded into
    return kind, _replace(tree, path, draw(HOSTILE_VALUES), delete), backend


@given(damaged_state_dicts())
@settings(max_examples=150)
def test_damaged_state_is_refused_or_loads_into_a_working_optimizer(tmp_path_factory, case):
    """Any node of a real state dict replaced by a hostile value (or deleted), written as
    a checkpoint with arbitrary JSON (NaN and huge integers allowed): the load either
    raises ``ValueError`` and changes nothing, or succeeds and the optimizer still steps
    (a substitute that happens to be valid, such as another learning rate)."""
    kind, tree, backend = case
    path = tmp_path_factory.mktemp("damaged") / "c.npz"
    arrays: dict[str, np.ndarray] = {}

    def walk(node):
        if isinstance(node, np.ndarray):
            arrays[f"a{len(arrays)}"] = node
            return {"__array__": f"a{len(arrays) - 1}"}
        if isinstance(node, dict):
            return {str(k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    meta = {"format": checkpoint.FORMAT_NAME, "version": checkpoint.FORMAT_VERSION, "tree": walk(tree)}
    try:
        text = json.dumps(meta)  # NaN and inf allowed here, unlike checkpoint.encode
    except ValueError:  # an integer too long for json
        return
    _write_npz(path, __meta__=np.array(text), **arrays)
    target, _ = _stepped(kind, steps=3, backend=backend)
    before = snapshot(target)
    try:
        target.load(path)
    except ValueError as err:
        assert type(err) in (ValueError, CheckpointError)
        assert_identical(snapshot(target), before)
        return
    rng = np.random.default_rng(1)
    try:
        target.step([rng.standard_normal(shape) for shape in PARAM_SHAPES])
    except ValueError:
        pass  # e.g. a loaded hyperparameter combination checked at step time


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
