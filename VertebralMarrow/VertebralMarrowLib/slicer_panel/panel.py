"""What the Slicer panel decides, without Qt or the Slicer application.

The module's widget and logic (VertebralMarrow.py) are thin callers of these functions, so
everything they decide can be tested here on real MRML nodes:

- the study and the options from the panel's parameter values (any object with the
  parameter node's attribute names: the `@parameterNodeWrapper` instance inside Slicer);
- DWI inputs: a sequence node, a list of volumes or a diffusion-weighted volume node, with
  their b-values from the text field, the sequence's index values or the volume names;
- the segment-roles table (rows read from, roles written to segment tags);
- publishing a result as table, class colors, overlay and continuous ADC map nodes, reusing
  the nodes of the previous run; the table carries the whole result document (JSON
  attribute), so the differential shown in the panel survives a scene save and reload;
- the slice-view layers the display choices ask for (overlay as label layer, ADC map as
  foreground), and lesion segments coloured by class on request, their own colours kept in a
  segment tag so that turning it off gives them back;
- the differential as HTML for the panel's text box, with its reasons and the disclaimer;
- a private copy of a study and result for export, so writing the report folder never
  changes the user's scene (its URL, storage nodes, added nodes);
- the small study the module's self-test analyses, with the answers it must give.

Like the rest of VertebralMarrowLib it imports no Qt and never touches slicer.app,
slicer.mrmlScene or slicer.modules.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import slicer
import vtk

from .. import DISCLAIMER
from ..analysis import AnalysisResult, StudyNodes
from ..core.classes import BY_KEY
from ..core.criteria import Options
from ..core.differential import is_number, likelihood_word
from ..errors import InputError
from ..mrml import (
    HeadlessApp,
    ROLE_TAG,
    ROLES,
    array_of,
    get_segment_role,
    ijk_to_ras_of,
    new_scene,
    segment_ids,
    segment_name,
    segmentation_from_labelmap,
    set_ijk_to_ras,
    set_segment_role,
    volume_from_array,
)
from ..outputs.nodes import (
    ADC_COLORS_ATTRIBUTE,
    ADC_MAP_ATTRIBUTE,  # noqa: F401  the widget filters its ADC-map selector by it
    CLASS_COLORS_ATTRIBUTE,
    CLASS_COLORS,
    adc_color_node,
    adc_map_node,
    class_color_node,
    color_segments_by_class,
    overlay_node,
    segment_class_colors,
)
from ..outputs.table import result_document, results_table_node
from ..inputs.study import parse_bvalues

ADC_UNIT_CHOICES = ("auto", "mm2/s", "1e-3", "1e-6")
FIT_METHOD_CHOICES = ("iwls", "ols")
ROLE_CHOICES = ROLES

DOCUMENT_ATTRIBUTE = "VertebralMarrow.Result"      # on the results table: result_document() as JSON
ORIGINAL_COLOR_TAG = "VertebralMarrow.OriginalColor"  # segment tag: "r g b" before colouring by class

# The text of the panel's DWI b-values field may be empty: then the b-values come from the
# sequence's index values or from the volume names ("DWI b=800", "dwi_b0800", "b800").
_BVALUE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])b\s*[=_-]?\s*(\d+(?:\.\d+)?)(?![0-9.])", re.IGNORECASE)
_BVALUE_INDEX_NAMES = ("b-value", "bvalue", "b value", "b_value", "diffusionbvalue")
_BVALUE_INDEX_UNITS = ("s/mm2", "s/mm^2", "s/mm²", "s mm-2")


# --- the study and the options from the panel's parameters --------------------------------


def options_from_parameters(params) -> Options:
    """The analysis options from the panel's values. b-value limits of 0 mean 'no limit'
    (the spin boxes show 'all' there).

    A criteria file of the user's own (criteriaFile; empty: the built-in criteria.json)
    supplies the entity tables, the differential's factors and the references; the numbers
    the panel sets (cut-off, band, signal thresholds, minimum voxels, CT sclerotic threshold)
    always come from the panel, overriding the file's."""
    return Options(
        adc_cutoff=float(params.cutoff),
        indeterminate_band=float(params.indeterminateBand),
        signal_low_below=float(params.signalLowBelow),
        signal_high_above=float(params.signalHighAbove),
        min_voxels=int(params.minVoxels),
        ct_sclerotic_min_hu=float(params.ctScleroticHu),
        adc_units=str(params.adcUnits),
        fit_method=str(params.fitMethod),
        bmin=_limit(params.bmin),
        bmax=_limit(params.bmax),
        criteria_path=criteria_file(params.criteriaFile),
    )


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


