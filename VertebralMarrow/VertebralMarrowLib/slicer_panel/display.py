"""What the slice views show: the overlay and the continuous ADC map as layers, lesion segments
coloured by class (their own colours kept in a segment tag so that turning it off gives them
back), the views centred on a lesion, and the note when plots cannot be drawn."""

from __future__ import annotations

from typing import List, Optional, Tuple

import vtk

from ..analysis import AnalysisResult
from ..core.classes import CLASSES, OUTSIDE
from ..mrml import segment_ids
from ..outputs.nodes import CLASS_COLORS, color_segments_by_class, segment_class_colors

ORIGINAL_COLOR_TAG = "VertebralMarrow.OriginalColor"  # segment tag: "r g b" before colouring by class

# Overlay colours told apart with any colour vision: Okabe M, Ito K. Color Universal Design
# (CUD): how to make figures and presentations that are friendly to colorblind people, 2008.
COLOR_BLIND_SAFE = {
    "benign": (0 / 255, 114 / 255, 178 / 255, 1.0),         # blue
    "indeterminate": (240 / 255, 228 / 255, 66 / 255, 1.0),  # yellow
    "malignant": (213 / 255, 94 / 255, 0 / 255, 1.0),        # vermillion
    "marrow": (86 / 255, 180 / 255, 233 / 255, 1.0),         # sky blue
}


def overlay_colors(color_blind_safe: bool) -> dict:
    """{class code: RGBA} of the overlay: the class table's colours, or the colour-blind-safe
    palette (a class it does not name keeps its own colour)."""
    return {c.code: (COLOR_BLIND_SAFE.get(c.key, c.rgba) if color_blind_safe and c is not OUTSIDE else c.rgba)
            for c in CLASSES}


def column_headers(table_node) -> List[str]:
    """The results table's column headers with their units ("adc_mean (10^-3 mm^2/s)"): Slicer's
    table view heads columns with their bare names and keeps units in the Tables module."""
    if table_node is None:
        return []
    headers = []
    for index in range(table_node.GetNumberOfColumns()):
        name = table_node.GetColumnName(index)
        unit = table_node.GetColumnUnitLabel(name) or ""
        headers.append(f"{name} ({unit})" if unit else name)
    return headers


def set_overlay_palette(color_node, color_blind_safe: bool) -> bool:
    """Colour the overlay's class colour table with the chosen palette; False when unchanged."""
    if color_node is None:
        return False
    changed = False
    for code, rgba in overlay_colors(color_blind_safe).items():
        current = [0.0, 0.0, 0.0, 0.0]
        color_node.GetColor(code, current)
        if any(abs(a - b) > 1e-6 for a, b in zip(current, rgba)):
            color_node.SetColor(code, *rgba)
            changed = True
    return changed


def slice_layers(params, scene) -> dict:
    """Keyword arguments for slicer.util.setSliceViewerLayers from the panel's display
    choices: the overlay as the label layer (None when hidden) at its opacity, and the
    continuous ADC map as the foreground layer at its opacity when asked. When not asked the
    foreground is cleared only if it shows this ADC map, so a foreground the user chose stays.
    Layers without an output node yet (before Apply) are left as they are: {} for none."""
    layers = {}
    overlay = params.overlayVolume
    if overlay is not None:
        layers["label"] = overlay if params.showOverlay else None
        layers["labelOpacity"] = float(params.overlayOpacity)
    adc_map = params.adcMapVolume
    if adc_map is not None and params.showAdcColorMap:
        layers["foreground"] = adc_map
        layers["foregroundOpacity"] = float(params.adcColorMapOpacity)
    elif adc_map is not None and adc_map.GetID() in foreground_volume_ids(scene):
        layers["foreground"] = None
    return layers


def foreground_volume_ids(scene) -> List[str]:
    """The foreground volume of every slice view of `scene` (its slice composite nodes)."""
    ids = []
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(nodes.GetNumberOfItems()):
        node_id = nodes.GetItemAsObject(index).GetForegroundVolumeID()
        if node_id:
            ids.append(node_id)
    return ids


