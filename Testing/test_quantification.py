"""Quantification on real MRML, against answers known independently of the code under test.

Every study here is built in the test: ROIs drawn on a fine anisotropic sagittal grid, each
image on its own coarse oblique grid (rotated direction, anisotropic spacing, non-zero
origin), written to NRRD / NIfTI with SimpleITK and read back through MRML. The expected
numbers come from

- geometry: SimpleITK nearest-neighbour resampling of the ROI labelmap onto each image's grid
  (SimpleITK is LPS, MRML is RAS: the helpers below convert explicitly);
- analytic images: ADC and signal intensities are functions of RAS position, so the expected
  ROI statistics are numpy formulas over the independently resampled voxels;
- physics: the diffusion signal S0 exp(-b ADC) with Rician noise, fitted ADC within a few %;
- the phantom's ground truth, itself re-derived from its files with SimpleITK and numpy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest
import SimpleITK as sitk

import slicer
import vtk

from VertebralMarrowLib import mrml
from VertebralMarrowLib.analysis import StudyNodes, analyze
from VertebralMarrowLib.core.criteria import Options
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.inputs.study import StudyFiles, load_dwi, load_study

LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)
BVALUES = (0.0, 50.0, 400.0, 800.0)


# --- geometry, written independently of the library ------------------------------------


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


class Grid:
    """A voxel grid in RAS: columns of `axes` are the i, j, k unit directions."""

    def __init__(self, axes, spacing, centre_ras, size_ijk):
        self.axes = np.asarray(axes, float)
        self.spacing = np.asarray(spacing, float)
        self.size_ijk = tuple(int(n) for n in size_ijk)
        self.centre_ras = np.asarray(centre_ras, float)
        linear = self.axes @ np.diag(self.spacing)
        self.origin_ras = np.asarray(centre_ras, float) - linear @ ((np.asarray(self.size_ijk) - 1) / 2.0)
        self.ijk_to_ras = np.eye(4)
        self.ijk_to_ras[:3, :3] = linear
        self.ijk_to_ras[:3, 3] = self.origin_ras

    def centre_of_columns(self, first: int, last: int):
        """RAS centre of the sub-grid keeping columns first..last (all rows and slices)."""
        index = np.array([(first + last) / 2.0, (self.size_ijk[1] - 1) / 2.0, (self.size_ijk[2] - 1) / 2.0, 1.0])
        return (self.ijk_to_ras @ index)[:3]

    @property
    def shape_kji(self):
        return self.size_ijk[::-1]

    def centres(self, translation=(0.0, 0.0, 0.0)):
        """RAS coordinates x, y, z of every voxel centre, each shaped (k, j, i)."""
        k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in self.shape_kji], indexing="ij")
        ijk = np.stack([i, j, k])
        ras = np.einsum("ab,bkji->akji", self.ijk_to_ras[:3, :3], ijk) + self.origin_ras[:, None, None, None]
        return ras + np.asarray(translation, float)[:, None, None, None]

    def sitk_image(self, array_kji, translation=(0.0, 0.0, 0.0), vector=False) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji), isVector=vector)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(v) for v in LPS @ (self.origin_ras + np.asarray(translation, float))])
        image.SetDirection([float(v) for v in (LPS @ self.axes).ravel()])
        return image

    def write(self, path: Path, array_kji) -> Path:
        sitk.WriteImage(self.sitk_image(array_kji), str(path), True)
        return path


SAGITTAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # i -> P, j -> I, k -> R
AXIAL = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
# The ROIs: fine anisotropic sagittal grid, 0.7 x 0.7 x 2.5 mm over a 80 mm cube.
SEG_GRID = Grid(SAGITTAL, (0.7, 0.7, 2.5), (0.3, -0.2, 0.1), (115, 115, 33))
# ADC: coarse, doubly oblique, anisotropic, off-centre.
ADC_GRID = Grid(rotation((0, 0, 1), 14.0) @ rotation((1, 0, 0), -9.0) @ AXIAL, (2.2, 1.9, 4.4), (1.3, -0.7, 2.1), (40, 46, 20))
# DWI: another oblique grid of its own.
DWI_GRID = Grid(rotation((1, 0.3, 0), 11.0) @ SAGITTAL, (1.8, 1.8, 5.0), (-0.9, 0.6, -1.4), (46, 46, 17))
# T1: parallel to the ROI grid. Parallel grids with commensurate spacings can put a voxel
# centre exactly half-way between two ROI voxels, where any nearest-neighbour rule is a tie
# (SimpleITK and VTK break ties differently); the 0.0137 mm offsets keep centres off ties.
T1_GRID = Grid(SAGITTAL, (0.9, 0.9, 4.0), (0.5137, 0.4137, -0.2863), (90, 90, 20))
# T2: the grid the ROIs were drawn on (the usual case): counts are the labelmap's own.
T2_GRID = SEG_GRID
FS_GRID = Grid(rotation((0, 0, 1), -6.0) @ AXIAL, (1.2, 1.2, 3.0), (0.2, -0.5, 0.4), (67, 67, 27))
CT_GRID = Grid(AXIAL, (0.8, 0.8, 1.5), (0.0, 0.0, 0.0), (100, 100, 54))

# ROIs (RAS centre, radius mm): spheres, so every grid samples the same truth.
SPHERES = {
    "lesion A": ((5.0, 3.0, -4.0), 9.0),
    "lesion B": ((-13.0, -9.0, 10.0), 7.0),
    "L3 normal": ((12.0, -12.0, 14.0), 6.5),
}
LABELS = {name: value for value, name in enumerate(SPHERES, 1)}


def adc_truth(x, y, z):
    """Analytic ADC (10^-3 mm^2/s) as a function of RAS position: a ramp, 0.1-2.1 in the cube."""
    return np.clip(1.1 + 0.012 * x - 0.008 * y + 0.005 * z, 0.05, None)


def sphere_labels(grid: Grid, spheres=SPHERES, labels=LABELS, grow_mm=0.0):
    x, y, z = grid.centres()
    out = np.zeros(grid.shape_kji, np.uint8)
    for name, (centre, radius) in spheres.items():
        r = radius + grow_mm
        out[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= r * r] = labels[name]
    return out


def write_ctbl(path: Path, labels: Dict[str, int]) -> Path:
    lines = ["# test color table"] + [f"{value} {name.replace(' ', '_')} 200 100 50 255" for name, value in labels.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def nn_resample(label_image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """The independent answer: nearest-neighbour resampling in SimpleITK (LPS physical space)."""
    resampled = sitk.Resample(label_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label_image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_state(folder: Path) -> Dict[str, str]:
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def rows_by_name(result):
    return {row["segment"]: row for row in result.rows}


def rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """The ROI labelmap (+ colour table) and an ADC map in each unit convention, on disk."""
    folder = tmp_path_factory.mktemp("study")
    seg_labels = sphere_labels(SEG_GRID)
    SEG_GRID.write(folder / "rois.nrrd", seg_labels)
    names = dict(LABELS)  # Slicer reads an underscore in a colour-table name as a space
    write_ctbl(folder / "rois.ctbl", LABELS)
    adc = adc_truth(*ADC_GRID.centres())
    ADC_GRID.write(folder / "adc_int_1e-6.nrrd", np.round(adc * 1000.0).astype(np.int16))
    ADC_GRID.write(folder / "adc_float_mm2s.nii.gz", (adc / 1000.0).astype(np.float32))
    ADC_GRID.write(folder / "adc_float_1e-3.nrrd", adc.astype(np.float32))
    return folder, names


def expected_adc_stats(label_path: Path, adc_path: Path, scale: float):
    """Per label: (count, mean, median) from SimpleITK NN resampling and numpy."""
    reference = sitk.ReadImage(str(adc_path))
    labels = nn_resample(sitk.ReadImage(str(label_path)), reference)
    values = sitk.GetArrayFromImage(reference).astype(np.float64) * scale
    out = {}
    for value in np.unique(labels[labels > 0]):
        v = values[labels == value]
        out[int(value)] = (v.size, float(v.mean()), float(np.median(v)))
    return out


def load_seg(app, folder: Path):
    """The labelmap + colour table through the library's reader (names from the .ctbl)."""
    return mrml.load_segmentation(app.scene, app, folder / "rois.nrrd", folder / "rois.ctbl")


