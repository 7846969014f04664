"""Mutation testing of a port: how strong is the harness? (``cprop-ref mutate``, docs/conformance.md)

Each *mutant* is the port's source with one small change (an operator or comparison swapped,
a constant moved by one, a condition negated, an in-place call dropped, ...). The harness,
``verify`` with its defaults, is the test of each mutant: a mutant is *killed* when a check
reports a mismatch (or the port crashes), and *survives* when the port still passes. The
score is the share of behaviour-changing mutants killed; a survivor that cannot change any
output (an *equivalent* mutant) is listed with its reason and is left out of the score.

Built on cosmic-ray (the ``mutation`` extra): its operators find and apply the mutations,
its session database (SQLite, :class:`cosmic_ray.work_db.WorkDB`) holds every mutant and its
result, so an interrupted run resumes where it stopped. The runner is ours: each mutant runs
in a process of its own (forked from a server that imported torch and the harness once), on
a private copy of the port's source tree into which the mutation is written, with the module name redirected to that copy (:func:`install_module_copy`), so
the real tree is never touched, even when a run is killed. ``--jobs`` processes run side by
side.

The target is any port given its module (``cprop_ref.torch``, ``my_port``), the source of
that module (a package directory or a ``.py`` file; found from the module when omitted) and
its factory (``MODULE:FACTORY`` as for ``verify``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The cosmic-ray operators applied: one replacement per site (the classic selective set:
#: arithmetic, logical, relational and unary swaps, constants, negated conditions), plus
#: :class:`DropCallStatement`. Bitwise ``&`` / ``|`` are the port's mask logic.
OPERATORS: tuple[str, ...] = (
    "core/ReplaceBinaryOperator_Add_Sub",
    "core/ReplaceBinaryOperator_Sub_Add",
    "core/ReplaceBinaryOperator_Mul_Div",
    "core/ReplaceBinaryOperator_Div_Mul",
    "core/ReplaceBinaryOperator_Pow_Mul",
    "core/ReplaceBinaryOperator_BitAnd_BitOr",
    "core/ReplaceBinaryOperator_BitOr_BitAnd",
    "core/ReplaceComparisonOperator_Eq_NotEq",
    "core/ReplaceComparisonOperator_NotEq_Eq",
    "core/ReplaceComparisonOperator_Lt_LtE",
    "core/ReplaceComparisonOperator_LtE_Lt",
    "core/ReplaceComparisonOperator_Gt_GtE",
    "core/ReplaceComparisonOperator_GtE_Gt",
    "core/ReplaceComparisonOperator_Is_IsNot",
    "core/ReplaceComparisonOperator_IsNot_Is",
    "core/ReplaceUnaryOperator_USub_UAdd",
    "core/ReplaceUnaryOperator_Delete_Not",
    "core/AddNot",
    "core/ReplaceTrueWithFalse",
    "core/ReplaceFalseWithTrue",
    "core/ReplaceAndWithOr",
    "core/ReplaceOrWithAnd",
    "core/NumberReplacer",
    "core/ZeroIterationForLoop",
    "core/RemoveDecorator",
    "cprop/DropCallStatement",
)

#: Ports of this project: module -> factories (``cprop-ref mutate cprop_ref.torch`` needs no
#: --factory). The torch port is three implementations behind one API (per tensor, ``foreach``,
#: ``fused``); its eager two are the mutated port's factories, so that a mutant of ``foreach.py``
#: meets the factory that runs it. The compiled one (``torch_port_fused``) is measured on its own
#: (``--factory cprop_ref.conformance:torch_port_fused``): each mutant of it compiles its kernels
#: afresh (docs/conformance.md, "Which factory runs a mutant").
KNOWN_FACTORIES: dict[str, str] = {
    "cprop_ref.torch": "cprop_ref.conformance:torch_port,cprop_ref.conformance:torch_port_foreach",
    "cprop_ref.jax": "cprop_ref.conformance:jax_port",
}


def _cosmic_ray() -> Any:
    try:
        import cosmic_ray.plugins
    except ImportError as err:
        raise ImportError(
            "cprop-ref mutate needs cosmic-ray, the optional 'mutation' extra: pip install 'cprop-ref[mutation]'"
        ) from err
    _register_operators(cosmic_ray.plugins)
    return cosmic_ray


# -- operators of our own ---------------------------------------------------------------------


def _register_operators(plugins: Any) -> None:
    """Add the ``cprop/`` operators to cosmic-ray's provider table (in this process)."""
    if "cprop" in plugins.OPERATOR_PROVIDERS:
        return
    import parso
    from cosmic_ray.operators.operator import Example, Operator

    class DropCallStatement(Operator):
        """A call whose result is discarded (``x.mul_(b)``, ``torch.maximum(a, b, out=c)``,
        ``update_(m, g)``) replaced by ``None``: an in-place update that never happens."""

        def mutation_positions(self, node: Any) -> Iterable[tuple[Any, Any]]:
            if (
                node.type == "atom_expr"
                and node.parent is not None
                and node.parent.type == "simple_stmt"
                and node.children[-1].type == "trailer"
                and node.children[-1].children[0].value == "("
            ):
                yield (node.start_pos, node.end_pos)

        def mutate(self, node: Any, index: int) -> Any:
            return parso.python.tree.Keyword("None", node.start_pos, prefix=node.get_first_leaf().prefix)

        @classmethod
        def examples(cls) -> tuple[Any, ...]:
            return (Example("x.mul_(b)\n", "None\n"), Example("y = f(x)\n", "y = f(x)\n"))

    plugins.OPERATOR_PROVIDERS["cprop"] = {"DropCallStatement": DropCallStatement}


# -- the target and its mutants ----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A port to mutate: ``module`` (importable name), ``source`` (its package directory or
    ``.py`` file) and ``factory`` (``MODULE:FACTORY``, as ``verify`` takes it; several,
    comma-separated, for a port with several implementations: :attr:`factories`)."""

    module: str
    source: str
    factory: str

    @classmethod
    def resolve(cls, module: str, source: str | None = None, factory: str | None = None) -> Target:
        """Fill in ``source`` from the module's location (without importing it) and ``factory``
        from :data:`KNOWN_FACTORIES`; ``ValueError`` names what is missing."""
        if factory is None:
            if module not in KNOWN_FACTORIES:
                raise ValueError(f"cprop-ref mutate: --factory is needed for module {module!r} (MODULE:FACTORY)")
            factory = KNOWN_FACTORIES[module]
        if source is None:
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError) as err:
                raise ValueError(f"cprop-ref mutate: cannot find module {module!r}: {err}") from None
            if spec is None or spec.origin is None:
                raise ValueError(f"cprop-ref mutate: cannot find module {module!r}; give its --source")
            locations = spec.submodule_search_locations
            source = str(locations[0]) if locations else spec.origin
        path = Path(source)
        if path.is_dir() and not (path / "__init__.py").is_file():
            raise ValueError(f"cprop-ref mutate: --source {source!r} is a directory without __init__.py")
        if not path.is_dir() and not (path.is_file() and path.suffix == ".py"):
            raise ValueError(f"cprop-ref mutate: --source {source!r} is neither a package directory nor a .py file")
        return cls(module=module, source=str(path.resolve()), factory=factory)

    @property
    def root(self) -> Path:
        return Path(self.source)

    @property
    def factories(self) -> list[str]:
        """The factories, in the order a mutant meets them (the first that kills it ends its run)."""
        return [f.strip() for f in self.factory.split(",") if f.strip()]

    def files(self) -> list[str]:
        """The module's ``.py`` files, relative to :attr:`root` (its directory for a single file)."""
        if self.root.is_dir():
            return sorted(
                str(p.relative_to(self.root)) for p in self.root.rglob("*.py") if "__pycache__" not in p.parts
            )
        return [self.root.name]

    def file_path(self, relative: str) -> Path:
        return self.root / relative if self.root.is_dir() else self.root


@dataclass(frozen=True)
class Settings:
    """How each mutant is tested: the harness's checks, examples and dtypes (``verify``'s defaults)."""

    examples: int
    checks: tuple[str, ...]
    dtypes: tuple[str, ...]

    @classmethod
    def verify_defaults(cls) -> Settings:
        """What ``cprop-ref verify PORT`` runs, read from its own parser (one source of truth)."""
        from .commands import _split, register
        from .config import DTYPES
        from .suite import VERIFY_CHECKS

        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["verify", "PORT"])
        return cls(
            args.examples, _split(args.checks, VERIFY_CHECKS, "--checks"), _split(args.dtypes, DTYPES, "--dtypes")
        )


