"""Plot chart nodes for Slicer's plot views: one ADC histogram per lesion and the summary of
every ROI's mean ADC against the cut-off, each series over a table node."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

import slicer
import vtk
from vtk.util import numpy_support

from .figures import histogram_bins
from .rendering import CLASS_OF_ROW, RoiVoxels, _num, _rgb


def plot_nodes(scene, result) -> list:
    """Plot chart nodes in the scene, each with its series over a table node: one ADC
    histogram per lesion and the summary of every ROI's mean ADC against the cut-off."""
    voxels = RoiVoxels(result)
    charts = []
    for detail in (d for d in result.segments if d["role"] == "lesion"):
        row = next(r for r in result.rows if r["segment"] == detail["name"])
        values = voxels.adc_values(detail["id"])
        if not values.size:  # no ADC voxel centre (no DWI signal, a small focus): no histogram
            continue
        centres, counts = histogram_bins(values, result.options.adc_cutoff)
        table = _table(scene, f"VertebralMarrow ADC histogram table: {detail['name']}",
                       {"adc": centres, "voxels": counts.astype(float)})
        series = _series(scene, f"{detail['name']} ADC voxels", table, "adc", "voxels",
                         slicer.vtkMRMLPlotSeriesNode.PlotTypeBar, _rgb(CLASS_OF_ROW.get(row["adc_class"], 0)))
        charts.append(_chart(scene, f"VertebralMarrow ADC histogram: {detail['name']}", [series],
                             "ADC (10^-3 mm^2/s)", "voxels"))
    charts.append(_summary_chart(scene, result))
    return charts


def _summary_chart(scene, result):
    rows = [row for row in result.rows if row["adc_mean"] is not None]
    table = _table(scene, "VertebralMarrow mean ADC table", {
        "roi": np.arange(1, len(rows) + 1, dtype=float),
        "adc_mean": np.array([row["adc_mean"] for row in rows], float),
        "adc_sd": np.array([row["adc_sd"] or 0.0 for row in rows], float),
        "cutoff": np.full(len(rows), result.options.adc_cutoff, float),
    }, strings={"segment": [row["segment"] for row in rows], "adc_class": [row["adc_class"] for row in rows]})
    means = _series(scene, "mean ADC", table, "roi", "adc_mean", slicer.vtkMRMLPlotSeriesNode.PlotTypeBar, (0.35, 0.35, 0.35))
    means.SetLabelColumnName("segment")
    cutoff = _series(scene, f"cut-off {_num(result.options.adc_cutoff)}", table, "roi", "cutoff",
                     slicer.vtkMRMLPlotSeriesNode.PlotTypeLine, _rgb(3))
    cutoff.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
    cutoff.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    return _chart(scene, "VertebralMarrow mean ADC per ROI", [means, cutoff], "ROI", "mean ADC (10^-3 mm^2/s)")


def _table(scene, name: str, columns: Dict[str, np.ndarray], strings: Optional[Dict[str, List[str]]] = None):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    for column, values in columns.items():
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
        array.SetName(column)
        table.AddColumn(array)
    for column, values in (strings or {}).items():
        array = vtk.vtkStringArray()
        array.SetName(column)
        for value in values:
            array.InsertNextValue(str(value))
        table.AddColumn(array)
    return table


def _series(scene, name: str, table, x: str, y: str, plot_type: int, color):
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    series.SetPlotType(plot_type)
    series.SetColor(*[float(c) for c in color[:3]])
    return series


def _chart(scene, name: str, series: Sequence[object], x_title: str, y_title: str):
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    for node in series:
        chart.AddAndObservePlotSeriesNodeID(node.GetID())
    chart.SetTitle(name.replace("VertebralMarrow ", ""))
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    return chart