# --- the ADC map, each unit convention ---------------------------------------------------

UNIT_CASES = [
    ("adc_int_1e-6.nrrd", 0.001, "10^-6 mm^2/s"),
    ("adc_float_mm2s.nii.gz", 1000.0, "mm^2/s (auto"),
    ("adc_float_1e-3.nrrd", 1.0, "10^-3 mm^2/s (auto"),
]


@pytest.mark.parametrize("file_name, scale, units_text", UNIT_CASES)
def test_scanner_adc_map_counts_and_statistics_match_independent_resampling(study_dir, file_name, scale, units_text):
    folder, names = study_dir
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    adc_node = mrml.load_volume(app.scene, folder / file_name, "ADC map")
    # MRML's reader puts the file where this test's RAS geometry says (pins the LPS/RAS handling)
    np.testing.assert_allclose(mrml.ijk_to_ras_of(adc_node), ADC_GRID.ijk_to_ras, atol=1e-5)
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app)

    assert units_text in result.adc_units
    expected = expected_adc_stats(folder / "rois.nrrd", folder / file_name, scale)
    rows = rows_by_name(result)
    assert set(rows) == set(names)
    for name, value in names.items():
        count, mean, median = expected[value]
        assert count > 20
        assert rows[name]["n_voxels_adc"] == count, name
        assert rows[name]["adc_mean"] == pytest.approx(mean, rel=1e-5), name
        assert rows[name]["adc_median"] == pytest.approx(median, rel=1e-5), name
        # volume from the ADC grid's own voxel size (NIfTI keeps spacing in float32)
        assert rows[name]["volume_ml"] == pytest.approx(count * 2.2 * 1.9 * 4.4 / 1000.0, rel=1e-6)
    assert result.bvalues_used is None


def test_every_unit_convention_gives_the_same_result(study_dir):
    folder, names = study_dir
    means = {}
    for file_name, _, _ in UNIT_CASES:
        app = mrml.new_scene()
        segmentation = load_seg(app, folder)
        adc_node = mrml.load_volume(app.scene, folder / file_name, "ADC map")
        result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app)
        means[file_name] = {row["segment"]: (row["n_voxels_adc"], row["adc_mean"], row["adc_class"]) for row in result.rows}
    # the analytic truth at the ADC voxel centres of each ROI (independent resampling)
    reference = sitk.ReadImage(str(folder / "adc_float_1e-3.nrrd"))
    labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), reference)
    truth = adc_truth(*ADC_GRID.centres())
    first = means[UNIT_CASES[0][0]]
    for file_name, per_segment in means.items():
        for name, (count, mean, adc_class) in per_segment.items():
            assert count == first[name][0]
            assert adc_class == first[name][2]
            # integer storage rounds to 10^-6: at most 0.0005 off
            assert mean == pytest.approx(truth[labels == names[name]].mean(), abs=6e-4), (file_name, name)


@pytest.mark.parametrize("file_name, unit, scale", [
    ("adc_int_1e-6.nrrd", "1e-6", 0.001),
    ("adc_float_1e-3.nrrd", "1e-3", 1.0),
    ("adc_float_mm2s.nii.gz", "mm2/s", 1000.0),
])
def test_explicit_units_override_the_decision(study_dir, file_name, unit, scale):
    folder, names = study_dir
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    adc_node = mrml.load_volume(app.scene, folder / file_name, "ADC map")
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(adc_units=unit), app=app)
    assert "given by the user" in result.adc_units
    expected = expected_adc_stats(folder / "rois.nrrd", folder / file_name, scale)
    for name, row in rows_by_name(result).items():
        assert row["adc_mean"] == pytest.approx(expected[names[name]][1], rel=1e-5)


@pytest.mark.parametrize("band", [0.0, 0.1])
def test_overlay_classes_voxels_of_lesion_rois_only(study_dir, band):
    """Overlay on the ADC grid: 0 outside lesion ROIs; inside, 3 where ADC <= 1.21 (Kaur 2020),
    1 above, 2 within the band; the reference ROI stays 0."""
    folder, names = study_dir
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    adc_node = mrml.load_volume(app.scene, folder / "adc_float_1e-3.nrrd", "ADC map")
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(indeterminate_band=band), app=app)
    reference = sitk.ReadImage(str(folder / "adc_float_1e-3.nrrd"))
    labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), reference)
    adc = sitk.GetArrayFromImage(reference).astype(np.float64)
    lesion = (labels == names["lesion A"]) | (labels == names["lesion B"])
    expected = np.zeros(adc.shape, np.uint8)
    expected[lesion & (adc <= 1.21)] = 3
    expected[lesion & (adc > 1.21)] = 1
    if band:
        expected[lesion & (np.abs(adc - 1.21) <= band)] = 2
    assert result.overlay.shape == adc.shape
    # the ramp crosses the cut-off inside lesion A: both sides occur
    assert ({2, 3} if band else {1, 3}) <= set(np.unique(expected[lesion]))
    np.testing.assert_array_equal(result.overlay, expected)
    assert not result.overlay[labels == names["L3 normal"]].any()


def test_absurd_adc_after_units_is_an_error_naming_units(study_dir):
    folder, _ = study_dir
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    adc_node = mrml.load_volume(app.scene, folder / "adc_int_1e-6.nrrd", "ADC map")
    with pytest.raises(InputError, match="units"):
        analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(adc_units="1e-3"), app=app)


