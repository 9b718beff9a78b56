"""How a value is written in the project's CSV files, JSON documents and HTML tables (one
rule for all)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def cell(value) -> str:
    """'' for a missing or non-finite value; floats to 4 decimals without trailing zeros
    (large ones in 6 significant digits); anything else as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e5 else f"{value:.6g}"
    return str(value)


def json_value(value):
    """A value as JSON holds it: numpy scalars as Python numbers, a non-finite float as null."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    """`rows` under the header `columns`, each value written by `cell`."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row[name]) for name in columns])
    return path
