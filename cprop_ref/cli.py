"""The ``cprop-ref`` command line.

Each subcommand lives in its own module with two functions, ``register(subparsers)``
(adds its parser and sets ``func`` as a default) and the function it runs; to add a
command, append its module to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__

#: Modules that provide a ``register(subparsers)`` function, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "cprop_ref.demo",
    "cprop_ref.compare",
    "cprop_ref.problems_cli",
    "cprop_ref.conformance.commands",
    "cprop_ref.conformance.mutation",
    "cprop_ref.bench",
    "cprop_ref.study.commands",
)
#: What ``cprop-ref`` with no command runs: the main job on a built-in default.
DEFAULT_COMMAND = "compare"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cprop-ref", description="cprop-ref: the reference implementation of CProp.")
    parser.add_argument("--version", action="version", version=f"cprop-ref {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = [DEFAULT_COMMAND, *argv]
    elif not argv[0].startswith("-") and argv[0] not in _commands(parser):
        if not _is_problem(argv[0]):
            from problems import PROBLEMS

            parser.error(
                f"{argv[0]!r} is neither a command ({', '.join(sorted(_commands(parser)))}) "
                f"nor a problem ({', '.join(PROBLEMS)})"
            )
        argv = [DEFAULT_COMMAND, *argv]  # `cprop-ref rosenbrock`: the main job on that problem
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`cprop-ref problems | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as err:
        # A user's input that a command did not catch itself: one line, no traceback.
        print(f"cprop-ref {args.command or DEFAULT_COMMAND}: {err}", file=sys.stderr)
        return 1


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _is_problem(name: str) -> bool:
    from problems import PROBLEMS

    return name in PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
