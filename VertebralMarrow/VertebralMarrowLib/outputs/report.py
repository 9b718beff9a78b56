"""`report.html`: the page a radiologist reads. One self-contained file beside its pictures:
images by relative path, inline CSS, no JavaScript, no fonts or anything else from the web.

Every string that comes from data (segment names, node names, reasons, warnings) is
HTML-escaped, because segment names are free text typed by users.
"""

from __future__ import annotations

import base64
import datetime
import html
import mimetypes
import os
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import quote

from ..core.classes import CLASSES, OUTSIDE
from ..core.sequences import SEQUENCE, SEQUENCES, SIGNAL_KEYS
from ..core.tiers import DECIDING_SIGN_WORDS
from ..core.differential import is_number, likelihood_word
from .nodes import CLASS_COLORS
from .table import COLUMN_LABELS, COLUMNS

TOP_DIFFERENTIAL = 3
NONE_ITEM = '<span class="muted">–</span>'

# adc_class of a row -> words shown: the class table's labels, and the reference's
CLASS_BADGES = {**{c.key: c.label for c in CLASSES if c is not OUTSIDE}, "reference": "reference"}


def write_report(path, document: dict, pictures, single_file: bool = False) -> Path:
    """Write the report for `document` (outputs.table.result_document) and its pictures: the
    summary and the warnings first, then the details. `single_file` embeds the pictures in
    the page, so it can be mailed or archived on its own."""
    path = Path(path)
    folder = None if single_file else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = list(pictures)
    body = [
        _header(document),
        _disclaimer(document, "top"),
        _at_a_glance(document, pictures, folder),
        _warnings(document),
        _study(document),
        _results_table(document),
        _lesions(document, pictures, folder),
        _criteria(document),
        _references(document),
        _disclaimer(document, "bottom"),
        _footer(document),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>VertebralMarrow report: {_e(document.get('inputs', {}).get('segmentation', ''))}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n" + "\n".join(part for part in body if part) + "\n</main>\n</body>\n</html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path


# --- sections -----------------------------------------------------------------------------


def _header(document: dict) -> str:
    inputs = document.get("inputs", {})
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    version = document.get("versions", {}).get("vertebral_marrow", "")
    return (
        "<header>\n<h1>Vertebral bone marrow: quantitative MRI</h1>\n"
        f"<p class=\"meta\">Segmentation <b>{_e(inputs.get('segmentation', ''))}</b> · "
        f"ADC: {_e(document.get('adc', {}).get('source', ''))} · generated {_e(when)} by VertebralMarrow {_e(version)}</p>\n"
        "</header>"
    )


def _disclaimer(document: dict, where: str) -> str:
    return f"<aside class=\"disclaimer {where}\" role=\"note\"><b>{_e(document.get('disclaimer', ''))}</b></aside>"


def _at_a_glance(document: dict, pictures: list, folder: Optional[Path]) -> str:
    lesions = [row for row in document.get("rows", []) if row.get("role") == "lesion"]
    segments = document.get("segments", {})
    cutoff = document.get("criteria", {}).get("adc_cutoff", {}).get("value")
    lines = []
    for row in lesions:
        detail = segments.get(row["segment"], {})
        top = detail.get("differential", [])[:1]
        likely = f"{_e(top[0]['label'])} <span class=\"muted\">({_e(likelihood_word(top[0]))})</span>" if top else "–"
        lines.append(
            f"<tr><td><a href=\"#{_anchor(row['segment'])}\">{_e(row['segment'])}</a></td>"
            f"<td class=\"num\">{_mean_sd(row)}</td>"
            f"<td>{_badge(row.get('adc_class'))}</td><td class=\"num\">{_fraction(row.get('fraction_at_or_below_cutoff'))}</td>"
            f"<td>{likely}</td></tr>"
        )
    table = (
        "<table class=\"glance\"><thead><tr><th>Lesion</th><th class=\"num\">Mean ADC ± SD<br><small>×10⁻³ mm²/s</small></th>"
        f"<th>Class (cut-off {_fmt(cutoff)})</th><th class=\"num\">Voxels ≤ cut-off</th><th>Most likely</th></tr></thead>"
        f"<tbody>{''.join(lines)}</tbody></table>"
        if lines else "<p>No lesion ROIs were measured.</p>"
    )
    overview = [p for p in pictures if p.kind == "snapshot" and not p.segment]
    summary = [p for p in pictures if p.kind == "summary"]
    return (
        "<section id=\"glance\">\n<h2>At a glance</h2>\n" + table + "\n"
        "<p class=\"note\">A lesion's class comes from the signs read first (fat, CT density, heterogeneity), then from "
        "its mean ADC in tiers: normal-marrow range (blue, never malignant), malignant range (red), indeterminate band "
        "about the cut-off (yellow), benign range (green). The map colours each voxel by its own ADC in the same tiers, "
        "except that a lesion in the normal-marrow range, a fat-containing lesion and a bone island keep their "
        "lesion's colour.</p>\n"
        + "".join(_figure(p, folder) for p in overview + summary) + "</section>"
    )


def _study(document: dict) -> str:
    adc = document.get("adc", {})
    inputs = document.get("inputs", {})
    names = {"adc": "ADC map", "dwi": "DWI", "segmentation": "Segmentation", **{s.key: s.label for s in SEQUENCES}}
    rows = [(names.get(key, key), value) for key, value in inputs.items()]
    bvalues = adc.get("bvalues_s_per_mm2")
    statement = adc.get("bvalues", {}).get("text")
    rows += [
        ("ADC source", adc.get("source", "")),
        ("ADC units decided", adc.get("units", "")),
        ("b-values (s/mm²)", statement or (", ".join(f"{b:g}" for b in bvalues) if bvalues
                                           else "not known: the scanner's own ADC map was used")),
    ]
    if adc.get("fit_method"):
        rows.append(("ADC fit", adc["fit_method"]))
    cells = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in rows)
    return f"<section id=\"study\">\n<h2>Study and ADC</h2>\n<table class=\"facts\">{cells}</table>\n</section>"


