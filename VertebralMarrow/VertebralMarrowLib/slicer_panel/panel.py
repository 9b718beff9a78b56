"""What the Slicer panel decides, without Qt or the Slicer application: the one import of
the module's widget and logic (VertebralMarrow.py), gathered from the modules that hold each
concept, so that everything they decide can be tested on real MRML nodes:

- parameters.py: the study and the options from the panel's parameter values; why Apply
  cannot run yet; the DWI summary line (DWI resolution itself: inputs/nodes.py);
- series.py: which volume is which by its series name; the ADC-map guard;
- dicom_out.py: which volume is which by its DICOM header; the last analysis as DICOM SEG, SR
  and parametric map, added to Slicer's DICOM database;
- roles.py: the segment-roles table (roles, levels, disc state as segment tags);
- publish.py: a result as table, colour, overlay and ADC-map nodes; the private copy for export;
- display.py: slice-view layers, lesion segments coloured by class, centring on a lesion;
- differential_text.py: the differential as the panel's text box shows it; the citations;
- self_test.py: the small study the module's self-test analyses, with its answers.

The "Whole spine" and "Follow-up" sections have their own namespaces, imported beside this
one: spine.py (labels, settings, table, tier overlay, summary, report folder) and followup.py
(baseline, comparison, table, summary, report folder).

Like the rest of VertebralMarrowLib it imports no Qt and never touches slicer.app,
slicer.mrmlScene or slicer.modules.
"""

from __future__ import annotations

from ..inputs.nodes import bvalue_from_name, dwi_inputs, expanded_frames
from ..outputs.nodes import ADC_COLORS_ATTRIBUTE, ADC_MAP_ATTRIBUTE, CLASS_COLORS
from .differential_text import citations, differential_html
from .display import (
    ORIGINAL_COLOR_TAG,
    background_volume,
    column_headers,
    foreground_volume_ids,
    layers_state,
    lesion_center_ras,
    original_segment_color,
    overlay_colors,
    plots_note,
    restore_segment_colors,
    set_overlay_palette,
    slice_layers,
    update_segment_colors,
)
from .parameters import (
    ADC_UNIT_CHOICES,
    FIT_METHOD_CHOICES,
    apply_blocker,
    criteria_file,
    dwi_summary,
    options_from_parameters,
    present,
    study_from_parameters,
)
from .publish import DOCUMENT_ATTRIBUTE, Published, export_copy, lesion_names, publish, result_from_table
from .roles import DISC_CHOICES, ROLE_CHOICES, segment_role_rows, segment_spread, set_role, set_spread
from .self_test import SELF_TEST_ADC, SELF_TEST_BVALUES, self_test_study

__all__ = [
    "bvalue_from_name",
    "dwi_inputs",
    "expanded_frames",
    "ADC_COLORS_ATTRIBUTE",
    "ADC_MAP_ATTRIBUTE",
    "CLASS_COLORS",
    "citations",
    "differential_html",
    "ORIGINAL_COLOR_TAG",
    "background_volume",
    "column_headers",
    "foreground_volume_ids",
    "layers_state",
    "lesion_center_ras",
    "original_segment_color",
    "overlay_colors",
    "plots_note",
    "restore_segment_colors",
    "set_overlay_palette",
    "slice_layers",
    "update_segment_colors",
    "ADC_UNIT_CHOICES",
    "FIT_METHOD_CHOICES",
    "apply_blocker",
    "criteria_file",
    "dwi_summary",
    "options_from_parameters",
    "present",
    "study_from_parameters",
    "DOCUMENT_ATTRIBUTE",
    "Published",
    "export_copy",
    "lesion_names",
    "publish",
    "result_from_table",
    "DISC_CHOICES",
    "ROLE_CHOICES",
    "segment_role_rows",
    "segment_spread",
    "set_role",
    "set_spread",
    "SELF_TEST_ADC",
    "SELF_TEST_BVALUES",
    "self_test_study",
]
