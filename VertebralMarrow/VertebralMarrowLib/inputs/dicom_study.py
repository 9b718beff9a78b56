"""A DICOM study in: find the series of one patient in a folder and recognise what each is.

`scan_dicom_folder(folder)` reads every DICOM file below `folder` (any depth, any file name)
and groups the images by series. `recognise(series)` names each series' role (t1, t2, fs,
dwi, adc, ct) from its DICOM attributes first (Modality, ImageType, b-values, ScanningSequence,
InversionTime, ScanOptions, TR/TE) and its series description second, and says why.
`choose_series` picks one series per role, refusing a folder of several patients and a role
with more than one candidate unless the user chose (`--t1-series UID|NUMBER|none`).
`stage_study` writes the chosen series as volumes a StudyFiles can name: NRRD for T1, T2, FS,
ADC and CT (rescale slope/intercept applied by the reader, the ADC map's real-world value
mapping and units applied here), and a folder of links to the DWI series' own files, read
with b-values from the headers by inputs/dicom_dwi.py.

Runs in Slicer's Python 3.9 with numpy, pydicom and SimpleITK.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from .dicom_dwi import _bvalue, _number, _text, _upper_values

ROLES = ("t1", "t2", "fs", "dwi", "adc", "ct")
ROLE_LABELS = {"t1": "T1", "t2": "T2", "fs": "STIR/fat-suppressed T2", "dwi": "DWI", "adc": "scanner ADC map",
               "ct": "CT"}
# STIR nulls fat with a short inversion time (about 150 ms at 1.5 T, 180-230 ms at 3 T).
STIR_TI_MS = (90.0, 260.0)
# Spin-echo weighting from timing: T1 short TR and TE, T2 long TR and TE (common MR practice).
T1_MAX_TR_MS, T1_MAX_TE_MS = 1000.0, 30.0
T2_MIN_TR_MS, T2_MIN_TE_MS = 1500.0, 60.0
FAT_SUPPRESSION_OPTIONS = {"FS", "SFS", "SPIR", "SPAIR", "FATSAT", "FAT_SAT", "CHESS"}
DERIVED_MAPS = {"FA", "EADC", "EXP", "TENSOR", "COLFA", "CALC_BVALUE"}
UNITS_OF_UCUM = {"um2/s": "1e-6", "mm2/s": "mm2/s", "10-3.mm2/s": "1e-3", "10^-3.mm2/s": "1e-3"}
DESCRIPTION_RULES = (  # (role, pattern): tried in this order on the series description
    ("adc", r"\b(E?ADC|APPARENT DIFFUSION)\b"),
    ("fs", r"\b(STIR|TIRM|SPAIR|SPIR|FS|FATSAT|FAT[ _-]?SAT|FAT[ _-]?SUP\w*)\b"),
    ("dwi", r"\b(DWI|DIFF\w*|EP2D[_ ]?DIFF\w*|RESOLVE|TRACE\w*)\b"),
    ("t1", r"\bT1\w*"),
    ("t2", r"\bT2\w*"),
)
IGNORED_DESCRIPTIONS = r"\b(LOC\w*|SCOUT|SURVEY|LOCALI[SZ]ER|3[ -]?PLANE|TOPOGRAM|PHOENIX\w*)\b"


@dataclass
class Series:
    """One DICOM series found in the folder: what its headers say, and its files."""

    uid: str
    number: str
    description: str
    modality: str
    patient: str
    study_uid: str
    image_type: List[str]
    scanning_sequence: List[str]
    scan_options: List[str]
    repetition_time: Optional[float]
    echo_time: Optional[float]
    inversion_time: Optional[float]
    files: List[Path] = field(default_factory=list)
    bvalues: set = field(default_factory=set)
    header: Optional[pydicom.Dataset] = None  # the first file's header, for identity and units

    @property
    def label(self) -> str:
        return f"series {self.number or '?'} '{self.description}' ({self.modality}, {len(self.files)} files)"


def scan_dicom_folder(folder) -> List[Series]:
    """Every DICOM image series below `folder`, ordered by series number; non-DICOM files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist or is not a folder")
    found: Dict[str, Series] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        uid = _text(ds.get("SeriesInstanceUID"))
        if not uid or "Rows" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
            continue  # not an image (a DICOMDIR, a report, a presentation state)
        series = found.get(uid)
        if series is None:
            series = found[uid] = series_from_header(ds)
        series.files.append(path)
        series.bvalues.update(_file_bvalues(ds))
    if not found:
        raise InputError(f"no DICOM image found in {folder} (searched every file at any depth)")
    return sorted(found.values(), key=lambda s: (_number_key(s.number), s.uid))


