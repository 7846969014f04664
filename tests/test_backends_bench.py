"""``cprop-ref bench`` end to end on tiny sizes: the table's rows, the JSON, the ratios, and
the run without torch (its rows skipped with a note). Timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ARGS = ["--log2-size", "10", "--tensors", "3", "--repeats", "1", "--numpy-repeats", "1", "--tiny-repeats", "100"]


NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed (blocked by the test)")
sys.meta_path.insert(0, NoTorch())
"""


def _bench(tmp_path, prelude: str = "") -> dict:
    out = tmp_path / "bench.json"
    code = f"{prelude}\nfrom cprop_ref.cli import main\nraise SystemExit(main(['bench', *{ARGS!r}, '--skip-compile', '--json', {str(out)!r}]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    return json.loads(out.read_text())


def _rows(table: dict) -> dict[str, dict]:
    return {row["row"]: row for row in table["rows"]}


def test_bench_writes_every_row_with_its_ratio(tmp_path):
    pytest.importorskip("torch")
    table = _bench(tmp_path)
    rows = _rows(table)
    assert table["size"] == 1024 and table["machine"]["numba_threads"] >= 1
    for name in ("CProp-Adam bft [numba]", "CProp-Adam normal [numba]", "CProp-SGD bft [numba]"):
        assert rows[name]["median_s"] > 0 and rows[name]["ratio"] > 0
        assert rows[name.replace("numba", "numpy")]["against"] == name
    assert rows["CProp-Adam bft [numba]"]["against"] == "torch.optim.Adam(fused=True)"
    # Each CProp row against its own memory bound: the default CProp-Adam keeps its own first
    # moment (5 arrays read, 4 written); with both moments shared, 4 and 3, as Adam and CProp-SGD.
    assert rows["CProp-Adam bft [numba] vs bound"]["against"] == "memory bound (5 reads + 4 writes)"
    assert (
        rows["CProp-Adam bft, no finiteness check [numba] vs bound"]["against"] == "memory bound (5 reads + 4 writes)"
    )
    assert (
        rows["CProp-Adam bft, both moments shared [numba] vs bound"]["against"] == "memory bound (4 reads + 3 writes)"
    )
    assert rows["CProp-SGD bft [numba] vs bound"]["against"] == "memory bound (4 reads + 3 writes)"
    assert rows["CProp-Adam bft, 3 tensors [numba]"]["against"] == "CProp-Adam bft, 1 tensor [numba]"
    assert rows["CProp-Adam bft, 3 views of one buffer [numba]"]["against"] == "CProp-Adam bft, 1 tensor [numba]"
    assert rows["CProp-Adam bft [numba]"]["ratio"] == pytest.approx(
        rows["CProp-Adam bft [numba]"]["median_s"] / rows["torch.optim.Adam(fused=True)"]["median_s"]
    )
    assert rows["CProp-Adam bft, 2 elements [numba]"]["against"] == "torch.optim.Adam"
    assert rows["CProp-Adam bft, 2 elements [numpy]"]["ratio"] > 0


def test_bench_runs_without_torch(tmp_path):
    # A finder that refuses torch: "import torch" raises ImportError, as when it is not installed.
    table = _bench(tmp_path, NO_TORCH)
    rows = _rows(table)
    assert table["machine"]["torch"] is None
    assert rows["torch.optim.Adam(fused=True)"]["median_s"] is None
    assert "torch not installed" in rows["torch.optim.Adam(fused=True)"]["note"]
    # Without torch each row is compared with the memory bound of the arrays it moves.
    assert rows["CProp-Adam bft [numba]"]["against"] == "memory bound (5 reads + 4 writes)"
    assert rows["CProp-Adam bft, both moments shared [numba]"]["against"] == "memory bound (4 reads + 3 writes)"
    assert rows["CProp-SGD bft [numba]"]["against"] == "memory bound (4 reads + 3 writes)"
    assert rows["CProp-Adam bft [numba]"]["ratio"] > 0
