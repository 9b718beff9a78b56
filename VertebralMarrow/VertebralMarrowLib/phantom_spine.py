"""The synthetic study's spine: vertebra labels in both schemes, and a follow-up time point.

Vertebra labels are drawn from the phantom's analytic anatomy (phantom.py): each vertebra is its
body plus a posterior arch (pedicles and lamina around the canal, a spinous process), as
TotalSegmentator and TotalSpineSeg label them, written

- in TotalSegmentator's `total` numbering on the CT grid, with the spinal cord (label 79);
- in TotalSpineSeg's numbering on the T2 grid, with the canal (2), the cord (1) and the discs.

The follow-up time point is the same patient with one lesion responding, one progressing, the
others stable and one new lesion: a scanner ADC map on the DWI grid and the ROIs on the T2
grid. The ground truth is derived from the anatomy and the published response thresholds, not
from the analysis: each vertebra's expected marrow ADC is the mean of the true tissue ADC over
the body shrunk by the erosion, sampled on a fine grid of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from . import DISCLAIMER
from .core.adc import fit_adc_volume
from .core.criteria import load_criteria
from .mrml import new_scene, segmentation_from_labelmap, set_segment_role, volume_from_array, write_node
from .phantom import (
    BVALUES, ENTITY_DWI_S0, BODY_HALF_HEIGHT_MM, BODY_SEMI_AXES_MM, DISC_HALF_HEIGHT_MM, LESIONS, LEVEL_PITCH_MM, LEVELS, ROI_MARGIN_MM,
    Anatomy, Lesion, draw_lesion_adcs, exam_grids, level_centre_z, roi_labels, tissue_properties, voxel_centres_ras,
)

CANAL_CENTRE_Y_MM, CANAL_RADIUS_MM, CORD_RADIUS_MM = -25.0, 8.0, 4.0
ARCH_OUTER_RADIUS_MM = 13.0
ARCH_HALF_HEIGHT_MM = 10.0

TOTALSEGMENTATOR = {"T12": 32, "L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27, "cord": 79}
TOTALSPINESEG = {"T12": 32, "L1": 41, "L2": 42, "L3": 43, "L4": 44, "L5": 45, "cord": 1, "canal": 2,
                 "T12-L1": 91, "L1-L2": 92, "L2-L3": 93, "L3-L4": 94, "L4-L5": 95}

# Follow-up: baseline ADC x factor (phantom-only choices, each on its side of the thresholds
# of Padhani 2017 Table 3 and the 14.8 % reproducibility of Messiou 2011 by a wide margin).
FOLLOWUP_FACTORS = {"L2 lesion": 2.2, "T12 island": 0.70}
FOLLOWUP_RESPONSE = {"L2 lesion": "RAC1", "T12 island": "RAC4"}
NEW_LESION = Lesion("L1 new lesion", "metastasis_lytic", "L1", (-8.0, 2.0, -5.0), 5.5)


def vertebra_labels(ras: np.ndarray, numbers: Dict[str, int]) -> np.ndarray:
    """Label of every RAS point (3, n) in a scheme's `numbers` (levels, discs, cord, canal)."""
    x, y, z = ras
    labels = np.zeros(x.shape, np.int16)
    radius = np.hypot(x, y - CANAL_CENTRE_Y_MM)
    in_section = (x / BODY_SEMI_AXES_MM[0]) ** 2 + (y / BODY_SEMI_AXES_MM[1]) ** 2 <= 1.0
    if "canal" in numbers:
        labels[radius <= CANAL_RADIUS_MM] = numbers["canal"]
    labels[radius <= CORD_RADIUS_MM] = numbers["cord"]
    for index, level in enumerate(LEVELS):
        zc = level_centre_z(level)
        # Lamina: a half ring behind the front of the canal; pedicles: two bars joining it to the body.
        arch = (radius > CANAL_RADIUS_MM + 0.5) & (radius <= ARCH_OUTER_RADIUS_MM) & (y < CANAL_CENTRE_Y_MM + CANAL_RADIUS_MM)
        arch |= (np.abs(x) >= 7.0) & (np.abs(x) <= 11.0) & (y >= -19.0) & (y <= -12.0)
        spinous = (np.abs(x) <= 3.0) & (y <= CANAL_CENTRE_Y_MM - ARCH_OUTER_RADIUS_MM + 2.0) & (y >= -48.0)
        posterior = (arch | spinous) & (np.abs(z - zc) <= ARCH_HALF_HEIGHT_MM)
        labels[(in_section & (np.abs(z - zc) <= BODY_HALF_HEIGHT_MM)) | posterior] = numbers[level]
        disc = f"{level}-{LEVELS[index + 1]}" if index < len(LEVELS) - 1 else None
        if disc in numbers:
            labels[in_section & (np.abs(z - (zc - LEVEL_PITCH_MM / 2.0)) <= DISC_HALF_HEIGHT_MM)] = numbers[disc]
    return labels


