"""A DICOM study in: the phantom written as DICOM (renamed, nested, shuffled), the real
diffusion series in /work/shared/dicom-dwi, and `analyze --dicom` end to end.

Expectations come from outside the code under test: the phantom's NRRD volumes and
ground_truth.json, the headers read here with pydicom, and the reference .bval files that
ship with the real series.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from conftest import run_cli_in_process
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.inputs.dicom_study import choose_series, recognise, scan_dicom_folder, stage_study
from VertebralMarrowLib.phantom_dicom import write_phantom_dicom

SHARED_DWI = Path(__file__).resolve().parents[1] / ".." / "shared" / "dicom-dwi"
EXPECTED_ROLES = {"T1 TSE SAG": "t1", "T2 TSE SAG": "t2", "STIR SAG": "fs", "DWI SAG b0 50 400 800": "dwi",
                  "DWI SAG ADC": "adc", "CT SPINE BONE": "ct"}


def headers_by_description(folder: Path) -> dict:
    """SeriesDescription -> (SeriesNumber, SeriesInstanceUID), read here with pydicom."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found[ds.SeriesDescription] = (str(ds.SeriesNumber), ds.SeriesInstanceUID)
    return found


def scrambled_copy(source: Path, target: Path, edit=None) -> Path:
    """Every file of `source` under a meaningless name at depth 1 to 3, series mixed across
    folders; `edit(ds)` may change each header."""
    rng = np.random.default_rng(7)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for index, path in enumerate(rng.permutation(files)):
        folder = target.joinpath(*[f"d{rng.integers(3)}" for _ in range(rng.integers(1, 4))])
        folder.mkdir(parents=True, exist_ok=True)
        if edit is None:
            shutil.copy(path, folder / f"x{index:05d}")
        else:
            ds = pydicom.dcmread(path)
            edit(ds)
            ds.save_as(folder / f"x{index:05d}")
    (target / "README.txt").write_text("not DICOM", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory, phantom_study):
    """(folder with study/ -> the phantom's files and dicom/ its DICOM series, truth, a scrambled copy)."""
    study, truth = phantom_study(5)
    folder = tmp_path_factory.mktemp("dicom_study")
    (folder / "study").symlink_to(study)
    write_phantom_dicom(study, folder / "dicom", 5, truth["files"])
    scrambled = scrambled_copy(folder / "dicom", folder / "scrambled")
    return folder, truth, scrambled


def test_recognises_every_series_of_the_phantom_at_any_depth_and_name(phantom_dicom):
    folder, _, scrambled = phantom_dicom
    headers = headers_by_description(folder / "dicom")
    all_series = scan_dicom_folder(scrambled)
    assert len(all_series) == 6
    roles = {series.description: recognise(series)[0] for series in all_series}
    assert roles == EXPECTED_ROLES
    chosen, notes = choose_series(all_series)
    for role in ("t1", "t2", "fs", "dwi", "ct"):
        description = next(d for d, r in EXPECTED_ROLES.items() if r == role)
        assert (chosen[role].series.number, chosen[role].series.uid) == headers[description]
    assert "adc" not in chosen  # the DWI is fitted; the scanner map is listed as not used
    assert any("ADC" in note and "--adc-series" in note for note in notes)
    assert sorted(chosen["dwi"].series.bvalues) == [0, 50, 400, 800]
    assert "b-values 0, 50, 400, 800" in chosen["dwi"].why


def test_recognises_from_attributes_when_descriptions_are_blank(phantom_dicom, tmp_path):
    folder, _, _ = phantom_dicom

    def blank(ds):
        ds.SeriesDescription = ""

    all_series = scan_dicom_folder(scrambled_copy(folder / "dicom", tmp_path / "blank", blank))
    by_number = {(series.modality, series.number): recognise(series) for series in all_series}
    assert by_number[("MR", "2")][0] == "t1" and "TR 550 ms, TE 10 ms" in by_number[("MR", "2")][1]
    assert by_number[("MR", "3")][0] == "t2" and "TR 3500 ms, TE 100 ms" in by_number[("MR", "3")][1]
    assert by_number[("MR", "4")][0] == "fs" and "TI 150 ms" in by_number[("MR", "4")][1]
    assert by_number[("MR", "5")][0] == "dwi"
    assert by_number[("MR", "6")][0] == "adc" and "ImageType" in by_number[("MR", "6")][1]
    assert by_number[("CT", "2")] == ("ct", "Modality CT")


