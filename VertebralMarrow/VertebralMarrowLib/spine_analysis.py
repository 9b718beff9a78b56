"""The whole spine from vertebra labels: one marrow reading per vertebra (MRML glue).

Vertebra labels (TotalSegmentator, TotalSpineSeg or any named labelmap) are recognised by
their scheme; each vertebral body (posterior elements cut off behind the front of the spinal
canal where the labels hold the canal or cord) becomes a marrow ROI that is eroded in mm on each
volume's own grid, clear of cortex and end plates. The ROIs get the same statistics, tiers and
ratios as drawn ROIs, against the patient's own spine (robust median of the vertebrae, or the
levels the user names) and the discs. A plain function of its inputs and options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from . import DISCLAIMER, __version__
from .analysis import Cancelled, StudyNodes, load_adc
from .core.classes import class_key
from .core.criteria import Options
from .core.stats import roi_means, roi_statistics
from .core.vertebra_schemes import (
    FAMILIES, SCHEMES, Structure, detect_scheme, label_centroids_s, level_index, scheme_structures, structures_from_names,
)
from .errors import InputError
from .mrml import (
    array_of, get_segment_role, ijk_to_ras_of, load_segmentation, read_image_sitk, read_label_names, segment_ids,
    remove_with_helpers, removed_if_it_fails, segment_name, segmentation_from_labelmap, segments_on_grid, volume_from_array,
)

SCHEME_CHOICES = ("auto", "totalsegmentator", "totalspineseg", "names")
SPINE_COLUMNS = ("level", "n_voxels_adc", "adc_mean", "adc_median", "adc_p10", "adc_p90", "tier",
                 "t1_ratio", "fs_ratio", "height_ratio", "flags")
ROBUST_SD_PER_MAD = 1.4826  # SD of a normal distribution per median absolute deviation
# Levels whose body height is compared with the neighbours': C1 has no body, C2 carries the
# dens and the sacrum is no vertebral body of the same shape.
HEIGHT_LEVELS = range(level_index("C3"), level_index("L6") + 1)


@dataclass
class SpineOptions:
    """The user's choices for the whole spine; None takes criteria.json's `spine` defaults."""

    scheme: str = "auto"
    erosion_mm: Optional[float] = None
    marrow_max: Optional[float] = None
    reference_levels: Sequence[str] = ()
    outlier_robust_sd: Optional[float] = None
    height_loss_below: Optional[float] = None


@dataclass
class SpineLabels:
    array: np.ndarray                 # (k, j, i) label values
    ijk_to_ras: np.ndarray
    structures: Dict[int, Structure]  # label value -> vertebra / disc / canal / cord
    scheme: str


@dataclass
class SpineResult:
    rows: List[dict]                  # one per vertebra, cranio-caudal: spine.csv's columns and more
    discs: List[dict]
    lesions: List[dict]               # drawn lesion ROIs and the level they lie at
    reference: Dict[str, object]
    scheme: str
    adc_node: object
    adc_map: np.ndarray
    marrow_on_adc: np.ndarray         # (k, j, i) on the ADC grid: index into rows + 1
    adc_source: str
    adc_units: str
    criteria: Dict[str, object]
    warnings: List[str]
    options: Options
    segmentation: object              # the marrow ROIs (bodies and discs) as segments named by level
    disclaimer: str = DISCLAIMER
    version: str = __version__


# --- labels in ----------------------------------------------------------------------------


def read_spine_labels(scene, app, path, scheme: str = "auto", label_names: Optional[Path] = None) -> SpineLabels:
    """Vertebra labels from a labelmap (.nii.gz, .nrrd) or a Slicer .seg.nrrd, with the scheme
    recognised from names (segment names, --label-names) or from label numbers and positions."""
    _check_scheme_choice(scheme)
    if str(path).lower().endswith(".seg.nrrd"):
        segmentation = load_segmentation(scene, app, path)
        array, ijk_to_ras, names = _segmentation_as_labels(scene, app, segmentation)
    else:
        array, ijk_to_ras = read_image_sitk(path, "vertebra labels")
        if array.ndim != 3:
            raise InputError(f"vertebra labels {path} are {array.ndim}-D; a 3-D labelmap is needed")
        array = np.rint(array).astype(np.int32)
        names = read_label_names(label_names) if label_names else {}
    return spine_labels(array, ijk_to_ras, names, scheme, f"vertebra labels {path}", "with --label-names")


def spine_labels_from_node(scene, app, node, scheme: str = "auto") -> SpineLabels:
    """Vertebra labels from a segmentation node (named by its segment names) or a labelmap
    volume node (named by its color table when that names vertebrae, as a color table read
    with the labelmap would; else read by label numbers and positions), as read_spine_labels
    reads files."""
    _check_scheme_choice(scheme)
    what = f"vertebra labels '{node.GetName()}'"
    if node.IsA("vtkMRMLSegmentationNode"):
        if not segment_ids(node):
            raise InputError(f"{what} hold no segment")
        array, ijk_to_ras, names = _segmentation_as_labels(scene, app, node)
    elif node.IsA("vtkMRMLLabelMapVolumeNode"):
        if node.GetImageData() is None:
            raise InputError(f"{what} hold no image")
        array, ijk_to_ras = np.rint(array_of(node)).astype(np.int32), ijk_to_ras_of(node)
        names = _vertebra_color_names(node, array)
    else:
        raise InputError(f"{what}: choose a segmentation or a labelmap volume")
    return spine_labels(array, ijk_to_ras, names, scheme, what, "as segment names or in the labelmap's color table")


def _vertebra_color_names(labelmap, array: np.ndarray) -> Dict[int, str]:
    """The names a labelmap's color table gives its labels, when they name a vertebra; {} for
    the generic tables Slicer gives a labelmap loaded without its own ('tissue', 'bone')."""
    display = labelmap.GetDisplayNode()
    colors = display.GetColorNode() if display is not None else None
    if colors is None:
        return {}
    names = {int(v): colors.GetColorName(int(v)) for v in np.unique(array) if v > 0 and colors.GetColorName(int(v))}
    return names if any(s.kind == "vertebra" for s in structures_from_names(names).values()) else {}


def _check_scheme_choice(scheme: str) -> None:
    if scheme not in SCHEME_CHOICES:
        raise InputError(f"--scheme {scheme}: use one of {', '.join(SCHEME_CHOICES)}")


def spine_labels(array: np.ndarray, ijk_to_ras: np.ndarray, names: Dict[int, str], scheme: str, what: str,
                 naming: str) -> SpineLabels:
    """The labels' structures: from `names` (scheme names, or auto when there are names), else
    the scheme recognised from label numbers and positions; `what` and `naming` (how the user
    names labels) go into the messages."""
    values = [int(v) for v in np.unique(array) if v > 0]
    if not values:
        raise InputError(f"{what} hold no label (all voxels are 0)")
    if scheme == "names" or (scheme == "auto" and names):
        if not names:
            raise InputError(f"scheme 'names' needs names: give them {naming}")
        structures = structures_from_names({v: names[v] for v in values if v in names})
        used = "names"
    else:
        candidates = list(SCHEMES) if scheme == "auto" else list(FAMILIES[scheme])
        used = detect_scheme(values, label_centroids_s(array, ijk_to_ras), candidates,
                             f"name the labels {naming} and choose the scheme 'names'")
        structures = scheme_structures(used, values)
    if not any(s.kind == "vertebra" for s in structures.values()):
        raise InputError(f"no vertebra found in {what} (names or labels name no level C1-S1); "
                         f"name them (e.g. 'L1' or 'vertebrae_L1') {naming}")
    return SpineLabels(array, ijk_to_ras, structures, used)


def _segmentation_as_labels(scene, app, segmentation) -> Tuple[np.ndarray, np.ndarray, Dict[int, str]]:
    """A segmentation exported onto its own geometry: labels 1..n for its segments."""
    ids = segment_ids(segmentation)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    logic = app.segmentations_logic if app is not None else slicer.modules.segmentations.logic()
    id_array = vtk.vtkStringArray()
    for sid in ids:
        id_array.InsertNextValue(sid)
    if not logic.ExportSegmentsToLabelmapNode(segmentation, id_array, labelmap, None):
        raise InputError(f"cannot export the segments of '{segmentation.GetName()}'")
    array = np.array(array_of(labelmap)).astype(np.int32)
    ijk_to_ras = ijk_to_ras_of(labelmap)
    remove_with_helpers(scene, labelmap, colors=True)
    return array, ijk_to_ras, {n: segment_name(segmentation, sid) for n, sid in enumerate(ids, 1)}


# --- geometry on the labels' grid -----------------------------------------------------------


def _ras(ijk_to_ras: np.ndarray, kji: Tuple[np.ndarray, ...]) -> np.ndarray:
    k, j, i = kji
    return (ijk_to_ras[:3, :3] @ np.vstack([i, j, k]).astype(float)).T + ijk_to_ras[:3, 3]


def vertebral_bodies(labels: SpineLabels) -> Tuple[np.ndarray, List[str]]:
    """Each vertebra's body on the labels' grid (value = vertebra label): where the labels hold
    the spinal canal (or cord), the posterior elements are left out, cut at the narrowest slab
    between the body's centre and the front of the canal at that level. Returns the array and what was done, for the report."""
    array = labels.array
    bodies = np.zeros(array.shape, np.int32)
    canal_values = [v for v, s in labels.structures.items() if s.kind == "canal"] or \
                   [v for v, s in labels.structures.items() if s.kind == "cord"]
    canal = _ras(labels.ijk_to_ras, np.nonzero(np.isin(array, canal_values))) if canal_values else np.zeros((0, 3))
    notes = []
    for value, structure in labels.structures.items():
        if structure.kind != "vertebra":
            continue
        where = np.nonzero(array == value)
        if where[0].size == 0:
            continue
        points = _ras(labels.ijk_to_ras, where)
        keep = np.ones(points.shape[0], bool)
        if canal.shape[0]:
            low, high = points[:, 2].min(), points[:, 2].max()
            nearby = canal[(canal[:, 2] >= low) & (canal[:, 2] <= high)]
            if nearby.shape[0]:
                centre = points.mean(axis=0)
                backwards = nearby.mean(axis=0) - centre
                backwards /= max(np.linalg.norm(backwards), 1e-9)
                front_of_canal = ((nearby - centre) @ backwards).min()
                # Slabs as thick as a voxel's extent along the direction: none is left empty.
                bin_mm = float(np.abs(backwards @ labels.ijk_to_ras[:3, :3]).sum())
                keep = (points - centre) @ backwards < _narrowest(points, centre, backwards, front_of_canal, bin_mm)
        bodies[tuple(axis[keep] for axis in where)] = value
    if canal_values:
        notes.append("posterior elements left out: cut at the narrowest slab (the pedicles) in front of the spinal canal at each level")
    else:
        notes.append("the labels hold no spinal canal or cord: posterior elements are inside the vertebra ROIs, "
                     "only the erosion keeps the ROI off their cortex")
    return bodies, notes