def _unreachable_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``(start, end)`` (line, column) of the code no mutant is made in: function signatures
    (type annotations are never evaluated under ``from __future__ import annotations``; the
    protocol passes every hyperparameter, so a port's default values are its own API, not
    something ``verify`` can compare; a bare ``*`` is no multiplication) and annotations of
    assignments."""
    import ast

    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.append(((node.lineno, node.col_offset), (node.body[0].lineno, node.body[0].col_offset)))
        elif isinstance(node, ast.AnnAssign):
            a = node.annotation
            spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def enumerate_mutants(target: Target, operators: Sequence[str] = OPERATORS) -> list[Any]:
    """Every mutant of ``target`` as cosmic-ray ``WorkItem`` s (``module_path`` relative to the
    target's root), in file, position and operator order."""
    cr = _cosmic_ray()
    from cosmic_ray.ast import ast_nodes, get_ast
    from cosmic_ray.ast.ast_query import ASTQuery
    from cosmic_ray.work_item import MutationSpec, WorkItem

    items = []
    for relative in target.files():
        code = target.file_path(relative).read_text(encoding="utf-8")
        spans = _unreachable_spans(code)
        tree = get_ast(code)
        for name in operators:
            operator = cr.plugins.get_operator(name)()
            positions = [(n, a, b) for n in ast_nodes(tree) for a, b in operator.mutation_positions(n)]
            for occurrence, (node, start, end) in enumerate(positions):
                if any(lo <= tuple(start) < hi for lo, hi in spans):
                    continue
                spec = MutationSpec(
                    module_path=relative,
                    operator_name=name,
                    occurrence=occurrence,
                    start_pos=tuple(start),
                    end_pos=tuple(end),
                    definition_name=ASTQuery(node).get_definition_name(),
                )
                items.append(WorkItem.single(job_id=f"{relative}:{name}:{occurrence}", mutation=spec))
    return sorted(items, key=_order)


def _order(item: Any) -> tuple[Any, ...]:
    m = item.mutations[0]
    return (str(m.module_path), tuple(m.start_pos), m.operator_name, m.occurrence)


def mutated_source(target: Target, mutation: Any) -> tuple[str, str]:
    """``(original, mutated)`` source of the file ``mutation`` changes; ``ValueError`` if the
    mutation no longer applies (the source changed since the session was made)."""
    cr = _cosmic_ray()
    from cosmic_ray.mutating import mutate_code

    original = target.file_path(str(mutation.module_path)).read_text(encoding="utf-8")
    operator = cr.plugins.get_operator(mutation.operator_name)(**(mutation.operator_args or {}))
    mutated = mutate_code(original, operator, mutation.occurrence)
    if mutated is None:
        raise ValueError(
            f"mutation {mutation.operator_name} #{mutation.occurrence} of {mutation.module_path} no longer applies"
        )
    return original, mutated


def changed_line(original: str, mutated: str, line: int) -> tuple[str, str]:
    """Line ``line`` (1-based) before and after, stripped: how a mutant reads in a report
    (``(line removed)`` after a mutation that removed it, e.g. a decorator)."""
    before_lines, after_lines = original.splitlines(), mutated.splitlines()
    before = before_lines[line - 1].strip()
    if len(after_lines) < len(before_lines):
        return before, "(line removed)"
    return before, after_lines[line - 1].strip()


# -- running one mutant (in its own process) ---------------------------------------------------


class _CopyFinder(importlib.abc.MetaPathFinder):
    """Finds ``name`` in ``path`` (the copy) instead of where it was installed; its submodules
    follow through the package's ``__path__``."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        if self.path.is_dir():
            return importlib.util.spec_from_file_location(
                fullname, self.path / "__init__.py", submodule_search_locations=[str(self.path)]
            )
        return importlib.util.spec_from_file_location(fullname, self.path)


def install_module_copy(module: str, path: Path) -> None:
    """From now on, ``import module`` (and its submodules) loads the copy at ``path``."""
    if any(name == module or name.startswith(module + ".") for name in sys.modules):
        raise RuntimeError(f"{module} was imported before its mutant could be installed")
    sys.meta_path.insert(0, _CopyFinder(module, path))


def _copy_tree(target: Target, into: Path) -> Path:
    """A private copy of the target's source under ``into``; returns the copy's root."""
    if target.root.is_dir():
        copy = into / target.root.name
        shutil.copytree(target.root, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        copy = into / target.root.name
        shutil.copy2(target.root, copy)
    return copy


def _first_failure(factory: str, settings: Settings) -> dict[str, Any]:
    """The harness against the (already installed) port: the first check that fails, if any."""
    from . import load_port
    from .suite import run_check

    port = load_port(factory)
    for check in settings.checks:
        try:
            _, failure = run_check(
                check,
                port,
                port_spec=factory,
                max_examples=settings.examples,
                derandomize=True,
                dtypes=settings.dtypes,
                shrink=False,  # whether a check fails is all a mutant's outcome needs
            )
        except Exception as err:  # verify stopped with a traceback: it did not pass, so this counts
            detail = f"the harness itself raised {type(err).__name__}: {err}"
            return {"killed_by": check, "detail": detail, "config": "", "harness_crash": True}
        if failure is not None:
            headline = str(failure).splitlines()[0]
            return {"killed_by": check, "detail": headline, "config": failure.mismatch.config.describe()}
    return {"killed_by": None, "detail": "", "config": ""}


def run_mutant(job: dict[str, Any]) -> dict[str, Any]:
    """Build the job's mutant in a private copy, import it under the port's module name and run
    the harness. Runs in a process of its own (:func:`run_job`): modules cannot be un-imported."""
    target = Target(**job["target"])
    settings = Settings(job["examples"], tuple(job["checks"]), tuple(job["dtypes"]))
    sys.dont_write_bytecode = True
    with tempfile.TemporaryDirectory(prefix="cprop-mutant-") as tmp:
        copy = _copy_tree(target, Path(tmp))
        if job.get("mutation") is not None:
            from cosmic_ray.work_item import MutationSpec

            spec = MutationSpec(**job["mutation"])
            _, mutated = mutated_source(target, spec)
            destination = copy / str(spec.module_path) if copy.is_dir() else copy
            destination.write_text(mutated, encoding="utf-8")
        install_module_copy(target.module, copy)
        try:
            factory = job.get("factory") or target.factories[0]
            if job.get("record") is not None:
                return record_outputs(factory, job["record"])
            if job.get("trace"):
                with _LineTracer(copy) as tracer:
                    result = _first_failure(factory, settings)
                return {**result, "covered": tracer.lines()}
            return _first_failure(factory, settings)
        except ImportError as err:
            return {"killed_by": "import", "detail": f"{type(err).__name__}: {err}", "config": ""}


class _LineTracer:
    """Records the lines of the files under ``root`` that run (``sys.settrace``; only frames of
    those files get a line tracer, so the rest of the process runs at nearly full speed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = str(root if root.is_dir() else root.parent)
        self.seen: set[tuple[str, int]] = set()

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename.startswith(self.prefix):
            return self._local
        return None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.seen.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    def __enter__(self) -> _LineTracer:
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.settrace(None)

    def lines(self) -> dict[str, list[int]]:
        """``{file relative to the root: sorted line numbers}``."""
        out: dict[str, set[int]] = {}
        for filename, line in self.seen:
            path = Path(filename)
            relative = str(path.relative_to(self.root)) if self.root.is_dir() else path.name
            out.setdefault(relative, set()).add(line)
        return {name: sorted(lines) for name, lines in sorted(out.items())}


@functools.lru_cache(maxsize=16)  # reached() asks for every mutant of a file; callers only read
def _statement_starts(source: str) -> dict[int, int]:
    """``{line: first line of the simple statement (or compound header) it belongs to}``: a
    mutation inside a multi-line statement runs when the statement does."""
    import ast

    starts: dict[int, int] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.stmt):
            continue
        body = getattr(node, "body", None)
        last = body[0].lineno - 1 if isinstance(body, list) and body else node.end_lineno
        for line in range(node.lineno, (last or node.lineno) + 1):
            starts.setdefault(line, node.lineno)
    return starts


@functools.lru_cache(maxsize=16)  # reached() asks for every mutant of a file; callers only read
def _function_body_lines(source: str) -> set[int]:
    """The lines inside function bodies: they run when the function is called, the rest of a
    module (imports, constants, class bodies, decorators, ``def`` lines) when it is imported."""
    import ast

    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            body = node.body if isinstance(node.body, list) else [node.body]
            lines.update(range(body[0].lineno, (node.end_lineno or body[0].lineno) + 1))
    return lines


@functools.lru_cache(maxsize=16)  # reached() asks for every mutant of a file; callers only read
def _decorated_bodies(source: str) -> dict[int, set[int]]:
    """``{line of a function's decorator: the lines of that function's body}``."""
    import ast

    out: dict[int, set[int]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            body = set(range(node.body[0].lineno, (node.end_lineno or node.body[0].lineno) + 1))
            for decorator in node.decorator_list:
                for line in range(decorator.lineno, (decorator.end_lineno or decorator.lineno) + 1):
                    out[line] = body
    return out


def reached(target: Target, mutation: Any, covered: dict[str, list[int]]) -> bool:
    """Whether the unmutated run executed the statement ``mutation`` changes. A statement that
    runs at import (a module constant, a dataclass default) counts as reached only where some
    function of its file ran too, and a function's decorator only where that function ran:
    importing a file whose functions the factory never calls (``fused.py`` under the per-tensor
    factory), or defining a method it never calls, exercises nothing a mutant could change."""
    relative = str(mutation.module_path)
    lines = set(covered.get(relative, ()))
    source = target.file_path(relative).read_text(encoding="utf-8")
    starts = _statement_starts(source)
    first, last = mutation.start_pos[0], mutation.end_pos[0]
    ran = any(line in lines or starts.get(line, line) in lines for line in range(first, last + 1))
    if not ran:
        return False
    decorated = _decorated_bodies(source)
    if first in decorated:  # a decorator (the mutation's span may run on over the function)
        return bool(lines & decorated[first])
    in_functions = _function_body_lines(source)
    if any(line in in_functions for line in range(first, last + 1)):
        return True
    return bool(lines & in_functions)


def reaching_factories(target: Target, mutation: Any, covered: dict[str, dict[str, list[int]]]) -> list[str]:
    """The factories (in :attr:`Target.factories` order) whose unmutated run reached ``mutation``."""
    return [f for f in target.factories if f in covered and reached(target, mutation, covered[f])]


def _exit_when_gone(runner: int) -> None:
    """End this process soon after the runner ``runner`` (a pid) ended, however it ended."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(runner, 0)
        except ProcessLookupError:
            os._exit(3)


def _run_in_child(job: dict[str, Any], result_file: str) -> None:
    """The body of one job's process (forked from the server, see :func:`run_job`)."""
    import threading

    started, cpu_started = time.perf_counter(), time.process_time()
    threading.Thread(target=_exit_when_gone, args=(job["runner"],), daemon=True).start()
    sys.path[:0] = job.get("sys_path", [])
    if "torch" in sys.modules:  # one thread per mutant: ``--jobs`` mutants share the cores
        sys.modules["torch"].set_num_threads(1)
    try:
        result = run_mutant(job)
    except Exception as err:  # the runner's own failure, reported as an error, not a kill
        result = {"outcome": "error", "detail": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
    Path(result_file).write_text(json.dumps(result))


# -- the session: all mutants, their results, resumable ----------------------------------------


@dataclass
class MutantResult:
    """One finished mutant, as the report shows it."""

    job_id: str
    file: str
    line: int
    column: int
    operator: str
    definition: str | None
    before: str
    after: str
    outcome: str  # "killed", "survived", "timeout", "error"
    killed_by: str | None = None
    detail: str = ""
    seconds: float = 0.0
    equivalent: str | None = None  # the reason, for a survivor listed as equivalent
    factory: str = ""  # the factory that killed it (a survivor: the last one that ran it)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class EquivalentMutant:
    """A survivor that cannot change any output: where (file, the line before and after the
    mutation, the operator) and why. Matched by text, so it survives edits elsewhere."""

    file: str
    operator: str
    before: str
    after: str
    reason: str
    #: The function the site is in, where the same line occurs in several (``None``: any).
    definition: str | None = None

    def matches(self, result: MutantResult) -> bool:
        return (
            Path(result.file).name == self.file
            and result.operator == self.operator
            and result.before == self.before
            and result.after == self.after
            and (self.definition is None or result.definition == self.definition)
        )


#: The equivalent mutants of the project's torch port (docs/conformance.md, "Mutation testing"),
#: each re-checked by a differential run in tests/test_conformance_mutation.py.
_SHARED_M = (
    "CPropAdam keeps CProp's m in Adam's first moment when they are equal (weight_decay = 0, "
    "beta1 == cprop_beta); this mutant keeps it privately instead (or the other way round). Both "
    "take the same update, beta m + (1 - beta) g with the same roundings (at beta = 0 a copy of g "
    "against 0 * m + g, equal because the first moment of finite gradients is finite), so where "
    "m is kept changes, its value does not."
)
TORCH_EQUIVALENTS: tuple[EquivalentMutant, ...] = (
    EquivalentMutant("adam.py", "core/AddNot", "if not share_m:", "if not not share_m:", _SHARED_M),
    EquivalentMutant("adam.py", "core/ReplaceUnaryOperator_Delete_Not", "if not share_m:", "if  share_m:", _SHARED_M),
    EquivalentMutant(
        "adam.py",
        "core/ReplaceUnaryOperator_Delete_Not",
        'if "cprop_m" not in state and not allowed_m:',
        'if "cprop_m" not in state and  allowed_m:',
        _SHARED_M,
    ),
    EquivalentMutant(
        "adam.py",
        "cprop/DropCallStatement",
        "self._init_state(p, state, hp)",
        "None",
        "CPropAdam._step_tensor creates an empty state before calling _new_param, whose first call, "
        "_prepare_state, does the same when the state is empty: dropping the call in _step_tensor leaves "
        "_prepare_state's to do it, before any arithmetic. (The same call dropped in _prepare_state is "
        "killed: the foreach path calls _prepare_state directly, and torch_port_foreach runs it.)",
        definition="_step_tensor",
    ),
)

TORCH_EQUIVALENTS += (
    EquivalentMutant(
        "functional.py",
        "core/ReplaceUnaryOperator_USub_UAdd",
        "limit = torch.where(m_hat == 0.0, torch.zeros_like(m_hat), -torch.sign(m_hat) * torch.inf)",
        "limit = torch.where(m_hat == 0.0, torch.zeros_like(m_hat), +torch.sign(m_hat) * torch.inf)",
        "Where se == 0 the standardized mean's limit is -sign(m_hat) inf; the mutant gives +sign(m_hat) inf. "
        "Every CDF maps +inf to 1 and -inf to 0, and the scale is 2c |F(z) - 1/2| = c either way (then "
        "clamped to 1): the same value, bit for bit.",
    ),
    EquivalentMutant(
        "functional.py",
        "core/NumberReplacer",
        "if t < 1:",
        "if t < 0:",
        "cprop_scale's refusal of t < 1 (no gradient yet) made a refusal of t < 0. The optimizers call it "
        "only with the step count after its increment (t >= 1) or, reading scales(), for tensors that "
        "have a state, whose t is >= 1; so through the optimizers t = 0 never arrives and no output "
        "changes. (Called directly, the module function cprop_scale would return NaN at t = 0 instead "
        "of raising: a guard of the functional helper, not of the port's optimizers, which are what "
        "the harness checks.)",
    ),
    EquivalentMutant(
        "base.py",
        "core/ReplaceTrueWithFalse",
        "self.state[p][key] = value.to(device=p.device, dtype=wanted, copy=True)",
        "self.state[p][key] = value.to(device=p.device, dtype=wanted, copy=False)",
        "load_state_dict re-reads the float32 statistics of 16-bit parameters from the loaded state "
        "dict; without copy=True it keeps the dict's own tensors where they are float32 already. The "
        "values are the same; only whether the optimizer shares those tensors with the dict changes, "
        "and torch's own load_state_dict shares them likewise wherever the dtype already matches "
        "(.to() returns the tensor itself). A restore from saved bytes (a checkpoint, the protocol's "
        "save/restore) never shares anything with a live object.",
    ),
)
TORCH_EQUIVALENTS += (
    EquivalentMutant(
        "variants.py",
        "core/AddNot",
        "return FOREACH if foreach else SINGLE",
        "return FOREACH if not foreach else SINGLE",
        "The choice between the per-tensor and the foreach path turned round (foreach=True steps per "
        "tensor, the CPU default steps with foreach). The two compute the same numbers bit for bit "
        "and keep the same state (tests/test_torch_variants.py compares them with torch.equal), so only "
        "the speed changes, which no conformance check is about.",
    ),
)
TORCH_EQUIVALENTS += (
    EquivalentMutant(
        "wrapper.py",
        "cprop/DropCallStatement",
        "super().add_param_group(param_group)",
        "None",
        "While CProp's constructor runs, torch's Optimizer.__init__ adds the parameters to the "
        "wrapper's own param_groups, which the constructor then replaces by the base optimizer's "
        "list (param_groups is the base's): without the call the list replaced is empty instead, "
        "and nothing reads it.",
        definition="add_param_group",
    ),
)
_RULE_WHERE_GIVEN = (
    "torch's default rule is asked where foreach was given and not where it was left to it: on the "
    "CPU the rule answers the per-tensor path, so foreach=True steps per tensor and the default "
    "(None, falsy) does as before"
)
_ROUTED = (
    "The choice between the per-tensor and the foreach path changed: {what}. The two compute the "
    "same numbers bit for bit and keep the same state (tests/test_torch_variants.py compares them "
    "with torch.equal), so only the speed changes, which no conformance check is about. (The "
    "compiled path is not among them: its roundings differ in the last bit, so a mutant that "
    "routes a step to it is counted as a survivor.)"
)
TORCH_EQUIVALENTS += (
    EquivalentMutant(
        "variants.py",
        "core/ReplaceFalseWithTrue",
        "_, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)",
        "_, foreach = _default_to_fused_or_foreach(params, differentiable=True, use_fused=False)",
        _ROUTED.format(
            what="torch's default rule asked for a differentiable step, which it never takes with "
            "foreach, so the default is always the per-tensor path (on the CPU it is anyway)"
        ),
    ),
    EquivalentMutant(
        "variants.py",
        "core/AddNot",
        "if foreach is None:",
        "if not foreach is None:",
        _ROUTED.format(what=_RULE_WHERE_GIVEN),
    ),
    EquivalentMutant(
        "foreach.py",
        "core/NumberReplacer",
        "if min(ts) < 1:",
        "if min(ts) < 0:",
        "The foreach path's refusal of a step count t < 1 (no gradient yet) made a refusal of t < 0: "
        "as for cprop_scale's own guard (listed above), the optimizers compute a scale only after "
        "the step count's increment, or for tensors with a state, so t >= 1 always and no output "
        "changes.",
    ),
    EquivalentMutant(
        "functional.py",
        "core/ReplaceBinaryOperator_BitAnd_BitOr",
        "difference = torch.where(torch.isinf(v_hat) & torch.isnan(difference), torch.inf, difference)",
        "difference = torch.where(torch.isinf(v_hat) | torch.isnan(difference), torch.inf, difference)",
        "v_hat - m_hat^2 is NaN only as inf - inf, with v_hat = inf: v is a weighted sum of squares "
        "of finite gradients (>= 0, finite or +inf) and the bias correction a positive finite "
        "number, and m_hat is finite or +-inf, never NaN; so isnan(difference) implies "
        "isinf(v_hat). Where v_hat = inf and the difference is not NaN, it is inf already. Either "
        "way the result is the same: the & and | masks select the same elements.",
    ),
)
_SAME_IN_GROUP = (
    "The multi-tensor path reads a property that every entry of its list shares from the first "
    "entry; the mutant reads it from the last: the hyperparameters of one param group (every item "
    "of a group's list carries the group's one checked dict) or the device or dtype of one device-and-dtype "
    "bucket (group_by_device_and_dtype puts only tensors of one device and dtype together). The "
    "same object, whichever entry it is read from."
)
TORCH_EQUIVALENTS += tuple(
    EquivalentMutant(file, "core/NumberReplacer", before, before.replace("[0]", "[ -1]"), _SAME_IN_GROUP)
    for file in ("sgd.py", "adam.py")
    for before in ("hp = items[0][2]", "dtype = statistics_dtype(originals[0].dtype)")
) + (
    EquivalentMutant(
        "foreach.py",
        "core/NumberReplacer",
        'if not like or like[0].device.type != "cpu":',
        'if not like or like[ -1].device.type != "cpu":',
        _SAME_IN_GROUP,
    ),
)

_SCRATCH = (
    "The foreach path's scratch (foreach.Workspace: buffers kept between steps that its operations "
    "write into instead of fresh tensors): {what}. The same operations run on the same values, into "
    "other memory that is free at that moment or into fresh tensors: no value changes, only how much "
    "memory a step allocates."
)
_FAST_OR_GUARDED = (
    "Which tensors the foreach path's scale computes on its fast path (no guards) and which on the "
    "guarded one (the eager port's operations): {what}. The fast path is the guarded path's "
    "operations in the same order wherever its result is finite, and a tensor whose fast result is "
    "not finite is recomputed on the guarded path (cprop_scales' docstring), so moving tensors "
    "between the two changes no value, only the speed."
)


def _foreach_equivalent(operator: str, before: str, after: str, reason: str) -> EquivalentMutant:
    return EquivalentMutant("foreach.py", operator, before, after, reason)


_LISTS = 'if not like or like[0].device.type != "cpu":'
_FAST = "fast = [k for k, dof in enumerate(dofs) if dof != 0.0 and _in_dtype(dof + eps, dtype) > 0.0]"
TORCH_EQUIVALENTS += (
    _foreach_equivalent(
        "core/AddNot",
        _LISTS,
        _LISTS.replace("if not like", "if not not like"),
        _SCRATCH.format(what="no scratch for a non-empty list of tensors: fresh tensors instead"),
    ),
    _foreach_equivalent(
        "core/ReplaceOrWithAnd",
        _LISTS,
        _LISTS.replace(" or ", " and "),
        _SCRATCH.format(what="scratch on every device, not only on the CPU"),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        "key = (like[0].device, like[0].dtype)",
        "key = (like[0].device, like[ -1].dtype)",
        _SAME_IN_GROUP,
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        "buffer = torch.empty(count * total, dtype=like[0].dtype, device=like[0].device)",
        "buffer = torch.empty(count * total, dtype=like[ -1].dtype, device=like[0].device)",
        _SAME_IN_GROUP,
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        'neg_zs = into(pick[0], "div", m_hats, variances)  # m_hat / se = -z',
        'neg_zs = into(pick[ 1], "div", m_hats, variances)  # m_hat / se = -z',
        _SCRATCH.format(
            what="-z written into the second scratch list, the standard errors' own, which this element-wise "
            "division reads element by element and nothing reads after it"
        ),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        "ps = _cdf_of_negated(neg_zs, cdf_name, pick[2])",
        "ps = _cdf_of_negated(neg_zs, cdf_name, pick[ 1])",
        _SCRATCH.format(what="the CDF written into the standard errors' scratch, which nothing reads after -z"),
    ),
    _foreach_equivalent(
        "core/AddNot",
        "return None if lists is None else [lists[k] for k in indices]",
        "return None if not lists is None else [lists[k] for k in indices]",
        _SCRATCH.format(what="no scratch picked for the fast path's tensors: fresh tensors instead"),
    ),
    EquivalentMutant(
        "sgd.py",
        "core/NumberReplacer",
        'multi.update_statistics_(ms, vs, gs, hp["cprop_beta"], work[0])',
        'multi.update_statistics_(ms, vs, gs, hp["cprop_beta"], work[ -1])',
        _SCRATCH.format(
            what="the statistics' update uses the third scratch list instead of the first; both are free then"
        ),
    ),
    _foreach_equivalent(
        "core/ReplaceBinaryOperator_Add_Sub",
        _FAST,
        _FAST.replace("dof + eps", "dof - eps"),
        _FAST_OR_GUARDED.format(what="a tensor goes the fast way where n - 1 - eps, not n - 1 + eps, is positive"),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        _FAST,
        _FAST.replace("> 0.0]", "> -1.0]"),
        _FAST_OR_GUARDED.format(what="a denominator n - 1 + eps that is 0 in the dtype goes the fast way too"),
    ),
    _foreach_equivalent(
        "cprop/DropCallStatement",
        "torch._foreach_clamp_min_(variances, 0.0)",
        "None",
        _FAST_OR_GUARDED.format(
            what="the fast path's variance is not clamped at 0: a variance rounded below 0 gives a NaN "
            "standard error there, so that tensor is recomputed guarded"
        ),
    ),
    _foreach_equivalent(
        "core/ZeroIterationForLoop",
        "for k, p, ok in zip(fast, ps, finite):",
        "for k, p, ok in []:",
        _FAST_OR_GUARDED.format(what="no fast result is kept: every tensor is recomputed guarded"),
    ),
    EquivalentMutant(
        "base.py",
        "core/ReplaceOrWithAnd",
        "if wanted == p.dtype or p not in self.state:",
        "if wanted == p.dtype and p not in self.state:",
        "load_state_dict re-reads the saved floating state of 16-bit parameters in float32; the mutant "
        "re-reads it for float32 and float64 parameters too, in their own dtype, into which torch's "
        "load_state_dict has just cast the same saved values: the same values (a copy). A parameter "
        "without a state after loading had none saved, so there is nothing to re-read either way.",
    ),
)

_DEFAULT_RULE = "_, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)"
_BUFFER = "buffer = torch.empty(count * total, dtype=like[0].dtype, device=like[0].device)"
TORCH_EQUIVALENTS += (
    EquivalentMutant(
        "variants.py",
        "core/ReplaceFalseWithTrue",
        _DEFAULT_RULE,
        _DEFAULT_RULE.replace("use_fused=False", "use_fused=True"),
        _ROUTED.format(
            what="torch's default rule asked as if fused were allowed: where it would pick fused it answers "
            "foreach=False (the per-tensor path), and on the CPU it answers the per-tensor path anyway"
        ),
    ),
    EquivalentMutant(
        "variants.py",
        "core/ReplaceComparisonOperator_Is_IsNot",
        "if foreach is None:",
        "if foreach is not None:",
        _ROUTED.format(what=_RULE_WHERE_GIVEN),
    ),
    _foreach_equivalent(
        "core/ReplaceUnaryOperator_Delete_Not",
        _LISTS,
        _LISTS.replace("if not like", "if  like"),
        _SCRATCH.format(what="no scratch for a non-empty list of tensors: fresh tensors instead"),
    ),
    _foreach_equivalent(
        "core/ReplaceComparisonOperator_NotEq_Eq",
        _LISTS,
        _LISTS.replace('!= "cpu"', '== "cpu"'),
        _SCRATCH.format(what="scratch only off the CPU: fresh tensors on it"),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        "key = (like[0].device, like[0].dtype)",
        "key = (like[ -1].device, like[0].dtype)",
        _SAME_IN_GROUP,
    ),
    _foreach_equivalent(
        "core/ReplaceComparisonOperator_Lt_LtE",
        "if buffer is None or buffer.numel() < count * total:",
        "if buffer is None or buffer.numel() <= count * total:",
        _SCRATCH.format(what="a new buffer also where the kept one has exactly the size needed"),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        _BUFFER,
        _BUFFER.replace("device=like[0]", "device=like[ -1]"),
        _SAME_IN_GROUP,
    ),
    _foreach_equivalent("core/NumberReplacer", "dtype = ms[0].dtype", "dtype = ms[ -1].dtype", _SAME_IN_GROUP),
    _foreach_equivalent(
        "core/ReplaceComparisonOperator_Is_IsNot",
        "return None if lists is None else [lists[k] for k in indices]",
        "return None if lists is not None else [lists[k] for k in indices]",
        _SCRATCH.format(what="no scratch picked for the fast path's tensors: fresh tensors instead"),
    ),
    EquivalentMutant(
        "sgd.py",
        "core/NumberReplacer",
        "work = self._workspace().lists(ps, 3)",
        "work = self._workspace().lists(ps, 4)",
        _SCRATCH.format(what="one more scratch list, which nothing uses"),
    ),
    EquivalentMutant(
        "sgd.py",
        "core/NumberReplacer",
        'multi.update_statistics_(ms, vs, gs, hp["cprop_beta"], work[0])',
        'multi.update_statistics_(ms, vs, gs, hp["cprop_beta"], work[ 1])',
        _SCRATCH.format(
            what="the statistics' update uses the second scratch list instead of the first; both are free then"
        ),
    ),
    _foreach_equivalent(
        "core/ReplaceComparisonOperator_Gt_GtE",
        _FAST,
        _FAST.replace("> 0.0]", ">= 0.0]"),
        _FAST_OR_GUARDED.format(what="a denominator n - 1 + eps that is 0 in the dtype goes the fast way too"),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        _FAST,
        _FAST.replace("> 0.0]", "> 1.0]"),
        _FAST_OR_GUARDED.format(what="a tensor whose n - 1 + eps is at most 1 goes the guarded way"),
    ),
    _foreach_equivalent(
        "core/NumberReplacer",
        "torch._foreach_clamp_min_(variances, 0.0)",
        "torch._foreach_clamp_min_(variances, -1.0)",
        _FAST_OR_GUARDED.format(
            what="the fast path's variance is clamped at -1, not 0: a variance rounded below 0 gives a NaN "
            "standard error there, so that tensor is recomputed guarded"
        ),
    ),
    _foreach_equivalent(
        "core/ReplaceBinaryOperator_BitAnd_BitOr",
        "difference = torch.where(torch.isinf(v) & torch.isnan(difference), torch.inf, difference)",
        "difference = torch.where(torch.isinf(v) | torch.isnan(difference), torch.inf, difference)",
        "The foreach twin of the standard error's mask (listed above for functional.py): v - m_hat^2 is "
        "NaN only as inf - inf, so isnan(difference) implies isinf(v), and where v = inf and the "
        "difference is not NaN it is inf already: both masks pick the same elements.",
    ),
)

KNOWN_EQUIVALENTS: dict[str, tuple[EquivalentMutant, ...]] = {"cprop_ref.torch": TORCH_EQUIVALENTS}


@dataclass
class MutationReport:
    """The outcome of a session: every finished mutant, the pending count and the score."""

    target: Target
    settings: Settings
    results: list[MutantResult] = field(default_factory=list)
    pending: int = 0
    baseline_seconds: float = 0.0

    @property
    def killed(self) -> list[MutantResult]:
        return [r for r in self.results if r.outcome in ("killed", "timeout")]

    @property
    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if r.outcome == "survived"]

    @property
    def equivalent(self) -> list[MutantResult]:
        return [r for r in self.survivors if r.equivalent]

    @property
    def errors(self) -> list[MutantResult]:
        return [r for r in self.results if r.outcome == "error"]

    @property
    def not_reached(self) -> list[MutantResult]:
        """Mutants on lines the unmutated run never executed (not run: this factory cannot kill them)."""
        return [r for r in self.results if r.outcome == "not reached"]

    @property
    def changing(self) -> int:
        """Behaviour-changing mutants run: those run, less the listed equivalent ones and errors."""
        return len(self.results) - len(self.not_reached) - len(self.equivalent) - len(self.errors)

    @property
    def score(self) -> float:
        """Killed / behaviour-changing mutants run."""
        return len(self.killed) / self.changing if self.changing else 1.0

    def format(self) -> str:
        by_check: dict[str, int] = {}
        for r in self.killed:
            key = r.killed_by or r.outcome
            if r.detail.startswith("the harness itself raised"):
                key += " (the harness crashed)"
            by_check[key] = by_check.get(key, 0) + 1
        changing = self.changing
        s = self.settings
        lines = [
            f"cprop-ref mutation report: module {self.target.module} ({self.target.source}), "
            f"port {self.target.factory}",
            f"  harness       : verify with {s.examples} derandomized examples per check, checks "
            f"{','.join(s.checks)}, dtypes {','.join(s.dtypes)} (unmutated port: passes in {self.baseline_seconds:.1f} s)",
            f"  mutants       : {len(self.results) + self.pending} ({len(self.results) - len(self.not_reached)} run, "
            f"{len(self.not_reached)} on lines the harness never runs through this factory, {self.pending} pending)",
            f"  killed        : {len(self.killed)} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(by_check.items(), key=lambda kv: -kv[1]))
            + ")",
            f"  survived      : {len(self.survivors)} ({len(self.equivalent)} of them listed as equivalent)",
        ]
        factories = self.target.factories
        if len(factories) > 1:
            per_factory = {f: sum(1 for r in self.killed if r.factory == f) for f in factories}
            lines.append(
                "  killed under  : "
                + ", ".join(f"{f.rpartition(':')[2]} {n}" for f, n in per_factory.items())
                + " (each mutant runs under the factories that reach its line, in this order, until one kills it)"
            )
        if self.errors:
            lines.append(f"  errors        : {len(self.errors)} (the runner failed; not counted)")
        lines.append(
            f"  score         : {len(self.killed)} / {changing} behaviour-changing mutants killed = "
            f"{100.0 * self.score:.1f}%"
        )
        missed = [r for r in self.survivors if not r.equivalent]
        if missed:
            lines += ["", "survivors (the harness did not see these changes):"]
            lines += [f"  {r.location}  {r.operator}  in {r.definition}: `{r.before}` -> `{r.after}`" for r in missed]
        if self.equivalent:
            lines += ["", "equivalent survivors (listed, with the reason):"]
            lines += [
                f"  {r.location}  {r.operator}: `{r.before}` -> `{r.after}`: {r.equivalent}" for r in self.equivalent
            ]
        if self.not_reached:
            per_file: dict[str, int] = {}
            for r in self.not_reached:
                per_file[Path(r.file).name] = per_file.get(Path(r.file).name, 0) + 1
            lines += ["", "not reached (lines the unmutated run never executed; another factory may reach them):"]
            lines.append("  " + ", ".join(f"{name} {n}" for name, n in sorted(per_file.items())))
        if self.errors:
            lines += ["", "errors:"]
            lines += [f"  {r.location}  {r.operator}: {r.detail}" for r in self.errors]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": asdict(self.target),
            "settings": asdict(self.settings),
            "score": self.score,
            "behaviour_changing": self.changing,
            "killed": len(self.killed),
            "pending": self.pending,
            "results": [asdict(r) for r in self.results],
        }


class Session:
    """A mutation-testing session in one SQLite file: cosmic-ray's work database (mutants and
    results) plus a table of ours holding the target and the settings, so that a later
    ``run`` resumes the same session (and refuses a different target)."""

    def __init__(self, path: str | os.PathLike[str], target: Target, settings: Settings) -> None:
        self.path = Path(path)
        self.target, self.settings = target, settings

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE IF NOT EXISTS cprop_ref_session (key TEXT PRIMARY KEY, value TEXT)")
        return db

    def _meta(self) -> dict[str, str]:
        db = self._connect()
        try:
            return dict(db.execute("SELECT key, value FROM cprop_ref_session").fetchall())
        finally:
            db.close()

    def _set_meta(self, **values: str) -> None:
        db = self._connect()
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO cprop_ref_session VALUES (?, ?)", list(values.items()))
        finally:
            db.close()

    def _described(self) -> str:
        return json.dumps({"target": asdict(self.target), "settings": asdict(self.settings)}, sort_keys=True)

    def open(self, operators: Sequence[str] = OPERATORS) -> Any:
        """The work database, created with every mutant on first use; ``ValueError`` if the file
        holds a session of another target or other settings."""
        _cosmic_ray()
        from cosmic_ray.work_db import WorkDB

        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = self._meta() if self.path.exists() else {}
        if "session" in meta and meta["session"] != self._described():
            raise ValueError(
                f"cprop-ref mutate: session {str(self.path)!r} holds another target or other settings "
                f"({meta['session']}); use another --session or --fresh"
            )
        db = WorkDB(str(self.path), WorkDB.Mode.create)
        if "session" not in meta:
            db.clear()
            db.add_work_items(enumerate_mutants(self.target, operators))
            self._set_meta(session=self._described())
        return db

    def forget(self, job_ids: Sequence[str]) -> None:
        """Drop the results of ``job_ids``: they are pending again (``--retry-survivors``). A harness
        that only grew kills what it killed before, so only the survivors need running again."""
        db = self._connect()
        try:
            with db:
                db.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in job_ids])
        finally:
            db.close()

    def baseline(self) -> float:
        return float(self._meta().get("baseline_seconds", "nan"))


