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
    "fs_signal, ct_mean_hu, differential, adc_restricted"
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
            if expected["adc_class"] is not None:  # the 5-mm focus: partial volume, its own test
                assert row["adc_class"] == expected["adc_class"], name
            if expected["adc_mean"] is not None:  # the bone island has no DWI signal
                assert float(row["adc_mean"]) == pytest.approx(expected["adc_mean"], rel=0.06, abs=0.03), name


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
        if expected.get("partial_volume"):
            continue  # the 5-mm focus is measured through partial volume: no entity can be favoured
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


def segment_masks_on(out, truth, reference: sitk.Image):
    """Each segment's voxels on `reference`'s grid: SimpleITK nearest-neighbour resampling of
    the .seg.nrrd's own layers (independent of the library)."""
    image = sitk.ReadImage(str(out / "study" / truth["files"]["seg"]))
    masks, n = {}, 0
    while image.HasMetaDataKey(f"Segment{n}_Name"):
        layer, value = int(image.GetMetaData(f"Segment{n}_Layer")), int(image.GetMetaData(f"Segment{n}_LabelValue"))
        channel = image if image.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(image, layer)
        resampled = sitk.Resample(channel, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, channel.GetPixelID())
        masks[image.GetMetaData(f"Segment{n}_Name")] = sitk.GetArrayFromImage(resampled) == value
        n += 1
    return masks


def test_overlay_marks_lesion_voxels_only_with_their_class(demo):
    """Each lesion's voxels: normal-marrow colour (4) for a lesion in the normal-marrow range,
    never malignant (3) or indeterminate (2) for a fat-containing lesion, benign (1) for a bone
    island, and otherwise each voxel's own tier by the papers' bounds (0.55, 1.01, 1.41)."""
    out, truth, rows = demo
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "overlay.nrrd")))
    adc_image = sitk.ReadImage(str(out / "study" / "adc_scanner.nrrd"))
    adc = sitk.GetArrayFromImage(adc_image) / 1000.0
    assert overlay.shape == adc.shape
    masks = segment_masks_on(out, truth, adc_image)
    lesions = {name: seg for name, seg in truth["segments"].items() if seg["role"] == "lesion" and name != "L2 focus"}
    in_lesion = np.any([masks[name] for name in lesions], axis=0)
    # outside the lesion ROIs only the voxels the 5-mm focus partly covers are painted
    from VertebralMarrowLib.phantom import LESIONS, level_centre_z

    focus = next(lesion for lesion in LESIONS if lesion.segment == "L2 focus")
    centre = np.array(focus.centre_offset_mm) + [0.0, 0.0, level_centre_z(focus.level)]
    reach = focus.radius_mm + 0.5 * np.linalg.norm(adc_image.GetSpacing())
    for k, j, i in np.argwhere((overlay > 0) & ~in_lesion):
        x, y, z = adc_image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        assert np.linalg.norm(np.array([-x, -y, z]) - centre) <= reach, (i, j, k)
    tiers = np.select([adc <= 0.55, adc < 1.01, adc <= 1.41], [4, 3, 2], 1)
    by_name = {row["segment"]: row for row in rows}
    for name, seg in lesions.items():
        mask, painted = masks[name] & (adc > 0), overlay[masks[name] & (adc > 0)]
        if by_name[name]["adc_class"] == "marrow":
            assert (painted == 4).all(), name
        elif seg["deciding_sign"] == "fat":
            assert not np.isin(painted, [2, 3]).any(), name
        elif seg["entity"] == "bone_island":
            assert (painted == 1).all(), name
        else:
            np.testing.assert_array_equal(painted, tiers[mask], err_msg=name)
    assert set(np.unique(overlay)) == {0, 1, 2, 3, 4}


