"""How a value is written in the project's CSV files and HTML tables (one rule for all)."""

from __future__ import annotations

import math


def cell(value) -> str:
    """'' for a missing or non-finite value; floats to 4 decimals without trailing zeros
    (large ones in 6 significant digits); anything else as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e5 else f"{value:.6g}"
    return str(value)
