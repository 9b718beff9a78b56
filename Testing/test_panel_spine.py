"""The panel's "Whole spine" and "Follow-up" sections, driven through the real widget under the
rig (Testing/slicer_rig), on the phantom's vertebra labels in both schemes and its follow-up
time point. Expected values come from the phantom's anatomy (phantom_spine.expected_marrow_adc,
followup_truth.json) and the published thresholds, never from the code under test.

Every test fails on an exception raised in a slot or a VTK observer (a traceback the user
would see in Slicer's Python console)."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slicer_rig import install, slicer_source  # noqa: E402

MODULE_PY = Path(__file__).resolve().parents[1] / "VertebralMarrow" / "VertebralMarrow.py"
SOURCE = slicer_source()
pytestmark = pytest.mark.skipif(SOURCE is None, reason="../shared/slicer-source (Slicer's Python layer) is absent")

# Published numbers the expectations are derived from (10^-3 mm^2/s):
MARROW_MAX = 0.55          # Koutoulidis 2017: 0.548 (criteria.json rounds the tier top to 0.55)
CUTOFF, BAND = 1.21, 0.2   # Kaur 2020 cut-off; the indeterminate band around it (project default)
REPRODUCIBILITY_PCT = 14.8  # Messiou 2011
OUTLIER_ROBUST_SD = 3.0    # criteria.json spine.outlier_robust_sd (project default)
EROSION_MM = 3.0           # criteria.json spine.erosion_mm (project default)
TOLERANCE = 0.08           # the phantom's noise and the resampling onto the ADC grid (as test_spine.py)


def expected_tier(adc: float) -> str:
    if adc <= MARROW_MAX:
        return "marrow"
    if adc <= CUTOFF - BAND:
        return "malignant"
    return "indeterminate" if adc <= CUTOFF + BAND else "benign"


def expected_flags(expected: dict) -> dict:
    """Each level's flags from the true marrow ADC: above the normal-marrow top; an outlier when
    it differs from the spine's median by more than 3 robust SD (1.4826 x MAD) and by more than
    the reproducibility of that median. The phantom's bodies all have the same height."""
    values = np.array(list(expected.values()))
    median = float(np.median(values))
    spread = max(OUTLIER_ROBUST_SD * 1.4826 * float(np.median(np.abs(values - median))), median * REPRODUCIBILITY_PCT / 100)
    return {level: {flag for flag, on in (("above_marrow_range", adc > MARROW_MAX), ("outlier", abs(adc - median) > spread)) if on}
            for level, adc in expected.items()}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The phantom (baseline, both label schemes) and its follow-up time point, with truth."""
    from VertebralMarrowLib.core.criteria import load_criteria
    from VertebralMarrowLib.phantom import draw_lesion_adcs, make_phantom
    from VertebralMarrowLib.phantom_spine import expected_marrow_adc, make_followup, write_spine_labels

    root = tmp_path_factory.mktemp("panel_spine")
    truth = make_phantom(root / "baseline", seed=5)
    labels = write_spine_labels(root / "baseline")
    followup_truth = make_followup(root / "followup", seed=5)
    lesion_adc = draw_lesion_adcs(load_criteria(), np.random.default_rng(truth["seed"]))
    expected = expected_marrow_adc(lesion_adc, truth["segments"]["L3 normal"]["adc_mean"], EROSION_MM)
    return {"baseline": root / "baseline", "followup": root / "followup", "labels": labels, "truth": truth,
            "followup_truth": followup_truth, "expected": expected}


@pytest.fixture()
def rig():
    rig = install(SOURCE)
    rig.new_application()
    yield rig
    assert rig.errors == [], "exceptions in slots or observers:\n" + "\n".join(text for _, text in rig.errors)


@pytest.fixture()
def widget(rig):
    module, parent = rig.load_module(MODULE_PY)
    return rig.show(module, parent)


def load_study(rig, folder: Path, labels_file: Path, t1: bool = True) -> dict:
    """The study's files as nodes in the rig's scene, as Slicer's Add Data would load them."""
    import slicer
    from VertebralMarrowLib.mrml import load_segmentation, load_volume

    app = slicer.modules.VertebralMarrowWidget.logic.application()
    return {"adc": load_volume(rig.scene, folder / "adc_scanner.nrrd", "ADC map"),
            "t1": load_volume(rig.scene, folder / "t1.nrrd", "T1") if t1 else None,
            "rois": load_segmentation(rig.scene, app, folder / "rois.seg.nrrd"),
            "labels": load_volume(rig.scene, labels_file, "vertebra labels", labelmap=True)}


