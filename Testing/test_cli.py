"""The command line as users run it: `vertebral-marrow` (the venv's entry point) and
`python -m VertebralMarrowLib`, each in a subprocess, on the synthetic study in tmp_path.

Success: exit status 0, the interface's files with exactly its results.csv columns, numbers
that agree with an independent SimpleITK + numpy computation. Bad input: exit status 2, stderr
exactly one line starting with "error: " and no traceback. Input files are never changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli_in_process

BIN = Path(sys.executable).parent
ENTRY_POINT = BIN / "vertebral-marrow"
PYTHON_M = [sys.executable, "-m", "VertebralMarrowLib"]
INTERFACE_COLUMNS = (
    "segment, role, n_voxels_adc, volume_ml, adc_mean, adc_median, adc_sd, adc_p10, adc_p90, "
    "fraction_at_or_below_cutoff, adc_class, t1_ratio, t2_ratio, fs_ratio, t1_signal, t2_signal, "
    "fs_signal, ct_mean_hu, differential, adc_restricted"
).split(", ")
BVALUES = (0, 50, 400, 800)


def run(args, command=None, timeout=120):
    command = command or [str(ENTRY_POINT)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def sha256_tree(folder: Path):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The synthetic study written by `python -m VertebralMarrowLib phantom`."""
    folder = tmp_path_factory.mktemp("cli") / "study"
    done = run(["-q", "phantom", "--out", folder, "--seed", "1"], command=PYTHON_M)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    truth = json.loads((folder / "ground_truth.json").read_text())
    for name in truth["files"].values():
        assert (folder / name).is_file()
    return folder, truth, sha256_tree(folder)


def dwi_paths(folder, truth):
    return [folder / truth["files"][key] for key in sorted(k for k in truth["files"] if k.startswith("dwi_b"))]


