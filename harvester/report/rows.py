"""A rich `Table` printed a row at a time, for a stream that shows no colour (`kubectl logs`).

Takes a console, a maker of the empty table (its columns, box and caption) and the rows as
plain strings, listed twice (once to measure, once to write); gives the text that adding every
row to one table and printing it would give, without ever holding that table. Rich keeps a cell
object per cell and lays out each one through its text engine: a plan of 100,000 files cost
some 35 s and 300 MB that way. Here rich still decides everything that is layout: the column
widths (measured on only the cells that decide them, the widest and the one with the longest
word in each column), the header, the caption, and every row that would wrap or that starts or
ends with a space. Only a row whose cells each fit on one line is written by padding strings,
as rich pads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["print_rows"]

Row = Sequence[str]
# Rows written per call to the stream: few calls, little text held.
_BATCH = 1024
# Texts remembered as split into words (each is measured again once forgotten).
_SPLIT_CACHE = 4096


def print_rows(
    console: Console, make_table: Callable[[], Table], rows: Callable[[], Iterable[Row]]
) -> None:
    """Print `make_table()` with `rows()` added, as `console.print` would; `rows` is called twice.

    A console that styles its output (a terminal) or a table this module does not lay out
    itself gets the table built and printed whole.
    """
    table = make_table()
    if not _streamable(console, table):
        for row in rows():
            table.add_row(*(Text(cell) for cell in row))  # text, never markup
        console.print(table)
        return
    _Layout(console, make_table, _measure(table, rows())).write(rows())


def _streamable(console: Console, table: Table) -> bool:
    """Whether every body row is one plain line of padded cells between box dividers: no colour
    to write, no row or column that sizes or styles itself, the header shown, no edge."""
    plain_console = console.color_system is None and not console.record and not console.is_jupyter
    plain_columns = all(
        column.width is None
        and column.min_width is None
        and column.max_width is None
        and column.ratio is None
        and column.justify in ("left", "right")
        for column in table.columns
    )
    return (
        plain_console
        and plain_columns
        and bool(table.columns)
        and table.box is not None
        and table.show_header
        and not table.show_edge
        and not table.show_footer
        and not table.show_lines
        and not table.leading
        and not table.expand
        and table.width is None
        and table.min_width is None
        and not table.title
        and not table.row_styles
        and not table.collapse_padding
        and table.pad_edge
        and not table.rows
    )


def _measure(table: Table, rows: Iterable[Row]) -> Table:
    """`table` with a few rows that give its columns the widths all of `rows` would give.

    Rich sizes a column by the largest minimum (longest word) and the largest maximum (whole
    text) of its cells, so the cell holding each of them is all it needs to see.
    """
    count = len(table.columns)
    most, least = [0] * count, [0] * count
    widest, wordiest = [""] * count, [""] * count
    # Cells already split into words: a column of sizes or actions repeats a few texts.
    split: list[set[str]] = [set() for _ in range(count)]
    for row in rows:
        for index, cell in enumerate(row):
            width = len(cell) if cell.isascii() else cell_len(cell)
            if width > most[index]:
                most[index], widest[index] = width, cell
            # A cell's longest word is never wider than the cell itself.
            if width > least[index] and cell not in split[index]:
                word = _longest_word(cell, width)
                if word < width:
                    if len(split[index]) >= _SPLIT_CACHE:
                        split[index].clear()
                    split[index].add(cell)
                if word > least[index]:
                    least[index], wordiest[index] = word, cell
    for index in range(count):
        for cell in dict.fromkeys((widest[index], wordiest[index])):
            table.add_row(*(Text(cell if i == index else "") for i in range(count)))
    return table


def _longest_word(cell: str, width: int) -> int:
    """What rich's `Text` measures as the cell's minimum width."""
    if cell.isascii() and cell.isprintable() and " " not in cell:
        return width
    words = cell.split()
    return max(cell_len(word) for word in words) if words else width


class _Layout:
    """The table's column widths, header, caption and dividers, worked out by rich once."""

    def __init__(self, console: Console, make_table: Callable[[], Table], sizing: Table) -> None:
        self._console = console
        self._make_table = make_table
        options = console.options
        widths = sizing._calculate_column_widths(
            console, options.update_width(options.max_width - sizing._extra_width)
        )
        # Rich's own width arithmetic (private, so tests/test_report_rows.py holds this module's
        # text against rich's whole-table text): rewriting it here would drift from rich.
        _top, pad_right, _bottom, pad_left = sizing.padding
        # Each column's room for text: its width without the padding on either side.
        self._room = [width - pad_left - pad_right for width in widths]
        self._left, self._right = " " * pad_left, " " * pad_right
        self._right_justified = [column.justify == "right" for column in sizing.columns]
        assert sizing.box is not None  # _streamable
        safe = console.safe_box if sizing.safe_box is None else sizing.safe_box
        box = sizing.box.substitute(options, safe=safe)
        # Body rows are divided by the box's middle verticals, the last by its foot's.
        self._mid, self._foot = box.mid_vertical, box.foot_vertical
        self._head = self._render(self._table(caption=False), ())
        with_caption = self._render(self._table(caption=True), ())
        self._caption = with_caption[len(self._head) :]

    def _table(self, *, caption: bool) -> Table:
        """An empty table with the measured widths fixed, so rich lays out rows as in the whole."""
        table = self._make_table()
        for column, width in zip(table.columns, self._room, strict=True):
            column.width = width
        if not caption:
            table.caption = None
        return table

    def _render(self, table: Table, rows: Iterable[Row]) -> str:
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        with self._console.capture() as captured:
            self._console.print(table)
        return captured.get()

    def write(self, rows: Iterable[Row]) -> None:
        out = self._console.file
        out.write(self._head)
        batch: list[str] = []
        for row, last in _with_last(rows):
            batch.append(self._line(row, last))
            if len(batch) >= _BATCH:
                out.write("".join(batch))
                batch.clear()
        batch.append(self._caption)
        out.write("".join(batch))
        out.flush()

    def _line(self, row: Row, last: bool) -> str:
        """One row's text: padded cells when each fits on one line, else rich's rendering."""
        cells: list[str] = []
        for cell, room, right in zip(row, self._room, self._right_justified, strict=True):
            width = len(cell) if cell.isascii() else cell_len(cell)
            if width > room or not cell.isprintable() or cell.strip() != cell:
                return self._rendered(row, last)
            pad = " " * (room - width)
            cells.append(self._left + (pad + cell if right else cell + pad) + self._right)
        return (self._foot if last else self._mid).join(cells) + "\n"

    def _rendered(self, row: Row, last: bool) -> str:
        """A row rich lays out, between the header and, unless it is the last, an empty row
        (the divider of the last row may differ); only the row's own lines are kept."""
        rows = [row] if last else [row, [""] * len(row)]
        text = self._render(self._table(caption=False), rows)[len(self._head) :]
        if last:
            return text
        return "".join(text.splitlines(keepends=True)[:-1])


def _with_last(rows: Iterable[Row]) -> Iterator[tuple[Row, bool]]:
    iterator = iter(rows)
    previous = next(iterator, None)
    while previous is not None:
        current = next(iterator, None)
        yield previous, current is None
        previous = current
