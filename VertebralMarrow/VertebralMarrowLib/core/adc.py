"""ADC numeric core (numpy only): the units of a scanner ADC map, and the voxel-wise fit of
multi-b-value DWI. ADC is always returned in 10^-3 mm^2/s; b-values are in s/mm^2.

The fit model is S(b) = S0 exp(-b ADC), fitted as a straight line in log S. Iteratively
reweighted least squares (the default) weights each log-sample by its predicted signal
squared, since var(log S) ~ sigma^2 / S^2: high-b samples near the noise floor count less.
The work goes in chunks of voxels, so the working set stays bounded for whole-body DWI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

# Scale factors that bring each stored unit to 10^-3 mm^2/s.
UNIT_SCALE_TO_1E3 = {"mm2/s": 1000.0, "1e-3": 1.0, "1e-6": 0.001}
UNIT_TEXT = {"mm2/s": "mm^2/s", "1e-3": "10^-3 mm^2/s", "1e-6": "10^-6 mm^2/s"}

# Tissue ADC spans about 0.1-3.5 x 10^-3 mm^2/s (free water at body temperature is 3.0), so
# the three conventions sit decades apart; these limits fall in the gaps between them.
_MM2_MAX = 0.03
_1E3_MAX = 20.0

FIT_CHUNK_VOXELS = 1 << 18


@dataclass
class UnitDecision:
    unit: str           # key of UNIT_SCALE_TO_1E3
    scale_to_1e3: float
    how: str            # what was decided and why, for the user


def decide_adc_units(values: np.ndarray, stored_as_integers: bool, requested: str = "auto") -> UnitDecision:
    """Decide the units of a scanner ADC map from its values (or take the user's `requested`).

    Refuses maps no unit could make sense of: all NaN, no positive voxel, mostly negative.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InputError("ADC map has no finite values (all NaN); is this the ADC map?")
    nonzero = finite[finite != 0]
    positive = nonzero[nonzero > 0]
    if positive.size == 0:
        raise InputError("ADC map has no positive values; an ADC map is positive inside tissue")
    if (nonzero < 0).mean() > 0.5:
        raise InputError("ADC map is mostly negative; an ADC map is positive inside tissue")
    if requested != "auto":
        if requested not in UNIT_SCALE_TO_1E3:
            raise InputError(f"ADC units '{requested}' unknown; use auto, mm2/s, 1e-3 or 1e-6")
        return UnitDecision(requested, UNIT_SCALE_TO_1E3[requested], f"{UNIT_TEXT[requested]} (given by the user)")
    median = float(np.median(positive))
    kind = "integers" if stored_as_integers else "floats"
    if median < _MM2_MAX:
        unit = "mm2/s"
    elif median < _1E3_MAX:
        unit = "1e-3"
    else:
        unit = "1e-6"
    how = (
        f"{UNIT_TEXT[unit]} (auto: map stored as {kind}, median of non-zero voxels {median:.4g}; "
        f"override with --adc-units)"
    )
    return UnitDecision(unit, UNIT_SCALE_TO_1E3[unit], how)


def to_1e3(raw: np.ndarray, scale_to_1e3: float) -> np.ndarray:
    """A stored ADC map in 10^-3 mm^2/s as float32. A scale below 1 divides by its inverse, so
    a scanner's 1210 (10^-6 mm^2/s) is exactly float32(1.21), which the class rule (comparing
    at the map's own precision) puts at, not above, Kaur's 1.21 cut-off."""
    values = np.asarray(raw, np.float32)
    if scale_to_1e3 < 1.0:
        return values / np.float32(round(1.0 / scale_to_1e3))
    return values * np.float32(scale_to_1e3)


def select_bvalues(bvalues_s_per_mm2: Sequence[float], bmin: Optional[float], bmax: Optional[float]) -> List[int]:
    """Indices of the b-values inside [bmin, bmax]; at least two distinct ones are needed."""
    b = np.asarray(bvalues_s_per_mm2, float)
    listed = ", ".join(f"{value:g}" for value in b.ravel())
    if b.ndim != 1 or b.size < 2:
        raise InputError(f"an ADC fit needs at least two b-values, got [{listed}]")
    if np.any(b < 0) or not np.all(np.isfinite(b)):
        raise InputError(f"b-values must be finite and >= 0 s/mm^2, got [{listed}]")
    keep = np.ones(b.size, bool)
    if bmin is not None:
        keep &= b >= bmin
    if bmax is not None:
        keep &= b <= bmax
    if np.unique(b[keep]).size < 2:
        raise InputError(
            f"b-values [{listed}] leave fewer than two distinct values inside "
            f"--bmin {bmin} / --bmax {bmax}; widen the range"
        )
    return [int(i) for i in np.nonzero(keep)[0]]


def fit_adc(signals: np.ndarray, bvalues_s_per_mm2: Sequence[float], method: str = "iwls") -> np.ndarray:
    """Voxel-wise ADC (10^-3 mm^2/s) of `signals` (n_b, n_voxels); NaN where fewer than two
    distinct b-values have a usable (positive, finite) sample."""
    b = np.asarray(bvalues_s_per_mm2, float)[:, None]
    signals = np.asarray(signals, float)
    usable = np.isfinite(signals) & (signals > 0)
    log_signal = np.log(np.where(usable, signals, 1.0))
    weights = usable.astype(float)
    slope, intercept = _weighted_line(b, log_signal, weights)
    if method == "iwls":
        for _ in range(2):
            predicted = np.exp(np.clip(intercept + slope * b, -700, 700))
            weights = np.where(usable, predicted * predicted, 0.0)
            slope, intercept = _weighted_line(b, log_signal, weights)
    elif method != "ols":
        raise InputError(f"fit method '{method}' unknown; use iwls or ols")
    distinct = _distinct_usable_bvalues(b[:, 0], usable)
    return np.where(distinct >= 2, -slope * 1000.0, np.nan)


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares line y = intercept + slope x for every column, in closed form."""
    sw = w.sum(0)
    sx = (w * x).sum(0)
    sy = (w * y).sum(0)
    sxx = (w * x * x).sum(0)
    sxy = (w * x * y).sum(0)
    denominator = sw * sxx - sx * sx
    valid = denominator > 1e-12 * np.maximum(sw * sxx, 1e-300)
    safe = np.where(valid, denominator, 1.0)
    slope = np.where(valid, (sw * sxy - sx * sy) / safe, np.nan)
    intercept = np.where(valid, (sy - slope * sx) / np.where(sw > 0, sw, 1.0), np.nan)
    return slope, intercept


def _distinct_usable_bvalues(b: np.ndarray, usable: np.ndarray) -> np.ndarray:
    count = np.zeros(usable.shape[1], int)
    for value in np.unique(b):
        count += usable[b == value].any(0)
    return count


def fit_adc_volume(
    volumes_kji: Sequence[np.ndarray],
    bvalues_s_per_mm2: Sequence[float],
    method: str = "iwls",
    progress: Optional[Callable[[float, str], None]] = None,
    chunk_voxels: int = FIT_CHUNK_VOXELS,
) -> np.ndarray:
    """ADC map (float32, 10^-3 mm^2/s) from one volume per b-value, all on one grid.

    Works slice block by slice block so whole-body DWI needs no whole-volume temporaries
    beyond the output."""
    if len(volumes_kji) != len(bvalues_s_per_mm2):
        raise InputError(f"{len(volumes_kji)} DWI volumes but {len(bvalues_s_per_mm2)} b-values; give one b-value per volume")
    shape = volumes_kji[0].shape
    for volume in volumes_kji:
        if volume.shape != shape:
            raise InputError(f"DWI volumes differ in size ({shape} vs {volume.shape}); all b-values must share one grid")
    adc = np.empty(shape, np.float32)
    voxels_per_slice = int(np.prod(shape[1:]))
    slices_per_chunk = max(1, chunk_voxels // max(voxels_per_slice, 1))
    for start in range(0, shape[0], slices_per_chunk):
        stop = min(shape[0], start + slices_per_chunk)
        block = np.stack([np.asarray(v[start:stop], np.float64).ravel() for v in volumes_kji])
        adc[start:stop] = fit_adc(block, bvalues_s_per_mm2, method).reshape((stop - start,) + shape[1:])
        if progress:
            progress(stop / shape[0], f"ADC fit: slice {stop} of {shape[0]}")
    return adc


def trace_weighted(
    volumes_kji: Sequence[np.ndarray],
    bvalues_s_per_mm2: Sequence[float],
    floors: Optional[Sequence[float]] = None,
) -> Tuple[List[np.ndarray], List[float]]:
    """One image per distinct b-value: several images at one b-value (diffusion directions)
    become their geometric mean, the trace-weighted image.

    `floors`, one per image (its signal step: one stored intensity unit after rescaling), says
    how a direction whose stored signal is 0 is read when several are combined: as "below one
    unit", raised to that unit, so the voxel keeps the information of the other directions
    (at high b many directions store 0 where diffusion is fast). Without floors such a
    direction makes the trace NaN there. NaN stays NaN either way, and an image alone at its
    b-value is passed through unchanged: the fit treats its zero samples as unusable.
    """
    b = np.asarray(bvalues_s_per_mm2, float)
    if len(volumes_kji) != b.size:
        raise InputError(f"{len(volumes_kji)} DWI volumes but {b.size} b-values; give one b-value per volume")
    if floors is not None and len(floors) != b.size:
        raise InputError(f"{len(floors)} signal floors for {b.size} DWI volumes; give one per volume")
    combined, distinct = [], []
    for value in np.unique(b):
        indices = np.nonzero(b == value)[0]
        members = [np.asarray(volumes_kji[i], np.float64) for i in indices]
        if len(members) == 1:
            combined.append(members[0])
        else:
            if floors is not None:
                # np.maximum keeps NaN: a missing sample stays missing.
                members = [np.maximum(member, float(floors[i])) for member, i in zip(members, indices)]
            # A zero or NaN direction makes the trace at this b-value unusable: NaN, which the
            # fit weights zero, as it does a zero or NaN sample of a single image.
            log_sum = np.zeros(members[0].shape)
            usable = np.ones(members[0].shape, bool)
            for member in members:
                ok = np.isfinite(member) & (member > 0)
                usable &= ok
                log_sum += np.log(np.where(ok, member, 1.0))
            combined.append(np.where(usable, np.exp(log_sum / len(members)), np.nan))
        distinct.append(float(value))
    return combined, distinct
