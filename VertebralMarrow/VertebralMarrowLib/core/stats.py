"""Per-ROI statistics in one pass over the voxels (numpy only).

Every voxel of every ROI is gathered once, sorted once by (label, value), and all the
statistics are read off that order: the cost depends on the number of ROI voxels, not on the
number of segments.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np



def roi_statistics(values: np.ndarray, labels: np.ndarray, cutoff: float = np.nan) -> Dict[int, Dict[str, float]]:
    """Statistics of `values` inside each label > 0 of `labels` (same shape).

    Non-finite values are left out (their count is returned as `n_nonfinite`). Percentiles
    interpolate linearly, as numpy's default. SD is the sample SD (ddof=1; 0 for one voxel).
    """
    values = np.asarray(values).ravel()
    labels = np.asarray(labels).ravel()
    in_roi = labels > 0
    roi_values = values[in_roi].astype(np.float64)
    roi_labels = labels[in_roi].astype(np.int64)
    finite = np.isfinite(roi_values)
    nonfinite_count = np.bincount(roi_labels[~finite], minlength=1)
    roi_values, roi_labels = roi_values[finite], roi_labels[finite]

    # Sort by value, then stably by label: one (label, value) order, faster than lexsort.
    order = np.argsort(roi_values)
    label_keys = roi_labels[order]
    if label_keys.size and label_keys.max() < 65536:
        label_keys = label_keys.astype(np.uint16)
    order = order[np.argsort(label_keys, kind="stable")]
    sorted_values = roi_values[order]
    present, starts, counts = np.unique(roi_labels[order], return_index=True, return_counts=True)

    sums = np.add.reduceat(sorted_values, starts) if starts.size else np.zeros(0)
    means = sums / np.maximum(counts, 1)
    deviations = sorted_values - np.repeat(means, counts)
    squares = np.add.reduceat(deviations * deviations, starts) if starts.size else np.zeros(0)
    sds = np.sqrt(squares / np.maximum(counts - 1, 1))
    restricted = sorted_values <= cutoff
    at_or_below = np.add.reduceat(restricted.astype(np.int64), starts) if starts.size else np.zeros(0)
    restricted_sums = np.add.reduceat(np.where(restricted, sorted_values, 0.0), starts) if starts.size else np.zeros(0)

    def percentile(q: float) -> np.ndarray:
        position = starts + q * (counts - 1)
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, starts + counts - 1)
        fraction = position - lower
        return sorted_values[lower] * (1 - fraction) + sorted_values[upper] * fraction

    medians, p10s, p90s = percentile(0.5), percentile(0.1), percentile(0.9)
    result = {}
    for index, label in enumerate(present):
        result[int(label)] = {
            "n": int(counts[index]),
            "mean": float(means[index]),
            "median": float(medians[index]),
            "sd": float(sds[index]) if counts[index] > 1 else 0.0,
            "p10": float(p10s[index]),
            "p90": float(p90s[index]),
            "fraction_at_or_below_cutoff": float(at_or_below[index] / counts[index]),
            # the restricted component: mean of the voxels at or below the cut-off
            "restricted_mean": float(restricted_sums[index] / at_or_below[index]) if at_or_below[index] else None,
            "n_nonfinite": int(nonfinite_count[label]) if label < nonfinite_count.size else 0,
        }
    for label in np.nonzero(nonfinite_count)[0]:
        if int(label) not in result and label > 0:
            result[int(label)] = {"n": 0, "n_nonfinite": int(nonfinite_count[label])}
    return result


def weighted_statistics(values: np.ndarray, weights: np.ndarray, cutoff: float = np.nan) -> Dict[str, float]:
    """The statistics of roi_statistics for one ROI whose voxels count by `weights` (0-1, the
    fraction of each voxel the ROI covers). `n` is the number of voxels touched, `n_effective`
    the sum of the weights. Percentiles are weighted: the value where the cumulative weight,
    taken at each voxel's centre of mass, reaches q (linear between voxels). SD uses
    reliability weights. Non-finite values and zero weights are left out."""
    values = np.asarray(values, np.float64).ravel()
    weights = np.asarray(weights, np.float64).ravel()
    keep = (weights > 0) & np.isfinite(values)
    nonfinite = int(((weights > 0) & ~np.isfinite(values)).sum())
    values, weights = values[keep], weights[keep]
    if values.size == 0:
        return {"n": 0, "n_nonfinite": nonfinite}
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    total = weights.sum()
    mean = float((values * weights).sum() / total)
    v2 = (weights ** 2).sum()
    variance = (weights * (values - mean) ** 2).sum() / (total - v2 / total) if total * total > v2 else 0.0
    positions = (np.cumsum(weights) - 0.5 * weights) / total

    def percentile(q: float) -> float:
        return float(np.interp(q, positions, values))

    restricted = values <= cutoff
    return {
        "n": int(values.size),
        "n_effective": float(total),
        "mean": mean,
        "median": percentile(0.5),
        "sd": float(np.sqrt(variance)),
        "p10": percentile(0.1),
        "p90": percentile(0.9),
        "fraction_at_or_below_cutoff": float(weights[restricted].sum() / total),
        "restricted_mean": float((values[restricted] * weights[restricted]).sum() / weights[restricted].sum()) if restricted.any() else None,
        "n_nonfinite": nonfinite,
    }


def roi_means(values: np.ndarray, labels: np.ndarray) -> Dict[int, Tuple[float, int]]:
    """(mean, voxel count) of the finite `values` inside each label > 0 (signal intensities)."""
    values = np.asarray(values).ravel()
    labels = np.asarray(labels).ravel()
    keep = (labels > 0) & np.isfinite(values)
    sums = np.bincount(labels[keep], weights=values[keep].astype(np.float64))
    counts = np.bincount(labels[keep])
    return {int(label): (float(sums[label] / counts[label]), int(counts[label])) for label in np.nonzero(counts)[0]}


def classify_signal(ratio: Optional[float], low_below: float, high_above: float) -> str:
    """'low' | 'iso' | 'high' for a lesion / reference signal ratio; 'n/a' when not measured."""
    if ratio is None or not np.isfinite(ratio):
        return "n/a"
    if ratio < low_below:
        return "low"
    if ratio > high_above:
        return "high"
    return "iso"
