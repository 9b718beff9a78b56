"""Benchmark: per-ROI statistics for 10, 100 and 1000 segments over the same voxels.

A whole-body-sized ADC map (400 x 400 x 200, float32); the segments partition one fixed set
of ROI voxels (a quarter of the volume), so only the number of segments changes. Times
`stats.roi_statistics` (ADC: mean, median, SD, percentiles, fraction at or below the
cut-off) and `stats.roi_means` (signal means), and, for comparison, the obvious per-segment
loop (`values[labels == k]` for every k), whose cost grows with the number of segments.

Run:  .venv/bin/python bench/bench_stats.py [--size 400 400 200] [--segments 10 100 1000]
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
    from VertebralMarrowLib.core.stats import roi_means, roi_statistics
except ImportError:  # running from the source tree without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "VertebralMarrow"))
    from VertebralMarrowLib.core.stats import roi_means, roi_statistics

MB = 1024.0 * 1024.0
CUTOFF = 1.21


def labels_for(shape_kji, roi: np.ndarray, segments: int) -> np.ndarray:
    """`segments` labels (1..segments) splitting the ROI voxels into equal contiguous runs."""
    labels = np.zeros(shape_kji, np.uint16)
    flat = labels.reshape(-1)
    index = np.flatnonzero(roi)
    flat[index] = 1 + (np.arange(index.size, dtype=np.int64) * segments // index.size)
    return labels


def naive(values: np.ndarray, labels: np.ndarray, segments: int) -> dict:
    out = {}
    for label in range(1, segments + 1):
        v = values[labels == label]
        v = v[np.isfinite(v)].astype(np.float64)
        out[label] = (v.mean(), np.median(v), v.std(ddof=1), np.percentile(v, [10, 90]), (v <= CUTOFF).mean())
    return out


def timed(function, *args):
    tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    return result, seconds, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(400, 400, 200), metavar=("I", "J", "K"))
    parser.add_argument("--segments", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--naive-up-to", type=int, default=100, help="run the per-segment loop up to this many segments")
    args = parser.parse_args(argv)
    ni, nj, nk = args.size
    shape = (nk, nj, ni)
    rng = np.random.default_rng(0)
    values = rng.gamma(4.0, 0.3, shape).astype(np.float32)  # ADC-like, mean 1.2
    values.reshape(-1)[rng.integers(0, values.size, values.size // 1000)] = np.nan  # failed fits
    roi = np.zeros(shape, bool)
    roi[nk // 4: nk // 4 + nk // 2, nj // 4: nj // 4 + nj // 2] = True  # a quarter of the volume
    n_roi = int(roi.sum())
    print(f"ADC map {ni} x {nj} x {nk} (float32, {values.size / 1e6:.1f} M voxels); "
          f"ROI voxels {n_roi / 1e6:.1f} M, the same for every segment count")
    print()
    print(f"{'segments':>8s} {'roi_statistics (s)':>19s} {'working set (MB)':>17s} {'roi_means (s)':>14s} "
          f"{'per-segment loop (s)':>21s}")
    for segments in args.segments:
        labels = labels_for(shape, roi, segments)
        stats, seconds, peak = timed(roi_statistics, values, labels, CUTOFF)
        assert len(stats) == segments
        _, mean_seconds, _ = timed(roi_means, values, labels)
        if segments <= args.naive_up_to:
            reference, loop_seconds, _ = timed(naive, values, labels, segments)
            # the benchmark also checks itself: one-pass statistics equal the loop's
            for label in (1, segments):
                assert np.isclose(stats[label]["mean"], reference[label][0], rtol=1e-9)
                assert np.isclose(stats[label]["median"], reference[label][1], rtol=1e-9)
            loop = f"{loop_seconds:21.2f}"
        else:
            loop = f"{'(skipped)':>21s}"
        print(f"{segments:8d} {seconds:19.2f} {peak / MB:17.0f} {mean_seconds:14.2f} {loop}", flush=True)
    print()
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.0f} MB")


if __name__ == "__main__":
    main()