def write_spine_labels(study_dir) -> Dict[str, Path]:
    """Vertebra labels of the phantom in both schemes, beside its study files."""
    out = Path(study_dir)
    grids = exam_grids()
    app = new_scene()
    files = {}
    for key, grid_name, numbers in (("totalsegmentator", "ct", TOTALSEGMENTATOR), ("totalspineseg", "t2", TOTALSPINESEG)):
        grid = grids[grid_name]
        labels = vertebra_labels(voxel_centres_ras(grid), numbers).reshape(grid.shape_kji)
        node = volume_from_array(app.scene, labels, grid.ijk_to_ras, f"vertebrae_{key}", labelmap=True)
        files[key] = out / f"vertebrae_{key}.nii.gz"
        write_node(app.scene, node, files[key])
    return files


def expected_marrow_adc(lesion_adc: Dict[str, float], normal_adc: float, erosion_mm: float,
                        extra: Optional[Lesion] = None, extra_adc: float = 0.0, step_mm: float = 0.5) -> Dict[str, float]:
    """Mean true ADC over each vertebral body shrunk by `erosion_mm`, on a fine grid of its own
    (every tissue's ADC as the phantom's tissue table gives it)."""
    anatomy = Anatomy(lesion_adc)
    adc_of_code = tissue_properties(anatomy, load_criteria(), normal_adc)[:, 4]
    a, b = BODY_SEMI_AXES_MM[0] - erosion_mm, BODY_SEMI_AXES_MM[1] - erosion_mm
    half = BODY_HALF_HEIGHT_MM - erosion_mm
    axis_x, axis_y = np.arange(-a, a + 1e-9, step_mm), np.arange(-b, b + 1e-9, step_mm)
    axis_z = np.arange(-half, half + 1e-9, step_mm)
    expected = {}
    for level in LEVELS:
        x, y, z = np.meshgrid(axis_x, axis_y, axis_z + level_centre_z(level), indexing="ij")
        inside = (x / a) ** 2 + (y / b) ** 2 <= 1.0
        ras = np.vstack([x[inside], y[inside], z[inside]])
        values = adc_of_code[anatomy.tissue_at(ras)]
        if extra is not None:
            values[Anatomy.in_lesion(extra, ras)] = extra_adc
        expected[level] = float(values.mean())
    return expected


