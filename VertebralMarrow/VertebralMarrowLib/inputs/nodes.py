"""DWI as Slicer's loaders leave it, resolved into one scalar volume per b-value.

- a sequence node of scalar volumes (Sequences module; Slicer's DICOM loader for a multi-frame
  DWI series), with its b-values from the index values when the index names a b-value, else
  from MultiVolume.FrameLabels on the sequence or its volumes (MultiVolumeImporter);
- a MultiVolume node (one voxel component per frame, FrameLabels);
- a diffusion-weighted volume node (one component per gradient, its own b-values);
- single volumes with their b-values in their names ("DWI b=800", "dwi_b0800");
- or b-values typed by the user.
Expansions are cached per node and modification time: the panel asks on every change.
No Qt, no slicer.app: nodes in, nodes and numbers out.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import slicer

from ..errors import InputError
from ..mrml import array_of, ijk_to_ras_of, set_ijk_to_ras
from .study import parse_bvalues

# The b-values field may be empty: then the b-values come from the sequence's index values
# or from the volume names ("DWI b=800", "dwi_b0800", "b800").
_BVALUE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])b\s*[=_-]?\s*(\d+(?:\.\d+)?)(?![0-9.])", re.IGNORECASE)
_BVALUE_INDEX_NAMES = ("b-value", "bvalue", "b value", "b_value", "diffusionbvalue")
_BVALUE_INDEX_UNITS = ("s/mm2", "s/mm^2", "s/mm²", "s mm-2")


def dwi_inputs(sequence=None, volumes: Sequence = (), bvalues_text: str = "") -> Tuple[list, List[float], str]:
    """DWI volume nodes, their b-values (s/mm^2) and where the b-values came from.

    `sequence`: a sequence node of scalar volumes; `volumes`: scalar volume nodes (one per
    b-value) and/or diffusion-weighted volume nodes (expanded into one volume per gradient,
    with their own b-values). b-values come from `bvalues_text` ("0,50,400,800", in the order
    of the volumes) when it is not empty, else from the sequence's index values when they are
    b-values, else from the volume names.
    """
    volumes = [node for node in (volumes or ()) if node is not None]
    if sequence is not None and volumes:
        raise InputError("select either a DWI sequence or DWI volumes, not both")
    text = (bvalues_text or "").strip()
    if sequence is not None:
        nodes = [sequence.GetNthDataNode(i) for i in range(sequence.GetNumberOfDataNodes())]
        bad = [node.GetClassName() for node in nodes if node is None or not node.IsA("vtkMRMLScalarVolumeNode")]
        if bad:
            raise InputError(f"DWI sequence '{sequence.GetName()}' holds {bad[0]} items; it must hold scalar volumes")
        own, source = _sequence_bvalues(sequence), f"the index values of sequence '{sequence.GetName()}'"
    else:
        nodes, own = [], []
        for node in volumes:
            if node.IsA("vtkMRMLDiffusionWeightedVolumeNode") or _frame_labels(node) is not None:
                expanded, values = expanded_frames(node)
                nodes += expanded
                own += values
            else:
                nodes.append(node)
                own.append(None)
        source = "the diffusion-weighted or multi-volume node"
    if len(nodes) < 2:
        raise InputError(f"an ADC fit needs DWI at two or more b-values; {len(nodes)} volume(s) selected")
    if text:
        values = parse_bvalues(text)
        if len(values) != len(nodes):
            raise InputError(
                f"{len(nodes)} DWI volumes but {len(values)} b-values in '{text}'; give one b-value per volume, "
                f"in the order {', '.join(node.GetName() for node in nodes)}"
            )
        return nodes, values, "the b-values field"
    if own and all(value is not None for value in own):
        return nodes, [float(v) for v in own], source
    named = [bvalue_from_name(node.GetName()) for node in nodes]
    if all(value is not None for value in named):
        return nodes, named, "the volume names"
    missing = [node.GetName() for node, value in zip(nodes, named) if value is None]
    raise InputError(
        f"no b-value for DWI volume(s) {', '.join(missing)}: type the b-values (e.g. 0,50,400,800) in the order "
        f"{', '.join(node.GetName() for node in nodes)}"
    )


def bvalue_from_name(name: str) -> Optional[float]:
    """The b-value a volume's name carries ('DWI b=800', 'dwi_b0800', 'B800'), else None."""
    found = _BVALUE_IN_NAME.findall(name or "")
    return float(found[-1]) if len(found) >= 1 else None


