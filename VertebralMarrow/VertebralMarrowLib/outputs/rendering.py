"""Slice snapshots drawn by MRML's own slice logic, and each ROI's voxels on the ADC grid.

The slice logic blends the background volume and the colour-coded overlay on the CPU without
OpenGL, so each view holds the pixels Slicer's slice view would show; the ROI outlines and a
scale bar are painted over them with numpy, and the views are written once as PNG (write_png:
zlib, no filter): milliseconds per lesion, no plotting library (the text goes into the report).
"""

from __future__ import annotations

import itertools
import re
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import slicer
import vtk
from vtk.util import numpy_support

from ..core.classes import CLASSES, OUTSIDE, class_text
from ..mrml import ijk_to_ras_of, remove_with_helpers, segments_on_grid, volume_from_array
from .nodes import CLASS_COLORS

VIEW_PIXELS = 320          # each slice view is drawn at this size and pasted 1:1 into the PNG (0.375 mm per pixel)
FIELD_OF_VIEW_MM = 120.0   # about three vertebral levels around the lesion
LABEL_OPACITY = 0.5        # the overlay over the image, as a radiologist would set it to read both
ADC_WINDOW = (0.0, 3.0)    # 10^-3 mm^2/s: normal marrow dark, free water (CSF) white
SNAPSHOT_LAYOUT_NAME = "VertebralMarrowSnapshot"  # views of their own, never one of Slicer's views

# Layout of a snapshot PNG in pixels (shared with the tests through `view_boxes`).
MARGIN_PX = 16
GAP_PX = 12
HEADER_PX = 66
FOOTER_PX = 58

CLASS_OF_ROW = {c.key: c.code for c in CLASSES if c is not OUTSIDE}
REFERENCE_COLOR = "#1f9fd8"   # normal-marrow reference: a colour no class uses
OTHER_ROI_COLOR = "#7f7f7f"   # disc, muscle


@dataclass
class Picture:
    path: Optional[Path]  # PNG file in the output folder (None for an inline SVG)
    caption: str      # one line for the report
    kind: str         # 'snapshot' | 'histogram' | 'summary'
    segment: str = ''  # segment name for per-lesion pictures
    svg: str = ''     # inline SVG text, for pictures drawn as text


Progress = Optional[Callable[[float, str], None]]


# --- voxels of each ROI on the ADC grid ---------------------------------------------------


class RoiVoxels:
    """Every ROI's voxels on the ADC grid, from the analysis's own export of the segments and
    one pass over its labels: flat voxel indices grouped by segment."""

    def __init__(self, result):
        self.result = result
        self.ijk_to_ras = ijk_to_ras_of(result.adc_node)
        self.indices: Dict[str, np.ndarray] = {}
        on_adc = result.rois_on_adc
        for labels, layer_ids in zip(on_adc.labels, on_adc.ids_per_layer):
            flat = np.flatnonzero(labels)
            values = labels.ravel()[flat]
            order = np.argsort(values, kind="stable")
            present, starts = np.unique(values[order], return_index=True)
            for value, chunk in zip(present, np.split(flat[order], starts[1:])):
                self.indices[layer_ids[int(value) - 1]] = chunk

    def adc_values(self, segment_id: str) -> np.ndarray:
        values = self.result.adc_map.ravel()[self.indices.get(segment_id, np.zeros(0, int))]
        return values[np.isfinite(values)]

    def centre_ras(self, segment_id: str) -> np.ndarray:
        """Centroid (RAS) of the segment's classed overlay voxels (all its voxels if none are; the
        voxels it partly covers if it covers no voxel centre)."""
        flat = self.indices.get(segment_id, np.zeros(0, int))
        if flat.size == 0:
            flat = self.result.partial_voxels.get(segment_id, flat)
        classed = flat[self.result.overlay.ravel()[flat] > 0]
        flat = classed if classed.size else flat
        if flat.size == 0:
            return self.ijk_to_ras[:3, 3]
        k, j, i = np.unravel_index(flat, self.result.overlay.shape)
        ijk = np.vstack([i, j, k, np.ones_like(i)]).astype(float)
        return (self.ijk_to_ras @ ijk)[:3].mean(axis=1)


