"""The module's real widget and its in-Slicer self-test, run under the rig (Testing/slicer_rig):
PySide6 under PythonQt's rules, CTK/qMRML stand-ins, slicer.app on slicer-core's MRML, and
Slicer's own Python layer (ScriptedLoadableModule, parameterNodeWrapper) read in place from
../shared/slicer-source. One scenario per defect of issue 13.

Every test fails on an exception raised in a slot or a VTK observer (PythonQt and VTK would
only print it) and on a VTK error logged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slicer_rig import install, slicer_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE_PY = ROOT / "VertebralMarrow" / "VertebralMarrow.py"
SOURCE = slicer_source()
pytestmark = pytest.mark.skipif(SOURCE is None, reason="../shared/slicer-source (Slicer's Python layer) is absent")


@pytest.fixture()
def rig():
    rig = install(SOURCE)
    rig.new_application(translations={("qSlicerAbstractCoreModule", "Quantification"): "Quantifizierung"})
    yield rig
    assert rig.errors == [], "exceptions in slots or observers:\n" + "\n".join(text for _, text in rig.errors)


@pytest.fixture()
def shown(rig):
    """The module loaded and shown (setup, enter): (rig, python module, parent, widget)."""
    module, parent = rig.load_module(MODULE_PY)
    widget = rig.show(module, parent)
    return rig, module, parent, widget


def vtk_errors(rig):
    return [line for line in rig.vtk_messages().splitlines() if line.startswith("ERROR")]


def study(module, rig, dwi=False):
    from VertebralMarrowLib.slicer_panel import panel

    return panel.self_test_study(rig.scene, module.VertebralMarrowLogic.application(), dwi=dwi)


def chosen(module, rig, widget):
    """The self-test study in the scene, its segmentation and scanner ADC map chosen in the
    panel: (study nodes, expected values, parameter node)."""
    s, expected = study(module, rig)
    params = widget.logic.getParameterNode()
    params.segmentation, params.adcVolume = s.segmentation, s.adc
    return s, expected, params


def test_widget_sets_up_and_the_self_test_passes(shown):
    rig, module, parent, widget = shown
    assert widget.ui.applyButton.enabled is False
    assert "segmentation" in widget.ui.applyButton.toolTip
    test = module.VertebralMarrowTest()
    test.messageDelay = 0
    test.runTest()
    assert vtk_errors(rig) == []          # defect 9: no SetNamesInitialised error on Apply


def test_category_in_slicers_translation_context(shown):
    # defect 7: a translated Slicer shows the module under its own "Quantification" category
    rig, module, parent, widget = shown
    assert parent.categories == ["Quantifizierung"]


def test_checkable_dwi_box_has_no_none_row(shown):
    # defect 6
    rig, module, parent, widget = shown
    assert widget.ui.dwiVolumesSelector.noneEnabled is False
    assert widget.ui.dwiVolumesSelector.rows() == [n.GetID() for n in widget.ui.dwiVolumesSelector.uncheckedNodes()]


def test_slider_drag_on_a_diffusion_weighted_volume_expands_it_once(shown, monkeypatch):
    # defect 1: 20 cut-off steps and 12 keystrokes, one expansion
    import slicer
    from VertebralMarrowLib.inputs import nodes as dwi_nodes
    from VertebralMarrowLib.slicer_panel import panel

    rig, module, parent, widget = shown
    s, _ = study(module, rig, dwi=True)
    dw = slicer.vtkMRMLDiffusionWeightedVolumeNode()
    dw.SetName("dwi")
    rig.scene.AddNode(dw)
    stack = np.stack([slicer.util.arrayFromVolume(v) for v in s.dwi], axis=-1)
    image = __import__("vtk").vtkImageData()
    image.SetDimensions(stack.shape[2], stack.shape[1], stack.shape[0])
    image.AllocateScalars(__import__("vtk").VTK_FLOAT, stack.shape[-1])
    dw.SetAndObserveImageData(image)
    slicer.util.arrayFromVolume(dw)[:] = stack
    dw.SetNumberOfGradients(len(panel.SELF_TEST_BVALUES))
    for index, b in enumerate(panel.SELF_TEST_BVALUES):
        dw.SetBValue(index, b)
    calls = []
    real = dwi_nodes._expand_diffusion_weighted
    monkeypatch.setattr(dwi_nodes, "_expand_diffusion_weighted", lambda node: calls.append(node) or real(node))
    params = widget.logic.getParameterNode()
    params.segmentation = s.segmentation
    for node in s.dwi:
        rig.scene.RemoveNode(node)
    widget.ui.dwiVolumesSelector.check(dw)
    assert list(params.dwiVolumes) == [dw]
    assert "b=800" in widget.ui.dwiSummaryLabel.text and "4 volumes" in widget.ui.dwiSummaryLabel.text
    for step in range(20):
        widget.ui.cutoffSliderWidget.value = 1.0 + 0.01 * step
    for text in "0,50,400,800":
        widget.ui.bvaluesLineEdit.text = widget.ui.bvaluesLineEdit.text + text
    assert params.cutoff == pytest.approx(1.19) and params.bvalues == "0,50,400,800"
    assert len(calls) == 1


def test_deleted_dwi_volumes_leave_apply_usable(shown):
    # defect 2: deleting the checked DWI volumes, then choosing an ADC map, enables Apply
    rig, module, parent, widget = shown
    s, _ = study(module, rig, dwi=True)
    params = widget.logic.getParameterNode()
    params.segmentation = s.segmentation
    for node in s.dwi:
        widget.ui.dwiVolumesSelector.check(node)
    assert len(params.dwiVolumes) == 4
    for node in s.dwi:
        rig.scene.RemoveNode(node)
    assert list(params.dwiVolumes) == []
    from VertebralMarrowLib.mrml import volume_from_array

    adc = volume_from_array(rig.scene, np.full((4, 4, 4), 1.0, np.float32), np.eye(4), "ADC")
    params.adcVolume = adc
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip


def test_export_adds_no_converter_rule(shown, tmp_path):
    # defect 3
    import slicer

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    counts = []
    for run in range(3):
        widget.logic.exportReport(tmp_path / f"report{run}")
        counts.append(len(factory.GetConverterRules()))
    assert counts[0] == counts[1] == counts[2]
    assert sorted({r.GetClassName() for r in factory.GetConverterRules()}) == sorted(
        r.GetClassName() for r in factory.GetConverterRules())


def test_differential_box_is_not_rebuilt_by_unrelated_changes(shown, monkeypatch):
    # defect 4
    from VertebralMarrowLib.slicer_panel import panel

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    built = []
    real = panel.differential_html
    monkeypatch.setattr(panel, "differential_html", lambda *a: built.append(a) or real(*a))
    for step in range(10):
        widget.ui.overlayOpacitySliderWidget.value = 0.1 * step
    assert built == []
    widget.ui.lesionComboBox.setCurrentIndex(1)
    assert len(built) == 1 and "L4 lesion" in widget.ui.differentialBrowser.toPlainText()


def test_apply_cannot_be_re_entered(shown, monkeypatch):
    # defect 5: a click during the run (processEvents) starts nothing; the button is off meanwhile
    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    runs, during = [], []
    real = widget.logic.process

    def process(parameterNode, progress=None, cancelled=None, **kwargs):
        runs.append(1)
        during.append(widget.ui.applyButton.enabled)
        widget.ui.applyButton.click()
        return real(parameterNode, progress=progress, cancelled=cancelled, **kwargs)

    monkeypatch.setattr(widget.logic, "process", process)
    widget.ui.applyButton.click()
    assert runs == [1] and during == [False]
    assert widget.ui.applyButton.enabled


def test_closed_scene_segmentation_is_not_observed(shown):
    # defect 8
    import slicer

    rig, module, parent, widget = shown
    s, _ = study(module, rig)
    widget.logic.getParameterNode().segmentation = s.segmentation
    segmentation = s.segmentation
    assert segmentation.HasObserver(slicer.vtkSegmentation.SegmentAdded)
    rig.scene.Clear(0)
    assert not segmentation.HasObserver(slicer.vtkSegmentation.SegmentAdded)
    assert widget._observedSegmentation is None


def test_exit_and_enter_rebind_the_panel(shown):
    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    rig.hide(parent)
    params.cutoff = 1.5
    assert widget.ui.cutoffSliderWidget.value != 1.5      # not bound while hidden
    rig.show(module, parent)
    assert widget.ui.cutoffSliderWidget.value == 1.5
    widget.ui.cutoffSliderWidget.value = 1.3
    assert widget.logic.getParameterNode().cutoff == pytest.approx(1.3)


def test_scene_saved_and_reloaded_with_the_module_shown(shown, tmp_path):
    # defect 11: after loading, the panel's wrapper sees the result nodes
    rig, module, parent, widget = shown
    s, expected, params = chosen(module, rig, widget)
    widget.onApplyButton()
    table_name = params.resultsTable.GetName()
    scene = rig.scene
    scene.SetRootDirectory(str(tmp_path))
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and not node.GetHideFromEditors() and node.GetScene() is scene:
            if node.GetStorageNode() is None:
                node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            if storage is not None:
                storage.SetFileName(str(tmp_path / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
                storage.WriteData(node)
    mrml = tmp_path / "scene.mrml"
    scene.SetURL(str(mrml))
    assert scene.Commit()
    scene.Clear(0)
    assert widget.logic.getParameterNode().resultsTable is None
    scene.SetURL(str(mrml))
    assert scene.Import()
    wrapper = widget._parameterNode
    assert wrapper.resultsTable is not None and wrapper.resultsTable.GetName() == table_name
    assert wrapper.overlayVolume is not None and wrapper.segmentation is not None
    assert widget.ui.resultsTableView.mrmlTableNode() is wrapper.resultsTable
    assert widget.ui.lesionComboBox.count == 2


def test_dwi_sequence_from_dicom_loader_frame_labels(shown):
    # a volume sequence as MultiVolumeImporter leaves it: empty index name, b-values as FrameLabels
    import slicer

    rig, module, parent, widget = shown
    s, expected = study(module, rig, dwi=True)
    sequence = rig.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "DWI series")
    for index, node in enumerate(s.dwi):
        sequence.SetDataNodeAtValue(node, str(index))
    sequence.SetAttribute("MultiVolume.FrameLabels", "0,50,400,800")
    sequence.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagName", "DiffusionBValue")
    for node in s.dwi:
        rig.scene.RemoveNode(node)
    params = widget.logic.getParameterNode()
    params.segmentation, params.dwiSequence = s.segmentation, sequence
    text = widget.ui.dwiSummaryLabel.text
    assert "b-values from the index values of sequence 'DWI series'" in text and "b=800" in text
    assert widget.ui.applyButton.enabled
    widget.onApplyButton()
    adc = slicer.util.arrayFromTableColumn(params.resultsTable, "adc_mean")
    assert adc == pytest.approx([expected["adc_mean"][n] for n in ("L2 lesion", "L4 lesion", "L3 normal")], abs=1e-3)


def test_module_folder_compiles_on_python_3_9_syntax():
    import ast

    for path in (ROOT / "VertebralMarrow").rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))


@pytest.mark.parametrize("version", ["3.9", "3.12"])
def test_module_folder_compiles_on_slicers_pythons(version, tmp_path):
    found = sorted(Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}")) or \
        ([Path(shutil.which(f"python{version}"))] if shutil.which(f"python{version}") else [])
    if not found:
        pytest.skip(f"no Python {version} interpreter on this machine")
    result = subprocess.run([str(found[-1]), "-m", "compileall", "-q", "-d", "x", str(ROOT / "VertebralMarrow")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_extension_configures_and_builds_with_slicers_macros(tmp_path):
    """CMakeLists.txt with Slicer's real slicerMacroBuildScriptedModule (and CTK's compile
    macro): the build tree holds every script (and its .pyc) and resource, and the module's
    own test and the generic module test are registered."""
    import sysconfig

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    config = Path(__file__).resolve().parent / "slicer_rig" / "cmake"
    library = Path(sysconfig.get_config_var("LIBDIR") or "") / (sysconfig.get_config_var("LDLIBRARY") or "")
    build = tmp_path / "build"
    configure = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={config}", f"-DSLICER_SOURCE={SOURCE}",
         f"-DRIG_PYTHON={sys.executable}", f"-DRIG_PYTHON_LIBRARY={library}", "-DBUILD_TESTING=ON"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    built = subprocess.run([cmake, "--build", str(build)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    tree = build / "lib" / "Slicer-5.12" / "qt-scripted-modules"
    module_dir = ROOT / "VertebralMarrow"
    for script in module_dir.rglob("*.py"):
        relative = script.relative_to(module_dir)
        assert (tree / relative).is_file(), relative
        assert (tree / relative).with_suffix(".pyc").is_file(), relative
    for resource in ("Resources/UI/VertebralMarrow.ui", "Resources/Icons/VertebralMarrow.png",
                     "VertebralMarrowLib/core/criteria.json"):
        assert (tree / resource).is_file(), resource
    listed = subprocess.run([shutil.which("ctest") or "ctest", "-N"], cwd=build, capture_output=True, text=True).stdout
    assert "py_VertebralMarrow" in listed
    assert "py_nomainwindow_qSlicerVertebralMarrowModuleGenericTest" in listed


def test_panel_reads_top_to_bottom_with_advanced_parameters_collapsed(shown):
    rig, module, parent, widget = shown
    ui = widget.ui
    assert ui.parametersCollapsibleButton.collapsed is True
    assert ui.inputsCollapsibleButton.collapsed is False
    layout = parent.widgetRepresentation().layout().itemAt(0).widget().layout()
    order = [layout.itemAt(i).widget().objectName for i in range(layout.count()) if layout.itemAt(i).widget()]
    assert order.index("inputsCollapsibleButton") < order.index("applyButton") < order.index("resultsCollapsibleButton")


def test_levels_and_disc_state_from_the_roles_table(shown):
    from VertebralMarrowLib.mrml import get_segment_spread

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    table = widget.ui.segmentRolesTable
    assert [table.horizontalHeaderItem(c).text() for c in range(table.columnCount)] == ["Segment", "Role", "Levels", "Disc"]
    row = [table.item(r, 0).text() for r in range(table.rowCount)].index("L2 lesion")
    table.cellWidget(row, 2).value = 3
    table.cellWidget(row, 3).setCurrentIndex(2)  # spared
    segment_id = s.segmentation.GetSegmentation().GetSegmentIdBySegmentName("L2 lesion")
    assert get_segment_spread(s.segmentation, segment_id) == (3, False)
    widget.onApplyButton()
    document = widget._document
    detail = document["segments"]["L2 lesion"]
    assert any("level" in reason or "disc" in reason for candidate in detail["differential"]
               for reason in candidate.get("fits", []) + candidate.get("contradicts", []))
    table.cellWidget(row, 2).value = 0
    table.cellWidget(row, 3).setCurrentIndex(0)
    assert get_segment_spread(s.segmentation, segment_id) == (None, None)


def test_chemical_shift_and_fat_fraction_selectors_reach_the_study(shown):
    from VertebralMarrowLib.slicer_panel import panel

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.ui.inPhaseSelector.setCurrentNode(s.t1)
    widget.ui.opposedPhaseSelector.setCurrentNode(s.t2)
    widget.ui.fatFractionSelector.setCurrentNode(s.fs)
    nodes = panel.study_from_parameters(widget.logic.getParameterNode())
    assert (nodes.in_phase, nodes.opposed_phase, nodes.fat_fraction) == (s.t1, s.t2, s.fs)


def test_clicking_a_result_row_centres_the_views_on_that_lesion(shown):
    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    view = widget.ui.resultsTableView
    model = view.model()
    row = [model.index(r, 0).data() for r in range(model.rowCount())].index("L4 lesion")
    view.clicked.emit(model.index(row, 3))
    # 'L4 lesion' is voxels 2-7 (i, k) and 14-19 (j) of 2 mm voxels at the origin: its centre is
    # at (9, 33, 9) mm; Slicer jumps to the segment's centre voxel, within half a voxel of it.
    expected = (9.0, 33.0, 9.0)
    red = rig.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
    matrix = red.GetSliceToRAS()
    assert tuple(matrix.GetElement(i, 3) for i in range(3)) == pytest.approx(expected, abs=1.0)
    assert widget.ui.lesionComboBox.currentText == "L4 lesion"


def test_results_headers_carry_their_units(shown):
    import qt

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    model = widget.ui.resultsTableView.tableModel()
    headers = [model.headerData(c, qt.Qt.Horizontal) for c in range(model.columnCount())]
    assert "adc_mean (10^-3 mm^2/s)" in headers and "volume_ml (mL)" in headers and "segment" in headers


def test_export_opens_the_report(shown, tmp_path, monkeypatch):
    import qt

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *args: str(tmp_path)))
    widget.ui.exportButton.click()
    assert rig.app.opened_urls == [str(tmp_path / "report.html")] and (tmp_path / "report.html").is_file()


def test_without_matplotlib_the_panel_says_so(rig, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    module, parent = rig.load_module(MODULE_PY)
    widget = rig.show(module, parent)
    assert "matplotlib" in widget.ui.plotsNoteLabel.text and not widget.ui.plotsNoteLabel.isHidden()


def test_criteria_file_browse_button(shown, tmp_path, monkeypatch):
    import qt

    rig, module, parent, widget = shown
    own = tmp_path / "mine.json"
    own.write_text("{}")
    answers = [str(own), ""]
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(lambda *args: answers.pop(0)))
    widget.ui.criteriaFileBrowseButton.click()
    assert widget.logic.getParameterNode().criteriaFile == str(own) == widget.ui.criteriaFileLineEdit.text
    widget.ui.criteriaFileBrowseButton.click()   # cancelled: unchanged
    assert widget.logic.getParameterNode().criteriaFile == str(own)


def test_colour_blind_safe_overlay_palette(shown):
    from VertebralMarrowLib.core.classes import BY_KEY

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    colors = params.overlayVolume.GetDisplayNode().GetColorNode()

    def rgb(code):
        value = [0.0] * 4
        colors.GetColor(code, value)
        return tuple(round(255 * c) for c in value[:3])

    own = {key: tuple(round(255 * c) for c in BY_KEY[key].rgba[:3]) for key in ("benign", "malignant")}
    assert (rgb(BY_KEY["benign"].code), rgb(BY_KEY["malignant"].code)) == (own["benign"], own["malignant"])
    widget.ui.colorBlindPaletteCheckBox.checked = True
    # Okabe & Ito 2008: blue (0, 114, 178), vermillion (213, 94, 0), yellow (240, 228, 66)
    assert rgb(BY_KEY["benign"].code) == (0, 114, 178) and rgb(BY_KEY["malignant"].code) == (213, 94, 0)
    assert rgb(BY_KEY["indeterminate"].code) == (240, 228, 66)
    widget.onApplyButton()   # a new run keeps the chosen palette
    assert rgb(BY_KEY["malignant"].code) == (213, 94, 0)
    widget.ui.colorBlindPaletteCheckBox.checked = False
    assert rgb(BY_KEY["malignant"].code) == own["malignant"]


def test_export_without_matplotlib_says_so_in_results_and_report(shown, tmp_path, monkeypatch):
    import json

    rig, module, parent, widget = shown
    s, _, params = chosen(module, rig, widget)
    widget.onApplyButton()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    widget.logic.exportReport(tmp_path)
    warnings = json.loads((tmp_path / "results.json").read_text())["warnings"]
    assert any("matplotlib is not installed" in w for w in warnings)
    assert "matplotlib is not installed" in (tmp_path / "report.html").read_text()
    assert not any("matplotlib" in w for w in widget.logic.lastResult.warnings)  # the panel's result untouched


# --- the rig itself keeps PythonQt's and the widgets' rules ---------------------------------


def test_rig_pythonqt_rules(rig):
    import qt

    label = qt.QLabel("hello")
    assert label.text == "hello"                       # a property, not the text() method
    button = qt.QPushButton()
    button.enabled = False
    assert button.enabled is False and button.isEnabled() is False
    calls = []
    button.enabled = True
    button.connect("clicked(bool)", lambda: calls.append("no arguments"))   # truncated to the slot's arity
    button.connect("clicked(bool)", lambda checked, extra=None: calls.append((checked, extra)))
    button.click()
    assert calls == ["no arguments", (False, None)]
    with pytest.raises(AttributeError, match="no signal"):
        button.connect("clicked(int)", lambda: None)
    button.connect("clicked()", lambda: 1 / 0)
    button.click()
    assert len(rig.errors) == 1 and "ZeroDivisionError" in rig.errors[0][1]   # recorded, not raised
    del rig.errors[:]


def test_rig_node_combo_box_follows_qmrmlnodecombobox(rig):
    import slicer
    from slicer_rig import widgets

    scene = rig.scene
    combo = widgets.qMRMLNodeComboBox()
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    combo.noneEnabled = False
    combo.setMRMLScene(scene)
    seen = []
    combo.currentNodeChanged.connect(lambda node: seen.append(node.GetName() if node else None))
    a = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a")    # first node of an empty box: current
    b = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "b")
    c = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "c")
    assert seen == ["a"]
    combo.setCurrentNode(b)
    scene.RemoveNode(b)                                               # the row now at its place: c
    scene.RemoveNode(c)                                               # none after it: the last, a
    scene.RemoveNode(a)                                               # none left
    assert seen == ["a", "b", "c", "a", None]
    checkable = widgets.qMRMLCheckableNodeComboBox()
    checkable.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    checkable.setMRMLScene(scene)
    changes = []
    checkable.checkedNodesChanged.connect(lambda: changes.append(1))
    d = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "d")
    checkable.check(d)
    scene.RemoveNode(d)                                               # CTK: no signal on row removal
    assert changes == [1] and checkable.checkedNodes() == []
    assert isinstance(slicer.qMRMLNodeComboBox(), widgets.qMRMLNodeComboBox)


def test_apply_again_with_dwi_leaves_no_node_of_the_first_run(shown):
    """Each Apply on DWI fits a new ADC map shown in the slice views; the previous one goes with
    its display and storage nodes (removed first, the map would get a new display node from the
    view still showing it), and the outputs are reused: a second Apply adds no node."""
    from collections import Counter

    rig, module, parent, widget = shown
    s, _ = study(module, rig, dwi=True)
    params = widget.logic.getParameterNode()
    params.segmentation = s.segmentation
    params.dwiVolumes = list(s.dwi)
    params.bvalues = ""  # from the volumes, as the self-test study carries them
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip
    widget.ui.applyButton.click()
    first = widget.logic.lastResult.adc_node

    def classes():
        return Counter(rig.scene.GetNthNode(n).GetClassName() for n in range(rig.scene.GetNumberOfNodes()))

    before = classes()
    widget.ui.applyButton.click()
    assert widget.logic.lastResult.adc_node is not first and first.GetScene() is None
    change = classes()
    change.subtract(before)
    assert {kind: n for kind, n in change.items() if n} == {}
