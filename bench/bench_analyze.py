"""Benchmark: `analyze` at 6 and at 36 ROIs on one study, whole processes.

The synthetic study (`vertebral-marrow phantom`: scanner ADC map, T1, T2, STIR, CT) with a
labelmap of N lesion ROIs (small boxes along the spine's marrow, one normal-marrow
reference), drawn on the ADC grid. Only the number of ROIs changes, so the ratio of the two
times is what the per-ROI work costs (pictures, coverage, outlines, scene). Goal: 36 ROIs in
at most 1.5x the time of 6.

Run:  .venv/bin/python bench/bench_analyze.py [--rois 6 36] [--repeat 5]
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_adc import interleaved  # the same timing for every bench (this folder is on sys.path)

SOURCES = Path(__file__).resolve().parents[1] / "VertebralMarrow"


def roi_labelmap(study: Path, count: int, out: Path, seed: int = 0) -> Path:
    """`count` lesion boxes (3 x 3 x 2 voxels) and one reference, where the scanner map shows
    marrow (ADC 0.2-1.0 x 10^-3 mm^2/s), written as labelmap + Slicer colour table."""
    import SimpleITK as sitk

    truth = json.loads((study / "ground_truth.json").read_text())
    adc_image = sitk.ReadImage(str(study / truth["files"]["adc"]))
    adc = sitk.GetArrayFromImage(adc_image).astype(float) / 1000.0
    labels = np.zeros(adc.shape, np.uint8)
    rng = np.random.default_rng(seed)
    marrow = np.argwhere((adc > 0.2) & (adc < 1.0))
    placed = 0
    for k, j, i in marrow[rng.permutation(len(marrow))]:
        box = (slice(k, k + 2), slice(j, j + 3), slice(i, i + 3))
        if labels[box].any() or labels[box].size < 18:
            continue
        placed += 1
        labels[box] = placed
        if placed == count + 1:
            break
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(adc_image)
    sitk.WriteImage(image, str(out))
    names = ["# value name r g b a"] + [f"{n} lesion_{n:02d} 200 60 60 255" for n in range(1, count + 1)]
    names.append(f"{count + 1} L3_normal 60 60 200 255")
    out.with_suffix(".ctbl").write_text("\n".join(names) + "\n")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, nargs="+", default=[6, 36])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(SOURCES) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "VertebralMarrowLib", "-q"]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        study = scratch / "study"
        subprocess.run(command + ["phantom", "--out", str(study)], check=True, env=env, capture_output=True)
        truth = json.loads((study / "ground_truth.json").read_text())
        files = {key: study / name for key, name in truth["files"].items()}
        print(f"`analyze` on the synthetic study (scanner ADC, T1, T2, STIR, CT); best and median of {args.repeat}, "
              "taking turns")
        print("wall seconds, and the CPU seconds of the process (user + system: what the work costs, "
              "whatever else the machine runs)")
        commands = {}
        for count in args.rois:
            labels = roi_labelmap(study, count, scratch / f"rois_{count}.nrrd")
            commands[count] = (command + ["analyze", "--seg", str(labels), "--label-names", str(labels.with_suffix(".ctbl")),
                                          "--adc", str(files["adc"]), "--t1", str(files["t1"]), "--t2", str(files["t2"]),
                                          "--fs", str(files["fs"]), "--ct", str(files["ct"]),
                                          "--out", str(scratch / f"out_{count}")], env)
        timings = interleaved(args.repeat, commands)
        print(f"{'ROIs':>5s} {'seconds':>8s} {'CPU s':>8s} {'median':>8s}")
        seconds, cpu, median = ({count: timing[n] for count, timing in timings.items()} for n in range(3))
        for count in args.rois:
            print(f"{count:5d} {seconds[count]:8.2f} {cpu[count]:8.2f} {median[count]:8.2f}")
        if len(args.rois) >= 2:
            low, high = min(args.rois), max(args.rois)
            print(f"{high} ROIs take {seconds[high] / seconds[low]:.2f}x the time of {low} "
                  f"({median[high] / median[low]:.2f}x by the medians, {cpu[high] / cpu[low]:.2f}x the CPU time; "
                  f"goal <= 1.5x)")


if __name__ == "__main__":
    main()
