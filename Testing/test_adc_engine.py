"""The float32 ADC engine against the float64 fit of the same estimator, the edge cases of
real DWI (a zero direction, b-values that differ by rounding, maps with no finite voxel, .bval
files), and the `adc` command: files read without MRML, memory-mapped where the format allows,
the unit written into the map, no vtk imported.

Expected values come from the float64 reference (`fit_adc`, same estimator), from SimpleITK's
own reading of the files, or from physics (S = S0 exp(-b ADC)); never from the engine itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from VertebralMarrowLib.core.adc import fit_adc, fit_adc_volume, group_shells
from VertebralMarrowLib.inputs.dwi_files import read_dwi_files

B = (0.0, 50.0, 400.0, 800.0)
SOURCES = str(Path(__file__).resolve().parents[1] / "VertebralMarrow")


def rician_volumes(shape, bvalues, snr, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    adc = rng.uniform(0.2, 3.0, shape)
    s0 = rng.uniform(200.0, 2000.0, shape)
    sigma = 1000.0 / snr
    volumes = []
    for b in bvalues:
        clean = s0 * np.exp(-b * adc / 1000.0)
        volumes.append(np.hypot(clean + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)).astype(dtype))
    return volumes, adc


def assert_engine_is_the_reference(volumes, bvalues, method, **kwargs):
    engine = fit_adc_volume(volumes, bvalues, method, **kwargs)
    reference = fit_adc(np.stack([np.asarray(v, np.float64).ravel() for v in volumes]), bvalues, method)
    assert engine.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(engine.ravel()), np.isnan(reference))
    np.testing.assert_allclose(engine.ravel(), reference, atol=1e-4, rtol=0)
    return engine


@pytest.mark.parametrize("method", ["iwls", "ols"])
@pytest.mark.parametrize("bvalues", [B, (0.0, 2500.0), (0.0, 100.0, 500.0, 1000.0, 1500.0, 2000.0)])
def test_float32_engine_agrees_with_the_float64_fit_within_1e4(method, bvalues):
    volumes, _ = rician_volumes((9, 31, 37), bvalues, snr=30, seed=len(bvalues))
    # the samples real data has: clamped zeros, NaN, negative, inf
    flat = [v.reshape(-1) for v in volumes]
    flat[-1][::7] = 0.0
    flat[0][3::11] = np.nan
    flat[1][5::13] = -4.0
    flat[-1][6::17] = np.inf
    for image in flat[1:]:
        image[::19] = 0.0  # and voxels left with fewer than two usable b-values
    engine = assert_engine_is_the_reference(volumes, bvalues, method, chunk_voxels=1000)
    assert np.isnan(engine).any() and np.isfinite(engine).mean() > 0.5


def test_threads_and_chunks_do_not_change_a_voxel():
    volumes, _ = rician_volumes((6, 40, 50), B, snr=20, seed=3)
    results = [fit_adc_volume(volumes, B, threads=threads, chunk_voxels=chunk)
               for threads, chunk in ((1, 10**7), (2, 777), (2, 4096), (3, 50))]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_integer_and_strided_inputs_are_read_as_they_are():
    volumes, _ = rician_volumes((5, 20, 30), B, snr=40, seed=4, dtype=np.int16)
    stacked = np.stack(volumes, axis=-1)  # (k, j, i, b): each volume a strided view
    strided = [stacked[..., n] for n in range(len(B))]
    assert not strided[0].flags.c_contiguous
    engine = assert_engine_is_the_reference(strided, B, "iwls", chunk_voxels=333)
    np.testing.assert_array_equal(engine, fit_adc_volume(volumes, B))


def test_a_zero_direction_is_floored_not_nan():
    """Isotropic ADC 1.0 at b = 1000 in three directions, one stored as 0 (int16): the voxel
    keeps a value (the zero read as one stored unit); a lone b-value image stored as 0 stays
    unusable."""
    b = [0.0, 1000.0, 1000.0, 1000.0]
    s0 = 1000.0
    images = [np.full((1, 2, 2), s0 * np.exp(-value / 1000.0), np.float64).round().astype(np.int16) for value in b]
    images[0][0, 0, 0] = 1000
    images[3][0, 0, :] = 0
    adc = fit_adc_volume(images, b)
    assert np.isfinite(adc).all()
    expected = np.log(1000.0 / np.cbrt(368.0 * 368.0 * 1.0))  # floored at 1: geometric mean with 1
    assert adc[0, 0, 0] == pytest.approx(expected, rel=1e-5)
    assert adc[0, 1, 0] == pytest.approx(1.0, abs=0.01)


def test_bvalues_that_differ_by_rounding_are_one_shell():
    shells, members = group_shells([0, 5, 995, 1000, 1005, 998.7, 50, 400])
    assert shells == pytest.approx([2.5, 50.0, 400.0, np.mean([995, 1000, 1005, 998.7])])
    assert members[-1] == [2, 3, 4, 5]
    assert group_shells([0, 10, 20, 30, 50, 80])[0] == pytest.approx([5.0, 20.0, 30.0, 50.0, 80.0])
    # the rounded shell fits as the trace: noiseless ADC 1.0 recovered
    b = [0.0, 995.0, 1000.0, 1005.0]
    images = [np.full((1, 1, 3), 800.0 * np.exp(-1.0)) for _ in b[1:]]
    adc = fit_adc_volume([np.full((1, 1, 3), 800.0)] + images, b)
    np.testing.assert_allclose(adc, 1.0, rtol=1e-5)  # shell at b = 1000, the mean


# --- files --------------------------------------------------------------------------------------


def grid_image(array_kji, vector=False):
    image = sitk.GetImageFromArray(array_kji, isVector=vector)
    image.SetSpacing((1.5, 1.2, 4.0))
    image.SetOrigin((10.0, -20.0, 35.0))
    angle = 0.3
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.fixture(scope="module")
def dwi_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine_files")
    volumes, _ = rician_volumes((6, 18, 22), B, snr=30, seed=9)
    volumes[-1].reshape(-1)[::5] = 0
    series = sitk.JoinSeries([grid_image(v) for v in volumes])
    paths = {"nii": folder / "dwi.nii", "nii.gz": folder / "dwi.nii.gz", "nrrd": folder / "dwi.nrrd"}
    sitk.WriteImage(series, str(paths["nii"]))
    sitk.WriteImage(series, str(paths["nii.gz"]))
    sitk.WriteImage(grid_image(np.stack(volumes, axis=-1), vector=True), str(paths["nrrd"]))  # list axis first
    (folder / "dwi.bvals").write_text(" ".join(f"{b:g}" for b in B) + "\n")
    return folder, paths, volumes


@pytest.mark.parametrize("kind, mapped", [("nii", True), ("nrrd", True), ("nii.gz", False)])
def test_4d_files_read_as_simpleitk_reads_them(dwi_files, kind, mapped):
    _, paths, volumes = dwi_files
    dwi = read_dwi_files([paths[kind]], B)
    assert dwi.bvalues == list(B)
    for got, expected in zip(dwi.volumes, volumes):
        np.testing.assert_array_equal(got, expected)
        assert isinstance(got, np.memmap) == mapped
    # the oblique grid as SimpleITK reads the header (LPS -> RAS here, independently)
    reference = sitk.ReadImage(str(paths[kind]))
    dimension = reference.GetDimension()
    direction = np.array(reference.GetDirection()).reshape(dimension, dimension)[:3, :3]
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1, -1, 1]) @ direction @ np.diag(reference.GetSpacing()[:3])
    expected[:3, 3] = np.diag([-1, -1, 1]) @ np.array(reference.GetOrigin()[:3])
    np.testing.assert_allclose(dwi.ijk_to_ras, expected, atol=1e-5)


def raw_nrrd(path: Path, volume_kji: np.ndarray, endian: str, comment: str) -> None:
    """A raw 3-D NRRD written by hand: `comment` shifts the data to an odd offset."""
    header = (f"NRRD0004\n# {comment}\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {' '.join(str(n) for n in volume_kji.shape[::-1])}\n"
              "space directions: (1.5,0,0) (0,1.5,0) (0,0,4)\nkinds: domain domain domain\n"
              f"endian: {'big' if endian == '>' else 'little'}\nencoding: raw\nspace origin: (0,0,0)\n\n")
    path.write_bytes(header.encode("ascii") + volume_kji.astype(endian + "f4").tobytes())


def test_mapped_files_are_fitted_as_the_same_voxels_in_memory(dwi_files, tmp_path):
    """Files the engine reads with pread (contiguous maps: 4-D NIfTI, 3-D NRRD at odd offsets,
    big-endian) and through their map (interleaved 4-D NRRD) give the map of the same arrays
    in memory, voxel for voxel, whatever the chunks."""
    from VertebralMarrowLib.core.adc import _FileRun

    _, paths, volumes = dwi_files
    singles = []
    for n, volume in enumerate(volumes):
        singles.append(tmp_path / f"b{n}.nrrd")
        raw_nrrd(singles[-1], volume, "<>"[n % 2], "x" * (n * 7 + 3))
    expected = fit_adc_volume([np.array(v) for v in volumes], B)
    for files, bvalues, by_pread in (([paths["nii"]], [], True), ([paths["nrrd"]], B, False), (singles, B, True)):
        dwi = read_dwi_files(files, bvalues)
        assert all((_FileRun.of(v) is not None) == by_pread for v in dwi.volumes)
        for chunk in (10**6, 1000, 333):
            np.testing.assert_array_equal(fit_adc_volume(dwi.volumes, dwi.bvalues, chunk_voxels=chunk), expected)


def test_the_streamed_map_is_the_map_written_whole(dwi_files, tmp_path):
    """A raw .nrrd is written while it is fitted; a gzip .nrrd from the whole map: the same
    header but for the encoding, the same bytes of data, and no temporary file left."""
    import gzip

    _, paths, _ = dwi_files
    streamed, whole = tmp_path / "streamed.nrrd", tmp_path / "whole.nrrd"
    for out, extra in ((streamed, ()), (whole, ("--compress",))):
        report, done = run_adc("-q", "adc", "--dwi", paths["nii"], *extra, "--out", out)
        assert report["status"] == 0, done.stderr
    parts = [path.read_bytes().split(b"\n\n", 1) for path in (streamed, whole)]
    assert parts[0][0].replace(b"encoding: raw", b"encoding: gzip") == parts[1][0]
    assert parts[0][1] == gzip.decompress(parts[1][1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.nrrd", "whole.nrrd"]


def test_without_pread_and_pwrite_the_map_is_the_same(dwi_files, tmp_path, monkeypatch):
    """Windows has neither: the DWI is then read through its memory map and the map written
    whole, byte for byte what the streamed run writes."""
    from VertebralMarrowLib.cli import main

    _, paths, _ = dwi_files
    streamed, whole = tmp_path / "streamed.nrrd", tmp_path / "whole.nrrd"
    assert main(["-q", "adc", "--dwi", str(paths["nii"]), "--out", str(streamed)]) == 0
    monkeypatch.delattr(os, "preadv")
    monkeypatch.delattr(os, "pwrite")
    assert main(["-q", "adc", "--dwi", str(paths["nii"]), "--out", str(whole)]) == 0
    assert whole.read_bytes() == streamed.read_bytes()


def test_a_map_that_cannot_be_written_is_one_error_naming_the_target():
    """/dev/full refuses every byte (a full disk): the error names the file the user asked for,
    not the temporary one written first."""
    from VertebralMarrowLib.errors import InputError
    from VertebralMarrowLib.outputs.map_file import MapStream

    with pytest.raises(InputError, match=r"^cannot write results/adc\.nrrd: "):
        MapStream("/dev/full", (2, 3, 4), np.eye(4), shown_as="results/adc.nrrd")


@pytest.mark.parametrize("suffix", [".nii", ".nrrd"])
def test_a_truncated_raw_dwi_is_one_error_line(dwi_files, tmp_path, suffix):
    _, paths, _ = dwi_files
    source = paths["nii"] if suffix == ".nii" else tmp_path / "whole.nrrd"
    if suffix == ".nrrd":
        raw_nrrd(source, np.ones((6, 18, 22), np.float32), "<", "one volume")
    data = source.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) - 1000])
    out = tmp_path / "adc.nrrd"
    report, done = run_adc("-q", "adc", "--dwi", cut, "--bvalues", "0,50,400,800" if suffix == ".nii" else "0",
                           "--out", out)
    assert report["status"] == 2
    assert done.stderr.startswith(f"error: DWI {cut} holds ") and "the file is truncated" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not out.exists()


def test_the_program_gives_openblas_one_thread_unless_told_otherwise():
    """OpenBLAS's spinning thread would take a core from the fit: the program (not a Python
    session that calls main) sets OPENBLAS_NUM_THREADS=1 before numpy loads, unless set."""
    code = ("import os, sys\nfrom VertebralMarrowLib.cli import main\nsys.argv = ['vertebral-marrow', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = SOURCES
    for prefix, given, expected in (("", None, "1"), ("", "3", "3"), ("import numpy\n", None, "None")):
        run_env = dict(env, **({"OPENBLAS_NUM_THREADS": given} if given else {}))
        done = subprocess.run([sys.executable, "-c", prefix + code], capture_output=True,
                              text=True, env=run_env, timeout=60)
        assert done.stdout.strip().splitlines()[-1] == expected, done.stderr


def run_adc(*args, check_modules=False):
    code = (
        "import sys, json\n"
        "from VertebralMarrowLib.cli import main\n"
        "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as exc:\n    status = exc.code\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'vtk', 'vtkmodules', 'slicer', 'matplotlib', 'pydicom'})\n"
        "print(json.dumps({'status': status, 'loaded': loaded}))\n"
    )
    env = dict(os.environ, PYTHONPATH=SOURCES, PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", code, *[str(a) for a in args]], capture_output=True, text=True,
                          env=env, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, done


def test_adc_command_runs_without_vtk_and_writes_the_unit(dwi_files, tmp_path):
    folder, paths, volumes = dwi_files
    out = tmp_path / "adc.nrrd"
    report, done = run_adc("-q", "adc", "--dwi", paths["nii"], "--out", out)  # b-values from dwi.bvals
    assert report == {"status": 0, "loaded": []}, done.stderr
    assert done.stderr == ""
    header = out.read_bytes()[:1000].decode("latin-1")
    assert "content: ADC 10^-3 mm^2/s" in header and "encoding: raw" in header
    written = sitk.ReadImage(str(out))
    reference = sitk.ReadImage(str(paths["nii.gz"]))
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin()[:3], atol=1e-6)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing()[:3], atol=1e-6)
    np.testing.assert_allclose(np.array(written.GetDirection()).reshape(3, 3),
                               np.array(reference.GetDirection()).reshape(4, 4)[:3, :3], atol=1e-9)
    expected = fit_adc(np.stack([v.astype(np.float64).ravel() for v in volumes]), B).reshape(volumes[0].shape)
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), expected, atol=1e-4, equal_nan=True)

    nifti = tmp_path / "adc.nii.gz"
    report, done = run_adc("-q", "adc", "--dwi", paths["nrrd"], "--bvalues", "0,50,400,800", "--compress", "--out", nifti)
    assert report["status"] == 0 and report["loaded"] == [], done.stderr
    image = sitk.ReadImage(str(nifti))
    assert image.GetMetaData("descrip") == "ADC 10^-3 mm^2/s"
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, atol=1e-4, equal_nan=True)


def test_adc_help_answers_without_vtk():
    report, done = run_adc("adc", "--help")
    assert report == {"status": 0, "loaded": []}
    assert "--compress" in done.stdout


def test_a_map_without_a_finite_voxel_is_an_error_and_not_written(tmp_path):
    path = tmp_path / "dark.nii"
    sitk.WriteImage(sitk.JoinSeries([grid_image(np.zeros((2, 3, 4), np.float32)) for _ in B]), str(path))
    out = tmp_path / "out" / "adc.nrrd"
    report, done = run_adc("-q", "adc", "--dwi", path, "--bvalues", "0,50,400,800", "--out", out)
    assert report["status"] == 2
    assert done.stderr.startswith("error: ") and "no finite voxel" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not out.exists()


def test_a_bval_file_with_the_wrong_count_says_so(dwi_files, tmp_path):
    folder, paths, _ = dwi_files
    path = tmp_path / "dwi.nii"
    path.write_bytes(paths["nii"].read_bytes())
    (tmp_path / "dwi.bval").write_text("0 50 400\n")
    report, done = run_adc("-q", "adc", "--dwi", path, "--out", tmp_path / "adc.nrrd")
    assert report["status"] == 2
    assert "dwi.bval lists 3 b-values" in done.stderr and "4 volumes" in done.stderr


def test_progress_is_one_line_on_a_terminal_and_nothing_elsewhere():
    from VertebralMarrowLib.cli import _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert _progress(True, io.StringIO()) is None
    assert _progress(False, Terminal()) is None
    terminal = Terminal()
    report = _progress(True, terminal)
    for fraction in np.linspace(0, 1, 50):
        report(float(fraction), "ADC fit")
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") >= 1
    assert "100%" in text.splitlines()[-1].split("\r")[-1]


def test_a_counting_step_shows_its_rate_in_its_own_units(monkeypatch):
    """4 M voxels fitted between 0.5 s (when the step before it reported) and 2.5 s: 2.0 M/s."""
    from VertebralMarrowLib import cli

    times = [0.0, 0.5, 1.0, 2.5]  # the bar's start, then one per report; 2.5 for anything else
    monkeypatch.setattr(cli.time, "monotonic", lambda: times.pop(0) if len(times) > 1 else times[0])

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    report = cli._progress(True, terminal)
    report(0.1, "reading the DWI")
    report(0.4, "ADC fit: 1,000,000 of 4,000,000 voxels")
    report(1.0, "ADC fit: 4,000,000 of 4,000,000 voxels")
    lines = [line for line in terminal.getvalue().split("\r") if line]
    assert "%/s" in lines[0] and "2.0 M voxels/s" in lines[-1]
