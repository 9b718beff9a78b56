"""Tests of the pictures (slice snapshots, ADC plots, plot chart nodes) and of report.html.

One real run on the synthetic study (real files, real MRML) serves every test. What the
pictures must show is checked against numbers computed here, independently of the code under
test: the overlay against the ADC map and the ROIs resampled by SimpleITK, the colours of the
PNGs against each lesion's mean ADC, the report's links against the files in the folder.
One lesion is renamed to a name with markup, to check escaping all the way into the page.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pytest
from VertebralMarrowLib import DISCLAIMER
from VertebralMarrowLib.analysis import analyze
from VertebralMarrowLib.core.classes import CLASSES
from VertebralMarrowLib.core.criteria import Options
from VertebralMarrowLib.inputs.study import StudyFiles, load_study
from VertebralMarrowLib.mrml import (
    load_segmentation,
    new_scene,
    segment_ids,
    segment_name,
    write_node,
)
from VertebralMarrowLib.outputs.nodes import class_color_node, overlay_node
from VertebralMarrowLib.outputs.charts import plot_nodes
from VertebralMarrowLib.outputs.rendering import REFERENCE_COLOR, VIEW_PIXELS, RoiVoxels, SliceRenderer, roi_outlines, view_boxes
from VertebralMarrowLib.outputs.report import write_report
from VertebralMarrowLib.pipeline import run_analysis

LIB = Path(__file__).resolve().parents[1] / "VertebralMarrow" / "VertebralMarrowLib"
MARKUP_NAME = 'L5 <script>alert("x")</script> & co'
RENAMED = "L5 lesion"
CLEAR_MARGIN = 0.25  # lesions this far from the cut-off must show one class colour only
DISCLAIMER_CORE = "supports, and never replaces, the radiologist"


# --- the run ------------------------------------------------------------------------------


def _rename_segment(path: Path, old: str, new: str) -> None:
    app = new_scene()
    node = load_segmentation(app.scene, app, path)
    for sid in segment_ids(node):
        if segment_name(node, sid) == old:
            node.GetSegmentation().GetSegment(sid).SetName(new)
    write_node(app.scene, node, path)


def _study_files(folder: Path, truth: dict) -> StudyFiles:
    names = truth["files"]
    return StudyFiles(seg=folder / names["seg"], adc=folder / names["adc"], t1=folder / names["t1"],
                      t2=folder / names["t2"], fs=folder / names["fs"], ct=folder / names["ct"])


@pytest.fixture(scope="module")
def run(tmp_path_factory, phantom_copy):
    root = tmp_path_factory.mktemp("pictures_report")
    study, truth = phantom_copy(5)
    _rename_segment(study / truth["files"]["seg"], RENAMED, MARKUP_NAME)
    truth["segments"][MARKUP_NAME] = truth["segments"].pop(RENAMED)
    out = root / "out"
    started = time.perf_counter()
    result = run_analysis(_study_files(study, truth), Options(), out)
    seconds = time.perf_counter() - started
    page = (out / "report.html").read_text(encoding="utf-8")
    parsed = ReportParser()
    parsed.feed(page)
    print(f"analysis and outputs: {seconds:.1f} s")
    return SimpleNamespace(root=root, study=study, truth=truth, out=out, result=result, page=page, parsed=parsed)


@pytest.fixture(scope="module")
def live(run):
    """The same study in a scene of its own, for the slice views and the chart nodes."""
    app = new_scene()
    study = load_study(app, _study_files(run.study, run.truth))
    result = analyze(app.scene, study, Options(), app=app)
    overlay = overlay_node(app.scene, result, class_color_node(app.scene))
    return SimpleNamespace(app=app, scene=app.scene, study=study, result=result, overlay=overlay)


class ReportParser(HTMLParser):
    """Figures per lesion article, every src/href, and the page's text."""

    def __init__(self):
        super().__init__()
        self.links, self.text, self.figures = [], [], []
        self.lesion, self.heading, self.in_h3, self.figure_class = None, {}, False, None
        self.bars, self.in_title = [], False  # inline SVG histograms: (lesion, fill, title text)
        self.points = []  # the inline SVG summary's ROIs: [fill, title text]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "article" and "lesion" in attrs.get("class", ""):
            self.lesion = attrs["id"]
            self.heading[self.lesion] = ""
        elif tag == "h3" and self.lesion:
            self.in_h3 = True
        elif tag == "figure":
            self.figure_class = attrs.get("class", "")
        elif tag == "img":
            self.figures.append((self.lesion, self.figure_class, attrs["src"], attrs.get("alt", "")))
        elif tag == "rect" and self.figure_class == "histogram":
            self.bars.append([self.lesion, attrs.get("fill"), ""])
        elif tag == "title" and self.figure_class == "histogram" and self.bars:
            self.in_title = True
        elif tag == "g" and self.figure_class == "summary" and attrs.get("class") == "roi":
            self.points.append([None, ""])
        elif tag == "circle" and self.figure_class == "summary" and self.points:
            self.points[-1][0] = attrs.get("fill")
        elif tag == "title" and self.figure_class == "summary" and self.points and not self.points[-1][0]:
            self.in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        elif tag == "figure":
            self.figure_class = None
        elif tag == "article":
            self.lesion = None
        elif tag == "h3":
            self.in_h3 = False

    def handle_data(self, data):
        if self.in_title:
            if self.figure_class == "summary":
                self.points[-1][1] += data
            else:
                self.bars[-1][2] += data
            return
        self.text.append(data)
        if self.in_h3 and self.lesion:
            self.heading[self.lesion] += data

    def article(self, name: str) -> str:
        articles = [key for key, heading in self.heading.items() if heading.strip().startswith(name)]
        assert len(articles) == 1, f"one article for {name!r}, found {articles}"
        return articles[0]

    def lesion_figures(self, name: str, kind: str) -> list:
        return [src for lesion, cls, src, _ in self.figures if lesion == self.article(name) and cls == kind]

    def lesion_bars(self, name: str) -> list:
        """(fill colour, voxel count) of each bar of the lesion's inline histogram."""
        return [(fill, int(re.search(r": (\d+) voxels", title).group(1)))
                for lesion, fill, title in self.bars if lesion == self.article(name)]


