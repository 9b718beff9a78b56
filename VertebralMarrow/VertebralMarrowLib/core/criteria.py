"""The clinical criteria: one data file (criteria.json) with a citation for every number.

`load_criteria()` returns a fresh dict each call, so callers can override values without
touching the file or each other; `Options` carries the user's overrides of the few numbers
the analysis takes directly.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from ..errors import InputError

CRITERIA_PATH = Path(__file__).with_name("criteria.json")

ENTITY_KEYS = (
    "hemangioma",
    "benign_compression_fracture",
    "metastasis_lytic",
    "metastasis_blastic",
    "pyogenic_spondylitis",
    "tuberculous_spondylitis",
    "myeloma_leukemia",
    "red_marrow_reconversion",
)


@lru_cache(maxsize=None)
def _criteria_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_criteria(path: Optional[Path] = None) -> dict:
    """The criteria as a new dict (the file is read once per process)."""
    source = Path(path) if path else CRITERIA_PATH
    try:
        criteria = json.loads(_criteria_text(str(source)))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read criteria file {source}: {exc}") from None
    if source != CRITERIA_PATH:
        # A file written before a section existed takes that section from the bundled file.
        bundled = json.loads(_criteria_text(str(CRITERIA_PATH)))
        for section, value in bundled.items():
            criteria.setdefault(section, value)
    missing = [key for key in ENTITY_KEYS if key not in criteria.get("entities", {})]
    if missing:
        raise InputError(f"criteria file {source} lacks entities: {', '.join(missing)}")
    return copy.deepcopy(criteria)


def citation(criteria: dict, source_key: str) -> str:
    """The full reference for a source key such as 'kaur2020'."""
    return criteria["references"].get(source_key, source_key)


@dataclass
class Options:
    """The user's choices for one analysis. None means: take the criteria file's default.

    ADC values are in 10^-3 mm^2/s throughout.
    """

    adc_cutoff: Optional[float] = None
    indeterminate_band: Optional[float] = None
    signal_low_below: Optional[float] = None
    signal_high_above: Optional[float] = None
    min_voxels: Optional[int] = None
    ct_sclerotic_min_hu: Optional[float] = None
    marrow_max: Optional[float] = None          # normal-marrow range top; 0 turns the tier off
    bone_island_min_hu: Optional[float] = None
    fat_t1_ratio_min: Optional[float] = None
    fat_fraction_min_percent: Optional[float] = None
    chemical_shift_drop_below: Optional[float] = None
    adc_bvalues: Optional[Sequence[float]] = None  # b-values a scanner ADC map was made from
    adc_units: str = "auto"
    fit_method: str = "iwls"
    bmin: Optional[float] = None
    bmax: Optional[float] = None
    reference_segments: Sequence[str] = field(default_factory=tuple)
    criteria_path: Optional[Path] = None

    def resolved(self) -> "ResolvedOptions":
        """Overrides applied to the criteria file's defaults, checked for sense."""
        criteria = load_criteria(self.criteria_path)

        tiers, signs = criteria["adc_tiers"], criteria["overriding_signs"]

        def pick(value, default):
            return default if value is None else value

        resolved = ResolvedOptions(
            criteria=criteria,
            adc_cutoff=float(pick(self.adc_cutoff, criteria["adc_cutoff"]["value"])),
            indeterminate_band=float(pick(self.indeterminate_band, criteria["indeterminate_band"]["value"])),
            signal_low_below=float(pick(self.signal_low_below, criteria["signal_ratio"]["low_below"])),
            signal_high_above=float(pick(self.signal_high_above, criteria["signal_ratio"]["high_above"])),
            min_voxels=int(pick(self.min_voxels, criteria["min_voxels"]["value"])),
            ct_sclerotic_min_hu=float(pick(self.ct_sclerotic_min_hu, criteria["ct"]["sclerotic_min_hu"])),
            marrow_max=float(pick(self.marrow_max, tiers["marrow_max"]["value"])),
            bone_island_min_hu=float(pick(self.bone_island_min_hu, signs["bone_island_min_hu"]["value"])),
            fat_t1_ratio_min=float(pick(self.fat_t1_ratio_min, signs["fat_t1_ratio_min"]["value"])),
            fat_fraction_min_percent=float(pick(self.fat_fraction_min_percent, signs["fat_fraction_min_percent"]["value"])),
            chemical_shift_drop_below=float(pick(self.chemical_shift_drop_below, signs["chemical_shift_drop_below"]["value"])),
            adc_bvalues=None if self.adc_bvalues is None else tuple(float(b) for b in self.adc_bvalues),
            adc_units=self.adc_units,
            fit_method=self.fit_method,
            bmin=self.bmin,
            bmax=self.bmax,
            reference_segments=tuple(self.reference_segments),
        )
        resolved.check()
        return resolved


