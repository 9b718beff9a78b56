"""The analysis of one study: a plain function of its nodes and options, no global state.

Segments are exported onto each volume's own grid; ADC comes from a scanner map (units
decided or given) or is fitted from multi-b DWI; every ROI gets its ADC statistics, its
T1/T2/FS signal relative to normal marrow, CT attenuation, an ADC class and, for lesions, a
ranked differential. The same function serves the CLI, plain Python and the Slicer module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import DISCLAIMER, __version__
from .core.adc import decide_adc_units, fit_adc_volume, group_shells, select_bvalues, to_1e3
from .core.criteria import Options
from .core.differential import LesionFindings, rank_differential, summarize
from .errors import InputError
from .inputs.validate import check_study_nodes, check_unique_names
from .mrml import (
    SegmentsOnGrid,
    array_of,
    get_segment_role,
    get_segment_spread,
    ijk_to_ras_of,
    is_integer_volume,
    removed_if_it_fails,
    segment_ids,
    segment_name,
    segment_fractions_on_grid,
    segments_on_grid,
    volume_from_array,
    voxel_volume_mm3,
)
from .core.classes import CLASSES, OUTSIDE
from .core.sequences import SEQUENCES, SIGNAL_KEYS
from .core.stats import classify_signal, roi_means, roi_statistics, weighted_statistics
from .core.tiers import NO_DWI_SIGNAL_TEXT, paint_lesion, read_lesion

# Free water at body temperature is 3.0 x 10^-3 mm^2/s: a ROI mean far above it means the
# units are wrong, not that the tissue is unusual.
ADC_MAX_PLAUSIBLE = 4.0

OVERLAY_CLASSES = {c.code: c.label for c in CLASSES}


class AnalysisWarning(str):
    """A warning: its text (it is a str, so it prints and serialises as one), the segment it
    concerns ('' for the whole study) and its kind, for consumers that sort or filter them."""

    segment: str
    kind: str

    def __new__(cls, text: str, segment: str = "", kind: str = "study"):
        warning = super().__new__(cls, text)
        warning.segment, warning.kind = segment, kind
        return warning

    def as_dict(self) -> dict:
        return {"segment": self.segment, "kind": self.kind, "text": str(self)}


class Cancelled(Exception):
    """The user cancelled a running analysis."""


@dataclass
class StudyNodes:
    """The inputs of one study, as MRML nodes. Give `adc` (a scanner map) or `dwi` with
    `bvalues` (one volume per image; repeated b-values are combined into the trace)."""

    segmentation: object
    adc: Optional[object] = None
    dwi: Sequence[object] = ()
    bvalues: Sequence[float] = ()
    t1: Optional[object] = None
    t2: Optional[object] = None
    fs: Optional[object] = None
    ct: Optional[object] = None
    in_phase: Optional[object] = None
    opposed_phase: Optional[object] = None
    fat_fraction: Optional[object] = None
    roles: Dict[str, str] = field(default_factory=dict)  # segment name -> role, overrides tags
    # segment name -> (vertebral levels involved, disc destroyed), overrides the segment's tags
    spread: Dict[str, Tuple[Optional[int], Optional[bool]]] = field(default_factory=dict)


@dataclass
class AnalysisResult:
    rows: List[dict]                 # one per segment, the columns of results.csv
    segments: List[dict]             # per segment: id, name, role, voxel counts, reasons, ...
    adc_node: object                 # the ADC grid: the scanner map or the fitted map
    adc_map: np.ndarray              # (k, j, i) float32, 10^-3 mm^2/s, on adc_node's grid
    overlay: np.ndarray              # (k, j, i) uint8 voxel classes on the ADC grid
    adc_source: str
    adc_units: str
    bvalues_used: Optional[List[float]]
    adc_scale_to_1e3: float          # 10^-3 mm^2/s per stored unit of adc_node
    warnings: List[AnalysisWarning]
    options: Options
    inputs: Dict[str, str]
    rois_on_adc: SegmentsOnGrid      # the measured segments on the ADC grid, for pictures
    # the same on every other volume's grid, by node ID: pictures reuse them, never re-export
    rois_on_grids: Dict[str, SegmentsOnGrid] = field(default_factory=dict)
    # small ROIs measured on the voxels they partly cover: segment id -> flat ADC-grid indices
    partial_voxels: Dict[str, np.ndarray] = field(default_factory=dict)
    disclaimer: str = DISCLAIMER
    version: str = __version__

    @property
    def lesion_rows(self) -> List[dict]:
        return [row for row in self.rows if row["role"] == "lesion"]


def analyze(
    scene,
    study: StudyNodes,
    options: Optional[Options] = None,
    app=None,
    progress: Optional[Callable[[float, str], None]] = None,
    cancelled: Optional[Callable[[], bool]] = None,
) -> AnalysisResult:
    """Analyse one study. `app` is the headless app (mrml.new_scene) or None inside Slicer.
    Stopped half-way (bad input found late, or `cancelled()`), it leaves no node behind."""
    return removed_if_it_fails(scene, lambda made: _analyze(scene, study, options, app, progress, cancelled, made))


def _analyze(scene, study: StudyNodes, options: Optional[Options], app, progress, cancelled, made: list) -> AnalysisResult:
    if options is not None and not isinstance(options, Options):
        raise InputError(f"options must be VertebralMarrowLib Options, got {type(options).__name__}")
    check_study_nodes(study)
    resolved = (options or Options()).resolved()
    warnings: List[AnalysisWarning] = []

    def step(fraction: float, text: str) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled("analysis cancelled")
        if progress is not None:
            progress(fraction, text)

    segmentation = study.segmentation
    if segmentation is None or segmentation.GetSegmentation().GetNumberOfSegments() == 0:
        raise InputError("the segmentation has no segments; draw lesion and normal-marrow ROIs first")
    ids = segment_ids(segmentation)
    names = {sid: segment_name(segmentation, sid) for sid in ids}
    check_unique_names(list(names.values()), f"segmentation '{segmentation.GetName()}'")
    roles = _roles(segmentation, ids, names, study.roles, resolved.reference_segments)
    unknown = [name for name in list(study.roles) + list(study.spread) if name not in names.values()]
    if unknown:
        raise InputError(f"no segment named {', '.join(repr(n) for n in unknown)}; segments are: {', '.join(names.values())}")
    measured = [sid for sid in ids if roles[sid] != "ignore"]
    if not measured:
        raise InputError("every segment has the role 'ignore'; nothing to measure")

    step(0.05, "ADC")
    adc = load_adc(scene, study, resolved, warnings, step)
    adc_node, adc_map, adc_source, adc_units, bvalues_used, low_b = adc[:6]
    if adc_node is not study.adc:
        made.append(adc_node)  # the fitted map

    step(0.45, "ROIs on the ADC grid")
    on_adc = segments_on_grid(scene, app, segmentation, measured, adc_node)
    unmeasured: Dict[str, str] = {}
    _check_coverage(on_adc, _per_segment(on_adc, _centre_counts), names, "the ADC map", resolved.min_voxels, warnings, unmeasured)

    signal_means: Dict[str, Dict[str, tuple]] = {}
    on_grids: Dict[str, SegmentsOnGrid] = {}
    optional_volumes = [(s.key, getattr(study, s.key), s.label) for s in SEQUENCES]
    present = [entry for entry in optional_volumes if entry[1] is not None]
    for index, (key, node, label) in enumerate(present):
        step(0.5 + 0.3 * index / max(len(present), 1), f"ROIs on {label}")
        on_grid = on_grids[node.GetID()] = segments_on_grid(scene, app, segmentation, measured, node)
        values = array_of(node)
        means = _per_segment(on_grid, lambda labels: roi_means(values, labels))
        _check_coverage(on_grid, {sid: {"n": m[1]} for sid, m in means.items()}, names, label, resolved.min_voxels, warnings)
        signal_means[key] = means

    step(0.85, "classification and differential")
    if resolved.reference_segments:
        references = [sid for sid in measured if names[sid] in resolved.reference_segments]
    else:
        references = [sid for sid in measured if roles[sid] == "reference"]
    if not references:
        warnings.append(AnalysisWarning("no reference ROI of normal marrow (name one '... normal' or choose it as the "
                                        "reference): signal ratios are empty", kind="no_reference"))
    reference_mean = {key: _pooled_mean(means, references) for key, means in signal_means.items()}
    for role in ("disc", "muscle"):
        for key in SIGNAL_KEYS:
            reference_mean[f"{key}_{role}"] = _pooled_mean(signal_means.get(key, {}), [s for s in measured if roles[s] == role])

    # Voxels without DWI signal: no ADC value, or (fitted DWI) a lowest-b signal far below the
    # reference's. Inside a sclerotic lesion they are left out of its statistics and said so.
    no_signal = ~np.isfinite(adc_map)
    if low_b is not None and references:
        reference_low_b = _pooled_mean(_per_segment(on_adc, lambda labels: roi_means(low_b, labels)), references)
        if reference_low_b:
            fraction = resolved.criteria["overriding_signs"]["no_dwi_signal"]["b0_below_reference_fraction"]
            no_signal |= low_b < fraction * reference_low_b
    dense = {sid for sid in measured if roles[sid] == "lesion"
             and (signal_means.get("ct", {}).get(sid, (None, 0))[0] or -np.inf) >= resolved.ct_sclerotic_min_hu}
    stats_map = adc_map
    if dense:
        stats_map = adc_map.copy()
        stats_map[no_signal & _mask_of(on_adc, dense)] = np.nan
    adc_stats = _per_segment(on_adc, lambda labels: roi_statistics(stats_map, labels, resolved.adc_cutoff))
    no_signal_fraction = _per_segment(on_adc, lambda labels: _fraction_of(no_signal, labels))
    for sid in measured:
        # A lesion mostly without DWI signal (sclerosis, with or without a CT to say so): the few
        # voxels left are noise, not an ADC to average.
        if roles[sid] == "lesion" and no_signal_fraction.get(sid, 0.0) >= 0.5 and sid in adc_stats:
            adc_stats[sid] = {"n": 0, "n_nonfinite": adc_stats[sid].get("n", 0) + adc_stats[sid].get("n_nonfinite", 0)}
    partial = _measure_small_rois(scene, app, segmentation, adc_node, stats_map, adc_stats, on_adc, names,
                                  unmeasured, resolved, warnings)
    for sid, stats in adc_stats.items():
        if stats.get("n_nonfinite"):
            what = f": {NO_DWI_SIGNAL_TEXT}" if sid in dense else " (NaN, 0 in a scanner map, or not fitted)"
            warnings.append(AnalysisWarning(f"ROI '{names[sid]}': {stats['n_nonfinite']} voxels are without a value{what}; "
                                            "left out", names[sid], "no_value"))
    if len(unmeasured) == len(measured):
        raise InputError("no ROI can be measured on the ADC map: " + "; ".join(f"'{names[s]}' {why}" for s, why in unmeasured.items()))

    rows, details, readings = [], [], {}
    for sid in measured:
        spread = study.spread.get(names[sid]) or get_segment_spread(segmentation, sid)
        row, detail = _segment_result(
            sid, names[sid], roles[sid], adc_stats.get(sid, {}), adc_node, signal_means, reference_mean, spread, resolved,
            no_signal_fraction.get(sid, 0.0), list(bvalues_used or resolved.adc_bvalues or []) or None,
            _partial_words(partial.get(sid)),
        )
        if sid in partial:
            detail["partial_volume"] = {k: v for k, v in partial[sid].items() if k not in ("flat_indices", "fractions")}
            row["n_voxels_adc"] = detail["n_voxels"]["adc"] = partial[sid]["voxel_centres"]
            row["volume_ml"] = partial[sid]["covered_voxels"] * voxel_volume_mm3(adc_node) / 1000.0
        if sid in unmeasured:
            detail["unmeasured"] = unmeasured[sid]
            detail["tier"] = {"adc_class": "n/a", "deciding_sign": "no_adc", "text": f"not measured: {unmeasured[sid]}"}
        if "reading" in detail:
            readings[sid] = detail.pop("reading")
        rows.append(row)
        details.append(detail)
    _check_reference(rows, details, resolved, warnings)

    step(0.95, "overlay")
    overlay = _overlay(on_adc, readings, adc_map, resolved, partial)

    inputs = {key: node.GetName() for key, node, _ in optional_volumes if node is not None}
    inputs["segmentation"] = segmentation.GetName()
    if study.adc is not None:
        inputs["adc"] = study.adc.GetName()
    if study.dwi:
        inputs["dwi"] = ", ".join(node.GetName() for node in study.dwi)
    step(1.0, "done")
    return AnalysisResult(
        rows=rows, segments=details, adc_node=adc_node, adc_map=adc_map, overlay=overlay,
        adc_source=adc_source, adc_units=adc_units, bvalues_used=bvalues_used, adc_scale_to_1e3=adc.scale_to_1e3,
        warnings=warnings, options=resolved, inputs=inputs, rois_on_adc=on_adc, rois_on_grids=on_grids,
        partial_voxels={sid: info["flat_indices"] for sid, info in partial.items()},
    )


# --- steps --------------------------------------------------------------------------------


def _roles(segmentation, ids, names, given: Dict[str, str], reference_names: Sequence[str]) -> Dict[str, str]:
    """Each segment's role: given by name, else its tag, else its name; --reference segments
    are references whatever their tag says."""
    unknown = [name for name in reference_names if name not in names.values()]
    if unknown:
        raise InputError(f"reference segment {', '.join(unknown)}: no such segment; segments are: {', '.join(names.values())}",
                         field="reference_segments")
    roles = {}
    for sid in ids:
        if names[sid] in reference_names:
            roles[sid] = "reference"
        else:
            roles[sid] = given.get(names[sid]) or get_segment_role(segmentation, sid)
    return roles


class AdcInput(NamedTuple):
    """The ADC of a study in 10^-3 mm^2/s, on `node`'s grid, and where it came from."""
    node: object                      # the scanner map, or the fitted map's new node
    map: np.ndarray                   # (k, j, i) float32, NaN where there is no value
    source: str
    units: str                        # what was decided or given, in words
    bvalues: Optional[List[float]]    # the b-values fitted; None for a scanner map
    low_b: Optional[np.ndarray]       # the lowest-b image (fitted DWI), for the no-signal sign
    scale_to_1e3: float               # 10^-3 mm^2/s per stored unit of `node`