# --- pixels -------------------------------------------------------------------------------


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _class_pixels(rgb: np.ndarray):
    """(red, green) masks: pixels where the class colour clearly dominates (also when the
    overlay is blended at half opacity over grey)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > g + 50) & (r > b + 50)
    green = (g > r + 40) & (g > b + 30)
    return red, green


def _blue_pixels(rgb: np.ndarray):
    """Pixels of the normal-marrow colour (blue) dominating."""
    r, g, b = (rgb[..., n].astype(int) for n in range(3))
    return (b > r + 60) & (b > g + 20)


def _lesions(result, clear_only: bool = False) -> list:
    """Lesion rows; with clear_only, those read by their ADC alone (no sign, not heterogeneous,
    not a partly covered small ROI) whose mean lies clearly inside the malignant or benign range."""
    options = result.options
    tiers = {d["name"]: d for d in result.segments}
    rows = []
    for row in result.lesion_rows:
        detail = tiers[row["segment"]]
        clear = (row["adc_mean"] is not None and row["adc_class"] in ("malignant", "benign")
                 and detail["tier"]["deciding_sign"] == "adc" and "partial_volume" not in detail
                 and abs(row["adc_mean"] - options.adc_cutoff) >= CLEAR_MARGIN + options.indeterminate_band)
        if clear or not clear_only:
            rows.append(row)
    return rows


# --- the overlay, checked independently ---------------------------------------------------


def test_overlay_is_each_lesion_voxels_adc_against_the_cutoff(run):
    """overlay.nrrd is 0 outside lesion ROIs (but for the voxels a small focus partly covers)
    and, inside, each voxel's tier by the papers' bounds (Koutoulidis 0.55; Kaur 1.21 +/- 0.2)
    for lesions read by their ADC; 4 on every voxel of a lesion in the normal-marrow range: ROIs
    resampled onto the ADC grid by SimpleITK, ADC read from the file."""
    import SimpleITK as sitk

    seg = sitk.ReadImage(str(run.study / run.truth["files"]["seg"]))
    adc = sitk.ReadImage(str(run.study / run.truth["files"]["adc"]))
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(str(run.out / "overlay.nrrd")))
    assert seg.GetNumberOfComponentsPerPixel() == 1  # one layer: the phantom's ROIs do not overlap
    labels = sitk.GetArrayFromImage(sitk.Resample(seg, adc, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    adc_1e3 = sitk.GetArrayFromImage(adc) / 1000.0  # the scanner map: integers in 10^-6 mm^2/s; 0 no value
    tiers = np.select([adc_1e3 <= 0.55, adc_1e3 < 1.01, adc_1e3 <= 1.41], [4, 3, 2], 1)
    rows = {row["segment"]: row for row in run.result.rows}
    details = {d["name"]: d for d in run.result.segments}
    in_lesion = np.zeros(overlay.shape, bool)
    checked = 0
    for n in range(len(run.truth["segments"])):
        name = seg.GetMetaData(f"Segment{n}_Name")
        if run.truth["segments"][name]["role"] != "lesion":
            continue
        mask = labels == int(seg.GetMetaData(f"Segment{n}_LabelValue"))
        in_lesion |= mask
        valued = mask & (adc_1e3 > 0)
        assert not overlay[mask & (adc_1e3 == 0)].any(), name  # no value, no colour
        sign = details[name]["tier"]["deciding_sign"]
        if rows[name]["adc_class"] == "marrow":
            assert (overlay[valued] == 4).all(), name
        elif sign in ("adc", "heterogeneity"):
            np.testing.assert_array_equal(overlay[valued], tiers[valued], err_msg=name)
            checked += int(valued.sum())
    assert checked > 100
    touched = sum(d["partial_volume"]["voxels_touched"] for d in details.values() if "partial_volume" in d)
    assert 0 < ((overlay > 0) & ~in_lesion).sum() <= touched


# --- slice snapshots ----------------------------------------------------------------------


def test_every_lesion_has_a_valid_png_snapshot(run):
    for row in _lesions(run.result):
        sources = run.parsed.lesion_figures(row["segment"], "snapshot")
        assert len(sources) == 1, f"{row['segment']}: one snapshot expected, got {sources}"
        for source in sources:
            path = run.out / unquote(source)
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            rgb = _rgb(path)
            assert rgb.std() > 20, f"{path.name} is blank"
    overview = [src for lesion, cls, src, _ in run.parsed.figures if lesion is None and cls == "snapshot"]
    assert len(overview) == 1


def test_snapshot_shows_the_lesions_class_colour_at_its_centre(run):
    """Each view is centred on its lesion: around the centre, a malignant-range lesion is red
    and a benign-range one green, in all four views (axial and sagittal, on T2 and on ADC)."""
    checked = 0
    for row in _lesions(run.result, clear_only=True):
        for source in run.parsed.lesion_figures(row["segment"], "snapshot"):
            rgb = _rgb(run.out / unquote(source))
            for left, top, right, bottom in view_boxes(4):
                cx, cy = (left + right) // 2, (top + bottom) // 2
                red, green = _class_pixels(rgb[cy - 12:cy + 13, cx - 12:cx + 13])
                assert not _blue_pixels(rgb[cy - 12:cy + 13, cx - 12:cx + 13]).sum() > 60
                wanted, other = (red, green) if row["adc_class"] == "malignant" else (green, red)
                assert wanted.sum() > 60, f"{row['segment']} ({row['adc_class']}) {source}: too few class pixels"
                assert other.sum() < 0.2 * wanted.sum(), f"{row['segment']} {source}: the other class dominates"
                checked += 1
    assert checked >= 8  # the fracture and the lytic metastasis, four views each


def test_slice_logic_colours_exactly_the_overlay(live):
    """The views drawn by MRML's slice logic: every pixel over a class-3 voxel is red-tinted,
    over class 1 green-tinted, and every pixel without an overlay class is grey."""
    lesions = [d for d in live.result.segments if d["role"] == "lesion"]
    ids = [d["id"] for d in lesions]
    middle = (VIEW_PIXELS - 1) / 2.0
    with SliceRenderer(live.scene, live.overlay) as renderer, \
            roi_outlines(live.scene, live.study.segmentation, ids, live.study.t2) as outlines:
        renderer.set_outlines(outlines)
        for detail in lesions[:4]:
            row = next(r for r in live.result.rows if r["segment"] == detail["name"])
            centre = _centre(detail["name"])
            for orientation in ("Axial", "Sagittal"):
                view = renderer.render(live.study.t2, orientation, centre, detail["id"])
                red, green = _class_pixels(view.rgb)
                plain = view.classes == 0
                assert np.all(view.rgb[plain].max(axis=1) == view.rgb[plain].min(axis=1)), "colour outside the overlay"
                assert red[view.classes == 3].all() and green[view.classes == 1].all()
                assert (view.classes > 0).sum() > 50, f"{row['segment']} {orientation}: lesion not in view"
                column, line = (view.ras_to_pixel @ np.append(centre, 1.0))[:2]
                assert abs(column - middle) < 12 and abs(line - middle) < 12, "view not centred on the lesion"
                code = next(c for c, sid in view.roi_ids.items() if sid == detail["id"])
                assert view.rois[int(round(line)), int(round(column))] == code, "outline labels off the lesion"
    for kind in ("vtkMRMLSliceNode", "vtkMRMLSliceCompositeNode", "vtkMRMLModelNode"):
        assert live.scene.GetNodesByClass(kind).GetNumberOfItems() == 0, f"snapshot view's {kind} left in the scene"


def _centre(name: str) -> np.ndarray:
    """A lesion's centre from the phantom's own anatomy (independent of pictures.py)."""
    from VertebralMarrowLib.phantom import LESIONS, level_centre_z

    original = RENAMED if name == MARKUP_NAME else name
    lesion = next(lesion for lesion in LESIONS if lesion.segment == original)
    x, y, z = lesion.centre_offset_mm
    return np.array([x, y, z + level_centre_z(lesion.level)])


def test_outlines_trace_each_roi_in_view(live):
    """The painted outlines, checked against borders found by scipy's binary erosion: the lesion
    in view has a white border two pixels wide, the other lesions a grey one pixel wide, the
    normal-marrow reference a dashed blue one, a disc or muscle a dotted grey one; nothing
    inside an ROI or outside all of them is touched."""
    from scipy import ndimage

    from VertebralMarrowLib.outputs.rendering import OTHER_ROI_COLOR, _with_outlines

    ids = [d["id"] for d in live.result.segments]
    roles = {d["id"]: d["role"] for d in live.result.segments}
    lesion = next(d for d in live.result.segments if d["role"] == "lesion")
    cross = ndimage.generate_binary_structure(2, 1)
    blue, grey = (tuple(int(hex_colour[n:n + 2], 16) for n in (1, 3, 5)) for hex_colour in (REFERENCE_COLOR, OTHER_ROI_COLOR))
    with SliceRenderer(live.scene, live.overlay) as renderer, \
            roi_outlines(live.scene, live.study.segmentation, ids, live.study.t2) as outlines:
        renderer.set_outlines(outlines)
        reference = next(d["id"] for d in live.result.segments if d["role"] == "reference")
        views = [renderer.render(live.study.t2, "Sagittal", _centre(lesion["name"]), lesion["id"]),
                 renderer.render(live.study.t2, "Sagittal", RoiVoxels(live.result).centre_ras(reference), reference)]
    seen_roles = set()
    for view in views:
        painted = _with_outlines(view, roles)
        changed = np.any(painted != view.rgb, axis=2)
        for code, sid in view.roi_ids.items():
            mask = view.rois == code
            if not mask.any():
                continue
            seen_roles.add(roles[sid])
            width = 2 if sid == view.focus else 1
            border = mask & ~ndimage.binary_erosion(mask, cross, iterations=width, border_value=0)
            inside = mask & ~border
            assert not changed[inside].any(), f"{sid}: pixels inside the ROI painted"
            if roles[sid] != "lesion":  # the reference dashed blue, a disc or muscle dotted grey
                colour = blue if roles[sid] == "reference" else grey
                on = border & np.all(painted == colour, axis=2)
                assert 0.3 * border.sum() < on.sum() < 0.8 * border.sum(), f"{sid}: outline not broken {colour}"
                assert not changed[border & ~on].any(), f"{sid}: the outline's gaps painted"
            else:
                colour = (255, 255, 255) if sid == view.focus else (200, 200, 200)
                assert np.all(painted[border] == colour), f"{sid}: outline not {colour}"
        assert not changed[view.rois == 0].any(), "pixels outside every ROI painted"
    assert {"lesion", "reference"} <= seen_roles, "the views should show a lesion and the reference"


def test_png_writer_round_trips_every_pixel(tmp_path):
    """rendering.write_png (Up-filtered rows, modulo-256 differences) read back by Pillow's
    independent decoder: noise, flat areas and wrap-around steps, pixel for pixel."""
    from VertebralMarrowLib.outputs.rendering import write_png

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[10:20] = 255
    image[20:22] = 0  # 255 -> 0: a difference that wraps
    path = write_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(_rgb(path), image)


def test_without_matplotlib_snapshots_are_still_written(live, tmp_path, monkeypatch):
    """A bare Slicer has no matplotlib: the views are written by VTK alone; the histograms and
    the summary are SVG text, drawn all the same."""
    from VertebralMarrowLib.outputs import figures

    monkeypatch.setattr(figures, "_matplotlib_available", lambda: False)
    written = figures.write_pictures(live.scene, live.study, live.result, live.overlay, tmp_path)
    lesions = live.result.lesion_rows
    snapshots = [p for p in written if p.kind == "snapshot"]
    assert {p.kind for p in written} == {"snapshot", "histogram", "summary"}  # SVG text, no library
    assert len(snapshots) == len(lesions) + 1
    rows = {row["segment"]: row for row in lesions}
    for picture in snapshots:
        rgb = _rgb(picture.path)
        red, green = _class_pixels(rgb)
        assert rgb.std() > 20, picture.path.name
        row = rows.get(picture.segment)
        if row is not None and row["adc_class"] in ("malignant", "benign", "marrow") and row["n_voxels_adc"] > 0:
            # a lesion painted red, green or the marrow blue shows that colour (not the bone island: no DWI signal)
            assert red.sum() + green.sum() + _blue_pixels(rgb).sum() > 50, picture.path.name


# --- plots --------------------------------------------------------------------------------


def _with_adc(result, row) -> int:
    """The lesion's ADC voxels that have a value (n_voxels_adc counts those without, too)."""
    detail = next(d for d in result.segments if d["name"] == row["segment"])
    return row["n_voxels_adc"] - detail["adc_nonfinite_voxels"]