# --- slice views drawn by MRML's slice logic ----------------------------------------------


@dataclass
class View:
    """One drawn slice view: RGB pixels as Slicer shows them, top row first, and what lies
    under each pixel (overlay class; ROI outline label) to annotate and to test with."""

    rgb: np.ndarray            # (rows, columns, 3) uint8
    classes: np.ndarray        # (rows, columns) overlay class under each pixel
    rois: np.ndarray           # (rows, columns) outline label (0: none)
    roi_ids: Dict[int, str]    # outline label -> segment id
    orientation: str
    image: str                 # what the background is: 'T2', 'ADC', ...
    mm_per_pixel: float
    edge_letters: Tuple[str, str, str, str]  # left, right, top, bottom
    ras_to_pixel: np.ndarray   # 4x4: RAS -> (column, row from top)
    focus: str = ""            # segment id the view is centred on


_RENDERER_NUMBERS = itertools.count(1)


class SliceRenderer:
    """A slice logic of its own with a slice node kept out of the scene (so Slicer makes no
    view for it) and a slice composite node under its own layout name; everything it added to
    the scene is removed on exit, so the user's views and the saved scene are untouched."""

    def __init__(self, scene, overlay_node, pixels: int = VIEW_PIXELS):
        self.scene = scene
        self.overlay_node = overlay_node
        self.pixels = pixels
        self.outlines = None

    def __enter__(self) -> "SliceRenderer":
        _ensure_orientation_presets(self.scene)
        # The slice node is made by the scene (so it carries the orientation presets) but kept
        # out of it: in Slicer, every slice node added to the scene gets a view widget.
        self.slice_node = self.scene.CreateNodeByClass("vtkMRMLSliceNode")
        self.slice_node.UnRegister(None)  # CreateNodeByClass hands over a reference Python also holds
        # each renderer its own layout name: slice logics find their composite node by it
        layout_name = f"{SNAPSHOT_LAYOUT_NAME}{next(_RENDERER_NUMBERS)}"
        self.slice_node.SetName(layout_name)
        self.slice_node.SetLayoutName(layout_name)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLScene(self.scene)
        self.logic.SetSliceNode(self.slice_node)
        self.composite = self.logic.GetSliceCompositeNode()  # added to the scene under our layout name
        self.composite.SetLabelVolumeID(self.overlay_node.GetID() if self.overlay_node else None)
        self.composite.SetLabelOpacity(LABEL_OPACITY)
        self.logic.ResizeSliceNode(self.pixels, self.pixels)
        return self

    def __exit__(self, *exc) -> None:
        self.logic.DeleteSliceModel()  # the logic's 3-D slice model, transform and display nodes
        self.logic.SetMRMLScene(None)
        if self.composite is not None and self.composite.GetScene() is self.scene:
            self.scene.RemoveNode(self.composite)

    def set_outlines(self, outlines) -> None:
        """A labelmap of the ROIs, carried as the foreground layer at zero opacity: the slice
        logic then reslices it onto exactly the view's pixels, and nothing of it is blended."""
        self.outlines = outlines
        self.composite.SetForegroundVolumeID(outlines[0].GetID() if outlines else None)
        self.composite.SetForegroundOpacity(0.0)

    def render(self, background, orientation: str, centre_ras, focus: str = "", image: str = "",
               field_of_view_mm: float = FIELD_OF_VIEW_MM) -> View:
        if self.composite.GetBackgroundVolumeID() != background.GetID():
            self.composite.SetBackgroundVolumeID(background.GetID())
        if self.slice_node.GetOrientation() != orientation:
            self.slice_node.SetOrientation(orientation)
        self.slice_node.JumpSliceByCentering(*[float(v) for v in centre_ras])
        depth = self.slice_node.GetFieldOfView()[2]
        self.slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm, depth)
        connection = self.logic.GetImageDataConnection()
        connection.GetProducer().Update()
        rgba = np.array(_image_array(connection.GetProducer().GetOutputDataObject(0)))  # VTK reuses its buffer
        classes = _layer_values(self.logic.GetLabelLayer())
        rois = _layer_values(self.logic.GetForegroundLayer()) if self.outlines else np.zeros_like(classes)
        return View(
            rgb=rgba[::-1, :, :3], classes=classes[::-1], rois=rois[::-1],
            roi_ids=self.outlines[1] if self.outlines else {}, orientation=orientation, image=image,
            mm_per_pixel=field_of_view_mm / self.pixels, edge_letters=_edge_letters(self.slice_node),
            ras_to_pixel=_ras_to_pixel(self.slice_node, self.pixels), focus=focus,
        )