def _results_table(document: dict) -> str:
    head = "".join(
        f"<th title=\"{_e(description)} (results.csv: {_e(name)})\">{_e(COLUMN_LABELS[name])}"
        + (f"<br><small>{_e(unit)}</small>" if unit else "") + "</th>"
        for name, unit, description in COLUMNS
    )
    labels = _entity_labels(document)
    body = []
    for row in document.get("rows", []):
        cells = []
        for name, _unit, _description in COLUMNS:
            value = row.get(name)
            if name == "adc_class":
                cells.append(f"<td class=\"class {_class_css(value)}\">{_e(value)}</td>")
            elif name == "differential":
                cells.append(_differential_cell(value, labels))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f"<td class=\"num\">{_e(_column_value(name, value))}</td>")
            else:
                cells.append(f"<td>{_e('' if value is None else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<section id=\"results\">\n<h2>Results per ROI</h2>\n"
        "<p class=\"note\">The columns of <code>results.csv</code>; ADC in ×10⁻³ mm²/s, signal ratios against the "
        "normal-marrow reference.</p>\n"
        f"<div class=\"wide\"><table class=\"results\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>\n"
        "</section>"
    )


def _lesions(document: dict, pictures: list, folder: Optional[Path]) -> str:
    segments = document.get("segments", {})
    articles = []
    for row in document.get("rows", []):
        if row.get("role") != "lesion":
            continue
        name = row["segment"]
        detail = segments.get(name, {})
        own = [p for p in pictures if p.segment == name]
        snapshots = [p for p in own if p.kind == "snapshot"]
        histograms = [p for p in own if p.kind == "histogram"]
        articles.append(
            f"<article class=\"lesion\" id=\"{_anchor(name)}\">\n"
            f"<h3>{_e(name)} {_badge(row.get('adc_class'))}</h3>\n"
            f"<div class=\"pair\"><div>{_tier(detail)}{_key_numbers(row)}"
            + (f"<p class=\"summary\">{_e(detail['differential_summary'])}</p>" if detail.get("differential_summary") else "")
            + "</div><div>" + "".join(_figure(p, folder) for p in histograms) + "</div></div>\n"
            + _differential(detail.get("differential", []))
            + "".join(_figure(p, folder) for p in snapshots)
            + "</article>"
        )
    if not articles:
        return ""
    return "<section id=\"lesions\">\n<h2>Lesions</h2>\n" + "\n".join(articles) + "\n</section>"