def test_segmentation_file_round_trip_gives_the_same_counts(study_dir, tmp_path):
    """A .seg.nrrd written by MRML's storage node and read back measures the same voxels."""
    folder, names = study_dir
    app = mrml.new_scene()
    mrml.write_node(app.scene, load_seg(app, folder), tmp_path / "rois.seg.nrrd")
    app2 = mrml.new_scene()
    segmentation = mrml.load_segmentation(app2.scene, app2, tmp_path / "rois.seg.nrrd")
    adc_node = mrml.load_volume(app2.scene, folder / "adc_float_1e-3.nrrd", "ADC map")
    result = analyze(app2.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app2)
    expected = expected_adc_stats(folder / "rois.nrrd", folder / "adc_float_1e-3.nrrd", 1.0)
    for name, row in rows_by_name(result).items():
        assert row["n_voxels_adc"] == expected[names[name]][0]
        assert row["adc_mean"] == pytest.approx(expected[names[name]][1], rel=1e-6)


# --- DWI: the fit on MRML nodes ---------------------------------------------------------

S0 = 1000.0
SIGMA = S0 / 40.0  # SNR 40 at b = 0


def dwi_arrays(grid: Grid, seed: int = 7):
    """Mono-exponential signal of the analytic ADC at the grid's voxel centres, Rician noise."""
    rng = np.random.default_rng(seed)
    truth = adc_truth(*grid.centres())
    return [rician(S0 * np.exp(-b * truth / 1000.0), SIGMA, rng).astype(np.float32) for b in BVALUES], truth


@pytest.fixture(scope="module")
def dwi_dir(study_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dwi")
    arrays, _ = dwi_arrays(DWI_GRID)
    paths = [DWI_GRID.write(folder / f"dwi_b{int(b)}.nrrd", a) for b, a in zip(BVALUES, arrays)]
    return folder, paths


def truth_per_roi(seg_folder: Path, grid: Grid, reference_path: Path, names: Dict[str, int]):
    """Count and mean analytic ADC of each ROI on `grid` (SimpleITK NN resampling)."""
    labels = nn_resample(sitk.ReadImage(str(seg_folder / "rois.nrrd")), sitk.ReadImage(str(reference_path)))
    truth = adc_truth(*grid.centres())
    return {name: (int((labels == v).sum()), float(truth[labels == v].mean())) for name, v in names.items()}


def test_dwi_fit_recovers_the_analytic_adc_per_roi(study_dir, dwi_dir):
    folder, names = study_dir
    dwi_folder, paths = dwi_dir
    before = folder_state(dwi_folder)
    app = mrml.new_scene()
    study = load_study(app, StudyFiles(seg=folder / "rois.nrrd", label_names=folder / "rois.ctbl", dwi=paths, bvalues=BVALUES))
    result = analyze(app.scene, study, Options(), app=app)

    assert result.bvalues_used == list(BVALUES)
    assert "fitted" in result.adc_units and "10^-3" in result.adc_units
    # the fitted map lives on the DWI grid
    assert np.allclose(mrml.ijk_to_ras_of(result.adc_node), DWI_GRID.ijk_to_ras, atol=1e-4)
    expected = truth_per_roi(folder, DWI_GRID, paths[0], names)
    for name, row in rows_by_name(result).items():
        count, mean = expected[name]
        assert row["n_voxels_adc"] == count
        assert row["adc_mean"] == pytest.approx(mean, rel=0.03), name
    assert not any("left out" in w for w in result.warnings)
    assert folder_state(dwi_folder) == before


def test_bmin_bmax_drop_bvalues_and_say_so(study_dir, dwi_dir):
    folder, names = study_dir
    _, paths = dwi_dir
    app = mrml.new_scene()
    study = load_study(app, StudyFiles(seg=folder / "rois.nrrd", label_names=folder / "rois.ctbl", dwi=paths, bvalues=BVALUES))
    result = analyze(app.scene, study, Options(bmin=40, bmax=500), app=app)
    assert result.bvalues_used == [50.0, 400.0]
    assert "b = 50, 400" in result.adc_source
    dropped = [w for w in result.warnings if "left out" in w]
    assert len(dropped) == 1 and "0, 800" in dropped[0]
    expected = truth_per_roi(folder, DWI_GRID, paths[0], names)
    for name, row in rows_by_name(result).items():
        assert row["adc_mean"] == pytest.approx(expected[name][1], rel=0.05), name


def test_diffusion_directions_are_combined_into_the_trace(study_dir, tmp_path):
    """b = 400 and 800 each along three axes with anisotropic diffusivities 0.5, 1.0, 1.5 x the
    ramp: the trace-weighted (geometric-mean) signal decays with their mean, the ramp itself."""
    folder, names = study_dir
    truth = adc_truth(*DWI_GRID.centres())
    rng = np.random.default_rng(11)
    nodes_b = [(0.0, S0 * np.ones_like(truth))]
    for b in (400.0, 800.0):
        for factor in (0.5, 1.0, 1.5):
            nodes_b.append((b, S0 * np.exp(-b * factor * truth / 1000.0)))
    app = mrml.new_scene()
    nodes = []
    for n, (b, clean) in enumerate(nodes_b):
        path = DWI_GRID.write(tmp_path / f"dir{n}.nrrd", rician(clean, SIGMA / 2, rng).astype(np.float32))
        nodes.append(mrml.load_volume(app.scene, path, "DWI"))
    segmentation = load_seg(app, folder)
    bvalues = [b for b, _ in nodes_b]
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, dwi=nodes, bvalues=bvalues), Options(), app=app)
    assert result.bvalues_used == [0.0, 400.0, 800.0]
    assert not any("left out" in w for w in result.warnings)
    labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), sitk.ReadImage(str(tmp_path / "dir0.nrrd")))
    for name, row in rows_by_name(result).items():
        assert row["adc_mean"] == pytest.approx(truth[labels == names[name]].mean(), rel=0.03), name


def _check_dwi_nodes(nodes, bvalues, folder, names, grid, reference_path):
    assert bvalues == list(BVALUES)
    assert len(nodes) == 4
    arrays, _ = dwi_arrays(grid)
    for node, array in zip(nodes, arrays):
        assert np.allclose(mrml.ijk_to_ras_of(node), grid.ijk_to_ras, atol=1e-4)
        assert np.array_equal(mrml.array_of(node), array)


