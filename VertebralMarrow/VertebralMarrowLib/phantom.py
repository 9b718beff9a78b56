"""The embedded synthetic spine study: T12 to L5 with a lesion of every entity of the clinical
reference, imaged as a real exam is, each sequence on its own grid.

Anatomy is analytic (elliptic-cylinder vertebral bodies and discs, a CSF canal, paraspinal
muscle, spherical lesions, a band-like fracture oedema), so every sequence samples the same
truth at its own voxel centres; the DWI near a small focus averages its sub-voxel positions
(partial volume), as a scanner's voxel does. Lesion ADCs follow the literature (LESION_ADC, each
with its source), jittered by noise only; signal patterns follow the entity table of the
clinical reference. Besides the eight entities it holds the cases a radiologist reads by a sign
first: a bone island (CT), focal fat (T1), a necrotic metastasis (heterogeneous ADC) and a
5-mm focus that covers no voxel centre of the 5-mm DWI grid. Deterministic for a seed.

Files written (RAS grids, NRRD): t1.nrrd, t2.nrrd (sagittal, anisotropic), stir.nrrd,
dwi_b0000.nrrd ... dwi_b0800.nrrd (sagittal-oblique, coarse, Rician noise), adc_scanner.nrrd
(int16, 10^-6 mm^2/s, as a scanner stores it), ct.nrrd (axial, HU), rois.seg.nrrd (segments
drawn on the T2 grid, roles as segment tags) and ground_truth.json.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from . import DISCLAIMER, __version__
from .core.adc import fit_adc_volume
from .core.criteria import load_criteria
from .mrml import new_scene, segmentation_from_labelmap, set_segment_role, volume_from_array, write_node

BVALUES = (0.0, 50.0, 400.0, 800.0)
LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5")
BODY_HALF_HEIGHT_MM = 12.0
DISC_HALF_HEIGHT_MM = 4.0
LEVEL_PITCH_MM = 32.0
BODY_SEMI_AXES_MM = (20.0, 15.0)  # left-right, anterior-posterior

# Sequence intensities of normal (fatty) marrow; lesion values are ratios of these.
NORMAL_MARROW = {"t1": 400.0, "t2": 300.0, "fs": 60.0, "dwi_s0": 150.0}
# T1 / T2 / FS ratios to normal marrow that realise each entity's pattern in the entity table
# of the clinical reference (high > 1.2, low < 0.8).
ENTITY_RATIOS = {
    "hemangioma": (1.35, 1.6, 3.0),
    "benign_compression_fracture": (0.45, 1.5, 3.5),
    "metastasis_lytic": (0.4, 1.4, 3.0),
    "metastasis_blastic": (0.3, 0.35, 0.5),
    "pyogenic_spondylitis": (0.4, 1.6, 4.0),
    "tuberculous_spondylitis": (0.45, 1.5, 3.5),
    # focal myeloma: cell-dense, T1 low, bright on STIR (MY-RADS, Messiou 2019)
    "myeloma_leukemia": (0.5, 1.3, 2.5),
    # the seed case: T1 and T2 low inside fatty marrow, FS iso (both suppress)
    "red_marrow_reconversion": (0.55, 0.6, 1.0),
    # sclerosis: low on every sequence
    "bone_island": (0.3, 0.3, 0.4),
    # fat: brighter than (already fatty) marrow on T1 and T2, suppressed on FS
    "focal_fat": (1.5, 1.3, 0.4),
}
# b=0 signal of the fat-suppressed DWI: oedematous lesions are bright, sclerosis dark.
ENTITY_DWI_S0 = {
    "hemangioma": 450.0,
    "benign_compression_fracture": 600.0,
    "metastasis_lytic": 600.0,
    "metastasis_blastic": 200.0,
    "pyogenic_spondylitis": 650.0,
    "tuberculous_spondylitis": 600.0,
    "myeloma_leukemia": 550.0,
    "red_marrow_reconversion": 190.0,  # iso to slightly high against marrow's 150
    "bone_island": 3.0,  # little DWI signal: sclerosis
    "focal_fat": 200.0,  # phantom value: bright enough that its ADC is measured, not noise
}
# Mean ADC (10^-3 mm^2/s) of each phantom lesion and where it comes from. Values sit inside
# their published ranges and clear of the tier bounds (0.55, 1.01, 1.41) by more than the noise.
LESION_ADC = {
    "hemangioma": (1.085, "Winfield 2018: typical haemangioma median 1.085"),
    "benign_compression_fracture": (1.94, "Kaur 2020: benign collapse 1.94 +/- 0.18"),
    "metastasis_lytic": (0.69, "Kaur 2020 / Herneth 2002: metastases 0.69"),
    "metastasis_blastic": (0.69, "Kaur 2020: metastases 0.69 +/- 0.18"),
    "pyogenic_spondylitis": (1.55, "Kaur 2020: pyogenic 1.47 +/- 0.22 (phantom within one SD)"),
    "tuberculous_spondylitis": (1.25, "Palle 2010: 1.4 +/- 0.20; Kaur 2020: 1.42 +/- 0.31 (within one SD, in the overlap)"),
    "myeloma_leukemia": (1.08, "Koutoulidis 2017: focal myeloma 1.046 +/- 0.232"),
    "red_marrow_reconversion": (0.48, "above fatty marrow (Nonomura 2001), below 0.548 (Koutoulidis 2017)"),
    "bone_island": (0.5, "no usable DWI signal: the value is never measured"),
    "focal_fat": (0.35, "fat: as fatty marrow, Koutoulidis 2017 normal 0.360 +/- 0.110"),
}
NECROTIC_CORE_ADC = (2.2, "issue 10's necrotic metastasis: rim 0.72, core 2.2 (fluid)")
RIM_ADC = 0.72
# Phantom CT values where the entity is not lytic-soft-tissue or normal marrow.
LESION_CT_HU = {
    "metastasis_blastic": 654.0,  # Ulano 2016: untreated blastic metastases 654 +/- 176 HU
    "bone_island": 1190.0,        # Ulano 2016: bone islands 1190 +/- 239 HU
    "focal_fat": -40.0,           # phantom value: fat-rich marrow
}
MALIGNANT_ENTITIES = ("metastasis_lytic", "metastasis_blastic", "myeloma_leukemia")
# Phantom-only values (not from the reference): tissues outside the marrow.
OTHER_TISSUES = {
    # name: (t1, t2, fs, dwi_s0, adc 1e-3 mm2/s, ct HU)
    "air": (0.0, 0.0, 0.0, 0.0, 0.0, -1000.0),
    "soft_tissue": (250.0, 120.0, 80.0, 150.0, 1.2, 40.0),
    "muscle": (180.0, 60.0, 35.0, 120.0, 1.4, 50.0),
    "disc": (170.0, 450.0, 220.0, 500.0, 1.7, 80.0),
    "csf": (60.0, 800.0, 300.0, 900.0, 3.0, 10.0),
}
LYTIC_CT_HU = 40.0  # phantom value: soft tissue replacing trabecular bone


@dataclass
class Lesion:
    segment: str
    entity: str
    level: str
    centre_offset_mm: Tuple[float, float, float]
    radius_mm: float
    band: bool = False  # the fracture: an oedema band under the superior end plate
    core_radius_mm: float = 0.0  # a necrotic core of free water (NECROTIC_CORE_ADC)
    small: bool = False  # a focus below the DWI voxel: the ROI is the focus itself (no margin)


LESIONS = (
    Lesion("T12 lesion", "hemangioma", "T12", (8.0, 2.0, 0.0), 7.0),
    Lesion("T12 island", "myeloma_leukemia", "T12", (-9.0, 3.0, 0.0), 5.0),
    Lesion("L1 lesion", "benign_compression_fracture", "L1", (0.0, 0.0, 6.5), 0.0, band=True),
    Lesion("L2 lesion", "metastasis_lytic", "L2", (8.0, 2.0, 0.0), 7.0),
    Lesion("L2 island", "red_marrow_reconversion", "L2", (-9.0, 3.0, 0.0), 5.0),
    Lesion("L3 lesion", "metastasis_blastic", "L3", (8.0, 2.0, 3.0), 7.0),
    Lesion("L4 lesion", "pyogenic_spondylitis", "L4", (0.0, 3.0, -5.0), 6.0),
    Lesion("L5 lesion", "tuberculous_spondylitis", "L5", (6.0, 2.0, 5.0), 6.0),
    Lesion("L4 island", "bone_island", "L4", (-11.0, 3.0, 5.0), 5.0),
    Lesion("L5 island", "focal_fat", "L5", (-11.0, 3.0, -5.0), 5.0),
    Lesion("L1 necrotic", "metastasis_lytic", "L1", (0.0, 2.0, -5.0), 7.0, core_radius_mm=5.0),
    # centred halfway between two 5-mm DWI slice planes (x = -7.5 and -2.5): no DWI voxel centre inside
    Lesion("L2 focus", "metastasis_lytic", "L2", (-5.0, 3.0, -8.0), 2.4, small=True),
)
REFERENCE = ("L3 normal", "L3", (-9.0, 0.0, -2.0), 6.0)
DISC_ROI = ("L2/L3 disc", 10.0, 2.5)
MUSCLE_ROI = ("Paraspinal muscle", (25.0, -50.0, 16.0), 8.0)
ROI_MARGIN_MM = 1.0  # ROIs are drawn just inside each lesion, as a radiologist would


def level_centre_z(level: str) -> float:
    return (2.5 - LEVELS.index(level)) * LEVEL_PITCH_MM


@dataclass
class Grid:
    name: str
    shape_kji: Tuple[int, int, int]
    ijk_to_ras: np.ndarray


def _grid(name: str, spacing_ijk: Tuple[float, float, float], axes_ras: np.ndarray, centre_ras, extent_mm) -> Grid:
    """A grid whose column/row/slice axes are the columns of `axes_ras`, centred on `centre_ras`."""
    spacing = np.asarray(spacing_ijk, float)
    size_ijk = np.maximum(1, np.round(np.asarray(extent_mm, float) / spacing)).astype(int)
    matrix = np.eye(4)
    matrix[:3, :3] = axes_ras @ np.diag(spacing)
    matrix[:3, 3] = np.asarray(centre_ras, float) - matrix[:3, :3] @ ((size_ijk - 1) / 2.0)
    return Grid(name, (int(size_ijk[2]), int(size_ijk[1]), int(size_ijk[0])), matrix)


def _rotation_about_r(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


# Sagittal: columns run anterior->posterior? Slicer shows sagittal with A to the left; here
# columns follow -A (posterior), rows -S (inferior), slices +R, as scanners commonly store them.
SAGITTAL_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
AXIAL_AXES = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # LPS-ordered, as CT stores


def exam_grids() -> Dict[str, Grid]:
    centre = (0.0, -10.0, 0.0)
    extent_sag = (130.0, 215.0, 64.0)  # A-P, S-I, L-R (mm) along columns, rows, slices
    return {
        "t1": _grid("t1", (0.8, 0.8, 4.0), SAGITTAL_AXES, centre, extent_sag),
        "t2": _grid("t2", (0.7, 0.7, 3.5), SAGITTAL_AXES, (0.3, -9.6, 0.4), extent_sag),
        "fs": _grid("fs", (1.0, 1.0, 4.0), SAGITTAL_AXES, (-0.4, -10.3, -0.2), extent_sag),
        "dwi": _grid("dwi", (2.0, 2.0, 5.0), _rotation_about_r(12.0) @ SAGITTAL_AXES, (0.0, -10.0, 0.0), (130.0, 215.0, 60.0)),
        "ct": _grid("ct", (0.8, 0.8, 1.5), AXIAL_AXES, centre, (90.0, 130.0, 210.0)),
    }


def voxel_centres_ras(grid: Grid) -> np.ndarray:
    """RAS of every voxel centre, (3, n) in (k, j, i) raveled order."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape_kji], indexing="ij")
    ijk = np.vstack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    return (grid.ijk_to_ras @ ijk)[:3]