def _job(target: Target, settings: Settings, mutation: Any | None, factory: str | None = None) -> dict[str, Any]:
    import cprop_ref

    job: dict[str, Any] = {
        "target": asdict(target),
        "factory": factory or target.factories[0],
        "examples": settings.examples,
        "checks": list(settings.checks),
        "dtypes": list(settings.dtypes),
        "sys_path": [os.getcwd(), str(Path(cprop_ref.__file__).resolve().parent.parent)],
        "mutation": None,
        "runner": os.getpid(),
    }
    if mutation is not None:
        job["mutation"] = {
            "module_path": str(mutation.module_path),
            "operator_name": mutation.operator_name,
            "occurrence": mutation.occurrence,
            "start_pos": list(mutation.start_pos),
            "end_pos": list(mutation.end_pos),
            "operator_args": dict(mutation.operator_args or {}),
            "definition_name": mutation.definition_name,
        }
    return job


#: Imported once by the fork server, so that each mutant's process starts without paying for
#: them; never the target (:func:`install_module_copy` refuses a module imported already).
PRELOAD: tuple[str, ...] = (
    "numpy",
    "torch",
    "hypothesis",
    "cosmic_ray.mutating",
    "cprop_ref.conformance.strategies",
    "cprop_ref.conformance.suite",
    "cprop_ref.conformance.torch_adapter",
    "cprop_ref.conformance.mutation",
)