def test_fat_suppressed_t1_is_neither_t1_nor_fs(phantom_dicom, tmp_path):
    folder, _, _ = phantom_dicom

    def t1_fs_post(ds):
        ds.SeriesDescription = "T1 FS SAG POST GD"

    series = scan_dicom_folder(scrambled_copy(folder / "dicom" / "02", tmp_path / "t1fs", t1_fs_post))[0]
    role, why = recognise(series)
    assert role is None and "fat-suppressed T1" in why and "--t1-series" in why


def test_staged_volumes_equal_the_phantom_files(phantom_dicom, tmp_path):
    folder, truth, scrambled = phantom_dicom
    all_series = scan_dicom_folder(scrambled)
    chosen, notes = choose_series(all_series, {"adc": "6"})  # the map chosen: the DWI is then left out
    assert "dwi" not in chosen and any("DWI" in note and "not used" in note for note in notes)
    with pytest.raises(InputError, match="--dwi-series and --adc-series"):
        choose_series(all_series, {"adc": "6", "dwi": "5"})
    paths, units = stage_study(chosen, tmp_path / "staged")
    assert units == "1e-6"  # from the map's real-world value mapping (UCUM um2/s)
    for key, tolerance in (("t1", 0.5), ("t2", 0.5), ("fs", 0.5), ("adc", 0.0), ("ct", 0.0)):
        expected = sitk.ReadImage(str(folder / "study" / truth["files"][key]))
        staged = sitk.ReadImage(str(paths[key]))
        assert staged.GetSize() == expected.GetSize(), key
        assert np.allclose(staged.GetOrigin(), expected.GetOrigin(), atol=1e-4), key
        assert np.allclose(staged.GetSpacing(), expected.GetSpacing(), atol=1e-6), key
        assert np.allclose(staged.GetDirection(), expected.GetDirection(), atol=1e-6), key
        difference = sitk.GetArrayFromImage(staged).astype(float) - sitk.GetArrayFromImage(expected).astype(float)
        assert np.abs(difference).max() <= tolerance + 1e-6, key


def test_mixed_patients_are_refused(phantom_dicom, tmp_path):
    folder, _, _ = phantom_dicom
    shutil.copytree(folder / "dicom", tmp_path / "mixed" / "one")

    def other_patient(ds):
        ds.PatientID = "SOMEONE-ELSE"
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, "other"])

    scrambled_copy(folder / "dicom" / "02", tmp_path / "mixed" / "two", other_patient)
    with pytest.raises(InputError, match="2 patients.*SOMEONE-ELSE"):
        choose_series(scan_dicom_folder(tmp_path / "mixed"))


def test_ambiguous_role_is_refused_and_the_user_chooses(phantom_dicom, tmp_path):
    folder, _, _ = phantom_dicom
    shutil.copytree(folder / "dicom", tmp_path / "two_t1" / "a")

    def second_t1(ds):
        ds.SeriesNumber = 12
        ds.SeriesDescription = "T1 TSE SAG repeat"
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, "repeat"])

    scrambled_copy(folder / "dicom" / "02", tmp_path / "two_t1" / "b", second_t1)
    all_series = scan_dicom_folder(tmp_path / "two_t1")
    with pytest.raises(InputError) as info:
        choose_series(all_series)
    message = str(info.value)
    assert "2 series look like T1" in message and "--t1-series" in message and "T1 TSE SAG repeat" in message
    chosen, _ = choose_series(all_series, {"t1": "12"})
    assert chosen["t1"].series.description == "T1 TSE SAG repeat" and "chosen by the user" in chosen["t1"].why
    repeat_uid = chosen["t1"].series.uid
    assert choose_series(all_series, {"t1": repeat_uid})[0]["t1"].series.number == "12"
    assert "t1" not in choose_series(all_series, {"t1": "none"})[0]
    with pytest.raises(InputError, match="--t1-series 99: no series"):
        choose_series(all_series, {"t1": "99"})


def test_folder_without_dicom_or_diffusion_is_refused(phantom_dicom, tmp_path):
    folder, _, _ = phantom_dicom
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="no DICOM image"):
        scan_dicom_folder(tmp_path / "empty")
    shutil.copytree(folder / "dicom" / "02", tmp_path / "t1only")
    with pytest.raises(InputError, match="no diffusion series"):
        choose_series(scan_dicom_folder(tmp_path / "t1only"))


