"""One set of output formats for every command that prints rows: table, JSON, JSON lines, CSV.

Rows are dicts; ``columns`` fixes their order. Writers stream, so an export of millions of
rows runs in constant memory.
"""

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

FORMATS = ("table", "json", "jsonl", "csv")


def write_rows(
    rows: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str, out: TextIO
) -> int:
    """Write ``rows`` to ``out`` in ``fmt``; returns how many were written."""
    writer = {"table": _write_table, "json": _write_json, "jsonl": _write_jsonl, "csv": _write_csv}
    return writer[fmt](rows, columns, out)


def to_json(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False, default=str)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return to_json(value)
    return str(value)


def _write_table(rows: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO) -> int:
    # A table needs every width before the first line, so it is the one format that buffers.
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)
    ]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
    return len(cells)


def _write_json(rows: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO) -> int:
    count = 0
    out.write("[")
    for row in rows:
        out.write(",\n " if count else "\n ")
        out.write(to_json({column: row.get(column) for column in columns}))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _write_jsonl(rows: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(to_json({column: row.get(column) for column in columns}) + "\n")
        count += 1
    return count


def _write_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
        count += 1
    return count