def _fork_server() -> Any:
    """Each job runs in a process forked from a server that imported :data:`PRELOAD` (a
    fresh interpreter per mutant would import torch and hypothesis again every time)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([m for m in PRELOAD if importlib.util.find_spec(m.partition(".")[0])])
    return context


def run_job(job: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one job in a process of its own; killed, ``{"outcome": "timeout"}``, past ``timeout`` s."""
    with tempfile.TemporaryDirectory(prefix="cprop-mutate-job-") as tmp:
        result_file = Path(tmp) / "result.json"
        started = time.perf_counter()
        process = _fork_server().Process(target=_run_in_child, args=(job, str(result_file)), daemon=True)
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            return {
                "outcome": "timeout",
                "killed_by": "timeout",
                "detail": f"no result within {timeout:.0f} s",
                "seconds": time.perf_counter() - started,
            }
        if not result_file.exists():
            return {
                "outcome": "error",
                "detail": f"the mutant's process ended with exit code {process.exitcode} and no result",
                "seconds": time.perf_counter() - started,
            }
        result = json.loads(result_file.read_text())
        if result.get("outcome") != "error":
            result["outcome"] = "survived" if result.get("killed_by") is None else "killed"
        return result


def _mutant_result(target: Target, item: Any, payload: dict[str, Any]) -> MutantResult:
    m = item.mutations[0]
    line, column = m.start_pos
    try:
        before, after = changed_line(*mutated_source(target, m), line)
    except ValueError:
        before, after = "", ""
    return MutantResult(
        job_id=item.job_id,
        file=str(Path(target.source).name if not target.root.is_dir() else Path(target.source) / m.module_path),
        line=line,
        column=column,
        operator=m.operator_name,
        definition=m.definition_name,
        before=before,
        after=after,
        outcome=payload.get("outcome", "error"),
        killed_by=payload.get("killed_by"),
        detail=payload.get("detail", ""),
        seconds=float(payload.get("seconds", 0.0)),
        factory=payload.get("factory", ""),
    )