def study_from_parameters(params) -> StudyNodes:
    """The study's nodes from the panel's selections; segment roles come from the segment tags."""
    if params.segmentation is None:
        raise InputError("select the segmentation that holds the lesion and normal-marrow ROIs")
    dwi_given = params.dwiSequence is not None or len(list(params.dwiVolumes or ())) > 0
    if params.adcVolume is not None and dwi_given:
        raise InputError("select either an ADC map or DWI (sequence or volumes), not both")
    if params.adcVolume is None and not dwi_given:
        raise InputError("select an ADC map, or DWI (a multi-b sequence or one volume per b-value) to fit one")
    dwi, bvalues = ([], [])
    if dwi_given:
        dwi, bvalues, _ = dwi_inputs(params.dwiSequence, params.dwiVolumes, params.bvalues)
    return StudyNodes(
        segmentation=params.segmentation,
        adc=params.adcVolume,
        dwi=dwi,
        bvalues=bvalues,
        t1=params.t1Volume,
        t2=params.t2Volume,
        fs=params.fsVolume,
        ct=params.ctVolume,
    )


# --- DWI inputs ---------------------------------------------------------------------------


def dwi_inputs(sequence=None, volumes: Sequence = (), bvalues_text: str = "") -> Tuple[list, List[float], str]:
    """DWI volume nodes, their b-values (s/mm^2) and where the b-values came from.

    `sequence`: a sequence node of scalar volumes; `volumes`: scalar volume nodes (one per
    b-value) and/or diffusion-weighted volume nodes (expanded into one volume per gradient,
    with their own b-values). b-values come from `bvalues_text` ("0,50,400,800", in the order
    of the volumes) when it is not empty, else from the sequence's index values when they are
    b-values, else from the volume names.
    """
    volumes = [node for node in (volumes or ()) if node is not None]
    if sequence is not None and volumes:
        raise InputError("select either a DWI sequence or DWI volumes, not both")
    text = (bvalues_text or "").strip()
    if sequence is not None:
        nodes = [sequence.GetNthDataNode(i) for i in range(sequence.GetNumberOfDataNodes())]
        bad = [node.GetClassName() for node in nodes if node is None or not node.IsA("vtkMRMLScalarVolumeNode")]
        if bad:
            raise InputError(f"DWI sequence '{sequence.GetName()}' holds {bad[0]} items; it must hold scalar volumes")
        own, source = _sequence_bvalues(sequence), f"the index values of sequence '{sequence.GetName()}'"
    else:
        nodes, own = [], []
        for node in volumes:
            if node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
                expanded, values = _expand_diffusion_weighted(node)
                nodes += expanded
                own += values
            else:
                nodes.append(node)
                own.append(None)
        source = "the diffusion-weighted volume"
    if len(nodes) < 2:
        raise InputError(f"an ADC fit needs DWI at two or more b-values; {len(nodes)} volume(s) selected")
    if text:
        values = parse_bvalues(text)
        if len(values) != len(nodes):
            raise InputError(
                f"{len(nodes)} DWI volumes but {len(values)} b-values in '{text}'; give one b-value per volume, "
                f"in the order {', '.join(node.GetName() for node in nodes)}"
            )
        return nodes, values, "the b-values field"
    if own and all(value is not None for value in own):
        return nodes, [float(v) for v in own], source
    named = [bvalue_from_name(node.GetName()) for node in nodes]
    if all(value is not None for value in named):
        return nodes, named, "the volume names"
    missing = [node.GetName() for node, value in zip(nodes, named) if value is None]
    raise InputError(
        f"no b-value for DWI volume(s) {', '.join(missing)}: type the b-values (e.g. 0,50,400,800) in the order "
        f"{', '.join(node.GetName() for node in nodes)}"
    )


def bvalue_from_name(name: str) -> Optional[float]:
    """The b-value a volume's name carries ('DWI b=800', 'dwi_b0800', 'B800'), else None."""
    found = _BVALUE_IN_NAME.findall(name or "")
    return float(found[-1]) if len(found) >= 1 else None


