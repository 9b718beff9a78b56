"""Benchmark: the `adc` command against MRtrix3's `dwi2adc`, whole processes, one machine.

Generated data: 384 x 384 x 160 voxels x 4 b-values (0, 50, 400, 800 s/mm^2), float32
uncompressed NIfTI, ADC 0.3-3.0 x 10^-3 mm^2/s, S0 200-2000, Rician noise at SNR 30 (of the
mean S0). Prints, each the best (and the median) of --repeat runs, the tools taking turns:
  - `vertebral-marrow adc` (the fit, iwls and ols) and `dwi2adc -nthreads 2`, with both RMSEs
    against the truth (10^-3 mm^2/s, voxels both fitted);
  - the naive per-voxel scipy `curve_fit`, timed on a sample and extrapolated;
  - the read floor: reading the input file's bytes once;
  - peak memory (getrusage maxrss of a child process) of `adc` on the whole-body case,
    400 x 400 x 200 x 4, against its output's size.

MRtrix3: `apt-get install mrtrix3` (Debian/Ubuntu) or https://www.mrtrix.org/download/;
without it the dwi2adc column is skipped.
Run:  .venv/bin/python bench/bench_adc.py [--size 384 384 160] [--repeat 5]
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCES = Path(__file__).resolve().parents[1] / "VertebralMarrow"
BVALUES = (0.0, 50.0, 400.0, 800.0)
SNR = 30.0
MB = 1024.0 * 1024.0


def write_nifti(path: Path, volumes_kji, spacing=(1.5, 1.5, 5.0)) -> None:
    """A 4-D float32 NIfTI-1 written slab by slab (header by SimpleITK on a one-slice image,
    dimensions patched), so that generating whole-body data needs no 4-D array in memory."""
    import SimpleITK as sitk

    k, j, i = volumes_kji[0].shape
    probe = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((1, j, i), np.float32))] * len(volumes_kji))
    probe.SetSpacing(tuple(spacing) + (1.0,))
    with tempfile.TemporaryDirectory() as scratch:
        sitk.WriteImage(probe, str(Path(scratch) / "probe.nii"))
        header = bytearray((Path(scratch) / "probe.nii").read_bytes()[:352])
    dims = np.frombuffer(bytes(header[40:56]), "<i2").copy()
    dims[3] = k
    header[40:56] = dims.tobytes()
    with open(path, "wb") as handle:
        handle.write(header)
        for volume in volumes_kji:
            handle.write(np.ascontiguousarray(volume, "<f4").tobytes())


def synthetic(shape_kji, seed=0):
    """Truth ADC (10^-3 mm^2/s) and one float32 volume per b-value, built slice by slice."""
    rng = np.random.default_rng(seed)
    adc = np.empty(shape_kji, np.float32)
    volumes = [np.empty(shape_kji, np.float32) for _ in BVALUES]
    sigma = 1100.0 / SNR  # mean S0 1100
    for k in range(shape_kji[0]):
        truth = rng.uniform(0.3, 3.0, shape_kji[1:]).astype(np.float32)
        s0 = rng.uniform(200.0, 2000.0, shape_kji[1:]).astype(np.float32)
        adc[k] = truth
        for volume, b in zip(volumes, BVALUES):
            clean = s0 * np.exp(-b * truth / 1000.0)
            real = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
            imaginary = rng.normal(0.0, sigma, clean.shape).astype(np.float32)
            volume[k] = np.hypot(real, imaginary)
    return adc, volumes


def timed(command, env=None):
    """(wall seconds, CPU seconds: user + system) of one run of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stderr}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def interleaved(repeat, commands, env=None):
    """Each command `repeat` times, in rounds of one run each (so drifting load on the machine
    falls on all alike): {name: (best wall, best CPU, median wall)}."""
    runs = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (command, command_env) in commands.items():
            runs[name].append(timed(command, command_env))
    return {name: (min(t for t, _ in done), min(c for _, c in done), float(np.median([t for t, _ in done])))
            for name, done in runs.items()}


def read_map(path: Path, volume: int = 0) -> np.ndarray:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return array[volume] if array.ndim == 4 else array


def rmse(fitted, truth):
    both = np.isfinite(fitted)
    return float(np.sqrt(np.mean((fitted[both] - truth[both]) ** 2))), float(1.0 - both.mean())


def naive_curve_fit_seconds(volumes, sample=2000, seed=1):
    """scipy's curve_fit of S0 exp(-b ADC) voxel by voxel, on `sample` voxels."""
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(seed)
    flat = np.stack([v.reshape(-1) for v in volumes])
    picks = rng.choice(flat.shape[1], sample, replace=False)
    b = np.asarray(BVALUES)

    def model(bvalues, s0, adc):
        return s0 * np.exp(-bvalues * adc / 1000.0)

    start = time.perf_counter()
    for index in picks:
        try:
            curve_fit(model, b, flat[:, index], p0=(flat[0, index], 1.0), maxfev=200)
        except RuntimeError:
            pass
    return (time.perf_counter() - start) / sample


