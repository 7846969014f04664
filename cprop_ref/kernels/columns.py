"""Named columns of the kernels' scalar and flag tables.

A kernel reads a tensor's scalars and flags from one row of a table, by column. Each family
declares its row as a :class:`~typing.NamedTuple` (``AdamScalars``, ``SgdFlags``, ...): the
row builder fills it by field name, and :func:`column_numbers` gives the column of every
field, from which the module-level constants the Numba code indexes with are taken, each by
its field's name. So the order of the columns is written once, in the NamedTuple, and a row
cannot be built in another order than the kernels read it.

No Numba here: the optimizers' constructors use these modules' checks without loading it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

Row = TypeVar("Row", bound=tuple)


def column_numbers(row: type[Row], start: int = 0) -> Row:
    """The column of each field of the NamedTuple ``row``, counted from ``start``: an
    instance of ``row`` whose fields hold their own positions (``start`` for the first)."""
    return row(*range(start, start + len(row._fields)))  # type: ignore[attr-defined]


def column_count(row: type[NamedTuple] | Any) -> int:
    """How many columns ``row`` (a NamedTuple class) has."""
    return len(row._fields)