def _sequence_bvalues(sequence) -> List[Optional[float]]:
    name = (sequence.GetIndexName() or "").strip().lower()
    unit = (sequence.GetIndexUnit() or "").strip().lower().replace(" ", "")
    says_b = any(key in name for key in _BVALUE_INDEX_NAMES) or unit in _BVALUE_INDEX_UNITS
    count = sequence.GetNumberOfDataNodes()
    if not says_b:
        return [None] * count
    values = []
    for i in range(count):
        try:
            values.append(float(sequence.GetNthIndexValue(i)))
        except ValueError:
            values.append(None)
    return values


def _expand_diffusion_weighted(node) -> Tuple[list, List[float]]:
    """One scalar volume per gradient of a diffusion-weighted volume node (outside any
    scene: only their voxels and geometry are used), with the node's b-values."""
    array = array_of(node)
    count = node.GetNumberOfGradients()
    if array.ndim != 4 or array.shape[-1] != count:
        raise InputError(f"diffusion-weighted volume '{node.GetName()}' has {count} gradients but its voxels do not match")
    grid = ijk_to_ras_of(node)
    volumes = []
    for index in range(count):
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetName(f"{node.GetName()} b={node.GetBValue(index):g} #{index}")
        set_ijk_to_ras(volume, grid)
        slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(array[..., index]))
        volumes.append(volume)
    return volumes, [float(node.GetBValue(index)) for index in range(count)]


def apply_blocker(params) -> str:
    """Why Apply cannot run yet (a sentence for the button's tooltip), or "" when it can.
    b-values are not checked here: the DWI summary line says what is wrong with them."""
    if params is None:
        return "No parameter node."
    if params.segmentation is None:
        return "Select the segmentation with the lesion and normal-marrow ROIs."
    dwi_given = params.dwiSequence is not None or len(list(params.dwiVolumes or ())) > 0
    if params.adcVolume is None and not dwi_given:
        return "Select an ADC map, or DWI (a multi-b sequence or volumes) to fit one."
    if params.adcVolume is not None and dwi_given:
        return "Select either an ADC map or DWI, not both."
    if params.dwiSequence is not None and list(params.dwiVolumes or ()):
        return "Select either a DWI sequence or DWI volumes, not both."
    return ""


def citations() -> List[str]:
    """The published sources of the criteria, for the module's acknowledgement text."""
    from ..core.criteria import load_criteria

    references = load_criteria()["references"]
    return [text for key, text in references.items() if key != "project"]


def dwi_summary(params) -> str:
    """One line for the panel under the DWI inputs: which b-value goes with which volume, or
    what is wrong; empty when no DWI is selected."""
    if params.dwiSequence is None and not list(params.dwiVolumes or ()):
        return ""
    try:
        nodes, bvalues, source = dwi_inputs(params.dwiSequence, params.dwiVolumes, params.bvalues)
    except InputError as error:
        return f"DWI: {error}"
    pairs = "; ".join(f"b={b:g}: {node.GetName()}" for node, b in zip(nodes, bvalues))
    return f"DWI, {len(nodes)} volumes, b-values from {source} (s/mm^2): {pairs}"


# --- segment roles ------------------------------------------------------------------------


def segment_role_rows(segmentation_node) -> List[Tuple[str, str, str]]:
    """(segment id, name, role) per segment, in the segmentation's order: the rows of the
    panel's roles table. The role is the segment's tag, else what its name suggests."""
    if segmentation_node is None:
        return []
    return [(sid, segment_name(segmentation_node, sid), get_segment_role(segmentation_node, sid))
            for sid in segment_ids(segmentation_node)]