def recognise(series: Series) -> tuple:
    """(role or None, why) for one series, from its attributes first and its description second."""
    description = series.description.upper()
    types = set(series.image_type)
    if "LOCALIZER" in types or re.search(IGNORED_DESCRIPTIONS, description):
        return None, "a localizer"
    if series.modality == "CT":
        return "ct", "Modality CT"
    if series.modality != "MR":
        return None, f"Modality {series.modality or 'missing'} (neither MR nor CT)"
    if "ADC" in types:
        return "adc", f"ImageType {_backslashed(series.image_type)}"
    if types & DERIVED_MAPS:
        return None, f"a scanner-derived diffusion map (ImageType {_backslashed(series.image_type)}), not an ADC map"
    if len(series.bvalues) >= 2:
        values = ", ".join(f"{b:g}" for b in sorted(series.bvalues))
        return "dwi", f"b-values {values} s/mm^2 in the headers"
    if series.bvalues or types & {"DIFFUSION", "TRACEW", "TRACE"}:
        values = ", ".join(f"{b:g}" for b in sorted(series.bvalues)) or "none in the headers"
        return None, f"diffusion images with fewer than two b-values ({values}); an ADC fit needs two or more"
    if re.search(DESCRIPTION_RULES[3][1], description) and re.search(DESCRIPTION_RULES[1][1], description):
        # A fat-suppressed T1 (usually after contrast) is neither the plain T1 nor the FS-T2/STIR.
        return None, f"series description '{series.description}' says fat-suppressed T1; choose it with --t1-series if meant"
    for role, pattern in DESCRIPTION_RULES:
        if re.search(pattern, description):
            if role == "dwi":
                return None, f"description '{series.description}' says diffusion but the headers hold fewer than two b-values"
            return role, f"series description '{series.description}'"
    return _role_from_timing(series)


def _role_from_timing(series: Series) -> tuple:
    tr, te, ti = series.repetition_time, series.echo_time, series.inversion_time
    timing = f"TR {tr:g} ms, TE {te:g} ms" if tr is not None and te is not None else ""
    if "IR" in series.scanning_sequence and ti is not None and STIR_TI_MS[0] <= ti <= STIR_TI_MS[1]:
        return "fs", f"inversion recovery with TI {ti:g} ms (STIR)"
    if set(series.scan_options) & FAT_SUPPRESSION_OPTIONS and te is not None and te >= T2_MIN_TE_MS:
        return "fs", f"fat suppression (ScanOptions {_backslashed(series.scan_options)}) with T2 weighting ({timing})"
    if tr is None or te is None:
        return None, "no TR/TE and a description that names no weighting"
    if tr < T1_MAX_TR_MS and te < T1_MAX_TE_MS:
        return "t1", f"T1 weighting: {timing}"
    if tr >= T2_MIN_TR_MS and te >= T2_MIN_TE_MS:
        return "t2", f"T2 weighting: {timing}"
    return None, f"{timing} is neither clearly T1 nor T2 weighting"


@dataclass
class Choice:
    role: str
    series: Series
    why: str

    def describe(self) -> dict:
        s = self.series
        return {"role": self.role, "series_number": s.number, "series_description": s.description,
                "series_instance_uid": s.uid, "modality": s.modality, "files": len(s.files), "why": self.why}