def load_adc(scene, study: StudyNodes, options: Options, warnings: List[AnalysisWarning], step) -> AdcInput:
    """The study's ADC: its scanner map in the units decided or given, or fitted from its DWI
    (b-values outside the options' limits left out, with a warning)."""
    if study.adc is not None and study.dwi:
        raise InputError("give either an ADC map or DWI volumes, not both")
    if study.adc is not None:
        raw = array_of(study.adc)
        decision = decide_adc_units(raw, is_integer_volume(study.adc), options.adc_units)
        adc_map = to_1e3(raw, decision.scale_to_1e3)
        # Scanners store "no value" (background, failed fit) as 0: no tissue has an ADC of 0.
        adc_map[raw == 0] = np.nan
        return AdcInput(study.adc, adc_map, "scanner ADC map", decision.how, None, None, decision.scale_to_1e3)
    if not study.dwi:
        raise InputError("no ADC input: give a scanner ADC map, or multi-b DWI with its b-values")
    adc_map, bvalues = fit_dwi_nodes(study.dwi, study.bvalues, options.fit_method, options.bmin, options.bmax,
                                     progress=lambda fraction, text: step(0.05 + 0.35 * fraction, text))
    grid = ijk_to_ras_of(study.dwi[0])
    adc_node = volume_from_array(scene, adc_map, grid, "ADC (fitted)")
    adc_node.SetAndObserveTransformNodeID(study.dwi[0].GetTransformNodeID())  # where the DWI really is
    adc_node.SetAttribute("VertebralMarrow.Units", "1e-3 mm2/s")
    dropped = sorted({float(b) for b in study.bvalues if (options.bmin is not None and b < options.bmin)
                      or (options.bmax is not None and b > options.bmax)})
    if dropped:
        warnings.append(AnalysisWarning(f"b-values left out of the fit: {', '.join(f'{b:g}' for b in dropped)} s/mm^2",
                                        kind="bvalues_dropped"))
    method = "iteratively reweighted log-linear least squares" if options.fit_method == "iwls" else "ordinary log-linear least squares"
    source = f"fitted from DWI (b = {', '.join(f'{b:g}' for b in bvalues)} s/mm^2; {method})"
    lowest = min(range(len(study.dwi)), key=lambda index: float(study.bvalues[index]))
    low_b = np.asarray(array_of(study.dwi[lowest]), np.float32)
    return AdcInput(adc_node, adc_map, source, "10^-3 mm^2/s (fitted)", bvalues, low_b, 1.0)