def layers_state(layers: dict) -> tuple:
    """What `slice_layers` asks for, comparable between calls (node IDs, rounded opacities),
    so the views are set only when a choice changed."""
    def value(item):
        if hasattr(item, "GetID"):
            return item.GetID()
        return round(float(item), 3) if isinstance(item, float) else item
    return tuple(sorted((key, value(item)) for key, item in layers.items()))


# --- lesion segments coloured by class ----------------------------------------------------


def update_segment_colors(segmentation_node, result: Optional[AnalysisResult], by_class: bool) -> List[str]:
    """Colour lesion segments by class, or give them back their own colours; the ids of the
    segments whose colour was set.

    by_class with a result: each lesion segment with a class (the result's segments still in
    the segmentation under the same id and name) keeps its own colour in a segment tag (saved
    with the scene; once, so later runs do not overwrite it) and takes its class colour; any
    other segment coloured earlier gets its own colour back. Not by_class: every segment with
    a kept colour gets it back (see restore_segment_colors). by_class without a result (before
    Apply, after a scene reload): nothing to colour by, nothing changes."""
    if segmentation_node is None:
        return []
    if not by_class:
        return restore_segment_colors(segmentation_node)
    if result is None:
        return []
    colors = segment_class_colors(segmentation_node, result)
    restored = restore_segment_colors(segmentation_node, keep=colors)
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in colors:
        segment = segmentation.GetSegment(segment_id)
        if not segment.HasTag(ORIGINAL_COLOR_TAG):
            segment.SetTag(ORIGINAL_COLOR_TAG, " ".join(repr(float(c)) for c in segment.GetColor()))
    return restored + color_segments_by_class(segmentation_node, result)


def restore_segment_colors(segmentation_node, keep=()) -> List[str]:
    """Segments coloured by class (those with the original-colour tag, but the ids in `keep`)
    get their own colour back and lose the tag; the ids recoloured. A segment the user
    recoloured since (its colour is no class colour) keeps the user's colour."""
    restored = []
    if segmentation_node is None:
        return restored
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        if segment_id in keep or not segment.HasTag(ORIGINAL_COLOR_TAG):
            continue
        original = original_segment_color(segmentation_node, segment_id)
        if original is not None and _is_class_color(segment.GetColor()):
            segment.SetColor(*original)
            restored.append(segment_id)
        segment.RemoveTag(ORIGINAL_COLOR_TAG)
    return restored


def original_segment_color(segmentation_node, segment_id: str) -> Optional[Tuple[float, float, float]]:
    """The colour a segment had before it was coloured by class, or None (not coloured by
    class, or an unreadable tag)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.mutable("")
    if segment is None or not segment.GetTag(ORIGINAL_COLOR_TAG, value):
        return None
    try:
        rgb = tuple(float(part) for part in str(value).split())
    except ValueError:
        return None
    return rgb if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb) else None


def _is_class_color(rgb, tolerance: float = 1e-3) -> bool:
    return any(all(abs(float(a) - b) <= tolerance for a, b in zip(rgb, rgba[:3]))
               for value, (_, rgba) in CLASS_COLORS.items() if value != 0)


def lesion_center_ras(segmentation_node, segment_name: str) -> Optional[Tuple[float, float, float]]:
    """The RAS centre of the named segment (its bounding box's, as Slicer's Segments table
    jumps to), or None when the segmentation has no such (non-empty) segment."""
    if segmentation_node is None:
        return None
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        return None
    center = segmentation_node.GetSegmentCenterRAS(segment_id)
    return tuple(float(c) for c in center) if center is not None else None


def plots_note() -> str:
    """What the panel says when matplotlib (not bundled with Slicer) is missing, else ""."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return ""
    return ("Plots and charts are left out of the exported report: matplotlib is not installed in Slicer's Python. "
            "Install it with slicer.util.pip_install('matplotlib') in the Python console; the numbers, the "
            "overlay and the report are complete without it.")


def background_volume(display_volume, result: AnalysisResult):
    """The slice views' background under the overlay: the chosen display volume, else the
    ADC map the overlay was computed on."""
    return display_volume if display_volume is not None else result.adc_node