class Anatomy:
    """Tissue codes at RAS points. Codes: names in `self.tissues` (index = code)."""

    def __init__(self, lesion_adc: Dict[str, float]):
        self.lesion_adc = lesion_adc
        self.tissues = (["air", "soft_tissue", "muscle", "csf", "disc", "marrow"] + [lesion.segment for lesion in LESIONS]
                        + [lesion.segment + " core" for lesion in LESIONS if lesion.core_radius_mm])

    def code(self, name: str) -> int:
        return self.tissues.index(name)

    def tissue_at(self, ras: np.ndarray, shrink_mm: float = 0.0) -> np.ndarray:
        """Tissue code of each point; lesions shrunk by `shrink_mm` give the drawn ROIs."""
        x, y, z = ras
        codes = np.zeros(x.shape, np.int16)
        codes[((x / 60.0) ** 2 + ((y + 10.0) / 75.0) ** 2) <= 1.0] = self.code("soft_tissue")
        for side in (-1.0, 1.0):
            codes[((x - 25.0 * side) / 15.0) ** 2 + ((y + 50.0) / 12.0) ** 2 <= 1.0] = self.code("muscle")
        codes[(x / 8.0) ** 2 + ((y + 25.0) / 8.0) ** 2 <= 1.0] = self.code("csf")
        in_cross_section = (x / BODY_SEMI_AXES_MM[0]) ** 2 + (y / BODY_SEMI_AXES_MM[1]) ** 2 <= 1.0
        for index, level in enumerate(LEVELS):
            zc = level_centre_z(level)
            codes[in_cross_section & (np.abs(z - zc) <= BODY_HALF_HEIGHT_MM)] = self.code("marrow")
            if index < len(LEVELS) - 1:
                disc_z = zc - LEVEL_PITCH_MM / 2.0
                codes[in_cross_section & (np.abs(z - disc_z) <= DISC_HALF_HEIGHT_MM)] = self.code("disc")
        for lesion in LESIONS:
            codes[self.in_lesion(lesion, ras, shrink_mm)] = self.code(lesion.segment)
            if lesion.core_radius_mm and not shrink_mm:
                core = dataclasses.replace(lesion, radius_mm=lesion.core_radius_mm)
                codes[self.in_lesion(core, ras)] = self.code(lesion.segment + " core")
        return codes

    @staticmethod
    def in_lesion(lesion: Lesion, ras: np.ndarray, shrink_mm: float = 0.0) -> np.ndarray:
        x, y, z = ras
        cx, cy, cz = lesion.centre_offset_mm
        cz += level_centre_z(lesion.level)
        if lesion.band:
            a, b = BODY_SEMI_AXES_MM[0] - 2.0 - shrink_mm, BODY_SEMI_AXES_MM[1] - 2.0 - shrink_mm
            return ((x / a) ** 2 + (y / b) ** 2 <= 1.0) & (np.abs(z - cz) <= 4.5 - shrink_mm)
        r = lesion.radius_mm - shrink_mm
        return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r