def _narrowest(points: np.ndarray, centre: np.ndarray, backwards: np.ndarray, front_mm: float, bin_mm: float) -> float:
    """Where to cut the posterior elements off: the narrowest slab (fewest voxels, slabs
    `bin_mm` thick across the antero-posterior direction) between the vertebra's centre and the
    front of the canal, i.e. the pedicles just behind the body. A cord label's front lies
    behind the canal's, so the front alone would leave the pedicles in."""
    depth = (points - centre) @ backwards
    edges = np.arange(0.0, front_mm + bin_mm, bin_mm)
    if edges.size < 3:
        return front_mm
    counts, _ = np.histogram(depth, bins=edges)
    return float(min(edges[int(np.argmin(counts))], front_mm))


def body_heights_mm(bodies: np.ndarray, ijk_to_ras: np.ndarray, structures: Dict[int, Structure]) -> Dict[int, float]:
    """Mean height of each vertebral body along the local spine axis: its volume divided by the
    area of its footprint on the plane across the axis (cells of the grid's coarsest spacing, so
    that thick slices leave no empty cells). Bodies that touch the
    edge of the labels' grid (cut by the field of view) are not measured."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    voxel_mm3 = float(np.prod(spacing))
    cell_mm = float(spacing.max())
    vertebrae = sorted((s.order, v) for v, s in structures.items() if s.kind == "vertebra" and np.any(bodies == v))
    centres = {v: _ras(ijk_to_ras, np.nonzero(bodies == v)).mean(axis=0) for _, v in vertebrae}
    heights = {}
    for index, (order, value) in enumerate(vertebrae):
        if order not in HEIGHT_LEVELS:
            continue
        where = np.nonzero(bodies == value)
        if any(axis.min() == 0 or axis.max() == size - 1 for axis, size in zip(where, bodies.shape)):
            continue
        neighbours = [vertebrae[n][1] for n in (index - 1, index + 1) if 0 <= n < len(vertebrae)]
        if not neighbours:
            continue
        axis = centres[neighbours[0]] - centres[neighbours[-1]] if len(neighbours) == 2 else centres[neighbours[0]] - centres[value]
        axis /= max(np.linalg.norm(axis), 1e-9)
        across = np.linalg.svd(np.eye(3) - np.outer(axis, axis))[0][:, :2]
        footprint = np.floor((_ras(ijk_to_ras, where) - centres[value]) @ across / cell_mm).astype(np.int64)
        cells = np.unique(footprint, axis=0).shape[0]
        heights[value] = where[0].size * voxel_mm3 / (cells * cell_mm * cell_mm)
    return heights


# --- marrow ROIs on each volume's grid -------------------------------------------------------


def erode_labels_mm(labels: np.ndarray, spacing_kji: Sequence[float], erosion_mm: float) -> np.ndarray:
    """Keep the voxels of each label whose centre lies more than `erosion_mm` from the centre of
    every voxel outside that label (the array's edge counts as outside), distances in mm on
    this grid (SimpleITK's exact Euclidean distance map with the image spacing)."""
    import SimpleITK as sitk

    eroded = np.zeros(labels.shape, labels.dtype)
    if erosion_mm <= 0:
        return labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        where = np.nonzero(labels == value)
        low = [max(int(axis.min()) - 1, 0) for axis in where]
        high = [int(axis.max()) + 2 for axis in where]
        box = tuple(slice(a, b) for a, b in zip(low, high))
        outside = np.pad(labels[box] != value, 1, constant_values=True).astype(np.uint8)
        image = sitk.GetImageFromArray(outside)
        image.SetSpacing(tuple(float(s) for s in reversed(spacing_kji)))
        distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))[1:-1, 1:-1, 1:-1]
        keep = (outside[1:-1, 1:-1, 1:-1] == 0) & (distance > erosion_mm)
        eroded[box][keep] = value
    return eroded