def _to_work_result(payload: dict[str, Any], diff: str) -> Any:
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    outcome = payload["outcome"]
    if outcome == "error":
        return WorkResult(
            worker_outcome=WorkerOutcome.ABNORMAL,
            output=json.dumps(payload),
            test_outcome=TestOutcome.INCOMPETENT,
            diff=diff,
        )
    test = TestOutcome.SURVIVED if outcome == "survived" else TestOutcome.KILLED
    return WorkResult(worker_outcome=WorkerOutcome.NORMAL, output=json.dumps(payload), test_outcome=test, diff=diff)


def _skip_unreached(db: Any, target: Target, covered: dict[str, dict[str, list[int]]]) -> None:
    """Mark the mutants on lines no factory's unmutated run executes as skipped (cosmic-ray's
    outcome for a filtered mutant): these factories cannot kill them, whatever the harness does."""
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    for item in db.pending_work_items:
        if not reaching_factories(target, item.mutations[0], covered):
            db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="{}"))


def sample_items(items: Sequence[Any], sample: int | None, seed: int = 0) -> list[Any]:
    """``sample`` of ``items`` drawn with ``seed`` (all of them when ``sample`` is ``None``), in order."""
    ordered = sorted(items, key=_order)
    if sample is None or sample >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, sample), key=_order)


