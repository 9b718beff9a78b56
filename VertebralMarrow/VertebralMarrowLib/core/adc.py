"""ADC numeric core (numpy only): the units of a scanner ADC map, and the voxel-wise fit of
multi-b-value DWI. ADC is always returned in 10^-3 mm^2/s; b-values are in s/mm^2.

The fit model is S(b) = S0 exp(-b ADC), fitted as a straight line in log S against b in
10^3 s/mm^2 (so the slope is -ADC). The weighted log-linear fit (the default, 'iwls';
Veraart et al., NeuroImage 2013) refits with each log-sample weighted by its predicted signal
squared, since var(log S) ~ sigma^2 / S^2: high-b samples near the noise floor count less.
b-values that differ by rounding are one shell; several images in a shell are combined into
the trace (geometric mean). `fit_adc_volume` is the engine: float32, chunks of voxels over
threads with preallocated buffers, memory-mapped files read chunk by chunk (pread), the map
filled or handed chunk by chunk to a writer; `fit_adc` is the same estimator in float64, its
reference.
"""

from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
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

# Median of a map's non-zero voxels (tissue and background noise), in 10^-3 mm^2/s, that any
# real ADC map has: marrow is about 0.4, free water 3.0; a thousandfold unit error lands far out.
_PLAUSIBLE_MEDIAN_1E3 = (0.01, 10.0)

