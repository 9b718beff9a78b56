"""`followup`: two result folders in (each from `analyze`/`demo` and, for vertebrae, `spine`),
followup.csv, followup.json, followup.png and followup.html out."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .. import DISCLAIMER
from ..core.criteria import load_criteria
from ..core.followup import FOLLOWUP_COLUMNS, Reading, ResponseRules, compare
from ..errors import InputError
from .cells import cell, write_csv

RESPONSE_COLOURS = {"RAC1": "#1a9641", "RAC2": "#a6d96a", "RAC3": "#888888", "RAC4": "#fdae61", "RAC5": "#d7191c"}


def read_timepoint(folder) -> List[Reading]:
    """Lesion rows of results.json and vertebra rows of spine.json in a result folder."""
    folder = Path(folder)
    results, spine = folder / "results.json", folder / "spine.json"
    if not results.is_file() and not spine.is_file():
        raise InputError(f"{folder} holds neither results.json nor spine.json: give a folder written by analyze, demo or spine")
    try:
        lesion_rows = json.loads(results.read_text(encoding="utf-8"))["rows"] if results.is_file() else []
        vertebra_rows = json.loads(spine.read_text(encoding="utf-8"))["rows"] if spine.is_file() else []
        return readings_from_rows(lesion_rows, vertebra_rows)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{folder}: results.json or spine.json is not VertebralMarrow's ({exc})") from None


def readings_from_rows(lesion_rows: Sequence[dict], vertebra_rows: Sequence[dict]) -> List[Reading]:
    """The lesions of results rows (segment, role, adc_mean, adc_class, volume_ml) and the
    vertebrae of spine rows (level, adc_mean, tier), as one time point."""
    readings = [Reading(row["segment"], "lesion", row["adc_mean"], row["adc_class"], row.get("volume_ml"))
                for row in lesion_rows if row["role"] == "lesion"]
    return readings + [Reading(row["level"], "vertebra", row["adc_mean"], row["tier"]) for row in vertebra_rows]


# The columns a table must hold to be read as a time point: results.csv's or spine.csv's.
LESION_TABLE_COLUMNS = ("segment", "role", "adc_mean", "adc_class")
SPINE_TABLE_COLUMNS = ("level", "adc_mean", "tier")
NUMBER_COLUMNS = ("adc_mean", "volume_ml")


def readings_from_table(table_node) -> List[Reading]:
    """One time point from a table node holding results.csv's or spine.csv's columns: a table
    the Slicer panel published, or either CSV file loaded into Slicer (text columns)."""
    name = table_node.GetName()
    table = table_node.GetTable()
    columns = [table_node.GetColumnName(c) for c in range(table_node.GetNumberOfColumns())]
    kind = next((k for k, needed in (("lesion", LESION_TABLE_COLUMNS), ("vertebra", SPINE_TABLE_COLUMNS))
                 if all(column in columns for column in needed)), None)
    if kind is None:
        lacking = [c for c in SPINE_TABLE_COLUMNS if c not in columns] if "level" in columns else \
            [c for c in LESION_TABLE_COLUMNS if c not in columns]
        raise InputError(f"table '{name}' is no VertebralMarrow result: it has no {', '.join(lacking)} column "
                         "(a results table needs segment, role, adc_mean, adc_class; a spine table level, adc_mean, tier)")
    wanted = (LESION_TABLE_COLUMNS + ("volume_ml",)) if kind == "lesion" else SPINE_TABLE_COLUMNS
    rows = []
    for row in range(table_node.GetNumberOfRows()):
        values = {}
        for column in wanted:
            array = table.GetColumnByName(column)
            if array is None:
                values[column] = None
            elif column in NUMBER_COLUMNS:
                values[column] = _number(array, row, f"table '{name}', row {row + 1}, {column}")
            else:
                values[column] = table_node.GetCellText(row, columns.index(column))
        rows.append(values)
    return readings_from_rows(rows, []) if kind == "lesion" else readings_from_rows([], rows)


def _number(array, row: int, where: str) -> Optional[float]:
    """A cell as a float (None when empty or not finite): numeric columns directly, text
    columns (a CSV file loaded as a table) parsed."""
    if array.IsNumeric():
        value = float(array.GetTuple1(row))
    else:
        text = array.GetValue(row).strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{where}: '{text}' is not a number") from None
    return value if math.isfinite(value) else None


def run_followup(baseline_dir, followup_dir, out_dir, criteria_path: Optional[Path] = None) -> List[dict]:
    """Compare two time points and write the follow-up outputs; return the rows."""
    criteria = load_criteria(criteria_path)
    rules = ResponseRules.from_criteria(criteria)
    rows = compare(read_timepoint(baseline_dir), read_timepoint(followup_dir), rules)
    out = Path(out_dir)
    # Relative to this folder, so that the record holds when the folders move together.
    write_followup_outputs(rows, criteria, out, os.path.relpath(baseline_dir, out), os.path.relpath(followup_dir, out),
                           [("baseline", Path(baseline_dir)), ("follow-up", Path(followup_dir))])
    return rows


def write_followup_outputs(rows: List[dict], criteria: dict, out_dir, baseline: str, followup: str,
                           snapshot_folders: Sequence[Tuple[str, Path]] = ()) -> List[Path]:
    """followup.csv, followup.json, followup.png and followup.html of compared `rows` in
    `out_dir`; `baseline` and `followup` say where each time point came from, and the pictures
    of the result folders in `snapshot_folders` ((label, folder)) are shown before and after."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "followup.csv", FOLLOWUP_COLUMNS, rows)
    follow = criteria["followup"]
    document = {
        "disclaimer": DISCLAIMER + " The categories read the ADC only; MET-RADS-P also weighs the high-b signal and the morphology.",
        "baseline": baseline, "followup": followup,
        "rows": rows,
        "criteria": {"reproducibility_pct": follow["reproducibility_pct"], "metradsp": follow["metradsp"],
                     "myrads": follow["myrads"], "marrow_max": criteria["adc_tiers"]["marrow_max"]},
        "myrads": "same category as MET-RADS-P for every row: " + follow["myrads"]["where"],
        "references": {key: criteria["references"][key] for key in ("padhani2017", "messiou2019", "messiou2011", "koutoulidis2017")},
    }
    (out / "followup.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    picture = _plot(rows, out / "followup.png")
    page = _page(document, rows, out / "followup.html", picture, snapshot_folders)
    return [out / "followup.csv", out / "followup.json", *([picture] if picture else []), page]


def _plot(rows: List[dict], path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [row for row in rows if row["adc_baseline"] is not None or row["adc_followup"] is not None]
    figure, axes = plt.subplots(figsize=(max(6, 0.6 * len(shown) + 2), 4.5))
    for x, row in enumerate(shown):
        colour = RESPONSE_COLOURS.get(row["response"], "#444444")
        before, after = row["adc_baseline"], row["adc_followup"]
        if before is not None and after is not None:
            axes.annotate("", (x, after), (x, before), arrowprops={"arrowstyle": "->", "color": colour, "lw": 2})
        if before is not None:
            axes.scatter([x], [before], color="white", edgecolor=colour, s=40, zorder=3)
        if after is not None:
            axes.scatter([x], [after], color=colour, s=40, zorder=3)
        axes.text(x, max(v for v in (before, after) if v is not None) + 0.05, row["response"] or row["status"],
                  ha="center", fontsize=7, color=colour)
    axes.set_xticks(range(len(shown)), [row["segment"] for row in shown], rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("mean ADC, 10^-3 mm^2/s")
    axes.set_title("Follow-up: ADC change (open: baseline, filled: follow-up) and MET-RADS-P bone response "
                   "category (ADC criteria only)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _page(document: dict, rows: List[dict], path: Path, picture, snapshot_folders: Sequence[Tuple[str, Path]]) -> Path:
    e = html.escape
    header = "".join(f"<th>{e(name)}</th>" for name in FOLLOWUP_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(cell(row[name]))}</td>" for name in FOLLOWUP_COLUMNS) + "</tr>" for row in rows)
    snapshots = ""
    for label, folder in snapshot_folders:
        for name in ("spine.png", "overview.png"):
            if (folder / name).is_file():
                snapshots += (f'<figure><img src="{e(os.path.relpath(folder / name, path.parent))}" width="480">'
                              f"<figcaption>{label}: {e(name)}</figcaption></figure>")
    rules = document["criteria"]["metradsp"]
    rule_text = "".join(f"<li>{e(rules[key])} (verified in the text: {rules.get(key.replace('_text', '_verified'))})</li>"
                        for key in ("rac1_text", "rac2_text", "rac3_text", "rac4_text", "rac5_text"))
    text = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>VertebralMarrow: follow-up</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:3px 6px;font-size:90%}}figure{{display:inline-block}}</style>
</head><body>
<h1>Follow-up: response of bone lesions and vertebrae</h1>
<p><b>{e(document['disclaimer'])}</b></p>
<p>Baseline: {e(document['baseline'])}; follow-up: {e(document['followup'])}. Lesions matched by segment name,
vertebrae by level. Reproducibility of ADC: {document['criteria']['reproducibility_pct']['value']:g} % (Messiou 2011).</p>
{f'<img src="{e(Path(picture).name)}" alt="ADC change per lesion and vertebra">' if picture else ''}
<table><tr>{header}</tr>{body}</table>
<h2>Before and after</h2>{snapshots or '<p>No snapshots in the result folders.</p>'}
<h2>Rules (Padhani 2017, Table 3; ADC criteria only)</h2><ul>{rule_text}</ul>
<p>MY-RADS (Messiou 2019): {e(document['myrads'])}</p>
<h2>References</h2><ul>{''.join(f'<li>{e(v)}</li>' for v in document['references'].values())}</ul>
</body></html>
"""
    path.write_text(text, encoding="utf-8")
    return path