def run_session(
    session_path: str | os.PathLike[str],
    target: Target,
    settings: Settings,
    *,
    jobs: int = 1,
    sample: int | None = None,
    seed: int = 0,
    timeout: float | None = None,
    equivalents: Sequence[EquivalentMutant] | None = None,
    progress: Callable[[str], None] | None = None,
    first: Sequence[str] = (),
    retry_survivors: bool = False,
) -> MutationReport:
    """Run the pending mutants of the session (``sample`` of them, drawn with ``seed``, when
    given; those whose job ids are in ``first`` before the others; with ``retry_survivors``, the
    session's survivors pending again and first of all), ``jobs`` at a time, and report on every
    finished one. Each result is written to
    the session as it arrives: stopping the run loses at most the mutants in flight."""
    if jobs < 1:
        raise ValueError(f"cprop-ref mutate: invalid jobs={jobs}: must be >= 1")
    session = Session(session_path, target, settings)
    db = session.open()
    say = progress or (lambda line: None)
    if retry_survivors:  # after open(): only a session of this target and these settings
        # A listed equivalent survives any harness: the differential test re-checks it instead.
        listed = {
            r.job_id for r in load_report(session_path, target, settings, equivalents=equivalents, db=db).equivalent
        }
        db.close()
        again = [job_id for job_id in survivors_of(session_path) if job_id not in listed]
        session.forget(again)
        first = [*again, *first]
        db = session.open()
        say(f"running the {len(again)} survivors not listed as equivalent again first")
    try:
        if session.baseline() != session.baseline():  # NaN: the unmutated port has not been run yet
            baselines, covered = {}, {}
            for factory in target.factories:
                say(f"running the harness on the unmutated port ({factory})")
                payload = run_job({**_job(target, settings, None, factory), "trace": True}, timeout=None)
                if payload["outcome"] != "survived":
                    raise ValueError(
                        f"cprop-ref mutate: the unmutated port {factory} does not pass the harness "
                        f"({payload.get('killed_by')}: {payload.get('detail')}); fix it before mutating it"
                    )
                baselines[factory], covered[factory] = float(payload["seconds"]), payload["covered"]
            session._set_meta(
                baseline_seconds=str(sum(baselines.values())),
                baselines=json.dumps(baselines),
                covered=json.dumps(covered),
            )
            _skip_unreached(db, target, covered)
        meta = session._meta()
        baselines, covered = json.loads(meta["baselines"]), json.loads(meta["covered"])
        limits = {f: (timeout if timeout is not None else max(60.0, 10.0 * b)) for f, b in baselines.items()}
        pending = sample_items(list(db.pending_work_items), sample, seed)
        # In a random (seeded) order: the mutants finished at any moment are a random sample.
        random.Random(seed).shuffle(pending)
        if first:  # named mutants first (e.g. an earlier session's survivors), in the order given
            rank = {job_id: i for i, job_id in enumerate(first)}
            pending.sort(key=lambda item: rank.get(item.job_id, len(rank)))
        say(
            f"{len(pending)} mutants to run, {jobs} at a time (limit "
            + ", ".join(f"{limit:.0f} s under {f.rpartition(':')[2]}" for f, limit in limits.items())
            + ")"
        )

        def run_all(item: Any) -> dict[str, Any]:
            """The mutant under each factory that reaches it, until one kills it."""
            payload: dict[str, Any] = {"outcome": "error", "detail": "no factory reaches it"}
            for factory in reaching_factories(target, item.mutations[0], covered):
                payload = run_job(_job(target, settings, item.mutations[0], factory), limits[factory])
                payload["factory"] = factory
                if payload["outcome"] != "survived":
                    break
            return payload

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_all, item): item for item in pending}
            for n, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                item = futures[future]
                payload = future.result()
                result = _mutant_result(target, item, payload)
                diff = f"{result.location}: {result.before} -> {result.after}"
                db.set_result(item.job_id, _to_work_result(payload, diff))
                say(
                    f"[{n}/{len(pending)}] {result.outcome:<8} {result.location} {result.operator} "
                    f"{result.killed_by or ''} {result.factory.rpartition(':')[2]}"
                )
        return load_report(session_path, target, settings, equivalents=equivalents, db=db)
    finally:
        db.close()


