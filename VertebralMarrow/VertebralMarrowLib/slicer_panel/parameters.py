"""The study and the analysis options from the panel's parameter values (any object with the
parameter node's attribute names: the `@parameterNodeWrapper` instance inside Slicer), and
why Apply cannot run yet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from ..analysis import StudyNodes
from ..core.criteria import SETTINGS, Options
from ..core.sequences import SEQUENCES
from ..errors import InputError
from ..inputs.nodes import dwi_inputs
from .series import adc_map_problem

ADC_UNIT_CHOICES = ("auto", "mm2/s", "1e-3", "1e-6")
FIT_METHOD_CHOICES = ("iwls", "ols")


def options_from_parameters(params) -> Options:
    """The analysis options from the panel's values. b-value limits of 0 mean 'no limit'
    (the spin boxes show 'all' there).

    A criteria file of the user's own (criteriaFile; empty: the built-in criteria.json)
    supplies the entity tables, the differential's factors and the references; the numbers
    the panel sets (cut-off, band, signal thresholds, minimum voxels, CT sclerotic threshold)
    always come from the panel, overriding the file's."""
    values = {setting.name: getattr(params, setting.parameter) for setting in SETTINGS}
    values["bmin"], values["bmax"] = _limit(values["bmin"]), _limit(values["bmax"])
    return Options(criteria_path=criteria_file(params.criteriaFile), **values)


def criteria_file(text) -> Optional[Path]:
    """The criteria file the panel's field names, or None (the built-in one) when it is empty."""
    text = (text or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(
            f"criteria file '{text}' does not exist or is not a file; give the full path of a JSON file in the "
            "layout of the built-in criteria.json, or clear the Criteria file field to use the built-in one"
        )
    return path


def _limit(value) -> Optional[float]:
    return None if value is None or float(value) <= 0 else float(value)


def study_from_parameters(params, dicom_database=None) -> StudyNodes:
    """The study's nodes from the panel's selections; segment roles come from the segment tags.
    dicom_database: Slicer's, to check the ADC map by its DICOM header (series.adc_map_problem)."""
    if params.segmentation is None:
        raise InputError("select the segmentation that holds the lesion and normal-marrow ROIs")
    dwi, bvalues = adc_inputs(params, dicom_database)
    return StudyNodes(
        segmentation=params.segmentation,
        adc=params.adcVolume,
        dwi=dwi,
        bvalues=bvalues,
        # t1, t2, fs, ct, in/opposed phase, fat fraction: the one table of the image inputs
        **{sequence.key: getattr(params, sequence.parameter, None) for sequence in SEQUENCES},
    )


def adc_inputs(params, dicom_database=None) -> Tuple[list, list]:
    """(DWI volumes, b-values) the ADC is fitted from, ([], []) when the ADC map is chosen;
    InputError when there is no ADC source, both, or an ADC map that is none."""
    dwi_given = params.dwiSequence is not None or bool(present(params.dwiVolumes))
    if params.adcVolume is not None and dwi_given:
        raise InputError("select either an ADC map or DWI (sequence or volumes), not both")
    if params.adcVolume is None and not dwi_given:
        raise InputError("select an ADC map, or DWI (a multi-b sequence or one volume per b-value) to fit one")
    problem = adc_map_problem(params.adcVolume, dicom_database)
    if problem:
        raise InputError(problem)
    if not dwi_given:
        return [], []
    dwi, bvalues, _ = dwi_inputs(params.dwiSequence, params.dwiVolumes, params.bvalues)
    return dwi, bvalues


def present(nodes) -> list:
    """The nodes of a node-list parameter still there: Slicer's list serializer keeps a None
    for a node deleted from the scene."""
    return [node for node in (nodes or ()) if node is not None]


def apply_blocker(params, dicom_database=None) -> str:
    """Why Apply cannot run yet (a sentence for the button's tooltip), or "" when it can.
    b-values are not checked here: the DWI summary line says what is wrong with them."""
    if params is None:
        return "No parameter node."
    if params.segmentation is None:
        return "Select the segmentation with the lesion and normal-marrow ROIs."
    return adc_blocker(params, dicom_database)


def adc_blocker(params, dicom_database=None) -> str:
    """Why the ADC inputs cannot be used yet (a sentence), or "" when they can."""
    dwi_given = params.dwiSequence is not None or bool(present(params.dwiVolumes))
    if params.adcVolume is None and not dwi_given:
        return "Select an ADC map, or DWI (a multi-b sequence or volumes) to fit one."
    if params.adcVolume is not None and dwi_given:
        return "Select either an ADC map or DWI, not both."
    if params.dwiSequence is not None and present(params.dwiVolumes):
        return "Select either a DWI sequence or DWI volumes, not both."
    problem = adc_map_problem(params.adcVolume, dicom_database)
    if problem:
        return problem[0].upper() + problem[1:] + "."
    return ""


def dwi_summary(params) -> str:
    """One line for the panel under the DWI inputs: which b-value goes with which volume, or
    what is wrong; empty when no DWI is selected."""
    if params.dwiSequence is None and not present(params.dwiVolumes):
        return ""
    try:
        nodes, bvalues, source = dwi_inputs(params.dwiSequence, params.dwiVolumes, params.bvalues)
    except InputError as error:
        return f"DWI: {error}"
    pairs = "; ".join(f"b={b:g}: {node.GetName()}" for node, b in zip(nodes, bvalues))
    return f"DWI, {len(nodes)} volumes, b-values from {source} (s/mm^2): {pairs}"