def _rois_on_grid(scene, app, segmentation, ids: List[str], node, erosion_mm: float) -> np.ndarray:
    """The ROIs (segments `ids`) on `node`'s grid, value n + 1 for ids[n], eroded there."""
    on_grid = segments_on_grid(scene, app, segmentation, ids, node)
    labels = np.zeros(array_of(node).shape, np.int32)
    for layer, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        for position, sid in enumerate(layer_ids, 1):
            labels[layer == position] = ids.index(sid) + 1
    return erode_labels_mm(labels, tuple(reversed(node.GetSpacing())), erosion_mm)


# --- the analysis -------------------------------------------------------------------------


def resolve_spine_options(spine: Optional[SpineOptions], options: Options) -> Dict[str, object]:
    """The spine's settings; the normal-marrow top is the analysis's own (Options.marrow_max,
    Koutoulidis 2017) unless the spine options give one."""
    spine = spine or SpineOptions()
    criteria = options.criteria
    section = criteria["spine"]

    def pick(value, key):
        return float(section[key]["value"] if value is None else value)

    resolved = {
        "scheme": spine.scheme,
        "erosion_mm": pick(spine.erosion_mm, "erosion_mm"),
        "marrow_max": float(options.marrow_max if spine.marrow_max is None else spine.marrow_max),
        "outlier_robust_sd": pick(spine.outlier_robust_sd, "outlier_robust_sd"),
        "height_loss_below": pick(spine.height_loss_below, "height_loss_below"),
        "reproducibility_pct": float(criteria["followup"]["reproducibility_pct"]["value"]),
        "reference_levels": [level.upper() for level in spine.reference_levels],
    }
    if not 0.0 <= resolved["erosion_mm"] < 20.0:
        raise InputError(f"erosion {resolved['erosion_mm']} mm is outside 0-20 mm")
    if not 0.0 < resolved["marrow_max"] < 5.0:
        raise InputError(f"normal-marrow maximum {resolved['marrow_max']} is outside 0-5 x 10^-3 mm^2/s")
    return resolved


