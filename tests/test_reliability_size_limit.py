"""Checkpoint loading refuses an archive whose entries would decompress to more than a limit.

A hostile ``.npz`` can declare gigabytes in a few bytes of zip directory (a "zip bomb");
``checkpoint.load`` sums the sizes the entries declare *before* decompressing anything and
refuses more than ``max_bytes``, naming the file, the declared size and the limit. The default
is what the optimizer's own checkpoint can hold plus a margin (``Optimizer.load``), or for the
bare ``checkpoint.load`` 1 GiB (a quarter of the physical memory where that is less). The
optimizer is unchanged after a refused load.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from cprop_ref import CheckpointError, CPropAdam, checkpoint
from tests.reliability_support import assert_identical


def _optimizer() -> tuple[CPropAdam, list[np.ndarray]]:
    params = [np.linspace(-1.0, 1.0, 50, dtype=np.float32), np.ones((3, 4), np.float32)]
    opt = CPropAdam(params, lr=0.01)
    opt.step([np.full_like(p, 0.5) for p in params])
    return opt, params


def _declared(path: Path) -> int:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def test_a_checkpoint_within_the_limit_loads_and_one_beyond_it_is_refused_unread(tmp_path):
    opt, params = _optimizer()
    path = tmp_path / "state.npz"
    opt.save(path)
    declared = _declared(path)
    fresh, _ = _optimizer()
    fresh.load(path, max_bytes=declared)  # exactly at the limit: loads
    before = fresh.state_dict()
    with pytest.raises(CheckpointError) as info:
        fresh.load(path, max_bytes=declared - 1)
    message = str(info.value)
    assert str(path) in message and f"{declared} bytes" in message and f"({declared - 1} bytes)" in message
    assert_identical(fresh.state_dict(), before, "after a refused load")


def _bomb(path: Path, declared: int) -> None:
    """A real checkpoint whose first entry's zip headers claim ``declared`` bytes uncompressed."""
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # the first central-directory record
    struct.pack_into("<I", data, central + 24, declared)  # its uncompressed size
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, declared)
    path.write_bytes(bytes(data))


def test_a_declared_size_beyond_the_default_limit_is_refused(tmp_path, monkeypatch):
    opt, _ = _optimizer()
    path = tmp_path / "bomb.npz"
    opt.save(path)
    _bomb(path, 0xF000_0000)  # 3.75 GiB claimed by a file of a few kilobytes
    monkeypatch.setattr(checkpoint, "physical_memory", lambda: 2**31)  # a quarter: 512 MiB < 1 GiB
    with pytest.raises(CheckpointError, match=r"the default limit \(536870912 bytes\); nothing was read"):
        checkpoint.load(path)
    before = opt.state_dict()
    with pytest.raises(CheckpointError, match=r"more than this optimizer's checkpoint can hold"):
        opt.load(path)
    assert_identical(opt.state_dict(), before)
    # The claim is a lie (the stored entry is intact), so with a limit above it the same file
    # loads: the size check alone refused it above.
    assert isinstance(checkpoint.load(path, max_bytes=2**40), dict)


def test_the_default_limit_is_1_gib_or_a_quarter_of_the_memory():
    memory = checkpoint.physical_memory()
    assert memory is None or memory > 2**26
    expected = 1 << 30 if memory is None else min(1 << 30, memory // 4)
    assert checkpoint.default_max_bytes() == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_max_bytes_must_be_a_non_negative_int(tmp_path, bad):
    opt, _ = _optimizer()
    path = tmp_path / "state.npz"
    opt.save(path)
    with pytest.raises(ValueError, match="max_bytes"):
        checkpoint.load(path, max_bytes=bad)