def test_histograms_and_summary_plot_are_drawn(run):
    """Each lesion's inline SVG histogram counts every one of its ADC voxels, in bars of its
    class colour (the class table's) for lesions clear of the cut-off; the summary, inline SVG
    too, has every measured ROI at its mean in its colour."""
    colours = {c.key: c.hex for c in CLASSES}
    for row in _lesions(run.result):
        bars = run.parsed.lesion_bars(row["segment"])
        assert sum(count for _, count in bars) == _with_adc(run.result, row), row["segment"]
    for row in _lesions(run.result, clear_only=True):
        bars = run.parsed.lesion_bars(row["segment"])
        own = sum(count for fill, count in bars if fill == colours[row["adc_class"]])
        assert own > 0.8 * row["n_voxels_adc"], f"{row['segment']}: histogram bars not in the class colour"
    # the summary: one point per measured ROI, named, at its mean, in its class colour (lesions)
    # or the reference's colour
    measured = [row for row in run.result.rows if row["adc_mean"] is not None]
    assert len(run.parsed.points) == len(measured)
    for (fill, title), row in zip(run.parsed.points, measured):
        assert title.startswith(f"{row['segment']}: mean ADC {row['adc_mean']:.2f} ± "), title
        if row["role"] == "lesion" and row["adc_class"] in colours:
            assert fill == colours[row["adc_class"]], title
        elif row["role"] == "reference":
            assert fill == REFERENCE_COLOR, title
    fills = {fill for fill, _ in run.parsed.points}
    assert colours["malignant"] in fills and colours["benign"] in fills


