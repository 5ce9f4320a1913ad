"""Text the reports print: tables and lines that fit a width (100 columns by default)."""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence

#: Reports wrap at this many columns unless given another width.
WIDTH = 100
# A table's last column is wrapped in place while it keeps this many columns.
_MIN_LAST_COLUMN = 24


def pattern(name: str) -> str:
    """``layers.3.attn.q.weight`` -> ``layers.*.attn.q.weight``: one line per layer stack."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def wrap_line(line: str, width: int = WIDTH) -> list[str]:
    """``line`` in pieces no wider than ``width``; pieces after the first are
    indented 4 columns more than the line (long names are broken too)."""
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    more = indent + "    "
    if len(more) >= width // 2:
        more = indent = ""
    return textwrap.wrap(
        line.strip(),
        width,
        initial_indent=indent,
        subsequent_indent=more,
        break_on_hyphens=False,
    ) or [line[:width]]


def fit(text: str, width: int = WIDTH) -> str:
    """Every line of ``text`` wrapped at ``width`` columns."""
    return "\n".join(
        piece for line in text.splitlines() for piece in wrap_line(line, width)
    )


def _rows_wrapped(
    header: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> tuple[list[str], list[list[str]]] | None:
    """Header lines and each row's lines, the last column wrapped in place; None
    when the other columns leave it fewer than ``_MIN_LAST_COLUMN`` columns."""
    widths = [
        max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)
    ]
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    if fixed + min(widths[-1], _MIN_LAST_COLUMN) > width:
        return None
    widths[-1] = min(widths[-1], width - fixed)

    def lines_of(row: Sequence[str]) -> list[str]:
        *cells, tail = row
        pieces = textwrap.wrap(tail, widths[-1], break_on_hyphens=False) or [""]
        lead = "".join(
            cell.ljust(size) + "  " for cell, size in zip(cells, widths, strict=False)
        )
        first = f"{lead}{pieces[0]}".rstrip()
        return [first, *(" " * len(lead) + piece for piece in pieces[1:])]

    rule = "  ".join("-" * size for size in widths)
    return [*lines_of(header), rule], [lines_of(row) for row in rows]


def render_text(
    header: Sequence[str], rows: Sequence[Sequence[str]], width: int = WIDTH
) -> str:
    """A fixed-width text table no wider than ``width``.

    The last column wraps in place when the others leave it room; else each
    row's first cell (a long name) gets a line of its own, the other cells
    indented below it; lines still too wide are wrapped.
    """
    table = _rows_wrapped(header, rows, width)
    if table is not None:
        head, body = table
        return fit("\n".join([*head, *(line for row in body for line in row)]), width)
    indent = "    "
    rest = _rows_wrapped(header[1:], [row[1:] for row in rows], width - len(indent))
    if len(header) < 3 or rest is None:  # a name and at least two columns
        lines = ["  ".join(row) for row in (header, *rows)]
        return fit("\n".join(lines), width)
    head, body = rest
    lines = [header[0], *(indent + line for line in head)]
    for row, row_lines in zip(rows, body, strict=True):
        lines.append(row[0])
        lines.extend(indent + line for line in row_lines)
    return fit("\n".join(lines), width)


def render_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain HTML table (styled by the page it lands on)."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return (
        f'<table class="pytorch-buffers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
