"""Which volume is which, from DICOM headers (dicom_out.py) or series descriptions and node
names: the panel's selectors preselected, and an ADC map refused when it is plainly another
series (a T1 picked by mistake gives every lesion a malignant-range "ADC").

Slicer names a volume loaded from DICOM "<series number>: <series description>", the series
description as the scanner wrote it ("ep2d_diff_b50_400_800_ADC", "T1_TSE_SAG", "STIR_COR",
"Apparent Diffusion Coefficient (mm2/s)"), so the names carry what the series is.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import numpy as np

from ..core.adc import decide_adc_units
from ..errors import InputError
from ..mrml import array_of
from ..outputs.nodes import ADC_MAP_ATTRIBUTE
from .dicom_out import recognised_roles

# Contrast by series description / node name, most specific first: an ADC series name often
# also holds "diff" or the b-values of the DWI it came from.
_KINDS = (
    ("adc", re.compile(r"(?<![a-z])(adc|d?adc_?map|apparent[\s_-]*diffusion)(?![a-z])", re.I)),
    ("fs", re.compile(r"(?<![a-z])(stir|tirm|fs|fat[\s_-]*sat|spair|spir|dixon[\s_-]*w|water)(?![a-z])", re.I)),
    ("dwi", re.compile(r"(?<![a-z])(dwi|diff(usion)?|ep2d[\s_-]*diff|trace|b[\s_=-]*\d{2,4}(?!\d))", re.I)),
    ("t1", re.compile(r"(?<![a-z0-9])t1(?![0-9])", re.I)),
    ("t2", re.compile(r"(?<![a-z0-9])t2(?![0-9])", re.I)),
    ("ct", re.compile(r"(?<![a-z])(ct|computed[\s_-]*tomography|hu)(?![a-z])", re.I)),
)

KIND_TEXT = {"adc": "an ADC map", "fs": "a fat-suppressed T2 / STIR series", "dwi": "a diffusion-weighted (b-value) series",
             "t1": "a T1 series", "t2": "a T2 series", "ct": "a CT series"}

# The panel's selector (parameter) for each kind.
PARAMETER_OF_KIND = {"adc": "adcVolume", "t1": "t1Volume", "t2": "t2Volume", "fs": "fsVolume", "ct": "ctVolume"}


def series_kind(name: str) -> Optional[str]:
    """What a series is by its description or node name: adc, fs, dwi, t1, t2, ct, or None."""
    for kind, pattern in _KINDS:
        if pattern.search(name or ""):
            return kind
    return None


def preselection(scene, chosen: Dict[str, object], database=None) -> Dict[str, object]:
    """Volumes for the panel's empty selectors: {parameter: node} for every kind exactly one
    volume of the scene is (a choice the user can change). A volume loaded from DICOM whose
    header the DICOM `database` gives is what its header says, by the rules of `analyze
    --dicom` (dicom_out.recognised_roles); any other volume is what its name says. An ADC map
    is not proposed beside chosen DWI, nor a DWI sequence beside a chosen ADC map; between a
    proposed map and a DWI sequence, the DWI is fitted when both are recognised from DICOM (as
    the command line does), else the map is taken."""
    volumes = [node for node in _nodes(scene, "vtkMRMLScalarVolumeNode") if not (
        node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetHideFromEditors() or node.GetAttribute(ADC_MAP_ATTRIBUTE))]
    sequences = _nodes(scene, "vtkMRMLSequenceNode")
    from_dicom = recognised_roles(volumes + sequences, database)
    found: Dict[str, List[object]] = {}
    for node in volumes:
        kind = from_dicom[node.GetID()] if node.GetID() in from_dicom else series_kind(node.GetName())
        if kind in PARAMETER_OF_KIND:
            found.setdefault(PARAMETER_OF_KIND[kind], []).append(node)
    for node in sequences:
        if node.GetID() in from_dicom:
            dwi = from_dicom[node.GetID()] == "dwi"
        else:
            dwi = series_kind(node.GetName()) == "dwi" or bool(node.GetAttribute("MultiVolume.FrameLabels"))
        if dwi:
            found.setdefault("dwiSequence", []).append(node)
    dwi_chosen = chosen.get("dwiSequence") is not None or bool([n for n in (chosen.get("dwiVolumes") or []) if n])
    proposals = {}
    for parameter, nodes in found.items():
        if len(nodes) != 1 or chosen.get(parameter) is not None:
            continue
        if parameter == "adcVolume" and dwi_chosen:
            continue
        if parameter == "dwiSequence" and (chosen.get("adcVolume") is not None or dwi_chosen):
            continue
        proposals[parameter] = nodes[0]
    if "adcVolume" in proposals and "dwiSequence" in proposals:
        if all(proposals[name].GetID() in from_dicom for name in ("adcVolume", "dwiSequence")):
            proposals.pop("adcVolume")
        else:
            proposals.pop("dwiSequence")
    return proposals


def _nodes(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]


_CHECKED: Dict[tuple, str] = {}


def adc_map_problem(node, database=None) -> str:
    """adc_map_problem_now, once per node and modification (the panel asks on every change)."""
    if node is None:
        return ""
    image = node.GetImageData()
    key = (node.GetID() or str(id(node)), node.GetMTime(), image.GetMTime() if image is not None else 0, id(database))
    if key not in _CHECKED:
        if len(_CHECKED) > 16:
            _CHECKED.clear()
        _CHECKED[key] = adc_map_problem_now(node, database)
    return _CHECKED[key]


def adc_map_problem_now(node, database=None) -> str:
    """Why `node` cannot be the ADC map (a sentence naming the likely cause), or "".

    Refused: a volume whose DICOM header (through the DICOM `database`) says it is another
    series; without a header that says, a volume named as another series and not as an ADC
    map; values no ADC convention makes sense of (core.adc.decide_adc_units' refusals); in the
    10^-6 mm^2/s convention, a map whose bulk lies beyond twice free water's ADC (3.0 x 10^-3
    mm^2/s at body temperature): an anatomical series' intensities, not diffusivities."""
    if node is None:
        return ""
    name = node.GetName() or ""
    role = recognised_roles([node], database).get(node.GetID())
    if role is not None and role != "adc":
        return (f"'{name}' is {KIND_TEXT[role]} by its DICOM header, not an ADC map: choose the scanner's ADC series "
                f"(ImageType ADC), or DWI to fit one")
    kind = series_kind(name)
    if role is None and kind is not None and kind != "adc":
        return (f"'{name}' looks like {KIND_TEXT[kind]} by its name, not an ADC map: choose the scanner's ADC series "
                f"(named ADC or Apparent Diffusion Coefficient), or DWI to fit one")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        return f"'{name}' has no voxels"
    if image.GetNumberOfScalarComponents() != 1:
        return (f"'{name}' has {image.GetNumberOfScalarComponents()} values per voxel; an ADC map has one "
                f"(is this the DWI series?)")
    values = np.asarray(array_of(node), dtype=float)
    try:
        decision = decide_adc_units(values, np.issubdtype(array_of(node).dtype, np.integer))
    except InputError as error:
        return f"'{name}': {error}"
    if decision.unit == "1e-6":
        positive = values[np.isfinite(values) & (values > 0)]
        if float(np.median(positive)) > 6000.0:
            return (f"'{name}': most voxels exceed 6 x 10^-3 mm^2/s, twice the ADC of free water, in every ADC "
                    f"convention; this looks like an anatomical series picked as the ADC map")
    return ""
