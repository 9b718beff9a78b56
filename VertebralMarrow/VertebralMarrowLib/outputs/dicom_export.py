"""DICOM out (highdicom): the ROIs as a DICOM SEG, the measurements as a TID 1500 Measurement
Report (Comprehensive 3D SR) and the ADC map measured (fitted, with its b-values, or the
scanner's map in the same units) as a Parametric Map.

All three are on the grid of the series the ADC was measured on (the DWI's b=0 images when the
ADC was fitted, else the scanner's ADC map), reference that series, copy the patient and study
from it, and get new UIDs. ADC is written in um2/s (10^-6 mm^2/s, UCUM `um2/s`) with DCM 113041
"Apparent Diffusion Coefficient"; the class and its criterion are qualitative evaluations in a
private coding scheme (99VMARROW), since DICOM has no codes for them.

highdicom is bundled with Slicer 5.12; it is imported inside `write_dicom_outputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import pydicom

from .. import __version__
from ..errors import InputError

SCHEME = "99VMARROW"  # private coding scheme ("99" prefix: local, as PS3.16 allows)
MANUFACTURER = "VertebralMarrow"
SEG_SERIES, SR_SERIES, PM_SERIES = 9901, 9902, 9903
UM2_PER_S_PER_1E3 = 1000.0  # 10^-3 mm^2/s -> um2/s


def write_dicom_outputs(result, reference_files: List[Path], out_dir, bvalues: Optional[list] = None,
                        method: Optional[str] = None) -> dict:
    """Write seg.dcm, sr.dcm and adc_pm.dcm into out_dir.

    reference_files: the DICOM files of the series the ADC grid comes from (for a DWI series
    the b=0 images are used). bvalues and method: those of the fit, None for a scanner map.
    Returns {name: path}.
    """
    try:
        import highdicom as hd
    except ImportError:
        raise InputError("DICOM export needs highdicom (bundled with Slicer 5.12; pip install highdicom)") from None
    from ..mrml import ijk_to_ras_of

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources, frames = _reference_frames(reference_files, ijk_to_ras_of(result.adc_node), result.adc_map.shape)
    masks, described = _segment_masks(result, frames)
    segmentation = _segmentation(hd, sources, masks, described)
    segmentation.save_as(out / "seg.dcm")
    written = {"seg": out / "seg.dcm"}
    report = _report(hd, result, sources, segmentation, described)
    report.save_as(out / "sr.dcm")
    written["sr"] = out / "sr.dcm"
    parametric = _parametric_map(hd, result, sources, frames, bvalues, method)
    # General Series' Laterality is type 2C; the spine is not a paired structure: empty (unknown).
    parametric.Laterality = sources[0].get("Laterality", "")
    parametric.save_as(out / "adc_pm.dcm")
    written["adc_pm"] = out / "adc_pm.dcm"
    return written


# ---------------------------------------------------------------------- the reference grid


def _reference_frames(files: List[Path], ijk_to_ras: np.ndarray, shape_kji: tuple) -> tuple:
    """(datasets, k index of each) for the images of the ADC grid, one per slice, by position.

    A DWI series has an image per b-value (and direction) at each slice; the first image at the
    lowest b-value stands for its slice. Refuses a grid the images do not share (rotated or
    flipped in-plane, another size), since then the exported frames would not match.
    """
    datasets = [pydicom.dcmread(path) for path in files]
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    by_slice = {}
    for ds in datasets:
        key = (_bvalue_of(ds), int(ds.get("InstanceNumber") or 0))
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        ijk = ras_to_ijk @ np.r_[-position[0], -position[1], position[2], 1.0]
        k = int(round(ijk[2]))
        if abs(ijk[0]) > 0.01 or abs(ijk[1]) > 0.01 or abs(ijk[2] - k) > 0.01 or not 0 <= k < shape_kji[0]:
            raise InputError("the DICOM images do not lie on the ADC grid's slices; DICOM export needs the "
                             "ADC on the grid of its source series")
        if (ds.Rows, ds.Columns) != tuple(shape_kji[1:]):
            raise InputError(f"DICOM images of {ds.Rows} x {ds.Columns} do not match the ADC grid {shape_kji[1:]}")
        if k not in by_slice or key < by_slice[k][0]:
            by_slice[k] = (key, ds)
    row_direction = np.array([float(v) for v in datasets[0].ImageOrientationPatient[:3]]) * [-1, -1, 1]
    if not np.allclose(ijk_to_ras[:3, 0] / np.linalg.norm(ijk_to_ras[:3, 0]), row_direction, atol=1e-3):
        raise InputError("the ADC grid's columns do not run along the DICOM rows; DICOM export skipped")
    if len(by_slice) != shape_kji[0]:
        raise InputError(f"the DICOM series has {len(by_slice)} slice positions, the ADC grid {shape_kji[0]}")
    ordered = sorted(by_slice.items())
    return [item[1][1] for item in ordered], [item[0] for item in ordered]


def _bvalue_of(ds) -> float:
    from ..inputs.dicom_dwi import _bvalue

    value = _bvalue(ds, None)  # any vendor's tag, as the DWI reader reads it
    return value if value is not None else 0.0


# ---------------------------------------------------------------------- SEG


def _segment_masks(result, frames: list) -> tuple:
    """(masks (frames, rows, cols, segments) bool, [segment detail dicts]) for measured segments."""
    rois = result.rois_on_adc
    details = {detail["id"]: detail for detail in result.segments}
    rows = {row["segment"]: row for row in result.rows}
    masks, described = [], []
    for layer, ids in enumerate(rois.ids_per_layer):
        for index, sid in enumerate(ids):
            mask = rois.labels[layer][frames] == index + 1
            if not mask.any() or sid not in details:
                continue
            detail = details[sid]
            masks.append(mask)
            described.append(dict(detail, row=rows.get(detail["name"], {}), number=len(described) + 1))
    if not masks:
        raise InputError("no segment covers any voxel of the ADC grid; nothing to export as DICOM SEG")
    return np.stack(masks, axis=-1), described


def _new_instance(hd, series_number: int) -> dict:
    """The identity every object written here gets: a new series and instance, ours as maker."""
    return dict(series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer=MANUFACTURER)


def _segmentation(hd, sources, masks, described):
    from pydicom.sr.codedict import codes

    descriptions = []
    for item in described:
        lesion = item["role"] == "lesion"
        category = codes.SCT.MorphologicallyAbnormalStructure if lesion else codes.SCT.Tissue
        kind = codes.SCT.Lesion if lesion else {"muscle": codes.SCT.SkeletalMuscle}.get(item["role"], codes.SCT.BoneMarrow)
        if item["role"] == "disc":
            kind = hd.sr.CodedConcept("244615001", "SCT", "Intervertebral disc")
        adc_class = item["row"].get("adc_class", "n/a")
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=item["number"],
            segment_label=item["name"][:64],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=hd.UID(),
            tracking_id=(f"role {item['role']}" + (f"; ADC class {adc_class}" if lesion else ""))[:64],
        ))
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **_new_instance(hd, SEG_SERIES),
        manufacturer_model_name="VertebralMarrow",
        software_versions=__version__,
        device_serial_number="0",
        content_label="ROIS",
        content_description="VertebralMarrow ROIs",
        series_description="VertebralMarrow ROIs",
    )


# ---------------------------------------------------------------------- SR (TID 1500)


def _code(hd, value: str, meaning: str):
    return hd.sr.CodedConcept(value, SCHEME, meaning[:64])


def _report(hd, result, sources, segmentation, described):
    from pydicom.sr.codedict import codes

    adc = hd.sr.CodedConcept("113041", "DCM", "Apparent Diffusion Coefficient")
    um2 = hd.sr.CodedConcept("um2/s", "UCUM", "um2/s")
    ratio = hd.sr.CodedConcept("1", "UCUM", "no units")
    hu = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
    ml = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    percentile = {
        "adc_p10": hd.sr.CodedConcept("371890005", "SCT", "10th Percentile Value of population"),
        "adc_p90": hd.sr.CodedConcept("371887004", "SCT", "90th Percentile Value of population"),
    }
    derivations = {"adc_mean": codes.SCT.Mean, "adc_median": codes.SCT.Median, "adc_sd": codes.SCT.StandardDeviation,
                   **percentile}
    cutoff = result.options.adc_cutoff
    series = sources[0].SeriesInstanceUID
    groups = []
    for item in described:
        row = item["row"]
        measurements = []
        for column, derivation in derivations.items():
            if row.get(column) is not None:
                measurements.append(hd.sr.Measurement(name=adc, value=float(row[column]) * UM2_PER_S_PER_1E3,
                                                      unit=um2, derivation=derivation))
        if row.get("volume_ml") is not None:
            measurements.append(hd.sr.Measurement(name=codes.SCT.Volume, value=float(row["volume_ml"]), unit=ml))
        for key, label in (("t1_ratio", "T1 signal ratio to normal marrow"), ("t2_ratio", "T2 signal ratio to normal marrow"),
                           ("fs_ratio", "FS-T2/STIR signal ratio to normal marrow")):
            if row.get(key) is not None:
                measurements.append(hd.sr.Measurement(name=_code(hd, key.upper(), label), value=float(row[key]), unit=ratio))
        if row.get("ct_mean_hu") is not None:
            measurements.append(hd.sr.Measurement(name=hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient"),
                                                  value=float(row["ct_mean_hu"]), unit=hu, derivation=codes.SCT.Mean))
        evaluations = []
        if item["role"] == "lesion" and row.get("adc_class"):
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_code(hd, "ADC_CLASS", "ADC class"),
                value=_code(hd, f"CLASS_{row['adc_class'].upper()}", row["adc_class"])))
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_code(hd, "CRITERION", "Criterion"),
                value=_code(hd, "ADC_CUTOFF", f"malignant range: ADC <= {cutoff:g} x10-3 mm2/s (Kaur 2020)")))
            top = (row.get("differential") or "").split(";")[0]
            if top:
                evaluations.append(hd.sr.QualitativeEvaluation(
                    name=_code(hd, "DIFFERENTIAL", "Most likely entity"), value=_code(hd, top.upper()[:16], top)))
        finding = codes.SCT.Lesion if item["role"] == "lesion" else codes.SCT.BoneMarrow
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=item["name"][:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=item["number"], source_series=hd.sr.SourceSeriesForSegmentation(series)),
            finding_type=finding,
            measurements=measurements,
            qualitative_evaluations=evaluations or None,
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="VertebralMarrow", manufacturer_name=MANUFACTURER, model_name=__version__))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("113091", "DCM", "Imaging Procedure"),
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(sources) + [segmentation],
        content=content[0],
        **_new_instance(hd, SR_SERIES),
        series_description="VertebralMarrow measurements (decision support only)",
    )


# ---------------------------------------------------------------------- Parametric Map


def _parametric_map(hd, result, sources, frames, bvalues, method):
    values = np.nan_to_num(result.adc_map[frames].astype(np.float32), nan=0.0) * np.float32(UM2_PER_S_PER_1E3)
    if bvalues:
        used = ", ".join(f"{b:g}" for b in bvalues)
        explanation = f"ADC, b {used} s/mm2"
        description = f"ADC fit ({method or 'iwls'}) from b = {used} s/mm2"
    else:
        explanation = description = "ADC, the scanner's map"
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ADC",
        lut_explanation=explanation[:64],
        unit=hd.sr.CodedConcept("um2/s", "UCUM", "um2/s"),
        value_range=(float(values.min()), float(values.max())),
        slope=1.0,
        intercept=0.0,
        quantity_definition=hd.sr.CodedConcept("113041", "DCM", "Apparent Diffusion Coefficient"),
    )
    return hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=values,
        **_new_instance(hd, PM_SERIES),
        manufacturer_model_name="VertebralMarrow",
        software_versions=__version__,
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        window_center=1000.0,
        window_width=2000.0,
        content_label="ADC",
        content_description=description[:64],
        series_description="VertebralMarrow ADC (um2/s)",
    )