def test_4d_nrrd_with_dwmri_header_gives_bvalues_from_metadata(study_dir, tmp_path):
    folder, names = study_dir
    arrays, _ = dwi_arrays(DWI_GRID)
    image = DWI_GRID.sitk_image(np.stack(arrays, axis=-1), vector=True)
    direction = np.array([0.6, 0.0, 0.8])  # unit gradient; |g|^2 scales b (Slicer's DWMRI convention)
    image.SetMetaData("modality", "DWMRI")
    image.SetMetaData("DWMRI_b-value", "800")
    for n, b in enumerate(BVALUES):
        g = direction * np.sqrt(b / 800.0)
        image.SetMetaData(f"DWMRI_gradient_{n:04d}", " ".join(f"{v:.17g}" for v in g))
    path = tmp_path / "dwi.nrrd"
    sitk.WriteImage(image, str(path), True)
    assert "DWMRI_gradient_0003" in path.read_bytes()[:4000].decode("latin-1")  # header written as Slicer writes it

    app = mrml.new_scene()
    nodes, bvalues = load_dwi(app.scene, [path], ())
    assert bvalues == pytest.approx(list(BVALUES), abs=1e-9)
    _check_dwi_nodes(nodes, [float(round(b)) for b in bvalues], folder, names, DWI_GRID, path)
    segmentation = load_seg(app, folder)
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, dwi=nodes, bvalues=bvalues), Options(), app=app)
    reference = tmp_path / "b0.nrrd"
    DWI_GRID.write(reference, arrays[0])
    expected = truth_per_roi(folder, DWI_GRID, reference, names)
    for name, row in rows_by_name(result).items():
        assert row["n_voxels_adc"] == expected[name][0]
        assert row["adc_mean"] == pytest.approx(expected[name][1], rel=0.03), name


def test_4d_nifti_with_bval_sidecar(study_dir, tmp_path):
    folder, names = study_dir
    arrays, _ = dwi_arrays(DWI_GRID)
    series = sitk.JoinSeries([DWI_GRID.sitk_image(a) for a in arrays])
    path = tmp_path / "dwi.nii.gz"
    sitk.WriteImage(series, str(path))
    (tmp_path / "dwi.bval").write_text(" ".join(f"{b:g}" for b in BVALUES) + "\n")

    app = mrml.new_scene()
    nodes, bvalues = load_dwi(app.scene, [path], ())
    _check_dwi_nodes(nodes, bvalues, folder, names, DWI_GRID, path)
    segmentation = load_seg(app, folder)
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, dwi=nodes, bvalues=bvalues), Options(), app=app)
    assert result.bvalues_used == list(BVALUES)
    reference = tmp_path / "b0.nrrd"
    DWI_GRID.write(reference, arrays[0])
    expected = truth_per_roi(folder, DWI_GRID, reference, names)
    for name, row in rows_by_name(result).items():
        assert row["adc_mean"] == pytest.approx(expected[name][1], rel=0.03), name


# --- relative signal and CT ------------------------------------------------------------

NORMAL = {"t1": 400.0, "t2": 300.0, "fs": 60.0}
# lesion / normal-marrow intensity ratios and the words they must give (low < 0.8 <= iso <= 1.2 < high)
SIGNAL_RATIOS = {
    "lesion A": {"t1": (0.5, "low"), "t2": (1.5, "high"), "fs": (1.0, "iso")},
    "lesion B": {"t1": (1.1, "iso"), "t2": (0.7, "low"), "fs": (2.5, "high")},
}
CT_HU = {"lesion A": 650.0, "lesion B": 40.0, "L3 normal": 120.0}
SIGNAL_GRIDS = {"t1": T1_GRID, "t2": T2_GRID, "fs": FS_GRID}


def tissue_image(grid: Grid, inside: Dict[str, float], background: float, noise_sd: float, seed: int):
    """Intensity per sphere (grown 4 mm past the ROI so nearest-neighbour edges stay inside)."""
    labels = sphere_labels(grid, grow_mm=4.0)
    image = np.full(grid.shape_kji, background)
    for name, value in inside.items():
        image[labels == LABELS[name]] = value
    return image + np.random.default_rng(seed).normal(0.0, noise_sd, image.shape)


@pytest.fixture(scope="module")
def signal_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signal")
    for n, (key, grid) in enumerate(SIGNAL_GRIDS.items()):
        inside = {name: NORMAL[key] * SIGNAL_RATIOS[name][key][0] for name in SIGNAL_RATIOS}
        image = tissue_image(grid, inside, NORMAL[key], 0.01 * NORMAL[key], seed=n)
        grid.write(folder / f"{key}.nrrd", image.astype(np.float32))
    ct = tissue_image(CT_GRID, CT_HU, 120.0, 10.0, seed=9)
    CT_GRID.write(folder / "ct.nii.gz", np.round(ct).astype(np.int16))
    return folder


def signal_study(app, study_dir, signal_dir):
    folder, _ = study_dir
    return load_study(app, StudyFiles(
        seg=folder / "rois.nrrd", label_names=folder / "rois.ctbl", adc=folder / "adc_int_1e-6.nrrd",
        t1=signal_dir / "t1.nrrd", t2=signal_dir / "t2.nrrd", fs=signal_dir / "fs.nrrd", ct=signal_dir / "ct.nii.gz",
    ))


def test_signal_ratios_words_and_ct_against_known_intensities(study_dir, signal_dir):
    app = mrml.new_scene()
    study = signal_study(app, study_dir, signal_dir)
    result = analyze(app.scene, study, Options(), app=app)
    rows = rows_by_name(result)
    assert rows["L3 normal"]["role"] == "reference"
    for name, per_key in SIGNAL_RATIOS.items():
        row = rows[name]
        assert row["role"] == "lesion"
        for key, (ratio, word) in per_key.items():
            assert row[f"{key}_ratio"] == pytest.approx(ratio, rel=0.01), (name, key)
            assert row[f"{key}_signal"] == word, (name, key)
    for name, hu in CT_HU.items():
        assert rows[name]["ct_mean_hu"] == pytest.approx(hu, abs=2.0)
    for key in SIGNAL_GRIDS:
        assert rows["L3 normal"][f"{key}_ratio"] == pytest.approx(1.0, rel=0.01)
    assert not any("no reference ROI" in w for w in result.warnings)
    # the reference sits where the analytic ramp gives 1.1 + 0.012 x 12 + 0.008 x 12 + 0.005 x 14 = 1.41,
    # far above normal marrow (Koutoulidis 2017: <= 0.548): it is questioned
    assert rows["L3 normal"]["adc_mean"] == pytest.approx(1.41, abs=0.05)
    assert any("reference ROI 'L3 normal' may itself be infiltrated" in w and "diffuse infiltration" in w
               for w in result.warnings)


def test_signal_voxel_counts_are_counted_on_each_volumes_own_grid(study_dir, signal_dir):
    folder, names = study_dir
    app = mrml.new_scene()
    result = analyze(app.scene, signal_study(app, study_dir, signal_dir), Options(), app=app)
    label_image = sitk.ReadImage(str(folder / "rois.nrrd"))
    for key, file_name in (("t1", "t1.nrrd"), ("t2", "t2.nrrd"), ("fs", "fs.nrrd"), ("ct", "ct.nii.gz")):
        labels = nn_resample(label_image, sitk.ReadImage(str(signal_dir / file_name)))
        for detail in result.segments:
            assert detail["n_voxels"][key] == int((labels == names[detail["name"]]).sum()), (key, detail["name"])
    # on the ROIs' own grid the counts are those of the drawn labelmap itself
    drawn = sphere_labels(SEG_GRID)
    for detail in result.segments:
        assert detail["n_voxels"]["t2"] == int((drawn == names[detail["name"]]).sum())