def analyze_spine(scene, labels: SpineLabels, adc=None, dwi: Sequence[object] = (), bvalues: Sequence[float] = (),
                  t1=None, fs=None, lesions=None, options: Optional[Options] = None,
                  spine_options: Optional[SpineOptions] = None, app=None,
                  progress: Optional[Callable[[float, str], None]] = None,
                  cancelled: Optional[Callable[[], bool]] = None) -> SpineResult:
    """One marrow reading per labelled vertebra (nodes in; `lesions` an optional segmentation
    of drawn ROIs, placed at their level). Stopped half-way (bad input found late, or
    `cancelled()`: analysis.Cancelled), it leaves no node behind."""
    return removed_if_it_fails(scene, lambda made: _analyze_spine(
        scene, labels, adc, dwi, bvalues, t1, fs, lesions, options, spine_options, app, progress, cancelled, made))


def _analyze_spine(scene, labels: SpineLabels, adc, dwi, bvalues, t1, fs, lesions, options, spine_options, app,
                   progress, cancelled, made: list) -> SpineResult:
    resolved = (options or Options()).resolved()
    settings = resolve_spine_options(spine_options, resolved)
    warnings: List[str] = []

    def step(fraction, text):
        if cancelled is not None and cancelled():
            raise Cancelled("whole-spine reading cancelled")
        if progress:
            progress(fraction, text)

    step(0.05, "vertebral bodies")
    bodies, notes = vertebral_bodies(labels)
    vertebrae = sorted((s.order, s.level, v) for v, s in labels.structures.items() if s.kind == "vertebra" and np.any(bodies == v))
    discs = sorted((s.order, s.level, v) for v, s in labels.structures.items() if s.kind == "disc")
    unknown = [level for level in settings["reference_levels"] if level not in [lv for _, lv, _ in vertebrae]]
    if unknown:
        raise InputError(f"--reference-levels {', '.join(unknown)}: no such vertebra in the labels "
                         f"(labelled: {', '.join(lv for _, lv, _ in vertebrae)})")
    heights = body_heights_mm(bodies, labels.ijk_to_ras, labels.structures)

    rois = np.zeros(bodies.shape, np.int32)
    names = {}
    for n, (_, level, value) in enumerate(vertebrae, 1):
        rois[bodies == value] = n
        names[n] = level
    for n, (_, level, value) in enumerate(discs, len(vertebrae) + 1):
        rois[labels.array == value] = n
        names[n] = f"{level} disc"
    roi_node = volume_from_array(scene, rois, labels.ijk_to_ras, "vertebral bodies", labelmap=True)
    segmentation = segmentation_from_labelmap(scene, app, roi_node, names, "Vertebral marrow ROIs")
    made.append(segmentation)
    remove_with_helpers(scene, roi_node, colors=True)
    ids = segment_ids(segmentation)
    id_names = [segment_name(segmentation, sid) for sid in ids]

    step(0.15, "ADC")
    study = StudyNodes(segmentation=segmentation, adc=adc, dwi=list(dwi), bvalues=list(bvalues))
    adc_node, adc_map, adc_source, adc_units = load_adc(scene, study, resolved, warnings,
                                                        lambda f, t: step(0.15 + 0.3 * f, t))[:4]
    if adc_node is not adc:
        made.append(adc_node)  # the fitted map

    step(0.5, "marrow ROIs on the ADC grid")
    erosion = settings["erosion_mm"]
    on_adc = _rois_on_grid(scene, app, segmentation, ids, adc_node, erosion)
    adc_stats = roi_statistics(adc_map, on_adc, resolved.adc_cutoff)
    signal = {}
    for key, node in (("t1", t1), ("fs", fs)):
        if node is not None:
            step(0.6 if key == "t1" else 0.7, f"marrow ROIs on {key.upper()}")
            signal[key] = roi_means(array_of(node), _rois_on_grid(scene, app, segmentation, ids, node, erosion))

    step(0.8, "tiers, reference and flags")
    rows = []
    for n, (_, level, value) in enumerate(vertebrae, 1):
        index = id_names.index(level) + 1
        stats = adc_stats.get(index, {})
        if stats.get("n", 0) == 0:
            warnings.append(f"{level}: no ADC voxel left inside the body after a {erosion:g} mm erosion on the ADC grid")
        elif stats["n"] < resolved.min_voxels:
            warnings.append(f"{level}: only {stats['n']} ADC voxels inside the eroded body: too few to trust")
        rows.append({
            "level": level, "label": value, "roi": index,
            "n_voxels_adc": stats.get("n", 0), "adc_mean": stats.get("mean"), "adc_median": stats.get("median"),
            "adc_sd": stats.get("sd"), "adc_p10": stats.get("p10"), "adc_p90": stats.get("p90"),
            "t1_signal": signal.get("t1", {}).get(index, (None, 0))[0],
            "fs_signal": signal.get("fs", {}).get(index, (None, 0))[0],
            "height_mm": heights.get(value),
        })
    disc_rows = []
    for _, level, value in discs:
        index = id_names.index(f"{level} disc") + 1
        stats = adc_stats.get(index, {})
        disc_rows.append({"level": level, "n_voxels_adc": stats.get("n", 0), "adc_mean": stats.get("mean"),
                          "t1_signal": signal.get("t1", {}).get(index, (None, 0))[0]})
    reference = _reference(rows, disc_rows, settings)
    _tiers_ratios_flags(rows, reference, settings, resolved, labels.structures)
    if any(row["flags"] and "above_marrow_range" in row["flags"] for row in rows):
        warnings.append("vertebrae above the normal-marrow range: the spine's own median is then no normal reference; "
                        "name normal levels with --reference-levels")

    lesion_rows = _place_lesions(scene, app, lesions, labels, vertebrae) if lesions is not None else []
    step(1.0, "done")
    marrow = np.zeros(on_adc.shape, np.int32)
    for n, row in enumerate(rows, 1):
        marrow[on_adc == row["roi"]] = n
    criteria = {
        "scheme": labels.scheme, "body": notes, **{k: v for k, v in settings.items() if k != "scheme"},
        "adc_cutoff": resolved.adc_cutoff, "indeterminate_band": resolved.indeterminate_band,
        "sources": {"marrow_max": resolved.criteria["adc_tiers"]["marrow_max"],
                    **{key: resolved.criteria["spine"][key] for key in ("erosion_mm", "outlier_robust_sd", "height_loss_below")}},
    }
    return SpineResult(rows=rows, discs=disc_rows, lesions=lesion_rows, reference=reference, scheme=labels.scheme,
                       adc_node=adc_node, adc_map=adc_map, marrow_on_adc=marrow, adc_source=adc_source,
                       adc_units=adc_units, criteria=criteria, warnings=warnings, options=resolved,
                       segmentation=segmentation)


