"""Response of bone lesions and vertebrae between two time points (numpy only).

Lesions are matched by segment name, vertebrae by level. Each match gets its ADC change
(absolute and percent, against the reproducibility coefficient of Messiou 2011) and a bone
response assessment category of MET-RADS-P (Padhani 2017, Table 3) with the rule that decided
it; unmatched lesions are `new` or `gone`. The numbers come from criteria.json's `followup`
section and can be overridden there. ADC values are in 10^-3 mm^2/s.

MET-RADS-P reads every ADC change together with the high-b signal and the morphology; this
tool reads the ADC only, so its category is a proposal for the reader, never the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

RESPONSES = ("RAC1", "RAC2", "RAC3", "RAC4", "RAC5")
ACTIVE_CLASSES = ("malignant", "indeterminate")


@dataclass(frozen=True)
class ResponseRules:
    reproducibility_pct: float   # Messiou 2011: 14.8
    rac1_from_max: float         # Padhani 2017 Table 3: <= 1.4 ...
    rac1_to_above: float         # ... to > 1.4
    rac1_increase_pct: float     # >= 40 %
    rac2_from_max: float         # <= 1.0 ...
    rac2_to_below: float         # ... to < 1.4
    rac2_increase_pct: float     # > 25 %
    rac4_below: float            # ADC below 1.4 while falling: likely progressing (project reading)
    marrow_max: float            # Koutoulidis 2017: 0.548, for vertebrae in the normal-marrow range

    @classmethod
    def from_criteria(cls, criteria: dict, marrow_max: Optional[float] = None) -> "ResponseRules":
        follow = criteria["followup"]
        rules = follow["metradsp"]
        return cls(
            reproducibility_pct=float(follow["reproducibility_pct"]["value"]),
            rac1_from_max=float(rules["rac1_from_max"]), rac1_to_above=float(rules["rac1_to_above"]),
            rac1_increase_pct=float(rules["rac1_increase_pct"]),
            rac2_from_max=float(rules["rac2_from_max"]), rac2_to_below=float(rules["rac2_to_below"]),
            rac2_increase_pct=float(rules["rac2_increase_pct"]), rac4_below=float(rules["rac4_below"]),
            marrow_max=float(criteria["adc_tiers"]["marrow_max"]["value"] if marrow_max is None else marrow_max),
        )


def adc_change(baseline: float, followup: float) -> Tuple[float, float]:
    """(follow-up - baseline, the same in percent of baseline)."""
    return followup - baseline, 100.0 * (followup - baseline) / baseline


def lesion_response(baseline: float, followup: float, rules: ResponseRules) -> Tuple[str, str]:
    """(RAC category, the rule that decided it) for a lesion seen at both time points."""
    change, pct = adc_change(baseline, followup)
    noise = rules.reproducibility_pct
    # A crossing of a threshold counts only as a change beyond the reproducibility (Messiou 2011):
    # 1.38 to 1.42 is measurement noise, not a response.
    if baseline <= rules.rac1_from_max and followup > rules.rac1_to_above and pct > noise:
        return "RAC1", (f"ADC rose from {baseline:.3f} (<= {rules.rac1_from_max:g}) to {followup:.3f} (> {rules.rac1_to_above:g}) "
                        "x 10^-3 mm^2/s (MET-RADS-P RAC 1, Padhani 2017 Table 3)")
    if pct >= rules.rac1_increase_pct:
        return "RAC1", f"ADC rose {pct:+.1f} % (>= {rules.rac1_increase_pct:g} %: MET-RADS-P RAC 1, Padhani 2017 Table 3)"
    if pct > rules.rac2_increase_pct:
        return "RAC2", (f"ADC rose {pct:+.1f} % (> {rules.rac2_increase_pct:g} % and < {rules.rac1_increase_pct:g} %: "
                        "MET-RADS-P RAC 2, Padhani 2017 Table 3)")
    if baseline <= rules.rac2_from_max and rules.rac2_from_max < followup < rules.rac2_to_below and pct > noise:
        return "RAC2", (f"ADC rose from {baseline:.3f} (<= {rules.rac2_from_max:g}) to {followup:.3f} (< {rules.rac2_to_below:g}) "
                        f"x 10^-3 mm^2/s, beyond the {noise:g} % reproducibility (MET-RADS-P RAC 2, Padhani 2017 Table 3)")
    if pct < -noise and followup < rules.rac4_below:
        return "RAC4", (f"ADC fell {pct:+.1f} % (beyond the {noise:g} % reproducibility, Messiou 2011) to {followup:.3f} "
                        f"(< {rules.rac4_below:g}): likely progressing (project reading of MET-RADS-P RAC 4; unverified)")
    if abs(pct) <= noise:
        return "RAC3", f"ADC change {pct:+.1f} % is within the {noise:g} % reproducibility (Messiou 2011): no change"
    return "RAC3", (f"ADC change {pct:+.1f} % is beyond the reproducibility but meets no RAC 1/2/4 criterion: "
                    "no change by ADC (read the morphology)")


def vertebra_response(baseline: float, followup: float, rules: ResponseRules) -> Tuple[str, str]:
    """A vertebra's marrow: in the normal-marrow range a rise of ADC means more cells, not a
    response (Nonomura 2001; Koutoulidis 2017), so it is read before the lesion rules."""
    if baseline <= rules.marrow_max and followup <= rules.marrow_max:
        return "RAC3", f"marrow ADC in the normal-marrow range (<= {rules.marrow_max:g}) at both time points"
    if baseline <= rules.marrow_max < followup:
        return "RAC4", (f"marrow ADC rose from the normal-marrow range to {followup:.3f} (> {rules.marrow_max:g}, "
                        "Koutoulidis 2017): diffuse infiltration to exclude (project reading; unverified as a RAC)")
    return lesion_response(baseline, followup, rules)


def new_lesion_response(followup_class: str) -> Tuple[str, str]:
    if followup_class in ACTIVE_CLASSES:
        return "RAC5", (f"new lesion, ADC in the {followup_class} range: an unequivocal new lesion "
                        "(MET-RADS-P RAC 5, Padhani 2017; unverified wording)")
    return "RAC4", f"new lesion, ADC {followup_class}: equivocal new lesion (MET-RADS-P RAC 4, Padhani 2017 Table 3)"


@dataclass
class Reading:
    """One lesion or vertebra at one time point."""

    name: str              # segment name or vertebra level
    kind: str              # lesion | vertebra
    adc_mean: Optional[float]
    adc_class: str
    volume_ml: Optional[float] = None


FOLLOWUP_COLUMNS = ("segment", "kind", "status", "adc_baseline", "adc_followup", "adc_change", "adc_change_pct",
                    "beyond_reproducibility", "class_baseline", "class_followup", "volume_ml_baseline",
                    "volume_ml_followup", "response", "rule")


def compare(baseline: Sequence[Reading], followup: Sequence[Reading], rules: ResponseRules) -> List[Dict[str, object]]:
    """One row per lesion or vertebra of either time point, matched by (kind, name), in the
    order baseline first, then what is new."""
    before = {(r.kind, r.name): r for r in baseline}
    after = {(r.kind, r.name): r for r in followup}
    keys = list(before) + [key for key in after if key not in before]
    rows = []
    for key in keys:
        b, f = before.get(key), after.get(key)
        row: Dict[str, object] = {name: None for name in FOLLOWUP_COLUMNS}
        row.update(segment=key[1], kind=key[0])
        if b is not None:
            row.update(adc_baseline=b.adc_mean, class_baseline=b.adc_class, volume_ml_baseline=b.volume_ml)
        if f is not None:
            row.update(adc_followup=f.adc_mean, class_followup=f.adc_class, volume_ml_followup=f.volume_ml)
        if b is None:
            row["status"] = "new"
            row["response"], row["rule"] = new_lesion_response(f.adc_class)
        elif f is None:
            row["status"] = "gone"
            row["rule"] = "no ROI at follow-up: check whether normal marrow returned (RAC 1) or the ROI was not drawn"
        elif b.adc_mean is None or f.adc_mean is None or b.adc_mean <= 0:
            row["status"] = "matched"
            row["rule"] = "ADC not measured at one time point: no category"
        else:
            row["status"] = "matched"
            change, pct = adc_change(b.adc_mean, f.adc_mean)
            row.update(adc_change=change, adc_change_pct=pct, beyond_reproducibility=abs(pct) > rules.reproducibility_pct)
            decide = vertebra_response if key[0] == "vertebra" else lesion_response
            row["response"], row["rule"] = decide(b.adc_mean, f.adc_mean, rules)
        rows.append(row)
    return rows
