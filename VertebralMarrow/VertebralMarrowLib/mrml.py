"""MRML glue, in one place: the headless scene, files into nodes, nodes into arrays, and
segments onto each volume's own grid with Slicer's segmentation logic.

Inside Slicer the module passes Slicer's own scene and nodes; outside it `new_scene()` builds
a scene the way Slicer's application does. Nothing here changes an input node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import slicer
import slicer.util
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .inputs.validate import ROLES, check_grid_size, check_image, check_labels, check_unique_names, read_text
from .inputs.dwi_files import ijk_to_ras_of_sitk

ROLE_TAG = "VertebralMarrow.Role"


# --- the headless scene -------------------------------------------------------------------


@dataclass
class HeadlessApp:
    """A scene with the logics Slicer's application would give it."""

    scene: "slicer.vtkMRMLScene"
    app_logic: "slicer.vtkSlicerApplicationLogic"
    segmentations_logic: "slicer.vtkSlicerSegmentationsModuleLogic"


def new_scene() -> HeadlessApp:
    """An MRML scene built as Slicer builds its own: application logic, color logic with the
    default color nodes, and the segmentations logic registered (without it segment
    representation converters are missing and conversions silently give empty results)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    _set_scene_once_registered(segmentations_logic, scene)
    segmentations_logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations_logic)
    return HeadlessApp(scene, app_logic, segmentations_logic)


# --- files into nodes ---------------------------------------------------------------------


def _read_into(scene, node, storage_node, path: Path, what: str):
    storage_node.SetFileName(str(path))
    scene.AddNode(storage_node)
    node.SetName(_node_name(path))
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage_node.GetID())
    if not storage_node.ReadData(node) or (hasattr(node, "GetImageData") and node.GetImageData() is None):
        scene.RemoveNode(node)
        scene.RemoveNode(storage_node)
        return None
    return node


def _node_name(path: Path) -> str:
    name = Path(path).name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def load_volume(scene, path, what: str = "volume", labelmap: bool = False):
    """A scalar (or labelmap) volume node read from NRRD, NIfTI or MHA, keeping the file's
    origin, spacing and direction. SimpleITK is the fallback reader. The file is checked
    first (complete, 3-D scalar, spacing in mm; a labelmap's label range), so that no native
    reader meets a file that would abort the process."""
    path = Path(path)
    check_image(path, what, "labelmap" if labelmap else "volume")
    node_class = slicer.vtkMRMLLabelMapVolumeNode if labelmap else slicer.vtkMRMLScalarVolumeNode
    node = _read_into(scene, node_class(), slicer.vtkMRMLVolumeArchetypeStorageNode(), path, what)
    if node is None or node.GetImageData().GetNumberOfScalarComponents() != 1:
        if node is not None:
            scene.RemoveNode(node)
        array_kji, ijk_to_ras = _read_sitk(path, what)
        if array_kji.ndim != 3:
            raise InputError(f"{what} {path} is {array_kji.ndim}-D; a 3-D volume is needed here")
        node = volume_from_array(scene, array_kji, ijk_to_ras, _node_name(path), labelmap=labelmap)
    if labelmap:
        check_labels(slicer.util.arrayFromVolume(node), path, what)
    return node


def read_image_sitk(path, what: str = "image") -> Tuple[np.ndarray, np.ndarray]:
    """Array (k, j, i[, component]) and IJK-to-RAS matrix of a 3-D or 4-D scalar image
    SimpleITK reads, checked first. A 4-D image's fourth axis comes last in the array."""
    check_image(path, what, "dwi")
    return _read_sitk(Path(path), what)


def _read_sitk(path: Path, what: str) -> Tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {what} {path}: {str(exc).strip().splitlines()[-1]}") from None
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 4:
        array = np.moveaxis(array, 0, -1)  # (t, k, j, i) -> (k, j, i, t)
    ijk_to_ras = ijk_to_ras_of_sitk(image)
    return array, ijk_to_ras


def load_segmentation(scene, app: Optional[HeadlessApp], path, label_names: Optional[Path] = None):
    """A segmentation node from a `.seg.nrrd`, or from a labelmap whose names come from a
    Slicer color-table file (labels without a name become `label_N`)."""
    path = Path(path)
    if str(path).lower().endswith(".seg.nrrd"):
        check_image(path, "segmentation", "segmentation")
        node = _read_into(scene, slicer.vtkMRMLSegmentationNode(), slicer.vtkMRMLSegmentationStorageNode(), path, "segmentation")
        if node is None:
            raise InputError(f"cannot read segmentation {path}: not a Slicer .seg.nrrd")
        node.CreateDefaultDisplayNodes()
    else:
        labelmap = load_volume(scene, path, "segmentation labelmap", labelmap=True)
        names = read_label_names(label_names) if label_names else {}
        node = segmentation_from_labelmap(scene, app, labelmap, names, _node_name(path))
        scene.RemoveNode(labelmap)
    if node.GetSegmentation().GetNumberOfSegments() == 0:
        raise InputError(f"segmentation {path} has no segments")
    check_unique_names([segment_name(node, sid) for sid in segment_ids(node)], f"segmentation {path}")
    return node


def read_label_names(path) -> Dict[int, str]:
    """Label value -> name from a Slicer color-table text file (`value name r g b a`).

    Read as Slicer's own color-table reader does (an underscore in a name stands for a space:
    `L3_normal` is 'L3 normal'), and also keeping a name written with spaces whole (Slicer's
    reader would cut 'L3 normal' to 'L3', and the segment would lose its reference role)."""
    names: Dict[int, str] = {}
    for number, line in enumerate(read_text(path, "label names file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        colour = parts[-4:] if len(parts) >= 6 else []
        name_parts = parts[1:-4] if colour else parts[1:2]
        try:
            value = int(parts[0])
            [float(c) for c in colour]
        except (ValueError, IndexError):
            value = None
        if value is None or not name_parts:
            raise InputError(f"label names file {path} line {number}: expected 'value name r g b a' "
                             f"separated by spaces, got '{line[:60]}'")
        if value in names:
            raise InputError(f"label names file {path} line {number}: label {value} is named twice")
        names[value] = " ".join(name_parts).replace("_", " ")
    check_unique_names(list(names.values()), f"label names file {path}")
    return names


def segmentation_from_labelmap(scene, app: Optional[HeadlessApp], labelmap_node, names: Dict[int, str], name: str):
    """Segments from the labels of a labelmap node, named from `names` or `label_N`."""
    if not np.any(slicer.util.arrayFromVolume(labelmap_node)):
        raise InputError(f"segmentation labelmap '{name}' has no labels (all voxels are 0)")
    segmentation_node = slicer.vtkMRMLSegmentationNode()
    segmentation_node.SetName(name)
    scene.AddNode(segmentation_node)
    segmentation_node.CreateDefaultDisplayNodes()
    if not _segmentations_logic(scene, app).ImportLabelmapToSegmentationNode(labelmap_node, segmentation_node):
        raise InputError(f"cannot turn labelmap '{name}' into segments")
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = segment.GetLabelValue()  # the import keeps each label's value
        segment.SetName(names.get(value, f"label_{value}"))
    return segmentation_node


def _segmentations_logic(scene, app: Optional[HeadlessApp]):
    if app is not None:
        return app.segmentations_logic
    # Inside Slicer the registered logic is the one to use; the module passes it as `app`.
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    _set_scene_once_registered(logic, scene)
    return logic


def _set_scene_once_registered(logic, scene) -> None:
    """Give a segmentations logic its scene without adding its converter rules a second time
    to the process-wide converter factory (each logic registers them all again; every
    conversion would then weigh duplicate paths)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    before = list(factory.GetConverterRules())
    classes = {rule.GetClassName() for rule in before}
    logic.SetMRMLScene(scene)
    for rule in list(factory.GetConverterRules()):
        if rule.GetClassName() in classes and not any(rule is old for old in before):
            factory.UnregisterConverterRule(rule)


# --- arrays and geometry ------------------------------------------------------------------


def ijk_to_ras_of(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def voxel_volume_mm3(volume_node) -> float:
    return float(np.prod(volume_node.GetSpacing()))


def array_of(volume_node) -> np.ndarray:
    """The voxel array (k, j, i) of a volume node, as a view (do not write into it)."""
    return slicer.util.arrayFromVolume(volume_node)


def volume_from_array(scene, array_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str, labelmap: bool = False):
    """A new volume node holding `array_kji` on the grid `ijk_to_ras`."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    set_ijk_to_ras(node, ijk_to_ras)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    node.CreateDefaultDisplayNodes()
    return node


def set_ijk_to_ras(node, ijk_to_ras: np.ndarray) -> None:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(matrix)


def is_integer_volume(volume_node) -> bool:
    return volume_node.GetImageData().GetScalarType() not in (vtk.VTK_FLOAT, vtk.VTK_DOUBLE)


# --- segments -----------------------------------------------------------------------------


def segment_ids(segmentation_node) -> List[str]:
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def segment_name(segmentation_node, segment_id: str) -> str:
    return segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()


def default_role(name: str) -> str:
    """The role a segment's name suggests: 'L3 normal' is a reference, 'T12/L1 disc' a disc."""
    lower = name.lower()
    if "normal" in lower or "reference" in lower:
        return "reference"
    if "disc" in lower or "disk" in lower:
        return "disc"
    if "muscle" in lower or "psoas" in lower or "paraspinal" in lower:
        return "muscle"
    return "lesion"


def get_segment_role(segmentation_node, segment_id: str) -> str:
    """The role stored on the segment (a segment tag, saved with the scene), else from its name."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.mutable("")
    if segment.GetTag(ROLE_TAG, value) and str(value) in ROLES:
        return str(value)
    return default_role(segment.GetName())


def set_segment_role(segmentation_node, segment_id: str, role: str) -> None:
    if role not in ROLES:
        raise InputError(f"segment role '{role}' unknown; use one of {', '.join(ROLES)}")
    segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(ROLE_TAG, role)


LEVELS_TAG = "VertebralMarrow.LevelsInvolved"
DISC_TAG = "VertebralMarrow.DiscDestroyed"


def get_segment_spread(segmentation_node, segment_id: str) -> Tuple[Optional[int], Optional[bool]]:
    """What the user recorded on the segment: vertebral levels involved, disc destroyed
    (pyogenic) or spared (tuberculous). (None, None) when not recorded."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    levels, disc = vtk.mutable(""), vtk.mutable("")
    levels_value = int(str(levels)) if segment.GetTag(LEVELS_TAG, levels) and str(levels).isdigit() else None
    disc_value = {"yes": True, "no": False}.get(str(disc)) if segment.GetTag(DISC_TAG, disc) else None
    return levels_value, disc_value


def set_segment_spread(segmentation_node, segment_id: str, levels: Optional[int], disc_destroyed: Optional[bool]) -> None:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if levels is not None:
        if int(levels) < 1:
            raise InputError(f"levels involved must be 1 or more, not {levels}")
        segment.SetTag(LEVELS_TAG, str(int(levels)))
    if disc_destroyed is not None:
        segment.SetTag(DISC_TAG, "yes" if disc_destroyed else "no")


@dataclass
class SegmentsOnGrid:
    """Segments resampled onto one volume's grid. `labels` holds, per overlap layer, an array
    (k, j, i) whose value v > 0 means segment `ids_per_layer[layer][v - 1]`."""

    labels: List[np.ndarray]
    ids_per_layer: List[List[str]]
    outside_fraction: Dict[str, float]


def segments_on_grid(scene, app: Optional[HeadlessApp], segmentation_node, ids: Sequence[str], volume_node,
                     with_outside: bool = True) -> SegmentsOnGrid:
    """Export segments onto `volume_node`'s own grid (origin, spacing, direction and parent
    transforms) as Slicer's segmentation logic does, one labelmap per overlap layer so that
    overlapping segments each keep all their voxels; and (`with_outside`) the fraction of each
    segment lying outside the volume."""
    logic = _segmentations_logic(scene, app)
    segmentation = segmentation_node.GetSegmentation()
    _check_export_size(segmentation_node, volume_node)
    segmentation.CreateRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    wanted = set(ids)
    layers: List[List[str]] = []
    for layer in range(segmentation.GetNumberOfLayers()):
        in_layer = [sid for sid in segmentation.GetSegmentIDsForLayer(layer) if sid in wanted]
        if in_layer:
            layers.append(sorted(in_layer, key=list(ids).index))
    same_space = segmentation_node.GetParentTransformNode() is volume_node.GetParentTransformNode()
    labels = [_layer_on_grid(segmentation, layer_ids, volume_node) if same_space
              else _export_with_logic(scene, logic, segmentation_node, layer_ids, volume_node)
              for layer_ids in layers]
    outside = _fractions_outside(segmentation_node, ids, volume_node) if with_outside else {}
    return SegmentsOnGrid(labels, layers, outside)


def _layer_on_grid(segmentation, layer_ids: List[str], volume_node) -> np.ndarray:
    """The segments `layer_ids` of one shared labelmap layer on the volume's grid: the layer
    resampled once (nearest neighbour, Slicer's own vtkOrientedImageDataResample), then its
    label values mapped to 1..n. Slicer's export resamples the whole layer once per segment;
    the voxels are the same (Testing/test_quantification.py compares the two)."""
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    shape_kji = array_of(volume_node).shape
    out = np.zeros(shape_kji, np.int16)
    layer = segmentation.GetSegment(layer_ids[0]).GetRepresentation(name)
    if layer is None or layer.IsEmpty():
        return out
    volume_ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(volume_ijk_to_ras)
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, shape_kji[2] - 1, 0, shape_kji[1] - 1, 0, shape_kji[0] - 1)
    reference.SetGeometryFromImageToWorldMatrix(volume_ijk_to_ras)
    on_grid = layer
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(reference, layer):
        on_grid = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceGeometry(layer, volume_ijk_to_ras, on_grid)
    extent = on_grid.GetExtent()
    low = np.array(extent[0::2])
    high = np.array(extent[1::2])
    if np.any(high < low):
        return out
    values = numpy_support.vtk_to_numpy(on_grid.GetPointData().GetScalars()).reshape(tuple((high - low + 1)[::-1]))
    label_values = [segmentation.GetSegment(sid).GetLabelValue() for sid in layer_ids]
    lookup = np.zeros(max(int(values.max()), *label_values) + 1, np.int16)
    for index, value in enumerate(label_values, 1):
        lookup[value] = index
    # the part of the resampled layer that lies on the volume's extent
    start = np.maximum(low, 0)
    stop = np.minimum(high, np.array(shape_kji[::-1]) - 1) + 1
    if np.any(stop <= start):
        return out
    inside = tuple(slice(a, b) for a, b in zip((start - low)[::-1], (stop - low)[::-1]))
    target = tuple(slice(a, b) for a, b in zip(start[::-1], stop[::-1]))
    out[target] = lookup[np.clip(values[inside], 0, None)]
    return out


def _export_with_logic(scene, logic, segmentation_node, layer_ids: List[str], volume_node) -> np.ndarray:
    """The segments of one layer exported by Slicer's segmentation logic, which also maps the
    segmentation through the transforms between it and the volume."""
    id_array = vtk.vtkStringArray()
    for sid in layer_ids:
        id_array.InsertNextValue(sid)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    try:
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, id_array, labelmap, volume_node):
            raise InputError(f"cannot export segments of '{segmentation_node.GetName()}' onto '{volume_node.GetName()}'")
        return np.array(slicer.util.arrayFromVolume(labelmap))
    finally:
        remove_with_helpers(scene, labelmap, colors=True)  # the export made its colour table


def segment_fractions_on_grid(scene, app: Optional[HeadlessApp], segmentation_node, segment_id: str, volume_node,
                              factor: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """The fraction of each of `volume_node`'s voxels that a segment covers, for ROIs too small
    for voxel centres: the segment is exported (Slicer's segmentation logic, as
    segments_on_grid) onto a grid refined `factor` times per axis over the segment's bounding
    box, and the fine voxels are counted per coarse voxel. Returns (flat indices into the
    volume's (k, j, i) array, fractions 0-1) of the voxels it touches."""
    shape_kji = array_of(volume_node).shape
    bounds = [0.0] * 6
    segmentation_node.GetSegmentation().GetSegment(segment_id).GetBounds(bounds)
    if bounds[0] > bounds[1]:
        return np.zeros(0, np.int64), np.zeros(0)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]).T
    coarse = np.linalg.inv(ijk_to_ras_of(volume_node)) @ _transform_between(segmentation_node, volume_node, corners)
    size_ijk = np.array(shape_kji[::-1])
    low = np.clip(np.floor(coarse[:3].min(axis=1)).astype(int) - 1, 0, size_ijk - 1)
    high = np.clip(np.ceil(coarse[:3].max(axis=1)).astype(int) + 1, 0, size_ijk - 1)
    if np.any(coarse[:3].max(axis=1) < -0.5) or np.any(coarse[:3].min(axis=1) > size_ijk - 0.5):
        return np.zeros(0, np.int64), np.zeros(0)
    count = high - low + 1
    # Fine voxel f along an axis has its centre at coarse index low + (f + 0.5) / factor - 0.5.
    fine_to_coarse = np.eye(4)
    fine_to_coarse[:3, :3] /= factor
    fine_to_coarse[:3, 3] = low + 0.5 / factor - 0.5
    fine = volume_from_array(scene, np.zeros(tuple(count[::-1] * factor), np.uint8),
                             ijk_to_ras_of(volume_node) @ fine_to_coarse, "VertebralMarrow supersampled grid")
    fine.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    try:
        on_fine = segments_on_grid(scene, app, segmentation_node, [segment_id], fine).labels
    finally:
        remove_with_helpers(scene, fine)
    if not on_fine:
        return np.zeros(0, np.int64), np.zeros(0)
    blocks = (on_fine[0] > 0).reshape(count[2], factor, count[1], factor, count[0], factor)
    fractions = blocks.mean(axis=(1, 3, 5))
    k, j, i = np.nonzero(fractions)
    flat = np.ravel_multi_index((k + low[2], j + low[1], i + low[0]), shape_kji)
    return flat.astype(np.int64), fractions[k, j, i]