def fit_dwi_nodes(nodes: Sequence[object], bvalues: Sequence[float], method: str, bmin: Optional[float],
                  bmax: Optional[float], progress: Optional[Callable[[float, str], None]] = None):
    """ADC map (10^-3 mm^2/s, on the grid of nodes[0]) and the b-values (shells) used, from DWI
    nodes' own arrays: b-values outside [bmin, bmax] left out, images of one shell combined
    into the trace inside the fit."""
    if len(nodes) != len(bvalues):
        raise InputError(f"{len(nodes)} DWI volumes but {len(bvalues)} b-values; give one b-value per volume")
    kept = select_bvalues(bvalues, bmin, bmax)
    grid, shape = ijk_to_ras_of(nodes[0]), array_of(nodes[0]).shape
    for node in nodes[1:]:
        if (array_of(node).shape != shape or not np.allclose(ijk_to_ras_of(node), grid, atol=1e-3)
                or node.GetTransformNodeID() != nodes[0].GetTransformNodeID()):
            raise InputError(f"DWI volume '{node.GetName()}' is not on the grid of '{nodes[0].GetName()}'; all b-values must share one grid")
    used = [bvalues[i] for i in kept]
    adc = fit_adc_volume([array_of(nodes[i]) for i in kept], used, method, progress=progress)
    return adc, group_shells(used)[0]


