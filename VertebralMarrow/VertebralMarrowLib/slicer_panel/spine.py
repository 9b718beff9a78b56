"""The panel's "Whole spine" section, without Qt: the vertebra labels, the ADC inputs and the
settings from the parameter node, why "Analyse spine" cannot run yet, the labels' scheme in
one line, the result as a table node and a tier-coloured overlay, the summary line, and the
`spine` command's report folder written from a private copy (the user's scene is left alone).
The analysis itself is spine_analysis.analyze_spine, the same as the command line's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..analysis import StudyNodes
from ..core.classes import BY_KEY
from ..core.criteria import load_criteria
from ..core.vertebra_schemes import parse_structure
from ..errors import InputError
from ..outputs.nodes import _on_adc_grid, class_color_node
from ..outputs.table import COLUMNS as RESULT_COLUMNS
from ..outputs.table import fill_table_node
from ..mrml import remove_with_helpers
from ..spine_analysis import SpineLabels, SpineOptions, SpineResult, spine_labels_from_node
from .parameters import adc_blocker, adc_inputs
from .publish import _class_colors, export_copy

SUMMARY_ATTRIBUTE = "VertebralMarrow.SpineSummary"   # on the spine table: the summary line
SPINE_TABLE_NAME = "VertebralMarrow spine"
SPINE_OVERLAY_NAME = "VertebralMarrow spine tiers"
SCHEME_TITLES = {
    "totalsegmentator_total": "TotalSegmentator, task total",
    "totalsegmentator_vertebrae_mr": "TotalSegmentator, task vertebrae_mr",
    "totalspineseg": "TotalSpineSeg",
    "names": "labels named by level",
}

_RESULT = {name: (unit, description) for name, unit, description in RESULT_COLUMNS}
# spine.csv's columns (spine_analysis.SPINE_COLUMNS) with units and descriptions, as the
# results table carries them.
SPINE_TABLE_COLUMNS = (
    ("level", "", "Vertebra (C1-S1; the sacrum is S1)"),
    ("n_voxels_adc", "voxels", "Voxels of the eroded marrow ROI on the ADC map's own grid"),
    ("adc_mean", *_RESULT["adc_mean"]),
    ("adc_median", *_RESULT["adc_median"]),
    ("adc_p10", *_RESULT["adc_p10"]),
    ("adc_p90", *_RESULT["adc_p90"]),
    ("tier", "", "marrow (normal-marrow range), malignant-range, indeterminate or benign-range, by mean ADC"),
    ("t1_ratio", "ratio", "Mean T1 signal / this spine's reference (median of the vertebrae or the chosen levels)"),
    ("fs_ratio", "ratio", "Mean FS-T2/STIR signal / this spine's reference"),
    ("height_ratio", "ratio", "Vertebral-body height / mean height of its labelled neighbours"),
    ("flags", "", "above_marrow_range (diffuse infiltration to exclude), outlier (against this spine), "
                  "height_loss (below its neighbours')"),
)
SPINE_TEXT_COLUMNS = ("level", "tier", "flags")


def spine_default(name: str) -> float:
    """A spine setting's default: criteria.json's `spine` section, where the command line
    takes it from too."""
    return float(load_criteria()["spine"][name]["value"])


def reference_levels(text: str) -> Tuple[str, ...]:
    """The levels typed as the normal-marrow reference ("L3, L4" or "L3 L4"); () for the
    median of the labelled vertebrae."""
    levels = []
    for token in re.split(r"[,;\s]+", (text or "").strip()):
        if not token:
            continue
        structure = parse_structure(token)
        if structure is None or structure.kind != "vertebra":
            raise InputError(f"reference levels: '{token}' is no vertebra level (C1-C7, T1-T12, L1-L5, S1); "
                             "leave the field empty for the median of the labelled vertebrae")
        levels.append(structure.level)
    return tuple(levels)


def spine_options_from_parameters(params) -> SpineOptions:
    """The spine settings from the panel; the normal-marrow top is the analysis's (marrowMax)."""
    return SpineOptions(scheme=params.spineScheme, erosion_mm=float(params.spineErosionMm),
                        reference_levels=reference_levels(params.spineReferenceLevels),
                        outlier_robust_sd=float(params.spineOutlierRobustSd),
                        height_loss_below=float(params.spineHeightLossBelow))


