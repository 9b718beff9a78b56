"""The nodes a result is shown with: the overlay labelmap and its class colours, the continuous
ADC map and its colour table, and lesion segments coloured by class."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

import numpy as np

import slicer

from ..analysis import OVERLAY_CLASSES, AnalysisResult
from ..core.classes import BENIGN, BY_KEY, CLASSES, INDETERMINATE, MALIGNANT, MARROW, OUTSIDE
from ..core.criteria import Options
from ..mrml import ijk_to_ras_of, set_ijk_to_ras, volume_from_array

# Attributes that mark the nodes VertebralMarrow made, so a later run (or the panel) finds them.
CLASS_COLORS_ATTRIBUTE = "VertebralMarrow.ClassColors"
ADC_COLORS_ATTRIBUTE = "VertebralMarrow.AdcColors"
ADC_MAP_ATTRIBUTE = "VertebralMarrow.AdcColorMap"
OVERLAY_ATTRIBUTE = "VertebralMarrow.Classes"

CLASS_COLORS = {c.code: ("background" if c is OUTSIDE else c.label, c.rgba) for c in CLASSES}  # value: (name, RGBA)



def class_color_node(scene, node=None):
    """The overlay's color table: 1 benign-range green, 2 indeterminate yellow, 3 malignant-range
    red, 4 normal-marrow range blue (core/classes.py)."""
    color = node or scene.AddNewNodeByClass("vtkMRMLColorTableNode", "VertebralMarrow classes")
    color.SetTypeToUser()
    # Shown in color selectors, and saved as a data file of its own, not as a hidden node.
    color.SetHideFromEditors(False)
    color.SetNumberOfColors(len(CLASS_COLORS))
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


def adc_color_node(scene, node=None, steps: int = 256, cutoff: Optional[float] = None, marrow_max: Optional[float] = None):
    """A continuous colour map for ADC over the window 0 to twice the cut-off (that
    `adc_map_node` sets, level = cut-off): the normal-marrow colour up to the normal-marrow
    range's top (never red there), then red (malignant-range) to yellow at the cut-off and
    green (benign-range) above. Without `cutoff`, the criteria file's defaults."""
    if cutoff is None:
        defaults = Options().resolved()
        cutoff, marrow_max = defaults.adc_cutoff, defaults.marrow_max_or_none
    color = node or scene.AddNewNodeByClass("vtkMRMLColorTableNode", ADC_COLORS_NAME)
    color.SetTypeToUser()
    color.SetHideFromEditors(False)
    color.SetNumberOfColors(steps)
    marrow, red, yellow, green = (np.array(CLASS_COLORS[c.code][1][:3]) for c in (MARROW, MALIGNANT, INDETERMINATE, BENIGN))
    red_from = (marrow_max or 0.0) / (2.0 * cutoff)  # where the window's fraction t reaches marrow_max
    for index, t in enumerate(np.linspace(0.0, 1.0, steps)):
        if marrow_max and t <= red_from:
            rgb = marrow
        elif t <= 0.5:
            rgb = red + (yellow - red) * ((t - red_from) / (0.5 - red_from))
        else:
            rgb = yellow + (green - yellow) * ((t - 0.5) / 0.5)
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
    adc_color_node(scene, color_node, color_node.GetNumberOfColors() or 256, result.options.adc_cutoff,
                   result.options.marrow_max_or_none)  # this run's cut-off and normal-marrow range
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2.0 * result.options.adc_cutoff, result.options.adc_cutoff)
    return node


def segment_class_colors(segmentation_node, result: AnalysisResult) -> Dict[str, Tuple[float, float, float]]:
    """segment id -> RGB of its class, for the lesion segments of `result` with a class
    (benign-range, indeterminate, malignant-range) that are still in the segmentation under the
    same id and name (segments removed or renamed since the analysis are left out). Every
    class of the table counts, the normal-marrow range included."""
    by_name = {row["segment"]: row["adc_class"] for row in result.rows}
    segmentation = segmentation_node.GetSegmentation()
    colors = {}
    for detail in result.segments:
        adc_class = BY_KEY.get(by_name.get(detail["name"], ""))
        value = adc_class.code if adc_class is not None and adc_class is not OUTSIDE else None
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
