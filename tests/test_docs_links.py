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
        if "__pycache__" in path.split("/"):
            continue  # made by Python and Numba at run time, not a file of the repository
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{_relative(page)} names paths that do not exist: {missing}"


SECTION_CITATION = re.compile(r'(docs/[\w/]+\.md)`{0,2}(?:[,;] ?\(?| \()"([A-Za-z][^"]{0,60})"')
CITING_FILES = sorted(
    [*PAGES, *(ROOT / "cprop_ref").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "problems").rglob("*.py")]
)


def _headers(page: Path) -> list[str]:
    return [line.lstrip("#").strip().lower() for line in page.read_text().splitlines() if line.startswith("#")]


def test_cited_sections_exist() -> None:
    """A docstring, comment or page that cites a section of a page (the page's path, a comma and
    the section's name in double quotes) names a heading of that page; the heading may go on
    after the name, as "One step of CProp (`cprop_ref/scale.py`)" does."""
    missing = []
    for path in CITING_FILES:
        for page, cited in SECTION_CITATION.findall(path.read_text()):
            section = " ".join(cited.split())  # a name broken over two lines of a docstring
            target = ROOT / page
            if not target.exists() or not any(h.startswith(section.lower()) for h in _headers(target)):
                missing.append(f"{path.relative_to(ROOT)}: {page}, {section!r}")
    assert not missing, "cited sections that do not exist:\n" + "\n".join(missing)