def draw_lesion_adcs(criteria: dict, rng: np.random.Generator) -> Dict[str, float]:
    """One mean ADC per lesion: its literature value (LESION_ADC) with a jitter of at most 0.02,
    far below the distance to any tier bound. `criteria` is kept for callers' sake."""
    return {lesion.segment: float(LESION_ADC[lesion.entity][0] + 0.02 * np.clip(rng.standard_normal(), -1.0, 1.0))
            for lesion in LESIONS}


def tissue_properties(anatomy: Anatomy, criteria: dict, normal_adc: float) -> np.ndarray:
    """Per tissue code: t1, t2, fs, dwi_s0, adc (1e-3 mm^2/s), ct (HU)."""
    normal_ct = criteria["normal_marrow"]["ct_hu"]["mean"]
    table = np.zeros((len(anatomy.tissues), 6))
    for name, values in OTHER_TISSUES.items():
        table[anatomy.code(name)] = values
    table[anatomy.code("marrow")] = (NORMAL_MARROW["t1"], NORMAL_MARROW["t2"], NORMAL_MARROW["fs"], NORMAL_MARROW["dwi_s0"], normal_adc, normal_ct)
    for lesion in LESIONS:
        t1, t2, fs = ENTITY_RATIOS[lesion.entity]
        table[anatomy.code(lesion.segment)] = (
            t1 * NORMAL_MARROW["t1"], t2 * NORMAL_MARROW["t2"], fs * NORMAL_MARROW["fs"],
            ENTITY_DWI_S0[lesion.entity], anatomy.lesion_adc[lesion.segment], lesion_ct_hu(lesion, criteria),
        )
        if lesion.core_radius_mm:
            table[anatomy.code(lesion.segment)][4] = RIM_ADC
            # fluid: dark on T1, bright on T2 and FS, free diffusion
            table[anatomy.code(lesion.segment + " core")] = (
                0.3 * NORMAL_MARROW["t1"], 2.0 * NORMAL_MARROW["t2"], 5.0 * NORMAL_MARROW["fs"], 700.0,
                NECROTIC_CORE_ADC[0], LYTIC_CT_HU)
    return table