def _tier(detail: dict) -> str:
    """The lesion's reading: its tier in words, the sign that decided it, and every reason."""
    tier = detail.get("tier")
    if not tier:
        return ""
    sign = tier.get("deciding_sign")
    reasons = [r for r in tier.get("reasons", []) if r != tier.get("text")]
    more = _list("reasons", "".join(f"<li>{_e(r)}</li>" for r in reasons)) if reasons else ""
    return (f"<p class=\"tier\"><b>Reading ({_e(DECIDING_SIGN_WORDS.get(sign, sign))}):</b> "
            f"{_e(tier.get('text', ''))}</p>{more}")


def _differential_cell(value: Optional[str], labels: Dict[str, str]) -> str:
    """The first entities of the ranked list, in words; the whole list in the tooltip (the
    entity keys are in the CSV)."""
    names = [labels.get(key, key) for key in str(value or "").split(";") if key]
    shown = "<br>".join(_e(name) for name in names[:TOP_DIFFERENTIAL]) + (" …" if len(names) > TOP_DIFFERENTIAL else "")
    return f"<td class=\"diff\" title=\"{_e('; '.join(names))}\">{shown}</td>"


def _entity_labels(document: dict) -> Dict[str, str]:
    """Entity key -> the words a reader sees, from the criteria the analysis used."""
    return {key: entity.get("label", key) for key, entity in document.get("criteria", {}).get("entities", {}).items()}