def choose(widget, nodes: dict) -> None:
    """Pick the study in the panel's selectors, as the user would."""
    ui = widget.ui
    ui.segmentationSelector.setCurrentNode(nodes["rois"])
    ui.adcSelector.setCurrentNode(nodes["adc"])
    ui.t1Selector.setCurrentNode(nodes["t1"])
    ui.spineLabelsSelector.setCurrentNode(nodes["labels"])


def table_rows(table) -> list:
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{name: table.GetCellText(r, c) for c, name in enumerate(names)} for r in range(table.GetNumberOfRows())]


def test_whole_spine_from_the_panel_against_the_phantom(studies, rig, widget, tmp_path, monkeypatch):
    import qt
    import slicer
    from VertebralMarrowLib.core.classes import BY_KEY
    from VertebralMarrowLib.phantom import BODY_HALF_HEIGHT_MM, level_centre_z

    nodes = load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"])
    choose(widget, nodes)
    ui = widget.ui
    assert "TotalSpineSeg" in ui.spineLabelsSummaryLabel.text and "6 vertebrae T12\u2013L5" in ui.spineLabelsSummaryLabel.text
    assert "detected from the label numbers and positions" in ui.spineLabelsSummaryLabel.text
    assert ui.analyseSpineButton.enabled, ui.analyseSpineButton.toolTip
    ui.analyseSpineButton.click()

    params = widget.logic.getParameterNode()
    table = params.spineTable
    rows = {row["level"]: row for row in table_rows(table)}
    expected = studies["expected"]
    flags = expected_flags(expected)
    assert list(rows) == ["T12", "L1", "L2", "L3", "L4", "L5"]            # cranio-caudal
    for level, adc in expected.items():
        row = rows[level]
        assert float(row["adc_mean"]) == pytest.approx(adc, rel=TOLERANCE), level
        assert row["tier"] == expected_tier(adc), level
        assert set(filter(None, row["flags"].split(";"))) == flags[level], level
        assert float(row["height_ratio"]) == pytest.approx(1.0, abs=0.06), level
    assert flags["L1"] == {"above_marrow_range", "outlier"}                   # the phantom's infiltrated level
    assert table.GetColumnUnitLabel("adc_mean") == "10^-3 mm^2/s" and table.GetColumnDescription("flags")
    headers = [ui.spineTableView.tableModel().headerData(c, qt.Qt.Horizontal) for c in range(table.GetNumberOfColumns())]
    assert "adc_mean (10^-3 mm^2/s)" in headers

    # The summary names the flagged level and what to exclude.
    summary = ui.spineSummaryLabel.text
    assert summary.startswith("1 vertebra above the normal-marrow range (> 0.55 x 10^-3 mm^2/s): L1 \u2014 "
                              "diffuse infiltration to exclude"), summary
    assert "L2 lesion at L2" in summary                                      # drawn lesions placed at their level

    # The overlay: each vertebra's marrow ROI in its tier's class code, on the ADC grid, shown as the label layer.
    overlay = params.spineOverlay
    array = slicer.util.arrayFromVolume(overlay)
    adc = slicer.util.arrayFromVolume(nodes["adc"])
    assert array.shape == adc.shape
    matrix = vtk_matrix(overlay)
    k, j, i = np.nonzero(array)
    z = (matrix @ np.vstack([i, j, k, np.ones(i.size)]))[2]
    for level in expected:
        inside = np.abs(z - level_centre_z(level)) <= BODY_HALF_HEIGHT_MM
        codes = set(array[k[inside], j[inside], i[inside]].tolist())
        assert codes == {BY_KEY[expected_tier(expected[level])].code}, level
        # The ROI's voxels the map has an ADC for (0: none, e.g. the bone island's) are the ones counted.
        measured = adc[k[inside], j[inside], i[inside]] != 0
        assert int(measured.sum()) == int(float(rows[level]["n_voxels_adc"])), level
    composite = rig.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
    assert composite.GetLabelVolumeID() == overlay.GetID()

    # The spine command's report folder, written from a private copy.
    count = rig.scene.GetNumberOfNodes()
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *args: str(tmp_path)))
    assert ui.exportSpineButton.enabled
    ui.exportSpineButton.click()
    assert {"spine.csv", "spine.json", "spine.html", "spine.mrml"} <= {p.name for p in tmp_path.iterdir()}
    assert rig.app.opened_urls[-1] == str(tmp_path / "spine.html")
    assert rig.scene.GetNumberOfNodes() == count

    # A second run reuses the output nodes and leaves no node of the first behind.
    outputs = (table.GetID(), overlay.GetID())
    before = scene_nodes(rig.scene)
    ui.analyseSpineButton.click()
    assert (params.spineTable.GetID(), params.spineOverlay.GetID()) == outputs
    after = scene_nodes(rig.scene)
    classes = Counter(kind for kind, _ in after.values())
    classes.subtract(Counter(kind for kind, _ in before.values()))
    assert {kind: n for kind, n in classes.items() if n} == {}