def _per_segment(on_grid, statistics) -> Dict[str, object]:
    """Run `statistics(labels)` once per overlap layer and key its results by segment id."""
    result = {}
    for labels, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        for label, value in statistics(labels).items():
            result[layer_ids[label - 1]] = value
    return result


def _centre_counts(labels: np.ndarray) -> Dict[int, dict]:
    counts = np.bincount(labels.ravel())
    return {int(label): {"n": int(counts[label])} for label in np.nonzero(counts)[0] if label > 0}


def _fraction_of(mask: np.ndarray, labels: np.ndarray) -> Dict[int, float]:
    """Per label > 0: the fraction of its voxels where `mask` is true."""
    totals = np.bincount(labels.ravel())
    hits = np.bincount(labels.ravel(), weights=mask.ravel().astype(np.float64), minlength=totals.size)
    return {int(label): float(hits[label] / totals[label]) for label in np.nonzero(totals)[0] if label > 0}


def _mask_of(on_grid, ids) -> np.ndarray:
    """Voxels of the grid inside any of the segments `ids`."""
    mask = np.zeros(on_grid.labels[0].shape, bool)
    for labels, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        values = [index + 1 for index, sid in enumerate(layer_ids) if sid in ids]
        if values:
            mask |= np.isin(labels, values)
    return mask


