"""The demo end to end: the synthetic study, the analysis, every output of the interface, and
the scene reloading headless with the same nodes."""

import csv
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from VertebralMarrowLib.cli import main
from VertebralMarrowLib.core.criteria import ENTITY_KEYS
from VertebralMarrowLib.mrml import new_scene
from VertebralMarrowLib.outputs.table import COLUMN_NAMES

INTERFACE_COLUMNS = (
    "segment, role, n_voxels_adc, volume_ml, adc_mean, adc_median, adc_sd, adc_p10, adc_p90, "
    "fraction_at_or_below_cutoff, adc_class, t1_ratio, t2_ratio, fs_ratio, t1_signal, t2_signal, "
    "fs_signal, ct_mean_hu, differential"
).split(", ")

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["-q", "demo", "--out", str(out), "--seed", "3"]) == 0
    truth = json.loads((out / "study" / "ground_truth.json").read_text())
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return out, truth, rows


def test_results_csv_has_exactly_the_interface_columns(demo):
    out, _, _ = demo
    with (out / "results.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header == INTERFACE_COLUMNS == list(COLUMN_NAMES)


def test_every_lesion_is_classified_as_the_ground_truth_says(demo):
    _, truth, rows = demo
    by_name = {row["segment"]: row for row in rows}
    assert set(by_name) == set(truth["segments"])
    for name, expected in truth["segments"].items():
        row = by_name[name]
        assert row["role"] == expected["role"], name
        if expected["role"] == "lesion":
            assert row["adc_class"] == expected["adc_class"], name
            assert float(row["adc_mean"]) == pytest.approx(expected["adc_mean"], rel=0.06), name


def test_each_lesion_has_its_own_entity_among_the_favoured(demo):
    """The published ADC ranges overlap (focal myeloma 1.046 +/- 0.232, Koutoulidis 2017, against
    infection 1.30-1.47): a lesion's own entity must be favoured, not necessarily first."""
    out, truth, rows = demo
    segments = json.loads((out / "results.json").read_text())["segments"]
    for row in rows:
        expected = truth["segments"][row["segment"]]
        if expected["role"] != "lesion":
            continue
        ranked = row["differential"].split(";")
        assert sorted(ranked) == sorted(ENTITY_KEYS)
        words = {c["entity"]: c["likelihood"] for c in segments[row["segment"]]["differential"]}
        assert words[ranked[0]] == "favoured", row["segment"]
        assert words[expected["entity"]] == "favoured", (row["segment"], ranked[:4])


def test_signal_words_follow_the_entity_pattern(demo):
    _, truth, rows = demo
    for row in rows:
        expected = truth["segments"][row["segment"]]
        if expected["role"] != "lesion":
            continue
        for sequence in ("t1", "t2", "fs"):
            ratio = expected[f"{sequence}_ratio"]
            word = "low" if ratio < 0.8 else "high" if ratio > 1.2 else "iso"
            assert row[f"{sequence}_signal"] == word, (row["segment"], sequence)


def test_results_json_records_units_criteria_citations_and_disclaimer(demo):
    out, _, _ = demo
    document = json.loads((out / "results.json").read_text())
    assert "never replaces" in document["disclaimer"]
    assert document["adc"]["source"] == "scanner ADC map"
    assert document["adc"]["units"].startswith("10^-6 mm^2/s (auto")
    assert document["criteria"]["adc_cutoff"]["value"] == 1.21
    assert "Kaur" in document["criteria"]["adc_cutoff"]["citation"]
    lesion = document["segments"]["L2 lesion"]
    assert lesion["differential"][0]["fits"], "the top candidate carries its reasons"


def test_overlay_marks_lesion_voxels_only_with_their_class(demo):
    out, truth, _ = demo
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "overlay.nrrd")))
    adc_image = sitk.ReadImage(str(out / "study" / "adc_scanner.nrrd"))
    adc = sitk.GetArrayFromImage(adc_image) / 1000.0
    assert overlay.shape == adc.shape
    classed = overlay > 0
    assert classed.any()
    assert np.all(overlay[classed & (adc <= 1.21)] == 3)
    assert np.all(overlay[classed & (adc > 1.21)] == 1)
    assert set(np.unique(overlay)) <= {0, 1, 3}