def _reference(rows: List[dict], discs: List[dict], settings: dict) -> Dict[str, object]:
    """Normal marrow of this patient: the levels the user named (pooled means), else the median
    of all measured vertebrae; the discs' mean T1 beside it."""
    chosen = [row for row in rows if row["level"] in settings["reference_levels"]] or rows
    how = ("levels " + ", ".join(settings["reference_levels"])) if settings["reference_levels"] else "median of the labelled vertebrae"
    reference = {"how": how}
    for key in ("adc_mean", "t1_signal", "fs_signal"):
        values = np.array([row[key] for row in chosen if row[key] is not None], float)
        reference[key] = float(np.median(values)) if values.size else None
    adc = np.array([row["adc_mean"] for row in rows if row["adc_mean"] is not None], float)
    reference["adc_robust_sd"] = float(ROBUST_SD_PER_MAD * np.median(np.abs(adc - np.median(adc)))) if adc.size else None
    disc_t1 = [d["t1_signal"] for d in discs if d["t1_signal"] is not None]
    reference["disc_t1_signal"] = float(np.mean(disc_t1)) if disc_t1 else None
    return reference


def _tiers_ratios_flags(rows, reference, settings, resolved: Options, structures) -> None:
    spine_adc = reference["adc_mean"]
    spread = None
    if spine_adc is not None:
        spread = max(settings["outlier_robust_sd"] * (reference["adc_robust_sd"] or 0.0),
                     spine_adc * settings["reproducibility_pct"] / 100.0)
    heights = {row["level"]: row["height_mm"] for row in rows}
    order = [row["level"] for row in rows]
    for position, row in enumerate(rows):
        mean = row["adc_mean"]
        row["tier"] = "n/a" if mean is None else class_key(mean, resolved.adc_cutoff, resolved.indeterminate_band, settings["marrow_max"])
        for key, ratio in (("t1_signal", "t1_ratio"), ("fs_signal", "fs_ratio")):
            ref = reference[key]
            row[ratio] = row[key] / ref if row[key] is not None and ref else None
        disc = reference["disc_t1_signal"]
        row["t1_disc_ratio"] = row["t1_signal"] / disc if row["t1_signal"] is not None and disc else None
        neighbours = [heights[order[n]] for n in (position - 1, position + 1)
                      if 0 <= n < len(order) and heights[order[n]] is not None
                      and abs(level_index(order[n]) - level_index(row["level"])) == 1]
        row["height_ratio"] = row["height_mm"] / float(np.mean(neighbours)) if row["height_mm"] and neighbours else None
        flags = []
        if mean is not None and mean > settings["marrow_max"]:
            flags.append("above_marrow_range")
        if mean is not None and spread is not None and abs(mean - spine_adc) > spread:
            flags.append("outlier")
        if row["height_ratio"] is not None and row["height_ratio"] < settings["height_loss_below"]:
            flags.append("height_loss")
        row["flags"] = ";".join(flags)