@dataclass
class ResolvedOptions:
    """Options with every default filled in. `marrow_max` 0 means the normal-marrow tier is off
    (`marrow_max_or_none` gives what classes.classify_adc takes)."""

    criteria: dict
    adc_cutoff: float
    indeterminate_band: float
    signal_low_below: float
    signal_high_above: float
    min_voxels: int
    ct_sclerotic_min_hu: float
    marrow_max: float
    bone_island_min_hu: float
    fat_t1_ratio_min: float
    fat_fraction_min_percent: float
    chemical_shift_drop_below: float
    adc_bvalues: Optional[tuple]
    adc_units: str
    fit_method: str
    bmin: Optional[float]
    bmax: Optional[float]
    reference_segments: tuple

    @property
    def marrow_max_or_none(self) -> Optional[float]:
        return self.marrow_max if self.marrow_max > 0 else None

    def check(self) -> None:
        if not 0.0 < self.adc_cutoff < 5.0:
            raise InputError(
                f"ADC cut-off {self.adc_cutoff} is outside 0-5 x 10^-3 mm^2/s; give it in 10^-3 mm^2/s (e.g. 1.21)"
            )
        if self.indeterminate_band < 0 or self.indeterminate_band >= self.adc_cutoff:
            raise InputError(f"indeterminate band {self.indeterminate_band} must be >= 0 and below the cut-off")
        if not 0 < self.signal_low_below <= 1.0 <= self.signal_high_above:
            raise InputError(
                f"signal thresholds must satisfy 0 < low ({self.signal_low_below}) <= 1 <= high ({self.signal_high_above})"
            )
        if not 0 <= self.marrow_max < self.adc_cutoff - self.indeterminate_band:
            raise InputError(
                f"normal-marrow range top {self.marrow_max} must be >= 0 (0 turns it off) and below the "
                f"indeterminate band ({self.adc_cutoff - self.indeterminate_band:g})"
            )
        if self.bone_island_min_hu <= self.ct_sclerotic_min_hu:
            raise InputError(f"bone-island attenuation {self.bone_island_min_hu} HU must be above the sclerotic threshold {self.ct_sclerotic_min_hu} HU")
        if self.adc_bvalues is not None and (len(self.adc_bvalues) < 2 or min(self.adc_bvalues) < 0):
            raise InputError(f"ADC map b-values {list(self.adc_bvalues)}: give at least two b-values >= 0, e.g. 0,800")
        if self.min_voxels < 1:
            raise InputError(f"minimum voxel count must be at least 1, not {self.min_voxels}")
        if self.adc_units not in ("auto", "mm2/s", "1e-3", "1e-6"):
            raise InputError(f"ADC units '{self.adc_units}' unknown; use auto, mm2/s, 1e-3 or 1e-6")
        if self.fit_method not in ("iwls", "ols"):
            raise InputError(f"fit method '{self.fit_method}' unknown; use iwls or ols")
        if self.bmin is not None and self.bmax is not None and self.bmin >= self.bmax:
            raise InputError(f"--bmin {self.bmin} must be below --bmax {self.bmax}")