def test_reference_given_by_option(study_dir, signal_dir):
    app = mrml.new_scene()
    study = signal_study(app, study_dir, signal_dir)
    result = analyze(app.scene, study, Options(reference_segments=("lesion B",)), app=app)
    rows = rows_by_name(result)
    assert rows["lesion B"]["role"] == "reference"
    assert rows["lesion B"]["adc_class"] == "reference"
    for key in SIGNAL_GRIDS:
        b = SIGNAL_RATIOS["lesion B"][key][0]
        assert rows["lesion B"][f"{key}_ratio"] == pytest.approx(1.0, rel=0.01)
        assert rows["lesion A"][f"{key}_ratio"] == pytest.approx(SIGNAL_RATIOS["lesion A"][key][0] / b, rel=0.01)
        assert rows["L3 normal"][f"{key}_ratio"] == pytest.approx(1.0 / b, rel=0.01)


def test_several_references_are_pooled_voxel_weighted(study_dir, signal_dir):
    """Two reference ROIs: the reference intensity is their voxel-weighted mean, with each
    ROI's voxels counted on each sequence's own grid (independent SimpleITK counts)."""
    folder, names = study_dir
    app = mrml.new_scene()
    study = signal_study(app, study_dir, signal_dir)
    result = analyze(app.scene, study, Options(reference_segments=("lesion B", "L3 normal")), app=app)
    rows = rows_by_name(result)
    label_image = sitk.ReadImage(str(folder / "rois.nrrd"))
    for key in SIGNAL_GRIDS:
        labels = nn_resample(label_image, sitk.ReadImage(str(signal_dir / f"{key}.nrrd")))
        n_b, n_n = int((labels == names["lesion B"]).sum()), int((labels == names["L3 normal"]).sum())
        b, a = SIGNAL_RATIOS["lesion B"][key][0], SIGNAL_RATIOS["lesion A"][key][0]
        pooled = (n_b * b + n_n * 1.0) / (n_b + n_n)
        assert rows["lesion A"][f"{key}_ratio"] == pytest.approx(a / pooled, rel=0.01), key
        assert rows["lesion B"]["role"] == rows["L3 normal"]["role"] == "reference"


def test_unknown_reference_is_an_error_naming_the_segments(study_dir, signal_dir):
    app = mrml.new_scene()
    study = signal_study(app, study_dir, signal_dir)
    with pytest.raises(InputError) as error:
        analyze(app.scene, study, Options(reference_segments=("L4 normal",)), app=app)
    message = str(error.value)
    assert "L4 normal" in message
    for name in ("lesion A", "lesion B", "L3 normal"):
        assert name in message


def test_no_reference_gives_empty_ratios_and_a_warning(study_dir, signal_dir, tmp_path):
    folder, _ = study_dir
    write_ctbl(tmp_path / "no_reference.ctbl", {"lesion A": 1, "lesion B": 2, "vertebra L3": 3})
    app = mrml.new_scene()
    study = load_study(app, StudyFiles(
        seg=folder / "rois.nrrd", label_names=tmp_path / "no_reference.ctbl", adc=folder / "adc_int_1e-6.nrrd",
        t1=signal_dir / "t1.nrrd", t2=signal_dir / "t2.nrrd", fs=signal_dir / "fs.nrrd",
    ))
    result = analyze(app.scene, study, Options(), app=app)
    for row in result.rows:
        assert row["role"] == "lesion"
        for key in SIGNAL_GRIDS:
            assert row[f"{key}_ratio"] is None
            assert row[f"{key}_signal"] == "n/a"
    assert any("reference" in w for w in result.warnings)


# --- coverage: partial overlap, outside, few voxels -------------------------------------


def analyze_on_grid(folder: Path, grid: Grid, tmp_path: Path, options=None, seg_name="rois"):
    """Write the analytic ADC on `grid`, analyse; return result and the independent labels."""
    adc_path = grid.write(tmp_path / f"adc_{id(grid)}.nrrd", adc_truth(*grid.centres()).astype(np.float32))
    app = mrml.new_scene()
    segmentation = mrml.load_segmentation(app.scene, app, folder / f"{seg_name}.nrrd", folder / f"{seg_name}.ctbl")
    adc_node = mrml.load_volume(app.scene, adc_path, "ADC map")
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), options or Options(), app=app)
    labels = nn_resample(sitk.ReadImage(str(folder / f"{seg_name}.nrrd")), sitk.ReadImage(str(adc_path)))
    return result, labels


def centre_index(grid: Grid, ras) -> np.ndarray:
    return (np.linalg.inv(grid.ijk_to_ras) @ np.append(np.asarray(ras, float), 1.0))[:3]


def test_roi_half_outside_the_map_is_measured_on_the_overlap_with_a_warning(study_dir, tmp_path):
    folder, names = study_dir
    # the ADC grid cut so that its last column passes through lesion B's centre
    cut = int(np.floor(centre_index(ADC_GRID, SPHERES["lesion B"][0])[0] + 0.5))
    assert 5 < cut < ADC_GRID.size_ijk[0] - 5
    half = Grid(ADC_GRID.axes, ADC_GRID.spacing, ADC_GRID.centre_of_columns(0, cut), (cut + 1,) + ADC_GRID.size_ijk[1:])
    full_labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), ADC_GRID.sitk_image(np.zeros(ADC_GRID.shape_kji, np.float32)))
    result, labels = analyze_on_grid(folder, half, tmp_path)
    rows = rows_by_name(result)
    count = int((labels == names["lesion B"]).sum())
    full = int((full_labels == names["lesion B"]).sum())
    assert 0.3 * full < count < 0.75 * full
    assert rows["lesion B"]["n_voxels_adc"] == count
    truth = adc_truth(*half.centres())
    assert rows["lesion B"]["adc_mean"] == pytest.approx(truth[labels == names["lesion B"]].mean(), rel=1e-5)
    outside = [w for w in result.warnings if "outside" in w and "lesion B" in w]
    assert len(outside) == 1


def test_roi_entirely_outside_the_map_is_a_row_with_its_reason(study_dir, tmp_path):
    folder, _ = study_dir
    # a small map around lesion A only
    small = Grid(ADC_GRID.axes, ADC_GRID.spacing, SPHERES["lesion A"][0], (12, 14, 6))
    result, labels = analyze_on_grid(folder, small, tmp_path)
    rows = rows_by_name(result)
    assert rows["lesion A"]["adc_mean"] is not None and rows["lesion A"]["n_voxels_adc"] > 0
    assert rows["lesion B"]["adc_class"] == "n/a" and rows["lesion B"]["adc_mean"] is None
    reason = next(d for d in result.segments if d["name"] == "lesion B")["unmeasured"]
    assert "lies entirely outside the ADC map" in reason