def _check_export_size(segmentation_node, volume_node) -> None:
    """The export allocates the segments' bounding box at the volume's spacing: bound it
    first, since ITK/VTK end the process on an allocation failure."""
    bounds = np.zeros(6)
    segmentation_node.GetRASBounds(bounds)
    extent_mm = np.maximum(bounds[1::2] - bounds[0::2], 0.0)
    spacing = np.abs(np.asarray(volume_node.GetSpacing(), float))
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputError(f"volume '{volume_node.GetName()}' has voxel spacing {tuple(spacing)}; it must be positive")
    voxels = float(np.prod(extent_mm / spacing + 1.0))
    check_grid_size(voxels, f"the segments of '{segmentation_node.GetName()}' on the grid of '{volume_node.GetName()}'")


def removed_if_it_fails(scene, run: Callable[[list], object]):
    """`run(made)` and its result; the nodes it adds to `made` (as it adds them to the scene)
    are removed again, with their helpers, if it stops half-way: an error or a cancel leaves
    the user's scene as it was."""
    made: list = []
    try:
        return run(made)
    except BaseException:
        for node in reversed(made):
            if node is not None and node.GetScene() is scene:
                remove_with_helpers(scene, node)
        raise


def remove_with_helpers(scene, node, colors: bool = False) -> None:
    """Remove a node the library made, then its display and storage nodes (and, with `colors`,
    the colour tables its displays were given, but never a shared default one). The node goes
    first: a slice view still showing a volume gives it a new display node when its own goes."""
    displays = [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())] \
        if hasattr(node, "GetNumberOfDisplayNodes") else []
    helpers = displays + [node.GetStorageNode() if hasattr(node, "GetStorageNode") else None]
    if colors:
        helpers += [d.GetColorNode() for d in displays if d is not None and hasattr(d, "GetColorNode")]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is scene and not helper.GetSingletonTag():
            scene.RemoveNode(helper)


