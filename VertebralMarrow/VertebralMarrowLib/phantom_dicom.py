"""The synthetic study written as DICOM series, so that the DICOM path runs with no download.

`write_phantom_dicom(study_dir, out_dir, seed)` reads the phantom's volumes (written by
phantom.make_phantom) and writes one classic single-frame series per image: T1, T2 and STIR
(MR Image Storage with vendor-neutral, plausible sequence attributes), the DWI at every
b-value (one series, b-value in (0018,9087) DiffusionBValue), the scanner's ADC map as
scanners store it (ImageType DERIVED\\PRIMARY\\DIFFUSION\\ADC, integers in 10^-6 mm^2/s with a
real-world value mapping in um2/s) and CT (a study of its own, stored values + rescale
intercept -1024, signed). Geometry (origin, spacing, oblique directions) is the NRRD's exactly, in
DICOM's LPS patient coordinates. UIDs are derived from the seed, so a rerun gives the same
files. Synthetic: PatientName says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from . import __version__

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_DATE, STUDY_TIME = "20260101", "090000"

# Per series: (series number, description, sequence attributes) for the MR series.
MR_SERIES = {
    "t1": (2, "T1 TSE SAG", {"ScanningSequence": "SE", "SequenceVariant": "SK", "ScanOptions": "",
                             "RepetitionTime": 550.0, "EchoTime": 10.0, "EchoTrainLength": 3,
                             "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"]}),
    "t2": (3, "T2 TSE SAG", {"ScanningSequence": "SE", "SequenceVariant": "SK", "ScanOptions": "",
                             "RepetitionTime": 3500.0, "EchoTime": 100.0, "EchoTrainLength": 17,
                             "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"]}),
    "fs": (4, "STIR SAG", {"ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "MP"], "ScanOptions": "IR",
                           "RepetitionTime": 4000.0, "EchoTime": 60.0, "InversionTime": 150.0, "EchoTrainLength": 13,
                           "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"]}),
}
DWI_SERIES = (5, "DWI SAG b0 50 400 800")
ADC_SERIES = (6, "DWI SAG ADC")
CT_SERIES = (2, "CT SPINE BONE")


def write_phantom_dicom(study_dir, out_dir, seed: int, files: dict) -> dict:
    """Write the phantom's volumes (`files`: key -> file name in study_dir, as make_phantom
    returns them) as DICOM series under out_dir; return {key: series folder}."""
    import SimpleITK as sitk

    study_dir, out = Path(study_dir), Path(out_dir)
    mr_study = _identity(seed, "mr")
    ct_study = _identity(seed, "ct")
    written = {}
    for key, (number, description, attributes) in MR_SERIES.items():
        image = sitk.ReadImage(str(study_dir / files[key]))
        written[key] = _write_series(out / f"{number:02d}", image, mr_study, number, description, "MR",
                                     dict(attributes), seed)
    dwi_keys = sorted(key for key in files if key.startswith("dwi_b"))
    folder = out / f"{DWI_SERIES[0]:02d}"
    series_uid = generate_uid(entropy_srcs=[f"vm-phantom-{seed}-dwi-series"])
    for index, key in enumerate(dwi_keys):
        bvalue = float(int(key[len("dwi_b"):]))
        image = sitk.ReadImage(str(study_dir / files[key]))
        attributes = {"ScanningSequence": "EP", "SequenceVariant": ["SK", "SP"], "ScanOptions": ["FS"],
                      "RepetitionTime": 5000.0, "EchoTime": 70.0, "EchoTrainLength": 1, "DiffusionBValue": bvalue,
                      "DiffusionDirectionality": "ISOTROPIC" if bvalue > 0 else "NONE",
                      "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]}
        _write_series(folder, image, mr_study, DWI_SERIES[0], DWI_SERIES[1], "MR", attributes, seed,
                      series_uid=series_uid, first_instance=1 + index * image.GetSize()[2], acquisition=index + 1)
    written["dwi"] = folder
    image = sitk.ReadImage(str(study_dir / files["adc"]))
    attributes = {"ScanningSequence": "EP", "SequenceVariant": ["SK", "SP"], "ScanOptions": ["FS"],
                  "RepetitionTime": 5000.0, "EchoTime": 70.0, "EchoTrainLength": 1,
                  "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], "adc_units": True}
    written["adc"] = _write_series(out / f"{ADC_SERIES[0]:02d}", image, mr_study, ADC_SERIES[0], ADC_SERIES[1], "MR",
                                   attributes, seed)
    image = sitk.ReadImage(str(study_dir / files["ct"]))
    written["ct"] = _write_series(out / "ct" / f"{CT_SERIES[0]:02d}", image, ct_study, CT_SERIES[0], CT_SERIES[1], "CT",
                                  {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": 120.0}, seed)
    return written


def _identity(seed: int, study: str) -> dict:
    return {
        "PatientName": "PHANTOM^VERTEBRALMARROW",
        "PatientID": f"VMPHANTOM{seed}",
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyInstanceUID": generate_uid(entropy_srcs=[f"vm-phantom-{seed}-{study}-study"]),
        "StudyID": f"{study.upper()}{seed}",
        "AccessionNumber": f"VM{seed:04d}{study.upper()}",
        "StudyDate": STUDY_DATE,
        "StudyTime": STUDY_TIME,
        "ReferringPhysicianName": "",
        "StudyDescription": "SPINE" if study == "ct" else "MR SPINE",
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[f"vm-phantom-{seed}-{study}-frame"]),
    }


def _write_series(folder: Path, image, identity: dict, number: int, description: str, modality: str,
                  attributes: dict, seed: int, series_uid=None, first_instance: int = 1, acquisition: int = 1) -> Path:
    """One file per slice of the SimpleITK `image` (LPS geometry) in `folder`."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid(entropy_srcs=[f"vm-phantom-{seed}-{modality}-{number}-series"])
    pixels = sitk.GetArrayFromImage(image).astype(np.float64)  # (k, j, i)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    with_units = attributes.pop("adc_units", False)
    if modality == "CT":  # signed, so that air below -1024 HU keeps its value
        stored, intercept, signed = np.clip(np.round(pixels + 1024.0), -32768, 32767).astype(np.int16), -1024.0, 1
    else:
        stored, intercept, signed = np.clip(np.round(pixels), 0, 65535).astype(np.uint16), 0.0, 0
    for k in range(stored.shape[0]):
        ds = _slice_header(identity, modality, series_uid, number, description, attributes)
        instance = first_instance + k
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"{series_uid}-{instance}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = acquisition
        ds.ImagePositionPatient = [_ds(value) for value in origin + k * spacing[2] * direction[:, 2]]
        ds.ImageOrientationPatient = [_ds(value) for value in np.r_[direction[:, 0], direction[:, 1]]]
        ds.SliceLocation = _ds(float(np.dot(origin + k * spacing[2] * direction[:, 2], direction[:, 2])))
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (between rows), column spacing
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, signed
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), "1"
        if modality == "CT":
            ds.RescaleType = "HU"
        if with_units:
            ds.RealWorldValueMappingSequence = [_adc_value_mapping()]
        window = np.percentile(stored[k], [1, 99]) + intercept
        ds.WindowCenter, ds.WindowWidth = _ds(window.mean()), _ds(max(window[1] - window[0], 1.0))
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"IM{instance:04d}.dcm", enforce_file_format=True)
    return folder


