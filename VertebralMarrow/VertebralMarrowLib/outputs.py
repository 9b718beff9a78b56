"""Results out: `results.csv`, `results.json`, a results table node with units and column
descriptions (as Slicer's Segment Statistics does), and the overlay labelmap with its colors."""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

import slicer

from . import __version__
from .analysis import OVERLAY_CLASSES, AnalysisResult
from .criteria import citation
from .mrml import ijk_to_ras_of, set_ijk_to_ras, volume_from_array

# (column, unit, description): the outside contract of results.csv, in order.
COLUMNS = (
    ("segment", "", "Segment name"),
    ("role", "", "lesion, reference (normal marrow), disc or muscle"),
    ("n_voxels_adc", "voxels", "Voxels of the ROI on the ADC map's own grid"),
    ("volume_ml", "mL", "ROI volume on the ADC grid"),
    ("adc_mean", "10^-3 mm^2/s", "Mean ADC (the statistic the cut-off was defined on)"),
    ("adc_median", "10^-3 mm^2/s", "Median ADC"),
    ("adc_sd", "10^-3 mm^2/s", "Standard deviation of ADC"),
    ("adc_p10", "10^-3 mm^2/s", "10th percentile of ADC"),
    ("adc_p90", "10^-3 mm^2/s", "90th percentile of ADC"),
    ("fraction_at_or_below_cutoff", "fraction", "Fraction of ROI voxels with ADC at or below the cut-off"),
    ("adc_class", "", "Lesions: malignant-range (mean ADC <= cut-off), benign-range or indeterminate"),
    ("t1_ratio", "ratio", "Mean T1 signal / mean of the normal-marrow reference"),
    ("t2_ratio", "ratio", "Mean T2 signal / mean of the normal-marrow reference"),
    ("fs_ratio", "ratio", "Mean FS-T2/STIR signal / mean of the normal-marrow reference"),
    ("t1_signal", "", "T1 relative to normal marrow: low, iso or high"),
    ("t2_signal", "", "T2 relative to normal marrow: low, iso or high"),
    ("fs_signal", "", "FS-T2/STIR relative to normal marrow: low, iso or high"),
    ("ct_mean_hu", "HU", "Mean CT attenuation"),
    ("differential", "", "Entities, most likely first (decision support, not a diagnosis)"),
)
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
TEXT_COLUMNS = ("segment", "role", "adc_class", "t1_signal", "t2_signal", "fs_signal", "differential")

# Attributes that mark the nodes VertebralMarrow made, so a later run (or the panel) finds them.
CLASS_COLORS_ATTRIBUTE = "VertebralMarrow.ClassColors"
ADC_COLORS_ATTRIBUTE = "VertebralMarrow.AdcColors"
ADC_MAP_ATTRIBUTE = "VertebralMarrow.AdcColorMap"
OVERLAY_ATTRIBUTE = "VertebralMarrow.Classes"

CLASS_COLORS = {  # overlay value: (name, RGBA)
    0: ("background", (0.0, 0.0, 0.0, 0.0)),
    1: ("benign-range", (0.10, 0.75, 0.25, 1.0)),
    2: ("indeterminate", (1.00, 0.85, 0.10, 1.0)),
    3: ("malignant-range", (0.90, 0.10, 0.10, 1.0)),
}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e5 else f"{value:.6g}"
    return str(value)


def write_csv(result: AnalysisResult, path) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMN_NAMES)
        for row in result.rows:
            writer.writerow([_cell(row[name]) for name in COLUMN_NAMES])
    return path