def _place_lesions(scene, app, lesions, labels: SpineLabels, vertebrae) -> List[dict]:
    """Each drawn lesion ROI at the vertebra it overlaps most (whole vertebra labels), else the
    nearest vertebra centre."""
    label_node = volume_from_array(scene, labels.array.astype(np.int32), labels.ijk_to_ras, "vertebra labels", labelmap=True)
    try:
        ids = [sid for sid in segment_ids(lesions) if get_segment_role(lesions, sid) == "lesion"]
        if not ids:
            return []
        on_grid = segments_on_grid(scene, app, lesions, ids, label_node)
    finally:
        remove_with_helpers(scene, label_node, colors=True)
    centres = {level: _ras(labels.ijk_to_ras, np.nonzero(labels.array == value)).mean(axis=0) for _, level, value in vertebrae}
    placed = []
    for layer, layer_ids in zip(on_grid.labels, on_grid.ids_per_layer):
        for position, sid in enumerate(layer_ids, 1):
            inside = layer == position
            counts = {level: int(np.count_nonzero(inside & (labels.array == value))) for _, level, value in vertebrae}
            level, count = max(counts.items(), key=lambda item: item[1]) if counts else (None, 0)
            how = "overlap"
            if count == 0 and np.any(inside):
                centre = _ras(labels.ijk_to_ras, np.nonzero(inside)).mean(axis=0)
                level = min(centres, key=lambda lv: np.linalg.norm(centres[lv] - centre))
                how = "nearest vertebra"
            placed.append({"segment": segment_name(lesions, sid), "level": level, "how": how})
    return placed


