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
    # Fused Adam on NumPy's arrays (the CProp rows' pages), and the CProp rows against it.
    same_pages = "torch.optim.Adam(fused=True), NumPy's memory"
    assert rows[same_pages]["median_s"] > 0 and rows[same_pages]["against"] == "memory bound (4 reads + 3 writes)"
    assert rows["CProp-Adam bft [numba] vs the same pages"]["against"] == same_pages
    assert rows["CProp-Adam bft [numba] vs the same pages"]["ratio"] == pytest.approx(
        rows["CProp-Adam bft [numba]"]["median_s"] / rows[same_pages]["median_s"]
    )
    assert "transparent_huge_pages" in table["machine"]
    assert rows["CProp-Adam bft, 2 elements [numba]"]["against"] == "torch.optim.Adam"
    assert rows["CProp-Adam bft, 2 elements [numpy]"]["ratio"] > 0


def test_bench_runs_without_torch(tmp_path):
    # A finder that refuses torch: "import torch" raises ImportError, as when it is not installed.
    table = _bench(tmp_path, NO_TORCH)
    rows = _rows(table)
    assert table["machine"]["torch"] is None
    assert rows["torch.optim.Adam(fused=True)"]["median_s"] is None
    assert "torch not installed" in rows["torch.optim.Adam(fused=True)"]["note"]
    assert rows["torch.optim.Adam(fused=True), NumPy's memory"]["median_s"] is None
    assert "CProp-Adam bft [numba] vs the same pages" not in rows
    # Without torch each row is compared with the memory bound of the arrays it moves.
    assert rows["CProp-Adam bft [numba]"]["against"] == "memory bound (5 reads + 4 writes)"
    assert rows["CProp-Adam bft, both moments shared [numba]"]["against"] == "memory bound (4 reads + 3 writes)"
    assert rows["CProp-SGD bft [numba]"]["against"] == "memory bound (4 reads + 3 writes)"
    assert rows["CProp-Adam bft [numba]"]["ratio"] > 0


def test_fused_adam_on_numpy_memory_steps_as_the_default_fused_adam():
    # The bench's fused Adam on NumPy's arrays must compute what torch's own fused Adam does,
    # on memory NumPy allocated (not a copy), or its row would compare something else.
    torch = pytest.importorskip("torch")
    import numpy as np

    from cprop_ref.bench import fused_adam_on_numpy_memory

    grad = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    step = fused_adam_on_numpy_memory(torch, grad)
    (weight,) = step.__self__.param_groups[0]["params"]
    reference = torch.zeros(1000, requires_grad=True)
    reference.grad = torch.from_numpy(grad.copy())
    default = torch.optim.Adam([reference], lr=1e-3, fused=True)
    numpy_memory = {name: step.__self__.state[weight][name].data_ptr() for name in ("exp_avg", "exp_avg_sq")}
    numpy_memory["param"] = weight.data_ptr()
    for _ in range(3):
        step()
        default.step()
    assert torch.equal(weight.detach(), reference.detach())
    state, default_state = step.__self__.state[weight], default.state[reference]
    for name in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(state[name], default_state[name]), name
    # Still stepping the arrays NumPy allocated, not replacements torch allocated.
    assert numpy_memory == {
        "exp_avg": state["exp_avg"].data_ptr(),
        "exp_avg_sq": state["exp_avg_sq"].data_ptr(),
        "param": weight.data_ptr(),
    }


@pytest.mark.parametrize(
    ("mode", "env", "expected"),
    [
        ("always", None, "huge pages"),
        ("madvise", None, "4 KiB pages"),
        ("madvise", "1", "huge pages"),
        ("never", "1", "4 KiB pages"),
        (None, None, "pages unknown"),
    ],
)
def test_torch_pages_follows_the_kernel_mode_and_torchs_switch(monkeypatch, mode, env, expected):
    from cprop_ref.bench import torch_pages

    if env is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", env)
    assert torch_pages(mode) == expected