def test_plot_chart_nodes_hold_every_lesion_voxel(live):
    charts = plot_nodes(live.scene, live.result)
    # a lesion without an ADC voxel centre (the bone island's no DWI signal, the 5-mm focus) has no histogram
    lesions = [row for row in live.result.lesion_rows if _with_adc(live.result, row) > 0]
    assert len(charts) == len(lesions) + 1
    for chart in charts:
        assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() >= 1
        series = chart.GetNthPlotSeriesNode(0)
        assert series.GetTableNode() is not None and series.GetTableNode().GetNumberOfRows() > 0
    for chart, row in zip(charts, lesions):
        table = chart.GetNthPlotSeriesNode(0).GetTableNode().GetTable()
        counts = table.GetColumnByName("voxels")
        assert sum(counts.GetValue(n) for n in range(counts.GetNumberOfValues())) == _with_adc(live.result, row)
    summary = charts[-1].GetNthPlotSeriesNode(0).GetTableNode()
    measured = [r["segment"] for r in live.result.rows if r["adc_mean"] is not None]  # not the bone island
    assert summary.GetNumberOfRows() == len(measured)
    names = summary.GetTable().GetColumnByName("segment")
    assert [names.GetValue(n) for n in range(names.GetNumberOfValues())] == measured


# --- the report ---------------------------------------------------------------------------