def choose_series(all_series: List[Series], overrides: Optional[dict] = None) -> tuple:
    """({role: Choice}, notes): one series per role. overrides: role -> UID, series number or 'none'.

    Refuses a folder with images of several patients, and a role with several candidates the
    user did not choose between. The DWI is fitted when there is one; the scanner ADC map is
    then listed but not used, unless the user chose it with --adc-series.
    """
    overrides = {role: str(value).strip() for role, value in (overrides or {}).items() if value}
    unknown = set(overrides) - set(ROLES)
    if unknown:
        raise InputError(f"unknown series role(s) {', '.join(sorted(unknown))}; use {', '.join(ROLES)}")
    require_one_patient(all_series)
    chosen: Dict[str, Choice] = {}
    candidates, notes = candidates_by_role(all_series)
    for role in ROLES:
        if role in overrides:
            if overrides[role].lower() == "none":
                notes.append(f"{ROLE_LABELS[role]}: none, as asked")
                continue
            series = _find(all_series, overrides[role], role)
            recognised = dict((s.uid, w) for s, w in candidates[role]).get(series.uid)
            chosen[role] = Choice(role, series, f"chosen by the user (--{role}-series {overrides[role]})"
                                  + (f"; also recognised: {recognised}" if recognised else ""))
            continue
        found = candidates[role]
        if len(found) > 1:
            listed = "; ".join(f"{s.label} [{w}]" for s, w in found)
            raise InputError(f"{len(found)} series look like {ROLE_LABELS[role]}: {listed}; choose one with "
                             f"--{role}-series NUMBER (or UID, or none)")
        if found:
            chosen[role] = Choice(role, found[0][0], found[0][1])
    if "dwi" in chosen and "adc" in chosen:
        if "adc" in overrides and "dwi" in overrides:
            raise InputError("--dwi-series and --adc-series both chosen; the ADC comes from one of them "
                             "(fitted from the DWI, or the scanner's map)")
        if "adc" in overrides:
            notes.append(f"{chosen['dwi'].series.label} (DWI) not used: the scanner ADC map was chosen")
            del chosen["dwi"]
        else:
            notes.append(f"{chosen['adc'].series.label} (scanner ADC map) not used: the DWI is fitted instead; "
                         "choose the map with --adc-series")
            del chosen["adc"]
    if "dwi" not in chosen and "adc" not in chosen:
        raise InputError("no diffusion series found (no series with two or more b-values in its headers and no "
                         "ADC map with ImageType ADC); choose one with --dwi-series or --adc-series")
    return chosen, notes


def candidates_by_role(all_series: List[Series]) -> tuple:
    """({role: [(series, why)]}, notes): what `recognise` makes of each series; a note for
    each series it does not use. choose_series and the Slicer panel's preselection decide on it."""
    candidates: Dict[str, list] = {role: [] for role in ROLES}
    notes = []
    for series in all_series:
        role, why = recognise(series)
        if role:
            candidates[role].append((series, why))
        else:
            notes.append(f"{series.label} not used: {why}")
    return candidates, notes


def require_one_patient(all_series: List[Series]) -> None:
    patients = sorted({s.patient for s in all_series})
    if len(patients) > 1:
        raise InputError(f"the DICOM folder holds images of {len(patients)} patients ({', '.join(patients)}); "
                         "give the folder of one patient's study")


def _find(all_series: List[Series], key: str, role: str) -> Series:
    matches = [s for s in all_series if key in (s.uid, s.number)]
    if len(matches) != 1:
        listed = "; ".join(f"{s.number}: {s.description} ({s.uid})" for s in all_series)
        what = "no series" if not matches else f"{len(matches)} series"
        raise InputError(f"--{role}-series {key}: {what} with that number or UID; the folder has {listed}")
    return matches[0]


def stage_study(chosen: Dict[str, Choice], staging) -> tuple:
    """Write the chosen series where StudyFiles can name them: ({key: path}, adc_units or None).

    keys: t1, t2, fs, ct, adc (NRRD files) and dwi_dicom (a folder of links to the DWI files).
    """
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    paths, units = {}, None
    for role, choice in chosen.items():
        if role == "dwi":
            folder = staging / "dwi"
            folder.mkdir(exist_ok=True)
            for index, path in enumerate(choice.series.files):
                link = folder / f"{index:05d}_{path.name}"
                try:
                    link.symlink_to(path.resolve())
                except OSError:  # no symlinks (some Windows setups): copy instead
                    link.write_bytes(path.read_bytes())
            paths["dwi_dicom"] = folder
        else:
            paths[role] = staging / f"{role}.nrrd"
            scale = _write_volume(choice.series, paths[role])
            if role == "adc":
                units = scale
    return paths, units


