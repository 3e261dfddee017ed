"""One set of output formats for every command that prints rows or objects: a table, JSON,
JSON lines and CSV.

Rows are dicts; ``columns`` fixes which keys are printed and in what order. Writers take one
row at a time, so an export of millions of rows runs in constant memory and a command can
print each result as it comes; the table is the one format that waits for the last row (it
needs every column's width). In tables and CSV, booleans are ``true``/``false`` as in JSON,
None is empty, and nested values are JSON text.
"""

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TextIO

FORMATS = ("table", "json", "jsonl", "csv")


class RowWriter(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> int:
        """Finish the output; returns how many rows were written."""
        ...


def open_writer(columns: Sequence[str], fmt: str, out: TextIO) -> RowWriter:
    """A writer of rows with ``columns`` to ``out`` in ``fmt`` (one of ``FORMATS``)."""
    writers: dict[str, Callable[[Sequence[str], TextIO], RowWriter]] = {
        "table": _TableWriter,
        "json": _JsonWriter,
        "jsonl": _JsonLinesWriter,
        "csv": _CsvWriter,
    }
    return writers[fmt](columns, out)


def write_rows(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str, out: TextIO
) -> int:
    """Write ``rows`` to ``out`` in ``fmt``; returns how many were written. JSON is an array."""
    writer = open_writer(columns, fmt, out)
    for row in rows:
        writer.write(row)
    return writer.close()


def write_object(value: dict[str, Any], columns: Sequence[str], fmt: str, out: TextIO) -> None:
    """Write one object: in JSON as it is (indented), in JSON lines on one line, in a table
    or CSV as one row of ``columns``."""
    if fmt in ("json", "jsonl"):
        out.write(to_json(value, pretty=fmt == "json") + "\n")
    else:
        write_rows([value], columns, fmt, out)


def to_json(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False, default=str)


def cell(value: Any) -> str:
    """A value as table and CSV text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return to_json(value)
    return str(value)


def _project(row: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {column: row.get(column) for column in columns}


class _TableWriter:
    def __init__(self, columns: Sequence[str], out: TextIO) -> None:
        self._columns = columns
        self._out = out
        self._cells: list[list[str]] = []

    def write(self, row: dict[str, Any]) -> None:
        self._cells.append([cell(row.get(column)) for column in self._columns])

    def close(self) -> int:
        widths = [
            max([len(column)] + [len(line[i]) for line in self._cells])
            for i, column in enumerate(self._columns)
        ]
        self._line(self._columns, widths)
        self._out.write("  ".join("-" * width for width in widths) + "\n")
        for line in self._cells:
            self._line(line, widths)
        return len(self._cells)

    def _line(self, cells: Sequence[str], widths: Sequence[int]) -> None:
        padded = (text.ljust(width) for text, width in zip(cells, widths, strict=True))
        self._out.write("  ".join(padded).rstrip() + "\n")


class _JsonWriter:
    def __init__(self, columns: Sequence[str], out: TextIO) -> None:
        self._columns = columns
        self._out = out
        self._count = 0
        out.write("[")

    def write(self, row: dict[str, Any]) -> None:
        self._out.write(",\n " if self._count else "\n ")
        self._out.write(to_json(_project(row, self._columns)))
        self._count += 1

    def close(self) -> int:
        self._out.write("\n]\n" if self._count else "]\n")
        return self._count


class _JsonLinesWriter:
    def __init__(self, columns: Sequence[str], out: TextIO) -> None:
        self._columns = columns
        self._out = out
        self._count = 0

    def write(self, row: dict[str, Any]) -> None:
        self._out.write(to_json(_project(row, self._columns)) + "\n")
        self._count += 1

    def close(self) -> int:
        return self._count


class _CsvWriter:
    def __init__(self, columns: Sequence[str], out: TextIO) -> None:
        self._columns = columns
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(columns)
        self._count = 0

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow([cell(row.get(column)) for column in self._columns])
        self._count += 1

    def close(self) -> int:
        return self._count