def _check_coverage(on_grid, stats: Dict[str, dict], names, volume_label: str, min_voxels: int, warnings: List[AnalysisWarning],
                    unmeasured: Optional[Dict[str, str]] = None):
    """Warn about ROIs partly outside a volume or covering few voxels of it. A ROI covering no
    voxel centre is recorded in `unmeasured` (the ADC map: measured on the voxels it partly
    covers if it can be) or warned about (other volumes: its ratios stay empty)."""
    for layer_ids in on_grid.ids_per_layer:
        for sid in layer_ids:
            count = stats.get(sid, {}).get("n", 0)
            outside = on_grid.outside_fraction.get(sid, 0.0)
            if count == 0:
                where = "lies entirely outside" if outside >= 1.0 else "covers no voxel centre of"
                if unmeasured is not None:
                    unmeasured[sid] = f"{where} {volume_label}"
                else:
                    warnings.append(AnalysisWarning(f"ROI '{names[sid]}' {where} {volume_label}: not measured there",
                                                    names[sid], "not_measured"))
                continue
            if outside > 0.0:
                warnings.append(AnalysisWarning(f"ROI '{names[sid]}' lies {outside:.0%} outside {volume_label}; measured on "
                                                "the overlap", names[sid], "partly_outside"))
            if count < min_voxels:
                warnings.append(AnalysisWarning(f"ROI '{names[sid]}' covers only {count} voxels of {volume_label} (fewer than "
                                                f"{min_voxels}): too few to trust", names[sid], "few_voxels"))


