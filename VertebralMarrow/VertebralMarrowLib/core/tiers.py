"""How one lesion ROI is read: the signs a radiologist applies first, then the ADC tier
(numpy only).

Order (clinical-reference.md, "ADC tiers, overriding signs, and what a radiologist accepts"):

1. Fat (T1 clearly above normal marrow, Dixon fat fraction, chemical-shift drop): fat-containing,
   benign whatever its ADC. Its voxels are never painted malignant or indeterminate: they take
   the benign colour (or the normal-marrow colour when its ADC is in that range).
2. Density: CT at or above the bone-island attenuation (Ulano 2016: 885 HU) favours a bone island,
   benign (every voxel with a value benign); a sclerotic lesion below it with low T1 and T2 favours
   a blastic metastasis, at least indeterminate whatever its ADC.
3. ADC tier of the mean (classes.classify_adc): normal-marrow range, malignant, indeterminate,
   benign. A heterogeneous ROI (p10 at or below cut-off - band, p90 above cut-off + band) is never
   benign or normal-marrow on its mean: at least indeterminate, its restricted component's ADC
   (mean of the voxels at or below the cut-off) reported.
   A lesion whose mean is in the normal-marrow range is painted in that colour on every voxel:
   the tiers are defined on the mean, and one noisy voxel never makes such a lesion red.
4. Size: a small ROI measured on the voxels it partly covers mixes in its surroundings (fatty
   marrow pulls any lesion toward the normal-marrow range), so it is never called normal-marrow
   on that measurement: at least indeterminate, and its voxels all show the row's class.

Every decision carries its reason; `voxel_rule` tells the overlay how to paint the ROI.
ADC values are in 10^-3 mm^2/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .classes import BENIGN, BY_KEY, INDETERMINATE, MALIGNANT, MARROW, OUTSIDE, class_key, classify_adc

NO_DWI_SIGNAL_TEXT = "no DWI signal (sclerosis?), see CT"

# How the overlay paints a lesion's voxels (see paint_lesion).
VOXEL_BY_ADC = "adc"                # each voxel by its own ADC
VOXEL_ALL_MARROW = "marrow"         # every voxel with a value: normal-marrow colour
VOXEL_ALL_BENIGN = "benign"         # every voxel with a value: benign colour (bone island)
VOXEL_NOT_MALIGNANT = "not_malignant"  # by ADC, malignant and indeterminate voxels benign (fat)
VOXEL_ALL_CLASS = "class"           # every voxel with a value: the row's class (a partly covered small ROI)


@dataclass
class LesionReading:
    adc_class: str                  # the row's class: marrow | malignant | indeterminate | benign | n/a
    adc_tier: Optional[str]         # the ADC tier alone (after heterogeneity), None without ADC
    deciding_sign: str              # fat | density | heterogeneity | adc | no_adc
    text: str                       # the reading in words
    reasons: List[str] = field(default_factory=list)
    heterogeneous: bool = False
    adc_restricted: Optional[float] = None
    fat_sign: Optional[str] = None
    voxel_rule: str = VOXEL_BY_ADC

    def as_dict(self) -> dict:
        return {
            "adc_class": self.adc_class, "adc_tier": self.adc_tier, "deciding_sign": self.deciding_sign,
            "text": self.text, "reasons": list(self.reasons), "heterogeneous": self.heterogeneous,
            "adc_restricted": self.adc_restricted, "fat_sign": self.fat_sign, "voxel_rule": self.voxel_rule,
        }


def _num(value: float) -> str:
    return f"{value:.3g}"


# The sign that decided a lesion's reading, in a reader's words (report and panel).
DECIDING_SIGN_WORDS = {"fat": "fat sign", "density": "CT density", "heterogeneity": "heterogeneity",
                       "adc": "ADC tier", "no_adc": "no ADC value"}


def tier_text(tier: str, cutoff: float, band: float, marrow_max: Optional[float]) -> str:
    """The reading of an ADC tier in words, with its bounds."""
    low = cutoff - band
    floor = f"{_num(marrow_max)} < " if marrow_max else ""
    if tier == MARROW.key:
        return (f"ADC within the normal-marrow range (<= {_num(marrow_max)}): "
                "no diffusion evidence of infiltration")
    if tier == MALIGNANT.key:
        return (f"malignant range ({floor}ADC <= {_num(low)}): cellular lesion (metastasis, myeloma); "
                "hyperplastic red marrow can reach its low end")
    if tier == INDETERMINATE.key:
        return (f"indeterminate ({_num(low)}-{_num(cutoff + band)}): published cohorts overlap here "
                "(focal myeloma, haemangioma, infection, tuberculosis)")
    if tier == BENIGN.key:
        return f"benign range (ADC > {_num(cutoff + band)}): oedema or fluid (osteoporotic fracture, infection)"
    return "no ADC value"


def fat_sign(t1_ratio: Optional[float], fat_fraction_percent: Optional[float], chemical_shift_ratio: Optional[float],
             t1_ratio_min: float, fat_fraction_min_percent: float, chemical_shift_drop_below: float) -> Optional[str]:
    """The reason a lesion is fat-containing, or None."""
    reasons = []
    if t1_ratio is not None and np.isfinite(t1_ratio) and t1_ratio >= t1_ratio_min:
        reasons.append(f"T1 {t1_ratio:.2f} x normal marrow (>= {t1_ratio_min:g})")
    if fat_fraction_percent is not None and np.isfinite(fat_fraction_percent) and fat_fraction_percent >= fat_fraction_min_percent:
        reasons.append(f"Dixon fat fraction {fat_fraction_percent:.1f} % (>= {fat_fraction_min_percent:g} %, Schmeel 2018)")
    if chemical_shift_ratio is not None and np.isfinite(chemical_shift_ratio) and chemical_shift_ratio < chemical_shift_drop_below:
        reasons.append(f"opposed/in-phase {chemical_shift_ratio:.2f} (< {chemical_shift_drop_below:g}: signal drop)")
    return "; ".join(reasons) if reasons else None


def is_heterogeneous(p10: Optional[float], p90: Optional[float], cutoff: float, band: float) -> bool:
    """Restricted and free components both present: p10 at or below the malignant range's top
    and p90 in the benign range (criteria overriding_signs.heterogeneity, a project rule)."""
    if p10 is None or p90 is None or not (np.isfinite(p10) and np.isfinite(p90)):
        return False
    return p10 <= cutoff - band and p90 > cutoff + band


def read_lesion(adc: dict, options, t1_ratio: Optional[float] = None, t1_signal: Optional[str] = None,
                t2_signal: Optional[str] = None, ct_mean_hu: Optional[float] = None,
                fat_fraction_percent: Optional[float] = None, chemical_shift_ratio: Optional[float] = None,
                no_dwi_signal_fraction: float = 0.0, partial_volume: Optional[str] = None) -> LesionReading:
    """Read one lesion ROI. `adc` holds its ADC statistics (stats.roi_statistics keys, plus
    `restricted_mean`); `options` a criteria.ResolvedOptions; `partial_volume` says how a small
    ROI was measured on the voxels it partly covers (None: on voxel centres)."""
    reading = _read(adc, options, t1_ratio, t1_signal, t2_signal, ct_mean_hu, fat_fraction_percent,
                    chemical_shift_ratio, no_dwi_signal_fraction)
    if partial_volume and reading.adc_class != "n/a":
        reading.reasons.append(f"{partial_volume}; partial volume pulls its ADC toward the surrounding tissue's")
        if reading.adc_class == MARROW.key and reading.deciding_sign != "fat":
            reading.text = (f"indeterminate: small ROI whose ADC ({_num(adc['mean'])}) reaches the normal-marrow range "
                            "only through partial volume with the surrounding marrow; it does not exclude infiltration")
            reading.reasons.append("a partly covered focus is never called normal-marrow on that measurement: "
                                   "at least indeterminate")
            reading.adc_class = reading.adc_tier = INDETERMINATE.key
        else:
            reading.text += " (small ROI, partial volume: read with care)"
        if reading.voxel_rule in (VOXEL_BY_ADC, VOXEL_ALL_MARROW):
            reading.voxel_rule = VOXEL_ALL_CLASS
    return reading


def _read(adc: dict, options, t1_ratio, t1_signal, t2_signal, ct_mean_hu, fat_fraction_percent,
          chemical_shift_ratio, no_dwi_signal_fraction) -> LesionReading:
    cutoff, band, marrow_max = options.adc_cutoff, options.indeterminate_band, options.marrow_max_or_none
    mean = adc.get("mean")
    tier = class_key(mean, cutoff, band, marrow_max) if mean is not None else None
    tier = None if tier == "n/a" else tier
    reasons: List[str] = []
    heterogeneous = tier is not None and is_heterogeneous(adc.get("p10"), adc.get("p90"), cutoff, band)
    restricted = adc.get("restricted_mean") if heterogeneous else None
    if heterogeneous:
        reasons.append(
            f"heterogeneous: p10 {_num(adc['p10'])} <= {_num(cutoff - band)} and p90 {_num(adc['p90'])} > "
            f"{_num(cutoff + band)} (restricted and free components; necrosis, fluid or a neighbouring disc); "
            f"restricted component ADC {_num(restricted)}"
        )
        if tier in (BENIGN.key, MARROW.key):
            reasons.append(f"never {BY_KEY[tier].label} on its mean ({_num(mean)}): at least indeterminate")
            tier = INDETERMINATE.key
    dense = ct_mean_hu is not None and np.isfinite(ct_mean_hu) and ct_mean_hu >= options.ct_sclerotic_min_hu
    if no_dwi_signal_fraction > 0 and dense:
        reasons.append(f"{no_dwi_signal_fraction:.0%} of the voxels: {NO_DWI_SIGNAL_TEXT}; left out of the ADC statistics")

    fat = fat_sign(t1_ratio, fat_fraction_percent, chemical_shift_ratio,
                   options.fat_t1_ratio_min, options.fat_fraction_min_percent, options.chemical_shift_drop_below)
    if fat:
        adc_class = MARROW.key if tier == MARROW.key else BENIGN.key
        text = f"fat-containing: benign whatever its ADC ({fat})"
        rule = VOXEL_ALL_MARROW if adc_class == MARROW.key else VOXEL_NOT_MALIGNANT
        return LesionReading(adc_class, tier, "fat", text, [text] + reasons, heterogeneous, restricted, fat, rule)

    if ct_mean_hu is not None and np.isfinite(ct_mean_hu) and ct_mean_hu >= options.bone_island_min_hu:
        text = (f"CT {ct_mean_hu:.0f} HU >= {options.bone_island_min_hu:g} HU: favours a bone island "
                "(benign; Ulano 2016)")
        return LesionReading(BENIGN.key, tier, "density", text, [text] + reasons, heterogeneous, restricted, None,
                             VOXEL_ALL_BENIGN)
    if dense and t1_signal == "low" and t2_signal == "low":
        text = (f"sclerotic (CT {ct_mean_hu:.0f} HU, below {options.bone_island_min_hu:g} HU) with low T1 and T2: "
                "favours a blastic metastasis (Ulano 2016)")
        adc_class = MALIGNANT.key if tier == MALIGNANT.key else INDETERMINATE.key
        return LesionReading(adc_class, tier, "density", text, [text] + reasons, heterogeneous, restricted, None,
                             VOXEL_BY_ADC)

    if tier is None:
        silent = no_dwi_signal_fraction >= 0.5 or (dense and no_dwi_signal_fraction > 0)
        text = NO_DWI_SIGNAL_TEXT if silent else "no ADC value in the ROI"
        if adc.get("n_nonfinite"):
            reasons.append(f"{adc['n_nonfinite']} voxels without a value (NaN, 0 in a scanner map, or not fitted)")
        return LesionReading("n/a", None, "no_adc", text, [text] + reasons, False, None, None, VOXEL_BY_ADC)
    text = tier_text(tier, cutoff, band, marrow_max)
    if heterogeneous:
        text = (f"heterogeneous: restricted component ADC {_num(restricted)}, free component above {_num(cutoff + band)}; "
                f"never benign on its mean ({_num(mean)}): {BY_KEY[tier].label}")
    rule = VOXEL_ALL_MARROW if tier == MARROW.key else VOXEL_BY_ADC
    return LesionReading(tier, tier, "heterogeneity" if heterogeneous else "adc", text, [text] + reasons,
                         heterogeneous, restricted, None, rule)


def paint_lesion(adc_values: np.ndarray, reading: LesionReading, cutoff: float, band: float,
                 marrow_max: Optional[float]) -> np.ndarray:
    """Overlay codes (classes.CLASSES) of a lesion's voxels under its reading's voxel rule;
    voxels without a value stay OUTSIDE."""
    codes = classify_adc(adc_values, cutoff, band, marrow_max)
    has_value = codes != OUTSIDE.code
    if reading.voxel_rule == VOXEL_ALL_MARROW:
        codes[has_value] = MARROW.code
    elif reading.voxel_rule == VOXEL_ALL_BENIGN:
        codes[has_value] = BENIGN.code
    elif reading.voxel_rule == VOXEL_NOT_MALIGNANT:
        codes[(codes == MALIGNANT.code) | (codes == INDETERMINATE.code)] = BENIGN.code
    elif reading.voxel_rule == VOXEL_ALL_CLASS and reading.adc_class in BY_KEY:
        codes[has_value] = BY_KEY[reading.adc_class].code
    return codes
