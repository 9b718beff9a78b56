"""`vertebral-marrow cohort`: how well an ADC cut-off separates malignant from benign lesions.

The driver only: the table is read by inputs/cohort_table.py, the statistics and their
intervals come from core/cohort.py (numpy + scipy) and the figures from
outputs/cohort_figures.py (matplotlib, optional: without it the numbers are still written and
cohort.json says that the figures were skipped).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import DISCLAIMER
from .core.cohort import check_cutoff, cohort_statistics, confidence_intervals, entity_summary
from .core.criteria import citation, load_criteria
from .inputs.cohort_table import read_cohort_table

ProgressCallback = Callable[[float, str], None]

ENTITY_COLUMNS = (
    "entity", "truth", "n", "adc_mean", "adc_sd", "adc_median", "adc_min", "adc_max",
    "fraction_called_malignant", "fraction_called_malignant_ci_low", "fraction_called_malignant_ci_high",
)


def run_cohort(csv_path, out_dir, cutoff=None, progress: Optional[ProgressCallback] = None,
               ci_method: str = "wilson") -> dict:
    """Read the cohort table, write cohort.json, cohort_entities.csv and (with matplotlib)
    cohort_roc.png and cohort_entities.png in out_dir.

    csv_path: the documented cohort CSV or batch's lesions.csv. cutoff (10^-3 mm^2/s) None
    takes the criteria file's default (Kaur 2020: 1.21). ci_method: wilson or exact, for the
    proportions. Returns what cohort.json holds.
    """
    report = progress or (lambda fraction, text: None)
    report(0.0, "reading cohort")
    rows, notes = read_cohort_table(csv_path)
    cutoff_used, cutoff_info = _resolve_cutoff(cutoff)
    adc = np.array([row["adc"] for row in rows], dtype=float)
    malignant = np.array([row["truth"] == "malignant" for row in rows], dtype=bool)

    report(0.1, "computing statistics and bootstrap intervals")
    stats = cohort_statistics(adc, malignant, cutoff_used)
    stats.update(confidence_intervals(stats, adc, malignant, ci_method))
    summary = entity_summary(rows, cutoff_used, ci_method)
    if stats["auc_ci"] is None:
        notes.append(f"no bootstrap interval for AUC and Youden cut-off: {stats['n_malignant']} malignant and "
                     f"{stats['n_benign']} benign lesions; resampling needs at least two of each")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ["cohort.json", "cohort_entities.csv"]
    write_entity_csv(summary, out / "cohort_entities.csv")
    figures = _draw(stats, rows, summary, cutoff_used, out, report)
    if figures:
        files += figures
    else:
        notes.append("figures skipped: matplotlib is not installed (pip install matplotlib); the numbers are complete")

    result = dict(stats)
    result.update(cutoff_info)
    result.update({
        "adc_unit": "1e-3 mm2/s",
        "rule": "adc <= cutoff: called malignant (positive); adc > cutoff: called benign",
        "input": str(csv_path),
        "n_lesions": int(adc.size),
        "entities": summary,
        "notes": notes,
        "files": files,
        "disclaimer": DISCLAIMER,
    })
    (out / "cohort.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    report(1.0, "done")
    return result


def _draw(stats: dict, rows: list, summary: list, cutoff: float, out: Path, report) -> list:
    """Draw the two figures; [] when matplotlib is absent."""
    from .outputs.cohort_figures import matplotlib_available, plot_entities, plot_roc

    if not matplotlib_available():
        return []
    report(0.6, "drawing ROC curve")
    plot_roc(stats, out / "cohort_roc.png")
    report(0.8, "drawing per-entity ADC")
    plot_entities(rows, summary, cutoff, out / "cohort_entities.png")
    return ["cohort_roc.png", "cohort_entities.png"]


def write_entity_csv(summary: list, path: Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ENTITY_COLUMNS)
        for item in summary:
            interval = item["fraction_called_malignant_ci"]
            cells = dict(item, fraction_called_malignant_ci_low=interval[0], fraction_called_malignant_ci_high=interval[1])
            writer.writerow([_csv_cell(cells[column]) for column in ENTITY_COLUMNS])


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return value


def _resolve_cutoff(cutoff) -> tuple:
    """The cut-off to use (10^-3 mm^2/s) and what cohort.json says about where it came from."""
    criteria = load_criteria()
    entry = criteria["adc_cutoff"]
    default_citation = f"{citation(criteria, entry['source'])} {entry.get('where', '')}".strip()
    if cutoff is None:
        return check_cutoff(entry["value"]), {
            "cutoff_origin": "criteria file default",
            "cutoff_citation": default_citation,
        }
    return check_cutoff(cutoff), {
        "cutoff_origin": "user",
        "cutoff_citation": f"user-supplied; the criteria default {entry['value']} is from {default_citation}",
    }