def test_seed_case_reads_normal_marrow_range_never_red(demo):
    """The seed case (reconverted marrow: T1 and T2 low, FS iso, ADC of marrow): class marrow,
    its tier in words, painted in the normal-marrow colour on every voxel, never red."""
    out, truth, rows = demo
    row = next(r for r in rows if r["segment"] == "L2 island")
    assert truth["segments"]["L2 island"]["entity"] == "red_marrow_reconversion"
    assert (row["t1_signal"], row["t2_signal"], row["fs_signal"]) == ("low", "low", "iso")
    assert row["adc_class"] == "marrow" and float(row["adc_mean"]) <= 0.55
    document = json.loads((out / "results.json").read_text())
    tier = document["segments"]["L2 island"]["tier"]
    assert tier["deciding_sign"] == "adc" and "no diffusion evidence of infiltration" in tier["text"]
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "overlay.nrrd")))
    adc_image = sitk.ReadImage(str(out / "study" / "adc_scanner.nrrd"))
    mask = segment_masks_on(out, truth, adc_image)["L2 island"]
    assert mask.sum() >= 10 and (overlay[mask] == 4).all()
    # and no lesion whose mean lies in the normal-marrow range is malignant or red anywhere
    for other in rows:
        if other["role"] == "lesion" and other["adc_mean"] and float(other["adc_mean"]) <= 0.55:
            assert other["adc_class"] != "malignant", other["segment"]
    assert "marrow" in (out / "report.html").read_text()


def test_each_sign_decides_its_lesion_with_its_reason(demo):
    out, truth, rows = demo
    document = json.loads((out / "results.json").read_text())
    by_name = {row["segment"]: row for row in rows}
    tier = {name: document["segments"][name]["tier"] for name in truth["segments"] if truth["segments"][name]["role"] == "lesion"}
    # fat: the haemangioma (T1 above marrow) is benign though its ADC lies in the band (Winfield 1.085)
    assert tier["T12 lesion"]["deciding_sign"] == "fat" and tier["T12 lesion"]["adc_tier"] == "indeterminate"
    assert tier["T12 lesion"]["text"].startswith("fat-containing: benign whatever its ADC")
    assert by_name["T12 lesion"]["adc_class"] == "benign"
    assert tier["L5 island"]["deciding_sign"] == "fat" and by_name["L5 island"]["adc_class"] == "marrow"
    # density: the bone island (CT ~1190 HU) and the blastic metastasis (654 HU, T1 and T2 low)
    assert float(by_name["L4 island"]["ct_mean_hu"]) >= 885 and tier["L4 island"]["deciding_sign"] == "density"
    assert "bone island" in tier["L4 island"]["text"] and by_name["L4 island"]["adc_class"] == "benign"
    assert any("no DWI signal (sclerosis?), see CT" in reason for reason in tier["L4 island"]["reasons"])
    assert document["segments"]["L4 island"]["no_dwi_signal_fraction"] > 0.5
    assert "blastic" in tier["L3 lesion"]["text"] and by_name["L3 lesion"]["adc_class"] == "malignant"
    # heterogeneity: the necrotic metastasis (rim 0.72, core 2.2) is indeterminate, its rim reported
    necrotic = truth["segments"]["L1 necrotic"]
    assert float(by_name["L1 necrotic"]["adc_p10"]) <= 1.01 and float(by_name["L1 necrotic"]["adc_p90"]) > 1.41
    assert tier["L1 necrotic"]["deciding_sign"] == "heterogeneity" and by_name["L1 necrotic"]["adc_class"] == "indeterminate"
    assert float(by_name["L1 necrotic"]["adc_restricted"]) == pytest.approx(necrotic["adc_rim"], abs=0.08)
    assert document["segments"]["L1 necrotic"]["findings"]["adc_restricted"] == pytest.approx(
        float(by_name["L1 necrotic"]["adc_restricted"]), abs=1e-3)
    # the 5-mm focus: a row, flagged, measured between marrow and the focus (partial volume)
    focus = by_name["L2 focus"]
    assert focus["n_voxels_adc"] == "0" and document["segments"]["L2 focus"]["partial_volume"]["voxels_touched"] > 0
    assert truth["segments"]["L3 normal"]["adc_mean"] < float(focus["adc_mean"]) < truth["segments"]["L2 focus"]["adc_focus"]