def test_report_links_only_files_in_its_folder(run):
    assert run.parsed.links, "no images in the report"
    for link in run.parsed.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith("/"), link
        path = (run.out / unquote(link)).resolve()
        assert path.is_file(), f"report links a missing file: {link}"
        assert run.out.resolve() in path.parents
    lowered = run.page.lower()
    for outside in ("http://", "https://", "@import", "url(", "<script", "<link"):
        assert outside not in lowered, f"report is not self-contained: {outside}"


def test_report_names_every_segment_and_carries_the_disclaimer(run):
    text = "".join(run.parsed.text)
    for row in run.result.rows:
        assert row["segment"] in text
    assert text.count(DISCLAIMER) >= 2
    assert run.page.find(DISCLAIMER_CORE) < run.page.find("Results per ROI") < run.page.rfind(DISCLAIMER_CORE)
    assert "Kaur A, et al." in text and "1.21" in text
    for warning in run.result.warnings:
        assert warning in text


def test_report_escapes_markup_in_segment_names(run):
    assert MARKUP_NAME in "".join(run.parsed.text)
    assert "<script" not in run.page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in run.page


def test_report_shows_the_differential_with_reasons(run):
    document = json.loads((run.out / "results.json").read_text(encoding="utf-8"))
    text = "".join(run.parsed.text)
    for row in _lesions(run.result):
        candidates = document["segments"][row["segment"]]["differential"]
        for candidate in candidates[:3]:
            assert candidate["label"] in text
            for reason in candidate["fits"] + candidate["contradicts"]:
                assert reason in text