def load_report(
    session_path: str | os.PathLike[str],
    target: Target,
    settings: Settings,
    *,
    equivalents: Sequence[EquivalentMutant] | None = None,
    db: Any = None,
) -> MutationReport:
    """The report of every finished mutant of a session (without running anything)."""
    own = db is None
    if own:
        db = Session(session_path, target, settings).open()
    try:
        equivalents = KNOWN_EQUIVALENTS.get(target.module, ()) if equivalents is None else equivalents
        report = MutationReport(target, settings, baseline_seconds=Session(session_path, target, settings).baseline())
        for item, result in sorted(db.completed_work_items, key=lambda pair: _order(pair[0])):
            payload = json.loads(result.output or "{}")
            if result.worker_outcome == "skipped":
                payload = {"outcome": "not reached"}
            mutant = _mutant_result(target, item, payload)
            if mutant.outcome == "survived":
                mutant.equivalent = next((e.reason for e in equivalents if e.matches(mutant)), None)
            report.results.append(mutant)
        report.pending = len(list(db.pending_work_items))
        return report
    finally:
        if own:
            db.close()


# -- the command line --------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    mutate = subparsers.add_parser(
        "mutate",
        help="mutation testing: mutate a port's source one site at a time and run verify on each mutant",
    )
    mutate.add_argument("module", help="the port's module, e.g. cprop_ref.torch or my_port")
    mutate.add_argument("--factory", default=None, help="MODULE:FACTORY as for verify (known for cprop_ref.torch/jax)")
    mutate.add_argument("--source", default=None, help="the module's package directory or .py file (default: found)")
    mutate.add_argument("--session", default=None, help="session database (default mutants-MODULE.sqlite); resumed")
    mutate.add_argument("--fresh", action="store_true", help="start the session again (drops its results)")
    mutate.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run side by side")
    mutate.add_argument("--sample", type=int, default=None, help="run only this many of the pending mutants")
    mutate.add_argument("--seed", type=int, default=0, help="seed of --sample's draw (default 0)")
    mutate.add_argument(
        "--timeout", type=float, default=None, help="seconds per mutant (default 10x the unmutated run)"
    )
    mutate.add_argument(
        "--examples", type=int, default=None, help="hypothesis examples per check (default: verify's, for the score)"
    )
    mutate.add_argument("--json", default=None, help="also write the report as JSON to this file")
    mutate.add_argument(
        "--report-only", action="store_true", help="print the session's report without running anything"
    )
    mutate.add_argument(
        "--retry-survivors",
        action="store_true",
        help="run this session's survivors again (after the harness grew), before the pending mutants; "
        "the listed equivalent ones stay as they are",
    )
    mutate.add_argument(
        "--survivors-first",
        default=None,
        metavar="SESSION",
        help="run the mutants that survived in this other session file (an earlier harness) before the rest",
    )
    mutate.set_defaults(func=run_mutate)


def survivors_of(session_path: str | os.PathLike[str]) -> list[str]:
    """The job ids of the mutants that survived in a session file (``ValueError`` if it is none)."""
    path = Path(session_path)
    if not path.is_file():
        raise ValueError(f"cprop-ref mutate: --survivors-first {str(path)!r}: no such session file")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT job_id FROM work_results WHERE test_outcome = 'SURVIVED' ORDER BY job_id")
            return [job_id for (job_id,) in rows.fetchall()]
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        raise ValueError(f"cprop-ref mutate: --survivors-first {str(path)!r}: not a session file ({err})") from None


