"""The documentation stands alone: every relative link in the README and ``docs/`` resolves to
a file of the repository, and every repository path a page names in backticks
(``cprop_ref/...``, ``tests/...``, ``docs/...``, ``problems/...``) exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED_PATH = re.compile(r"`((?:cprop_ref|tests|docs|problems)/[\w./-]+?)`")


def _relative(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_relative_links_resolve(page: Path) -> None:
    broken = [
        target
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, f"{_relative(page)} links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_named_repository_paths_exist(page: Path) -> None:
    missing = []
    for name in NAMED_PATH.findall(page.read_text()):
        path = name.rstrip(".")
        if any(character in path for character in "*<>{}") or path.endswith("/"):
            continue  # a pattern or a folder named generically, not a file
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{_relative(page)} names paths that do not exist: {missing}"
