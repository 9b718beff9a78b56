"""The panel and DICOM (issue 14), under the rig (Testing/slicer_rig): the phantom's DICOM series
loaded into the scene as Slicer's DICOM module loads them (one volume per series, or per b-value
of the DWI series in a sequence, each with its DICOM.instanceUIDs) and indexed in the rig's
DICOM database (slicer.dicomDatabase, an index of the real files).

- Export DICOM writes SEG, SR and parametric map that highdicom reads back, whose SR ADC
  statistics equal the results table's, that dciodvfy accepts, that the database then indexes,
  and leaves the user's scene as it was; inputs not from DICOM give one clear message and a
  disabled button.
- The panel's volumes are preselected by their DICOM headers, as `analyze --dicom` chooses
  (dicom_study.choose_series on the same folder), whatever the nodes are named.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slicer_rig import install, slicer_source  # noqa: E402
from slicer_rig.dicom_database import DicomDatabase  # noqa: E402
from VertebralMarrowLib.errors import InputError  # noqa: E402
from VertebralMarrowLib.inputs.dicom_study import choose_series, scan_dicom_folder  # noqa: E402
from VertebralMarrowLib.phantom_dicom import write_phantom_dicom  # noqa: E402

hd = pytest.importorskip("highdicom", reason="DICOM export needs highdicom (bundled with Slicer 5.12)")

ROOT = Path(__file__).resolve().parents[1]
MODULE_PY = ROOT / "VertebralMarrow" / "VertebralMarrow.py"
SOURCE = slicer_source()
pytestmark = pytest.mark.skipif(SOURCE is None, reason="../shared/slicer-source (Slicer's Python layer) is absent")
SEED = 6
ADC_CODE = "113041"
MEAN_CODE = "373098007"  # SCT Mean, the derivation of the mean ADC
# What each of the panel's parameters is in the phantom's DICOM folder (phantom_dicom.py)
FOLDERS = {"t1Volume": "02", "t2Volume": "03", "fsVolume": "04", "adcVolume": "06", "ctVolume": "ct/02"}


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory, phantom_study):
    study, truth = phantom_study(SEED)
    folder = tmp_path_factory.mktemp("panel_dicom")
    write_phantom_dicom(study, folder / "dicom", SEED, truth["files"])
    return study, truth, folder / "dicom"


@pytest.fixture()
def shown():
    rig = install(SOURCE)
    rig.new_application()
    module, parent = rig.load_module(MODULE_PY)
    widget = rig.show(module, parent)
    yield rig, module, widget
    assert rig.errors == [], "exceptions in slots or observers:\n" + "\n".join(text for _, text in rig.errors)


def by_position(files) -> list:
    """Files in slice order: by position along the slice normal."""
    def where(path):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.array(ds.ImageOrientationPatient, float)
        return float(np.dot(np.cross(orientation[:3], orientation[3:]), np.array(ds.ImagePositionPatient, float)))

    return sorted(files, key=where)


def load_dicom_volume(scene, files, name, work: Path):
    """A scalar volume from DICOM files as Slicer's DICOM module gives it: voxels read by ITK
    (rescale applied), the instance UIDs of its slices in DICOM.instanceUIDs."""
    import SimpleITK as sitk
    from VertebralMarrowLib.mrml import load_volume

    files = by_position(files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in files])
    path = work / f"{len(list(work.iterdir()))}.nrrd"
    sitk.WriteImage(reader.Execute(), str(path))
    node = load_volume(scene, path)
    node.SetName(name)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                                     for p in files))
    return node


def dwi_by_bvalue(folder: Path) -> dict:
    groups = {}
    for path in sorted(folder.iterdir()):
        groups.setdefault(float(pydicom.dcmread(path, stop_before_pixels=True).DiffusionBValue), []).append(path)
    return dict(sorted(groups.items()))


def load_study(rig, dicom: Path, work: Path, names=None, dwi=False, sequence=False):
    """The phantom's series in the scene ({parameter: node}), the folder indexed in the database.
    names: {parameter: node name}; dwi: the DWI as one volume per b-value ('dwiVolumes'), or
    with `sequence` as one sequence of them ('dwiSequence'), as MultiVolumeImporter loads it."""
    import slicer

    slicer.dicomDatabase.import_folder(dicom)
    work.mkdir(exist_ok=True)
    names = names or {}
    nodes = {parameter: load_dicom_volume(rig.scene, sorted((dicom / sub).iterdir()), names.get(parameter, parameter), work)
             for parameter, sub in FOLDERS.items()}
    if dwi:
        volumes = [load_dicom_volume(rig.scene, files, f"DWI b={b:g}", work) for b, files in dwi_by_bvalue(dicom / "05").items()]
        if sequence:
            node = rig.scene.AddNewNodeByClass("vtkMRMLSequenceNode", names.get("dwiSequence", "5: DWI SAG b0 50 400 800"))
            for index, volume in enumerate(volumes):
                node.SetDataNodeAtValue(volume, str(index))
                rig.scene.RemoveNode(volume)
            nodes["dwiSequence"] = node
        else:
            nodes["dwiVolumes"] = volumes
    return nodes


def apply(rig, widget, study, truth, nodes, **choices):
    from VertebralMarrowLib.mrml import load_segmentation

    params = widget.logic.getParameterNode()
    params.segmentation = load_segmentation(rig.scene, widget.logic.application(), study / truth["files"]["seg"])
    for name, node in choices.items():
        setattr(params, name, node)
    for name in ("adcVolume", "dwiSequence"):  # only what the test chose
        if name not in choices:
            setattr(params, name, None)
    widget.onApplyButton()
    assert params.resultsTable is not None, widget.ui.applyButton.toolTip
    return params


def scene_state(scene) -> list:
    return [(node.GetID(), node.GetName(), node.GetMTime()) for node in
            (scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes()))] + [scene.GetURL()]


def table_column(table, column) -> dict:
    names = [table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())]
    index = table.GetColumnIndex(column)
    return {name: table.GetCellText(row, index) for row, name in enumerate(names)}


def sr_adc_means(path) -> dict:
    """Tracking identifier (the segment's name) -> mean ADC in um2/s, read from the SR's content."""
    report = hd.sr.srread(path)
    means = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            derivation = measurement.derivation
            if measurement.name.value == ADC_CODE and derivation is not None and derivation.value == MEAN_CODE:
                means[str(group.tracking_identifier)] = (measurement.value, measurement.unit.value)
    return means


def written_by_the_button(rig) -> dict:
    found = sorted(Path(rig.app.temporaryPath).glob("VertebralMarrowDICOM-*/*.dcm"))
    return {path.stem: path for path in found}


def kept(written: dict, keep: Path) -> dict:
    """The written files copied to `keep` (the rig's temporary folder goes with its application)."""
    keep.mkdir(parents=True)
    return {name: Path(shutil.copy(path, keep / path.name)) for name, path in written.items()}


def indexed(written: dict) -> dict:
    """{name: (its SOP instance UID, that of the file the DICOM database gives for it, or None)}."""
    import slicer

    found = {}
    for name, path in written.items():
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        file = slicer.dicomDatabase.fileForInstance(uid)
        found[name] = (uid, pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID if file else None)
    return found


@pytest.fixture(scope="module")
def exports(phantom_dicom, tmp_path_factory):
    """The Export DICOM button after Apply on the scanner ADC map with T1, T2, STIR and CT, and
    logic.exportDicom(folder, database) after a fit from the DWI volumes: per case, the files
    kept, the results table's roles and mean ADCs, the source series, and whether the scene
    stayed as it was."""
    import slicer

    study, truth, dicom = phantom_dicom
    work = tmp_path_factory.mktemp("panel_exports")
    rig = install(SOURCE)
    cases = {}
    for case in ("scanner map, button", "fitted, console"):
        rig.new_application()
        module, parent = rig.load_module(MODULE_PY)
        widget = rig.show(module, parent)
        fitted = case.startswith("fitted")
        nodes = load_study(rig, dicom, work / f"volumes {case}", dwi=fitted)
        if fitted:
            params = apply(rig, widget, study, truth, nodes, dwiVolumes=nodes["dwiVolumes"])
            assert params.adcVolume is None and len(params.dwiVolumes) == 4
        else:
            params = apply(rig, widget, study, truth, nodes, adcVolume=nodes["adcVolume"], t1Volume=nodes["t1Volume"],
                           t2Volume=nodes["t2Volume"], fsVolume=nodes["fsVolume"], ctVolume=nodes["ctVolume"])
        assert widget.ui.exportDicomButton.enabled, widget.ui.exportDicomButton.toolTip
        before = scene_state(rig.scene)
        if fitted:
            written = widget.logic.exportDicom(work / "console", slicer.dicomDatabase)
            assert all(path.parent == work / "console" for path in written.values())
        else:
            assert widget.ui.exportDicomButton.text == "Export DICOM"
            widget.ui.exportDicomButton.click()
            written = written_by_the_button(rig)
        unchanged = scene_state(rig.scene) == before
        folder = "05" if fitted else "06"
        cases[case] = dict(
            files=kept(written, work / f"kept {case}"), indexed=indexed(written), unchanged=unchanged,
            roles=table_column(params.resultsTable, "role"), adc_mean=table_column(params.resultsTable, "adc_mean"),
            series=pydicom.dcmread(next((dicom / folder).iterdir()), stop_before_pixels=True).SeriesInstanceUID)
        assert rig.errors == [], "exceptions in slots or observers:\n" + "\n".join(text for _, text in rig.errors)
    return cases


CASES = ("scanner map, button", "fitted, console")


@pytest.mark.parametrize("case", CASES)
def test_export_leaves_the_scene_as_it_was(exports, case):
    assert exports[case]["unchanged"]


@pytest.mark.parametrize("case", CASES)
def test_exported_files_are_in_the_dicom_database(exports, case):
    found = exports[case]["indexed"]
    assert set(found) == {"seg", "sr", "adc_pm"}
    for name, (uid, in_database) in found.items():
        assert in_database == uid, name


@pytest.mark.parametrize("case", CASES)
def test_exported_seg_and_map_read_back_on_the_source_series(exports, case):
    found = exports[case]
    seg = hd.seg.segread(found["files"]["seg"])
    labels = {seg.get_segment_description(number).segment_label for number in seg.segment_numbers}
    assert len(labels) >= 5 and labels <= set(found["roles"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == found["series"]
    pm = hd.imread(found["files"]["adc_pm"])
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == found["series"]
    explanation = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTExplanation
    assert ("0, 50, 400, 800" in explanation) if case.startswith("fitted") else ("scanner" in explanation)


@pytest.mark.parametrize("case", CASES)
def test_exported_sr_adc_means_equal_the_results_table(exports, case):
    found = exports[case]
    means = sr_adc_means(found["files"]["sr"])
    lesions = [name for name, role in found["roles"].items() if role == "lesion"]
    assert len(means) >= 5 and set(means) <= set(found["adc_mean"])
    assert sum(1 for name in means if name in lesions) >= 4
    for name, (value, unit) in means.items():
        assert unit == "um2/s"
        assert value / 1000.0 == pytest.approx(float(found["adc_mean"][name]), abs=6e-5), name


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy absent (Debian package dicom3tools)")
@pytest.mark.parametrize("case", CASES)
def test_exported_files_pass_dciodvfy(exports, case):
    for name, path in exports[case]["files"].items():
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)


def test_inputs_not_from_dicom_give_one_message_and_a_disabled_button(shown):
    import slicer
    from VertebralMarrowLib.slicer_panel import panel

    rig, module, widget = shown
    assert widget.ui.exportDicomButton.enabled is False  # nothing analysed yet
    s, _ = panel.self_test_study(rig.scene, module.VertebralMarrowLogic.application())
    params = widget.logic.getParameterNode()
    params.segmentation, params.adcVolume = s.segmentation, s.adc
    widget.onApplyButton()
    assert widget.ui.exportButton.enabled and not widget.ui.exportDicomButton.enabled
    message = widget.ui.exportDicomButton.toolTip
    assert f"'{s.adc.GetName()}' was not loaded from DICOM" in message and "Export report folder" in message
    with pytest.raises(InputError) as raised:
        widget.logic.exportDicom()
    assert str(raised.value) == message
    assert list(Path(rig.app.temporaryPath).glob("VertebralMarrowDICOM-*")) == []
    assert slicer.dicomDatabase.fileForInstance("1.2.3") == ""


MISLEADING = {"t1Volume": "3: T2 TSE SAG", "t2Volume": "2: T1 TSE SAG", "fsVolume": "6: ADC",
              "adcVolume": "4: STIR SAG", "ctVolume": "7: unnamed", "dwiSequence": "CT localizer"}


def cli_choice(dicom: Path, overrides=None) -> dict:
    """{role: SOP instance UIDs} of the series `analyze --dicom` chooses in the same folder."""
    chosen, _ = choose_series(scan_dicom_folder(dicom), overrides)
    return {role: {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in choice.series.files}
            for role, choice in chosen.items()}


def instance_set(node) -> set:
    if node.IsA("vtkMRMLSequenceNode"):
        return set().union(*(instance_set(node.GetNthDataNode(i)) for i in range(node.GetNumberOfDataNodes())))
    return set(node.GetAttribute("DICOM.instanceUIDs").split())


ROLE = {"t1Volume": "t1", "t2Volume": "t2", "fsVolume": "fs", "adcVolume": "adc", "ctVolume": "ct", "dwiSequence": "dwi"}


def test_preselection_by_dicom_headers_whatever_the_names(shown, phantom_dicom, tmp_path):
    rig, module, widget = shown
    study, truth, dicom = phantom_dicom
    nodes = load_study(rig, dicom, tmp_path / "volumes", names=MISLEADING, dwi=True, sequence=True)
    assert instance_set(nodes["dwiSequence"]) and len(instance_set(nodes["dwiSequence"])) == len(list((dicom / "05").iterdir()))
    widget.initializeParameterNode()
    params = widget.logic.getParameterNode()
    expected = cli_choice(dicom)
    assert set(expected) == {"t1", "t2", "fs", "ct", "dwi"}  # the CLI fits the DWI and leaves the map
    for parameter, role in ROLE.items():
        chosen = getattr(params, parameter)
        if role in expected:
            assert chosen is nodes[parameter] and instance_set(chosen) == expected[role], parameter
        else:
            assert chosen is None, parameter


def test_preselection_takes_the_scanner_map_without_dwi_and_names_without_headers(shown, phantom_dicom, tmp_path):
    import slicer

    rig, module, widget = shown
    study, truth, dicom = phantom_dicom
    nodes = load_study(rig, dicom, tmp_path / "volumes", names=MISLEADING)
    # the database knows them: the headers decide, the ADC map is the CLI's choice without a DWI
    expected = cli_choice(dicom, {"dwi": "none"})
    from VertebralMarrowLib.slicer_panel import series

    proposals = series.preselection(rig.scene, {}, slicer.dicomDatabase)
    assert {ROLE[p]: instance_set(node) for p, node in proposals.items()} == expected
    assert all(proposals[p] is nodes[p] for p in proposals)
    # a database that does not know the instances (or none): the names decide, misleading as they are
    by_names = series.preselection(rig.scene, {}, DicomDatabase(tmp_path / "empty database"))
    assert by_names == series.preselection(rig.scene, {}, None)
    assert by_names["t1Volume"] is nodes["t2Volume"] and by_names["adcVolume"] is nodes["fsVolume"]
    assert by_names["fsVolume"] is nodes["adcVolume"]


def test_the_adc_map_guard_reads_the_dicom_header_before_the_name(shown, phantom_dicom, tmp_path):
    """The scanner map preselected by its header is not refused for its misleading name; a T1
    series named like an ADC map is refused by its header."""
    rig, module, widget = shown
    study, truth, dicom = phantom_dicom
    from VertebralMarrowLib.mrml import load_segmentation

    nodes = load_study(rig, dicom, tmp_path / "volumes", names=dict(MISLEADING, t1Volume="5: ADC"))
    load_segmentation(rig.scene, widget.logic.application(), study / truth["files"]["seg"])
    widget.initializeParameterNode()
    params = widget.logic.getParameterNode()
    assert params.adcVolume is nodes["adcVolume"] and params.adcVolume.GetName() == "4: STIR SAG"
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip
    params.adcVolume = nodes["t1Volume"]
    assert not widget.ui.applyButton.enabled
    assert widget.ui.applyButton.toolTip == ("'5: ADC' is a T1 series by its DICOM header, not an ADC map: choose the "
                                             "scanner's ADC series (ImageType ADC), or DWI to fit one.")
    with pytest.raises(InputError, match="T1 series by its DICOM header"):
        widget.logic.process(params)
    # the Whole spine section takes the same ADC input, with the same check
    import slicer
    from VertebralMarrowLib.slicer_panel import spine as spine_panel

    params.spineLabels = params.segmentation
    assert spine_panel.spine_blocker(params, slicer.dicomDatabase) == widget.ui.applyButton.toolTip