def _sequence_bvalues(sequence) -> List[Optional[float]]:
    name = (sequence.GetIndexName() or "").strip().lower()
    unit = (sequence.GetIndexUnit() or "").strip().lower().replace(" ", "")
    says_b = any(key in name for key in _BVALUE_INDEX_NAMES) or unit in _BVALUE_INDEX_UNITS
    count = sequence.GetNumberOfDataNodes()
    if not says_b:
        # Slicer's DICOM loader (MultiVolumeImporter) leaves the index name empty and keeps
        # the b-values as MultiVolume.FrameLabels on the sequence or its volumes.
        labels = _frame_labels(sequence)
        if labels is None and count:
            labels = _frame_labels(sequence.GetNthDataNode(0))
        return labels if labels is not None and len(labels) == count else [None] * count
    values = []
    for i in range(count):
        try:
            values.append(float(sequence.GetNthIndexValue(i)))
        except ValueError:
            values.append(None)
    return values


# MultiVolumeImporter's attributes (Slicer's DICOM loader for multi-frame series): the frame
# labels, and the DICOM tag that tells the frames apart (a b-value tag for DWI).
FRAME_LABELS_ATTRIBUTE = "MultiVolume.FrameLabels"
FRAME_TAG_ATTRIBUTE = "MultiVolume.FrameIdentifyingDICOMTagName"
_NOT_BVALUE_TAGS = ("triggertime", "echotime", "acquisitiontime", "contenttime", "flipangle", "repetitiontime",
                    "inversiontime", "temporalposition", "time")


def _frame_labels(node) -> Optional[List[float]]:
    """The b-values a node's MultiVolume.FrameLabels attribute holds, or None (no such
    attribute, labels that are not numbers, or frames told apart by a tag that is not a
    b-value, e.g. a DCE series' trigger time)."""
    if node is None:
        return None
    text = node.GetAttribute(FRAME_LABELS_ATTRIBUTE)
    if not text:
        return None
    tag = (node.GetAttribute(FRAME_TAG_ATTRIBUTE) or "").replace(" ", "").replace("_", "").lower()
    if tag and "bvalue" not in tag and tag in _NOT_BVALUE_TAGS:
        return None
    try:
        return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        return None


# Expanded frames by node and modification times: the panel asks for the DWI summary on every
# parameter change, and expanding a whole-body DWI takes about a second.
_EXPANDED: Dict[tuple, Tuple[list, List[float]]] = {}


def expanded_frames(node) -> Tuple[list, List[float]]:
    """One scalar volume per frame of a diffusion-weighted volume node or a MultiVolume node
    (a volume whose voxels have one component per frame and MultiVolume.FrameLabels), with
    their b-values; the same nodes again while the node and its voxels are unchanged."""
    image = node.GetImageData()
    key = (node.GetID() or str(id(node)), node.GetMTime(), image.GetMTime() if image is not None else 0)
    if key not in _EXPANDED:
        if len(_EXPANDED) > 8:
            _EXPANDED.clear()
        if node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
            _EXPANDED[key] = _expand_diffusion_weighted(node)
        else:
            _EXPANDED[key] = _expand_multivolume(node)
    return _EXPANDED[key]


def _expand_multivolume(node) -> Tuple[list, List[float]]:
    values = _frame_labels(node)
    array = _voxels_with_components(node)
    if array.ndim != 4 or values is None or array.shape[-1] != len(values):
        raise InputError(f"multi-volume '{node.GetName()}' has {len(values or [])} frame labels but its voxels "
                         f"do not have one component per frame")
    return _frame_volumes(node, array, values), values


def _voxels_with_components(node) -> np.ndarray:
    """(k, j, i, component) voxels of a volume whose voxels have several components (a
    MultiVolume node; slicer.util.arrayFromVolume reads those only under their own class)."""
    from vtk.util.numpy_support import vtk_to_numpy

    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"multi-volume '{node.GetName()}' has no voxels")
    shape = tuple(reversed(image.GetDimensions())) + (image.GetNumberOfScalarComponents(),)
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _frame_volumes(node, array, values) -> list:
    grid = ijk_to_ras_of(node)
    volumes = []
    for index, value in enumerate(values):
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetName(f"{node.GetName()} b={value:g} #{index}")
        set_ijk_to_ras(volume, grid)
        slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(array[..., index]))
        volumes.append(volume)
    return volumes


def _expand_diffusion_weighted(node) -> Tuple[list, List[float]]:
    """One scalar volume per gradient of a diffusion-weighted volume node (outside any
    scene: only their voxels and geometry are used), with the node's b-values."""
    array = array_of(node)
    count = node.GetNumberOfGradients()
    if array.ndim != 4 or array.shape[-1] != count:
        raise InputError(f"diffusion-weighted volume '{node.GetName()}' has {count} gradients but its voxels do not match")
    values = [float(node.GetBValue(index)) for index in range(count)]
    return _frame_volumes(node, array, values), values