def _ensure_orientation_presets(scene) -> None:
    """Slice nodes take Axial/Sagittal/Coronal from the scene's default slice node; Slicer's
    application adds them, a bare scene has none."""
    default = scene.GetDefaultNodeByClass("vtkMRMLSliceNode")
    if default is None or not default.HasSliceOrientationPreset("Axial"):
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)


def _image_array(image) -> np.ndarray:
    columns, rows, _ = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return scalars.reshape(rows, columns, -1)


def _layer_values(layer) -> np.ndarray:
    """The layer's volume values resliced onto the view's pixels (bottom row first)."""
    reslice = layer.GetReslice()
    reslice.Update()
    return _image_array(reslice.GetOutput())[..., 0].copy()


def _edge_letters(slice_node) -> Tuple[str, str, str, str]:
    """Patient directions at the left, right, top and bottom edges of the view."""
    matrix = slice_node.GetSliceToRAS()

    def letter(column: int, sign: float) -> str:
        direction = [sign * matrix.GetElement(row, column) for row in range(3)]
        axis = int(np.argmax(np.abs(direction)))
        return ("LR", "PA", "IS")[axis][int(direction[axis] > 0)]

    return letter(0, -1.0), letter(0, 1.0), letter(1, 1.0), letter(1, -1.0)