def spine_blocker(params, dicom_database=None) -> str:
    """Why "Analyse spine" cannot run yet (a sentence for the button's tooltip), or "".
    dicom_database: Slicer's, to check the ADC map by its DICOM header, as Apply does."""
    if params is None:
        return "No parameter node."
    if params.spineLabels is None:
        return "Select the vertebra labels (the segmentation or labelmap TotalSegmentator or TotalSpineSeg made)."
    return adc_blocker(params, dicom_database)


def labels_from_parameters(scene, app, params) -> SpineLabels:
    if params.spineLabels is None:
        raise InputError("select the vertebra labels (the segmentation or labelmap TotalSegmentator or TotalSpineSeg made)")
    return spine_labels_from_node(scene, app, params.spineLabels, params.spineScheme)


def spine_inputs(params, dicom_database=None) -> dict:
    """analyze_spine's keyword arguments from the Inputs section: the ADC map or DWI, T1, FS
    and the drawn lesions (placed at their level), unless that segmentation is the labels."""
    dwi, bvalues = adc_inputs(params, dicom_database)
    lesions = params.segmentation if params.segmentation is not params.spineLabels else None
    return {"adc": params.adcVolume, "dwi": dwi, "bvalues": bvalues, "t1": params.t1Volume, "fs": params.fsVolume,
            "lesions": lesions}


def check_reference_levels(labels: SpineLabels, levels: Sequence[str]) -> None:
    labelled = sorted((s.order, s.level) for s in labels.structures.values() if s.kind == "vertebra")
    missing = [level for level in levels if level not in [lv for _, lv in labelled]]
    if missing:
        raise InputError(f"reference levels {', '.join(missing)}: no such vertebra in the labels "
                         f"(labelled: {', '.join(lv for _, lv in labelled)})")


def labels_line(labels: SpineLabels, scheme_choice: str) -> str:
    """What the panel shows under the labels: the scheme and how it was found, the levels."""
    vertebrae = [s.level for s in sorted(labels.structures.values(), key=lambda s: s.order) if s.kind == "vertebra"]
    discs = [s for s in labels.structures.values() if s.kind == "disc"]
    how = "from the names" if labels.scheme == "names" else (
        "detected from the label numbers and positions" if scheme_choice == "auto" else "chosen")
    others = [f"{len(discs)} disc{'s' if len(discs) != 1 else ''}"] if discs else []
    others += [kind for kind in ("canal", "cord") if any(s.kind == kind for s in labels.structures.values())]
    span = vertebrae[0] if len(vertebrae) == 1 else f"{vertebrae[0]}\u2013{vertebrae[-1]}"
    return (f"Labels: {SCHEME_TITLES.get(labels.scheme, labels.scheme)} ({how}): {len(vertebrae)} "
            f"vertebra{'e' if len(vertebrae) != 1 else ''} {span}" + (f"; {', '.join(others)}" if others else ""))


def spine_summary(result: SpineResult) -> str:
    """One line: the vertebrae flagged (above the normal-marrow range, outliers, height loss)
    or that none is."""
    def flagged(flag):
        return [row["level"] for row in result.rows if flag in (row["flags"] or "").split(";")]

    def vertebrae(levels):
        return f"{len(levels)} vertebra{'e' if len(levels) != 1 else ''}"

    marrow_max = result.criteria["marrow_max"]
    parts = []
    above, outliers, height = flagged("above_marrow_range"), flagged("outlier"), flagged("height_loss")
    if above:
        parts.append(f"{vertebrae(above)} above the normal-marrow range (> {marrow_max:g} x 10^-3 mm^2/s): "
                     f"{', '.join(above)} \u2014 diffuse infiltration to exclude")
    if outliers:
        parts.append(f"outlier against this spine: {', '.join(outliers)}")
    if height:
        parts.append(f"body height loss: {', '.join(height)} \u2014 a compression fracture to exclude")
    unmeasured = [row["level"] for row in result.rows if row["adc_mean"] is None]
    if unmeasured:
        parts.append(f"no ADC inside the eroded body: {', '.join(unmeasured)}")
    if not (above or outliers or height):
        parts.insert(0, f"{vertebrae(result.rows)} within the normal-marrow range (<= {marrow_max:g} x 10^-3 mm^2/s), "
                        "no outlier, no height loss")
    lesions = [f"{item['segment']} at {item['level']}" for item in result.lesions if item["level"]]
    if lesions:
        parts.append("lesions: " + ", ".join(lesions))
    return "; ".join(parts) + "."


