"""Tables of results as text: one row per model (or run), one column per metric, cells already formatted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_table(
    rows: Mapping[str, Sequence[str]], columns: Sequence[str], first: str = "model", markdown: bool = False
) -> str:
    """``rows`` maps a row name to its cells (one per column, already formatted) -> the table as text.

    Plain text aligns names left and cells right under their column names; ``markdown`` gives a GitHub table.
    """
    if markdown:
        lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
        return "\n".join(lines)
    name_width = max(len(first), *(len(name) for name in rows))
    widths = [max(len(c), *(len(cells[i]) for cells in rows.values())) for i, c in enumerate(columns)]

    def line(name: str, cells: Sequence[str]) -> str:
        return "  ".join([name.ljust(name_width), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))])

    return "\n".join([line(first, columns), *(line(name, cells) for name, cells in rows.items())])


def mean_range(mean: float, low: float, high: float) -> str:
    """One cell of a spread over seeds: ``mean (min-max)``, one decimal each (the same in every table)."""
    return f"{mean:.1f} ({low:.1f}-{high:.1f})"
