"""The package's layers: no module imports from a layer above its own, and no imports form a cycle.

The layers, lowest first: the functional core (``cdf``, ``scale``, ``functional``,
``hyperparams``, ``gradients``, ``checkpoint``, ``tolerance``); the Numba kernels
(``kernels/``); the optimizers (``optim/``), which reach the kernels through
``kernels.dispatch`` only; the public package (``cprop_ref/__init__``) and the ports
(``torch/``, ``jax/``); the applications (``runner``, ``compare``, ...); the harness and the
studies (``conformance/``, ``study/``); the command line. The imports are read from the source
(``ast``), those inside functions included: a lazy import is still a dependency. The analytic
test problems (``problems/``) import nothing of ``cprop_ref``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cprop_ref"

#: Layer of each area of the package (the first component under ``cprop_ref``; a module of the
#: package's top level is its own area). An area may import from its own layer and those below.
LAYERS: dict[str, int] = {
    **dict.fromkeys(("cdf", "scale", "functional", "hyperparams", "gradients", "checkpoint", "tolerance"), 0),
    "kernels": 1,
    "optim": 2,
    **dict.fromkeys(("__init__", "torch", "jax"), 3),
    **dict.fromkeys(("runner", "compare_plots", "compare", "demo"), 4),
    **dict.fromkeys(("conformance", "study"), 5),
    **dict.fromkeys(("bench", "cli", "problems_cli", "sweep"), 6),
}


#: Imports left out of the cycle check, each a lazy import (inside a function) that closes a
#: cycle known and not yet removed (none today: add one only with its reason).
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def area(module: str) -> str:
    """``cprop_ref.kernels.adam`` -> ``kernels``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The ``cprop_ref`` modules that the file at ``path`` imports (anywhere in it)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from . import adam``: the module adam, if there is one
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in known and module != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def test_every_area_has_a_layer() -> None:
    missing = sorted({area(name) for name in modules()} - set(LAYERS))
    assert not missing, f"give these areas of cprop_ref a layer in LAYERS: {missing}"


def test_no_import_from_a_higher_layer() -> None:
    upward = [
        f"{importer} ({area(importer)}, layer {LAYERS[area(importer)]}) imports {imported} "
        f"({area(imported)}, layer {LAYERS[area(imported)]})"
        for importer, targets in sorted(graph().items())
        for imported in sorted(targets)
        if LAYERS.get(area(imported), 0) > LAYERS.get(area(importer), 0)
    ]
    assert not upward, "\n".join(upward)


def test_the_optimizers_reach_the_kernels_through_the_dispatcher_only() -> None:
    """``optim`` imports the kernels' package (names without Numba), the plan and the family
    registry, and the dispatcher; never a family's kernels."""
    allowed = {"cprop_ref.kernels", "cprop_ref.kernels.dispatch", "cprop_ref.kernels.plan", "cprop_ref.kernels.family"}
    reached = {
        (importer, imported)
        for importer, targets in graph().items()
        if area(importer) == "optim"
        for imported in targets
        if area(imported) == "kernels" and imported not in allowed
    }
    assert not reached, sorted(reached)


def test_no_family_of_kernels_imports_another() -> None:
    families = {"cprop_ref.kernels.adam", "cprop_ref.kernels.sgd", "cprop_ref.kernels.wrapper"}
    crossing = {(a, b) for a in families for b in graph()[a] if b in families}
    assert not crossing, sorted(crossing)


def test_no_import_cycle() -> None:
    edges = {a: {b for b in targets if (a, b) not in KNOWN_CYCLE_EDGES} for a, targets in graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_test_problems_import_nothing_of_the_package() -> None:
    offenders = []
    for path in (ROOT / "problems").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "cprop_ref"]
    assert not offenders, offenders