def _write_volume(series: Series, path: Path) -> Optional[str]:
    """Read the series with SimpleITK (slices ordered along the normal, rescale applied), apply
    an ADC map's real-world value mapping; write NRRD. Returns the ADC units it found, if any."""
    import SimpleITK as sitk

    files = _ordered_files(series)
    try:
        if len(files) == 1:
            image = sitk.ReadImage(str(files[0]))
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(p) for p in files])
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{series.label} cannot be read as a volume: {str(exc).strip().splitlines()[-1]}") from None
    units = None
    mapping = _value_mapping(series.header)
    if mapping is not None:
        slope, intercept, units = mapping
        if (slope, intercept) != (1.0, 0.0):
            image = sitk.Cast(image, sitk.sitkFloat32) * slope + intercept
    sitk.WriteImage(image, str(path), True)
    return units


def _ordered_files(series: Series) -> List[Path]:
    """Files sorted by position along the slice normal (then instance number)."""
    keyed = []
    for path in series.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"])
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        if position is not None and orientation is not None and len(orientation) == 6:
            normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
            where = float(np.dot(normal, np.array(position, float)))
        else:
            where = 0.0
        keyed.append((round(where, 3), int(ds.get("InstanceNumber") or 0), str(path), path))
    return [item[-1] for item in sorted(keyed)]


def _value_mapping(header) -> Optional[tuple]:
    """(slope, intercept, units key or None) of the first real-world value mapping, if any."""
    if header is None:
        return None
    items = header.get("RealWorldValueMappingSequence")
    if not items:
        shared = header.get("SharedFunctionalGroupsSequence")
        frame = shared[0].get("RealWorldValueMappingSequence") if shared else None
        items = frame
    if not items:
        return None
    item = items[0]
    slope = float(item.get("RealWorldValueSlope", 1.0) or 1.0)
    intercept = float(item.get("RealWorldValueIntercept", 0.0) or 0.0)
    units = None
    codes = item.get("MeasurementUnitsCodeSequence")
    if codes:
        units = UNITS_OF_UCUM.get(str(codes[0].get("CodeValue", "")).strip())
    return slope, intercept, units


# ---------------------------------------------------------------------------- headers


def series_from_header(ds) -> Series:
    """A Series from one file's header (its b-values included; no files yet): what
    scan_dicom_folder starts each series with, and what the Slicer panel reads per volume."""
    patient = _text(ds.get("PatientID")) or _text(ds.get("PatientName")) or "(no patient id)"
    series = Series(
        uid=_text(ds.get("SeriesInstanceUID")),
        number=_text(ds.get("SeriesNumber")),
        description=_text(ds.get("SeriesDescription")) or _text(ds.get("ProtocolName")),
        modality=_text(ds.get("Modality")),
        patient=patient,
        study_uid=_text(ds.get("StudyInstanceUID")),
        image_type=_upper_values(ds.get("ImageType")),
        scanning_sequence=_upper_values(ds.get("ScanningSequence")),
        scan_options=_upper_values(ds.get("ScanOptions")),
        repetition_time=_number(ds.get("RepetitionTime")),
        echo_time=_number(ds.get("EchoTime")),
        inversion_time=_number(ds.get("InversionTime")),
        header=ds,
    )
    series.bvalues.update(_file_bvalues(ds))
    return series


def _file_bvalues(ds) -> set:
    """The b-values one file holds: per frame for enhanced objects, else the file's own."""
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if frames:
        values = set()
        for frame in frames:
            items = frame.get("MRDiffusionSequence")
            value = _bvalue(ds, items[0] if items else None)
            if value is not None:
                values.add(value)
        return values
    value = _bvalue(ds, None)
    return {value} if value is not None else set()


def _backslashed(values: List[str]) -> str:
    return "\\".join(values)


def _number_key(number: str):
    try:
        return (0, int(number))
    except ValueError:
        return (1, number)
