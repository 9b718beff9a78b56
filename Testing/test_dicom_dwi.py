"""Tests of dicom_dwi.read_dwi_dicom on real scanner series (../shared/dicom-dwi, see its README).

Expected b-values come from the reference .bval files shipped with each series, expected image
counts and median ADC values from the data README (computed independently of this reader),
and the Siemens XA30 scanner's own ADC map checks the fit end to end.
"""

from __future__ import annotations

import functools
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "dicom-dwi"

from VertebralMarrowLib.dicom_dwi import read_dwi_dicom
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
    copy_files(source, tmp_path, [p.name for p in source.iterdir()])
    with pytest.raises(InputError, match="all derived maps"):
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
