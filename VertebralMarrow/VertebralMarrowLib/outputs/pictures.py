"""Pictures of one analysis: slice snapshots of the colour-coded overlay, ADC histograms and
the summary plot, as PNG files for the report and as plot chart nodes for Slicer.

Snapshots are drawn by MRML's own slice logic (background volume, label layer at half
opacity, blended on the CPU without OpenGL), so each view holds the pixels Slicer's slice view
would show; the ROI outlines are painted over them, and matplotlib adds the text and legend.
matplotlib is imported inside the functions that need it (Agg canvas, never pyplot) so that
importing this module is fast and never changes pyplot's backend inside Slicer.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import slicer
import vtk
from vtk.util import numpy_support

from ..mrml import array_of, ijk_to_ras_of, segments_on_grid, volume_from_array
from ..core.classes import BY_KEY, CLASSES, OUTSIDE, class_text, classify_adc
from .nodes import CLASS_COLORS

VIEW_PIXELS = 440          # each slice view is drawn at this size and pasted 1:1 into the PNG
FIELD_OF_VIEW_MM = 120.0   # about three vertebral levels around the lesion
LABEL_OPACITY = 0.5        # the overlay over the image, as a radiologist would set it to read both
ADC_WINDOW = (0.0, 3.0)    # 10^-3 mm^2/s: normal marrow dark, free water (CSF) white
SNAPSHOT_LAYOUT_NAME = "VertebralMarrowSnapshot"  # a view of its own, never one of Slicer's views

# Layout of a snapshot PNG in pixels (shared with the tests through `view_boxes`).
MARGIN_PX = 16
GAP_PX = 12
HEADER_PX = 66
FOOTER_PX = 58
DPI = 100

CLASS_OF_ROW = {c.key: c.code for c in CLASSES if c is not OUTSIDE}
REFERENCE_COLOR = "#1f9fd8"   # normal-marrow reference: a colour no class uses
OTHER_ROI_COLOR = "#7f7f7f"   # disc, muscle


@dataclass
class Picture:
    path: Path        # PNG file in the output folder
    caption: str      # one line for the report
    kind: str         # 'snapshot' | 'histogram' | 'summary'
    segment: str = ''  # segment name for per-lesion pictures


Progress = Optional[Callable[[float, str], None]]


# --- entry points -------------------------------------------------------------------------


def write_pictures(scene, study, result, overlay_node, out_dir, progress: Progress = None) -> List[Picture]:
    """An overview of all lesions; per lesion one snapshot (axial and sagittal through its
    centre, on T2 or STIR above and on the ADC map below) and its ADC histogram; the summary plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda fraction, text: None)
    rows = {row["segment"]: row for row in result.rows}
    lesions = [d for d in result.segments if d["role"] == "lesion"]
    voxels = RoiVoxels(result)
    names = _file_names([d["name"] for d in lesions])
    plotting = _matplotlib_available()
    pictures: List[Picture] = []

    report(0.0, "snapshots")
    outline_grid = _anatomy_volume(study)[1]
    outline_grid = outline_grid if outline_grid is not None else result.adc_node
    all_ids = [d["id"] for d in result.segments]
    with SliceRenderer(scene, overlay_node) as renderer, roi_outlines(scene, study.segmentation, all_ids, outline_grid) as outlines:
        renderer.set_outlines(outlines)
        backgrounds = _backgrounds(study, result)
        centres = {d["id"]: voxels.centre_ras(d["id"]) for d in lesions}
        if lesions:
            pictures.append(_overview(renderer, backgrounds[0], centres, result, out / "overview.png", plotting))
        for index, detail in enumerate(lesions):
            report(0.05 + 0.75 * index / max(len(lesions), 1), f"snapshots of {detail['name']}")
            views = []
            for label, node, window in backgrounds:
                with _display_window(node, window):
                    views += [renderer.render(node, orientation, centres[detail["id"]], detail["id"], label)
                              for orientation in ("Axial", "Sagittal")]
            path = out / f"snapshot_{names[detail['name']]}.png"
            images = [label for label, _, _ in backgrounds]
            pictures.append(_lesion_snapshot(views, images, rows[detail["name"]], result, path, plotting))

    if plotting:
        report(0.8, "ADC histograms")
        reference_adc = _reference_adc(result)
        for detail in lesions:
            values = voxels.adc_values(detail["id"])
            if values.size:  # a ROI without ADC voxel centres (no DWI signal, a small focus) has no histogram
                path = out / f"histogram_{names[detail['name']]}.png"
                pictures.append(write_histogram(values, rows[detail["name"]], result, reference_adc, path))
        report(0.95, "summary plot")
        pictures.append(write_summary_plot(result, out / "summary_adc.png"))
    report(1.0, "pictures written")
    return pictures


