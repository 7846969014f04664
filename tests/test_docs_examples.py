"""The Python examples in the README and docs run as written (each file's blocks in order,
in one namespace, as a reader would paste them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "docs/optimizers.md"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_examples_run(document, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files (checkpoints, plots)
    path = ROOT / document
    if not path.exists():
        pytest.fail(f"{document} is missing")
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    assert blocks, f"{document} has no Python example"
    namespace: dict = {"__name__": "__doc_example__"}
    for block in blocks:
        exec(compile(block, str(path), "exec"), namespace)