def lesion_ct_hu(lesion: Lesion, criteria: dict) -> float:
    if lesion.entity in LESION_CT_HU:
        return LESION_CT_HU[lesion.entity]
    return LYTIC_CT_HU if lesion.entity == "metastasis_lytic" else float(criteria["normal_marrow"]["ct_hu"]["mean"])


def roi_labels(grid: Grid, anatomy: Anatomy) -> Tuple[np.ndarray, List[str], List[str]]:
    """The drawn ROIs on `grid`: lesions (just inside), the reference, a disc and a muscle ROI."""
    ras = voxel_centres_ras(grid)
    x, y, z = ras
    names = [lesion.segment for lesion in LESIONS]
    labels = np.zeros(ras.shape[1], np.uint8)
    for value, lesion in enumerate(LESIONS, 1):
        labels[Anatomy.in_lesion(lesion, ras, 0.0 if lesion.small else ROI_MARGIN_MM)] = value
    name, level, (cx, cy, cz), r = REFERENCE
    names.append(name)
    labels[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz - level_centre_z(level)) ** 2 <= r * r] = len(names)
    name, r, half = DISC_ROI
    names.append(name)
    disc_z = level_centre_z("L2") - LEVEL_PITCH_MM / 2.0
    labels[(x ** 2 + y ** 2 <= r * r) & (np.abs(z - disc_z) <= half)] = len(names)
    name, (cx, cy, cz), r = MUSCLE_ROI
    names.append(name)
    labels[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r] = len(names)
    roles = ["lesion"] * len(LESIONS) + ["reference", "disc", "muscle"]
    return labels.reshape(grid.shape_kji), names, roles