def _measure_small_rois(scene, app, segmentation, adc_node, adc_map, adc_stats, on_adc, names, unmeasured,
                        options: Options, warnings: List[AnalysisWarning]) -> Dict[str, dict]:
    """ROIs covering fewer voxel centres of the ADC grid than min_voxels (none at all, too)
    are measured on every voxel they partly cover, weighted by the covered fraction (the
    segment supersampled, criteria small_roi). Their statistics replace the centre-sampled
    ones; returns per such ROI what results.json says of it, plus the voxels for the overlay."""
    factor = int(options.criteria["small_roi"]["supersample"])
    centres = _per_segment(on_adc, _centre_counts)
    partial = {}
    for layer_ids in on_adc.ids_per_layer:
        for sid in layer_ids:
            count = centres.get(sid, {}).get("n", 0)
            if count >= options.min_voxels or on_adc.outside_fraction.get(sid, 0.0) >= 1.0:
                continue
            flat, fractions = segment_fractions_on_grid(scene, app, segmentation, sid, adc_node, factor)
            if flat.size == 0:
                continue
            stats = weighted_statistics(adc_map.ravel()[flat], fractions, options.adc_cutoff)
            if stats["n"] == 0:
                unmeasured[sid] = "has no ADC value in any voxel it covers"
                continue
            adc_stats[sid] = stats
            unmeasured.pop(sid, None)
            partial[sid] = {
                "voxel_centres": count, "voxels_touched": int(flat.size), "covered_voxels": float(fractions.sum()),
                "supersample": factor, "flat_indices": flat, "fractions": fractions,
                "note": "measured on the ADC voxels the ROI partly covers, each weighted by the fraction it covers",
            }
            warnings.append(AnalysisWarning(f"ROI '{names[sid]}' covers {count} voxel centres of the ADC map: measured on "
                                            f"the {flat.size} voxels it partly covers ({fractions.sum():.1f} voxels' worth), "
                                            "weighted by coverage", names[sid], "partial_volume"))
    return partial


def _partial_words(partial: Optional[dict]) -> Optional[str]:
    if not partial:
        return None
    return (f"small ROI: measured on {partial['voxels_touched']} partly covered ADC voxels "
            f"({partial['covered_voxels']:.1f} voxels' worth; {partial['voxel_centres']} voxel centres)")


def _check_reference(rows: List[dict], details: List[dict], options: Options, warnings: List[AnalysisWarning]) -> None:
    """The normal-marrow reference is itself checked (criteria reference_check): an ADC above
    the normal-marrow range or T1 not above the disc means it may be infiltrated."""
    for row, detail in zip(rows, details):
        if row["role"] != "reference":
            continue
        problems = []
        mean = row["adc_mean"]
        if options.marrow_max_or_none and mean is not None and mean > options.marrow_max:
            problems.append(f"its mean ADC {mean:.3g} is above the normal-marrow range (<= {options.marrow_max:g}, Koutoulidis 2017)")
        t1_disc = detail.get("ratios_vs", {}).get("disc", {}).get("t1")
        t1_vs_disc = classify_signal(t1_disc, options.signal_low_below, options.signal_high_above)
        if t1_vs_disc in ("low", "iso"):
            problems.append(f"its T1 is not above the disc (ratio {t1_disc:.2f}; Carroll 1997: iso/hypointense to disc, 40/41 infiltrative)")
        detail["reference_check"] = {"adc_above_marrow_range": bool(problems and mean is not None and options.marrow_max_or_none
                                                                     and mean > options.marrow_max),
                                     "t1_vs_disc": None if t1_vs_disc == "n/a" else t1_vs_disc, "problems": problems}
        if problems:
            warnings.append(AnalysisWarning(
                f"reference ROI '{row['segment']}' may itself be infiltrated: {'; '.join(problems)}. "
                "Exclude diffuse infiltration (e.g. myeloma) before reading ratios against it; "
                "ratios against disc and muscle are in results.json where those ROIs are drawn",
                row["segment"], "reference_infiltrated"))


