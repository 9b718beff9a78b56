"""The one ADC class rule and the one class table (numpy only).

Every caller (results table, overlay, pictures, report, cohort, panel) classifies with
`classify_adc` and names or colours a class through `CLASSES`, so a lesion's row, its voxels
and its legend can never disagree.

ADC values are in 10^-3 mm^2/s throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class AdcClass:
    code: int                                   # the overlay labelmap's voxel value
    key: str                                    # results.csv's adc_class
    label: str                                  # what a reader sees
    rgba: Tuple[float, float, float, float]     # overlay, pictures, report, panel

    @property
    def hex(self) -> str:
        return "#" + "".join(f"{round(255 * c):02x}" for c in self.rgba[:3])


OUTSIDE = AdcClass(0, "outside", "outside lesion ROIs", (0.0, 0.0, 0.0, 0.0))
BENIGN = AdcClass(1, "benign", "benign-range", (0.10, 0.75, 0.25, 1.0))
INDETERMINATE = AdcClass(2, "indeterminate", "indeterminate", (1.00, 0.85, 0.10, 1.0))
MALIGNANT = AdcClass(3, "malignant", "malignant-range", (0.90, 0.10, 0.10, 1.0))
# Normal-marrow range: neither the malignant nor the benign colour (a calm blue).
MARROW = AdcClass(4, "marrow", "normal-marrow range", (0.25, 0.55, 0.95, 1.0))

CLASSES: Tuple[AdcClass, ...] = (OUTSIDE, BENIGN, INDETERMINATE, MALIGNANT, MARROW)
BY_CODE: Dict[int, AdcClass] = {c.code: c for c in CLASSES}
BY_KEY: Dict[str, AdcClass] = {c.key: c for c in CLASSES}
# Row classes that are not tiers of a lesion's ADC.
NOT_CLASSIFIED = ("reference", "n/a")


def classify_adc(adc_1e3, cutoff: float, band: float, marrow_max: Optional[float] = None):
    """Class codes (see CLASSES) for ADC values: a scalar gives an int, an array an array of
    uint8 of the same shape. Non-finite values are OUTSIDE (0).

    Kaur 2020: ADC <= cut-off is malignant-range, above it benign-range; within cut-off +/-
    band (band > 0) indeterminate. With `marrow_max`, values at or below it are in the
    normal-marrow range, which is neither malignant nor benign.
    """
    values = np.asarray(adc_1e3)
    if values.dtype != np.float32:
        values = values.astype(np.float64)
    # Bounds at the values' own precision: a float32 map's 1.21 is float32(1.21), which a
    # float64 1.21 would call benign.
    as_values = values.dtype.type
    cutoff = as_values(cutoff)
    codes = np.where(values <= cutoff, MALIGNANT.code, BENIGN.code).astype(np.uint8)
    if band > 0:
        codes[(values >= as_values(cutoff - band)) & (values <= as_values(cutoff + band))] = INDETERMINATE.code
    if marrow_max is not None:
        codes[values <= as_values(marrow_max)] = MARROW.code
    codes[~np.isfinite(values)] = OUTSIDE.code
    return int(codes) if codes.ndim == 0 else codes


def class_key(adc_1e3: float, cutoff: float, band: float, marrow_max: Optional[float] = None) -> str:
    """The results-table key of one value's class ('n/a' when the value is not finite)."""
    code = classify_adc(adc_1e3, cutoff, band, marrow_max)
    return "n/a" if code == OUTSIDE.code else BY_CODE[code].key


def class_text(key: str, cutoff: float, band: float, marrow_max: Optional[float] = None) -> str:
    """A row class in words with the bounds that define it (pictures, report, panel)."""
    def num(value: float) -> str:
        return f"{value:.2f}"

    low, high = cutoff - band, cutoff + band
    if key == MARROW.key:
        return f"{MARROW.label} (mean ADC ≤ {num(marrow_max)})" if marrow_max else MARROW.label
    if key == MALIGNANT.key:
        floor = f"{num(marrow_max)} < " if marrow_max else ""
        return f"{MALIGNANT.label} ({floor}mean ADC ≤ {num(low)})"
    if key == INDETERMINATE.key:
        return f"{INDETERMINATE.label} (mean ADC {num(low)}–{num(high)})"
    if key == BENIGN.key:
        return f"{BENIGN.label} (mean ADC > {num(high)})"
    return key