def test_report_opens_with_the_summary_and_warnings_in_readable_words(run):
    """The summary, then the warnings, before the details; column names and entities in words."""
    page = run.page
    assert page.find('id="glance"') < page.find('id="warnings"') < page.find('id="study"') < page.find('id="results"')
    document = json.loads((run.out / "results.json").read_text(encoding="utf-8"))
    results_table = page[page.find('id="results"'):page.find('id="lesions"')]
    assert ">Mean ADC<" in results_table and ">adc_mean<" not in results_table
    for row in _lesions(run.result):
        top = row["differential"].split(";")[0]
        label = document["criteria"]["entities"][top]["label"]
        assert label in results_table
        assert f">{top}<" not in results_table and f">{top}<br>" not in results_table


def test_single_file_report_embeds_its_pictures(run, tmp_path):
    from VertebralMarrowLib.outputs.rendering import Picture

    document = json.loads((run.out / "results.json").read_text(encoding="utf-8"))
    pictures = [Picture(path=path, kind="snapshot", segment="", caption=path.name) for path in sorted(run.out.glob("*.png"))[:2]]
    page = write_report(tmp_path / "alone" / "report.html", document, pictures, single_file=True).read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(pictures) >= 1
    for source, picture in zip(sources, pictures):
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]) == picture.path.read_bytes()