def set_role(segmentation_node, segment_id: str, role: str) -> bool:
    """Store a role as the segment's tag (saved with the scene); False when it was already so."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment '{segment_id}' is not in '{segmentation_node.GetName()}'")
    if segment.HasTag(ROLE_TAG) and get_segment_role(segmentation_node, segment_id) == role:
        return False
    set_segment_role(segmentation_node, segment_id, role)
    return True


# --- publishing a result ------------------------------------------------------------------


@dataclasses.dataclass
class Published:
    table: object
    colors: object
    overlay: object
    adc_map: object = None
    adc_colors: object = None


def publish(scene, result: AnalysisResult, table=None, overlay=None, adc_map=None,
            segmentation=None, color_segments: bool = False) -> Published:
    """The result as nodes in `scene`: the results table (carrying the result document as a
    JSON attribute), the class color table, the overlay labelmap on the ADC grid, and the ADC
    map in 10^-3 mm^2/s with a continuous colour table centred on the cut-off. Nodes of a
    previous run (`table`, `overlay`, `adc_map`, the two color tables) are reused and updated.

    `segmentation` (the analysed one): with `color_segments` its lesion segments take their
    class colour, their own colours kept in a segment tag; without, segments coloured by an
    earlier run get their own colours back (see update_segment_colors)."""
    colors = class_color_node(scene, _class_colors(scene, overlay))
    table = results_table_node(scene, result, table)
    table.SetAttribute(DOCUMENT_ATTRIBUTE, json.dumps(result_document(result), default=_json_default))
    overlay = overlay_node(scene, result, colors, overlay)
    adc_colors = adc_color_node(scene, _tagged_color_node(scene, adc_map, ADC_COLORS_ATTRIBUTE))
    adc_map = adc_map_node(scene, result, adc_colors, _reusable_adc_map(adc_map, result))
    if segmentation is not None:
        update_segment_colors(segmentation, result, color_segments)
    return Published(table, colors, overlay, adc_map, adc_colors)


def _class_colors(scene, overlay):
    return _tagged_color_node(scene, overlay, CLASS_COLORS_ATTRIBUTE)


def _tagged_color_node(scene, volume, attribute: str):
    """The color table of an earlier run: the one `volume` shows, else the first in the scene
    carrying `attribute`; None when there is none (a new one is made)."""
    if volume is not None and volume.GetDisplayNode() is not None:
        color = volume.GetDisplayNode().GetColorNode()
        if color is not None and color.GetAttribute(attribute) == "1":
            return color
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(attribute) == "1":
            return node
    return None


def _reusable_adc_map(node, result: AnalysisResult):
    """The ADC map node to update: never the analysed ADC map itself (scanner or fitted) nor a
    labelmap; those get a new node beside them."""
    if node is None or node is result.adc_node or node.IsA("vtkMRMLLabelMapVolumeNode"):
        return None
    return node


# --- what the slice views show ------------------------------------------------------------


def slice_layers(params, scene) -> dict:
    """Keyword arguments for slicer.util.setSliceViewerLayers from the panel's display
    choices: the overlay as the label layer (None when hidden) at its opacity, and the
    continuous ADC map as the foreground layer at its opacity when asked. When not asked the
    foreground is cleared only if it shows this ADC map, so a foreground the user chose stays.
    Layers without an output node yet (before Apply) are left as they are: {} for none."""
    layers = {}
    overlay = params.overlayVolume
    if overlay is not None:
        layers["label"] = overlay if params.showOverlay else None
        layers["labelOpacity"] = float(params.overlayOpacity)
    adc_map = params.adcMapVolume
    if adc_map is not None and params.showAdcColorMap:
        layers["foreground"] = adc_map
        layers["foregroundOpacity"] = float(params.adcColorMapOpacity)
    elif adc_map is not None and adc_map.GetID() in foreground_volume_ids(scene):
        layers["foreground"] = None
    return layers


def foreground_volume_ids(scene) -> List[str]:
    """The foreground volume of every slice view of `scene` (its slice composite nodes)."""
    ids = []
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(nodes.GetNumberOfItems()):
        node_id = nodes.GetItemAsObject(index).GetForegroundVolumeID()
        if node_id:
            ids.append(node_id)
    return ids


def layers_state(layers: dict) -> tuple:
    """What `slice_layers` asks for, comparable between calls (node IDs, rounded opacities),
    so the views are set only when a choice changed."""
    def value(item):
        if hasattr(item, "GetID"):
            return item.GetID()
        return round(float(item), 3) if isinstance(item, float) else item
    return tuple(sorted((key, value(item)) for key, item in layers.items()))


# --- lesion segments coloured by class ----------------------------------------------------


def update_segment_colors(segmentation_node, result: Optional[AnalysisResult], by_class: bool) -> List[str]:
    """Colour lesion segments by class, or give them back their own colours; the ids of the
    segments whose colour was set.

    by_class with a result: each lesion segment with a class (the result's segments still in
    the segmentation under the same id and name) keeps its own colour in a segment tag (saved
    with the scene; once, so later runs do not overwrite it) and takes its class colour; any
    other segment coloured earlier gets its own colour back. Not by_class: every segment with
    a kept colour gets it back (see restore_segment_colors). by_class without a result (before
    Apply, after a scene reload): nothing to colour by, nothing changes."""
    if segmentation_node is None:
        return []
    if not by_class:
        return restore_segment_colors(segmentation_node)
    if result is None:
        return []
    colors = segment_class_colors(segmentation_node, result)
    restored = restore_segment_colors(segmentation_node, keep=colors)
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in colors:
        segment = segmentation.GetSegment(segment_id)
        if not segment.HasTag(ORIGINAL_COLOR_TAG):
            segment.SetTag(ORIGINAL_COLOR_TAG, " ".join(repr(float(c)) for c in segment.GetColor()))
    return restored + color_segments_by_class(segmentation_node, result)


def restore_segment_colors(segmentation_node, keep=()) -> List[str]:
    """Segments coloured by class (those with the original-colour tag, but the ids in `keep`)
    get their own colour back and lose the tag; the ids recoloured. A segment the user
    recoloured since (its colour is no class colour) keeps the user's colour."""
    restored = []
    if segmentation_node is None:
        return restored
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        if segment_id in keep or not segment.HasTag(ORIGINAL_COLOR_TAG):
            continue
        original = original_segment_color(segmentation_node, segment_id)
        if original is not None and _is_class_color(segment.GetColor()):
            segment.SetColor(*original)
            restored.append(segment_id)
        segment.RemoveTag(ORIGINAL_COLOR_TAG)
    return restored