def _ras_to_pixel(slice_node, pixels: int) -> np.ndarray:
    """RAS -> (column, row counted from the top) of the view's image."""
    xy_to_ras = np.array([[slice_node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, pixels - 1.0
    return flip @ np.linalg.inv(xy_to_ras)


@contextmanager
def one_vtk_thread():
    """VTK's image filters on one thread, as before afterwards: a 320-pixel view is too small
    for threads to pay (measured: a quarter less CPU, the same time), and the other core is
    left to the thread that writes the PNGs."""
    saved = vtk.vtkMultiThreader.GetGlobalMaximumNumberOfThreads()
    vtk.vtkMultiThreader.SetGlobalMaximumNumberOfThreads(1)
    try:
        yield
    finally:
        vtk.vtkMultiThreader.SetGlobalMaximumNumberOfThreads(saved)


@contextmanager
def _display_window(volume_node, window: Optional[Tuple[float, float]]):
    """A fixed display window for the snapshots, the user's own window restored afterwards."""
    if window is None:
        yield
        return
    if volume_node.GetDisplayNode() is None:  # as Slicer gives every loaded volume
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    saved = (display.GetAutoWindowLevel(), display.GetWindow(), display.GetLevel())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*window)
    try:
        yield
    finally:
        display.SetWindowLevel(saved[1], saved[2])
        display.SetAutoWindowLevel(saved[0])


@contextmanager
def roi_outlines(scene, segmentation, ids: Sequence[str], grid_node, on_grid=None):
    """A temporary labelmap of the ROIs `ids` on `grid_node`'s grid (the anatomical image,
    finer than the ADC map) and which segment each label is: for SliceRenderer.set_outlines.
    `on_grid`: the analysis's own export onto that grid, reused rather than redone."""
    if on_grid is None:
        on_grid = segments_on_grid(scene, None, segmentation, list(ids), grid_node, with_outside=False)
    wanted = set(ids)
    labels = np.zeros(on_grid.labels[0].shape, np.int16) if on_grid.labels else None
    roi_ids: Dict[int, str] = {}
    for layer_labels, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        # one pass per layer: its label values become outline codes through a lookup table
        lookup = np.zeros(len(layer_ids) + 1, np.int16)
        for value, sid in enumerate(layer_ids, 1):
            if sid in wanted:
                lookup[value] = len(roi_ids) + 1
                roi_ids[len(roi_ids) + 1] = sid
        codes = lookup[layer_labels]
        np.copyto(labels, codes, where=codes > 0)
    if labels is None:
        yield None
        return
    node = volume_from_array(scene, labels, ijk_to_ras_of(grid_node), "VertebralMarrow ROI outlines", labelmap=True)
    try:
        yield node, roi_ids
    finally:
        remove_with_helpers(scene, node)


def _anatomy_volume(study) -> Tuple[str, Optional[object]]:
    """The image radiologists read marrow lesions on: T2, else STIR, else T1."""
    for label, node in (("T2", study.t2), ("STIR", study.fs), ("T1", study.t1)):
        if node is not None:
            return label, node
    return "", None


def _backgrounds(study, result) -> List[Tuple[str, object, Optional[Tuple[float, float]]]]:
    """(label, volume, fixed window or None) of each snapshot set: anatomy, then ADC."""
    label, node = _anatomy_volume(study)
    sets = [(label, node, None)] if node is not None else []
    scale = result.adc_scale_to_1e3
    sets.append(("ADC", result.adc_node, (ADC_WINDOW[0] / scale, ADC_WINDOW[1] / scale)))
    return sets


# --- snapshot PNGs ------------------------------------------------------------------------


def view_boxes(count: int, pixels: int = VIEW_PIXELS, columns: int = 2) -> List[Tuple[int, int, int, int]]:
    """(left, top, right, bottom) pixel box of each view in a snapshot PNG, row by row."""
    boxes = []
    for n in range(count):
        left = MARGIN_PX + (n % columns) * (pixels + GAP_PX)
        top = HEADER_PX + (n // columns) * (pixels + GAP_PX)
        boxes.append((left, top, left + pixels, top + pixels))
    return boxes


def snapshot_size(count: int, pixels: int = VIEW_PIXELS, columns: int = 2) -> Tuple[int, int]:
    rows = -(-count // columns)
    return (2 * MARGIN_PX + columns * pixels + (columns - 1) * GAP_PX,
            HEADER_PX + rows * pixels + (rows - 1) * GAP_PX + FOOTER_PX)


def _roles(result) -> Dict[str, str]:
    return {d["id"]: d["role"] for d in result.segments}


def _image_words(image: str) -> str:
    return "the ADC map" if image == "ADC" else image


def _with_outlines(view: View, roles: Dict[str, str]) -> np.ndarray:
    """The view's pixels with each ROI's outline painted in: the lesion in view white and
    thicker, other lesions light grey, the normal-marrow reference dashed blue, others dotted.
    All ROIs at once, within the box around them: a pixel is on an outline where a
    4-neighbour belongs to another ROI (or to none)."""
    rgb = view.rgb.copy()
    rows_with, columns_with = np.flatnonzero(view.rois.any(axis=1)), np.flatnonzero(view.rois.any(axis=0))
    if rows_with.size == 0:
        return rgb
    box = (slice(rows_with[0], rows_with[-1] + 1), slice(columns_with[0], columns_with[-1] + 1))
    codes = view.rois[box]
    padded = np.pad(codes, 1)
    border = (codes > 0) & ((padded[:-2, 1:-1] != codes) | (padded[2:, 1:-1] != codes)
                            | (padded[1:-1, :-2] != codes) | (padded[1:-1, 2:] != codes))
    focus_code = next((code for code, sid in view.roi_ids.items() if sid == view.focus), None)
    if focus_code is not None:
        border |= _edge(codes == focus_code, 2)
    colors = np.zeros((int(codes.max()) + 1, 3), np.uint8)
    style = np.full(len(colors), -1, np.int8)  # 0 solid, 1 dashed, 2 dotted, -1 no ROI
    for code, sid in view.roi_ids.items():
        if code < len(colors):
            role = roles.get(sid, "lesion")
            colors[code] = _outline_color(role, code == focus_code)
            style[code] = 0 if role == "lesion" else 1 if role == "reference" else 2
    rows, columns = np.ogrid[box]
    style_here = style[codes]
    on = border & ((style_here == 0) | ((style_here == 1) & (((rows + columns) // 5) % 2 == 0))
                   | ((style_here == 2) & (((rows + columns) // 2) % 2 == 0)))
    rgb[box][on] = colors[codes[on]]
    return rgb


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border (4-neighbour erosion)."""
    inner = mask
    for _ in range(width):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _outline_color(role: str, focus: bool) -> Tuple[int, int, int]:
    if role == "reference":
        return _rgb255(REFERENCE_COLOR)
    if role != "lesion":
        return _rgb255(OTHER_ROI_COLOR)
    return (255, 255, 255) if focus else (200, 200, 200)


def write_views_png(views: List[View], path: Path, result) -> Path:
    """The views in the snapshot layout (view_boxes), outlines and scale bars painted in,
    written as PNG (write_png); the words that go with them are the report's."""
    pixels = views[0].rgb.shape[0]
    width, height = snapshot_size(len(views), pixels)
    canvas = np.full((height, width, 3), 255, np.uint8)
    roles = _roles(result)
    for view, (left, top, right, bottom) in zip(views, view_boxes(len(views), pixels)):
        canvas[top:bottom, left:right] = _with_outlines(view, roles)
        _scale_bar(canvas[top:bottom, left:right], view)
    return write_png(path, canvas)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """An RGB (rows from the top, columns, 3) uint8 image as PNG: every row "Up"-filtered (the
    difference from the row above, PNG filter type 2) and zlib's fastest level, about 8 ms for
    a snapshot where vtkPNGWriter's adaptive filters take 21; a quarter smaller than unfiltered."""
    height, width, _ = rgb.shape
    flat = rgb.reshape(height, -1)
    rows = np.empty((height, 1 + 3 * width), np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8: modulo 256, as PNG defines it

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                           + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b""))
    return Path(path)


def scale_bar_mm(view: View) -> float:
    return 20.0 if view.mm_per_pixel * view.rgb.shape[0] < 200 else 50.0


def _scale_bar(rgb: np.ndarray, view: View) -> None:
    """A white bar of scale_bar_mm near the view's lower right corner."""
    pixels = rgb.shape[0]
    length = int(round(scale_bar_mm(view) / view.mm_per_pixel))
    right, row = pixels - 16, pixels - 30
    rgb[row - 1:row + 2, max(right - length, 0):right] = 255


# --- small helpers ------------------------------------------------------------------------


def _rgb(value: int) -> Tuple[float, float, float]:
    return tuple(CLASS_COLORS[value][1][:3])


def _rgb255(hex_color: str) -> Tuple[int, int, int]:
    return tuple(int(hex_color[n:n + 2], 16) for n in (1, 3, 5))


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _row_class_text(row: dict, result) -> str:
    """A row's class in words with its bounds, from the class table (core/classes.py)."""
    options = result.options
    return class_text(row["adc_class"], options.adc_cutoff, options.indeterminate_band, options.marrow_max_or_none)


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "roi"


def _file_names(names: Sequence[str]) -> Dict[str, str]:
    """A safe, unique file-name part per segment name ('L2 lesion' -> '01_l2_lesion')."""
    return {name: f"{index:02d}_{_slug(name)[:40]}" for index, name in enumerate(names, 1)}