def result_document(result: AnalysisResult) -> dict:
    """Everything results.json holds: rows, inputs, units decided, b-values, criteria with
    their citations, warnings, versions and the disclaimer."""
    options = result.options
    criteria = options.criteria
    used = {
        "adc_cutoff": {"value": options.adc_cutoff, "unit": "10^-3 mm^2/s",
                       "default": criteria["adc_cutoff"]["value"],
                       "citation": citation(criteria, criteria["adc_cutoff"]["source"]),
                       "where": criteria["adc_cutoff"]["where"]},
        "indeterminate_band": {"value": options.indeterminate_band, "unit": "10^-3 mm^2/s",
                               "citation": citation(criteria, criteria["indeterminate_band"]["source"])},
        "signal_ratio": {"low_below": options.signal_low_below, "high_above": options.signal_high_above,
                         "citation": citation(criteria, criteria["signal_ratio"]["source"])},
        "min_voxels": {"value": options.min_voxels, "citation": citation(criteria, criteria["min_voxels"]["source"])},
        "ct_sclerotic_min_hu": {"value": options.ct_sclerotic_min_hu,
                                "citation": citation(criteria, criteria["ct"]["source"]), "where": criteria["ct"]["where"]},
        "entities": {
            key: {"label": entity["label"], "adc_mean": entity["adc"]["mean"], "adc_sd": entity["adc"]["sd"],
                  "citation": citation(criteria, entity["adc"]["source"]), "where": entity["adc"]["where"]}
            for key, entity in criteria["entities"].items()
        },
    }
    segments = {detail["name"]: {k: v for k, v in detail.items() if k not in ("name",)} for detail in result.segments}
    return {
        "disclaimer": result.disclaimer,
        "rows": [{name: _json_value(row[name]) for name in COLUMN_NAMES} for row in result.rows],
        "segments": segments,
        "inputs": result.inputs,
        "adc": {"source": result.adc_source, "units": result.adc_units, "bvalues_s_per_mm2": result.bvalues_used,
                "fit_method": options.fit_method if result.bvalues_used else None,
                "bmin": options.bmin, "bmax": options.bmax},
        "criteria": used,
        "references": criteria["references"],
        "warnings": result.warnings,
        "versions": {"vertebral_marrow": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "mrml": _slicer_version()},
    }


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _slicer_version() -> str:
    try:
        from importlib.metadata import version

        return "slicer-core " + version("slicer-core")
    except Exception:  # inside Slicer there is no wheel metadata; the application knows
        return "Slicer"


def write_json(result: AnalysisResult, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result_document(result), indent=2), encoding="utf-8")
    return path


def results_table_node(scene, result: AnalysisResult, node=None):
    """A table node with one row per segment, column units and descriptions."""
    table = node or scene.AddNewNodeByClass("vtkMRMLTableNode", "VertebralMarrow results")
    table.RemoveAllColumns()
    for name, unit, description in COLUMNS:
        numeric = name not in TEXT_COLUMNS
        column = vtk_array("double" if numeric else "string", name)
        for row in result.rows:
            value = row[name]
            if numeric:
                column.InsertNextValue(float("nan") if value is None else float(value))
            else:
                column.InsertNextValue("" if value is None else str(value))
        # Filled before it is added: AddColumn pads a new column to the table's row count.
        table.AddColumn(column)
        table.SetColumnUnitLabel(name, unit)
        table.SetColumnDescription(name, description)
    table.Modified()
    table.SetAttribute("VertebralMarrow.Disclaimer", result.disclaimer)
    return table


def vtk_array(kind: str, name: str):
    import vtk

    array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
    array.SetName(name)
    return array


def class_color_node(scene, node=None):
    """The overlay's color table: 1 benign-range green, 2 indeterminate yellow, 3 malignant-range red."""
    color = node or scene.AddNewNodeByClass("vtkMRMLColorTableNode", "VertebralMarrow classes")
    color.SetTypeToUser()
    # Shown in color selectors, and saved as a data file of its own, not as a hidden node.
    color.SetHideFromEditors(False)
    color.SetNumberOfColors(len(CLASS_COLORS))
    color.SetNamesInitialised(True)
    for value, (name, rgba) in CLASS_COLORS.items():
        color.SetColor(value, name, *rgba)
    color.SetAttribute(CLASS_COLORS_ATTRIBUTE, "1")
    return color