def test_no_roi_on_the_map_at_all_is_an_error(study_dir, tmp_path):
    folder, _ = study_dir
    far = Grid(ADC_GRID.axes, ADC_GRID.spacing, (200.0, 200.0, 200.0), (12, 14, 6))
    with pytest.raises(InputError, match="no ROI can be measured"):
        analyze_on_grid(folder, far, tmp_path)


def test_few_voxels_warn(tmp_path):
    spheres = {"lesion A": SPHERES["lesion A"], "tiny lesion": ((-8.0, 14.0, -12.0), 2.2)}
    labels = {"lesion A": 1, "tiny lesion": 2}
    SEG_GRID.write(tmp_path / "tiny.nrrd", sphere_labels(SEG_GRID, spheres, labels))
    write_ctbl(tmp_path / "tiny.ctbl", labels)
    result, on_adc = analyze_on_grid(tmp_path, ADC_GRID, tmp_path, seg_name="tiny")
    count = int((on_adc == 2).sum())
    assert 1 <= count < 10  # the fixture does what it says
    rows = rows_by_name(result)
    assert rows["tiny lesion"]["n_voxels_adc"] == count
    few = [w for w in result.warnings if "tiny lesion" in w and "too few" in w]
    assert len(few) == 1
    assert not any("lesion A" in w and "too few" in w for w in result.warnings)


# --- a parent transform on the volume ---------------------------------------------------


def translation_node(scene, shift):
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, float(shift[axis]))
    transform.SetMatrixTransformToParent(matrix)
    return transform


def test_parent_transform_of_the_volume_is_honoured(study_dir, tmp_path):
    """The ADC volume sits under a translation: the ROI is measured where the volume really is.
    The map's values are the ramp at the transformed positions, so the right answer is the
    ramp's mean over the ROI voxels of the translated grid."""
    folder, names = study_dir
    shift = np.array([7.0, -5.0, 4.4])
    values = adc_truth(*ADC_GRID.centres(translation=shift)).astype(np.float32)
    path = ADC_GRID.write(tmp_path / "adc_moved.nrrd", values)
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    adc_node = mrml.load_volume(app.scene, path, "ADC map")
    adc_node.SetAndObserveTransformNodeID(translation_node(app.scene, shift).GetID())
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app)

    label_image = sitk.ReadImage(str(folder / "rois.nrrd"))
    moved = nn_resample(label_image, ADC_GRID.sitk_image(values, translation=shift))
    unmoved = nn_resample(label_image, ADC_GRID.sitk_image(values))
    rows = rows_by_name(result)
    for name, value in names.items():
        count = int((moved == value).sum())
        assert rows[name]["n_voxels_adc"] == count, name
        assert rows[name]["adc_mean"] == pytest.approx(float(values[moved == value].mean()), rel=1e-5), name
        # and the transform mattered: the untransformed grid selects other voxels
        assert not np.array_equal(moved == value, unmoved == value)
    assert not any("outside" in w for w in result.warnings)


def test_parent_transform_of_the_segmentation_is_honoured(study_dir):
    folder, names = study_dir
    shift = np.array([-6.0, 8.0, -3.3])
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    segmentation.SetAndObserveTransformNodeID(translation_node(app.scene, shift).GetID())
    adc_node = mrml.load_volume(app.scene, folder / "adc_float_1e-3.nrrd", "ADC map")
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app)
    moved_rois = SEG_GRID.sitk_image(sphere_labels(SEG_GRID), translation=shift)
    reference = sitk.ReadImage(str(folder / "adc_float_1e-3.nrrd"))
    labels = nn_resample(moved_rois, reference)
    adc = sitk.GetArrayFromImage(reference).astype(np.float64)
    for name, row in rows_by_name(result).items():
        mask = labels == names[name]
        assert row["n_voxels_adc"] == int(mask.sum()), name
        assert row["adc_mean"] == pytest.approx(adc[mask].mean(), rel=1e-6), name


def test_transform_that_moves_a_roi_half_off_the_map_warns_outside(study_dir, tmp_path):
    """The 'outside' fraction must also follow the transform: slide the map so that its last
    column's outer edge cuts lesion B through its centre (the other ROIs stay inside), and
    check the warning and the overlap count."""
    folder, names = study_dir
    cut = centre_index(ADC_GRID, SPHERES["lesion B"][0])
    assert cut[0] > max(centre_index(ADC_GRID, SPHERES[n][0])[0] for n in ("lesion A", "L3 normal")) + 5
    edge_ras = (ADC_GRID.ijk_to_ras @ np.array([ADC_GRID.size_ijk[0] - 0.5, cut[1], cut[2], 1.0]))[:3]
    shift = (SPHERES["lesion B"][0] - edge_ras) @ ADC_GRID.axes[:, 0] * ADC_GRID.axes[:, 0]  # along the i axis
    values = adc_truth(*ADC_GRID.centres(translation=shift)).astype(np.float32)
    path = ADC_GRID.write(tmp_path / "adc_slid.nrrd", values)
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    adc_node = mrml.load_volume(app.scene, path, "ADC map")
    adc_node.SetAndObserveTransformNodeID(translation_node(app.scene, shift).GetID())
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app)
    labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), ADC_GRID.sitk_image(values, translation=shift))
    rows = rows_by_name(result)
    assert rows["lesion B"]["n_voxels_adc"] == int((labels == names["lesion B"]).sum())
    warning = [w for w in result.warnings if "lesion B" in w and "outside" in w]
    assert len(warning) == 1
    assert not any("outside" in w for w in result.warnings if "lesion B" not in w)
    percent = int(warning[0].split("lies ")[1].split("%")[0])
    assert 35 <= percent <= 65


def test_parent_transform_of_the_dwi_is_honoured(study_dir, tmp_path):
    folder, names = study_dir
    shift = np.array([6.0, 4.0, -5.0])
    # the signal of the ramp where the DWI really is: its grid moved by the transform
    arrays, _ = dwi_arrays(Grid(DWI_GRID.axes, DWI_GRID.spacing, DWI_GRID.centre_ras + shift, DWI_GRID.size_ijk))
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    transform = translation_node(app.scene, shift)
    nodes = []
    for b, array in zip(BVALUES, arrays):
        path = DWI_GRID.write(tmp_path / f"b{int(b)}.nrrd", array)
        node = mrml.load_volume(app.scene, path, "DWI")
        node.SetAndObserveTransformNodeID(transform.GetID())
        nodes.append(node)
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, dwi=nodes, bvalues=BVALUES), Options(), app=app)
    labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), DWI_GRID.sitk_image(arrays[0], translation=shift))
    truth = adc_truth(*DWI_GRID.centres(translation=shift))
    for name, row in rows_by_name(result).items():
        mask = labels == names[name]
        assert row["n_voxels_adc"] == int(mask.sum()), name
        assert row["adc_mean"] == pytest.approx(truth[mask].mean(), rel=0.03), name


