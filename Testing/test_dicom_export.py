"""DICOM out: `analyze --dicom` on the phantom written as DICOM writes dicom/seg.dcm, sr.dcm and
adc_pm.dcm. Each is validated with David Clunie's dciodvfy (dicom3tools) and read back here with
pydicom and highdicom; every measurement is compared with results.csv, and the lesion ADC is
recomputed from the parametric map inside the SEG's own masks.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import run_cli_in_process
from VertebralMarrowLib.phantom_dicom import write_phantom_dicom

hd = pytest.importorskip("highdicom", reason="DICOM export needs highdicom (bundled with Slicer 5.12)")

SEED = 6
ADC_CODE = ("113041", "DCM")
DERIVATIONS = {"373098007": "adc_mean", "373099004": "adc_median", "386136009": "adc_sd",
               "371890005": "adc_p10", "371887004": "adc_p90"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, phantom_study):
    study, truth = phantom_study(SEED)
    folder = tmp_path_factory.mktemp("dicom_export")
    write_phantom_dicom(study, folder / "dicom_in", SEED, truth["files"])
    out = folder / "out"
    done = run_cli_in_process(["-q", "analyze", "--dicom", folder / "dicom_in", "--seg", study / truth["files"]["seg"],
                               "--out", out])
    assert done.returncode == 0, done.stderr
    with (out / "results.csv").open(newline="") as handle:
        rows = {row["segment"]: row for row in csv.DictReader(handle)}
    return folder, out, rows


def test_files_written_and_recorded(exported):
    _, out, _ = exported
    document = json.loads((out / "results.json").read_text())
    assert document["dicom"]["dicom_outputs"] == {"seg": "dicom/seg.dcm", "sr": "dicom/sr.dcm", "adc_pm": "dicom/adc_pm.dcm"}
    for name in ("seg", "sr", "adc_pm"):
        assert (out / "dicom" / f"{name}.dcm").is_file()


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy absent (Debian package dicom3tools; .ci/run installs it)")
def test_dciodvfy_finds_no_errors_in_outputs_or_phantom_series(exported):
    folder, out, _ = exported
    files = [out / "dicom" / f"{name}.dcm" for name in ("seg", "sr", "adc_pm")]
    files += [sorted(series.iterdir())[0] for series in sorted((folder / "dicom_in").rglob("*"))
              if series.is_dir() and any(p.suffix == ".dcm" for p in series.iterdir())]
    assert len(files) == 3 + 6
    for path in files:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (path, errors)


def source_dwi(folder: Path) -> list:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in (folder / "dicom_in" / "05").iterdir()]


def test_identity_copied_and_uids_new(exported):
    folder, out, _ = exported
    sources = source_dwi(folder)
    source_uids = {ds.SOPInstanceUID for ds in sources} | {sources[0].SeriesInstanceUID}
    for name in ("seg", "sr", "adc_pm"):
        ds = pydicom.dcmread(out / "dicom" / f"{name}.dcm")
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID"):
            assert ds.get(keyword) == sources[0].get(keyword), (name, keyword)
        assert ds.SOPInstanceUID not in source_uids and ds.SeriesInstanceUID not in source_uids


def test_seg_segments_match_results(exported):
    _, out, rows = exported
    seg = hd.seg.segread(out / "dicom" / "seg.dcm")
    measured = {name for name, row in rows.items() if row["n_voxels_adc"] and int(float(row["n_voxels_adc"])) > 0}
    labels = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        labels[description.segment_label] = (number, description.tracking_id)
    assert set(labels) == measured
    volume = seg.get_volume(combine_segments=False)
    for name, (number, tracking) in labels.items():
        row = rows[name]
        assert f"role {row['role']}" in tracking
        if row["role"] == "lesion":
            assert f"ADC class {row['adc_class']}" in tracking
        voxels = int(volume.array[..., number - 1].sum())
        assert voxels == int(float(row["n_voxels_adc"])), name


def sr_groups(path: Path) -> dict:
    """Tracking identifier -> {'num': [(concept code, derivation code, value, unit)], 'code': {concept: value}}."""
    ds = pydicom.dcmread(path)
    groups = {}

    def walk(items, current):
        for item in items:
            concept = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "CONTAINER" and concept is not None and concept.CodeValue == "125007":
                group = {"num": [], "code": {}}
                walk(item.get("ContentSequence", []), group)
                groups[group.get("id")] = group
                continue
            if current is not None and concept is not None:
                if item.ValueType == "TEXT" and concept.CodeValue == "112039":
                    current["id"] = item.TextValue
                elif item.ValueType == "NUM":
                    value = item.MeasuredValueSequence[0]
                    derivation = None
                    for modifier in item.get("ContentSequence", []):
                        if modifier.ConceptNameCodeSequence[0].CodeValue == "121401":
                            derivation = modifier.ConceptCodeSequence[0].CodeValue
                    current["num"].append(((concept.CodeValue, concept.CodingSchemeDesignator), derivation,
                                           float(value.NumericValue),
                                           value.MeasurementUnitsCodeSequence[0].CodeValue))
                elif item.ValueType == "CODE":
                    current["code"][concept.CodeMeaning] = item.ConceptCodeSequence[0].CodeMeaning
            walk(item.get("ContentSequence", []), current)

    walk(ds.ContentSequence, None)
    return groups


def test_sr_measurements_equal_results_csv(exported):
    _, out, rows = exported
    sr = pydicom.dcmread(out / "dicom" / "sr.dcm")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    seg = pydicom.dcmread(out / "dicom" / "seg.dcm", stop_before_pixels=True)
    referenced = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in referenced
    groups = sr_groups(out / "dicom" / "sr.dcm")
    # one group per segment of the SEG (voxel centres on the ADC grid): a bone island without DWI
    # signal has one, a 5-mm focus covering no voxel centre (measured by partial volume) has none
    assert set(groups) == {name for name, row in rows.items() if row["n_voxels_adc"] and int(float(row["n_voxels_adc"])) > 0}
    checked = 0
    for name, group in groups.items():
        row = rows[name]
        adc = {DERIVATIONS[derivation]: value for code, derivation, value, unit in group["num"]
               if code == ADC_CODE and unit == "um2/s"}
        for column in ("adc_mean", "adc_median", "adc_sd", "adc_p10", "adc_p90"):
            if not row[column]:  # no ADC (no DWI signal): nothing to compare
                continue
            assert adc[column] / 1000 == pytest.approx(float(row[column]), abs=6e-5), (name, column)
            checked += 1
        others = {code[0]: value for code, _, value, _ in group["num"] if code != ADC_CODE}
        if row["ct_mean_hu"]:
            assert others["112031"] == pytest.approx(float(row["ct_mean_hu"]), abs=6e-5)
        for column in ("t1_ratio", "t2_ratio", "fs_ratio"):
            if row[column]:
                assert others[column.upper()] == pytest.approx(float(row[column]), abs=6e-5), (name, column)
        assert others["118565006"] == pytest.approx(float(row["volume_ml"]), abs=6e-5)
        if row["role"] == "lesion":
            assert group["code"]["ADC class"] == row["adc_class"]
            assert "1.21" in group["code"]["Criterion"] and "Kaur" in group["code"]["Criterion"]
            assert group["code"]["Most likely entity"] == row["differential"].split(";")[0]
    assert checked >= 5 * 8


def test_parametric_map_values_and_mapping(exported):
    _, out, rows = exported
    pm = pydicom.dcmread(out / "dicom" / "adc_pm.dcm")
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "um2/s"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "113041"
    assert "0, 50, 400, 800" in mapping.LUTExplanation
    # Pair the SEG's frames with the map's frames by their position in the patient.
    def position(frame):
        return tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)

    adc_um2 = pm.pixel_array.astype(float)
    pm_frame = {position(frame): index for index, frame in enumerate(pm.PerFrameFunctionalGroupsSequence)}
    seg = pydicom.dcmread(out / "dicom" / "seg.dcm")
    masks = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    names = {item.SegmentNumber: item.SegmentLabel for item in seg.SegmentSequence}
    values = {}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        inside = adc_um2[pm_frame[position(frame)]][masks[index] > 0]
        values.setdefault(names[number], []).extend(inside.tolist())
    lesions = [name for name, row in rows.items() if row["role"] == "lesion" and row["adc_mean"]
               and int(float(row["n_voxels_adc"])) > 0]  # with an ADC measured on voxel centres
    assert set(lesions) <= set(values)
    for name in lesions:
        assert np.mean(values[name]) / 1000.0 == pytest.approx(float(rows[name]["adc_mean"]), abs=2e-4), name


def test_demo_writes_dicom_results_on_the_scanner_map(tmp_path):
    """`demo` (the phantom analysed from its files, scanner ADC map) also writes the study as
    DICOM and SEG, SR and parametric map; the map holds the scanner's own integers (um2/s)."""
    from VertebralMarrowLib.pipeline import run_demo

    out = tmp_path / "demo"
    run_demo(out, seed=SEED)
    document = json.loads((out / "results.json").read_text())
    assert document["dicom"]["dicom_outputs"] == {"seg": "dicom/seg.dcm", "sr": "dicom/sr.dcm", "adc_pm": "dicom/adc_pm.dcm"}
    pm = pydicom.dcmread(out / "dicom" / "adc_pm.dcm")
    assert "scanner" in pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTExplanation
    scanner = {}
    for path in (out / "study" / "dicom" / "06").iterdir():
        ds = pydicom.dcmread(path)
        scanner[tuple(round(float(v), 3) for v in ds.ImagePositionPatient)] = ds.pixel_array.astype(float)
    for index, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        where = tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        assert np.allclose(pm.pixel_array[index], scanner[where], atol=1e-3)
    if shutil.which("dciodvfy"):
        for name in ("seg", "sr", "adc_pm"):
            done = subprocess.run(["dciodvfy", str(out / "dicom" / f"{name}.dcm")], capture_output=True, text=True)
            assert not [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")], name