FIT_CHUNK_VOXELS = 1 << 17   # 128 K voxels: few enough numpy calls (each hands the GIL over) that two threads scale
FIT_THREADS = min(os.cpu_count() or 1, 8)
# Reweighting steps of the 'iwls' fit: one is the weighted linear least squares of Veraart et
# al. (NeuroImage 2013). Measured on bench_adc.py's data (b 0/50/400/800, ADC 0.3-3.0, Rician
# SNR 30): RMSE 0.249 with one, 0.262 with two, 0.319 without (OLS); a second step lowers the
# bias (-0.005 against -0.025) but not the error, so one.
REWEIGHTS = 1
# The weights exp(2 slope (x - x_lowest)) use the OLS slope limited to [-WEIGHT_EXPONENT_SPAN /
# (2 x_span), 0]: no weight below e^-30 of the lowest b's (every sum and product stays inside
# float32's range), and a voxel whose signal rises with b (a negative ADC: noise) keeps equal
# weights, its OLS fit, rather than weights that favour its noisiest samples.
WEIGHT_EXPONENT_SPAN = 30.0
# Shells (group_shells): MRtrix3's BValueEpsilon (80 s/mm^2) and BZeroThreshold (10 s/mm^2),
# the epsilon capped at 10 % of b so that deliberate low b-values stay apart.
SHELL_TOLERANCE_S_PER_MM2 = 80.0
SHELL_TOLERANCE_FRACTION = 0.1
BZERO_THRESHOLD_S_PER_MM2 = 10.0


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
    median = float(np.median(positive))
    if median < _MM2_MAX:
        unit = "mm2/s"
    elif median < _1E3_MAX:
        unit = "1e-3"
    else:
        unit = "1e-6"
    if requested != "auto":
        if requested not in UNIT_SCALE_TO_1E3:
            raise InputError(f"ADC units '{requested}' unknown; use auto, mm2/s, 1e-3 or 1e-6", field="adc_units")
        # A unit off by 1000 turns every lesion malignant (or benign) without a sign: refuse a
        # map whose values make no sense in the unit given and name the unit they fit.
        in_1e3 = median * UNIT_SCALE_TO_1E3[requested]
        if requested != unit and not _PLAUSIBLE_MEDIAN_1E3[0] <= in_1e3 <= _PLAUSIBLE_MEDIAN_1E3[1]:
            raise InputError(
                f"ADC units {requested}: the map's median non-zero value {median:.4g} would be {in_1e3:.4g} x 10^-3 "
                f"mm^2/s, implausible for tissue; the map looks like {UNIT_TEXT[unit]}: give the units {unit} or auto",
                field="adc_units",
            )
        return UnitDecision(requested, UNIT_SCALE_TO_1E3[requested], f"{UNIT_TEXT[requested]} (given by the user)")
    kind = "integers" if stored_as_integers else "floats"
    how = (
        f"{UNIT_TEXT[unit]} (auto: map stored as {kind}, median of non-zero voxels {median:.4g}; "
        f"the ADC units setting overrides it)"
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
    if len(set(b[keep].tolist())) < 2:  # not np.unique: it loads numpy.ma, 0.02 s of the adc command
        raise InputError(
            f"b-values [{listed}] leave fewer than two distinct values between the lowest and highest b-value "
            f"set ({bmin} / {bmax}); widen the range", field="bmin"
        )
    return [int(i) for i in np.nonzero(keep)[0]]


def group_shells(bvalues_s_per_mm2: Sequence[float]) -> Tuple[List[float], List[List[int]]]:
    """Shells of b-values, each at its members' mean b: (shell b-values ascending, image
    indices of each shell). Neighbours in sorted order join a shell when they differ by
    rounding: b = b_max |g|^2 in DWMRI NRRD and per-direction .bval files give 995, 1000,
    1005. MRtrix3 groups within 80 s/mm^2 (BValueEpsilon) and reads b <= 10 as b = 0
    (BZeroThreshold); here the 80 is also capped at 10 % of the larger b, so that low b-values
    acquired on purpose (0 and 50 of a spine protocol, IVIM's 10, 20, 30) stay apart."""
    b = np.asarray(bvalues_s_per_mm2, float).ravel()
    order = np.argsort(b, kind="stable")
    shells: List[List[int]] = []
    for index in order:
        previous = b[shells[-1][-1]] if shells else None
        same = previous is not None and (
            (b[index] <= BZERO_THRESHOLD_S_PER_MM2)
            or b[index] - previous <= min(SHELL_TOLERANCE_S_PER_MM2, SHELL_TOLERANCE_FRACTION * b[index])
        )
        if same:
            shells[-1].append(int(index))
        else:
            shells.append([int(index)])
    members = [sorted(shell) for shell in shells]
    return [float(b[shell].mean()) for shell in members], members


def default_floors(volumes: Sequence[np.ndarray], members: Sequence[Sequence[int]],
                   chunk_voxels: int = FIT_CHUNK_VOXELS) -> List[Optional[float]]:
    """The signal step of each image that shares its shell with others (None for the rest):
    one stored unit for integer data; for float data its smallest positive value. A direction
    that stores 0 there is read as "below one step", as the DICOM reader does."""
    floors: List[Optional[float]] = [None] * len(volumes)
    for shell in members:
        if len(shell) < 2:
            continue
        for index in shell:
            volume = volumes[index]
            if np.issubdtype(volume.dtype, np.integer):
                floors[index] = 1.0
                continue
            flat = _flat(volume)
            smallest = np.inf
            for start in range(0, flat.size, chunk_voxels):
                part = flat[start:start + chunk_voxels]
                positive = part[part > 0]
                if positive.size:
                    smallest = min(smallest, float(positive.min()))
            floors[index] = smallest if np.isfinite(smallest) else 1.0
    return floors


def fit_adc(signals: np.ndarray, bvalues_s_per_mm2: Sequence[float], method: str = "iwls",
            floors: Optional[Sequence[Optional[float]]] = None) -> np.ndarray:
    """Voxel-wise ADC (10^-3 mm^2/s) of `signals` (n_images, n_voxels) in float64: the
    reference the float32 engine (fit_adc_volume) is checked against. Same estimator, same
    shells, same trace and floors; NaN where fewer than two shells have a usable sample."""
    signals = np.asarray(signals)
    if signals.ndim == 1:
        signals = signals[:, None]
    shell_b, members = group_shells(bvalues_s_per_mm2)
    if floors is None:
        floors = default_floors(list(signals), members)
    plan = _FitPlan(shell_b, members, floors, _check_method(method), np.float64)
    buffers = _Buffers(plan, signals.shape[1], np.float64)
    out = np.empty(signals.shape[1], np.float64)
    _fit_chunk(plan, [_flat(row) for row in signals], 0, signals.shape[1], buffers, out)
    return out


def fit_adc_volume(
    volumes_kji: Sequence[np.ndarray],
    bvalues_s_per_mm2: Sequence[float],
    method: str = "iwls",
    progress: Optional[Callable[[float, str], None]] = None,
    chunk_voxels: int = FIT_CHUNK_VOXELS,
    floors: Optional[Sequence[Optional[float]]] = None,
    threads: Optional[int] = None,
    out: Optional[np.ndarray] = None,
    sink: Optional[Callable[[int, np.ndarray], None]] = None,
) -> Optional[np.ndarray]:
    """ADC map (float32, 10^-3 mm^2/s) from one image per diffusion weighting (several images
    in one shell are combined into the trace inside the loop), all on one grid.

    The voxels go in chunks of `chunk_voxels` over `threads` threads (numpy releases the GIL),
    each thread with preallocated float32 buffers: nothing whole-volume beyond the output.
    Inputs are read, never copied whole: memory maps and views are welcome. `out`, if given,
    receives the map (float32, the volumes' shape). With `sink` there is no map at all: each
    chunk's ADC goes to sink(first voxel, values) from the thread that fitted it, in any order
    (a file written as it is computed), and None is returned."""
    if len(volumes_kji) != len(bvalues_s_per_mm2):
        raise InputError(f"{len(volumes_kji)} DWI volumes but {len(bvalues_s_per_mm2)} b-values; give one b-value per volume")
    shape = tuple(volumes_kji[0].shape)
    for volume in volumes_kji:
        if tuple(volume.shape) != shape:
            raise InputError(f"DWI volumes differ in size ({shape} vs {tuple(volume.shape)}); all b-values must share one grid")
    shell_b, members = group_shells(bvalues_s_per_mm2)
    if floors is None:
        floors = default_floors(volumes_kji, members, chunk_voxels)
    plan = _FitPlan(shell_b, members, floors, _check_method(method), np.float32)
    adc = None if sink is not None else np.empty(shape, np.float32) if out is None else out
    flat_out = None if adc is None else adc.reshape(-1)
    sources = [_FileRun.of(volume) or _flat(volume) for volume in volumes_kji]
    total = int(np.prod(shape))
    chunk_voxels = max(1, int(chunk_voxels))
    starts = list(range(0, total, chunk_voxels))
    local = threading.local()

    def work(start: int) -> int:
        stop = min(total, start + chunk_voxels)
        buffers = getattr(local, "buffers", None)
        if buffers is None:
            buffers = local.buffers = _Buffers(plan, chunk_voxels, np.float32)
        if sink is None:
            _fit_chunk(plan, sources, start, stop, buffers, flat_out[start:stop])
        else:
            _fit_chunk(plan, sources, start, stop, buffers, buffers.adc[:stop - start])
            sink(start, buffers.adc[:stop - start])
        for source in sources:
            _release(source, start, stop)
        return stop

    reported = [0.0]

    def done(stop: int) -> None:
        fraction = stop / total if total else 1.0
        if progress is not None and (fraction >= 1.0 or fraction - reported[0] >= 0.01):
            reported[0] = fraction
            progress(fraction, f"ADC fit: {stop:,} of {total:,} voxels")

    threads = max(1, min(threads or FIT_THREADS, len(starts)))
    try:
        _run(work, done, starts, threads)
    finally:
        for source in sources:
            if isinstance(source, _FileRun):
                source.close()
    return adc


def _run(work: Callable[[int], int], done: Callable[[int], None], starts: List[int], threads: int) -> None:
    """work(start) for every chunk, done(stop) in order as each finishes."""
    if threads == 1:
        for start in starts:
            done(work(start))
        return
    pool = ThreadPoolExecutor(threads)
    try:
        # submitted a few ahead of the one waited for, so a cancel stops the fit promptly
        pending: List = []
        for start in starts:
            pending.append(pool.submit(work, start))
            if len(pending) > 2 * threads:
                done(pending.pop(0).result())
        for future in pending:
            done(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_method(method: str) -> int:
    """Reweighting steps of a method: 'ols' none, 'iwls' REWEIGHTS (Veraart 2013's WLLS is one)."""
    if method == "ols":
        return 0
    if method == "iwls":
        return REWEIGHTS
    raise InputError(f"fit method '{method}' unknown; use iwls or ols")


class _FitPlan:
    """What every chunk does: which images make each shell, their floors, and the constants of
    the design: x, b in 10^3 s/mm^2 above the lowest shell's (so that the slope of log S is -ADC
    in 10^-3 mm^2/s and the lowest shell sits at x = 0)."""

    def __init__(self, shell_b, members, floors, reweights: int, dtype):
        if len(shell_b) < 2:
            listed = ", ".join(f"{value:g}" for value in shell_b)
            raise InputError(f"an ADC fit needs at least two distinct b-values, got the shell(s) [{listed}] s/mm^2")
        self.members = [list(shell) for shell in members]
        self.floors = [None if f is None else dtype(f) for f in floors]
        x = (np.asarray(shell_b, float) - shell_b[0]) / 1000.0
        centred = x - x.mean()
        self.shells = len(x)
        self.x = x
        self.ols = [dtype(v) for v in centred / np.sum(centred ** 2)]  # OLS slope = sum(ols (y - y0))
        self.x_above = [dtype(v) for v in x[1:]]
        self.x_above_squared = [dtype(v * v) for v in x[1:]]
        self.twice_x_above = (2.0 * x[1:, None]).astype(dtype)
        self.lowest_weight_slope = dtype(-WEIGHT_EXPONENT_SPAN / (2.0 * x[-1]))
        self.reweights = reweights
        self.dtype = dtype


class _Buffers:
    """Preallocated work arrays of one thread: per shell the log signal; per shell above the
    lowest its log signal less the lowest's and its weight; per voxel the sums of the line."""

    def __init__(self, plan: _FitPlan, voxels: int, dtype):
        shells = plan.shells
        self.log_signal = np.empty((shells, voxels), dtype)
        self.rise = np.empty((shells - 1, voxels), dtype)
        self.weight = np.empty((shells - 1, voxels), dtype)
        self.vectors = np.empty((7, voxels), dtype)
        self.good = np.empty(voxels, bool)
        self.adc = np.empty(voxels, np.float32)  # a chunk's result when it goes to a sink


def _flat(volume: np.ndarray) -> np.ndarray:
    """A 1-D view of a volume's voxels, never a whole copy (strided views stay strided)."""
    view = volume.view()
    try:
        view.shape = (-1,)
        return view
    except AttributeError:  # not expressible as a view: a source read slab by slab
        return _Slabs(volume)


class _Slabs:
    """Flat-index reads from an array that no 1-D view can express: whole slices at a time."""

    def __init__(self, volume: np.ndarray):
        self.volume = volume
        self.per_slice = int(np.prod(volume.shape[1:])) if volume.ndim > 1 else 1
        self.size = int(np.prod(volume.shape))
        self.dtype = volume.dtype

    def __getitem__(self, span: slice) -> np.ndarray:
        first, last = span.start // self.per_slice, (span.stop - 1) // self.per_slice + 1
        slab = np.ascontiguousarray(self.volume[first:last]).reshape(-1)
        offset = first * self.per_slice
        return slab[span.start - offset:span.stop - offset]


class _FileRun:
    """A memory-mapped volume whose voxels lie in one contiguous run of its file, read chunk by
    chunk with pread into a buffer per thread: no page faults, nothing left mapped, and the
    buffer stays in the CPU caches. Strided maps (interleaved 4-D NRRD) stay maps (_release)."""

    def __init__(self, path: str, position: int, dtype: np.dtype):
        self.path, self.file = path, os.open(path, os.O_RDONLY)
        self.position, self.dtype = position, dtype
        self.local = threading.local()

    @classmethod
    def of(cls, volume: np.ndarray) -> Optional["_FileRun"]:
        """The run of a C-contiguous np.memmap (or a view of one), else None. numpy maps its file
        from offset - offset % ALLOCATIONGRANULARITY, so a voxel's file position is that plus
        its address less the mapping's. None on Windows, which has no pread: the map is read."""
        mapping, path = getattr(volume, "_mmap", None), getattr(volume, "filename", None)
        if mapping is None or path is None or not volume.flags.c_contiguous or volume.size == 0:
            return None
        if not hasattr(os, "preadv"):
            return None
        mapped = np.frombuffer(mapping, np.uint8, count=1).__array_interface__["data"][0]
        start = volume.offset - volume.offset % mmap.ALLOCATIONGRANULARITY
        position = start + volume.__array_interface__["data"][0] - mapped
        return cls(path, position, volume.dtype)

    def __getitem__(self, span: slice) -> np.ndarray:
        count = span.stop - span.start
        buffer = getattr(self.local, "buffer", None)
        if buffer is None or buffer.size < count:
            buffer = self.local.buffer = np.empty(count, self.dtype)
        return self.read_into(span.start, buffer[:count])

    def read_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Voxels start.. into `out` (contiguous, of this run's dtype), which is returned."""
        wanted = out.view(np.uint8)
        got = os.preadv(self.file, [wanted], self.position + start * self.dtype.itemsize)
        if got != wanted.size:
            raise InputError(f"DWI {self.path} ended early while being read; was it changed during the fit?")
        return out

    def close(self) -> None:
        os.close(self.file)


def _release(source, start: int, stop: int) -> None:
    """Let the kernel drop the pages of a memory-mapped input once read (they stay in the page
    cache): otherwise a whole-body DWI ends up resident in the process."""
    mapping = getattr(getattr(source, "base", None), "_mmap", None) or getattr(source, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise"):
        return
    base = source.__array_interface__["data"][0]
    stride = source.strides[0]
    mapped = np.frombuffer(mapping, np.uint8, count=1).__array_interface__["data"][0]
    first = base + start * stride - mapped
    last = base + (stop - 1) * stride + source.itemsize - mapped
    page = mmap.PAGESIZE
    first = -(-first // page) * page
    last = (last // page) * page
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def _fit_chunk(plan: _FitPlan, sources, start: int, stop: int, buffers: _Buffers, out: np.ndarray) -> None:
    """Fit voxels [start, stop) into `out` (the ADC, -slope): read each shell's log signal
    (several images: the mean of their floored logs, the log of the geometric mean), fit every
    voxel as if all its samples were usable, then refit the few that are not."""
    n = stop - start
    y = buffers.log_signal[:, :n]
    sample, good = buffers.vectors[0, :n], buffers.good[:n]
    with np.errstate(all="ignore"):
        for shell, indices in enumerate(plan.members):
            if len(indices) == 1:  # passed through: 0 gives -inf and < 0 NaN, both unusable
                source = sources[indices[0]]
                if isinstance(source, _FileRun) and source.dtype == y.dtype:  # read in place
                    np.log(source.read_into(start, y[shell]), out=y[shell])
                else:
                    np.log(source[start:stop], out=y[shell], casting="unsafe")
                continue
            y[shell].fill(0)
            for index in indices:  # a direction of several: "below one step" when 0; NaN stays NaN
                np.clip(sources[index][start:stop], plan.floors[index], np.inf, out=sample, casting="unsafe")
                np.log(sample, out=sample)
                y[shell] += sample
            y[shell] *= plan.dtype(1.0 / len(indices))
        _fit_complete(plan, y, buffers, n, out)
        np.isfinite(out, out=good)
        if not good.all():
            bad = np.flatnonzero(~good)
            out[bad] = _fit_masked(plan, y[:, bad])


def _fit_complete(plan: _FitPlan, y: np.ndarray, buffers: _Buffers, n: int, out: np.ndarray) -> None:
    """The fit of voxels whose samples are all usable; the others come out non-finite (a
    non-finite log makes the rise above the lowest shell non-finite, and every sum it enters).

    In the voxel's own frame (x and log S relative to the lowest shell, whose weight is 1), the
    weighted line's slope is (W XY - X Y) / (W XX - X^2) with W the sum of the weights, X of
    w x, XX of w x^2, Y of w (y - y0), XY of w x (y - y0). The denominator is a sum of positive
    terms w_s w_t (x_t - x_s)^2; computed as a difference it loses at most a factor W <= the
    number of shells to cancellation, since no weight exceeds the lowest shell's. Each step
    works in place where it can: numpy is fastest writing over one of its inputs."""
    rise = buffers.rise[:, :n]
    slope, total, sx, sxx, sy, sxy, term = buffers.vectors[:, :n]
    np.subtract(y[1:], y[0], out=rise)
    np.multiply(rise[0], plan.ols[1], out=slope)
    for above in range(1, plan.shells - 1):
        np.multiply(rise[above], plan.ols[above + 1], out=term)
        slope += term
    if not plan.reweights:
        np.negative(slope, out=out, casting="unsafe")
        return
    w = buffers.weight[:, :n]
    for step in range(plan.reweights):
        np.clip(slope, plan.lowest_weight_slope, plan.dtype(0), out=slope)
        np.multiply(plan.twice_x_above, slope, out=w)
        np.exp(w, out=w)
        _weighted_sums(plan, w, total, sx, sxx, term)
        w *= rise  # now w (y - y0)
        np.copyto(sy, w[0])
        for above in range(1, plan.shells - 1):
            sy += w[above]
        np.multiply(w[0], plan.x_above[0], out=sxy)
        for above in range(1, plan.shells - 1):
            np.multiply(w[above], plan.x_above[above], out=term)
            sxy += term
        sy *= sx        # X Y
        sxy *= total    # W XY
        sx *= sx        # X^2
        sxx *= total    # W XX
        sxx -= sx
        if step + 1 == plan.reweights:
            sy -= sxy   # -(W XY - X Y): the ADC's numerator
            np.divide(sy, sxx, out=out, casting="unsafe")
        else:
            np.subtract(sxy, sy, out=slope)
            slope /= sxx


def _weighted_sums(plan: _FitPlan, w: np.ndarray, total, sx, sxx, term) -> None:
    """W (1 for the lowest shell plus the others' weights), X and XX of weights `w`."""
    np.add(w[0], 1, out=total)
    np.multiply(w[0], plan.x_above[0], out=sx)
    np.multiply(w[0], plan.x_above_squared[0], out=sxx)
    for above in range(1, plan.shells - 1):
        total += w[above]
        np.multiply(w[above], plan.x_above[above], out=term)
        sx += term
        np.multiply(w[above], plan.x_above_squared[above], out=term)
        sxx += term


def _fit_masked(plan: _FitPlan, y: np.ndarray) -> np.ndarray:
    """The fit of voxels with unusable samples (non-finite log): those weigh 0; NaN where fewer
    than two shells are usable. The same estimator as _fit_complete, in float64 (few voxels,
    and a lowest usable shell above x = 0 could cost float32 its precision)."""
    usable = np.isfinite(y)
    y = np.where(usable, y, 0.0).astype(np.float64)
    x = plan.x[:, None]
    w = usable.astype(np.float64)
    slope = _line_slope(x, y, w)
    for _ in range(plan.reweights):
        weight_slope = np.clip(slope, float(plan.lowest_weight_slope), 0.0)
        w = np.where(usable, np.exp(2.0 * weight_slope * x), 0.0)
        slope = _line_slope(x, y, w)
    return np.where(usable.sum(axis=0) >= 2, -slope, np.nan)


def _line_slope(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Slope of each column's weighted least-squares line (NaN without two weighted points)."""
    total, sx, sy = w.sum(axis=0), (w * x).sum(axis=0), (w * y).sum(axis=0)
    sxx, sxy = (w * x * x).sum(axis=0), (w * x * y).sum(axis=0)
    with np.errstate(all="ignore"):
        return (total * sxy - sx * sy) / (total * sxx - sx * sx)


def trace_weighted(
    volumes_kji: Sequence[np.ndarray],
    bvalues_s_per_mm2: Sequence[float],
    floors: Optional[Sequence[float]] = None,
) -> Tuple[List[np.ndarray], List[float]]:
    """One image per shell (group_shells): several images in one shell (diffusion directions)
    become their geometric mean, the trace-weighted image, at the shell's mean b. The DICOM
    reader combines slice by slice with it; fit_adc_volume does the same inside its loop.

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
    shell_b, shells = group_shells(b)
    for value, indices in zip(shell_b, shells):
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