@pytest.mark.skipif(not SHARED_DWI.is_dir(), reason="real DICOM series in /work/shared/dicom-dwi are absent")
def test_real_diffusion_series_are_recognised_with_their_reference_bvalues():
    checked = 0
    for case in sorted(p for p in SHARED_DWI.iterdir() if (p / "dicom").is_dir()):
        dwi = [s for s in scan_dicom_folder(case / "dicom") if recognise(s)[0] == "dwi"]
        assert len(dwi) == 1, case.name
        reference = set()
        for bval in (case / "ref").glob("*.bval"):
            reference |= {0.0 if float(v) < 1 else float(v) for v in bval.read_text().split()}
        assert set(dwi[0].bvalues) <= reference, case.name
        checked += 1
    assert checked >= 10
    xa30 = {s.description: recognise(s)[0] for s in scan_dicom_folder(SHARED_DWI / "siemens_xa30_classic_dwi")}
    assert xa30 == {"DWI_dir80_AP": "dwi", "DWI_dir80_AP_ADC": "adc", "DWI_dir80_AP_TRACEW": None}


def run_cli(args):
    return run_cli_in_process(args)


def test_analyze_dicom_end_to_end(phantom_dicom, tmp_path):
    folder, truth, scrambled = phantom_dicom
    out = tmp_path / "out"
    done = run_cli(["-q", "analyze", "--dicom", scrambled, "--seg", folder / "study" / truth["files"]["seg"],
                    "--out", out])
    assert done.returncode == 0, done.stderr
    assert "dwi: series 5" in done.stdout and "b-values 0, 50, 400, 800" in done.stdout
    document = json.loads((out / "results.json").read_text())
    assert {role: item["series_number"] for role, item in document["dicom"]["series"].items()} == {
        "t1": "2", "t2": "3", "fs": "4", "dwi": "5", "ct": "2"}
    rows = {row["segment"]: row for row in document["rows"]}
    for name, expected in truth["segments"].items():
        if expected["role"] != "lesion":
            continue
        if expected["adc_mean"] is not None:  # not the bone island (no DWI signal) nor the 5-mm focus
            assert rows[name]["adc_mean"] == pytest.approx(expected["adc_mean"], abs=0.12), name
        assert rows[name]["t1_ratio"] == pytest.approx(expected["t1_ratio"], rel=0.25), name
        assert rows[name]["ct_mean_hu"] == pytest.approx(expected["ct_mean_hu"], abs=40), name


def test_analyze_dicom_refuses_file_options_and_unknown_series(phantom_dicom, tmp_path):
    folder, truth, scrambled = phantom_dicom
    seg = folder / "study" / truth["files"]["seg"]
    done = run_cli(["analyze", "--dicom", scrambled, "--seg", seg, "--t1", seg, "--out", tmp_path / "o"])
    assert done.returncode == 2 and done.stderr.startswith("error: --t1 with --dicom"), done.stderr
    done = run_cli(["analyze", "--dicom", scrambled, "--seg", seg, "--t2-series", "42", "--out", tmp_path / "o"])
    assert done.returncode == 2 and "--t2-series 42" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_phantom_dicom_command_writes_the_series(tmp_path):
    done = run_cli(["-q", "phantom", "--out", tmp_path / "study", "--seed", "2", "--dicom"])
    assert done.returncode == 0, done.stderr
    series = {}
    for path in (tmp_path / "study" / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        item = series.setdefault(ds.SeriesDescription, {"modality": ds.Modality, "files": 0, "b": set(), "type": None})
        item["files"] += 1
        item["type"] = tuple(ds.ImageType)
        if "DiffusionBValue" in ds:
            item["b"].add(float(ds.DiffusionBValue))
    assert set(series) == set(EXPECTED_ROLES)
    truth = json.loads((tmp_path / "study" / "ground_truth.json").read_text())
    assert series["DWI SAG b0 50 400 800"]["b"] == set(truth["bvalues"])
    assert series["DWI SAG b0 50 400 800"]["files"] == 4 * series["DWI SAG ADC"]["files"]
    assert "ADC" in series["DWI SAG ADC"]["type"] and series["CT SPINE BONE"]["modality"] == "CT"
