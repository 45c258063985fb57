"""Listings a user copies from: a table when every value fits whole, one record per block when not.

A rich table squeezed into a narrow terminal (or a pipe, which rich treats as 80 columns) cuts or folds
its cells, and a folded GUID or password pasted back into a command is wrong. So a listing is drawn as
a table only when no value would be split; otherwise each row becomes `column: value` lines that are
never wrapped by us (the terminal may wrap them visually, but a copy gets the whole value).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table


def _longest_words(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [
        max((cell_len(word) for text in (col, *(r[i] for r in rows)) for word in text.split()), default=1)
        for i, col in enumerate(columns)
    ]


def _min_width(widest: Sequence[int]) -> int:
    """The table's width with each column as wide as its longest word: a border and two spaces of
    padding per column, and the closing border."""
    return sum(w + 3 for w in widest) + 1


def _table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], widest: Sequence[int], width: int
) -> Table:
    """Columns at least as wide as their longest word (so that rich wraps only at spaces), the room
    left given to the columns in order, up to their longest line."""
    full = [
        max((cell_len(line) for text in (col, *(r[i] for r in rows)) for line in text.splitlines()), default=1)
        for i, col in enumerate(columns)
    ]
    spare = width - _min_width(widest)
    widths = []
    for w, f in zip(widest, full, strict=True):
        grow = min(spare, f - w)
        spare -= grow
        widths.append(w + grow)
    table = Table(title=title)
    for col, w in zip(columns, widths, strict=True):
        table.add_column(col, width=w, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def print_rows(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widest = _longest_words(columns, rows)
    if _min_width(widest) <= console.width:
        console.print(_table(title, columns, rows, widest, console.width))
        return
    console.print(title, style="italic", markup=False, highlight=False)
    for row in rows:
        for col, value in zip(columns, row, strict=True):
            console.print(f"  {col}: {value}", soft_wrap=True, markup=False, highlight=False)
        console.print()


def print_value(console: Console, text: str) -> None:
    """A line holding a value to copy: printed as is (no markup, never wrapped by rich)."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)
