"""The ``cprop-ref`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cprop-ref", description="cprop-ref: the reference implementation of CProp.")
    parser.add_argument("--version", action="version", version=f"cprop-ref {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .demo import add_demo_arguments, run_demo

    demo = commands.add_parser("demo", help="CProp against its base optimizers on a noisy quadratic (the default)")
    add_demo_arguments(demo)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    if args.command == "demo":
        return run_demo(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