def _slice_header(identity: dict, modality: str, series_uid: str, number: int, description: str,
                  attributes: dict) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 192"
    for key, value in identity.items():
        setattr(ds, key, value)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, STUDY_TIME
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.Manufacturer = "VertebralMarrow synthetic"
    ds.ManufacturerModelName = "Phantom"
    ds.SoftwareVersions = __version__
    ds.BodyPartExamined = "SPINE"
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    ds.BurnedInAnnotation = "NO"
    if modality == "MR":
        ds.MRAcquisitionType = "2D"
        ds.MagneticFieldStrength = "1.5"
        ds.ImagingFrequency = "63.87"
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
    for key, value in attributes.items():
        if key in ("RepetitionTime", "EchoTime", "InversionTime", "KVP"):
            value = _ds(value)
        setattr(ds, key, value)
    return ds


def _adc_value_mapping() -> pydicom.Dataset:
    """Stored value -> ADC in um2/s (10^-6 mm^2/s), slope 1: how scanners label their maps."""
    units = pydicom.Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "um2/s", "UCUM", "um2/s"
    mapping = pydicom.Dataset()
    mapping.RealWorldValueFirstValueMapped = 0
    mapping.RealWorldValueLastValueMapped = 65535
    mapping.RealWorldValueIntercept = 0.0
    mapping.RealWorldValueSlope = 1.0
    mapping.LUTExplanation = "ADC"
    mapping.LUTLabel = "ADC"
    mapping.MeasurementUnitsCodeSequence = [units]
    return mapping


def _ds(value: float) -> str:
    """A DS (decimal string) of at most 16 characters."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.8g}"