def run_mutate(args: argparse.Namespace) -> int:
    """Exit status 0: every behaviour-changing mutant that ran was killed; 1: survivors; 2: bad input."""
    try:
        target = Target.resolve(args.module, args.source, args.factory)
        session = Path(args.session or f"mutants-{args.module}.sqlite")
        if args.fresh and session.exists():
            session.unlink()
        for option, value in (("--jobs", args.jobs), ("--sample", args.sample), ("--timeout", args.timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"cprop-ref mutate: invalid {option}={value}: must be > 0")
        settings = Settings.verify_defaults()
        first = survivors_of(args.survivors_first) if args.survivors_first else []
        if args.examples is not None:
            if args.examples < 1:
                raise ValueError(f"cprop-ref mutate: invalid --examples={args.examples}: must be >= 1")
            settings = Settings(args.examples, settings.checks, settings.dtypes)
        if args.report_only:
            if not session.exists():
                raise ValueError(f"cprop-ref mutate: --report-only: no session {str(session)!r}")
            report = load_report(session, target, settings)
        else:
            report = run_session(
                session,
                target,
                settings,
                jobs=args.jobs,
                sample=args.sample,
                seed=args.seed,
                timeout=args.timeout,
                progress=lambda line: print(line, file=sys.stderr),
                first=first,
                retry_survivors=args.retry_survivors,
            )
    except (ValueError, ImportError) as err:
        print(str(err), file=sys.stderr)
        return 2
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return 0 if all(r.equivalent for r in report.survivors) else 1


# -- differential re-check of equivalent mutants -----------------------------------------------


def record_outputs(factory: str, cases_file: str) -> dict[str, Any]:
    """Every output of the (installed) port on the pickled cases: after each step the
    parameters, scales and statistics, or the exception that stopped the case."""
    import pickle

    import numpy as np

    from . import load_port
    from .cases import ClosedLoopCase, InjectedCase, OpenLoopCase, ResumeCase
    from .protocol import optional
    from .usage import GroupRefusalCase, GroupsCase, OptionRefusalCase, RefusalCase, probe_gradients

    port = load_port(factory)
    cases = pickle.loads(Path(cases_file).read_bytes())
    outputs: list[list[Any]] = []

    def snapshot(run: Any) -> list[Any]:
        out = [run.params()]
        for name in ("scales", "cprop_state"):
            read = optional(run, name)
            out.append(read() if read else None)
        return out

    for case in cases:
        kinds = (OpenLoopCase, ResumeCase, InjectedCase, ClosedLoopCase, RefusalCase, GroupsCase)
        if not isinstance(case, (*kinds, GroupRefusalCase, OptionRefusalCase)):
            raise TypeError(f"no differential run for {type(case).__name__}")
        record: list[Any] = []
        try:
            if isinstance(case, RefusalCase):
                port(case.config, [np.array(p) for p in case.params])
                record.append("built")
            elif isinstance(case, GroupRefusalCase):  # each build: its exception (and message), in turn
                alone = [np.array(p) for p in case.params[1]]
                grouped = [[np.array(p) for p in ps] for ps in case.params]
                record.append(_outcome_of(functools.partial(port, case.invalid, alone)))
                record.append(_outcome_of(functools.partial(port.groups, [case.valid, case.invalid], grouped)))
                run = port(case.valid, [np.array(p) for p in case.params[0]])
                add = optional(run, "add_group")
                if add is not None:  # a refused add, then a step: the refusal changed nothing
                    record.append(
                        _outcome_of(functools.partial(add, case.invalid, [np.array(p) for p in case.params[1]]))
                    )
                    run.step(probe_gradients(case.params[0], case.valid.dtype))
                    record.append(snapshot(run))
            elif isinstance(case, OptionRefusalCase):
                for label, build in port.option_refusals(case.config, [np.array(p) for p in case.params]):
                    record.append((label, _outcome_of(build)))
            elif isinstance(case, GroupsCase):
                run = port.groups(case.configs, [[np.array(p) for p in ps] for ps in case.params])
                record.append(snapshot(run))
                for grads in case.grads:
                    run.step(grads)
                    record.append(snapshot(run))
            elif isinstance(case, (OpenLoopCase, ResumeCase)):
                run = port(case.config, [np.array(p) for p in case.params])
                record.append(snapshot(run))
                for i, grads in enumerate(case.grads):
                    if isinstance(case, ResumeCase) and i == case.resume_at:
                        save, restore = optional(run, "save"), optional(run, "restore")
                        if save is not None and restore is not None:  # through the port's own mechanism
                            data = save()
                            run = port(case.config, run.params())
                            optional(run, "restore")(data)
                    run.step(grads)
                    record.append(snapshot(run))
            elif isinstance(case, InjectedCase):
                run = port(case.config, [np.array(p) for p in case.params])
                run.load_state([dict(s) for s in case.states])
                run.step(case.grads)
                record.append(snapshot(run))
            elif isinstance(case, ClosedLoopCase):
                run = port(case.config, [np.array(case.start)])
                for noise in case.noises:
                    x = run.params()[0].astype(np.float64)
                    with np.errstate(all="ignore"):
                        run.step([(case.curvature * x + noise).astype(case.config.np_dtype)])
                    record.append(snapshot(run))
        except Exception as err:  # the same exception on both sides is the same behaviour
            record.append(("exception", type(err).__name__))
        outputs.append(record)
    out_file = Path(cases_file).with_suffix(".outputs.pkl")
    out_file.write_bytes(pickle.dumps(outputs))
    return {"killed_by": None, "outputs": str(out_file)}


def _outcome_of(build: Any) -> Any:
    """What a build that should be refused did: ``"built"``, or its exception's type and message
    (a refusal's message is part of what the refusals check reads)."""
    try:
        build()
    except Exception as err:  # noqa: BLE001 - recorded, compared between unmutated and mutant
        return ("exception", type(err).__name__, str(err))
    return "built"


def draw_cases(examples: int, dtypes: Sequence[str], checks: Sequence[str]) -> list[Any]:
    """``examples`` derandomized cases of each check, drawn from the harness's strategies."""
    from hypothesis import HealthCheck, Phase, given, settings

    from .suite import case_strategy

    drawn: list[Any] = []
    for check in checks:

        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=case_strategy(check, tuple(dtypes)))
        def collect(case: Any) -> None:
            drawn.append(case)

        collect()
    return drawn


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two recorded outputs first differ, or ``None``: every value equal (``-0.0 == 0.0``,
    as the checks compare), NaN where NaN, the same dtypes, shapes and exceptions."""
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        same = a == b  # values: the sign of a zero is no part of the reference's promise
        if a.dtype.kind == "f":
            same |= np.isnan(a) & np.isnan(b)
        if not np.all(same):
            i = tuple(int(k) for k in np.argwhere(~np.asarray(same))[0]) if a.ndim else ()
            return f"{where}{list(i)}: {a[i]!r} vs {b[i]!r}"
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} entries"
        for k, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{k}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def differential_check(
    target: Target,
    mutation: Any,
    cases: Sequence[Any],
    reference_outputs: Any | None = None,
    factory: str | None = None,
) -> tuple[str | None, Any]:
    """Run the unmutated port and the mutant on ``cases`` (each in its own process, through
    ``factory``, default the target's first) and return where their outputs first differ
    (``None``: identical) and the unmutated outputs (reusable for the same factory)."""
    import pickle

    with tempfile.TemporaryDirectory(prefix="cprop-differential-") as tmp:
        cases_file = Path(tmp) / "cases.pkl"
        cases_file.write_bytes(pickle.dumps(list(cases)))

        def outputs(m: Any) -> Any:
            job = _job(target, Settings(1, (), ()), m, factory)
            job["record"] = str(cases_file)
            payload = run_job(job, timeout=None)
            if payload["outcome"] == "error":
                raise RuntimeError(f"differential run failed: {payload['detail']}")
            return pickle.loads(Path(payload["outputs"]).read_bytes())

        original = reference_outputs if reference_outputs is not None else outputs(None)
        return first_difference(original, outputs(mutation), "case"), original