def tier_codes(result: SpineResult) -> np.ndarray:
    """The overlay's voxels on the ADC grid: each vertebra's marrow ROI by the class code of its
    tier (the class colour table of the lesion overlay), 0 elsewhere and where there is no tier."""
    codes = np.zeros(result.marrow_on_adc.shape, np.uint8)
    for index, row in enumerate(result.rows, 1):
        tier = BY_KEY.get(row["tier"])
        if tier is not None:
            codes[result.marrow_on_adc == index] = tier.code
    return codes


def publish_spine(scene, result: SpineResult, table=None, overlay=None):
    """The spine table (spine.csv's columns with units and descriptions, the summary line as
    an attribute) and the tier overlay on the ADC grid, reusing the nodes of an earlier run."""
    table = table or scene.AddNewNodeByClass("vtkMRMLTableNode", SPINE_TABLE_NAME)
    fill_table_node(table, result.rows, SPINE_TABLE_COLUMNS, SPINE_TEXT_COLUMNS)
    table.SetAttribute(SUMMARY_ATTRIBUTE, spine_summary(result))
    table.SetAttribute("VertebralMarrow.Disclaimer", result.disclaimer)
    colors = _class_colors(scene, overlay)  # the lesion overlay's, palette and all
    if colors is None:
        colors = class_color_node(scene)
    overlay = _on_adc_grid(scene, result, tier_codes(result), SPINE_OVERLAY_NAME, overlay, labelmap=True)
    overlay.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    return table, overlay


def export_spine(result: SpineResult, folder, t1=None, fs=None) -> List[Path]:
    """The `spine` command's report folder (spine.csv, spine.json, spine.png, spine.html and
    spine.mrml with its data) for a result of the panel, written from a private copy of the
    ADC map, T1, FS and the marrow ROIs, so the user's scene is not changed."""
    from ..outputs.spine_report import write_spine_outputs, write_spine_scene

    study = StudyNodes(segmentation=result.segmentation, adc=result.adc_node, t1=t1, fs=fs)
    app, copied, copied_result = export_copy(study, result)
    try:
        copied_result = dataclasses.replace(copied_result, segmentation=copied.segmentation,
                                            warnings=list(result.warnings))
        files = write_spine_outputs(copied_result, folder)
        copies = [node for node in (copied.t1, copied.fs) if node is not None]
        files.append(write_spine_scene(app.scene, copied_result, folder, copies))
        return files
    finally:
        app.scene.Clear(1)


def replace_run_nodes(scene, previous: Optional[SpineResult], result: SpineResult, user_nodes=()) -> None:
    """This run's marrow ROIs (and fitted ADC map) replace the last run's in the scene: those
    go with their display and storage nodes, never a node of the user's (`user_nodes`); this
    run's ROIs are hidden, as the tier overlay shows them."""
    if previous is not None:
        for node in (previous.segmentation, previous.adc_node):
            if node is None or node is result.adc_node or node.GetScene() is not scene or any(node is n for n in user_nodes):
                continue
            remove_with_helpers(scene, node)
    if result.segmentation.GetDisplayNode() is not None:
        result.segmentation.GetDisplayNode().SetVisibility(False)


def spine_table_summary(table) -> Optional[str]:
    """The summary line a published spine table carries, or None."""
    return table.GetAttribute(SUMMARY_ATTRIBUTE) if table is not None else None

