"""Results out: `results.csv`, `results.json`, a results table node with units and column
descriptions (as Slicer's Segment Statistics does), and the overlay labelmap with its colors."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np


from .. import __version__
from ..analysis import AnalysisResult, AnalysisWarning
from ..core.criteria import citation
from .cells import cell, json_value, write_csv as write_rows_csv

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
    ("adc_class", "", "Lesions: marrow (normal-marrow range), malignant-range, indeterminate or benign-range, after the overriding signs (results.json segments.*.tier)"),
    ("t1_ratio", "ratio", "Mean T1 signal / mean of the normal-marrow reference"),
    ("t2_ratio", "ratio", "Mean T2 signal / mean of the normal-marrow reference"),
    ("fs_ratio", "ratio", "Mean FS-T2/STIR signal / mean of the normal-marrow reference"),
    ("t1_signal", "", "T1 relative to normal marrow: low, iso or high"),
    ("t2_signal", "", "T2 relative to normal marrow: low, iso or high"),
    ("fs_signal", "", "FS-T2/STIR relative to normal marrow: low, iso or high"),
    ("ct_mean_hu", "HU", "Mean CT attenuation"),
    ("differential", "", "Entities, most likely first (decision support, not a diagnosis)"),
    ("adc_restricted", "10^-3 mm^2/s", "Heterogeneous lesions: mean ADC of the restricted component (voxels at or below the cut-off)"),
)
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
# What a reader sees for each column (the report, the panel's table headers).
COLUMN_LABELS = {
    "segment": "ROI", "role": "Role", "n_voxels_adc": "Voxels (ADC grid)", "volume_ml": "Volume",
    "adc_mean": "Mean ADC", "adc_median": "Median ADC", "adc_sd": "ADC SD", "adc_p10": "ADC P10", "adc_p90": "ADC P90",
    "fraction_at_or_below_cutoff": "Voxels at or below cut-off", "adc_class": "ADC tier",
    "t1_ratio": "T1 ratio", "t2_ratio": "T2 ratio", "fs_ratio": "FS-T2/STIR ratio",
    "t1_signal": "T1", "t2_signal": "T2", "fs_signal": "FS-T2/STIR", "ct_mean_hu": "CT", "differential": "Differential",
    "adc_restricted": "Restricted component ADC",
}
TEXT_COLUMNS = ("segment", "role", "adc_class", "t1_signal", "t2_signal", "fs_signal", "differential")

def write_csv(result: AnalysisResult, path) -> Path:
    return write_rows_csv(path, COLUMN_NAMES, result.rows)


def result_document(result: AnalysisResult) -> dict:
    """Everything results.json holds: rows, inputs, units decided, b-values, criteria with
    their citations, warnings, versions and the disclaimer."""
    options = result.options
    criteria = options.criteria
    tiers, signs = criteria["adc_tiers"], criteria["overriding_signs"]
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
        "marrow_max": _criterion(criteria, tiers["marrow_max"], options.marrow_max, "10^-3 mm^2/s",
                                 alternatives=tiers["marrow_max"]["alternatives"], off=options.marrow_max_or_none is None),
        "bone_island_min_hu": _criterion(criteria, signs["bone_island_min_hu"], options.bone_island_min_hu, "HU"),
        "fat_t1_ratio_min": _criterion(criteria, signs["fat_t1_ratio_min"], options.fat_t1_ratio_min, ""),
        "fat_fraction_min_percent": _criterion(criteria, signs["fat_fraction_min_percent"], options.fat_fraction_min_percent, "%"),
        "chemical_shift_drop_below": _criterion(criteria, signs["chemical_shift_drop_below"], options.chemical_shift_drop_below, ""),
        "no_dwi_signal": _criterion(criteria, signs["no_dwi_signal"], signs["no_dwi_signal"]["b0_below_reference_fraction"], ""),
        "heterogeneity": _criterion(criteria, signs["heterogeneity"], None, ""),
        "reference_check": _criterion(criteria, criteria["reference_check"], None, ""),
        "small_roi": _criterion(criteria, criteria["small_roi"], criteria["small_roi"]["supersample"], "x per axis"),
        "entities": {
            key: {"label": entity["label"], "adc_mean": entity["adc"]["mean"], "adc_sd": entity["adc"]["sd"],
                  "citation": citation(criteria, entity["adc"]["source"]), "where": entity["adc"]["where"]}
            for key, entity in criteria["entities"].items()
        },
    }
    segments = {detail["name"]: {k: v for k, v in detail.items() if k not in ("name",)} for detail in result.segments}
    return {
        "disclaimer": result.disclaimer,
        "rows": [{name: json_value(row[name]) for name in COLUMN_NAMES} for row in result.rows],
        "segments": segments,
        "inputs": result.inputs,
        "adc": {"source": result.adc_source, "units": result.adc_units, "bvalues_s_per_mm2": result.bvalues_used,
                "fit_method": options.fit_method if result.bvalues_used else None,
                "bmin": options.bmin, "bmax": options.bmax,
                "bvalues": bvalue_statement(result)},
        "criteria": used,
        "references": criteria["references"],
        "warnings": [str(warning) for warning in result.warnings],
        # the same, each with the segment it concerns ('' for the study) and its kind
        "warning_details": [warning_details(warning) for warning in result.warnings],
        "versions": {"vertebral_marrow": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "mrml": _slicer_version()},
    }


def _criterion(criteria: dict, entry: dict, value, unit: str, **extra) -> dict:
    """One criterion as results.json records it: value used, default, rule, source."""
    recorded = {"value": value, "unit": unit, "default": entry.get("value"), "rule": entry.get("rule"),
                "source": entry.get("source"), "citation": citation(criteria, entry.get("source", "")),
                "verified": entry.get("verified"), "where": entry.get("where")}
    recorded.update(extra)
    return {key: item for key, item in recorded.items() if item is not None}


def bvalue_statement(result: AnalysisResult) -> dict:
    """Which b-values the ADC came from, and at which the cut-offs were derived."""
    derived = result.options.criteria["adc_tiers"]["bvalues"]
    if result.bvalues_used:
        values, how = list(result.bvalues_used), "fitted from these b-values"
    elif result.options.adc_bvalues:
        values, how = list(result.options.adc_bvalues), "scanner ADC map; b-values given by the user"
    else:
        values, how = None, "scanner ADC map; b-values unknown (give them with --adc-bvalues)"
    source = f"ADC from b = {', '.join(f'{b:g}' for b in values)} s/mm^2 ({how})" if values else how
    return {"values_s_per_mm2": values, "how": how,
            "text": f"{source}; the cut-offs were derived at {derived['derived_at']}",
            "cutoffs_derived_at": derived["derived_at"], "where": derived["where"]}


def warning_details(warning) -> dict:
    """{segment, kind, text} of a warning (a plain string is about the whole study)."""
    if isinstance(warning, AnalysisWarning):
        return warning.as_dict()
    return {"segment": "", "kind": "study", "text": str(warning)}


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


def vtk_array(kind: str, name: str):
    import vtk

    array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
    array.SetName(name)
    return array


def results_table_node(scene, result: AnalysisResult, node=None):
    """A table node with one row per segment, column units and descriptions."""
    table = node or scene.AddNewNodeByClass("vtkMRMLTableNode", "VertebralMarrow results")
    fill_table_node(table, result.rows, COLUMNS, TEXT_COLUMNS)
    table.SetAttribute("VertebralMarrow.Disclaimer", result.disclaimer)
    return table


def fill_table_node(table, rows, columns, text_columns) -> None:
    """Replace a table node's columns: `columns` as (name, unit, description), one row per
    dict of `rows`; numbers as doubles (NaN when missing), `text_columns` as text."""
    table.RemoveAllColumns()
    for name, unit, description in columns:
        numeric = name not in text_columns
        column = vtk_array("double" if numeric else "string", name)
        for row in rows:
            value = row[name]
            if numeric:
                column.InsertNextValue(float("nan") if value is None else float(value))
            else:
                column.InsertNextValue(cell(value))
        # Filled before it is added: AddColumn pads a new column to the table's row count.
        table.AddColumn(column)
        table.SetColumnUnitLabel(name, unit)
        table.SetColumnDescription(name, description)
    table.Modified()