def make_phantom(out_dir, seed: int = 0, progress=None) -> dict:
    """Write the synthetic study into `out_dir`; return its ground truth (also ground_truth.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    criteria = load_criteria()
    rng = np.random.default_rng(seed)
    lesion_adc = draw_lesion_adcs(criteria, rng)
    normal = criteria["normal_marrow"]["adc"]
    normal_adc = float(normal["mean"])
    anatomy = Anatomy(lesion_adc)
    properties = tissue_properties(anatomy, criteria, normal_adc)
    grids = exam_grids()
    app = new_scene()
    scene = app.scene

    def report(fraction, text):
        if progress:
            progress(fraction, text)

    def tissue(grid):
        return anatomy.tissue_at(voxel_centres_ras(grid)).reshape(grid.shape_kji)

    files = {}
    noise_sd = {"t1": 8.0, "t2": 6.0, "fs": 3.0}
    for column, key in enumerate(("t1", "t2", "fs")):
        report(0.1 + 0.15 * column, f"phantom: {key.upper()}")
        grid = grids[key]
        image = properties[tissue(grid), column]
        image = np.abs(image + rng.normal(0.0, noise_sd[key], image.shape)).astype(np.float32)
        files[key] = _write_volume(scene, image, grid, out / ("stir.nrrd" if key == "fs" else f"{key}.nrrd"))

    report(0.55, "phantom: DWI")
    grid = grids["dwi"]
    codes = tissue(grid)
    s0 = properties[codes, 3]
    adc_true = properties[codes, 4] + np.where(codes >= anatomy.code("marrow"), rng.normal(0.0, 0.03, codes.shape), 0.0)
    sigma = 5.0
    dwi = []
    near_focus, sub_codes = _partial_volume_samples(grid, anatomy)
    for b in BVALUES:
        clean = s0 * np.exp(-b * np.maximum(adc_true, 0.0) / 1000.0)
        # voxels near a small focus hold the mean signal of their sub-voxel positions
        clean.reshape(-1)[near_focus] = (properties[sub_codes, 3] * np.exp(-b * properties[sub_codes, 4] / 1000.0)).mean(axis=1)
        noisy = np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))
        dwi.append(noisy.astype(np.float32))
        files[f"dwi_b{int(b):04d}"] = _write_volume(scene, dwi[-1], grid, out / f"dwi_b{int(b):04d}.nrrd")
    # The scanner's own map: an ordinary least-squares fit over all b-values, stored as
    # integers in 10^-6 mm^2/s with the background set to 0, as scanners store it.
    scanner = fit_adc_volume(dwi, BVALUES, method="ols")
    # Below four noise SDs at b = 0 the scanner stores no value (0), as scanners threshold noise.
    scanner = np.where(np.isfinite(scanner) & (dwi[0] >= 4.0 * sigma), np.clip(scanner, 0.0, 4.0) * 1000.0, 0.0)
    files["adc"] = _write_volume(scene, np.round(scanner).astype(np.int16), grid, out / "adc_scanner.nrrd")

    report(0.75, "phantom: CT")
    grid = grids["ct"]
    ct = properties[tissue(grid), 5] + rng.normal(0.0, 15.0, grid.shape_kji)
    files["ct"] = _write_volume(scene, np.round(ct).astype(np.int16), grid, out / "ct.nrrd")

    report(0.9, "phantom: ROIs")
    grid = grids["t2"]
    labels, names, roles = roi_labels(grid, anatomy)
    labelmap = volume_from_array(scene, labels, grid.ijk_to_ras, "rois", labelmap=True)
    segmentation = segmentation_from_labelmap(scene, app, labelmap, dict(enumerate(names, 1)), "rois")
    for index, role in enumerate(roles):
        set_segment_role(segmentation, segmentation.GetSegmentation().GetNthSegmentID(index), role)
    files["seg"] = out / "rois.seg.nrrd"
    write_node(scene, segmentation, files["seg"])

    truth = _ground_truth(criteria, lesion_adc, normal_adc, seed, {k: Path(v).name for k, v in files.items()}, labels)
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2), encoding="utf-8")
    report(1.0, "phantom: done")
    return truth


def _partial_volume_samples(grid: Grid, anatomy: Anatomy, per_axis: int = 4):
    """Flat indices of the voxels within reach of a small focus, and the tissue codes of each
    one's per_axis^3 sub-voxel positions (a regular grid inside the voxel)."""
    ras = voxel_centres_ras(grid)
    reach = np.linalg.norm(grid.ijk_to_ras[:3, :3], axis=0).sum() / 2.0
    near = np.zeros(ras.shape[1], bool)
    for lesion in LESIONS:
        if lesion.small:
            near |= Anatomy.in_lesion(dataclasses.replace(lesion, radius_mm=lesion.radius_mm + reach), ras)
    flat = np.flatnonzero(near)
    offsets = (np.arange(per_axis) + 0.5) / per_axis - 0.5
    di, dj, dk = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    steps = grid.ijk_to_ras[:3, :3] @ np.vstack([di.ravel(), dj.ravel(), dk.ravel()])  # (3, m)
    points = ras[:, flat][:, :, None] + steps[:, None, :]  # (3, n, m)
    codes = anatomy.tissue_at(points.reshape(3, -1)).reshape(flat.size, -1)
    return flat, codes


