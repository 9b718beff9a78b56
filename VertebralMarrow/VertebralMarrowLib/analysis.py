"""The analysis of one study: a plain function of its nodes and options, no global state.

Segments are exported onto each volume's own grid; ADC comes from a scanner map (units
decided or given) or is fitted from multi-b DWI; every ROI gets its ADC statistics, its
T1/T2/FS signal relative to normal marrow, CT attenuation, an ADC class and, for lesions, a
ranked differential. The same function serves the CLI, plain Python and the Slicer module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
    segment_ids,
    segment_name,
    segments_on_grid,
    volume_from_array,
    voxel_volume_mm3,
)
from .core.classes import CLASSES, class_key, classify_adc
from .core.sequences import SEQUENCES, SIGNAL_KEYS
from .core.stats import classify_signal, roi_means, roi_statistics

# Free water at body temperature is 3.0 x 10^-3 mm^2/s: a ROI mean far above it means the
# units are wrong, not that the tissue is unusual.
ADC_MAX_PLAUSIBLE = 4.0

OVERLAY_CLASSES = {c.code: c.label for c in CLASSES}


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
    warnings: List[str]
    options: Options
    inputs: Dict[str, str]
    rois_on_adc: SegmentsOnGrid      # the measured segments on the ADC grid, for pictures
    # the same on every other volume's grid, by node ID: pictures reuse them, never re-export
    rois_on_grids: Dict[str, SegmentsOnGrid] = field(default_factory=dict)
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
    """Analyse one study. `app` is the headless app (mrml.new_scene) or None inside Slicer."""
    if options is not None and not isinstance(options, Options):
        raise InputError(f"options must be VertebralMarrowLib Options, got {type(options).__name__}")
    check_study_nodes(study)
    resolved = (options or Options()).resolved()
    warnings: List[str] = []

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
    adc_node, adc_map, adc_source, adc_units, bvalues_used = _adc(scene, study, resolved, warnings, step)

    step(0.45, "ROIs on the ADC grid")
    on_adc = segments_on_grid(scene, app, segmentation, measured, adc_node)
    adc_stats = _per_segment(on_adc, lambda labels: roi_statistics(adc_map, labels, resolved.adc_cutoff))
    _check_coverage(on_adc, adc_stats, names, "the ADC map", resolved.min_voxels, warnings)
    for sid, stats in adc_stats.items():
        if stats.get("n_nonfinite"):
            warnings.append(f"ROI '{names[sid]}': {stats['n_nonfinite']} voxels have no ADC (0 or not fitted) and are left out")

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
        warnings.append("no reference ROI of normal marrow (name it '... normal' or use --reference): signal ratios are empty")
    reference_mean = {key: _pooled_mean(means, references) for key, means in signal_means.items()}
    for role in ("disc", "muscle"):
        reference_mean[f"t1_{role}"] = _pooled_mean(signal_means.get("t1", {}), [s for s in measured if roles[s] == role])

    rows, details = [], []
    for sid in measured:
        spread = study.spread.get(names[sid]) or get_segment_spread(segmentation, sid)
        row, detail = _segment_result(
            sid, names[sid], roles[sid], adc_stats.get(sid, {}), adc_node, signal_means, reference_mean, spread, resolved
        )
        rows.append(row)
        details.append(detail)

    step(0.95, "overlay")
    lesion_ids = [sid for sid in measured if roles[sid] == "lesion"]
    overlay = _overlay(on_adc, lesion_ids, adc_map, resolved)

    inputs = {key: node.GetName() for key, node, _ in optional_volumes if node is not None}
    inputs["segmentation"] = segmentation.GetName()
    if study.adc is not None:
        inputs["adc"] = study.adc.GetName()
    if study.dwi:
        inputs["dwi"] = ", ".join(node.GetName() for node in study.dwi)
    step(1.0, "done")
    return AnalysisResult(
        rows=rows, segments=details, adc_node=adc_node, adc_map=adc_map, overlay=overlay,
        adc_source=adc_source, adc_units=adc_units, bvalues_used=bvalues_used,
        warnings=warnings, options=resolved, inputs=inputs, rois_on_adc=on_adc, rois_on_grids=on_grids,
    )


# --- steps --------------------------------------------------------------------------------


def _roles(segmentation, ids, names, given: Dict[str, str], reference_names: Sequence[str]) -> Dict[str, str]:
    """Each segment's role: given by name, else its tag, else its name; --reference segments
    are references whatever their tag says."""
    unknown = [name for name in reference_names if name not in names.values()]
    if unknown:
        raise InputError(f"--reference {', '.join(unknown)}: no such segment; segments are: {', '.join(names.values())}")
    roles = {}
    for sid in ids:
        if names[sid] in reference_names:
            roles[sid] = "reference"
        else:
            roles[sid] = given.get(names[sid]) or get_segment_role(segmentation, sid)
    return roles


def _adc(scene, study: StudyNodes, options: Options, warnings: List[str], step):
    if study.adc is not None and study.dwi:
        raise InputError("give either an ADC map or DWI volumes, not both")
    if study.adc is not None:
        raw = array_of(study.adc)
        decision = decide_adc_units(raw, is_integer_volume(study.adc), options.adc_units)
        adc_map = to_1e3(raw, decision.scale_to_1e3)
        # Scanners store "no value" (background, failed fit) as 0: no tissue has an ADC of 0.
        adc_map[raw == 0] = np.nan
        return study.adc, adc_map, "scanner ADC map", decision.how, None
    if not study.dwi:
        raise InputError("no ADC input: give a scanner ADC map (--adc) or multi-b DWI (--dwi with --bvalues)")
    adc_map, bvalues = fit_dwi_nodes(study.dwi, study.bvalues, options.fit_method, options.bmin, options.bmax,
                                     progress=lambda fraction, text: step(0.05 + 0.35 * fraction, text))
    grid = ijk_to_ras_of(study.dwi[0])
    adc_node = volume_from_array(scene, adc_map, grid, "ADC (fitted)")
    adc_node.SetAndObserveTransformNodeID(study.dwi[0].GetTransformNodeID())  # where the DWI really is
    adc_node.SetAttribute("VertebralMarrow.Units", "1e-3 mm2/s")
    dropped = sorted({float(b) for b in study.bvalues if (options.bmin is not None and b < options.bmin)
                      or (options.bmax is not None and b > options.bmax)})
    if dropped:
        warnings.append(f"b-values left out of the fit: {', '.join(f'{b:g}' for b in dropped)} s/mm^2")
    method = "iteratively reweighted log-linear least squares" if options.fit_method == "iwls" else "ordinary log-linear least squares"
    source = f"fitted from DWI (b = {', '.join(f'{b:g}' for b in bvalues)} s/mm^2; {method})"
    return adc_node, adc_map, source, "10^-3 mm^2/s (fitted)", bvalues


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


def _check_coverage(on_grid, stats: Dict[str, dict], names, volume_label: str, min_voxels: int, warnings: List[str]):
    for layer_ids in on_grid.ids_per_layer:
        for sid in layer_ids:
            count = stats.get(sid, {}).get("n", 0)
            outside = on_grid.outside_fraction.get(sid, 0.0)
            if count == 0:
                where = "lies entirely outside" if outside >= 1.0 else "covers no voxel of"
                if stats.get(sid, {}).get("n_nonfinite"):
                    where = "covers only voxels without a value (NaN, or 0 in a scanner map) in"
                raise InputError(f"ROI '{names[sid]}' {where} {volume_label}; check the segment or the volume")
            if outside > 0.0:
                warnings.append(f"ROI '{names[sid]}' lies {outside:.0%} outside {volume_label}; measured on the overlap")
            if count < min_voxels:
                warnings.append(f"ROI '{names[sid]}' covers only {count} voxels of {volume_label} (fewer than {min_voxels}): too few to trust")


def _pooled_mean(means: Dict[str, tuple], ids: Sequence[str]) -> Optional[float]:
    total = sum(means[sid][0] * means[sid][1] for sid in ids if sid in means)
    count = sum(means[sid][1] for sid in ids if sid in means)
    return total / count if count else None


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def _segment_result(sid, name, role, adc, adc_node, signal_means, reference_mean, spread, options: Options):
    mean_adc = adc.get("mean")
    if mean_adc is not None and mean_adc < 0:
        raise InputError(f"ROI '{name}' has a negative mean ADC ({mean_adc:.3g} x 10^-3 mm^2/s); check the ADC map and --adc-units")
    if mean_adc is not None and mean_adc > ADC_MAX_PLAUSIBLE:
        raise InputError(
            f"ROI '{name}' has a mean ADC of {mean_adc:.4g} x 10^-3 mm^2/s, above free water (3.0); "
            f"the ADC units are probably wrong: set --adc-units"
        )
    if role == "lesion":
        adc_class = class_key(mean_adc, options.adc_cutoff, options.indeterminate_band)
    elif role == "reference":
        adc_class = "reference"
    else:
        adc_class = "n/a"

    ratios, signals = {}, {}
    for key in SIGNAL_KEYS:
        value = signal_means.get(key, {}).get(sid, (None, 0))[0]
        ratios[key] = _ratio(value, reference_mean.get(key))
        signals[key] = classify_signal(ratios[key], options.signal_low_below, options.signal_high_above)
    ct_mean = signal_means.get("ct", {}).get(sid, (None, 0))[0]

    detail = {
        "id": sid, "name": name, "role": role,
        "n_voxels": {"adc": adc.get("n", 0)},
        "adc_nonfinite_voxels": adc.get("n_nonfinite", 0),
    }
    for key, means in signal_means.items():
        detail["n_voxels"][key] = means.get(sid, (None, 0))[1]

    differential = ""
    if role == "lesion":
        t1 = signal_means.get("t1", {}).get(sid, (None, 0))[0]
        findings = LesionFindings(
            adc_mean=mean_adc,
            t1_signal=_known(signals["t1"]), t2_signal=_known(signals["t2"]), fs_signal=_known(signals["fs"]),
            ct_mean_hu=ct_mean,
            t1_vs_disc=_versus(t1, reference_mean.get("t1_disc"), options),
            t1_vs_muscle=_versus(t1, reference_mean.get("t1_muscle"), options),
            chemical_shift_ratio=_ratio(signal_means.get("opposed_phase", {}).get(sid, (None, 0))[0],
                                        signal_means.get("in_phase", {}).get(sid, (None, 0))[0]),
            fat_fraction_percent=_fat_percent(signal_means.get("fat_fraction", {}).get(sid, (None, 0))[0]),
            levels_involved=spread[0],
            disc_involved=spread[1],
        )
        candidates = rank_differential(findings, options.criteria, {"ct_sclerotic_min_hu": options.ct_sclerotic_min_hu})
        differential = ";".join(candidate.entity for candidate in candidates)
        detail["differential"] = [candidate.as_dict() for candidate in candidates]
        detail["differential_summary"] = summarize(candidates)
        detail["findings"] = {k: v for k, v in findings.__dict__.items() if v is not None}

    row = {
        "segment": name,
        "role": role,
        "n_voxels_adc": adc.get("n", 0),
        "volume_ml": adc.get("n", 0) * voxel_volume_mm3(adc_node) / 1000.0,
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


def _overlay(on_adc, lesion_ids: Sequence[str], adc_map: np.ndarray, options: Options) -> np.ndarray:
    in_lesion = np.zeros(adc_map.shape, bool)
    for labels, layer_ids in zip(on_adc.labels, on_adc.ids_per_layer):
        values = [index + 1 for index, sid in enumerate(layer_ids) if sid in lesion_ids]
        if values:
            in_lesion |= np.isin(labels, values)
    classes = classify_adc(adc_map, options.adc_cutoff, options.indeterminate_band)
    return np.where(in_lesion, classes, 0).astype(np.uint8)