def _fractions_outside(segmentation_node, ids: Sequence[str], volume_node) -> Dict[str, float]:
    """Per segment, the fraction of its own voxels whose centres fall outside the volume's
    extent. Segments of one layer share one labelmap: each is scanned and mapped once."""
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    by_image: Dict[int, Tuple[object, List[str]]] = {}
    fractions: Dict[str, float] = {}
    for sid in ids:
        image = segmentation.GetSegment(sid).GetRepresentation(name)
        if image is None or image.GetPointData().GetScalars() is None:
            fractions[sid] = 0.0  # a surface-only segment: unknown here; an empty export still raises
            continue
        by_image.setdefault(id(image), (image, []))[1].append(sid)
    to_volume_ijk = np.linalg.inv(ijk_to_ras_of(volume_node))
    shape_kji = array_of(volume_node).shape
    for image, members in by_image.values():
        extent = image.GetExtent()
        dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        if min(dims) <= 0:
            fractions.update({sid: 1.0 for sid in members})
            continue
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
        wanted = np.array([segmentation.GetSegment(sid).GetLabelValue() for sid in members])
        flat = np.flatnonzero(np.isin(values, wanted))
        labels = values.ravel()[flat]
        k, j, i = np.unravel_index(flat, values.shape)
        image_to_world = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(image_to_world)
        seg_ijk_to_ras = np.array([[image_to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
        points = np.vstack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)]).astype(float)
        world = _transform_between(segmentation_node, volume_node, seg_ijk_to_ras @ points)
        target_ijk = to_volume_ijk @ world
        inside = np.ones(points.shape[1], bool)
        for axis, size in enumerate(shape_kji[::-1]):
            inside &= (target_ijk[axis] > -0.5) & (target_ijk[axis] < size - 0.5)
        for sid, value in zip(members, wanted):
            mine = labels == value
            count = int(mine.sum())
            fractions[sid] = float(1.0 - inside[mine].sum() / count) if count else 1.0
    return fractions


def _transform_between(segmentation_node, volume_node, points_ras: np.ndarray) -> np.ndarray:
    """Points in the segmentation's coordinates mapped into the volume's (parent transforms)."""
    if segmentation_node.GetParentTransformNode() is None and volume_node.GetParentTransformNode() is None:
        return points_ras
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        segmentation_node.GetParentTransformNode(), volume_node.GetParentTransformNode(), transform
    )
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_ras[:3].T), deep=True))
    target = vtk.vtkPoints()
    transform.TransformPoints(source, target)
    out = np.ones_like(points_ras, dtype=float)
    out[:3] = numpy_support.vtk_to_numpy(target.GetData()).T
    return out


def write_node(scene, node, path) -> None:
    """Write a data node with a storage node of its kind (NRRD, .seg.nrrd, .ctbl, .tsv)."""
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(os.fspath(path))
    if not storage.WriteData(node):
        raise InputError(f"cannot write {node.GetName()} to {path}")
