"""``cprop-ref problems``: the test problems with their dimension, minimum and noise options."""

from __future__ import annotations

import argparse

from problems import describe_problems


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "problems",
        help="list the test problems (dimension, minimum, noise options)",
        description="List the test problems of `cprop-ref compare`, with their default options.",
    )
    parser.set_defaults(func=list_problems)


def format_minimum(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def list_problems(args: argparse.Namespace) -> int:
    del args
    rows = describe_problems()
    name_width = max(len(row["name"]) for row in rows)
    print(f"{'problem':<{name_width}}  {'dim':>5}  {'minimum':>12}  description")
    for row in rows:
        minimum = "unknown" if row["minimum"] is None else format_minimum(row["minimum"])
        print(f"{row['name']:<{name_width}}  {row['dim']!s:>5}  {minimum:>12}  {row['summary']}")
        indent = " " * (name_width + 2)
        print(f"{indent}noise: {row['noise']}")
        print(f"{indent}options: {row['options']}")
        if "note" in row:
            print(f"{indent}note: {row['note']}")
    print("\nBuild one with options:  cprop-ref compare NAME --set KEY=VALUE ...")
    return 0