def _write_volume(scene, array: np.ndarray, grid: Grid, path: Path) -> Path:
    node = volume_from_array(scene, array, grid.ijk_to_ras, path.stem)
    write_node(scene, node, path)
    return path


def _design_tier(adc: float, criteria: dict) -> str:
    """The tier a lesion was designed in, from the criteria file's default bounds."""
    marrow_max = criteria["adc_tiers"]["marrow_max"]["value"]
    cutoff, band = criteria["adc_cutoff"]["value"], criteria["indeterminate_band"]["value"]
    if adc <= marrow_max:
        return "marrow"
    if adc < cutoff - band:
        return "malignant"
    return "indeterminate" if adc <= cutoff + band else "benign"


def _expected_reading(lesion: Lesion, adc: float, criteria: dict) -> dict:
    """What the lesion was built to show, and the sign a radiologist reads it by."""
    tier = _design_tier(adc, criteria)
    if ENTITY_RATIOS[lesion.entity][0] >= criteria["overriding_signs"]["fat_t1_ratio_min"]["value"]:
        return {"deciding_sign": "fat", "adc_class": "marrow" if tier == "marrow" else "benign"}
    if lesion.entity == "bone_island":
        return {"deciding_sign": "density", "adc_class": "benign"}
    if lesion.entity == "metastasis_blastic":
        return {"deciding_sign": "density", "adc_class": "malignant" if tier == "malignant" else "indeterminate"}
    if lesion.core_radius_mm:
        return {"deciding_sign": "heterogeneity", "adc_class": "indeterminate"}
    if lesion.small:
        return {"deciding_sign": "adc", "adc_class": None, "partial_volume": True}
    return {"deciding_sign": "adc", "adc_class": tier}