def test_scene_reloads_with_volumes_segmentation_overlay_colors_and_table(demo):
    out, _, _ = demo
    app = new_scene()
    app.scene.SetURL(str(out / "VertebralMarrow.mrml"))
    assert app.scene.Import()
    names = {}
    for class_name in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode"):
        nodes = app.scene.GetNodesByClass(class_name)
        names[class_name] = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    volumes = [n.GetName() for n in names["vtkMRMLScalarVolumeNode"]]
    assert {"adc_scanner", "t1", "t2", "stir", "ct"} <= set(volumes)
    assert all(n.GetImageData() is not None for n in names["vtkMRMLScalarVolumeNode"])
    overlay = [n for n in names["vtkMRMLLabelMapVolumeNode"] if n.GetName() == "VertebralMarrow overlay"][0]
    colors = overlay.GetDisplayNode().GetColorNode()
    assert colors.GetName() == "VertebralMarrow classes"
    assert [colors.GetColorName(v) for v in (1, 2, 3)] == ["benign-range", "indeterminate", "malignant-range"]
    assert slicer.util.arrayFromVolume(overlay).max() == 3
    segmentation = names["vtkMRMLSegmentationNode"][0].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 11
    table = [n for n in names["vtkMRMLTableNode"] if n.GetName() == "VertebralMarrow results"][0]
    assert table.GetNumberOfRows() == 11
    assert table.GetColumnUnitLabel("adc_mean") == "10^-3 mm^2/s"
    assert table.GetCellText(0, 0) == "T12 lesion" and table.GetCellText(0, 10) == "benign"
    charts = app.scene.GetNodesByClass("vtkMRMLPlotChartNode")
    assert charts.GetNumberOfItems() == 9, "one ADC histogram per lesion and the summary"
    for index in range(charts.GetNumberOfItems()):
        series = charts.GetItemAsObject(index).GetNthPlotSeriesNode(0)
        assert series.GetTableNode().GetNumberOfRows() > 0
    assert not (out / "VertebralMarrow_Private").exists(), "every node's data lies where the scene says"


def rgb_of(colors, index):
    rgba = [0.0] * 4
    colors.GetColor(index, rgba)
    return rgba[:3]


def test_scene_opens_with_overlay_on_t2_and_a_continuous_adc_map_centred_on_the_cutoff(demo):
    out, truth, _ = demo
    app = new_scene()
    app.scene.SetURL(str(out / "VertebralMarrow.mrml"))
    assert app.scene.Import()
    adc_map = app.scene.GetFirstNodeByName("VertebralMarrow ADC (10^-3 mm^2/s)")
    display = adc_map.GetDisplayNode()
    assert display.GetColorNode().GetName() == "VertebralMarrow ADC around cut-off"
    assert display.GetLevel() == pytest.approx(1.21) and display.GetWindow() == pytest.approx(2.42)
    colors = display.GetColorNode()
    low, centre, high = (rgb_of(colors, n) for n in (0, colors.GetNumberOfColors() // 2, colors.GetNumberOfColors() - 1))
    assert low[0] > 0.8 and low[1] < 0.2, "red below the cut-off"
    assert centre[0] > 0.8 and centre[1] > 0.6, "yellow at the cut-off"
    assert high[1] > 0.6 and high[0] < 0.2, "green above it"
    reference_adc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "study" / "adc_scanner.nrrd"))) / 1000.0
    shown = slicer.util.arrayFromVolume(adc_map)
    scanner_zero = reference_adc == 0
    assert np.allclose(shown[~scanner_zero], reference_adc[~scanner_zero], atol=1e-6)
    assert np.isnan(shown[scanner_zero]).all(), "the scanner's 0 means no value"
    composite = app.scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert app.scene.GetNodeByID(composite.GetBackgroundVolumeID()).GetName() == "t2"
    assert app.scene.GetNodeByID(composite.GetLabelVolumeID()).GetName() == "VertebralMarrow overlay"
    assert composite.GetForegroundVolumeID() == adc_map.GetID()
    segmentation = app.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode").GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        expected = truth["segments"][segment.GetName()]
        if expected["role"] == "lesion":
            red, green, _ = segment.GetColor()
            assert (red > green) == (expected["adc_class"] == "malignant"), segment.GetName()


def test_demo_writes_every_interface_output(demo):
    out, _, _ = demo
    for name in ("results.csv", "results.json", "overlay.nrrd", "overlay_colors.ctbl", "report.html", "VertebralMarrow.mrml"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png")), "snapshots and plots"


def test_scene_references_the_input_volumes_instead_of_copying_them(demo):
    """The scene points at the study's own files (never rewritten) and copies none of them."""
    out, truth, _ = demo
    scene_text = (out / "VertebralMarrow.mrml").read_text()
    referenced = {(out / name).resolve() for name in re.findall(r'fileName="([^"]+)"', scene_text)}
    for key in ("adc", "t1", "t2", "fs", "ct"):
        assert (out / "study" / truth["files"][key]).resolve() in referenced, key
        assert not (out / "scene-data" / truth["files"][key]).exists(), key