def plot_nodes(scene, result) -> list:
    """Plot chart nodes in the scene, each with its series over a table node: one ADC
    histogram per lesion with ADC voxel values and the summary of every ROI's mean ADC against the cut-off."""
    voxels = RoiVoxels(result)
    charts = []
    for detail in (d for d in result.segments if d["role"] == "lesion"):
        row = next(r for r in result.rows if r["segment"] == detail["name"])
        values = voxels.adc_values(detail["id"])
        if not values.size:
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
        self.slice_node.SetName(SNAPSHOT_LAYOUT_NAME)
        self.slice_node.SetLayoutName(SNAPSHOT_LAYOUT_NAME)
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
        self.composite.SetBackgroundVolumeID(background.GetID())
        self.slice_node.SetOrientation(orientation)
        self.slice_node.JumpSliceByCentering(*[float(v) for v in centre_ras])
        depth = self.slice_node.GetFieldOfView()[2]
        self.slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm, depth)
        connection = self.logic.GetImageDataConnection()
        connection.GetProducer().Update()
        rgba = _image_array(connection.GetProducer().GetOutputDataObject(0))
        classes = _layer_values(self.logic.GetLabelLayer())
        rois = _layer_values(self.logic.GetForegroundLayer()) if self.outlines else np.zeros_like(classes)
        return View(
            rgb=np.ascontiguousarray(rgba[::-1, :, :3]), classes=classes[::-1], rois=rois[::-1],
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
def roi_outlines(scene, segmentation, ids: Sequence[str], grid_node):
    """A temporary labelmap of the ROIs `ids` on `grid_node`'s grid (the anatomical image,
    finer than the ADC map) and which segment each label is: for SliceRenderer.set_outlines."""
    on_grid = segments_on_grid(scene, None, segmentation, list(ids), grid_node)
    labels = np.zeros(on_grid.labels[0].shape, np.int16) if on_grid.labels else None
    roi_ids: Dict[int, str] = {}
    for layer_labels, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        for value, sid in enumerate(layer_ids, 1):
            code = len(roi_ids) + 1
            roi_ids[code] = sid
            labels[layer_labels == value] = code
    if labels is None:
        yield None
        return
    node = volume_from_array(scene, labels, ijk_to_ras_of(grid_node), "VertebralMarrow ROI outlines", labelmap=True)
    try:
        yield node, roi_ids
    finally:
        displays = [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
        scene.RemoveNode(node)
        for display in displays:
            if display is not None and display.GetScene() is scene:
                scene.RemoveNode(display)


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
    scale = _adc_scale(result)
    sets.append(("ADC", result.adc_node, (ADC_WINDOW[0] / scale, ADC_WINDOW[1] / scale)))
    return sets


def _adc_scale(result) -> float:
    """10^-3 mm^2/s per stored unit of the ADC node (the map is a linear rescale of it)."""
    stored = array_of(result.adc_node)
    index = int(np.nanargmax(np.abs(stored)))
    value = float(stored.flat[index])
    converted = float(result.adc_map.flat[index])
    return converted / value if value and np.isfinite(converted) else 1.0


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


def _lesion_snapshot(views: List[View], images: List[str], row: dict, result, path: Path, plotting: bool) -> Picture:
    name = row["segment"]
    cutoff = result.options.adc_cutoff
    class_text = _row_class_text(row, result)
    adc_text = f"mean ADC {_num(row['adc_mean'])} ± {_num(row['adc_sd'])} ×10⁻³ mm²/s"
    shown = " and ".join(_image_words(image) for image in images)
    title = f"{name}: {class_text}"
    subtitle = f"{adc_text} · {row['n_voxels_adc']} ADC voxels · axial and sagittal through the lesion centre on {shown}"
    if plotting:
        _draw_snapshot(views, title, subtitle, row["adc_class"], result, path)
    else:
        _write_plain(views, path, result)
    caption = f"{name}: axial and sagittal through the lesion centre on {shown}; {adc_text}, {class_text}."
    return Picture(path=path, caption=caption, kind="snapshot", segment=name)


def _roles(result) -> Dict[str, str]:
    return {d["id"]: d["role"] for d in result.segments}


def _image_words(image: str) -> str:
    return "the ADC map" if image == "ADC" else image


def _overview(renderer: SliceRenderer, background, centres: Dict[str, np.ndarray], result, path: Path, plotting: bool) -> Picture:
    """Every lesion at a glance: a coronal view through the middle of the lesions, wide enough
    to hold all their centres, each lesion named beside it, and the list of lesions by class."""
    label, node, window = background
    points = np.array(list(centres.values()))
    middle = (points.min(axis=0) + points.max(axis=0)) / 2.0
    field = max(FIELD_OF_VIEW_MM, float(np.max(points.max(axis=0) - points.min(axis=0))) + 60.0)
    with _display_window(node, window):
        view = renderer.render(node, "Coronal", middle, "", label, field)
    under = _image_words(label)
    if plotting:
        title = "All lesions: each voxel's ADC against the cut-off"
        subtitle = f"Coronal through the middle of the lesions on {under}; right: each lesion's mean ADC and class"
        _draw_snapshot([view], title, subtitle, "", result, path, panel=_lesion_list)
    else:
        _write_plain([view], path, result)
    caption = (f"Overview on {under}: coronal through the middle of the lesions; overlay colours are each voxel's "
               f"ADC against the cut-off {_num(result.options.adc_cutoff)}; beside it each lesion's mean ADC and class.")
    return Picture(path=path, caption=caption, kind="snapshot", segment="")


def _draw_snapshot(views: List[View], title: str, subtitle: str, adc_class: str, result, path: Path,
                   panel: Optional[Callable] = None) -> None:
    """Views pasted pixel for pixel, a title with the class swatch above, the legend below;
    `panel` draws into a box the size of one more view (the overview's lesion list)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pixels = views[0].rgb.shape[0]
    count = len(views) + (1 if panel else 0)
    width, height = snapshot_size(count, pixels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    names = {d["id"]: d["name"] for d in result.segments}
    roles = _roles(result)
    boxes = view_boxes(count, pixels)
    for view, (left, top, right, bottom) in zip(views, boxes):
        axes = figure.add_axes([left / width, 1.0 - bottom / height, (right - left) / width, (bottom - top) / height])
        _draw_view(axes, view, names, roles, label_lesions=panel is not None)
    if panel is not None:
        left, top, right, bottom = boxes[-1]
        panel(figure.add_axes([left / width, 1.0 - bottom / height, (right - left) / width, (bottom - top) / height]), result)
    x = MARGIN_PX / width
    if adc_class in CLASS_OF_ROW:  # a swatch of the lesion's class colour before its title
        figure.add_artist(_swatch(figure, x, 1.0 - 31 / height, 18 / width, 18 / height, _rgb(CLASS_OF_ROW[adc_class])))
        x += 26 / width
    figure.text(x, 1.0 - 22 / height, _plain(title), fontsize=15, fontweight="bold", va="center", color="#111111")
    figure.text(MARGIN_PX / width, 1.0 - 48 / height, _plain(subtitle), fontsize=10, va="center", color="#333333")
    _draw_legend(figure, width, height, result)
    _save(figure, path)


def _draw_view(axes, view: View, names: Dict[str, str], roles: Dict[str, str], label_lesions: bool) -> None:
    pixels = view.rgb.shape[0]
    axes.imshow(_with_outlines(view, roles), interpolation="none", extent=(-0.5, pixels - 0.5, pixels - 0.5, -0.5))
    axes.set_xlim(-0.5, pixels - 0.5)
    axes.set_ylim(pixels - 0.5, -0.5)
    axes.set_axis_off()
    if label_lesions:
        _name_lesions(axes, view, names, roles)
    text = dict(color="white", fontsize=11, fontweight="bold", ha="center", va="center")
    left, right, top, bottom = view.edge_letters
    axes.text(12, pixels / 2, left, **text)
    axes.text(pixels - 12, pixels / 2, right, **text)
    axes.text(pixels / 2, 12, top, **text)
    axes.text(pixels / 2, pixels - 12, bottom, **text)
    axes.text(8, 8, f"{view.image} {view.orientation.lower()}".strip(), color="#ffd27f", fontsize=10.5,
              fontweight="bold", ha="left", va="top")
    _scale_bar(axes, view, pixels)


def _name_lesions(axes, view: View, names: Dict[str, str], roles: Dict[str, str]) -> None:
    """Each lesion's name beside it, on the outer side of the view so names stay off the spine."""
    pixels = view.rgb.shape[0]
    for code, sid in view.roi_ids.items():
        rows, columns = np.nonzero(view.rois == code)
        if roles.get(sid) != "lesion" or rows.size == 0:
            continue
        right_side = columns.mean() >= pixels / 2
        x = columns.max() + 8 if right_side else columns.min() - 8
        axes.text(x, rows.mean(), _plain(names.get(sid, sid)), color="white", fontsize=8.5, va="center",
                  ha="left" if right_side else "right", fontweight="bold",
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.6, linewidth=0))


def _lesion_list(axes, result) -> None:
    """The overview's right panel: every lesion with its class swatch, mean ADC and class."""
    from matplotlib.patches import Rectangle

    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    lesions = result.lesion_rows
    axes.text(0.02, 0.985, "Lesion · mean ADC (×10⁻³ mm²/s) · class", fontsize=10, fontweight="bold", va="top")
    step = min(0.075, 0.78 / max(len(lesions), 1))  # room below for the note
    for n, row in enumerate(lesions):
        y = 0.92 - n * step
        value = CLASS_OF_ROW.get(row["adc_class"])
        if value is not None:
            axes.add_patch(Rectangle((0.02, y - 0.018), 0.045, 0.036, facecolor=_rgb(value), edgecolor="#333333", linewidth=0.5))
        axes.text(0.09, y, _plain(_shorten(row["segment"], 26)), fontsize=10, va="center")
        axes.text(0.62, y, _num(row["adc_mean"]), fontsize=10, va="center", ha="right", fontweight="bold")
        axes.text(0.67, y, BY_KEY[row["adc_class"]].label if row["adc_class"] in BY_KEY else row["adc_class"], fontsize=9.5, va="center")
    axes.text(0.02, 0.92 - len(lesions) * step - 0.02,
              _plain(f"Class: the fat, density and heterogeneity signs first,\n"
                     f"then the mean ADC's tier (cut-off {_num(result.options.adc_cutoff)}, Kaur 2020)."),
              fontsize=8.5, color="#444444", va="top")


def _with_outlines(view: View, roles: Dict[str, str]) -> np.ndarray:
    """The view's pixels with each ROI's outline painted in: the lesion in view white and
    thicker, other lesions light grey, the normal-marrow reference dashed blue, others dotted."""
    rgb = view.rgb.copy()
    rows, columns = np.indices(view.rois.shape)
    for code, sid in view.roi_ids.items():
        mask = view.rois == code
        if not mask.any():
            continue
        role = roles.get(sid, "lesion")
        edge = _edge(mask, 2 if sid == view.focus else 1)
        if role == "reference":
            edge &= ((rows + columns) // 5) % 2 == 0
        elif role != "lesion":
            edge &= ((rows + columns) // 2) % 2 == 0
        rgb[edge] = _outline_color(role, sid == view.focus)
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


def _scale_bar(axes, view: View, pixels: int) -> None:
    length_mm = 20.0 if view.mm_per_pixel * pixels < 200 else 50.0
    length = length_mm / view.mm_per_pixel
    x1, y = pixels - 16, pixels - 30
    axes.plot([x1 - length, x1], [y, y], color="white", linewidth=2.5, solid_capstyle="butt")
    axes.text(x1 - length / 2, y - 5, f"{length_mm:g} mm", color="white", fontsize=8.5, ha="center", va="bottom")


def _draw_legend(figure, width: int, height: int, result) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    options = result.options
    marrow_max = options.marrow_max_or_none
    cutoff, band = options.adc_cutoff, options.indeterminate_band
    handles = []
    if marrow_max:
        handles.append(Patch(facecolor=_rgb(4), label=f"normal marrow ≤ {_num(marrow_max)}"))
    handles.append(Patch(facecolor=_rgb(3), label=f"malignant ≤ {_num(cutoff - band)}"))
    if band > 0:
        handles.append(Patch(facecolor=_rgb(2), label=f"indeterminate {_num(cutoff - band)}–{_num(cutoff + band)}"))
    handles.append(Patch(facecolor=_rgb(1), label=f"benign > {_num(cutoff + band)}"))
    handles += [
        Line2D([], [], color="#222222", linewidth=1.6, label="lesion ROI"),
        Line2D([], [], color=REFERENCE_COLOR, linewidth=1.6, linestyle="--", label="reference ROI"),
    ]
    figure.legend(handles=handles, loc="lower left", bbox_to_anchor=(MARGIN_PX / width, 6 / height),
                  ncol=len(handles), frameon=False, fontsize=8.5, handlelength=1.3, columnspacing=0.9)
    figure.text(1.0 - MARGIN_PX / width, 38 / height, "ADC in ×10⁻³ mm²/s; overlay at 50 % opacity",
                fontsize=8, color="#555555", ha="right", va="bottom")


def _save(figure, path: Path) -> None:
    # zlib level 3: half the encoding time of the default 6 for files about 15 % larger
    figure.savefig(path, dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 3})


def _swatch(figure, x: float, y: float, w: float, h: float, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, transform=figure.transFigure, facecolor=color, edgecolor="#333333", linewidth=0.6)


def _write_plain(views: List[View], path: Path, result) -> None:
    """Without matplotlib (a bare Slicer): the views in the snapshot layout, written by VTK."""
    pixels = views[0].rgb.shape[0]
    width, height = snapshot_size(len(views), pixels)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for view, (left, top, right, bottom) in zip(views, view_boxes(len(views), pixels)):
        canvas[top:bottom, left:right] = _with_outlines(view, _roles(result))
    rgb = np.ascontiguousarray(canvas[::-1])  # VTK's first row is the bottom one
    image = vtk.vtkImageData()
    image.SetDimensions(rgb.shape[1], rgb.shape[0], 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(rgb.reshape(-1, 3), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    writer = vtk.vtkPNGWriter()
    writer.SetInputData(image)
    writer.SetFileName(str(path))
    writer.Write()


# --- plots --------------------------------------------------------------------------------


def histogram_bins(values: np.ndarray, cutoff: float, width: float = 0.05) -> Tuple[np.ndarray, np.ndarray]:
    """Bin centres and counts of ADC values; bin edges fall on the cut-off so that each bar
    lies wholly on one side of it."""
    if values.size == 0:
        return np.zeros(0), np.zeros(0, int)
    low = cutoff - width * np.ceil((cutoff - min(float(values.min()), 0.0)) / width)
    high = cutoff + width * np.ceil((max(float(values.max()), cutoff) - cutoff) / width + 1e-9)
    edges = np.arange(low, high + width / 2, width)
    counts, edges = np.histogram(values, edges)
    return (edges[:-1] + edges[1:]) / 2.0, counts


def write_histogram(values: np.ndarray, row: dict, result, reference_adc: Optional[Tuple[str, float]], path: Path) -> Picture:
    """The ADC of a lesion's voxels, bars coloured by the ADC tier of their centre."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cutoff, band = result.options.adc_cutoff, result.options.indeterminate_band
    figure = Figure(figsize=(6.4, 3.8), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    centres, counts = histogram_bins(values, cutoff)
    colors = [_rgb(int(code)) for code in classify_adc(centres, cutoff, band, result.options.marrow_max_or_none)]
    axes.bar(centres, counts, width=0.05, color=colors, edgecolor="white", linewidth=0.5)
    axes.axvline(cutoff, color="#222222", linestyle="--", linewidth=1.4, label=f"cut-off {_num(cutoff)} (Kaur 2020)")
    if row["adc_mean"] is not None:
        axes.axvline(row["adc_mean"], color="#222222", linewidth=2.0, label=f"lesion mean {_num(row['adc_mean'])}")
    if reference_adc is not None:
        axes.axvline(reference_adc[1], color=REFERENCE_COLOR, linestyle=":", linewidth=2.0,
                     label=_plain(f"normal marrow ({reference_adc[0]}) {_num(reference_adc[1])}"))
    top = max(float(values.max()) if values.size else 0.0, cutoff, reference_adc[1] if reference_adc else 0.0)
    axes.set_xlim(0.0, max(2.6, top + 0.2))
    axes.set_xlabel("ADC (×10⁻³ mm²/s)")
    axes.set_ylabel("voxels")
    figure.suptitle(_plain(f"{row['segment']}: ADC of {values.size} voxels, {_row_class_text(row, result)}"),
                    fontsize=10.5, x=0.1, y=0.97, ha="left", va="top")
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3,
                borderaxespad=0.2, handlelength=1.8)  # above the bars, never over them
    figure.subplots_adjust(left=0.1, right=0.97, top=0.82, bottom=0.15)  # fixed: tight_layout costs more than the plot
    _save(figure, path)
    fraction = row.get("fraction_at_or_below_cutoff")
    share = f"; {fraction:.0%} of voxels at or below the cut-off" if fraction is not None else ""
    caption = (f"{row['segment']}: ADC histogram of {values.size} voxels with the cut-off {_num(cutoff)}"
               + (f" and the normal-marrow mean {_num(reference_adc[1])}" if reference_adc else "") + share + ".")
    return Picture(path=path, caption=caption, kind="histogram", segment=row["segment"])


def write_summary_plot(result, path: Path) -> Picture:
    """Every ROI's mean ADC (± SD) against the published entity ranges and the cut-off."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cutoff = result.options.adc_cutoff
    entities = sorted(result.options.criteria["entities"].values(), key=lambda e: e["adc"]["mean"])
    rows = [row for row in result.rows if row["adc_mean"] is not None]
    gap = 1.8  # between the published ranges and the ROIs measured here
    figure = Figure(figsize=(10.0, 2.4 + 0.3 * (len(entities) + len(rows))), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    ticks, labels = [], []
    for y, entity in enumerate(entities):  # published ranges at the top, lowest ADC first
        mean, sd = entity["adc"]["mean"], entity["adc"]["sd"]
        axes.barh(-y, 2 * sd, left=mean - sd, height=0.62, color=_entity_tint(entity), edgecolor="none")
        axes.plot([mean, mean], [-y - 0.31, -y + 0.31], color="#444444", linewidth=1.2)
        ticks.append(-y)
        labels.append(entity["label"])
    for n, row in enumerate(rows):  # then the ROIs measured here, in the table's order
        y = -(len(entities) - 1 + gap + n)
        color = _roi_color(row)
        sd = row["adc_sd"] or 0.0
        axes.errorbar(row["adc_mean"], y, xerr=sd, fmt="o", color=color, ecolor=color, markersize=7, capsize=3,
                      linewidth=1.4, markeredgecolor="#222222")
        axes.text(row["adc_mean"] + sd + 0.04, y, _num(row["adc_mean"]), fontsize=8, va="center", color="#333333")
        ticks.append(y)
        labels.append(_plain(row["segment"]))
    axes.set_yticks(ticks)
    axes.set_yticklabels(labels, fontsize=9)
    split = -(len(entities) - 1 + gap / 2)
    axes.axhline(split, color="#bbbbbb", linewidth=0.8)
    axes.axvline(cutoff, color="#222222", linestyle="--", linewidth=1.4)
    right = max([cutoff + 0.5] + [e["adc"]["mean"] + e["adc"]["sd"] for e in entities]
                + [r["adc_mean"] + (r["adc_sd"] or 0.0) for r in rows]) + 0.3
    axes.set_xlim(0.0, right)
    axes.set_ylim(ticks[-1] - 0.7, 1.1)
    heading = dict(fontsize=9, fontweight="bold", color="#444444", va="center", ha="left")
    axes.text(0.02, 0.75, "Published entity ranges (mean ± SD)", **heading)
    axes.text(0.02, split - 0.45, "ROIs of this study (mean ± SD)", **heading)
    axes.set_xlabel("mean ADC (×10⁻³ mm²/s)")
    axes.spines[["top", "right"]].set_visible(False)
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.3, right=0.97, top=1.0 - 0.5 / height, bottom=1.25 / height)
    figure.suptitle("Mean ADC of every ROI against the published entity ranges", fontsize=12, x=0.01, y=1.0 - 0.12 / height,
                    ha="left", va="top")
    figure.legend(handles=_summary_legend(cutoff, result.options.indeterminate_band, result.options.marrow_max_or_none), fontsize=8.5, frameon=False,
                  loc="lower center", bbox_to_anchor=(0.5, 0.01), ncol=4)
    _save(figure, path)
    caption = (f"Mean ADC (± SD) of every ROI against the published entity ranges (criteria and citations below) "
               f"and the cut-off {_num(cutoff)}; lesions coloured by class.")
    return Picture(path=path, caption=caption, kind="summary")


def _entity_tint(entity: dict) -> str:
    return "#f4b6b6" if entity.get("malignant") else "#b9e4c4"


def _summary_legend(cutoff: float, band: float, marrow_max: Optional[float] = None) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def point(color, label):
        return Line2D([], [], marker="o", linestyle="", color=color, markeredgecolor="#222222", label=label)

    handles = [
        Line2D([], [], color="#222222", linestyle="--", label=f"cut-off {_num(cutoff)} (Kaur 2020)"),
        Patch(facecolor=_entity_tint({"malignant": True}), label="malignant entity"),
        Patch(facecolor=_entity_tint({"malignant": False}), label="benign entity"),
        point(_rgb(3), "lesion, malignant-range"),
        point(_rgb(1), "lesion, benign-range"),
        point(REFERENCE_COLOR, "normal-marrow reference"),
        point(OTHER_ROI_COLOR, "other ROI (disc, muscle)"),
    ]
    if band > 0:
        handles.insert(5, point(_rgb(2), "lesion, indeterminate"))
    if marrow_max:
        handles.insert(3, point(_rgb(4), "lesion, normal-marrow range"))
    return handles


def _roi_color(row: dict):
    if row["role"] == "lesion":
        return _rgb(CLASS_OF_ROW.get(row["adc_class"], 0)) if row["adc_class"] in CLASS_OF_ROW else OTHER_ROI_COLOR
    return REFERENCE_COLOR if row["role"] == "reference" else OTHER_ROI_COLOR


def _reference_adc(result) -> Optional[Tuple[str, float]]:
    """(names, voxel-weighted mean ADC) of the normal-marrow reference ROIs."""
    references = [row for row in result.rows if row["role"] == "reference" and row["adc_mean"] is not None]
    count = sum(row["n_voxels_adc"] for row in references)
    if not count:
        return None
    mean = sum(row["adc_mean"] * row["n_voxels_adc"] for row in references) / count
    return ", ".join(row["segment"] for row in references), mean


# --- plot chart nodes ---------------------------------------------------------------------


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


# --- small helpers ------------------------------------------------------------------------


def _rgb(value: int) -> Tuple[float, float, float]:
    return tuple(CLASS_COLORS[value][1][:3])


def _rgb255(hex_color: str) -> Tuple[int, int, int]:
    return tuple(int(hex_color[n:n + 2], 16) for n in (1, 3, 5))


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _row_class_text(row: dict, result) -> str:
    options = result.options
    return class_text(row["adc_class"], options.adc_cutoff, options.indeterminate_band, options.marrow_max_or_none)


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _plain(text: str) -> str:
    """Text for matplotlib as typed: '$' would otherwise start mathtext (segment names are free text)."""
    return str(text).replace("$", r"\$")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "roi"


def _file_names(names: Sequence[str]) -> Dict[str, str]:
    """A safe, unique file-name part per segment name ('L2 lesion' -> '01_l2_lesion')."""
    return {name: f"{index:02d}_{_slug(name)[:40]}" for index, name in enumerate(names, 1)}


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # a bare Slicer: snapshots without text, no plots (chart nodes still work)
        return False
    return True