def _pooled_mean(means: Dict[str, tuple], ids: Sequence[str]) -> Optional[float]:
    total = sum(means[sid][0] * means[sid][1] for sid in ids if sid in means)
    count = sum(means[sid][1] for sid in ids if sid in means)
    return total / count if count else None


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def _segment_result(sid, name, role, adc, adc_node, signal_means, reference_mean, spread, options: Options,
                    no_signal_fraction: float = 0.0, bvalues: Optional[List[float]] = None,
                    partial_volume: Optional[str] = None):
    mean_adc = adc.get("mean")
    if mean_adc is not None and mean_adc < 0:
        raise InputError(f"ROI '{name}' has a negative mean ADC ({mean_adc:.3g} x 10^-3 mm^2/s); check the ADC map and its units", field="adc_units")
    if mean_adc is not None and mean_adc > ADC_MAX_PLAUSIBLE:
        raise InputError(
            f"ROI '{name}' has a mean ADC of {mean_adc:.4g} x 10^-3 mm^2/s, above free water (3.0); "
            f"the ADC units are probably wrong: set them", field="adc_units"
        )
    ratios, signals = {}, {}
    for key in SIGNAL_KEYS:
        value = signal_means.get(key, {}).get(sid, (None, 0))[0]
        ratios[key] = _ratio(value, reference_mean.get(key))
        signals[key] = classify_signal(ratios[key], options.signal_low_below, options.signal_high_above)
    ct_mean = signal_means.get("ct", {}).get(sid, (None, 0))[0]
    # Signal read against disc and muscle too, where they are drawn (Carroll 1997).
    ratios_vs = {}
    for standard in ("disc", "muscle"):
        against = {key: _ratio(signal_means.get(key, {}).get(sid, (None, 0))[0], reference_mean.get(f"{key}_{standard}"))
                   for key in SIGNAL_KEYS}
        against = {key: value for key, value in against.items() if value is not None}
        if against and role != standard:
            ratios_vs[standard] = against

    detail = {
        "id": sid, "name": name, "role": role,
        "n_voxels": {"adc": adc.get("n", 0)},
        "adc_nonfinite_voxels": adc.get("n_nonfinite", 0),
        "no_dwi_signal_fraction": round(no_signal_fraction, 4),
    }
    if ratios_vs:
        detail["ratios_vs"] = ratios_vs
    for key, means in signal_means.items():
        detail["n_voxels"][key] = means.get(sid, (None, 0))[1]

    differential, adc_class, restricted = "", "n/a", None
    if role == "reference":
        adc_class = "reference"
    if role == "lesion":
        chemical_shift = _ratio(signal_means.get("opposed_phase", {}).get(sid, (None, 0))[0],
                                signal_means.get("in_phase", {}).get(sid, (None, 0))[0])
        fat_percent = _fat_percent(signal_means.get("fat_fraction", {}).get(sid, (None, 0))[0])
        reading = read_lesion(adc, options, t1_ratio=ratios["t1"], t1_signal=_known(signals["t1"]),
                              t2_signal=_known(signals["t2"]), ct_mean_hu=ct_mean, fat_fraction_percent=fat_percent,
                              chemical_shift_ratio=chemical_shift, no_dwi_signal_fraction=no_signal_fraction,
                              partial_volume=partial_volume)
        adc_class, restricted = reading.adc_class, reading.adc_restricted
        detail["tier"] = reading.as_dict()
        detail["reading"] = reading
        t1 = signal_means.get("t1", {}).get(sid, (None, 0))[0]
        findings = LesionFindings(
            adc_mean=mean_adc,
            t1_signal=_known(signals["t1"]), t2_signal=_known(signals["t2"]), fs_signal=_known(signals["fs"]),
            ct_mean_hu=ct_mean,
            t1_vs_disc=_versus(t1, reference_mean.get("t1_disc"), options),
            t1_vs_muscle=_versus(t1, reference_mean.get("t1_muscle"), options),
            chemical_shift_ratio=chemical_shift,
            fat_fraction_percent=fat_percent,
            levels_involved=spread[0],
            disc_involved=spread[1],
            adc_tier=reading.adc_tier,
            adc_restricted=reading.adc_restricted,
            heterogeneous=reading.heterogeneous,
            fat_sign=reading.fat_sign,
            t1_disc_ratio=ratios_vs.get("disc", {}).get("t1"),
            t1_muscle_ratio=ratios_vs.get("muscle", {}).get("t1"),
            no_dwi_signal_fraction=no_signal_fraction,
            bvalues=bvalues,
        )
        candidates = rank_differential(findings, options.criteria, {"ct_sclerotic_min_hu": options.ct_sclerotic_min_hu})
        differential = ";".join(candidate.entity for candidate in candidates)
        detail["differential"] = [candidate.as_dict() for candidate in candidates]
        detail["differential_summary"] = summarize(candidates)
        detail["findings"] = {k: v for k, v in findings.__dict__.items() if v is not None}

    row = {
        "segment": name,
        "role": role,
        # the ROI's voxels on the ADC grid, with or without a value (no DWI signal)
        "n_voxels_adc": adc.get("n", 0) + adc.get("n_nonfinite", 0),
        "volume_ml": (adc.get("n", 0) + adc.get("n_nonfinite", 0)) * voxel_volume_mm3(adc_node) / 1000.0,
        "adc_mean": mean_adc,
        "adc_median": adc.get("median"),
        "adc_sd": adc.get("sd"),
        "adc_p10": adc.get("p10"),
        "adc_p90": adc.get("p90"),
        "fraction_at_or_below_cutoff": adc.get("fraction_at_or_below_cutoff"),
        "adc_class": adc_class,
        "t1_ratio": ratios["t1"], "t2_ratio": ratios["t2"], "fs_ratio": ratios["fs"],
        "t1_signal": signals["t1"], "t2_signal": signals["t2"], "fs_signal": signals["fs"],
        "ct_mean_hu": ct_mean,
        "differential": differential,
        "adc_restricted": restricted,
    }
    return row, detail