# --- from files ---------------------------------------------------------------------------


def run_spine(labels_path, out_dir, adc=None, dwi: Sequence[Path] = (), bvalues: Sequence[float] = (), dwi_dicom=None,
              t1=None, fs=None, lesions=None, label_names=None, options: Optional[Options] = None,
              spine_options: Optional[SpineOptions] = None,
              progress: Optional[Callable[[float, str], None]] = None, dicom=None) -> SpineResult:
    """Load the files, read the whole spine and write spine.csv, spine.json, spine.png,
    spine.html and spine.mrml into `out_dir` (the `spine` command; also plain Python). `dicom`:
    a study folder whose series are recognised as `analyze --dicom` does (DWI, else the scanner
    ADC map; T1 and FS unless given as files)."""
    if dicom is not None:
        return _run_spine_dicom(labels_path, out_dir, dicom, t1, fs, lesions, label_names, options, spine_options, progress)
    from .inputs.study import load_dwi, load_dwi_dicom
    from .mrml import load_volume, new_scene
    from .outputs.spine_report import write_spine_outputs, write_spine_scene

    given = [flag for flag, value in (("--adc", adc), ("--dwi", dwi), ("--dwi-dicom", dwi_dicom)) if value]
    if len(given) != 1:
        raise InputError("give one ADC input: --adc, --dwi with --bvalues, or --dwi-dicom")
    app = new_scene()
    scene = app.scene
    spine_options = spine_options or SpineOptions()
    labels = read_spine_labels(scene, app, labels_path, spine_options.scheme, label_names)
    adc_node, dwi_nodes, used_bvalues = None, [], []
    if adc:
        adc_node = load_volume(scene, adc, "ADC map")
    elif dwi:
        dwi_nodes, used_bvalues = load_dwi(scene, dwi, bvalues)
    else:
        dwi_nodes, used_bvalues = load_dwi_dicom(scene, dwi_dicom)
    t1_node = load_volume(scene, t1, "T1") if t1 else None
    fs_node = load_volume(scene, fs, "FS-T2/STIR") if fs else None
    lesion_node = load_segmentation(scene, app, lesions) if lesions else None
    result = analyze_spine(scene, labels, adc=adc_node, dwi=dwi_nodes, bvalues=used_bvalues, t1=t1_node, fs=fs_node,
                           lesions=lesion_node, options=options, spine_options=spine_options, app=app, progress=progress)
    if lesion_node is not None:  # placed at their levels already; the scene holds what spine-data/ holds
        scene.RemoveNode(lesion_node)
    write_spine_outputs(result, out_dir)
    write_spine_scene(scene, result, out_dir, [node for node in (t1_node, fs_node) if node is not None])
    return result


def _run_spine_dicom(labels_path, out_dir, folder, t1, fs, lesions, label_names, options, spine_options, progress):
    import dataclasses
    import tempfile

    from .inputs.dicom_study import choose_series, scan_dicom_folder, stage_study

    if options is None:
        options = Options()
    chosen, _ = choose_series(scan_dicom_folder(folder))
    with tempfile.TemporaryDirectory(prefix="vertebral-marrow-spine-") as staging:
        paths, adc_units = stage_study(chosen, staging)
        if "dwi_dicom" not in paths and adc_units and options.adc_units in (None, "auto"):
            options = dataclasses.replace(options, adc_units=adc_units)
        if "dwi_dicom" not in paths and "adc" not in paths:
            raise InputError(f"{folder}: no diffusion series and no ADC map among the DICOM series")
        return run_spine(labels_path, out_dir, adc=None if "dwi_dicom" in paths else paths["adc"],
                         dwi_dicom=paths.get("dwi_dicom"), t1=t1 or paths.get("t1"), fs=fs or paths.get("fs"),
                         lesions=lesions, label_names=label_names, options=options, spine_options=spine_options,
                         progress=progress)