def scene_nodes(scene) -> dict:
    """{ID: (class, name)} of the scene's nodes."""
    nodes = (scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes()))
    return {node.GetID(): (node.GetClassName(), node.GetName()) for node in nodes}


def vtk_matrix(volume) -> np.ndarray:
    from VertebralMarrowLib.mrml import ijk_to_ras_of

    return ijk_to_ras_of(volume)


def test_follow_up_through_the_panel_gives_the_phantoms_categories(studies, rig, widget, tmp_path, monkeypatch):
    """Baseline on TotalSegmentator labels, follow-up on TotalSpineSeg labels: lesions matched
    by segment name, vertebrae by level; one responding, one progressing, the others stable,
    one new, as followup_truth.json says."""
    import qt

    ui = widget.ui
    choose(widget, load_study(rig, studies["baseline"], studies["labels"]["totalsegmentator"]))
    assert "TotalSegmentator, task total" in ui.spineLabelsSummaryLabel.text
    ui.applyButton.click()
    ui.analyseSpineButton.click()
    params = widget.logic.getParameterNode()
    baseline_tables = (params.resultsTable, params.spineTable)
    ui.keepAsBaselineButton.click()
    assert params.followupBaseline is baseline_tables[0]
    assert params.resultsTable is None and params.spineTable is None

    followup = studies["followup"]
    choose(widget, load_study(rig, followup, followup / "vertebrae_totalspineseg.nii.gz", t1=False))
    ui.applyButton.click()
    ui.analyseSpineButton.click()
    assert params.resultsTable not in baseline_tables and params.spineTable not in baseline_tables
    assert ui.compareButton.enabled, ui.compareButton.toolTip
    ui.compareButton.click()

    truth = studies["followup_truth"]
    rows = {row["segment"]: row for row in table_rows(params.followupTable)}
    lesions = {name: row for name, row in rows.items() if row["kind"] == "lesion"}
    assert set(lesions) == set(truth["response"])
    for name, category in truth["response"].items():
        if category is not None:   # the truth gives no ADC (hence no category) to sclerosis and tiny lesions
            assert lesions[name]["response"] == category, (name, lesions[name]["rule"])
    responses = [lesions[name]["response"] for name, category in truth["response"].items() if category is not None]
    assert (responses.count("RAC1"), responses.count("RAC4"), responses.count("RAC5")) == (1, 1, 1)
    assert responses.count("RAC3") == len(responses) - 3 >= 1
    assert lesions["L1 new lesion"]["status"] == "new"
    for name, before in truth["lesion_adc_baseline"].items():
        if truth["response"][name] is not None:
            after = truth["lesion_adc_followup"][name]
            # measurement noise (small ROIs, low ADC) stays within the reproducibility that decides RAC 3
            assert float(lesions[name]["adc_change_pct"]) == pytest.approx(100 * (after - before) / before,
                                                                           abs=REPRODUCIBILITY_PCT), name
    vertebrae = {name: row for name, row in rows.items() if row["kind"] == "vertebra"}
    assert set(vertebrae) == set(truth["vertebra_adc_followup"])
    for level, after in truth["vertebra_adc_followup"].items():
        assert vertebrae[level]["status"] == "matched"
        assert float(vertebrae[level]["adc_followup"]) == pytest.approx(after, rel=TOLERANCE), level
        assert float(vertebrae[level]["adc_baseline"]) == pytest.approx(truth["vertebra_adc_baseline"][level], rel=TOLERANCE)
    table = params.followupTable
    assert table.GetColumnUnitLabel("adc_change_pct") == "%" and table.GetColumnUnitLabel("adc_change") == "10^-3 mm^2/s"
    summary = ui.followupSummaryLabel.text
    assert "RAC1: L2 lesion" in summary and "RAC4: T12 island" in summary and "RAC5: L1 new lesion (new)" in summary

    # The followup command's report page.
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *args: str(tmp_path)))
    ui.exportFollowupButton.click()
    assert "never replaces" in (tmp_path / "followup.html").read_text()
    written = json.loads((tmp_path / "followup.json").read_text())
    assert {row["segment"]: row["response"] for row in written["rows"]} == {n: r["response"] or None for n, r in rows.items()}