def _known(signal: str) -> Optional[str]:
    return None if signal == "n/a" else signal


def _versus(value: Optional[float], reference: Optional[float], options: Options) -> Optional[str]:
    return _known(classify_signal(_ratio(value, reference), options.signal_low_below, options.signal_high_above))


def _fat_percent(mean_fraction: Optional[float]) -> Optional[float]:
    """Fat-fraction maps come as 0-1 or as percent; a mean at or below 1 is taken as 0-1."""
    if mean_fraction is None:
        return None
    return mean_fraction * 100.0 if mean_fraction <= 1.0 else mean_fraction


def _overlay(on_adc, readings: Dict[str, object], adc_map: np.ndarray, options: Options,
             partial: Dict[str, dict]) -> np.ndarray:
    """Voxel classes of the lesion ROIs on the ADC grid, each lesion painted under its
    reading's voxel rule (core/tiers.py); small ROIs on the voxels they partly cover."""
    overlay = np.zeros(adc_map.shape, np.uint8)
    flat_overlay, flat_adc = overlay.reshape(-1), adc_map.reshape(-1)
    rule = (options.adc_cutoff, options.indeterminate_band, options.marrow_max_or_none)
    for sid, reading in readings.items():
        if sid in partial:
            where = partial[sid]["flat_indices"]
        else:
            where = np.flatnonzero(_mask_of(on_adc, {sid}))
        codes = paint_lesion(flat_adc[where], reading, *rule)
        flat_overlay[where[codes != OUTSIDE.code]] = codes[codes != OUTSIDE.code]
    return overlay
