"""Saving a checkpoint through a symbolic link replaces the file it points to; the link stays.

``checkpoint.save`` writes a temporary file and renames it over the target; renaming over a
link would replace the link itself by a regular file and leave the file it pointed to stale.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from cprop_ref import CPropAdam, checkpoint
from tests.reliability_support import assert_identical

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this platform")


def _stepped() -> CPropAdam:
    opt = CPropAdam([np.linspace(-1.0, 1.0, 20, dtype=np.float32)], lr=0.01)
    opt.step([np.full(20, 0.5, np.float32)])
    return opt


def test_saving_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "runs" / "state.npz"
    real.parent.mkdir()
    real.write_bytes(b"an older file")
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.relpath(real, tmp_path))  # a relative link, as users make them
    opt = _stepped()
    opt.save(link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert_identical(checkpoint.load(real), opt.state_dict(), "the target holds the checkpoint")
    assert sorted(p.name for p in real.parent.iterdir()) == ["state.npz"]  # no temporary left


def test_saving_through_a_dangling_link_creates_its_target(tmp_path):
    real = tmp_path / "state.npz"
    link = tmp_path / "latest.npz"
    link.symlink_to(real)
    assert not real.exists()
    opt = _stepped()
    opt.save(link)
    assert link.is_symlink() and real.is_file()
    assert_identical(checkpoint.load(link), opt.state_dict(), "loaded through the link")
