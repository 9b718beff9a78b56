"""A study from files: paths in, MRML nodes out (the CLI's and plain Python's front door).

MRML is imported inside the loaders, so that StudyFiles and the parsers serve the `adc`
command, which runs without vtk."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from ..core.sequences import SEQUENCES
from ..errors import InputError
from .validate import check_bvalues, check_dwi_paths, check_image, check_roles_and_spread, check_signal
from .dwi_files import read_dwi_files

if TYPE_CHECKING:
    from ..analysis import StudyNodes
    from ..mrml import HeadlessApp


@dataclass
class StudyFiles:
    seg: Path
    label_names: Optional[Path] = None
    adc: Optional[Path] = None
    dwi: Sequence[Path] = ()
    bvalues: Sequence[float] = ()
    dwi_dicom: Optional[Path] = None
    t1: Optional[Path] = None
    t2: Optional[Path] = None
    fs: Optional[Path] = None
    ct: Optional[Path] = None
    in_phase: Optional[Path] = None
    opposed_phase: Optional[Path] = None
    fat_fraction: Optional[Path] = None
    roles: dict = field(default_factory=dict)
    spread: dict = field(default_factory=dict)  # segment name -> (levels involved, disc destroyed)

    def __post_init__(self):
        """Types checked where the study enters: a path where a path belongs (one path given
        for `dwi` is a list of one, never a list of its letters), known roles."""
        for name in ("seg", "label_names", "adc", "dwi_dicom", *(sequence.key for sequence in SEQUENCES)):
            value = getattr(self, name)
            setattr(self, name, None if value is None else _path(value, name))
        self.dwi = tuple(_paths(self.dwi, "dwi"))
        self.bvalues = tuple(parse_bvalues(self.bvalues) if isinstance(self.bvalues, str)
                             else check_bvalues(_sequence(self.bvalues, "bvalues"), "StudyFiles.bvalues"))
        check_roles_and_spread(self, "StudyFiles")


def _sequence(value, name: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise InputError(f"StudyFiles.{name} must be a list, got {type(value).__name__} {value!r}") from None


def _path(value, name: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InputError(f"StudyFiles.{name} must be a file path, got {type(value).__name__} {value!r}")
    return Path(value)


def _paths(value, name: str) -> List[Path]:
    return [_path(item, name) for item in _sequence(value, name)]


def parse_spread(levels: Sequence[str], discs: Sequence[str]) -> dict:
    """--levels 'L4 lesion=2' and --disc 'L4 lesion=destroyed|spared' -> {name: (levels, destroyed)}."""
    spread: dict = {}
    for text in levels:
        name, _, value = text.rpartition("=")
        if not name or not value.strip().isdigit() or int(value) < 1:
            raise InputError(f"--levels '{text}': give SEGMENT=N with N the number of vertebral levels involved (1 or more)")
        spread[name.strip()] = (int(value), spread.get(name.strip(), (None, None))[1])
    for text in discs:
        name, _, value = text.rpartition("=")
        if not name or value.strip().lower() not in ("destroyed", "spared"):
            raise InputError(f"--disc '{text}': give SEGMENT=destroyed or SEGMENT=spared")
        spread[name.strip()] = (spread.get(name.strip(), (None, None))[0], value.strip().lower() == "destroyed")
    return spread


def parse_bvalues(text: str) -> List[float]:
    """'0,50,400,800' -> [0.0, 50.0, 400.0, 800.0] (s/mm^2)."""
    try:
        values = [float(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError(f"--bvalues '{text}' is not a comma-separated list of numbers (e.g. 0,50,400,800)") from None
    if not values:
        raise InputError("--bvalues is empty; give one b-value (s/mm^2) per DWI volume, e.g. 0,50,400,800")
    return check_bvalues(values, f"--bvalues '{text}'")


def load_study(app: HeadlessApp, files: StudyFiles) -> StudyNodes:
    """Load every given file into `app.scene` and return the study's nodes."""
    from ..analysis import StudyNodes
    from ..mrml import load_segmentation, load_volume

    scene = app.scene
    given = [flag for flag, value in (("--adc", files.adc), ("--dwi", files.dwi), ("--dwi-dicom", files.dwi_dicom)) if value]
    if not given:
        raise InputError("no ADC input: give --adc (a scanner ADC map), --dwi with --bvalues, or --dwi-dicom")
    if len(given) > 1:
        raise InputError(f"give one ADC input, not {' and '.join(given)}")
    if files.seg is None:
        raise InputError("no segmentation: give --seg (a .seg.nrrd or a labelmap)")
    segmentation = load_segmentation(scene, app, files.seg, files.label_names)
    study = StudyNodes(segmentation=segmentation, roles=dict(files.roles), spread=dict(files.spread))
    if files.adc is not None:
        study.adc = load_volume(scene, files.adc, "ADC map")
    elif files.dwi:
        study.dwi, study.bvalues = load_dwi(scene, files.dwi, files.bvalues)
    else:
        study.dwi, study.bvalues = load_dwi_dicom(scene, files.dwi_dicom)
    for sequence in SEQUENCES:
        path = getattr(files, sequence.key)
        if path is not None:
            setattr(study, sequence.key, load_volume(scene, path, sequence.label))
    return study


def load_dwi(scene, paths: Sequence[Path], bvalues: Sequence[float]) -> Tuple[list, List[float]]:
    """DWI volumes and their b-values: several 3-D files with --bvalues in the same order, or
    one 4-D file (b-values along the last axis) with --bvalues or its own metadata."""
    from ..mrml import array_of, load_volume, volume_from_array

    paths, bvalues = check_dwi_paths(paths, bvalues)
    if len(paths) == 1:
        check_image(paths[0], "DWI", "dwi")
        dwi = read_dwi_files(paths, bvalues)  # a 4-D file, mapped or viewed: copied once, into the nodes
        if len(dwi.volumes) > 1:
            values = check_bvalues(dwi.bvalues, f"b-values of {paths[0]}")
            for volume, b in zip(dwi.volumes, values):
                check_signal(volume, f"DWI {paths[0]} (b = {b:g})")
            nodes = [volume_from_array(scene, volume, dwi.ijk_to_ras, f"DWI b={b:g}")
                     for volume, b in zip(dwi.volumes, values)]
            return nodes, values
    if not bvalues:
        raise InputError("--dwi with 3-D files needs --bvalues, one per file in the same order (e.g. --bvalues 0,50,400,800)")
    if len(bvalues) != len(paths):
        raise InputError(f"{len(paths)} DWI files but {len(bvalues)} b-values; give one b-value per file")
    nodes = []
    for path, b in zip(paths, bvalues):
        node = load_volume(scene, path, "DWI")
        check_signal(array_of(node), f"DWI {path} (b = {b:g})")
        nodes.append(node)
    return nodes, bvalues


def load_dwi_dicom(scene, folder: Path) -> Tuple[list, List[float]]:
    """DWI volumes (trace-weighted, one per b-value) and b-values read from DICOM headers."""
    from ..inputs.dicom_dwi import read_dwi_dicom
    from ..mrml import volume_from_array

    series = read_dwi_dicom(folder)
    check_bvalues(series.bvalues, f"b-values in the DICOM headers of {folder}")
    for volume, b in zip(series.volumes, series.bvalues):
        check_signal(volume, f"DWI DICOM {folder} (b = {b:g})")
    nodes = [volume_from_array(scene, volume, series.ijk_to_ras, f"DWI b={b:g}")
             for volume, b in zip(series.volumes, series.bvalues)]
    return nodes, list(series.bvalues)
