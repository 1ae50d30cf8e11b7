"""Many runs as one table: columns chosen by name, sorted, as Markdown, CSV or JSON (`ptycho-callbacks report`).

A row is `hparams.row(record)`: the run's configuration and outcomes, the
same values TensorBoard's HParams dashboard shows. It imports numpy only.

Example:

```python
table = comparison_table(records, ["scenario", "status", "final_loss"], sort="final_loss")
print(to_csv(table))
```
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, NamedTuple, Sequence

from . import hparams
from .record import RunRecord, encode_nonfinite
from .render import fmt_measured, markdown_safe

DEFAULT_COLUMNS = ("scenario", "status", "nphotons", "learning_rate", "final_loss", "best_loss", "trained_scale",
                   "scale_ratio", "amp_bias_mean", "phase_bias_mean", "went_nan", "nan_step")
"""The columns of `report --format md|csv|json` without `--columns`."""

FORMATS = ("md", "csv", "json")


class Table(NamedTuple):
    columns: list
    rows: list  # one {column: value} per run, in display order


def available_columns(records: Sequence[RunRecord]) -> list[hparams.Column]:
    """Every column some run of `records` has, in a stable order (fixed columns first)."""
    found = {}
    for record in records:
        for column in hparams.columns(record):
            found.setdefault(column.name, column)
    return list(found.values())


def columns_help(records: Sequence[RunRecord] = ()) -> str:
    """The columns one can ask for, one per line with what it holds (those of `records` when given)."""
    listed = available_columns(records) if records else [*hparams.FIXED_COLUMNS.values(), *hparams.PATTERN_COLUMNS]
    width = max(len(column.name) for column in listed)
    return "".join(f"  {column.name:<{width}}  {column.kind:<6}  {column.description}\n" for column in listed)


def _sort_key(value: Any) -> tuple:
    """Numbers by value, then text, then unknown (None, NaN) last."""
    if isinstance(value, bool):
        return (0, float(value), "")
    if isinstance(value, (int, float)):
        return (0, float(value), "") if not math.isnan(value) else (2, 0.0, "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, "")


def comparison_table(records: Sequence[RunRecord], columns: Sequence[str] | None = None, sort: str | None = None,
                     descending: bool = False) -> Table:
    """The table of `records` with `columns` (default `DEFAULT_COLUMNS`, those some run has), sorted by `sort`.

    Unknown values (no truth: no bias) stay None. Sorting is stable; runs
    without a value of the sort column come last, also with `descending`.

    Raises:
        ValueError: a column (or the sort column) no run has; the message lists those it has.
    """
    known = {column.name for column in available_columns(records)}
    if columns is None:
        columns = [name for name in DEFAULT_COLUMNS if name in known]
    unknown = [name for name in list(columns) + ([sort] if sort else []) if name not in known]
    if unknown:
        raise ValueError(f"no such column: {', '.join(dict.fromkeys(unknown))}; the runs have "
                         f"{', '.join(sorted(known))} (--columns help says what each holds)")
    rows = [hparams.row(record) for record in records]
    if sort:
        present = [row for row in rows if _sort_key(row.get(sort))[0] < 2]
        missing = [row for row in rows if _sort_key(row.get(sort))[0] == 2]
        rows = sorted(present, key=lambda row: _sort_key(row.get(sort)), reverse=descending) + missing
    return Table(list(columns), [{name: row.get(name) for name in columns} for row in rows])


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return fmt_measured(value)
    return str(markdown_safe(value))


def to_markdown(table: Table) -> str:
    """A Markdown table; numbers with 4 significant digits, unknown values `n/a`, text made inert."""
    numeric = [all(isinstance(row[name], (int, float)) and not isinstance(row[name], bool)
                   for row in table.rows if row[name] is not None) for name in table.columns]
    lines = ["| " + " | ".join(markdown_safe(name) for name in table.columns) + " |",
             "| " + " | ".join("---:" if right else "---" for right in numeric) + " |"]
    lines += ["| " + " | ".join(_cell(row[name]) for name in table.columns) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return encode_nonfinite(value) if not math.isfinite(value) else repr(value)
    text = str(value)
    # A spreadsheet runs a cell that starts like a formula; text from a record is data, never a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(table: Table) -> str:
    """CSV with a header row: full-precision numbers, empty for unknown, `NaN`/`Infinity` as in record.json."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([_csv_cell(row[name]) for name in table.columns] for row in table.rows)
    return out.getvalue()


def to_json(table: Table) -> str:
    """A JSON list of one object per run: null for unknown, non-finite numbers as `"NaN"` as in record.json."""
    return json.dumps(encode_nonfinite(table.rows), indent=2, allow_nan=False) + "\n"


def render_table(table: Table, output_format: str) -> str:
    return {"md": to_markdown, "csv": to_csv, "json": to_json}[output_format](table)