def independent_means(folder: Path, truth: dict):
    """Per segment: (count, mean ADC in 10^-3) from SimpleITK NN resampling of the .seg.nrrd's
    own labelmap onto the scanner map, numpy mean of its integers x 10^-3; the scanner's 0 is
    no value (mean None where no voxel has one; the count is every ROI voxel)."""
    adc_image = sitk.ReadImage(str(folder / truth["files"]["adc"]))
    adc = sitk.GetArrayFromImage(adc_image).astype(np.float64) * 1e-3
    seg = sitk.ReadImage(str(folder / truth["files"]["seg"]))
    out, n = {}, 0
    while seg.HasMetaDataKey(f"Segment{n}_Name"):
        layer = int(seg.GetMetaData(f"Segment{n}_Layer"))
        image = seg if seg.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(seg, layer)
        labels = sitk.GetArrayFromImage(sitk.Resample(image, adc_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        mask = labels == int(seg.GetMetaData(f"Segment{n}_LabelValue"))
        values = adc[mask & (adc > 0)]
        out[seg.GetMetaData(f"Segment{n}_Name")] = (int(mask.sum()), float(values.mean()) if values.size else None)
        n += 1
    return out


# --- success --------------------------------------------------------------------------------


def test_analyze_writes_the_interface_outputs(phantom, tmp_path):
    folder, truth, hashes = phantom
    files = truth["files"]
    out = tmp_path / "out"
    done = run(["-q", "analyze", "--seg", folder / files["seg"], "--adc", folder / files["adc"],
                "--t1", folder / files["t1"], "--t2", folder / files["t2"], "--fs", folder / files["fs"], "--out", out])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for name in ("results.csv", "results.json", "overlay.nrrd", "report.html", "VertebralMarrow.mrml"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png"))
    with (out / "results.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert header == INTERFACE_COLUMNS
    assert {row["segment"] for row in rows} == set(truth["segments"])
    expected = independent_means(folder, truth)
    for row in rows:
        count, mean = expected[row["segment"]]
        assert int(row["n_voxels_adc"]) == count
        if mean is not None:  # the focus covers no voxel centre, the bone island has no DWI signal
            assert float(row["adc_mean"]) == pytest.approx(mean, abs=1e-4)  # the CSV keeps 4 decimals
        assert row["role"] == truth["segments"][row["segment"]]["role"]
        designed = truth["segments"][row["segment"]]
        if row["role"] == "lesion" and designed["adc_class"] is not None and designed["deciding_sign"] != "density":
            assert row["adc_class"] == designed["adc_class"]
        if row["role"] == "lesion" and designed.get("entity") == "bone_island":  # no CT given: no density sign
            assert row["adc_class"] == "n/a" and row["adc_mean"] == ""
            assert row["differential"].split(";")[0]
    document = json.loads((out / "results.json").read_text())
    assert "10^-6" in json.dumps(document)
    # the overlay lives on the ADC grid
    overlay, adc = sitk.ReadImage(str(out / "overlay.nrrd")), sitk.ReadImage(str(folder / files["adc"]))
    assert overlay.GetSize() == adc.GetSize()
    np.testing.assert_allclose(overlay.GetOrigin(), adc.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(overlay.GetDirection(), adc.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(overlay))) <= {0, 1, 2, 3, 4}
    assert sha256_tree(folder) == hashes


def numpy_ols_adc(volumes, bvalues):
    """Log-linear least squares per voxel with numpy's lstsq (10^-3 mm^2/s)."""
    design = np.column_stack([np.ones(len(bvalues)), -np.asarray(bvalues, float)])
    logs = np.log(np.stack([v.ravel() for v in volumes]).astype(np.float64))
    coefficients, *_ = np.linalg.lstsq(design, logs, rcond=None)
    return (coefficients[1] * 1000.0).reshape(volumes[0].shape)


@pytest.mark.parametrize("command", ["entry point", "python -m"])
def test_adc_writes_float32_map_on_the_dwi_grid(phantom, tmp_path, command):
    folder, truth, hashes = phantom
    paths = dwi_paths(folder, truth)
    out = tmp_path / "maps" / "adc.nrrd"
    done = run(["-q", "adc", "--dwi", *paths, "--bvalues", ",".join(map(str, BVALUES)), "--method", "ols", "--out", out],
               command=None if command == "entry point" else PYTHON_M)
    assert done.returncode == 0, done.stderr
    assert "0, 50, 400, 800" in done.stdout
    written = sitk.ReadImage(str(out))
    dwi = [sitk.ReadImage(str(p)) for p in paths]
    assert written.GetPixelID() == sitk.sitkFloat32
    assert written.GetSize() == dwi[0].GetSize()
    np.testing.assert_allclose(written.GetSpacing(), dwi[0].GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), dwi[0].GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), dwi[0].GetDirection(), atol=1e-6)
    # values: the independent numpy fit, in 10^-3 mm^2/s, wherever every sample is positive
    volumes = [sitk.GetArrayFromImage(image) for image in dwi]
    expected = numpy_ols_adc(volumes, BVALUES)
    usable = np.all([v > 0 for v in volumes], axis=0)
    assert usable.mean() > 0.5
    np.testing.assert_allclose(sitk.GetArrayFromImage(written)[usable], expected[usable], rtol=1e-4, atol=1e-5)
    assert sha256_tree(folder) == hashes


def test_adc_bmin_drops_bvalues_and_default_method_is_accurate(phantom, tmp_path):
    folder, truth, hashes = phantom
    out = tmp_path / "adc_b50.nrrd"
    done = run(["-q", "adc", "--dwi", *dwi_paths(folder, truth), "--bvalues", "0,50,400,800", "--bmin", "40", "--out", out])
    assert done.returncode == 0, done.stderr
    assert "b = 50, 400, 800" in done.stdout
    # lesion means of the fitted map (independent NN resampling) near the ground truth
    adc_image = sitk.ReadImage(str(out))
    adc = sitk.GetArrayFromImage(adc_image)
    seg = sitk.ReadImage(str(folder / truth["files"]["seg"]))
    n = 0
    while seg.HasMetaDataKey(f"Segment{n}_Name"):
        name = seg.GetMetaData(f"Segment{n}_Name")
        labels = sitk.GetArrayFromImage(sitk.Resample(seg, adc_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        mask = labels == int(seg.GetMetaData(f"Segment{n}_LabelValue"))
        if truth["segments"][name]["role"] == "lesion" and truth["segments"][name]["adc_mean"] is not None:
            assert float(np.mean(adc[mask])) == pytest.approx(truth["segments"][name]["adc_mean"], rel=0.08), name
        n += 1
    assert sha256_tree(folder) == hashes


def test_cohort(tmp_path):
    rng = np.random.default_rng(0)
    malignant = np.round(rng.normal(0.7, 0.18, 30), 3)
    benign = np.round(rng.normal(1.8, 0.2, 40), 3)
    benign[:3] = [1.0, 1.1, 1.2]  # three benign lesions at or below the cut-off
    csv_path = tmp_path / "cohort.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "adc", "truth"])
        writer.writerows([(f"m{i}", v, "malignant") for i, v in enumerate(malignant)])
        writer.writerows([(f"b{i}", v, "benign") for i, v in enumerate(benign)])
    before = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    out = tmp_path / "cohort_out"
    done = run(["-q", "cohort", csv_path, "--out", out])
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "cohort.json").read_text())
    tp, fp = int((malignant <= 1.21).sum()), int((benign <= 1.21).sum())
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (tp, 30 - tp, fp, 40 - fp)
    assert result["sensitivity"] == pytest.approx(tp / 30)
    assert result["specificity"] == pytest.approx((40 - fp) / 40)
    pairs = (malignant[:, None] < benign[None, :]).sum() + 0.5 * (malignant[:, None] == benign[None, :]).sum()
    assert result["auc"] == pytest.approx(pairs / (30 * 40))
    assert result["cutoff"] == 1.21
    assert "youden_cutoff" in result
    assert list(out.glob("*.png"))
    assert hashlib.sha256(csv_path.read_bytes()).hexdigest() == before


# --- bad input: exit 2, one `error:` line ----------------------------------------------------


def bad_cases(folder: Path, truth: dict, scratch: Path):
    files = truth["files"]
    seg, adc = folder / files["seg"], folder / files["adc"]
    dwi = dwi_paths(folder, truth)
    not_image = scratch / "notes.nrrd"
    not_image.write_text("this is not an image\n")
    text_file = scratch / "adc.txt"  # a plain file where a folder is expected
    text_file.write_text("0.7 0.8 0.9\n")
    out = scratch / "never"
    return {
        "missing ADC file": (["analyze", "--seg", seg, "--adc", scratch / "missing.nrrd", "--out", out], "not found"),
        "dwi without bvalues": (["analyze", "--seg", seg, "--dwi", *dwi, "--out", out], "--bvalues"),
        "wrong number of bvalues": (["analyze", "--seg", seg, "--dwi", *dwi, "--bvalues", "0,50,400", "--out", out], "b-values"),
        "bvalues not numbers": (["adc", "--dwi", *dwi, "--bvalues", "0,fifty,400,800", "--out", out / "a.nrrd"], "--bvalues"),
        "unknown adc units": (["analyze", "--seg", seg, "--adc", adc, "--adc-units", "um2/ms", "--out", out], "--adc-units"),
        "negative cutoff": (["analyze", "--seg", seg, "--adc", adc, "--cutoff", "-1.21", "--out", out], "cut-off"),
        "non-image as ADC": (["analyze", "--seg", seg, "--adc", not_image, "--out", out], "ADC map"),
        "unknown reference": (["analyze", "--seg", seg, "--adc", adc, "--reference", "L9 normal", "--out", out], "L9 normal"),
        "missing cohort csv": (["cohort", scratch / "missing.csv", "--out", out], "missing.csv"),
        "no command": ([], ""),
        # cases with their own checks below
        "out is under a file": (["adc", "--dwi", *dwi, "--bvalues", "0,50,400,800", "--out", text_file / "adc.nrrd"], "adc.txt"),
        "phantom out is a file": (["phantom", "--out", text_file], "adc.txt"),
        "unsupported output format": (["adc", "--dwi", *dwi, "--bvalues", "0,50,400,800", "--out", scratch / "png" / "adc.png"], ".png"),
        "bvalue range empty": (["adc", "--dwi", *dwi, "--bvalues", "0,50,400,800", "--bmin", "900", "--out", scratch / "b" / "a.nrrd"], "--bmin"),
    }


@pytest.fixture(scope="module")
def bad_runs(phantom, tmp_path_factory):
    """Every bad-input run, in this process through cli.main (fd-level output captured)."""
    folder, truth, hashes = phantom
    scratch = tmp_path_factory.mktemp("bad")
    cases = bad_cases(folder, truth, scratch)
    done = {name: run_cli_in_process(["-q", *args]) for name, (args, _) in cases.items()}
    return {name: (done[name], cases[name][1]) for name in cases}, scratch, folder, hashes


@pytest.mark.parametrize("command", [None, PYTHON_M], ids=["entry point", "python -m"])
def test_bad_input_smoke_through_each_front_door(phantom, tmp_path, command):
    """One real process per front door: the error line, the exit status, no traceback."""
    folder, truth, _ = phantom
    result = run(["analyze", "--seg", folder / truth["files"]["seg"], "--adc", tmp_path / "missing.nrrd",
                  "--out", tmp_path / "never"], command=command)
    check_one_error_line(result, "not found", tmp_path / "never")


BAD_CASE_NAMES = [
    "missing ADC file", "dwi without bvalues", "wrong number of bvalues", "bvalues not numbers", "unknown adc units",
    "negative cutoff", "non-image as ADC", "unknown reference", "missing cohort csv", "no command",
]


@pytest.mark.parametrize("case", BAD_CASE_NAMES)
def test_bad_input_is_one_error_line_and_exit_2(bad_runs, case):
    runs, scratch, _, _ = bad_runs
    result, needle = runs[case]
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert needle in lines[0]
    assert not (scratch / "never").exists()  # nothing written for a refused run


def check_one_error_line(result, needle, never: Path):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in result.stderr
    assert not never.exists(), list(never.rglob("*"))


@pytest.mark.parametrize("case", ["out is under a file", "phantom out is a file"])
def test_output_path_that_cannot_be_created_is_one_error_line(bad_runs, case):
    runs, scratch, _, _ = bad_runs
    check_one_error_line(*runs[case], scratch / "never")


def test_unsupported_output_format_is_refused_up_front(bad_runs):
    runs, scratch, _, _ = bad_runs
    check_one_error_line(*runs["unsupported output format"], scratch / "png")


def test_bvalue_errors_print_plain_numbers(bad_runs):
    runs, scratch, _, _ = bad_runs
    result, needle = runs["bvalue range empty"]
    check_one_error_line(result, needle, scratch / "b")
    assert "np.float64" not in result.stderr
    assert "0, 50, 400, 800" in result.stderr


def test_bad_runs_leave_inputs_unchanged(bad_runs):
    _, _, folder, hashes = bad_runs
    assert sha256_tree(folder) == hashes


@pytest.mark.parametrize("command", ["analyze", "adc", "phantom", "demo", "cohort"])
def test_every_command_prints_its_help(command, capsys):
    from VertebralMarrowLib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_a_criteria_file_of_ones_own_sets_the_cutoff_and_is_recorded(phantom, tmp_path):
    from VertebralMarrowLib.cli import main
    from VertebralMarrowLib.core.criteria import CRITERIA_PATH

    folder, truth, _ = phantom
    own = json.loads(CRITERIA_PATH.read_text())
    own["adc_cutoff"]["value"] = 0.5
    own["adc_tiers"]["marrow_max"]["value"] = 0.0  # tiers off: the plain cut-off (no T1 or CT given)
    own["indeterminate_band"]["value"] = 0.0
    criteria = tmp_path / "my-criteria.json"
    criteria.write_text(json.dumps(own))
    out = tmp_path / "out"
    assert main(["-q", "analyze", "--seg", str(folder / truth["files"]["seg"]), "--adc", str(folder / truth["files"]["adc"]),
                 "--criteria", str(criteria), "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["criteria"]["adc_cutoff"]["value"] == 0.5
    assert document["criteria"]["marrow_max"]["off"] is True
    for row in document["rows"]:
        tier = document["segments"][row["segment"]].get("tier", {})
        if row["role"] == "lesion" and row["adc_mean"] is not None and tier["deciding_sign"] == "adc":
            assert row["adc_class"] == ("malignant" if row["adc_mean"] <= 0.5 else "benign"), row["segment"]


def test_tier_bounds_and_scanner_bvalues_from_the_command_line_are_used_and_recorded(phantom, tmp_path):
    from VertebralMarrowLib.cli import main

    folder, truth, _ = phantom
    out = tmp_path / "out"
    assert main(["-q", "analyze", "--seg", str(folder / truth["files"]["seg"]), "--adc", str(folder / truth["files"]["adc"]),
                 "--marrow-max", "0.655", "--band", "0.1", "--adc-bvalues", "0,800", "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["criteria"]["marrow_max"]["value"] == 0.655 and document["criteria"]["marrow_max"]["default"] == 0.55
    assert document["criteria"]["indeterminate_band"]["value"] == 0.1
    assert document["adc"]["bvalues"]["values_s_per_mm2"] == [0.0, 800.0]
    assert "given by the user" in document["adc"]["bvalues"]["text"]
    for row in document["rows"]:
        segment = document["segments"][row["segment"]]
        if (row["role"] == "lesion" and row["adc_mean"] is not None and segment["tier"]["deciding_sign"] == "adc"
                and "partial_volume" not in segment):
            mean = row["adc_mean"]
            expected = "marrow" if mean <= 0.655 else "malignant" if mean < 1.11 else "indeterminate" if mean <= 1.31 else "benign"
            assert row["adc_class"] == expected, row["segment"]
    assert "b = 0, 800" in (out / "report.html").read_text()
    assert main(["-q", "analyze", "--seg", str(folder / truth["files"]["seg"]), "--adc", str(folder / truth["files"]["adc"]),
                 "--marrow-max", "1.2", "--out", str(tmp_path / "bad")]) == 2