# --- overlapping segments ------------------------------------------------------------------


def test_overlapping_segments_each_keep_all_their_voxels(study_dir, tmp_path):
    folder, names = study_dir
    x, y, z = SEG_GRID.centres()
    vertebra = ((np.abs(x - 3.0) <= 16.0) & (np.abs(y - 1.0) <= 15.0) & (np.abs(z + 3.0) <= 13.0)).astype(np.uint8) * 5
    lesions = sphere_labels(SEG_GRID)
    assert np.all(vertebra[lesions == LABELS["lesion A"]] == 5)  # lesion A lies inside the vertebra
    assert np.any(vertebra[lesions == LABELS["lesion B"]] == 5) and np.any(vertebra[lesions == LABELS["lesion B"]] == 0)
    SEG_GRID.write(tmp_path / "vertebra.nrrd", vertebra)

    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    vertebra_node = mrml.load_volume(app.scene, tmp_path / "vertebra.nrrd", labelmap=True)
    assert app.segmentations_logic.ImportLabelmapToSegmentationNode(vertebra_node, segmentation)
    vertebra_id = mrml.segment_ids(segmentation)[-1]
    segmentation.GetSegmentation().GetSegment(vertebra_id).SetName("L2 vertebra")
    mrml.set_segment_role(segmentation, vertebra_id, "reference")
    adc_node = mrml.load_volume(app.scene, folder / "adc_float_1e-3.nrrd", "ADC map")
    result = analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc_node), Options(), app=app)

    reference = sitk.ReadImage(str(folder / "adc_float_1e-3.nrrd"))
    adc = sitk.GetArrayFromImage(reference).astype(np.float64)
    lesion_labels = nn_resample(sitk.ReadImage(str(folder / "rois.nrrd")), reference)
    vertebra_labels = nn_resample(sitk.ReadImage(str(tmp_path / "vertebra.nrrd")), reference)
    expected = {name: lesion_labels == value for name, value in names.items()}
    expected["L2 vertebra"] = vertebra_labels == 5
    rows = rows_by_name(result)
    assert set(rows) == set(expected)
    for name, mask in expected.items():
        assert rows[name]["n_voxels_adc"] == int(mask.sum()), name
        assert rows[name]["adc_mean"] == pytest.approx(adc[mask].mean(), rel=1e-6), name
    # the overlap is real on the ADC grid: lesion A's voxels are all vertebra voxels too
    assert np.all(expected["L2 vertebra"][expected["lesion A"]])
    assert rows["L2 vertebra"]["role"] == "reference"


def slicer_export(app, segmentation, ids, volume_node) -> np.ndarray:
    """Slicer's own export of `ids` onto the volume's grid (one segment after another)."""
    id_array = vtk.vtkStringArray()
    for sid in ids:
        id_array.InsertNextValue(sid)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    app.scene.AddNode(labelmap)
    assert app.segmentations_logic.ExportSegmentsToLabelmapNode(segmentation, id_array, labelmap, volume_node)
    return np.array(slicer.util.arrayFromVolume(labelmap))


@pytest.mark.parametrize("grid", [ADC_GRID, DWI_GRID, T1_GRID, SEG_GRID, FS_GRID, CT_GRID,
                                  Grid(ADC_GRID.axes, ADC_GRID.spacing, SPHERES["lesion B"][0], (14, 12, 7))],
                         ids=["adc", "dwi", "t1", "seg", "fs", "ct", "partly outside"])
def test_segments_on_grid_are_the_voxels_slicers_export_gives(study_dir, tmp_path, grid):
    """mrml.segments_on_grid resamples each shared layer once; Slicer's export resamples it
    once per segment. The voxels must be the same on every grid, for segments in two layers."""
    folder, _ = study_dir
    x, y, z = SEG_GRID.centres()
    SEG_GRID.write(tmp_path / "block.nrrd", ((np.abs(x - 3.0) <= 16.0) & (np.abs(y - 1.0) <= 15.0)).astype(np.uint8) * 7)
    app = mrml.new_scene()
    segmentation = load_seg(app, folder)
    block = mrml.load_volume(app.scene, tmp_path / "block.nrrd", labelmap=True)
    assert app.segmentations_logic.ImportLabelmapToSegmentationNode(block, segmentation)
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 2  # the block overlaps the spheres
    volume = mrml.load_volume(app.scene, grid.write(tmp_path / "grid.nrrd", np.zeros(grid.shape_kji, np.int16)), "grid")
    ids = mrml.segment_ids(segmentation)
    on_grid = mrml.segments_on_grid(app.scene, app, segmentation, ids, volume, with_outside=False)
    assert len(on_grid.labels) == 2
    for labels, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        expected = slicer_export(app, segmentation, layer_ids, volume)
        assert labels.shape == expected.shape
        np.testing.assert_array_equal(labels, expected)
        assert np.any(labels > 0)


# --- inputs are never changed -----------------------------------------------------------


def test_input_nodes_and_files_are_unchanged(study_dir, signal_dir, dwi_dir):
    folder, _ = study_dir
    dwi_folder, dwi_paths = dwi_dir
    before_files = {path: folder_state(path) for path in (folder, signal_dir, dwi_folder)}
    for kind in ("adc", "dwi"):
        app = mrml.new_scene()
        files = StudyFiles(seg=folder / "rois.nrrd", label_names=folder / "rois.ctbl",
                           t1=signal_dir / "t1.nrrd", t2=signal_dir / "t2.nrrd", fs=signal_dir / "fs.nrrd", ct=signal_dir / "ct.nii.gz")
        if kind == "adc":
            files.adc = folder / "adc_int_1e-6.nrrd"
        else:
            files.dwi, files.bvalues = dwi_paths, BVALUES
        study = load_study(app, files)
        volumes = [study.adc, study.t1, study.t2, study.fs, study.ct, *study.dwi]
        volumes = [node for node in volumes if node is not None]
        arrays = [np.array(mrml.array_of(node), copy=True) for node in volumes]
        grids = [mrml.ijk_to_ras_of(node) for node in volumes]
        segmentation = study.segmentation
        segments = [(sid, mrml.segment_name(segmentation, sid)) for sid in mrml.segment_ids(segmentation)]

        first = analyze(app.scene, study, Options(), app=app)
        again = analyze(app.scene, study, Options(), app=app)  # a plain function: same inputs, same rows
        assert again.rows == first.rows

        for node, array, grid in zip(volumes, arrays, grids):
            assert np.array_equal(mrml.array_of(node), array), node.GetName()
            assert np.array_equal(mrml.ijk_to_ras_of(node), grid), node.GetName()
            assert node.GetParentTransformNode() is None
        assert [(sid, mrml.segment_name(segmentation, sid)) for sid in mrml.segment_ids(segmentation)] == segments
    for path, state in before_files.items():
        assert folder_state(path) == state, path  # no file changed, none written beside the inputs


