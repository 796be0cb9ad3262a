"""Markdown tables for asset metadata (MetadataValue.md) and reports."""

import math
from collections.abc import Iterable, Sequence


def cell(value: object) -> str:
    """Floats to 4 significant digits, None/NaN as '-', booleans as yes/no."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
