"""A result as nodes: the results table (carrying the whole result document, so the panel's
differential survives a scene save and reload), class colours, overlay and continuous ADC
map, reusing the nodes of the previous run; and a private copy of study and result for export,
so writing the report folder never changes the user's scene."""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import numpy as np

import slicer
import vtk

from ..analysis import AnalysisResult, StudyNodes
from ..errors import InputError
from ..mrml import HeadlessApp, array_of, ijk_to_ras_of, new_scene, volume_from_array
from ..outputs.nodes import (
    ADC_COLORS_ATTRIBUTE,
    CLASS_COLORS_ATTRIBUTE,
    adc_color_node,
    adc_map_node,
    class_color_node,
    overlay_node,
)
from ..outputs.table import result_document, results_table_node
from .display import update_segment_colors

DOCUMENT_ATTRIBUTE = "VertebralMarrow.Result"      # on the results table: result_document() as JSON


@dataclasses.dataclass
class Published:
    table: object
    colors: object
    overlay: object
    adc_map: object = None
    adc_colors: object = None


def publish(scene, result: AnalysisResult, table=None, overlay=None, adc_map=None,
            segmentation=None, color_segments: bool = False) -> Published:
    """The result as nodes in `scene`: the results table (carrying the result document as a
    JSON attribute), the class color table, the overlay labelmap on the ADC grid, and the ADC
    map in 10^-3 mm^2/s with a continuous colour table centred on the cut-off. Nodes of a
    previous run (`table`, `overlay`, `adc_map`, the two color tables) are reused and updated.

    `segmentation` (the analysed one): with `color_segments` its lesion segments take their
    class colour, their own colours kept in a segment tag; without, segments coloured by an
    earlier run get their own colours back (see update_segment_colors)."""
    colors = class_color_node(scene, _class_colors(scene, overlay))
    table = results_table_node(scene, result, table)
    table.SetAttribute(DOCUMENT_ATTRIBUTE, json.dumps(result_document(result), default=_json_default))
    overlay = overlay_node(scene, result, colors, overlay)
    adc_colors = adc_color_node(scene, _tagged_color_node(scene, adc_map, ADC_COLORS_ATTRIBUTE))
    adc_map = adc_map_node(scene, result, adc_colors, _reusable_adc_map(adc_map, result))
    if segmentation is not None:
        update_segment_colors(segmentation, result, color_segments)
    return Published(table, colors, overlay, adc_map, adc_colors)


def _class_colors(scene, overlay):
    return _tagged_color_node(scene, overlay, CLASS_COLORS_ATTRIBUTE)


def _tagged_color_node(scene, volume, attribute: str):
    """The color table of an earlier run: the one `volume` shows, else the first in the scene
    carrying `attribute`; None when there is none (a new one is made)."""
    if volume is not None and volume.GetDisplayNode() is not None:
        color = volume.GetDisplayNode().GetColorNode()
        if color is not None and color.GetAttribute(attribute) == "1":
            return color
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(attribute) == "1":
            return node
    return None


def _reusable_adc_map(node, result: AnalysisResult):
    """The ADC map node to update: never the analysed ADC map itself (scanner or fitted) nor a
    labelmap; those get a new node beside them."""
    if node is None or node is result.adc_node or node.IsA("vtkMRMLLabelMapVolumeNode"):
        return None
    return node


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def result_from_table(table_node) -> Optional[dict]:
    """The result document a published table carries, or None (no table, or not ours)."""
    if table_node is None:
        return None
    text = table_node.GetAttribute(DOCUMENT_ATTRIBUTE)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def lesion_names(document: Optional[dict]) -> List[str]:
    """The lesion rows' segment names, in table order."""
    if not document:
        return []
    return [row["segment"] for row in document.get("rows", []) if row.get("role") == "lesion"]


def export_copy(study: StudyNodes, result: AnalysisResult) -> Tuple[HeadlessApp, StudyNodes, AnalysisResult]:
    """The study and result copied into a new headless scene, for writing the report folder:
    the export adds nodes, storage nodes and a scene URL, none of which may land in the
    user's scene. Linear parent transforms come along (one transform node per distinct
    transform to world); a non-linear one must be hardened first."""
    app = new_scene()
    scene = app.scene
    copies: Dict[str, object] = {}
    transforms: Dict[Tuple[float, ...], object] = {}

    def transform_for(node):
        parent = node.GetParentTransformNode()
        if parent is None:
            return None
        if not parent.IsTransformToWorldLinear():
            raise InputError(f"'{node.GetName()}' is under a non-linear transform; harden it before exporting the report")
        matrix = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(matrix)
        key = tuple(round(matrix.GetElement(r, c), 9) for r in range(4) for c in range(4))
        if key not in transforms:
            copy = slicer.vtkMRMLLinearTransformNode()
            copy.SetName(parent.GetName())
            scene.AddNode(copy)
            copy.SetMatrixTransformToParent(matrix)
            transforms[key] = copy
        return transforms[key]

    def copy_volume(node):
        if node is None:
            return None
        key = node.GetID() or str(id(node))
        if key not in copies:
            copy = volume_from_array(scene, np.array(array_of(node)), ijk_to_ras_of(node), node.GetName(),
                                     labelmap=node.IsA("vtkMRMLLabelMapVolumeNode"))
            for name in node.GetAttributeNames() or ():
                copy.SetAttribute(name, node.GetAttribute(name))
            transform = transform_for(node)
            if transform is not None:
                copy.SetAndObserveTransformNodeID(transform.GetID())
            copies[key] = copy
        return copies[key]

    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName(study.segmentation.GetName())
    scene.AddNode(segmentation)
    segmentation.GetSegmentation().DeepCopy(study.segmentation.GetSegmentation())
    segmentation.CreateDefaultDisplayNodes()
    transform = transform_for(study.segmentation)
    if transform is not None:
        segmentation.SetAndObserveTransformNodeID(transform.GetID())

    copied = StudyNodes(
        segmentation=segmentation,
        adc=copy_volume(study.adc),
        dwi=[copy_volume(node) for node in study.dwi],
        bvalues=list(study.bvalues),
        t1=copy_volume(study.t1), t2=copy_volume(study.t2), fs=copy_volume(study.fs), ct=copy_volume(study.ct),
        in_phase=copy_volume(study.in_phase), opposed_phase=copy_volume(study.opposed_phase),
        fat_fraction=copy_volume(study.fat_fraction),
        roles=dict(study.roles),
    )
    return app, copied, dataclasses.replace(result, adc_node=copy_volume(result.adc_node))