def _necrotic_mean(lesion: Lesion, roi_on_t2: np.ndarray) -> float:
    """Mean ADC at the DWI voxel centres that the drawn ROI (a mask on the T2 grid, taken at
    the nearest T2 voxel) covers: rim and core as sampled there."""
    grids = exam_grids()
    ras = voxel_centres_ras(grids["dwi"])
    ijk = np.rint(np.linalg.inv(grids["t2"].ijk_to_ras) @ np.vstack([ras, np.ones(ras.shape[1])]))[:3].astype(int)
    shape_ijk = np.array(grids["t2"].shape_kji[::-1])[:, None]
    valid = np.all((ijk >= 0) & (ijk < shape_ijk), axis=0)
    inside = np.zeros(ras.shape[1], bool)
    inside[valid] = roi_on_t2[ijk[2, valid], ijk[1, valid], ijk[0, valid]]
    core = Anatomy.in_lesion(dataclasses.replace(lesion, radius_mm=lesion.core_radius_mm), ras) & inside
    return float((core.sum() * NECROTIC_CORE_ADC[0] + (inside.sum() - core.sum()) * RIM_ADC) / inside.sum())


def _ground_truth(criteria: dict, lesion_adc: Dict[str, float], normal_adc: float, seed: int, files: Dict[str, str],
                  roi_labels_t2: np.ndarray) -> dict:
    cutoff = criteria["adc_cutoff"]["value"]
    segments = {}
    for value, lesion in enumerate(LESIONS, 1):
        t1, t2, fs = ENTITY_RATIOS[lesion.entity]
        adc = lesion_adc[lesion.segment]
        if lesion.core_radius_mm:
            adc = _necrotic_mean(lesion, roi_labels_t2 == value)
        segments[lesion.segment] = {
            "role": "lesion",
            "entity": lesion.entity,
            "malignant": lesion.entity in MALIGNANT_ENTITIES,
            "adc_mean": None if lesion.entity == "bone_island" or lesion.small else round(adc, 4),
            "adc_source": LESION_ADC[lesion.entity][1],
            "t1_ratio": t1, "t2_ratio": t2, "fs_ratio": fs,
            "ct_mean_hu": lesion_ct_hu(lesion, criteria),
            **_expected_reading(lesion, adc, criteria),
        }
        if lesion.core_radius_mm:
            segments[lesion.segment].update(adc_rim=RIM_ADC, adc_core=NECROTIC_CORE_ADC[0], adc_core_source=NECROTIC_CORE_ADC[1])
        if lesion.small:
            segments[lesion.segment]["adc_focus"] = round(lesion_adc[lesion.segment], 4)
    segments[REFERENCE[0]] = {"role": "reference", "adc_mean": normal_adc, "adc_class": "reference",
                              "t1_ratio": 1.0, "t2_ratio": 1.0, "fs_ratio": 1.0,
                              "ct_mean_hu": criteria["normal_marrow"]["ct_hu"]["mean"]}
    segments[DISC_ROI[0]] = {"role": "disc", "adc_mean": OTHER_TISSUES["disc"][4]}
    segments[MUSCLE_ROI[0]] = {"role": "muscle", "adc_mean": OTHER_TISSUES["muscle"][4]}
    return {
        "about": "VertebralMarrow synthetic spine study (not patient data). " + DISCLAIMER,
        "version": __version__,
        "seed": seed,
        "bvalues": list(BVALUES),
        "adc_units_scanner_map": "1e-6",
        "cutoff": cutoff,
        "tiers": {"marrow_max": criteria["adc_tiers"]["marrow_max"]["value"],
                  "indeterminate_band": criteria["indeterminate_band"]["value"]},
        "files": files,
        "segments": segments,
    }