def original_segment_color(segmentation_node, segment_id: str) -> Optional[Tuple[float, float, float]]:
    """The colour a segment had before it was coloured by class, or None (not coloured by
    class, or an unreadable tag)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.mutable("")
    if segment is None or not segment.GetTag(ORIGINAL_COLOR_TAG, value):
        return None
    try:
        rgb = tuple(float(part) for part in str(value).split())
    except ValueError:
        return None
    return rgb if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb) else None


def _is_class_color(rgb, tolerance: float = 1e-3) -> bool:
    return any(all(abs(float(a) - b) <= tolerance for a, b in zip(rgb, rgba[:3]))
               for value, (_, rgba) in CLASS_COLORS.items() if value != 0)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def result_from_table(table_node) -> Optional[dict]:
    """The result document a published table carries, or None (no table, or not ours)."""
    if table_node is None:
        return None
    text = table_node.GetAttribute(DOCUMENT_ATTRIBUTE)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def lesion_names(document: Optional[dict]) -> List[str]:
    """The lesion rows' segment names, in table order."""
    if not document:
        return []
    return [row["segment"] for row in document.get("rows", []) if row.get("role") == "lesion"]


def background_volume(display_volume, result: AnalysisResult):
    """The slice views' background under the overlay: the chosen display volume, else the
    ADC map the overlay was computed on."""
    return display_volume if display_volume is not None else result.adc_node


# --- the differential as the panel shows it -----------------------------------------------