def test_baseline_folder_on_disk(studies, rig, widget, tmp_path):
    """A result folder written by the command line is a baseline too."""
    from VertebralMarrowLib.cli import main

    baseline = tmp_path / "baseline-result"
    assert main(["-q", "spine", "--labels", str(studies["labels"]["totalspineseg"]),
                 "--adc", str(studies["baseline"] / "adc_scanner.nrrd"), "--out", str(baseline)]) == 0
    followup = studies["followup"]
    choose(widget, load_study(rig, followup, followup / "vertebrae_totalsegmentator.nii.gz", t1=False))
    widget.ui.analyseSpineButton.click()
    widget.ui.followupBaselineFolderLineEdit.text = str(baseline)
    widget.ui.compareButton.click()
    rows = {row["segment"]: row for row in table_rows(widget.logic.getParameterNode().followupTable)}
    truth = studies["followup_truth"]
    assert set(rows) == set(truth["vertebra_adc_followup"])
    for level, after in truth["vertebra_adc_followup"].items():
        before = truth["vertebra_adc_baseline"][level]
        assert float(rows[level]["adc_change"]) == pytest.approx(after - before, abs=0.05), level


# --- bad input: one clear message, never a traceback --------------------------------------------


def test_labels_of_no_known_scheme_say_so(studies, rig, widget):
    from VertebralMarrowLib.mrml import volume_from_array

    nodes = load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"])
    array = np.zeros((20, 20, 20), np.int16)
    array[2:8], array[10:16] = 201, 202   # beyond every scheme's class map, and no names
    nodes["labels"] = volume_from_array(rig.scene, array, np.diag([2.0, 2.0, 2.0, 1.0]), "odd labels", labelmap=True)
    choose(widget, nodes)
    ui = widget.ui
    assert "no known vertebra scheme" in ui.spineLabelsSummaryLabel.text
    assert not ui.analyseSpineButton.enabled and "no known vertebra scheme" in ui.analyseSpineButton.toolTip
    widget.onAnalyseSpineButton()
    message = ui.spineSummaryLabel.text
    assert message.startswith("Cannot analyse the spine:") and "no known vertebra scheme" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1
    assert widget.logic.getParameterNode().spineTable is None