def _key_numbers(row: dict) -> str:
    signals = ", ".join(
        f"{label} {_e(row.get(key + '_signal') or 'n/a')}" + (f" ({_fmt(row.get(key + '_ratio'))})" if row.get(key + "_ratio") is not None else "")
        for key, label in ((key, SEQUENCE[key].label) for key in SIGNAL_KEYS)
    )
    items = [
        ("Mean ADC", f"{_mean_sd(row)} ×10⁻³ mm²/s" if is_number(row.get("adc_mean")) else "n/a (not measured: see its reading)"),
        ("Median (P10–P90)", f"{_fmt(row.get('adc_median'))} ({_fmt(row.get('adc_p10'))}–{_fmt(row.get('adc_p90'))})"),
        ("Voxels at or below cut-off", _fraction(row.get("fraction_at_or_below_cutoff"))),
        ("ROI on the ADC grid", f"{_e(row.get('n_voxels_adc'))} voxels, {_fmt(row.get('volume_ml'))} mL"),
        ("Signal vs normal marrow", signals),
        ("CT attenuation", f"{_fmt(row.get('ct_mean_hu'), 0)} HU" if row.get("ct_mean_hu") is not None else "no CT"),
    ]
    return "<dl class=\"numbers\">" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _differential(candidates: List[dict]) -> str:
    if not candidates:
        return ""
    rows = []
    for rank, candidate in enumerate(candidates[:TOP_DIFFERENTIAL], 1):
        fits = "".join(f"<li>{_e(reason)}</li>" for reason in candidate.get("fits", []))
        against = "".join(f"<li>{_e(reason)}</li>" for reason in candidate.get("contradicts", []))
        rows.append(
            f"<tr><td class=\"num\">{rank}</td><td><b>{_e(candidate.get('label', candidate.get('entity', '')))}</b></td>"
            f"<td>{_e(likelihood_word(candidate))}</td>"
            f"<td>{_list('fits', fits)}</td><td>{_list('against', against)}{_exclusion_lists(candidate)}</td></tr>"
        )
    return (
        f"<h4>Differential (top {min(TOP_DIFFERENTIAL, len(candidates))} of {len(candidates)})</h4>"
        "<table class=\"differential\"><thead><tr><th class=\"num\">#</th><th>Entity</th><th>Likelihood</th>"
        "<th>Fits</th><th>Argues against</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _exclusion_lists(candidate: dict) -> str:
    """A diagnosis of exclusion shows what was and was not excluded, and what would settle it."""
    parts = []
    for key, title in (("excluded", "Argued against by the measurements"), ("not_excluded", "Not excluded"),
                       ("to_settle", "What would settle it")):
        items = candidate.get(key) or []
        if items:
            parts.append(f"<p><b>{title}</b></p><ul class=\"{key}\">" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>")
    return "".join(parts)


def _list(kind: str, items: str) -> str:
    return f"<ul class=\"{kind}\">{items}</ul>" if items else NONE_ITEM


def _criteria(document: dict) -> str:
    criteria = document.get("criteria", {})
    rows = []
    cutoff = criteria.get("adc_cutoff")
    if cutoff:
        default = "" if cutoff.get("value") == cutoff.get("default") else f" (default {_fmt(cutoff.get('default'))})"
        rows.append(("ADC cut-off: mean ADC ≤ cut-off is malignant-range",
                     f"{_fmt(cutoff.get('value'))} ×10⁻³ mm²/s{default}", cutoff.get("where", ""), cutoff.get("citation", "")))
    band = criteria.get("indeterminate_band")
    if band:
        rows.append(("Indeterminate band around the cut-off", f"± {_fmt(band.get('value'))} ×10⁻³ mm²/s"
                     + (" (off)" if not band.get("value") else ""), "", band.get("citation", "")))
    signal = criteria.get("signal_ratio")
    if signal:
        rows.append(("Signal vs normal marrow: low below / high above",
                     f"{_fmt(signal.get('low_below'))} / {_fmt(signal.get('high_above'))}", "", signal.get("citation", "")))
    voxels = criteria.get("min_voxels")
    if voxels:
        rows.append(("Fewest ROI voxels to trust", _e(voxels.get("value")), "", voxels.get("citation", "")))
    ct = criteria.get("ct_sclerotic_min_hu")
    if ct:
        rows.append(("CT sclerotic at or above", f"{_fmt(ct.get('value'), 0)} HU", ct.get("where", ""), ct.get("citation", "")))
    for key, what, unit in (("marrow_max", "Normal-marrow range: lesion mean ADC at or below", " ×10⁻³ mm²/s"),
                            ("bone_island_min_hu", "Bone island favoured at or above", " HU"),
                            ("fat_t1_ratio_min", "Fat-containing: T1 / normal marrow at or above", ""),
                            ("fat_fraction_min_percent", "Fat-containing: Dixon fat fraction at or above", " %"),
                            ("chemical_shift_drop_below", "Fat-containing: opposed / in-phase below", ""),
                            ("heterogeneity", "Heterogeneous ROI", ""),
                            ("reference_check", "Reference ROI checked", ""),
                            ("small_roi", "Small ROIs: supersampled", " × per axis")):
        entry = criteria.get(key)
        if entry:
            value = _e(entry.get("rule", "")) if entry.get("value") is None else f"{_fmt(entry.get('value'))}{unit}"
            if entry.get("off"):
                value += " (off)"
            flag = "" if entry.get("verified", True) else " (not verified against the paper)"
            rows.append((what, value, (entry.get("where") or "") + flag, entry.get("citation", "")))
    main = "".join(
        f"<tr><td>{_e(what)}</td><td class=\"num\">{value}</td><td>{_e(where)}<div class=\"cite\">{_e(cite)}</div></td></tr>"
        for what, value, where, cite in rows
    )
    entities = "".join(
        f"<tr><td>{_e(entity.get('label', key))}</td><td class=\"num\">{_fmt(entity.get('adc_mean'))} ± {_fmt(entity.get('adc_sd'))}</td>"
        f"<td>{_e(entity.get('where', ''))}<div class=\"cite\">{_e(entity.get('citation', ''))}</div></td></tr>"
        for key, entity in criteria.get("entities", {}).items()
    )
    return (
        "<section id=\"criteria\">\n<h2>Criteria used</h2>\n"
        "<table class=\"criteria\"><thead><tr><th>Criterion</th><th class=\"num\">Value</th><th>Where it comes from</th></tr></thead>"
        f"<tbody>{main}</tbody></table>\n"
        "<h4>Published mean ADC of each entity (×10⁻³ mm²/s, mean ± SD)</h4>\n"
        "<table class=\"criteria\"><thead><tr><th>Entity</th><th class=\"num\">ADC</th><th>Where it comes from</th></tr></thead>"
        f"<tbody>{entities}</tbody></table>\n</section>"
    )


def _references(document: dict) -> str:
    references = document.get("references", {})
    if not references:
        return ""
    items = "".join(f"<li id=\"ref-{_anchor(key)}\">{_e(text)}</li>" for key, text in references.items())
    return f"<section id=\"references\">\n<h2>References</h2>\n<ol class=\"references\">{items}</ol>\n</section>"


def _warnings(document: dict) -> str:
    warnings = document.get("warnings", [])
    content = ("<ul class=\"warnings\">" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>") if warnings else "<p>None.</p>"
    return f"<section id=\"warnings\">\n<h2>Warnings</h2>\n{content}\n</section>"


def _footer(document: dict) -> str:
    versions = document.get("versions", {})
    text = " · ".join(f"{_e(key)} {_e(value)}" for key, value in versions.items())
    return f"<footer>{text}</footer>"


# --- pieces -------------------------------------------------------------------------------


def _figure(picture, folder: Optional[Path]) -> str:
    """The picture by its path relative to the page, or embedded as data when `folder` is None;
    inline SVG (histograms) as it is."""
    if getattr(picture, "svg", ""):
        return f"<figure class=\"{_e(picture.kind)}\">{picture.svg}<figcaption>{_e(picture.caption)}</figcaption></figure>"
    if folder is None:
        data = base64.b64encode(Path(picture.path).read_bytes()).decode("ascii")
        source = f"data:{mimetypes.guess_type(str(picture.path))[0] or 'image/png'};base64,{data}"
    else:
        source = quote(os.path.relpath(str(picture.path), str(folder)).replace(os.sep, "/"))
    return (f"<figure class=\"{_e(picture.kind)}\"><img src=\"{_e(source)}\" alt=\"{_e(picture.caption)}\">"
            f"<figcaption>{_e(picture.caption)}</figcaption></figure>")


def _badge(adc_class: Optional[str]) -> str:
    if adc_class not in CLASS_BADGES:
        return f"<span class=\"badge none\">{_e(adc_class or 'n/a')}</span>"
    return f"<span class=\"badge {_class_css(adc_class)}\">{_e(CLASS_BADGES[adc_class])}</span>"


def _class_css(adc_class: Optional[str]) -> str:
    return adc_class if adc_class in CLASS_BADGES else "none"


def _anchor(name: str) -> str:
    """An id safe in HTML and URLs, unique enough for one report."""
    return "roi-" + "".join(c if c.isalnum() else "-" for c in str(name)).strip("-").lower()


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def _mean_sd(row: dict) -> str:
    """'<b>mean</b> ± SD', or 'n/a' for a lesion without an ADC value."""
    if not is_number(row.get("adc_mean")):
        return "n/a"
    return f"<b>{_fmt(row['adc_mean'])}</b> ± {_fmt(row.get('adc_sd'))}"


def _fraction(value) -> str:
    return f"{100 * value:.0f} %" if is_number(value) else "n/a"


def _column_value(name: str, value) -> str:
    if not is_number(value):
        return ""
    if name == "n_voxels_adc":
        return f"{value:.0f}"
    if name == "ct_mean_hu":
        return f"{value:.0f}"
    if name == "fraction_at_or_below_cutoff":
        return f"{value:.2f}"
    return f"{value:.3f}" if name.startswith("adc_") else f"{value:.2f}"


def _class_colors() -> Dict[str, str]:
    def css(value: int) -> str:
        r, g, b = (round(255 * c) for c in CLASS_COLORS[value][1][:3])
        return f"rgb({r}, {g}, {b})"

    return {c.key: css(c.code) for c in CLASSES if c is not OUTSIDE}


_COLORS = _class_colors()

CSS = """
:root { --ink: #1b1f24; --muted: #5b6470; --line: #d9dde3; --soft: #f3f5f8;
  --benign: %(benign)s; --indeterminate: %(indeterminate)s; --malignant: %(malignant)s; --marrow: %(marrow)s;
  --reference: #1f9fd8; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; background: #eceff3; color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 36px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--ink); }
h3 { font-size: 18px; margin: 0 0 10px; display: flex; align-items: center; gap: 10px; }
h4 { font-size: 15px; margin: 16px 0 6px; }
.meta, .muted, .note, figcaption, footer, .cite { color: var(--muted); }
.note { font-size: 13px; margin: 6px 0 12px; }
.disclaimer { margin: 14px 0; padding: 12px 16px; border: 2px solid #b45309; border-left-width: 8px;
  background: #fff7e8; color: #7c2d12; font-size: 15px; border-radius: 4px; }
table { border-collapse: collapse; width: 100%%; font-size: 13.5px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--soft); font-size: 12.5px; border-bottom: 1px solid #b9c0c9; }
th small { color: var(--muted); font-weight: normal; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.facts th { width: 200px; background: none; font-weight: 600; }
.wide { overflow-x: auto; }
table.results { font-size: 12px; }
table.results th, table.results td { padding: 4px 4px; }
table.results th { font-size: 11px; }
table.results td.diff { font-size: 10.5px; color: var(--muted); white-space: nowrap; }
td.class { font-weight: 600; border-left: 5px solid transparent; }
td.class.malignant { background: #fbe3e3; border-left-color: var(--malignant); color: #8a1010; }
td.class.benign { background: #e2f5e7; border-left-color: var(--benign); color: #0f5c22; }
td.class.indeterminate { background: #fff6d3; border-left-color: var(--indeterminate); color: #6b5600; }
td.class.marrow { background: #e4edfc; border-left-color: var(--marrow); color: #173f80; }
td.class.reference { background: #e3f1fa; border-left-color: var(--reference); color: #0d4f73; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 13px; font-weight: 700;
  letter-spacing: .2px; white-space: nowrap; }
.badge.malignant { background: var(--malignant); color: #fff; }
.badge.benign { background: var(--benign); color: #fff; }
.badge.indeterminate { background: var(--indeterminate); color: #3b3000; }
.badge.marrow { background: var(--marrow); color: #fff; }
.badge.reference { background: var(--reference); color: #fff; }
.badge.none { background: var(--soft); color: var(--muted); }
table.glance td, table.glance th { font-size: 14px; }
table.glance a { color: inherit; font-weight: 600; }
figure { margin: 14px 0; break-inside: avoid; page-break-inside: avoid; }
figure img, figure svg { display: block; max-width: 100%%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 13px; margin-top: 5px; }
article.lesion { border: 1px solid var(--line); border-radius: 6px; padding: 16px 18px; margin: 18px 0; }
.pair { display: grid; grid-template-columns: minmax(280px, 1fr) minmax(300px, 1.25fr); gap: 18px; align-items: start; }
.pair figure { margin: 0; }
dl.numbers { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; font-size: 14px; }
dl.numbers dt { color: var(--muted); }
dl.numbers dd { margin: 0; }
p.summary { font-size: 14px; background: var(--soft); padding: 8px 10px; border-radius: 4px; }
table.differential td { font-size: 13px; }
table.differential ul { margin: 0; padding-left: 18px; }
ul.fits li::marker { content: "✓ "; color: #15803d; }
ul.against li::marker { content: "✗ "; color: #b91c1c; }
table.criteria td:first-child { width: 30%%; }
.cite { font-size: 12px; margin-top: 2px; font-style: italic; }
ol.references { font-size: 13.5px; padding-left: 22px; }
ul.warnings li { margin: 3px 0; }
footer { font-size: 12px; margin-top: 16px; }
@page { size: A4; margin: 14mm 12mm; }
@media (max-width: 760px) { .pair { grid-template-columns: 1fr; } main { padding: 16px; } }
@media print {
  body { background: #fff; font-size: 11pt; }
  main { max-width: none; padding: 0; }
  .wide { overflow: visible; }
  table.results { font-size: 7.5pt; }
  article.lesion { break-before: page; border: none; padding: 0; }
  a { color: inherit; text-decoration: none; }
}
""" % _COLORS