def differential_html(document: Optional[dict], segment: Optional[str]) -> str:
    """HTML for the panel's differential box: the segment's measurements, its ranked
    differential with the reasons for and against each entity, warnings, and the disclaimer."""
    disclaimer = (document or {}).get("disclaimer") or DISCLAIMER
    foot = f"<p><i>{_e(disclaimer)}</i></p>"
    if not document:
        return "<p>No results yet: choose the inputs and press Apply.</p>" + foot
    rows = {row["segment"]: row for row in document.get("rows", [])}
    if not segment or segment not in rows:
        return "<p>Choose a lesion to see its differential.</p>" + foot
    row = rows[segment]
    detail = document.get("segments", {}).get(segment, {})
    cutoff = document.get("criteria", {}).get("adc_cutoff", {}).get("value")
    parts = [f"<h3>{_e(segment)}</h3>", f"<p>{_measurements(row, cutoff)}</p>"]
    candidates = detail.get("differential") or []
    if row.get("role") != "lesion":
        parts.append(f"<p>{_e(segment)} has the role <b>{_e(row.get('role', ''))}</b>: no differential is ranked for it.</p>")
    elif not candidates:
        parts.append("<p>No differential was ranked for this lesion.</p>")
    else:
        if detail.get("differential_summary"):
            parts.append(f"<p>{_e(detail['differential_summary'])}</p>")
        parts.append("<p><b>Differential</b> (the entities of the clinical reference, most likely first, in words: "
                     "favoured, possible, less likely; not a probability of disease):</p><ol>")
        for candidate in candidates:
            item = f"<li><b>{_e(candidate.get('label', candidate.get('entity', '')))}</b> ({_e(likelihood_word(candidate))})"
            if candidate.get("fits"):
                item += "<br/>for: " + _e("; ".join(candidate["fits"]))
            if candidate.get("contradicts"):
                item += "<br/>against: " + _e("; ".join(candidate["contradicts"]))
            for key, title in (("excluded", "argued against"), ("not_excluded", "not excluded"), ("to_settle", "would settle it")):
                if candidate.get(key):
                    item += f"<br/>{title}: " + _e("; ".join(candidate[key]))
            parts.append(item + "</li>")
        parts.append("</ol>")
    warnings = [w for w in document.get("warnings", []) if segment in w or "ROI '" not in w]
    if warnings:
        parts.append("<p><b>Warnings</b>:</p><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    adc = document.get("adc", {})
    if adc.get("source"):
        parts.append(f"<p>ADC: {_e(adc['source'])}; units {_e(adc.get('units', ''))}.</p>")
    return "".join(parts) + foot


def _measurements(row: dict, cutoff) -> str:
    words = []
    mean = row.get("adc_mean")
    if is_number(mean):
        text = f"Mean ADC {mean:.2f} x 10^-3 mm^2/s"
        adc_class = row.get("adc_class")
        if adc_class in BY_KEY and is_number(cutoff):
            text += f": {BY_KEY[adc_class].label} (cut-off {cutoff:g})"
        words.append(text)
    if is_number(row.get("volume_ml")):
        words.append(f"{row['volume_ml']:.2f} mL, {row.get('n_voxels_adc', 0)} ADC voxels")
    signals = [f"{label} {row.get(key)}" for key, label in (("t1_signal", "T1"), ("t2_signal", "T2"), ("fs_signal", "FS-T2/STIR"))
               if row.get(key) not in (None, "", "n/a")]
    if signals:
        words.append(", ".join(signals) + " (relative to normal marrow)")
    if is_number(row.get("ct_mean_hu")):
        words.append(f"CT {row['ct_mean_hu']:.0f} HU")
    return _e(". ".join(words) + ".") if words else ""


def _e(text) -> str:
    return html.escape(str(text), quote=False)


# --- a private copy for export ------------------------------------------------------------


def export_copy(study: StudyNodes, result: AnalysisResult) -> Tuple[HeadlessApp, StudyNodes, AnalysisResult]:
    """The study and result copied into a new headless scene, for writing the report folder:
    the export adds nodes, storage nodes and a scene URL, none of which may land in the
    user's scene. Linear parent transforms come along (one transform node per distinct
    transform to world); a non-linear one must be hardened first."""
    app = new_scene()
    scene = app.scene
    copies: Dict[str, object] = {}
    transforms: Dict[Tuple[float, ...], object] = {}

    def transform_for(node):
        parent = node.GetParentTransformNode()
        if parent is None:
            return None
        if not parent.IsTransformToWorldLinear():
            raise InputError(f"'{node.GetName()}' is under a non-linear transform; harden it before exporting the report")
        matrix = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(matrix)
        key = tuple(round(matrix.GetElement(r, c), 9) for r in range(4) for c in range(4))
        if key not in transforms:
            copy = slicer.vtkMRMLLinearTransformNode()
            copy.SetName(parent.GetName())
            scene.AddNode(copy)
            copy.SetMatrixTransformToParent(matrix)
            transforms[key] = copy
        return transforms[key]

    def copy_volume(node):
        if node is None:
            return None
        key = node.GetID() or str(id(node))
        if key not in copies:
            copy = volume_from_array(scene, np.array(array_of(node)), ijk_to_ras_of(node), node.GetName(),
                                     labelmap=node.IsA("vtkMRMLLabelMapVolumeNode"))
            for name in node.GetAttributeNames() or ():
                copy.SetAttribute(name, node.GetAttribute(name))
            transform = transform_for(node)
            if transform is not None:
                copy.SetAndObserveTransformNodeID(transform.GetID())
            copies[key] = copy
        return copies[key]

    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName(study.segmentation.GetName())
    scene.AddNode(segmentation)
    segmentation.GetSegmentation().DeepCopy(study.segmentation.GetSegmentation())
    segmentation.CreateDefaultDisplayNodes()
    transform = transform_for(study.segmentation)
    if transform is not None:
        segmentation.SetAndObserveTransformNodeID(transform.GetID())

    copied = StudyNodes(
        segmentation=segmentation,
        adc=copy_volume(study.adc),
        dwi=[copy_volume(node) for node in study.dwi],
        bvalues=list(study.bvalues),
        t1=copy_volume(study.t1), t2=copy_volume(study.t2), fs=copy_volume(study.fs), ct=copy_volume(study.ct),
        in_phase=copy_volume(study.in_phase), opposed_phase=copy_volume(study.opposed_phase),
        fat_fraction=copy_volume(study.fat_fraction),
        roles=dict(study.roles),
    )
    return app, copied, dataclasses.replace(result, adc_node=copy_volume(result.adc_node))


# --- the module self-test's study ---------------------------------------------------------

SELF_TEST_ADC = {"L2 lesion": 0.80, "L4 lesion": 1.80, "L3 normal": 0.40}  # 10^-3 mm^2/s
SELF_TEST_BVALUES = (0.0, 50.0, 400.0, 800.0)


def self_test_study(scene, app: Optional[HeadlessApp], dwi: bool = False) -> Tuple[StudyNodes, dict]:
    """A small study built in code, and what its analysis must give.

    ADC (or noise-free DWI, S = 1000 exp(-b ADC)) on a 24^3 grid of 2 mm voxels; T1, T2 and
    FS-T2 on a 1 mm grid shifted by half a voxel; three 6^3-voxel ROIs: 'L2 lesion' (ADC
    0.80, T1 low, T2 and FS high: malignant-range), 'L4 lesion' (ADC 1.80, T1, T2 and FS
    high: benign-range, haemangioma first) and 'L3 normal' (the reference, by its name).
    """
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = -0.5
    boxes = {"L2 lesion": (slice(2, 8), slice(2, 8), slice(2, 8)),
             "L4 lesion": (slice(2, 8), slice(14, 20), slice(2, 8)),
             "L3 normal": (slice(14, 20), slice(2, 8), slice(2, 8))}
    labels = np.zeros((24, 24, 24), np.uint8)
    adc = np.full((24, 24, 24), 1.2, np.float32)
    for value, (name, box) in enumerate(boxes.items(), 1):
        labels[box] = value
        adc[box] = SELF_TEST_ADC[name]
    ratios = {"L2 lesion": (0.4, 1.4, 3.0), "L4 lesion": (1.35, 1.6, 3.0), "L3 normal": (1.0, 1.0, 1.0)}
    normal = {"t1": 400.0, "t2": 300.0, "fs": 60.0}
    signal = {}
    for column, key in enumerate(("t1", "t2", "fs")):
        image = np.full((48, 48, 48), normal[key], np.float32)
        for name, box in boxes.items():
            image[tuple(slice(2 * s.start, 2 * s.stop) for s in box)] = normal[key] * ratios[name][column]
        signal[key] = volume_from_array(scene, image, fine, f"self-test {key.upper()}")

    labelmap = volume_from_array(scene, labels, coarse, "self-test ROIs", labelmap=True)
    segmentation = segmentation_from_labelmap(scene, app, labelmap, dict(enumerate(boxes, 1)), "self-test ROIs")
    display = labelmap.GetDisplayNode()
    if display is not None and display.GetColorNode() is not None and not display.GetColorNode().GetSingletonTag():
        scene.RemoveNode(display.GetColorNode())
    scene.RemoveNode(labelmap)

    study = StudyNodes(segmentation=segmentation, t1=signal["t1"], t2=signal["t2"], fs=signal["fs"])
    if dwi:
        study.dwi = [volume_from_array(scene, (1000.0 * np.exp(-b * adc / 1000.0)).astype(np.float32), coarse,
                                       f"self-test DWI b={b:g}") for b in SELF_TEST_BVALUES]
        study.bvalues = list(SELF_TEST_BVALUES)
    else:
        study.adc = volume_from_array(scene, adc, coarse, "self-test ADC")
    expected = {
        "rows": {"L2 lesion": ("lesion", "malignant"), "L4 lesion": ("lesion", "benign"), "L3 normal": ("reference", "reference")},
        "adc_mean": dict(SELF_TEST_ADC),
        "first_entity": {"L4 lesion": "hemangioma"},
        "n_voxels_adc": 216,
        "overlay_counts": {0: 24 ** 3 - 2 * 216, 1: 216, 3: 216},
        "signals": {"L2 lesion": ("low", "high", "high"), "L4 lesion": ("high", "high", "high")},
    }
    return study, expected