def test_results_json_records_tier_bounds_and_bvalues(demo):
    out, _, _ = demo
    document = json.loads((out / "results.json").read_text())
    marrow = document["criteria"]["marrow_max"]
    assert marrow["value"] == 0.55 and "Koutoulidis" in marrow["citation"] and marrow["verified"] is True
    assert [a["value"] for a in marrow["alternatives"]] == [0.655]
    assert document["criteria"]["indeterminate_band"]["value"] == 0.2
    assert document["criteria"]["bone_island_min_hu"]["value"] == 885 and "Ulano" in document["criteria"]["bone_island_min_hu"]["citation"]
    bvalues = document["adc"]["bvalues"]
    assert bvalues["values_s_per_mm2"] is None and "unknown" in bvalues["text"] and "1000" in bvalues["text"]


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
    assert [colors.GetColorName(v) for v in (1, 2, 3, 4)] == ["benign-range", "indeterminate", "malignant-range",
                                                                "normal-marrow range"]
    assert slicer.util.arrayFromVolume(overlay).max() == 4
    segmentation = names["vtkMRMLSegmentationNode"][0].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 15
    table = [n for n in names["vtkMRMLTableNode"] if n.GetName() == "VertebralMarrow results"][0]
    assert table.GetNumberOfRows() == 15
    assert table.GetColumnUnitLabel("adc_mean") == "10^-3 mm^2/s"
    assert table.GetCellText(0, 0) == "T12 lesion" and table.GetCellText(0, 10) == "benign"
    charts = app.scene.GetNodesByClass("vtkMRMLPlotChartNode")
    assert charts.GetNumberOfItems() == 11, "one ADC histogram per lesion with ADC values (not the bone island, not the focus) and the summary"
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
    count = colors.GetNumberOfColors()
    low, centre, high = (rgb_of(colors, n) for n in (0, count // 2, count - 1))
    # the window 0 .. 2.42 over the table: ADC 0.55 (Koutoulidis) sits at 0.55 / 2.42 of it
    marrow_top, above = int(0.54 / 2.42 * (count - 1)), int(0.62 / 2.42 * (count - 1))
    assert all(rgb_of(colors, n)[2] > 0.8 and rgb_of(colors, n)[0] < 0.4 for n in range(marrow_top)), "marrow range never red"
    assert low[2] > 0.8, "the normal-marrow colour at 0"
    red = rgb_of(colors, above)
    assert red[0] > 0.8 and red[1] < 0.3, "red just above the normal-marrow range"
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
            red, green, blue = segment.GetColor()
            assert (red > 0.8 and green < 0.3) == (expected["adc_class"] == "malignant"), segment.GetName()
            if expected["adc_class"] == "marrow":  # the seed case: the normal-marrow colour, blue
                assert blue > 0.8 and red < 0.4, segment.GetName()


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


def test_the_panel_shows_each_lesion_reading_and_the_sign_that_decided_it(demo):
    """The panel's differential box says what the report says: the tier in words and its sign."""
    import html

    from VertebralMarrowLib.core.tiers import DECIDING_SIGN_WORDS
    from VertebralMarrowLib.slicer_panel.differential_text import differential_html

    out = demo[0]
    document = json.loads((out / "results.json").read_text())
    for row in document["rows"]:
        if row["role"] != "lesion":
            continue
        tier = document["segments"][row["segment"]]["tier"]
        box = differential_html(document, row["segment"])
        assert html.escape(tier["text"], quote=False) in box, row["segment"]
        assert DECIDING_SIGN_WORDS[tier["deciding_sign"]] in box


def test_make_demo_installs_what_the_demo_and_the_readme_need():
    """`make demo` installs the runtime dependencies, not the test tools; but the demo also
    writes DICOM SEG, SR and parametric map (highdicom: the `dicom` extra) and the README's
    examples, which run after it, include `batch` (Dask: the `batch` extra). Without them a
    clean clone's demo quietly skips the DICOM objects and the batch example fails."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    makefile = (repo / "Makefile").read_text()
    recipe = re.search(r"^\$\(RUNTIME\):.*\n\t(.+)$", makefile, re.M)
    assert recipe, "the Makefile's runtime install recipe"
    extras = re.search(r"-e\s+'?\.\[([^\]]*)\]", recipe.group(1))
    assert extras and {"dicom", "batch"} <= set(extras.group(1).split(",")), recipe.group(1)
    pyproject = (repo / "pyproject.toml").read_text()
    assert re.search(r"^dicom = \[\s*\"highdicom", pyproject, re.M)
    assert re.search(r"^batch = \[\s*(#.*\s*)?\"dask\[distributed\]", pyproject, re.M)