def _on_adc_grid(scene, result: AnalysisResult, array: np.ndarray, name: str, node=None, labelmap: bool = False):
    """A volume node holding `array` on the ADC map's grid and under its parent transform: a
    new one, or `node` of an earlier run moved onto this run's grid."""
    if node is None:
        node = volume_from_array(scene, array, ijk_to_ras_of(result.adc_node), name, labelmap=labelmap)
    else:
        set_ijk_to_ras(node, ijk_to_ras_of(result.adc_node))
        slicer.util.updateVolumeFromArray(node, array)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(result.adc_node.GetTransformNodeID())
    return node


def overlay_node(scene, result: AnalysisResult, color_node, node=None):
    """The overlay labelmap on the ADC grid, bound to the class colors. A reused node takes
    this run's grid and parent transform, which need not be the last run's."""
    node = _on_adc_grid(scene, result, result.overlay, "VertebralMarrow overlay", node, labelmap=True)
    node.GetDisplayNode().SetAndObserveColorNodeID(color_node.GetID())
    node.SetAttribute(OVERLAY_ATTRIBUTE, json.dumps({str(value): name for value, name in OVERLAY_CLASSES.items()}))
    return node


ADC_MAP_NAME = "VertebralMarrow ADC (10^-3 mm^2/s)"
ADC_COLORS_NAME = "VertebralMarrow ADC around cut-off"


def adc_color_node(scene, node=None, steps: int = 256):
    """A continuous colour map for ADC: red (malignant-range) below the window's centre,
    yellow at it, green (benign-range) above. Centred on the cut-off by the display window
    that `adc_map_node` sets (level = cut-off)."""
    color = node or scene.AddNewNodeByClass("vtkMRMLColorTableNode", ADC_COLORS_NAME)
    color.SetTypeToUser()
    color.SetHideFromEditors(False)
    color.SetNumberOfColors(steps)
    red, yellow, green = (np.array(CLASS_COLORS[value][1][:3]) for value in (3, 2, 1))
    for index, t in enumerate(np.linspace(0.0, 1.0, steps)):
        rgb = red + (yellow - red) * (t / 0.5) if t <= 0.5 else yellow + (green - yellow) * ((t - 0.5) / 0.5)
        color.SetColor(index, f"{t:.3f}", *rgb, 1.0)
    color.SetAttribute(ADC_COLORS_ATTRIBUTE, "1")
    return color


def adc_map_node(scene, result: AnalysisResult, color_node, node=None):
    """The ADC map in 10^-3 mm^2/s (voxels without a value are NaN) shown through the
    continuous colour map, window 0 to twice the cut-off so its centre is the cut-off."""
    node = _on_adc_grid(scene, result, result.adc_map, ADC_MAP_NAME, node)
    node.SetAttribute("VertebralMarrow.Units", "1e-3 mm2/s")
    node.SetAttribute(ADC_MAP_ATTRIBUTE, "1")
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2.0 * result.options.adc_cutoff, result.options.adc_cutoff)
    return node


def segment_class_colors(segmentation_node, result: AnalysisResult) -> Dict[str, Tuple[float, float, float]]:
    """segment id -> RGB of its class, for the lesion segments of `result` with a class
    (benign-range, indeterminate, malignant-range) that are still in the segmentation under the
    same id and name (segments removed or renamed since the analysis are left out)."""
    class_of = {"benign": 1, "indeterminate": 2, "malignant": 3}
    by_name = {row["segment"]: row["adc_class"] for row in result.rows}
    segmentation = segmentation_node.GetSegmentation()
    colors = {}
    for detail in result.segments:
        value = class_of.get(by_name.get(detail["name"], ""))
        segment = segmentation.GetSegment(detail["id"])
        if value is not None and segment is not None and segment.GetName() == detail["name"]:
            colors[detail["id"]] = tuple(float(c) for c in CLASS_COLORS[value][1][:3])
    return colors


def color_segments_by_class(segmentation_node, result: AnalysisResult) -> List[str]:
    """Lesion segments take their class colour (the segmentation passed must be one the user
    may see changed: the exported scene's, or on request in Slicer). The ids coloured."""
    segmentation = segmentation_node.GetSegmentation()
    colors = segment_class_colors(segmentation_node, result)
    for segment_id, rgb in colors.items():
        segmentation.GetSegment(segment_id).SetColor(*rgb)
    return list(colors)