def make_followup(out_dir, seed: int = 0, with_labels: bool = True) -> dict:
    """The follow-up time point of the phantom drawn with `seed` (the baseline's seed): scanner
    ADC map, ROIs, vertebra labels (unless `with_labels` is False: the anatomy is the
    baseline's) and ground truth (followup_truth.json) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    criteria = load_criteria()
    baseline_adc = draw_lesion_adcs(criteria, np.random.default_rng(seed))
    followup_adc = {name: adc * FOLLOWUP_FACTORS.get(name, 1.0) for name, adc in baseline_adc.items()}
    new_adc = float(criteria["entities"][NEW_LESION.entity]["adc"]["mean"])
    normal_adc = float(criteria["normal_marrow"]["adc"]["mean"])
    anatomy = Anatomy(followup_adc)
    properties = tissue_properties(anatomy, criteria, normal_adc)
    rng = np.random.default_rng(seed + 1000)
    app = new_scene()
    grids = exam_grids()

    # Measured as the baseline was (phantom.make_phantom): DWI with Rician noise, the scanner's
    # least-squares fit, stored as integers in 10^-6 mm^2/s; so a stable lesion reads the same.
    grid = grids["dwi"]
    ras = voxel_centres_ras(grid)
    codes = anatomy.tissue_at(ras).reshape(grid.shape_kji)
    in_new = Anatomy.in_lesion(NEW_LESION, ras).reshape(grid.shape_kji)
    s0 = np.where(in_new, ENTITY_DWI_S0[NEW_LESION.entity], properties[codes, 3])
    adc_true = np.where(in_new, new_adc, properties[codes, 4])
    adc_true = adc_true + np.where(codes >= anatomy.code("marrow"), rng.normal(0.0, 0.03, codes.shape), 0.0)
    sigma = 5.0
    dwi = [np.hypot(s0 * np.exp(-b * np.maximum(adc_true, 0.0) / 1000.0) + rng.normal(0.0, sigma, codes.shape),
                    rng.normal(0.0, sigma, codes.shape)).astype(np.float32) for b in BVALUES]
    fitted = fit_adc_volume(dwi, BVALUES, method="ols")
    scanner = np.where(np.isfinite(fitted) & (s0 > 0), np.round(np.clip(fitted, 0.0, 4.0) * 1000.0), 0).astype(np.int16)
    node = volume_from_array(app.scene, scanner, grid.ijk_to_ras, "adc_scanner")
    write_node(app.scene, node, out / "adc_scanner.nrrd")

    grid = grids["t2"]
    labels, names, roles = roi_labels(grid, anatomy)
    labels = labels.ravel()
    labels[Anatomy.in_lesion(NEW_LESION, voxel_centres_ras(grid), ROI_MARGIN_MM) & (labels == 0)] = len(names) + 1
    names, roles = names + [NEW_LESION.segment], roles + ["lesion"]
    labelmap = volume_from_array(app.scene, labels.reshape(grid.shape_kji), grid.ijk_to_ras, "rois", labelmap=True)
    segmentation = segmentation_from_labelmap(app.scene, app, labelmap, dict(enumerate(names, 1)), "rois")
    for index, role in enumerate(roles):
        set_segment_role(segmentation, segmentation.GetSegmentation().GetNthSegmentID(index), role)
    write_node(app.scene, segmentation, out / "rois.seg.nrrd")
    label_files = write_spine_labels(out) if with_labels else {}

    # Lesions the phantom's own truth leaves without an ADC (sclerosis without DWI signal, a
    # lesion too small for the DWI grid) get no category: None.
    responses = {lesion.segment: None if lesion.entity == "bone_island" or lesion.small
                 else FOLLOWUP_RESPONSE.get(lesion.segment, "RAC3") for lesion in LESIONS}
    responses[NEW_LESION.segment] = "RAC5"
    erosion = float(criteria["spine"]["erosion_mm"]["value"])
    truth = {
        "about": "VertebralMarrow synthetic follow-up time point (not patient data). " + DISCLAIMER,
        "seed": seed,
        "files": {"adc": "adc_scanner.nrrd", "seg": "rois.seg.nrrd", **{k: p.name for k, p in label_files.items()}},
        "lesion_adc_baseline": baseline_adc,
        "lesion_adc_followup": {**followup_adc, NEW_LESION.segment: new_adc},
        "response": responses,
        "new": [NEW_LESION.segment],
        "why": {
            "L2 lesion": "ADC x 2.2: from <= 1.4 to > 1.4 and +120 % (>= 40 %): RAC 1 (Padhani 2017 Table 3)",
            "T12 island": "ADC x 0.70: -30 %, beyond the 14.8 % reproducibility (Messiou 2011), below 1.4: RAC 4",
            NEW_LESION.segment: "new lesion with a metastasis's ADC (malignant range): RAC 5",
            "others": "ADC unchanged (only measurement noise): RAC 3",
        },
        "vertebra_adc_baseline": expected_marrow_adc(baseline_adc, normal_adc, erosion),
        "vertebra_adc_followup": expected_marrow_adc(followup_adc, normal_adc, erosion, NEW_LESION, new_adc),
        "erosion_mm": erosion,
    }
    (out / "followup_truth.json").write_text(json.dumps(truth, indent=2), encoding="utf-8")
    return truth