# --- the phantom, and its ground truth checked independently ----------------------------


def segmentation_file_labels(path: Path):
    """Per segment name, (layer, label value) from a .seg.nrrd's own header, and the image."""
    image = sitk.ReadImage(str(path))
    segments, n = {}, 0
    while image.HasMetaDataKey(f"Segment{n}_Name"):
        segments[image.GetMetaData(f"Segment{n}_Name")] = (
            int(image.GetMetaData(f"Segment{n}_Layer")), int(image.GetMetaData(f"Segment{n}_LabelValue")))
        n += 1
    return image, segments


def layer_image(image: sitk.Image, layer: int) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() == 1:
        assert layer == 0
        return image
    return sitk.VectorIndexSelectionCast(image, layer)


@pytest.fixture(scope="module")
def phantom(phantom_study):
    folder, truth = phantom_study(0)
    assert json.loads((folder / "ground_truth.json").read_text()) == truth
    return folder, truth


def independent_phantom_means(folder: Path, truth: dict) -> Dict[str, tuple]:
    """Each segment's (count, mean ADC) on the scanner map: SimpleITK reads the files, resamples
    the segmentation's own labelmap nearest-neighbour, numpy averages (10^-6 -> 10^-3) the
    voxels with a value (mean None where none has)."""
    adc_image = sitk.ReadImage(str(folder / truth["files"]["adc"]))
    assert adc_image.GetPixelID() == sitk.sitkInt16  # stored as a scanner stores it
    adc = sitk.GetArrayFromImage(adc_image).astype(np.float64) * 1e-3
    seg_image, segments = segmentation_file_labels(folder / truth["files"]["seg"])
    assert set(segments) == set(truth["segments"])
    out = {}
    for name, (layer, value) in segments.items():
        labels = nn_resample(layer_image(seg_image, layer), adc_image)
        values = adc[(labels == value) & (adc > 0)]  # the scanner's 0: no value
        out[name] = (int((labels == value).sum()), float(values.mean()) if values.size else None)
    return out


def paper_tier(adc: float) -> str:
    """The tiers by the papers' numbers: Koutoulidis 2017 (0.548, rounded 0.55), Kaur 2020
    (1.21) with the default band 0.2."""
    return "marrow" if adc <= 0.55 else "malignant" if adc < 1.01 else "indeterminate" if adc <= 1.41 else "benign"


def test_phantom_ground_truth_agrees_with_its_own_files(phantom):
    folder, truth = phantom
    measured = independent_phantom_means(folder, truth)
    assert truth["tiers"] == {"marrow_max": 0.55, "indeterminate_band": 0.2}
    for name, segment in truth["segments"].items():
        count, mean = measured[name]
        if segment.get("partial_volume"):
            assert count == 0, name  # the 5-mm focus covers no voxel centre of the 5-mm DWI grid
            continue
        assert count >= 10, name
        if segment["adc_mean"] is None:  # the bone island: no DWI signal, the scanner stored 0
            assert mean is None, name
            continue
        # 5 %, or 0.03 where the signal is low (focal fat on fat-suppressed DWI): noise sets the floor
        assert mean == pytest.approx(segment["adc_mean"], rel=0.05, abs=0.03), name
        if segment["role"] != "lesion":
            continue
        if segment["deciding_sign"] == "adc":
            assert segment["adc_class"] == paper_tier(segment["adc_mean"]), name
        elif segment["deciding_sign"] == "fat":
            assert segment["t1_ratio"] >= 1.2 and segment["adc_class"] in ("benign", "marrow"), name
        elif segment["deciding_sign"] == "heterogeneity":
            assert segment["adc_class"] == "indeterminate" and segment["adc_rim"] < 1.01 < 1.41 < segment["adc_core"]
        elif segment["deciding_sign"] == "density":
            assert segment["ct_mean_hu"] >= 302, name
    # the literature the phantom follows (issue 10): focal myeloma about 1.05 and bright on STIR,
    # reconversion FS iso in the normal-marrow range above fatty marrow, a bone island at ~1190 HU
    segments = truth["segments"]
    assert segments["T12 island"]["adc_mean"] == pytest.approx(1.046, abs=0.06) and segments["T12 island"]["fs_ratio"] > 1.2
    assert 0.39 < segments["L2 island"]["adc_mean"] <= 0.55 and 0.8 <= segments["L2 island"]["fs_ratio"] <= 1.2
    assert segments["L4 island"]["ct_mean_hu"] == pytest.approx(1190) and segments["L4 island"]["adc_class"] == "benign"
    assert segments["L5 island"]["t1_ratio"] > 1.2 and segments["L5 island"]["fs_ratio"] < 0.8


@pytest.mark.parametrize("source", ["scanner map", "DWI"])
def test_phantom_lesion_adc_and_class_recovered(phantom, source):
    folder, truth = phantom
    files = truth["files"]
    signals = {key: folder / files[key] for key in ("t1", "t2", "fs", "ct")}  # the signs need them
    app = mrml.new_scene()
    if source == "scanner map":
        study = load_study(app, StudyFiles(seg=folder / files["seg"], adc=folder / files["adc"], **signals))
    else:
        dwi = [folder / files[key] for key in sorted(k for k in files if k.startswith("dwi_b"))]
        study = load_study(app, StudyFiles(seg=folder / files["seg"], dwi=dwi, bvalues=truth["bvalues"], **signals))
    result = analyze(app.scene, study, Options(), app=app)
    rows = rows_by_name(result)
    assert set(rows) == set(truth["segments"])
    if source == "scanner map":
        assert "10^-6" in result.adc_units
        independent = independent_phantom_means(folder, truth)
    else:
        assert result.bvalues_used == truth["bvalues"]
    for name, segment in truth["segments"].items():
        row = rows[name]
        assert row["role"] == segment["role"], name
        if segment["adc_mean"] is not None:
            assert row["adc_mean"] == pytest.approx(segment["adc_mean"], rel=0.05, abs=0.03), name
        if segment["role"] == "lesion" and segment["adc_class"] is not None:
            assert row["adc_class"] == segment["adc_class"], name
        if source == "scanner map":
            assert row["n_voxels_adc"] == independent[name][0], name
            if independent[name][1] is not None and not segment.get("partial_volume"):
                assert row["adc_mean"] == pytest.approx(independent[name][1], rel=1e-6), name


def test_label_names_keep_their_spaces_as_slicer_reads_them(tmp_path):
    """A colour table written with spaces keeps the whole name; one written as Slicer writes it
    (underscores) reads as Slicer's own reader gives it: underscores become spaces."""
    table = tmp_path / "names.ctbl"
    table.write_text("# value name r g b a\n1 L3 normal 0 255 0 255\n2 L2/L3_disc 0 0 255 255\n7 lesion 1 2 3 255\n",
                     encoding="utf-8")
    assert mrml.read_label_names(table) == {1: "L3 normal", 2: "L2/L3 disc", 7: "lesion"}
