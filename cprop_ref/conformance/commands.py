"""``cprop-ref golden`` and ``cprop-ref verify``: the harness on the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .dtypes import DTYPES
from .suite import VERIFY_CHECKS


def register(subparsers: argparse._SubParsersAction) -> None:
    golden = subparsers.add_parser(
        "golden", help="write the golden conformance fixtures (.npz + manifest.json) for ports in any language"
    )
    golden.add_argument("--out", required=True, help="directory to write into (created if missing)")
    golden.set_defaults(func=run_golden)

    verify = subparsers.add_parser(
        "verify", help="run the conformance suite against a port: cprop-ref verify MODULE:FACTORY"
    )
    verify.add_argument("port", help="the port factory, e.g. cprop_ref.conformance:torch_port")
    verify.add_argument("--examples", type=int, default=100, help="hypothesis examples per check (default 100)")
    verify.add_argument(
        "--checks",
        default=",".join(VERIFY_CHECKS),
        help=f"comma-separated checks to run (default {','.join(VERIFY_CHECKS)})",
    )
    verify.add_argument(
        "--dtypes", default=",".join(DTYPES), help=f"comma-separated dtypes (default {','.join(DTYPES)})"
    )
    verify.add_argument("--fixtures", default=None, help="also check the golden fixtures in this directory")
    verify.add_argument(
        "--random", action="store_true", help="draw fresh random examples (default: derandomized, reproducible)"
    )
    verify.add_argument("--report", default=None, help="also write the report to this file")
    verify.add_argument(
        "--keep-going",
        action="store_true",
        help="search for every distinct mismatch (up to 20 per check; default: the first 3 per check)",
    )
    verify.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds one call into the port may take before it is reported as hanging (default 60)",
    )
    verify.set_defaults(func=run_verify)


def run_golden(args: argparse.Namespace) -> int:
    from .golden import write_fixtures

    files = write_fixtures(args.out)
    print(f"wrote {len(files)} files to {args.out} (the manifest describes the format; see docs/conformance.md)")
    return 0


def _split(value: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise SystemExit(f"cprop-ref verify: invalid {option}={value!r}: choose from {', '.join(allowed)}")
    return items


def run_verify(args: argparse.Namespace) -> int:
    """Exit status 0: the port conforms; 1: a mismatch (the report says where); 2: the port
    cannot be loaded or hypothesis is missing."""
    from . import load_port
    from .suite import run_suite

    if not args.time_limit > 0:
        raise SystemExit(f"cprop-ref verify: invalid --time-limit={args.time_limit}: must be > 0 seconds")
    if args.examples < 1:
        raise SystemExit(f"cprop-ref verify: invalid --examples={args.examples}: must be >= 1")
    checks = _split(args.checks, VERIFY_CHECKS, "--checks")
    dtypes = _split(args.dtypes, DTYPES, "--dtypes")
    if args.fixtures is not None and not (Path(args.fixtures) / "manifest.json").is_file():
        raise SystemExit(f"cprop-ref verify: --fixtures={args.fixtures!r} has no manifest.json")
    # As ``python -m`` does: a port module in the current directory (my_port.py) is importable.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        port = load_port(args.port)
    except ValueError as err:
        print(f"cprop-ref verify: {err}", file=sys.stderr)
        return 2
    try:
        report = run_suite(
            port,
            port_spec=args.port,
            checks=checks,
            max_examples=args.examples,
            derandomize=not args.random,
            dtypes=dtypes,
            fixtures=args.fixtures,
            progress=lambda line: print(line, file=sys.stderr),
            max_mismatches=20 if args.keep_going else 3,
            time_limit=args.time_limit,
        )
    except ImportError as err:  # hypothesis (the test extra) is missing
        print(f"cprop-ref verify: {err}", file=sys.stderr)
        return 2
    text = report.format()
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0 if report.passed else 1
