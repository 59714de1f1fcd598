"""Plain-text tables for stdout and the JSON copy under bench/results/."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Table:
    title: str
    headers: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        widths = [max(len(str(row[i])) for row in [list(self.headers), *self.rows])
                  for i in range(len(self.headers))]
        def line(cells: Sequence[str]) -> str:
            padded = (str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))
            return "  ".join(padded).rstrip()
        out = [self.title, line(self.headers), line(["-" * width for width in widths])]
        out += [line(row) for row in self.rows]
        out += [f"  note: {note}" for note in self.notes]
        return "\n".join(out)


def ratio_cell(values: Sequence[float | None]) -> str:
    """Mean ratio, then each round in parentheses when there were several."""
    present = [value for value in values if value is not None and not math.isnan(value)]
    if not present:
        return "—"
    mean = statistics.fmean(present)
    if len(present) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({' '.join(f'{value:.2f}' for value in present)})"


def rate_cell(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def loads_cell(values: Sequence[float]) -> str:
    return " ".join(f"{value:.2f}" for value in values) or "—"


def write_json(payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
