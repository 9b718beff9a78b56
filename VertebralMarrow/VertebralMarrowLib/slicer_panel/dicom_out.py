"""DICOM and the Slicer panel, without Qt: what each volume is by its own DICOM header (the
panel's preselection, by inputs/dicom_study's rules), and the last analysis written as DICOM
SEG, SR and parametric map (outputs/dicom_export, the writer of `analyze --dicom`) on the
series its ADC came from, then added to Slicer's DICOM database.

Slicer's DICOM loaders give each volume they load the attribute DICOM.instanceUIDs: the SOP
instance UIDs of its slices, space-separated (DICOMScalarVolumePlugin; MultiVolumeImporter
loads each frame of a sequence with it). Slicer's DICOM database (slicer.dicomDatabase, a
ctkDICOMDatabase) gives an instance's file with fileForInstance(uid) ("" when it has none) and
indexes a new file with insert(path), copying it into the database folder, as Slicer's own
DICOM SEG export does. Every function here takes that database as an argument.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional

import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from ..inputs.dicom_study import candidates_by_role, require_one_patient, series_from_header

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def instance_uids(node) -> List[str]:
    """The SOP instance UIDs a node was loaded from ([] when it did not come from DICOM)."""
    text = node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) if node is not None else None
    return [uid for uid in (text or "").split() if uid != "Unknown"]  # Slicer writes Unknown for a missing UID


# ---------------------------------------------------------------------- recognition


def _header(node, database) -> Optional[pydicom.Dataset]:
    """The header of the first instance a volume was loaded from, or None."""
    uids = instance_uids(node)
    path = database.fileForInstance(uids[0]) if uids and database is not None else ""
    if not path:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return None


def _series_of_node(node, database):
    """A dicom_study Series for a volume (one header) or a sequence of volumes (one header per
    frame, their b-values together), or None when a header cannot be had."""
    if node.IsA("vtkMRMLSequenceNode"):
        frames = [node.GetNthDataNode(index) for index in range(node.GetNumberOfDataNodes())]
    else:
        frames = [node]
    series = None
    for frame in frames:
        header = _header(frame, database) if frame is not None else None
        if header is None:
            return None
        if series is None:
            series = series_from_header(header)
        else:
            series.bvalues.update(series_from_header(header).bvalues)
    return series


def recognised_roles(nodes: list, database) -> Dict[str, Optional[str]]:
    """{node ID: role (t1, t2, fs, dwi, adc, ct) or None} for the nodes whose DICOM header
    the database gives, by dicom_study.recognise as `analyze --dicom` reads a folder. Nodes of
    several patients get no role: the command line refuses such a folder, the panel proposes
    none of them."""
    series_of = {}
    for node in nodes:
        series = _series_of_node(node, database)
        if series is not None:
            series_of[node.GetID()] = series
    try:
        require_one_patient(list(series_of.values()))
    except InputError:
        return {node_id: None for node_id in series_of}
    candidates, _notes = candidates_by_role(list(series_of.values()))
    roles: Dict[str, Optional[str]] = {node_id: None for node_id in series_of}
    for role, found in candidates.items():
        for series, _why in found:
            for node_id, candidate in series_of.items():
                if candidate is series:
                    roles[node_id] = role
    return roles


# ---------------------------------------------------------------------- export


def reference_nodes(study) -> list:
    """The volumes the ADC was measured on: the scanner map, or the DWI it was fitted from."""
    return [study.adc] if study.adc is not None else list(study.dwi)


def export_blocker(study, result, database) -> str:
    """Why the last analysis cannot be written as DICOM, or ""."""
    if result is None or study is None:
        return "there is no analysis to export yet: press Apply first"
    for node in reference_nodes(study):
        if not instance_uids(node):
            return (f"'{node.GetName()}' was not loaded from DICOM (it has no DICOM.instanceUIDs): DICOM SEG, SR "
                    f"and parametric map refer to the DICOM series the ADC was measured on; load the ADC map or the "
                    f"DWI with Slicer's DICOM module, or use Export report folder")
    if database is None:
        return "Slicer's DICOM database is not available: open the DICOM module once to set it up"
    return ""


def reference_files(study, database) -> List[Path]:
    """The files of the instances the ADC's source volumes were loaded from."""
    files = []
    for node in reference_nodes(study):
        for uid in instance_uids(node):
            path = database.fileForInstance(uid)
            if not path:
                raise InputError(f"instance {uid} of '{node.GetName()}' is not in Slicer's DICOM database; import "
                                 f"the series into the database again before exporting")
            files.append(Path(path))
    return files


def export_dicom(study, result, folder, database) -> Dict[str, Path]:
    """Write seg.dcm, sr.dcm and adc_pm.dcm of the analysis into `folder` with the command
    line's writer, on the ADC's source series (a fitted map records its b-values and method),
    and add them to the database. Returns {name: path} of the files written."""
    from ..outputs.dicom_export import write_dicom_outputs

    blocker = export_blocker(study, result, database)
    if blocker:
        raise InputError(blocker)
    fitted = study.adc is None
    written = write_dicom_outputs(result, reference_files(study, database), Path(folder),
                                  bvalues=result.bvalues_used if fitted else None,
                                  method=result.options.fit_method if fitted else None)
    for path in written.values():
        database.insert(str(path))
    return written