def test_no_adc_source_says_so(studies, rig, widget):
    nodes = load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"])
    nodes["adc"] = None
    choose(widget, nodes)
    ui = widget.ui
    assert not ui.analyseSpineButton.enabled and "Select an ADC map" in ui.analyseSpineButton.toolTip
    widget.onAnalyseSpineButton()
    assert ui.spineSummaryLabel.text == ("Cannot analyse the spine: select an ADC map, or DWI (a multi-b sequence or "
                                         "one volume per b-value) to fit one")


def test_unknown_reference_level_says_so(studies, rig, widget):
    choose(widget, load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"]))
    widget.ui.spineReferenceLevelsLineEdit.text = "C4"
    widget.ui.analyseSpineButton.click()
    assert widget.ui.spineSummaryLabel.text.startswith("Cannot analyse the spine: reference levels C4: no such vertebra")
    widget.ui.spineReferenceLevelsLineEdit.text = "L2, L3"
    widget.ui.analyseSpineButton.click()
    assert "above the normal-marrow range" in widget.ui.spineSummaryLabel.text


def test_baseline_without_adc_column_says_so(studies, rig, widget):
    import vtk

    choose(widget, load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"]))
    widget.ui.analyseSpineButton.click()
    other = rig.scene.AddNewNodeByClass("vtkMRMLTableNode", "someone else's table")
    for name in ("segment", "role", "adc_class"):
        column = vtk.vtkStringArray()
        column.SetName(name)
        column.InsertNextValue("x")
        other.AddColumn(column)
    widget.ui.followupBaselineSelector.setCurrentNode(other)
    widget.ui.compareButton.click()
    message = widget.ui.followupSummaryLabel.text
    assert message == ("Cannot compare: table 'someone else's table' is no VertebralMarrow result: it has no adc_mean "
                       "column (a results table needs segment, role, adc_mean, adc_class; a spine table level, "
                       "adc_mean, tier)")
    assert widget.logic.getParameterNode().followupTable is None


def test_the_current_result_is_no_baseline(studies, rig, widget):
    choose(widget, load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"]))
    widget.ui.analyseSpineButton.click()
    params = widget.logic.getParameterNode()
    widget.ui.followupBaselineSelector.setCurrentNode(params.spineTable)
    widget.ui.compareButton.click()
    assert "is the current result" in widget.ui.followupSummaryLabel.text


def test_labels_as_a_named_segmentation_are_read_once(studies, rig, widget, monkeypatch):
    """A segmentation named as Slicer's TotalSegmentator extension names its segments is read by
    its names; the panel reads the labels again only when they or the scheme change, not on
    every change of the panel."""
    import slicer
    from VertebralMarrowLib.mrml import segmentation_from_labelmap
    from VertebralMarrowLib.phantom_spine import TOTALSPINESEG
    from VertebralMarrowLib.slicer_panel import spine as spine_panel

    nodes = load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"])
    labelmap = nodes["labels"]
    names = {value: (f"{key} vertebra" if key[0] in "TL" and "-" not in key else
                     f"{key.replace('-', '/')} intervertebral disc" if "-" in key else f"spinal {key}")
             for key, value in TOTALSPINESEG.items()}
    app = slicer.modules.VertebralMarrowWidget.logic.application()
    segmentation = segmentation_from_labelmap(rig.scene, app, labelmap, names, "TotalSegmentator")
    nodes["labels"] = segmentation
    reads = []
    real = spine_panel.labels_from_parameters
    monkeypatch.setattr(spine_panel, "labels_from_parameters", lambda *a: reads.append(1) or real(*a))
    choose(widget, nodes)
    text = widget.ui.spineLabelsSummaryLabel.text
    assert text.startswith("Labels: labels named by level (from the names): 6 vertebrae T12\u2013L5; 5 discs"), text
    for step in range(5):
        widget.ui.overlayOpacitySliderWidget.value = 0.1 * step
    assert len(reads) == 1
    widget.ui.analyseSpineButton.click()
    rows = {row["level"]: row for row in table_rows(widget.logic.getParameterNode().spineTable)}
    for level, adc in studies["expected"].items():
        assert float(rows[level]["adc_mean"]) == pytest.approx(adc, rel=TOLERANCE), level


def test_whole_spine_fitted_from_dwi_replaces_its_fitted_map(studies, rig, widget):
    """DWI chosen in Inputs instead of an ADC map: the ADC is fitted as for Apply; a second run's
    fitted map replaces the first's, and the user's DWI volumes stay."""
    from VertebralMarrowLib.mrml import load_volume

    nodes = load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"])
    nodes["adc"] = None
    choose(widget, nodes)
    dwi = [load_volume(rig.scene, studies["baseline"] / f"dwi_b{b:04d}.nrrd", "DWI") for b in (0, 50, 400, 800)]
    params = widget.logic.getParameterNode()
    params.dwiVolumes, params.bvalues = dwi, "0,50,400,800"
    widget.ui.analyseSpineButton.click()
    first = widget.logic.lastSpineResult.adc_node
    rows = {row["level"]: row for row in table_rows(params.spineTable)}
    for level, adc in studies["expected"].items():
        # the default fit (IWLS) is not the scanner's (OLS): as close as test_spine.py finds them
        assert float(rows[level]["adc_mean"]) == pytest.approx(adc, rel=0.1), level
    before = Counter(kind for kind, _ in scene_nodes(rig.scene).values())
    widget.ui.analyseSpineButton.click()
    assert first.GetScene() is None and widget.logic.lastSpineResult.adc_node.GetScene() is rig.scene
    after = Counter(kind for kind, _ in scene_nodes(rig.scene).values())
    after.subtract(before)
    assert {kind: n for kind, n in after.items() if n} == {}
    assert all(node.GetScene() is rig.scene for node in dwi)


def test_cancelling_analyse_spine_leaves_the_scene_and_the_panel_as_they_were(studies, rig, widget, monkeypatch):
    """Cancel pressed in the progress dialog (here: before the first step, as soon as the dialog
    exists): the reading stops, no table, overlay, ROI or fitted map is left, no error is shown,
    and the next Analyse spine runs to its end."""
    import slicer
    from VertebralMarrowLib.mrml import load_volume

    nodes = load_study(rig, studies["baseline"], studies["labels"]["totalspineseg"])
    nodes["adc"] = None  # the ADC fitted from DWI: a node the reading makes, to be gone after a cancel
    choose(widget, nodes)
    params = widget.logic.getParameterNode()
    params.dwiVolumes = [load_volume(rig.scene, studies["baseline"] / f"dwi_b{b:04d}.nrrd", "DWI") for b in (0, 50, 400, 800)]
    params.bvalues = "0,50,400,800"
    real = slicer.util.createProgressDialog

    def cancelled_at_once(*args, **kwargs):
        dialog = real(*args, **kwargs)
        dialog.cancel()
        return dialog

    before = Counter(kind for kind, _ in scene_nodes(rig.scene).values())
    monkeypatch.setattr(slicer.util, "createProgressDialog", cancelled_at_once)
    widget.ui.analyseSpineButton.click()
    after = Counter(kind for kind, _ in scene_nodes(rig.scene).values())
    after.subtract(before)
    assert {kind: n for kind, n in after.items() if n} == {}
    assert params.spineTable is None and widget.logic.lastSpineResult is None
    assert widget.ui.spineSummaryLabel.text == ""  # no error message for a cancel
    monkeypatch.setattr(slicer.util, "createProgressDialog", real)
    widget.ui.analyseSpineButton.click()
    assert params.spineTable is not None and len(table_rows(params.spineTable)) == len(studies["expected"])
