"""Benchmark: the voxel-wise ADC fit on a whole-body-sized DWI.

400 x 400 x 200 voxels x 4 b-values (0, 50, 400, 800 s/mm^2), float32, synthetic
mono-exponential signal with Rician noise. Times `fit_adc_volume` (IWLS and OLS) and reports
the working set: the peak of memory allocated during the fit beyond its inputs and output
(tracemalloc sees numpy's buffers), and the process's peak resident set (getrusage).

Run:  .venv/bin/python bench/bench_adc.py [--size 400 400 200] [--chunk N ...]
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:
    from VertebralMarrowLib.core.adc import FIT_CHUNK_VOXELS, fit_adc_volume
except ImportError:  # running from the source tree without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "VertebralMarrow"))
    from VertebralMarrowLib.core.adc import FIT_CHUNK_VOXELS, fit_adc_volume

BVALUES = (0.0, 50.0, 400.0, 800.0)
MB = 1024.0 * 1024.0


def synthetic_dwi(shape_kji, seed=0):
    """One float32 volume per b-value, built slab by slab (no whole-volume float64 temporaries).
    ADC ramps 0.3-2.5 x 10^-3 mm^2/s along k, S0 1000, Rician noise sigma 25 (SNR 40)."""
    rng = np.random.default_rng(seed)
    volumes = [np.empty(shape_kji, np.float32) for _ in BVALUES]
    adc_profile = np.linspace(0.3, 2.5, shape_kji[0])
    for k in range(shape_kji[0]):
        plane_shape = shape_kji[1:]
        for volume, b in zip(volumes, BVALUES):
            clean = 1000.0 * np.exp(-b * adc_profile[k] / 1000.0)
            real = clean + rng.normal(0.0, 25.0, plane_shape).astype(np.float32)
            imaginary = rng.normal(0.0, 25.0, plane_shape).astype(np.float32)
            volume[k] = np.hypot(real, imaginary)
    return volumes, adc_profile


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_fit(volumes, method, chunk_voxels):
    tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    adc = fit_adc_volume(volumes, BVALUES, method, chunk_voxels=chunk_voxels)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    working = peak - adc.nbytes  # beyond the output map itself
    return adc, seconds, working


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(400, 400, 200), metavar=("I", "J", "K"))
    parser.add_argument("--chunk", type=int, nargs="+", default=[FIT_CHUNK_VOXELS],
                        help="voxels per chunk (the fit rounds down to whole slices, at least one)")
    parser.add_argument("--methods", nargs="+", default=["iwls", "ols"])
    args = parser.parse_args(argv)
    ni, nj, nk = args.size
    shape = (nk, nj, ni)
    voxels = ni * nj * nk

    start = time.perf_counter()
    volumes, adc_profile = synthetic_dwi(shape)
    make_seconds = time.perf_counter() - start
    input_mb = sum(v.nbytes for v in volumes) / MB
    print(f"DWI {ni} x {nj} x {nk} voxels x {len(BVALUES)} b-values (float32): {voxels / 1e6:.1f} M voxels, "
          f"inputs {input_mb:.0f} MB, built in {make_seconds:.1f} s; peak RSS so far {peak_rss_mb():.0f} MB")
    print()
    print(f"{'method':6s} {'chunk (voxels)':>14s} {'time (s)':>9s} {'M voxels/s':>11s} "
          f"{'fit working set (MB)':>21s} {'output (MB)':>11s} {'median rel. error':>18s}")
    for method in args.methods:
        for chunk in args.chunk:
            adc, seconds, working = time_fit(volumes, method, chunk)
            # accuracy on the middle slice (true ADC known per slice)
            middle = shape[0] // 2
            error = np.nanmedian(np.abs(adc[middle] / adc_profile[middle] - 1.0))
            print(f"{method:6s} {chunk:14d} {seconds:9.1f} {voxels / seconds / 1e6:11.2f} "
                  f"{working / MB:21.0f} {adc.nbytes / MB:11.0f} {error:18.4f}", flush=True)
            del adc
    print()
    print(f"process peak RSS: {peak_rss_mb():.0f} MB (inputs {input_mb:.0f} MB + output "
          f"{voxels * 4 / MB:.0f} MB + the largest fit working set + interpreter and numpy)")


if __name__ == "__main__":
    main()
