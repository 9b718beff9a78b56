"""Tests of dicom_dwi.read_dwi_dicom on real scanner series (../shared/dicom-dwi, see its README).

Expected b-values come from the reference .bval files shipped with each series, expected image
counts and median ADC values from the data README (computed independently of this reader),
and the Siemens XA30 scanner's own ADC map checks the fit end to end: through the reader, and
through `vertebral-marrow adc|analyze --dwi-dicom` in a subprocess.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "dicom-dwi"
ENTRY_POINT = Path(sys.executable).parent / "vertebral-marrow"

from VertebralMarrowLib.core.adc import fit_adc_volume, trace_weighted
from VertebralMarrowLib.inputs.dicom_dwi import read_dwi_dicom
from VertebralMarrowLib.errors import InputError

# Images (files or frames) per distinct b-value, from the README's "b-values in headers" column:
# Philips near-zero b-values count as 0, isotropic images next to directional ones are left out.
IMAGES_PER_BVALUE = {
    "siemens_vb15_mosaic_dti": {0: 1, 1000: 1},
    "siemens_xa30_classic_dwi": {0: 1, 2500: 20},
    "siemens_xa60_enhanced_dwi": {0: 10, 1000: 60},
    "ge_signa_pioneer_dti": {0: 2, 1000: 12},
    "ge_mr750_dti_headeronly": {0: 4, 1000: 4},
    "philips_elition_classic_dti": {0: 2 + 4 * 2, 1000: 24},
    "philips_achieva_classic_dti": {0: 2, 2000: 32 - 2},
    "philips_achieva_enhanced_dti_headeronly": {0: 8, 1300: 24},
    "philips_achieva_multib_headeronly": {0: 1, 40: 1, 273: 1, 800: 1},
    "canon_galan_classic_dti": {0: 2, 1500: 24},
    "canon_galan_enhanced_dti": {0: 40, 1500: 480},
}
# README: median ADC (10^-3 mm^2/s) of a log-linear b0 / highest-b fit in the S0 mask.
MEDIAN_ADC = {
    "siemens_vb15_mosaic_dti": 0.91,
    "siemens_xa30_classic_dwi": 1.92,
    "siemens_xa60_enhanced_dwi": 1.05,
    "philips_elition_classic_dti": 0.74,
    "philips_achieva_classic_dti": 0.68,
    "canon_galan_classic_dti": 0.79,
    "canon_galan_enhanced_dti": 0.83,
}


def series_folder(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        pytest.skip(f"test DICOM series {folder} is absent (the shared dicom-dwi data is not installed)")
    return folder


@functools.lru_cache(maxsize=None)
def read(name: str):
    return read_dwi_dicom(series_folder(name))


def reference_bvalues(folder: Path) -> set:
    """Distinct b-values of the whole series from ref/*.bval (Philips near-zero -> 0)."""
    values = set()
    for path in (folder / "ref").glob("*.bval"):
        values |= {0.0 if float(v) < 1 else float(v) for v in path.read_text().split()}
    return values


def adc_map(series, floor: float = 1.0) -> tuple:
    """(ADC in 10^-3 mm^2/s from b=0 and the highest b, mask S0 > 25 % of its 99th percentile)."""
    s0 = series.volumes[0].astype(np.float64)
    sb = series.volumes[-1].astype(np.float64)
    adc = np.log(np.maximum(s0, floor) / np.maximum(sb, floor)) / series.bvalues[-1] * 1e3
    return adc, s0 > 0.25 * np.percentile(s0, 99)


def headers(folder: Path) -> list:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(folder.iterdir())]


def lps(ras_point) -> np.ndarray:
    return np.array([-ras_point[0], -ras_point[1], ras_point[2]])


# ------------------------------------------------------------------- every folder: b-values


def test_every_data_folder_is_covered():
    if not DATA.is_dir():
        pytest.skip(f"test DICOM data {DATA} is absent (the shared dicom-dwi data is not installed)")
    assert {p.name for p in DATA.iterdir() if p.is_dir()} == set(IMAGES_PER_BVALUE)


@pytest.mark.parametrize("name", sorted(IMAGES_PER_BVALUE))
def test_bvalues_from_headers_match_reference(name):
    series = read(name)
    assert set(series.bvalues) == reference_bvalues(series_folder(name))
    assert series.bvalues == sorted(series.bvalues)
    assert dict(zip(series.bvalues, series.images_per_bvalue)) == IMAGES_PER_BVALUE[name]
    assert len(series.volumes) == len(series.bvalues)
    assert all(v.dtype == np.float32 and v.shape == series.volumes[0].shape for v in series.volumes)
    assert series.ijk_to_ras.shape == (4, 4) and series.ijk_to_ras.dtype == np.float64
    assert all("not a readable DICOM file" in s for s in series.skipped if s.startswith("ref/"))


# --------------------------------------------------------------------------- ADC from pixels


@pytest.mark.parametrize("name", sorted(MEDIAN_ADC))
def test_median_adc_matches_readme(name):
    adc, mask = adc_map(read(name))
    assert np.median(adc[mask]) == pytest.approx(MEDIAN_ADC[name], rel=0.05)


def test_xa30_scanner_adc_map_is_skipped_and_agrees_with_fit():
    folder = series_folder("siemens_xa30_classic_dwi")
    series = read("siemens_xa30_classic_dwi")
    derived = sorted(p.name for p in (folder / "dicom_derived").iterdir())
    for name in derived:
        assert any(name in s and "derived" in s for s in series.skipped), name
    assert any("derived ADC" in s for s in series.skipped)
    assert any("derived TRACEW" in s for s in series.skipped)
    assert series.images_per_bvalue == [1, 20]

    scanner_adc = next(
        pydicom.dcmread(p).pixel_array.astype(np.float64)
        for p in (folder / "dicom_derived").iterdir() if p.name.startswith("12001")
    )
    adc, mask = adc_map(series)
    fitted = adc[0] * 1e3  # scanner map: integers in 10^-6 mm^2/s
    inside = mask[0] & (scanner_adc > 0)
    assert np.median(fitted[inside] / scanner_adc[inside]) == pytest.approx(1.0, abs=0.01)
    assert series.description == "Siemens MAGNETOM Prisma Fit, syngo MR XA30, classic, 21 images"


def test_philips_isotropic_images_are_set_aside():
    series = read("philips_achieva_classic_dti")
    isotropic = [s for s in series.skipped if "isotropic" in s]
    assert sorted(s.split(":")[0] for s in isotropic) == ["dicom/0640.dcm", "dicom/0672.dcm"]
    # b=0 images are flagged isotropic too, but there are no directional b=0 images to prefer
    assert series.bvalues == [0.0, 2000.0]


def test_philips_near_zero_bvalues_count_as_zero():
    series = read("philips_elition_classic_dti")
    assert series.bvalues == [0.0, 1000.0]
    assert series.images_per_bvalue == [10, 24]


def test_ge_volumes_pair_the_same_slices():
    # Every slice's pixels are byte-identical in all 7 volumes: a mis-sorted slice gives ADC != 0.
    adc, mask = adc_map(read("ge_signa_pioneer_dti"))
    assert mask.any() and np.abs(adc[mask]).max() < 1e-4


def test_canon_classic_and_enhanced_agree():
    classic, enhanced = read("canon_galan_classic_dti"), read("canon_galan_enhanced_dti")
    assert classic.bvalues == enhanced.bvalues == [0.0, 1500.0]
    for k in range(classic.volumes[0].shape[0]):
        index = np.linalg.solve(enhanced.ijk_to_ras, classic.ijk_to_ras @ [0, 0, k, 1])
        assert np.allclose(index[:2], 0, atol=1e-4) and abs(index[2] - round(index[2])) < 1e-4
        match = int(round(index[2]))
        for volume_c, volume_e in zip(classic.volumes, enhanced.volumes):
            assert np.allclose(volume_c[k], volume_e[match], rtol=1e-6)
    classic_adc, classic_mask = adc_map(classic)
    enhanced_adc, enhanced_mask = adc_map(enhanced)
    assert np.median(classic_adc[classic_mask]) == pytest.approx(
        np.median(enhanced_adc[enhanced_mask]), rel=0.05)


# ------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("name", ["ge_signa_pioneer_dti", "siemens_xa30_classic_dwi",
                                  "philips_elition_classic_dti", "canon_galan_classic_dti"])
def test_classic_geometry_matches_image_position(name):
    series = read(name)
    found = headers(series_folder(name) / "dicom")
    orientation = np.array(found[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = sorted((np.array(h.ImagePositionPatient, dtype=float) for h in found),
                       key=lambda p: p @ normal)
    matrix = series.ijk_to_ras
    last = series.volumes[0].shape[0] - 1
    assert np.allclose(lps(matrix @ [0, 0, 0, 1]), positions[0], atol=1e-3)
    assert np.allclose(lps(matrix @ [0, 0, last, 1]), positions[-1], atol=1e-3)
    row_spacing, column_spacing = (float(v) for v in found[0].PixelSpacing)
    assert np.allclose(lps(matrix[:3, 0]), orientation[:3] * column_spacing, atol=1e-4)
    assert np.allclose(lps(matrix[:3, 1]), orientation[3:] * row_spacing, atol=1e-4)
    assert np.linalg.det(matrix[:3, :3]) * np.linalg.det(np.diag([-1, -1, 1])) > 0  # right-handed in LPS


def test_enhanced_geometry_matches_plane_positions():
    series = read("siemens_xa60_enhanced_dwi")
    ds = headers(series_folder("siemens_xa60_enhanced_dwi") / "dicom")[0]
    positions = [np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                 for frame in ds.PerFrameFunctionalGroupsSequence]
    first_frame = ds.PerFrameFunctionalGroupsSequence[0]
    orientation = np.array(first_frame.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions.sort(key=lambda p: p @ normal)
    assert series.volumes[0].shape == (10, 64, 64)
    for k, position in enumerate(positions):
        assert np.allclose(lps(series.ijk_to_ras @ [0, 0, k, 1]), position, atol=1e-3)


def test_mosaic_is_split_into_60_slices_at_the_protocol_positions():
    series = read("siemens_vb15_mosaic_dti")
    assert [v.shape for v in series.volumes] == [(60, 102, 102)] * 2
    # Independent source: the slice centres of the protocol in the CSA series header (0029,1020).
    # Siemens puts a slice's centre at voxel N/2 of an even matrix.
    ds = pydicom.dcmread(series_folder("siemens_vb15_mosaic_dti") / "dicom" / "0001.dcm",
                         stop_before_pixels=True)
    protocol = ds[0x0029, 0x1020].value
    centres = np.zeros((60, 3))
    for index, axis, value in re.findall(
            rb"sSliceArray\.asSlice\[(\d+)\]\.sPosition\.d(Sag|Cor|Tra)\s*=\s*(\S+)", protocol):
        centres[int(index), "Sag Cor Tra".split().index(axis.decode())] = float(value)
    for k in range(60):
        assert np.allclose(lps(series.ijk_to_ras @ [51, 51, k, 1]), centres[k], atol=0.01), k
    # Tiles differ from each other (they are different slices, not one repeated tile).
    assert not np.allclose(series.volumes[0][20], series.volumes[0][40])


# ------------------------------------------------------------------------------- speed


def test_biggest_folder_reads_quickly():
    folder = series_folder("canon_galan_enhanced_dti")
    start = time.perf_counter()
    read_dwi_dicom(folder)
    # Generous bound against pathological slowness (decoding twice, per-frame rescans);
    # it takes about 0.4 s here.
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------------------- errors


def copy_files(source: Path, target: Path, names) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / name, target / name)
    return target


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_dwi_dicom(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match=f"no DICOM images in {re.escape(str(tmp_path))}"):
        read_dwi_dicom(tmp_path)


def test_folder_with_only_a_non_dicom_file(tmp_path):
    (tmp_path / "notes.txt").write_text("b-values 0 and 1000\n")
    with pytest.raises(InputError, match=r"no DICOM images in .*\(1 other files skipped\)"):
        read_dwi_dicom(tmp_path)


def test_folder_with_only_b0_images(tmp_path):
    source = series_folder("ge_mr750_dti_headeronly") / "dicom"
    copy_files(source, tmp_path, [f"IM-0001-000{i}-0001.dcm" for i in range(1, 5)])
    with pytest.raises(InputError, match=r"only one b-value \(0\); an ADC fit needs at least two"):
        read_dwi_dicom(tmp_path)


def test_folder_with_only_derived_maps(tmp_path):
    source = series_folder("siemens_xa30_classic_dwi") / "dicom_derived"
    copy_files(source, tmp_path, [XA30_ADC_MAP])
    with pytest.raises(InputError, match="all derived maps"):
        read_dwi_dicom(tmp_path)


def test_folder_with_trace_and_adc_map_but_no_b0(tmp_path):
    # The XA30 TRACEW series holds b=2500 only (its ref .bval is "2500"): one b-value.
    source = series_folder("siemens_xa30_classic_dwi") / "dicom_derived"
    copy_files(source, tmp_path, [p.name for p in source.iterdir()])
    with pytest.raises(InputError, match=r"only one b-value \(2500\), in the scanner's trace images "
                                         r"\(TRACEW at b=2500\) and no b=0 image; an ADC fit needs at least two"):
        read_dwi_dicom(tmp_path)


def test_images_without_any_bvalue(tmp_path):
    source = series_folder("canon_galan_classic_dti") / "dicom"
    for path in sorted(source.iterdir())[:4]:
        ds = pydicom.dcmread(path)
        del ds[0x0018, 0x9087]
        ds.save_as(tmp_path / path.name)
    with pytest.raises(InputError, match="have no b-value in any known tag"):
        read_dwi_dicom(tmp_path)


def test_missing_slice_file(tmp_path):
    source = series_folder("ge_mr750_dti_headeronly") / "dicom"
    names = [p.name for p in source.iterdir() if p.name != "IM-0001-0078-0001.dcm"]
    copy_files(source, tmp_path, names)
    with pytest.raises(InputError, match=r"b=1000 .* do not cover every slice position"):
        read_dwi_dicom(tmp_path)


def test_two_series_in_one_folder(tmp_path):
    for name in ("canon_galan_classic_dti", "ge_mr750_dti_headeronly"):
        source = series_folder(name) / "dicom"
        copy_files(source, tmp_path / name, [p.name for p in source.iterdir()])
    with pytest.raises(InputError, match="2 series"):
        read_dwi_dicom(tmp_path)


def test_ge_bvalue_offset_is_stripped(tmp_path):
    source = series_folder("ge_mr750_dti_headeronly") / "dicom"
    for path in source.iterdir():
        ds = pydicom.dcmread(path)
        first, *rest = ds[0x0043, 0x1039].value
        ds[0x0043, 0x1039].value = [int(first) + 1_000_000_000, *rest]
        ds.save_as(tmp_path / path.name)
    assert read_dwi_dicom(tmp_path).bvalues == [0.0, 1000.0]



# ----------------------------------------------------------------- scanner trace images only
#
# siemens_xa30_classic_dwi/dicom_derived holds what the scanner computed for slice 20: the
# ADC map (series 12001) and the trace-weighted image at b=2500 (series 13001, TRACEW). The
# scanner's TRACEW series has no b=0 image, so the real trace-only folder is that TRACEW image
# plus the b=0 image of the original series 11001 (same study, frame of reference, protocol,
# TE and TR): no directional image anywhere.

XA30_B0 = "11001020_1.3.12.2.1107.5.2.43.67093.30000023011319484937100003674.dcm"
XA30_ADC_MAP = "12001020_1.3.12.2.1107.5.2.43.67093.30000023011319484937100005335.dcm"
XA30_TRACEW = "13001020_1.3.12.2.1107.5.2.43.67093.30000023011319484937100005416.dcm"


def pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


def xa30_scanner() -> dict:
    """The XA30 slice as stored: b0, the 20 directions, TRACEW and the ADC map (10^-6 mm^2/s),
    and the README's mask (S0 > 25 % of its 99th percentile)."""
    folder = series_folder("siemens_xa30_classic_dwi")
    originals = sorted((folder / "dicom").iterdir())
    b0 = pixels(originals[0])
    return {
        "b0": b0,
        "directions": np.stack([pixels(path) for path in originals[1:]]),
        "trace": pixels(folder / "dicom_derived" / XA30_TRACEW),
        "adc": pixels(folder / "dicom_derived" / XA30_ADC_MAP),
        "mask": b0 > 0.25 * np.percentile(b0, 99),
    }


def trace_only_folder(target: Path, with_adc_map: bool = True) -> Path:
    folder = series_folder("siemens_xa30_classic_dwi")
    copy_files(folder / "dicom", target, [XA30_B0])
    copy_files(folder / "dicom_derived", target, [XA30_TRACEW] + ([XA30_ADC_MAP] if with_adc_map else []))
    return target


def test_xa30_real_files_hold_no_trace_only_series_with_two_bvalues():
    """What the data offers, checked rather than assumed: one TRACEW image (b=2500), an ADC
    map without a b-value, and b=0 only among the originals."""
    folder = series_folder("siemens_xa30_classic_dwi")
    derived = {path.name: pydicom.dcmread(path, stop_before_pixels=True)
               for path in (folder / "dicom_derived").iterdir()}
    assert set(derived) == {XA30_ADC_MAP, XA30_TRACEW}
    assert "TRACEW" in derived[XA30_TRACEW].ImageType and derived[XA30_TRACEW][0x0019, 0x100C].value == 2500
    assert "ADC" in derived[XA30_ADC_MAP].ImageType and (0x0019, 0x100C) not in derived[XA30_ADC_MAP]
    assert (folder / "ref" / "13001_DWI_dir80_AP.bval").read_text().split() == ["2500"]
    b0 = pydicom.dcmread(folder / "dicom" / XA30_B0, stop_before_pixels=True)
    assert b0.ImageType[0] == "ORIGINAL" and b0[0x0019, 0x100C].value == 0
    assert b0.SeriesInstanceUID != derived[XA30_TRACEW].SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "ProtocolName", "EchoTime", "RepetitionTime"):
        assert b0.get(keyword) == derived[XA30_TRACEW].get(keyword), keyword


def test_trace_only_series_is_read_and_fits_the_scanner_adc(tmp_path):
    series = read_dwi_dicom(trace_only_folder(tmp_path))
    scanner = xa30_scanner()
    assert series.bvalues == [0.0, 2500.0]
    assert series.images_per_bvalue == [1, 1]
    assert series.description == (
        "Siemens MAGNETOM Prisma Fit, syngo MR XA30, classic, 2 images; scanner trace images used "
        "(TRACEW at b=2500 and original b=0 images): the folder has no directional images")
    assert [s.split(":")[0] for s in series.skipped] == [XA30_ADC_MAP]
    # the stored pixels, untouched: b=0 from the original, b=2500 from the TRACEW image
    np.testing.assert_array_equal(series.volumes[0][0], scanner["b0"])
    np.testing.assert_array_equal(series.volumes[1][0], scanner["trace"])

    fitted = fit_adc_volume(series.volumes, series.bvalues)[0] * 1e3  # 10^-6 mm^2/s, as the map
    inside = scanner["mask"] & (scanner["adc"] > 0)
    assert inside.sum() > 1500 and np.isfinite(fitted[inside]).all()
    ratio = np.median(fitted[inside] / scanner["adc"][inside])
    # Not the 0.1 % of the directional fit: the scanner stores its trace truncated to whole
    # units, TRACEW = floor(S0 exp(-b ADC_scanner)) in 98 % of the mask. At b=2500 the trace is
    # 2-7 units, so the stored value is on average half a unit (~13 %) low and the ADC 2.8 %
    # high. The reader keeps the stored values (other scanners round); half a unit back gives
    # the scanner's own map, which shows the rest of the chain is exact.
    implied = np.floor(scanner["b0"] * np.exp(-2500e-6 * scanner["adc"]))
    assert (scanner["trace"][inside] == implied[inside]).mean() > 0.95
    assert ratio == pytest.approx(1.028, abs=0.004)
    half_unit_back = np.log(scanner["b0"][inside] / (scanner["trace"][inside] + 0.5)) / 2500 * 1e6
    assert np.median(half_unit_back / scanner["adc"][inside]) == pytest.approx(1.0, abs=0.003)


def rewritten(source: Path, target: Path, **changes) -> Path:
    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


@pytest.mark.parametrize("image_type", [
    ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"],  # Siemens
    ["DERIVED", "PRIMARY", "DIFFUSION", "TRACE"],
    ["DERIVED", "SECONDARY", "ISOTROPIC"],
])
def test_trace_series_with_its_own_b0_wins_over_original_b0(tmp_path, image_type):
    """The other usual layout (e.g. Siemens VE11 3-scan trace): one trace series holding b=0
    and every higher b. Built from the real files with the b=0 image moved into the trace
    series; the original b=0 in the folder is set aside, not averaged in."""
    folder = series_folder("siemens_xa30_classic_dwi")
    trace_uid = pydicom.dcmread(folder / "dicom_derived" / XA30_TRACEW, stop_before_pixels=True).SeriesInstanceUID
    copy_files(folder / "dicom", tmp_path, [XA30_B0])
    rewritten(folder / "dicom" / XA30_B0, tmp_path / "trace_b0.dcm", ImageType=image_type, SeriesInstanceUID=trace_uid)
    rewritten(folder / "dicom_derived" / XA30_TRACEW, tmp_path / "trace_b2500.dcm", ImageType=image_type)
    series = read_dwi_dicom(tmp_path)
    kind = image_type[3] if len(image_type) > 3 else image_type[2]
    assert series.bvalues == [0.0, 2500.0] and series.images_per_bvalue == [1, 1]
    assert series.description.endswith(
        f"; scanner trace images used ({kind} at b=0, 2500): the folder has no directional images")
    assert series.skipped == [f"{XA30_B0}: original image at b=0 set aside: "
                              "the scanner's trace images at that b-value are used"]


def test_trace_images_are_never_mixed_with_directions(tmp_path):
    folder = series_folder("siemens_xa30_classic_dwi")
    directions = sorted(p.name for p in (folder / "dicom").iterdir())[:4]  # b0 and 3 directions
    copy_files(folder / "dicom", tmp_path, directions)
    trace_only_folder(tmp_path)
    series = read_dwi_dicom(tmp_path)
    assert series.images_per_bvalue == [1, 3]
    assert "trace" not in series.description
    assert any(s.startswith(f"{XA30_TRACEW}: derived TRACEW image at b=2500, set aside") for s in series.skipped)
    expected = np.exp(np.log(np.maximum(np.stack(
        [pixels(folder / "dicom" / name) for name in directions[1:]]), 1)).mean(axis=0))
    np.testing.assert_allclose(series.volumes[1][0], expected, rtol=1e-6)


def test_computed_bvalue_image_is_a_map_even_if_it_says_tracew(tmp_path):
    folder = series_folder("siemens_xa30_classic_dwi")
    copy_files(folder / "dicom", tmp_path, [XA30_B0])
    rewritten(folder / "dicom_derived" / XA30_TRACEW, tmp_path / "calc.dcm",
              ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "CALC_BVALUE", "TRACEW", "ND"])
    with pytest.raises(InputError, match=r"only one b-value \(0\); an ADC fit needs at least two$"):
        read_dwi_dicom(tmp_path)


@pytest.mark.parametrize("change", [{"EchoTime": 80}, {"ProtocolName": "DWI_other"},
                                    {"FrameOfReferenceUID": "1.2.3.4"}])
def test_b0_of_another_acquisition_is_not_paired_with_trace(tmp_path, change):
    """A b=0 of another protocol or TE would give a wrong ADC: the two series are refused."""
    folder = series_folder("siemens_xa30_classic_dwi")
    copy_files(folder / "dicom_derived", tmp_path, [XA30_TRACEW])
    rewritten(folder / "dicom" / XA30_B0, tmp_path / "b0.dcm", **change)
    with pytest.raises(InputError, match="2 series"):
        read_dwi_dicom(tmp_path)


# --------------------------------------------------------- one geometric mean: adc.trace_weighted


def test_directions_combine_with_a_zero_floored_at_one_stored_unit():
    """The reader's trace is adc.trace_weighted with each image's signal step as floor: a stored
    0 is "below one unit", not missing; NaN stays NaN; a lone image passes through."""
    directions = [np.array([[0.0, 8.0, np.nan]]), np.array([[2.0, 2.0, 4.0]])]
    combined, distinct = trace_weighted(directions + [np.array([[0.0, 5.0, 7.0]])], [800, 800, 0],
                                        floors=[0.5, 0.5, 0.5])
    assert distinct == [0.0, 800.0]
    np.testing.assert_array_equal(combined[0], [[0.0, 5.0, 7.0]])
    np.testing.assert_allclose(combined[1], [[1.0, 4.0, np.nan]])  # sqrt(0.5 * 2), sqrt(8 * 2)
    unfloored, _ = trace_weighted(directions, [800, 800])
    assert np.isnan(unfloored[0][0, 0]) and unfloored[0][0, 1] == pytest.approx(4.0)


def test_reader_trace_is_the_floored_geometric_mean_of_the_stored_directions():
    scanner = xa30_scanner()
    assert (scanner["directions"][:, scanner["mask"]] == 0).any()  # zeros inside the brain
    expected = np.exp(np.log(np.maximum(scanner["directions"], 1.0)).mean(axis=0))
    np.testing.assert_allclose(read("siemens_xa30_classic_dwi").volumes[1][0], expected, rtol=1e-6)


# ---------------------------------------------------- the command line: vertebral-marrow --dwi-dicom


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([str(ENTRY_POINT), "-q", *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=timeout, env=env)


def sitk_module():
    return pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def xa30_cli_map(tmp_path_factory):
    """`vertebral-marrow adc --dwi-dicom siemens_xa30_classic_dwi`: the written map's path."""
    folder = series_folder("siemens_xa30_classic_dwi")
    out = tmp_path_factory.mktemp("xa30") / "adc.nrrd"
    done = run_cli("adc", "--dwi-dicom", folder, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "b = 0, 2500 s/mm^2" in done.stdout
    return out


def assert_on_dicom_grid(image, dicom_file: Path):
    """The written map sits where the DICOM slice is (SimpleITK speaks LPS, as DICOM does)."""
    ds = pydicom.dcmread(dicom_file, stop_before_pixels=True)
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], orientation[:3], atol=1e-5)
    np.testing.assert_allclose(direction[:, 1], orientation[3:], atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), np.array(ds.ImagePositionPatient, dtype=float), atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing()[:2], [float(v) for v in ds.PixelSpacing][::-1], rtol=1e-5)


def test_cli_adc_from_dicom_matches_the_scanner_map(xa30_cli_map):
    sitk = sitk_module()
    image = sitk.ReadImage(str(xa30_cli_map))
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetSize() == (72, 72, 1)
    assert_on_dicom_grid(image, series_folder("siemens_xa30_classic_dwi") / "dicom" / XA30_B0)
    written = sitk.GetArrayFromImage(image)[0].astype(np.float64)  # 10^-3 mm^2/s
    scanner = xa30_scanner()
    inside = scanner["mask"] & (scanner["adc"] > 0)
    # independent numpy fit of the stored pixels: b0 and the floored geometric mean at b=2500
    trace = np.exp(np.log(np.maximum(scanner["directions"], 1.0)).mean(axis=0))
    expected = np.log(scanner["b0"][inside] / trace[inside]) / 2500 * 1e3
    np.testing.assert_allclose(written[inside], expected, rtol=1e-5)
    assert np.median(written[inside] * 1e3 / scanner["adc"][inside]) == pytest.approx(1.0, abs=0.01)
    assert np.median(written[scanner["mask"]]) == pytest.approx(MEDIAN_ADC["siemens_xa30_classic_dwi"], rel=0.02)


def test_cli_adc_from_trace_only_dicom(tmp_path):
    sitk = sitk_module()
    out = tmp_path / "adc.nrrd"
    done = run_cli("adc", "--dwi-dicom", trace_only_folder(tmp_path / "series"), "--out", out)
    assert done.returncode == 0, done.stderr
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[0].astype(np.float64)
    scanner = xa30_scanner()
    inside = scanner["mask"] & (scanner["adc"] > 0)
    expected = np.log(scanner["b0"][inside] / scanner["trace"][inside]) / 2500 * 1e3
    np.testing.assert_allclose(written[inside], expected, rtol=1e-5)
    # 2.8 % above the scanner's map: its truncated TRACEW (see the reader's test above)
    assert np.median(written[inside] * 1e3 / scanner["adc"][inside]) == pytest.approx(1.028, abs=0.004)


def test_cli_adc_from_enhanced_dicom(tmp_path):
    """Canon enhanced object (520 frames): the map, voxel by voxel, equals a numpy fit of the
    frames placed by their own PlanePosition through the written map's geometry."""
    sitk = sitk_module()
    folder = series_folder("canon_galan_enhanced_dti")
    out = tmp_path / "adc.nrrd"
    done = run_cli("adc", "--dwi-dicom", folder, "--out", out)
    assert done.returncode == 0, done.stderr
    image = sitk.ReadImage(str(out))
    written = sitk.GetArrayFromImage(image).astype(np.float64)
    assert written.shape == (40, 80, 80)
    ds = pydicom.dcmread(next((folder / "dicom").iterdir()))
    frames = ds.pixel_array.astype(np.float64)  # RescaleSlope 1, intercept 0
    b0, logs, counts = np.zeros(written.shape), np.zeros(written.shape), np.zeros(written.shape[0])
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = image.TransformPhysicalPointToContinuousIndex(position)
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3
        k = int(round(k))
        if frame.MRDiffusionSequence[0].DiffusionBValue == 0:
            b0[k] = frames[index]
        else:
            logs[k] += np.log(np.maximum(frames[index], 1.0))
            counts[k] += 1
    assert set(counts) == {12}
    trace = np.exp(logs / 12)
    mask = b0 > 0.25 * np.percentile(b0, 99)
    expected = np.log(b0[mask] / trace[mask]) / 1500 * 1e3
    np.testing.assert_allclose(written[mask], expected, rtol=1e-4, atol=1e-6)
    assert np.median(written[mask]) == pytest.approx(MEDIAN_ADC["canon_galan_enhanced_dti"], rel=0.05)


def test_cli_analyze_with_dicom_dwi(xa30_cli_map, tmp_path):
    """ROIs drawn on the fitted map's grid: one in the brain, one in the air above it. Each
    ROI's ADC statistics are numpy's over the written map; the overlay sits on that grid."""
    sitk = sitk_module()
    reference = sitk.ReadImage(str(xa30_cli_map))
    adc = sitk.GetArrayFromImage(reference).astype(np.float64)
    scanner = xa30_scanner()
    labels = np.zeros(adc.shape, np.uint8)
    labels[0, 40:50, 25:35] = 1
    labels[0, 0:6, 20:50] = 2
    assert scanner["mask"][labels[0] == 1].all() and not scanner["mask"][labels[0] == 2].any()
    seg = sitk.GetImageFromArray(labels)
    seg.CopyInformation(reference)
    sitk.WriteImage(seg, str(tmp_path / "rois.nrrd"))
    # Written as Slicer writes colour tables: an underscore stands for a space in the name.
    (tmp_path / "rois.ctbl").write_text("# value name r g b a\n1 brain_ROI 230 80 60 255\n2 air_ROI 60 80 230 255\n")
    out = tmp_path / "out"
    done = run_cli("analyze", "--seg", tmp_path / "rois.nrrd", "--label-names", tmp_path / "rois.ctbl",
                   "--dwi-dicom", series_folder("siemens_xa30_classic_dwi"), "--out", out)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    with (out / "results.csv").open(newline="") as handle:
        rows = {row["segment"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"brain ROI", "air ROI"}
    for value, name in ((1, "brain ROI"), (2, "air ROI")):
        values = adc[labels == value]
        values = values[np.isfinite(values)]
        assert int(rows[name]["n_voxels_adc"]) == values.size
        assert float(rows[name]["adc_mean"]) == pytest.approx(values.mean(), abs=1e-4)  # 4 decimals
        assert float(rows[name]["adc_median"]) == pytest.approx(np.median(values), abs=1e-4)
    assert float(rows["brain ROI"]["adc_mean"]) == pytest.approx(
        np.mean(scanner["adc"][labels[0] == 1]) * 1e-3, rel=0.01)  # and the scanner's map agrees
    document = json.loads((out / "results.json").read_text())
    assert "0, 2500" in json.dumps(document)
    overlay = sitk.ReadImage(str(out / "overlay.nrrd"))
    assert overlay.GetSize() == reference.GetSize()
    np.testing.assert_allclose(overlay.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(overlay.GetDirection(), reference.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("command", ["adc", "analyze"])
def test_cli_dicom_folder_of_derived_maps_is_one_error_line(tmp_path, command):
    source = series_folder("siemens_xa30_classic_dwi") / "dicom_derived"
    folder = copy_files(source, tmp_path / "maps", [XA30_ADC_MAP])
    never = tmp_path / "never"
    if command == "adc":
        args = ["adc", "--dwi-dicom", folder, "--out", never / "adc.nrrd"]
    else:
        seg = tmp_path / "seg.nrrd"
        sitk = sitk_module()
        sitk.WriteImage(sitk.Image(4, 4, 1, sitk.sitkUInt8) + 1, str(seg))
        args = ["analyze", "--seg", seg, "--dwi-dicom", folder, "--out", never]
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "all derived maps" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not never.exists()


def test_a_series_come_out_short_names_the_files_it_skipped(tmp_path):
    """A gzipped slice file (`.dcm.gz`) is skipped; the error about the missing image names it."""
    import gzip

    folder = series_folder("canon_galan_classic_dti") / "dicom"
    names = sorted(p.name for p in folder.iterdir())
    copy_files(folder, tmp_path, names[:4] + names[5:])
    (tmp_path / (names[4] + ".gz")).write_bytes(gzip.compress((folder / names[4]).read_bytes()))
    with pytest.raises(InputError, match=rf"a file may be missing \(files skipped: {re.escape(names[4])}\.gz: not a readable"):
        read_dwi_dicom(tmp_path)


# --- MRtrix3's dwi2adc on the same real series --------------------------------------------


@pytest.mark.parametrize("name", ["siemens_xa30_classic_dwi", "siemens_xa60_enhanced_dwi",
                                  "philips_elition_classic_dti", "canon_galan_classic_dti"])
def test_ols_fit_equals_mrtrix_dwi2adc_on_real_series(name, tmp_path):
    """MRtrix3 reads the DICOM series itself (mrconvert: its own b-values, slice order and
    geometry) and fits log-linearly (dwi2adc). `adc --method ols` must give the same map on the
    same grid, voxel for voxel, wherever no sample is zero (there MRtrix takes the log of 0 and
    we floor the sample at one stored unit). These series have two b-values, where every
    log-linear estimator draws the same line: the check is of reading, pairing and geometry."""
    sitk = sitk_module()
    mrconvert, dwi2adc = shutil.which("mrconvert"), shutil.which("dwi2adc")
    if not (mrconvert and dwi2adc):
        pytest.skip("MRtrix3 is not installed (apt-get install mrtrix3): the comparison needs dwi2adc")
    folder = series_folder(name)
    ours = tmp_path / "ours.nii"
    done = run_cli("adc", "--dwi-dicom", folder / "dicom", "--method", "ols", "--out", ours)
    assert done.returncode == 0, done.stderr
    for command in ([mrconvert, "-quiet", folder / "dicom", tmp_path / "dwi.nii", "-export_grad_mrtrix", tmp_path / "grad.b"],
                    [dwi2adc, "-quiet", tmp_path / "dwi.nii", "-grad", tmp_path / "grad.b", tmp_path / "mrtrix.nii"]):
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=120)
    mine, theirs = sitk.ReadImage(str(ours)), sitk.ReadImage(str(tmp_path / "mrtrix.nii"))
    mrtrix_adc = sitk.GetArrayFromImage(theirs)[1].astype(np.float64) * 1e3  # volumes: S0, ADC in mm^2/s
    np.testing.assert_allclose(mine.GetOrigin(), theirs.GetOrigin()[:3], atol=1e-3)
    np.testing.assert_allclose(mine.GetSpacing(), theirs.GetSpacing()[:3], atol=1e-4)
    np.testing.assert_allclose(np.reshape(mine.GetDirection(), (3, 3)), np.reshape(theirs.GetDirection(), (4, 4))[:3, :3], atol=1e-5)
    adc = sitk.GetArrayFromImage(mine).astype(np.float64)
    samples = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "dwi.nii")))  # (volume, k, j, i)
    tissue = np.all(samples > 0, axis=0)
    assert tissue.sum() > 1000
    np.testing.assert_allclose(adc[tissue], mrtrix_adc[tissue], rtol=0, atol=1e-4)
