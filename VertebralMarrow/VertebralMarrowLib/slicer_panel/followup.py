"""The panel's "Follow-up" section, without Qt: the baseline (a results or spine table in the
scene, with the table of the same time point beside it, or a result folder on disk) compared
with the current result (the panel's results and spine tables) as core.followup.compare does
for the `followup` command, the comparison as a table node, and its summary line."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from ..core.followup import Reading, ResponseRules, compare
from ..errors import InputError
from ..outputs.followup_report import read_timepoint, readings_from_table, write_followup_outputs
from ..outputs.table import fill_table_node

# Node reference between the results table and the spine table published for one study, both
# ways: choosing either as the baseline brings the other along.
TIME_POINT_ROLE = "VertebralMarrowTimePoint"
SUMMARY_ATTRIBUTE = "VertebralMarrow.FollowupSummary"   # on the follow-up table: the summary line
FOLLOWUP_TABLE_NAME = "VertebralMarrow follow-up"
ADC_UNIT = "10^-3 mm^2/s"
FOLLOWUP_TABLE_COLUMNS = (
    ("segment", "", "Lesion segment name or vertebra level (matched by these between the time points)"),
    ("kind", "", "lesion or vertebra"),
    ("status", "", "matched, new (follow-up only) or gone (baseline only)"),
    ("adc_baseline", ADC_UNIT, "Mean ADC at baseline"),
    ("adc_followup", ADC_UNIT, "Mean ADC at follow-up"),
    ("adc_change", ADC_UNIT, "Follow-up minus baseline mean ADC"),
    ("adc_change_pct", "%", "ADC change in percent of the baseline"),
    ("beyond_reproducibility", "", "True when the change exceeds the ADC reproducibility (Messiou 2011; criteria.json "
                                   "followup.reproducibility_pct)"),
    ("class_baseline", "", "ADC class (lesion) or tier (vertebra) at baseline"),
    ("class_followup", "", "ADC class (lesion) or tier (vertebra) at follow-up"),
    ("volume_ml_baseline", "mL", "Lesion ROI volume at baseline"),
    ("volume_ml_followup", "mL", "Lesion ROI volume at follow-up"),
    ("response", "", "MET-RADS-P bone response category from the ADC (Padhani 2017; MY-RADS, Messiou 2019, the same)"),
    ("rule", "", "The rule that decided the category"),
)
FOLLOWUP_TEXT_COLUMNS = ("segment", "kind", "status", "beyond_reproducibility", "class_baseline", "class_followup",
                         "response", "rule")


def link_time_point(results_table, spine_table) -> None:
    """Record that the results table and the spine table hold one study's result."""
    if results_table is None or spine_table is None:
        return
    results_table.SetNodeReferenceID(TIME_POINT_ROLE, spine_table.GetID())
    spine_table.SetNodeReferenceID(TIME_POINT_ROLE, results_table.GetID())


def time_point_tables(table) -> list:
    """`table` and the table of the same time point, when each names the other (a table
    analysed again since into another study's partner no longer counts)."""
    other = table.GetNodeReference(TIME_POINT_ROLE)
    if other is not None and other.GetNodeReference(TIME_POINT_ROLE) is table:
        return [table, other]
    return [table]


def followup_blocker(params) -> str:
    """Why "Compare with baseline" cannot run yet (a sentence for the tooltip), or ""."""
    if params is None:
        return "No parameter node."
    if not current_tables(params):
        return "Press Apply or Analyse spine first: there is no current result to compare."
    if params.followupBaseline is None and not (params.followupBaselineFolder or "").strip():
        return "Choose the baseline: a results or spine table in the scene, or a result folder."
    return ""


def current_tables(params) -> list:
    return [table for table in (params.resultsTable, params.spineTable) if table is not None]


def baseline(params) -> Tuple[List[Reading], str, Optional[Path]]:
    """(readings, where they come from, the result folder or None) of the chosen baseline."""
    table, folder = params.followupBaseline, (params.followupBaselineFolder or "").strip()
    if table is not None and folder:
        raise InputError("choose the baseline as a table in the scene or as a result folder, not both")
    if table is None and not folder:
        raise InputError("choose the baseline: a results or spine table in the scene, or a result folder on disk")
    if folder:
        path = Path(folder).expanduser()
        return read_timepoint(path), str(path), path
    tables = time_point_tables(table)
    current = {node.GetID() for node in current_tables(params)}
    if any(node.GetID() in current for node in tables):
        raise InputError(f"the baseline '{table.GetName()}' is the current result: keep it as the baseline before "
                         "analysing the follow-up (or choose 'Create new table' for the results and spine tables)")
    return readings_of(tables), describe(tables), None


def readings_of(tables) -> List[Reading]:
    readings = []
    for table in tables:
        readings += readings_from_table(table)
    return readings


def describe(tables) -> str:
    return ", ".join(f"table '{table.GetName()}'" for table in tables) + " in the Slicer scene"


def compare_with_baseline(params, options) -> Tuple[List[dict], str, str, Optional[Path]]:
    """(rows of core.followup.compare, where the baseline and the current result come from,
    the baseline folder or None); the rules from the analysis's criteria and normal-marrow top."""
    current = current_tables(params)
    if not current:
        raise InputError("there is no current result to compare: press Apply (lesions) or Analyse spine (vertebrae) first")
    before, before_text, folder = baseline(params)
    rules = ResponseRules.from_criteria(options.criteria, options.marrow_max)
    return compare(before, readings_of(current), rules), before_text, describe(current), folder


def followup_table_node(scene, rows: List[dict], node=None):
    table = node or scene.AddNewNodeByClass("vtkMRMLTableNode", FOLLOWUP_TABLE_NAME)
    fill_table_node(table, rows, FOLLOWUP_TABLE_COLUMNS, FOLLOWUP_TEXT_COLUMNS)
    table.SetAttribute(SUMMARY_ATTRIBUTE, followup_summary(rows))
    return table


def followup_table_summary(table) -> Optional[str]:
    """The summary line a published follow-up table carries, or None."""
    return table.GetAttribute(SUMMARY_ATTRIBUTE) if table is not None else None


def followup_summary(rows: List[dict]) -> str:
    """One line: the names in each response category (RAC 3 counted), new and gone."""
    parts = []
    for category in ("RAC1", "RAC2", "RAC4", "RAC5"):
        names = [f"{row['segment']}{' (new)' if row['status'] == 'new' else ''}" for row in rows if row["response"] == category]
        if names:
            parts.append(f"{category}: {', '.join(names)}")
    stable = sum(row["response"] == "RAC3" for row in rows)
    if stable:
        parts.append(f"RAC3 (no change): {stable}")
    gone = [row["segment"] for row in rows if row["status"] == "gone"]
    if gone:
        parts.append(f"gone: {', '.join(gone)}")
    uncategorised = [row["segment"] for row in rows if row["status"] == "matched" and row["response"] is None]
    if uncategorised:
        parts.append(f"no ADC at one time point: {', '.join(uncategorised)}")
    return (f"{len(rows)} compared. " + "; ".join(parts) + ". MET-RADS-P categories from the ADC only: "
            "the reader weighs the high-b signal and the morphology.")


def export_followup(rows: List[dict], criteria: dict, folder, baseline_text: str, current_text: str,
                    baseline_folder: Optional[Path] = None) -> List[Path]:
    """The `followup` command's report folder (followup.csv, .json, .png, .html) for a
    comparison made in the panel; a baseline folder's pictures shown as before."""
    snapshots = [("baseline", baseline_folder)] if baseline_folder is not None else []
    return write_followup_outputs(rows, criteria, folder, baseline_text, current_text, snapshots)