def read_floor(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(1 << 24)
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - start


def peak_memory_mb(dwi: Path, out: Path, env) -> float:
    """maxrss of a child process that runs the command's main() and reports its own peak.
    Linux carries a parent's peak across fork and exec, so the child is started from a
    small shell, not from this (large) process."""
    code = ("import resource, sys\nfrom VertebralMarrowLib.cli import main\n"
            "status = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)\nsys.exit(status)\n")
    script = Path(out).with_suffix(".py")
    script.write_text(code)
    shell = f'"{sys.executable}" "{script}" -q adc --dwi "{dwi}" --out "{out}"; exit $?'  # a fork, not an exec
    done = subprocess.run(["/bin/sh", "-c", shell], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return float(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GB RAM, Python {platform.python_version()}, numpy {np.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(384, 384, 160), metavar=("I", "J", "K"))
    parser.add_argument("--whole-body", type=int, nargs=3, default=(400, 400, 200), metavar=("I", "J", "K"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(SOURCES) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # byte-compiled, as pip leaves an installed package (PYTHONDONTWRITEBYTECODE would otherwise
    # have every run compile the sources again)
    compileall.compile_dir(str(SOURCES / "VertebralMarrowLib"), quiet=1)
    command = [sys.executable, "-m", "VertebralMarrowLib", "-q", "adc"]
    dwi2adc = shutil.which("dwi2adc")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        ni, nj, nk = args.size
        truth, volumes = synthetic((nk, nj, ni))
        dwi = scratch / "dwi.nii"
        write_nifti(dwi, volumes)
        (scratch / "dwi.bval").write_text(" ".join(f"{b:g}" for b in BVALUES) + "\n")
        (scratch / "dwi.bvec").write_text("\n".join(" ".join("0" if b == 0 else "1" for b in BVALUES) if axis == 0 else
                                                    " ".join("0" for _ in BVALUES) for axis in range(3)) + "\n")
        voxels = truth.size
        print(f"\n`adc` on {ni} x {nj} x {nk} x {len(BVALUES)} float32 NIfTI ({dwi.stat().st_size / MB:.0f} MB), "
              f"b = {', '.join(f'{b:g}' for b in BVALUES)}, Rician SNR {SNR:g}; best and median of {args.repeat}, taking turns")
        print(f"{'':34s} {'seconds':>8s} {'CPU s':>6s} {'median':>7s} {'Mvoxel/s':>9s} {'RMSE':>7s} {'NaN %':>6s}")
        outputs = {"iwls": scratch / "adc_iwls.nrrd", "ols": scratch / "adc_ols.nrrd",  # uncompressed, as
                   "dwi2adc": scratch / "dwi2adc.nii"}                                 # dwi2adc writes its .nii
        commands = {method: (command + ["--dwi", str(dwi), "--method", method, "--out", str(outputs[method])], env)
                    for method in ("iwls", "ols")}
        if dwi2adc:
            commands["dwi2adc"] = ([dwi2adc, str(dwi), str(outputs["dwi2adc"]), "-fslgrad", str(scratch / "dwi.bvec"),
                                    str(scratch / "dwi.bval"), "-nthreads", "2", "-force", "-quiet"], None)
        timings = interleaved(args.repeat, commands)
        rows = {method: timings[method] + rmse(read_map(outputs[method]), truth) for method in ("iwls", "ols")}
        if dwi2adc:
            rows["dwi2adc"] = timings["dwi2adc"] + rmse(read_map(outputs["dwi2adc"], volume=1) * 1000.0, truth)  # mm^2/s -> 10^-3
        names = {"iwls": "vertebral-marrow adc (iwls)", "ols": "vertebral-marrow adc --method ols",
                 "dwi2adc": "MRtrix3 dwi2adc -nthreads 2"}
        for key, (seconds, cpu, median, error, nan) in rows.items():
            print(f"{names[key]:34s} {seconds:8.2f} {cpu:6.2f} {median:7.2f} {voxels / seconds / 1e6:9.1f} {error:7.4f} "
                  f"{100 * nan:6.2f}")
        if not dwi2adc:
            print("MRtrix3 dwi2adc: not installed (apt-get install mrtrix3); column skipped")
        per_voxel = naive_curve_fit_seconds(volumes)
        print(f"{'scipy curve_fit per voxel (extrap.)':34s} {per_voxel * voxels:8.0f} {'':6s} {1 / per_voxel / 1e6:9.4f}")
        print(f"{'read floor (the file once)':34s} {read_floor(dwi):8.2f}")
        if dwi2adc:
            print(f"adc (iwls) is {rows['dwi2adc'][0] / rows['iwls'][0]:.2f}x dwi2adc's speed "
                  f"({rows['dwi2adc'][2] / rows['iwls'][2]:.2f}x by the medians), "
                  f"{rows['dwi2adc'][1] / rows['iwls'][1]:.2f}x in CPU time (goal >= 2x), "
                  f"RMSE {rows['iwls'][3]:.4f} vs {rows['dwi2adc'][3]:.4f} (goal: no worse)")
        del truth, volumes

        ni, nj, nk = args.whole_body
        truth, volumes = synthetic((nk, nj, ni), seed=2)
        whole = scratch / "whole.nii"
        write_nifti(whole, volumes)
        (scratch / "whole.bval").write_text(" ".join(f"{b:g}" for b in BVALUES) + "\n")
        output_mb = truth.nbytes / MB
        del truth, volumes
        peak = peak_memory_mb(whole, scratch / "whole_adc.nrrd", env)
        print(f"\nwhole body {ni} x {nj} x {nk} x {len(BVALUES)} ({whole.stat().st_size / MB:.0f} MB in, "
              f"{output_mb:.0f} MB out): peak memory {peak:.0f} MB, the map written as it is fitted "
              f"(goal <= output + 256 MB = {output_mb + 256:.0f} MB)")


if __name__ == "__main__":
    main()
