"""Markdown tables for reports: the paper-shaped table (rows = objective x stage; columns = avg@n, pass@k, KL to
base, drift) and the analysis tables, with "mean ± std" cells when a value was measured over several seeds.

A cell value is a number, a list of numbers (one per seed: shown as ``mean ± std``, the sample standard deviation
with n - 1 in the denominator; a single value is shown alone), a string (shown as is) or ``None`` (shown as ``–``).
Non-finite numbers are shown as ``nan`` / ``inf`` rather than hidden, so a broken run is visible in the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

__all__ = ["MISSING", "PAPER_COLUMNS", "format_number", "markdown_table", "mean_std", "merge_seeds"]

MISSING = "–"
# the paper's table; pass@k and avg@n columns are named after the run's k and n (e.g. "avg@8", "pass@8")
PAPER_COLUMNS = ("objective", "stage", "avg@n", "pass@k", "kl_to_base", "drift")

Formatter = str | Callable[[float], str]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_number(value: float, spec: Formatter | None = None) -> str:
    """``value`` with ``spec`` (a format spec such as ``".1%"`` or ``"d"``, or a function); by default an int as is
    and a float with 4 significant digits."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if callable(spec):
        return spec(value)
    if spec is None:
        if isinstance(value, int):
            return str(value)
        spec = ".4g" if value == 0 or 1e-4 <= abs(value) < 1e6 else ".3e"
    if spec.endswith("d"):
        return format(round(value), spec)
    return format(float(value), spec)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of ``values``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(value, spec: Formatter | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value.replace("|", "\\|").replace("\n", " ")
    if _is_number(value):
        return format_number(value, spec)
    if isinstance(value, Sequence):
        numbers = [v for v in value if v is not None]
        if not numbers:
            return MISSING
        if not all(_is_number(v) for v in numbers):
            raise TypeError(f"a list cell must hold numbers (one per seed), got {value!r}")
        if len(numbers) == 1:
            return format_number(numbers[0], spec)
        mean, std = mean_std(numbers)
        return f"{format_number(mean, spec)} ± {format_number(std, spec)}"
    raise TypeError(f"cannot put a {type(value).__name__} in a table cell: {value!r}")


def markdown_table(
    rows: Sequence[Mapping],
    columns: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    formats: Mapping[str, Formatter] | None = None,
    note: str | None = None,
) -> str:
    """A GitHub Markdown table: one line per row, one column per name in ``columns`` (a missing key shows ``–``).

    ``headers`` renames columns for display; ``formats`` gives a format spec or function per column (e.g.
    ``{"avg@8": ".1%"}``). Columns holding numbers are right-aligned. ``note`` is added below the table.
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    headers, formats = dict(headers or {}), dict(formats or {})
    body = [[_cell(row.get(column), formats.get(column)) for column in columns] for row in rows]

    def numeric(column: str) -> bool:
        return any(_is_number(r.get(column)) or isinstance(r.get(column), (list, tuple)) for r in rows)

    lines = [
        "| " + " | ".join(_cell(headers.get(c, c), None) for c in columns) + " |",
        "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def merge_seeds(rows: Sequence[Mapping], keys: Sequence[str] = ("objective", "stage")) -> list[dict]:
    """Rows of several seeds -> one row per ``keys`` value, each numeric field a list over seeds (first-seen order).

    ``[{"objective": "nll", "stage": "sft", "avg@8": 0.31}, {"objective": "nll", "stage": "sft", "avg@8": 0.35}]``
    becomes ``[{"objective": "nll", "stage": "sft", "avg@8": [0.31, 0.35], "seeds": 2}]``, which
    :func:`markdown_table` shows as ``0.33 ± 0.02828``. Non-numeric fields keep their first value.
    """
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k) for k in keys)
        target = merged.setdefault(key, {k: row.get(k) for k in keys} | {"seeds": 0})
        target["seeds"] += 1
        for name, value in row.items():
            if name in keys:
                continue
            if _is_number(value) or value is None:
                target.setdefault(name, []).append(value)
            else:
                target.setdefault(name, value)
    return list(merged.values())
