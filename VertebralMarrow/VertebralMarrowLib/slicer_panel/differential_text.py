"""The differential as the panel's text box shows it: measurements, the ranked entities with
the reasons for and against each, warnings, and the disclaimer."""

from __future__ import annotations

import html
from typing import List, Optional

from .. import DISCLAIMER
from ..core.classes import BY_KEY
from ..core.tiers import DECIDING_SIGN_WORDS
from ..core.differential import is_number, likelihood_word


def differential_html(document: Optional[dict], segment: Optional[str]) -> str:
    """HTML for the panel's differential box: the segment's measurements, its ranked
    differential with the reasons for and against each entity, warnings, and the disclaimer."""
    disclaimer = (document or {}).get("disclaimer") or DISCLAIMER
    foot = f"<p><i>{_e(disclaimer)}</i></p>"
    if not document:
        return "<p>No results yet: choose the inputs and press Apply.</p>" + foot
    rows = {row["segment"]: row for row in document.get("rows", [])}
    if not segment or segment not in rows:
        return "<p>Choose a lesion to see its differential.</p>" + foot
    row = rows[segment]
    detail = document.get("segments", {}).get(segment, {})
    cutoff = document.get("criteria", {}).get("adc_cutoff", {}).get("value")
    parts = [f"<h3>{_e(segment)}</h3>", f"<p>{_measurements(row, cutoff)}</p>"]
    tier = detail.get("tier") or {}
    if tier.get("text"):
        sign = tier.get("deciding_sign")
        parts.append(f"<p><b>Reading ({_e(DECIDING_SIGN_WORDS.get(sign, sign))})</b>: {_e(tier['text'])}</p>")
    candidates = detail.get("differential") or []
    if row.get("role") != "lesion":
        parts.append(f"<p>{_e(segment)} has the role <b>{_e(row.get('role', ''))}</b>: no differential is ranked for it.</p>")
    elif not candidates:
        parts.append("<p>No differential was ranked for this lesion.</p>")
    else:
        if detail.get("differential_summary"):
            parts.append(f"<p>{_e(detail['differential_summary'])}</p>")
        parts.append("<p><b>Differential</b> (the entities of the clinical reference, most likely first, in words: "
                     "favoured, possible, less likely; not a probability of disease):</p><ol>")
        for candidate in candidates:
            item = f"<li><b>{_e(candidate.get('label', candidate.get('entity', '')))}</b> ({_e(likelihood_word(candidate))})"
            if candidate.get("fits"):
                item += "<br/>for: " + _e("; ".join(candidate["fits"]))
            if candidate.get("contradicts"):
                item += "<br/>against: " + _e("; ".join(candidate["contradicts"]))
            for key, title in (("excluded", "argued against"), ("not_excluded", "not excluded"), ("to_settle", "would settle it")):
                if candidate.get(key):
                    item += f"<br/>{title}: " + _e("; ".join(candidate[key]))
            parts.append(item + "</li>")
        parts.append("</ol>")
    # this segment's warnings and the study's (older documents: every warning)
    details = document.get("warning_details") or [{"segment": "", "text": w} for w in document.get("warnings", [])]
    warnings = [w["text"] for w in details if w.get("segment") in ("", segment)]
    if warnings:
        parts.append("<p><b>Warnings</b>:</p><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    adc = document.get("adc", {})
    if adc.get("source"):
        parts.append(f"<p>ADC: {_e(adc['source'])}; units {_e(adc.get('units', ''))}.</p>")
    return "".join(parts) + foot


def _measurements(row: dict, cutoff) -> str:
    words = []
    mean = row.get("adc_mean")
    if is_number(mean):
        text = f"Mean ADC {mean:.2f} x 10^-3 mm^2/s"
        adc_class = row.get("adc_class")
        if adc_class in BY_KEY and is_number(cutoff):
            text += f": {BY_KEY[adc_class].label} (cut-off {cutoff:g})"
        words.append(text)
    if is_number(row.get("volume_ml")):
        words.append(f"{row['volume_ml']:.2f} mL, {row.get('n_voxels_adc', 0)} ADC voxels")
    signals = [f"{label} {row.get(key)}" for key, label in (("t1_signal", "T1"), ("t2_signal", "T2"), ("fs_signal", "FS-T2/STIR"))
               if row.get(key) not in (None, "", "n/a")]
    if signals:
        words.append(", ".join(signals) + " (relative to normal marrow)")
    if is_number(row.get("ct_mean_hu")):
        words.append(f"CT {row['ct_mean_hu']:.0f} HU")
    return _e(". ".join(words) + ".") if words else ""


def _e(text) -> str:
    return html.escape(str(text), quote=False)


def citations() -> List[str]:
    """The published sources of the criteria, for the module's acknowledgement text."""
    from ..core.criteria import load_criteria

    references = load_criteria()["references"]
    return [text for key, text in references.items() if key != "project"]