def test_write_report_escapes_every_data_string(tmp_path):
    """A document whose every string carries markup: nothing of it may reach the page raw."""
    evil = '<img src=x onerror="alert(1)">'
    document = {
        "disclaimer": DISCLAIMER,
        "rows": [{"segment": evil, "role": "lesion", "adc_mean": 0.7, "adc_sd": 0.1, "adc_class": "malignant",
                  "differential": evil}],
        "segments": {evil: {"differential": [{"entity": evil, "label": evil, "score": 0.5, "fits": [evil],
                                              "contradicts": [evil]}], "differential_summary": evil}},
        "inputs": {"segmentation": evil}, "adc": {"source": evil, "units": evil},
        "criteria": {"adc_cutoff": {"value": 1.21, "default": 1.21, "citation": evil, "where": evil}},
        "references": {evil: evil}, "warnings": [evil], "versions": {evil: evil},
    }
    page = write_report(tmp_path / "report.html", document, []).read_text(encoding="utf-8")
    assert "<img" not in page
    assert page.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;") >= 8


# --- headless Chromium --------------------------------------------------------------------


def _chromium():
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (CI installs Debian's chromium in .ci/run)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    shot = tmp_path / "shot.png"
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
        (run.out / "report.html").resolve().as_uri(),
    ]
    subprocess.run(command, check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rgb = _rgb(shot)
    assert rgb.std() > 30, "blank page"
    red, green = _class_pixels(rgb)
    assert red.sum() > 500 and green.sum() > 500, "no class colours on the page"
    # The slice views are black around the anatomy; nothing the page draws itself is that dark
    # (its darkest ink is #1b1f24), so black pixels mean the images loaded and were drawn.
    black = (rgb.max(axis=2) < 16).mean()
    assert black > 0.01, f"slice views not shown ({black:.1%} black pixels)"


# --- the code itself ----------------------------------------------------------------------


def test_modules_import_fast_without_matplotlib():
    """pictures and report import matplotlib only when drawing (never pyplot's backend)."""
    code = ("import sys, VertebralMarrowLib.outputs.rendering, VertebralMarrowLib.outputs.figures, "
            "VertebralMarrowLib.outputs.charts, VertebralMarrowLib.outputs.report; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module level'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["outputs/rendering.py", "outputs/figures.py", "outputs/charts.py", "outputs/report.py"])
def test_library_modules_parse_as_python_3_9(name):
    source = (LIB / name).read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 9))
    assert "from __future__ import annotations" in source
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert not imported & {"qt", "pyplot"}
    assert "slicer.app" not in source and "slicer.mrmlScene" not in source and "slicer.modules" not in source

