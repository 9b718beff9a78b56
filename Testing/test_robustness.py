"""Careless and hostile input (issue 12): every bad input is refused with exit status 2 and
exactly one `error:` line, no traceback, inputs unchanged; outputs are written whole or not
at all; nothing a run reads is written; the numeric core gives finite output or InputError
for any finite input (hypothesis).

The catalogue runs in-process through `cli.main(argv)` so it stays fast; inputs that used to
abort the process from inside ITK run in one subprocess, so that a regression fails this test
rather than killing the test run. Expected messages are the facts each case is about (the
field, the file, the unit), not copies of the code's wording.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from VertebralMarrowLib import cli
from VertebralMarrowLib.core.adc import decide_adc_units, fit_adc, select_bvalues
from VertebralMarrowLib.core.classes import CLASSES, classify_adc
from VertebralMarrowLib.core.criteria import CRITERIA_PATH, Options
from VertebralMarrowLib.core.stats import roi_statistics
from VertebralMarrowLib.errors import InputError

BIN = Path(sys.executable).parent
LIB = Path(__file__).resolve().parents[1] / "VertebralMarrow"


def checksums(*folders: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The synthetic study (phantom), and a folder of bad files derived from it."""
    root = tmp_path_factory.mktemp("robust")
    folder = root / "study"
    assert cli.main(["-q", "phantom", "--out", str(folder), "--seed", "3"]) == 0
    truth = json.loads((folder / "ground_truth.json").read_text())
    files = {key: folder / name for key, name in truth["files"].items()}
    bad = root / "bad"
    bad.mkdir()
    adc = sitk.ReadImage(str(files["adc"]))
    shape = sitk.GetArrayFromImage(adc).shape

    data = files["seg"].read_bytes()
    (bad / "truncated.seg.nrrd").write_bytes(data[: len(data) // 2])
    (bad / "truncated_header.seg.nrrd").write_bytes(data[:300])
    sitk.WriteImage(adc, str(bad / "adc.nii.gz"))
    data = (bad / "adc.nii.gz").read_bytes()
    (bad / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    data = files["adc"].read_bytes()
    (bad / "truncated.nrrd").write_bytes(data[: len(data) * 2 // 3])
    metres = sitk.Image(adc)
    metres.SetSpacing([s / 1000 for s in adc.GetSpacing()])
    sitk.WriteImage(metres, str(bad / "metres.nrrd"))

    def labelmap(name, value, dtype=np.int32):
        array = np.zeros(shape, dtype)
        array[4:8, 20:40, 20:40] = value
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(adc)
        sitk.WriteImage(image, str(bad / name))

    labelmap("huge_label.nrrd", 2147483647)
    labelmap("negative_labels.nrrd", -3)
    labelmap("two_labels.nrrd", 1, np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20), np.float32)), str(bad / "slice.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20), np.uint8)), str(bad / "picture.png"))
    rgb = sitk.GetImageFromArray(np.ones(shape + (3,), np.uint8), isVector=True)
    rgb.CopyInformation(adc)
    sitk.WriteImage(rgb, str(bad / "rgb.nrrd"))

    header = files["seg"].read_bytes()
    assert b"Segment1_Name:=T12 island" in header
    (bad / "same_names.seg.nrrd").write_bytes(header.replace(b"Segment1_Name:=T12 island", b"Segment1_Name:=T12 lesion"))
    (bad / "latin1.ctbl").write_bytes("1 l\xe9sion 255 0 0 255\n".encode("latin-1"))
    (bad / "commas.ctbl").write_text("1,lesion,255,0,0,255\n")
    (bad / "same_names.ctbl").write_text("1 L2 255 0 0 255\n2 L2 0 255 0 255\n")

    criteria = json.loads(CRITERIA_PATH.read_text())
    (bad / "list.json").write_text("[]")
    variants = {
        "missing_key": lambda c: c.pop("adc_cutoff"),
        "sd_zero": lambda c: c["entities"]["hemangioma"]["adc"].update(sd=0),
        "null": lambda c: c["adc_cutoff"].update(value=None),
        "text": lambda c: c["entities"]["metastasis_lytic"]["adc"].update(mean="low"),
    }
    for name, change in variants.items():
        variant = copy.deepcopy(criteria)
        change(variant)
        (bad / f"{name}.json").write_text(json.dumps(variant))

    float_1e3 = sitk.Cast(adc, sitk.sitkFloat32) * 0.001  # the scanner map (10^-6) as 10^-3 floats
    sitk.WriteImage(float_1e3, str(bad / "adc_float_1e-3.nrrd"))
    seg = sitk.ReadImage(str(files["seg"]))
    assert seg.GetMetaData("Segment0_Name") == "T12 lesion"
    layer = int(seg.GetMetaData("Segment0_Layer"))
    seg = seg if seg.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(seg, layer)
    on_adc = sitk.GetArrayFromImage(sitk.Resample(seg, adc, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    holes = sitk.GetArrayFromImage(float_1e3).copy()
    holes[on_adc == int(seg.GetMetaData("Segment0_LabelValue"))] = np.nan
    holes_image = sitk.GetImageFromArray(holes)
    holes_image.CopyInformation(adc)
    sitk.WriteImage(holes_image, str(bad / "adc_nan_in_t12.nrrd"))
    dwi = [files[key] for key in sorted(k for k in files if k.startswith("dwi_b"))]
    nan = sitk.Cast(sitk.ReadImage(str(dwi[-1])), sitk.sitkFloat32) * float("nan")
    sitk.WriteImage(nan, str(bad / "dwi_all_nan.nrrd"))
    # a 4-D DWI with a .bval beside it that is not UTF-8 / not numbers
    stack = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in dwi]).astype(np.float32)
    four = sitk.GetImageFromArray(stack)
    sitk.WriteImage(four, str(bad / "dwi4d_latin1.nii.gz"))
    (bad / "dwi4d_latin1.bval").write_bytes("0 50 400 800\xb5\n".encode("latin-1"))
    sitk.WriteImage(four, str(bad / "dwi4d_commas.nii.gz"))
    (bad / "dwi4d_commas.bval").write_text("0,50,400,800\n")
    return {"root": root, "folder": folder, "files": files, "bad": bad, "dwi": dwi}


def refused(argv, capsys, *watched: Path) -> str:
    """Run the CLI in-process; assert exit 2, one `error:` line, no traceback, nothing changed."""
    before = checksums(*watched)
    capsys.readouterr()
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert checksums(*watched) == before
    return lines[0]


def analyze_args(study, out, **given):
    args = ["-q", "analyze", "--seg", given.pop("seg", study["files"]["seg"])]
    if "dwi" not in given:
        args += ["--adc", given.pop("adc", study["files"]["adc"])]
    for key, value in given.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag, *value] if isinstance(value, list) else [flag, value]
    return args + ["--out", out]


# --- files that used to abort the process inside ITK ------------------------------------------

CRASHERS = {
    "truncated seg.nrrd": ("seg", "truncated.seg.nrrd", "segmentation"),
    "seg.nrrd cut in its header": ("seg", "truncated_header.seg.nrrd", "segmentation"),
    "spacing in metres": ("adc", "metres.nrrd", "metres"),
    "label 2147483647": ("seg", "huge_label.nrrd", "2147483647"),
}


def test_files_that_aborted_inside_itk_are_refused_in_one_line(study, tmp_path):
    """All in one subprocess: a native abort fails this test instead of the test run."""
    cases = {name: analyze_args(study, tmp_path / "out", **{flag: study["bad"] / file})
             for name, (flag, file, _) in CRASHERS.items()}
    script = (
        "import contextlib, io, json, sys\n"
        "from VertebralMarrowLib import cli\n"
        "results = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        status = cli.main(argv)\n"
        "    results[name] = [status, err.getvalue()]\n"
        "print(json.dumps(results))\n"
    )
    cases = {name: [str(a) for a in argv] for name, argv in cases.items()}
    env = dict(os.environ, PYTHONPATH=str(LIB))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, f"process died ({done.returncode}): {done.stderr[-2000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (status, err) in results.items():
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert CRASHERS[name][2] in lines[0], (name, lines[0])
    assert not (tmp_path / "out").exists()


# --- the catalogue, in-process ------------------------------------------------------------------

FILE_CASES = [
    # (name, analyze_args overrides, words the message must contain)
    ("truncated nii.gz", {"adc": "truncated.nii.gz"}, ["truncated.nii.gz"]),
    ("truncated gzip nrrd", {"adc": "truncated.nrrd"}, ["truncated.nrrd", "incomplete"]),
    ("2-D image", {"adc": "slice.nrrd"}, ["2-D"]),
    ("the tool's own PNG", {"t2": "picture.png"}, ["2-D", "picture.png"]),
    ("RGB volume", {"t1": "rgb.nrrd"}, ["RGB"]),
    ("only negative labels", {"seg": "negative_labels.nrrd"}, ["negative"]),
    ("label names not UTF-8", {"seg": "two_labels.nrrd", "label_names": "latin1.ctbl"}, ["UTF-8"]),
    ("label names with commas", {"seg": "two_labels.nrrd", "label_names": "commas.ctbl"}, ["line 1", "spaces"]),
    ("duplicate segment names", {"seg": "same_names.seg.nrrd"}, ["'T12 lesion'"]),
    ("duplicate label names", {"seg": "two_labels.nrrd", "label_names": "same_names.ctbl"}, ["'L2'"]),
    ("criteria as a JSON list", {"criteria": "list.json"}, ["JSON object"]),
    ("criteria without a key", {"criteria": "missing_key.json"}, ["adc_cutoff"]),
    ("criteria with sd 0", {"criteria": "sd_zero.json"}, ["entities.hemangioma.adc.sd"]),
    ("criteria with null", {"criteria": "null.json"}, ["adc_cutoff.value"]),
    ("criteria with text", {"criteria": "text.json"}, ["entities.metastasis_lytic.adc.mean"]),
    ("1e-3 map read as 1e-6", {"adc": "adc_float_1e-3.nrrd", "adc_units": "1e-6"}, ["1e-3"]),
    ("1e-6 map read as 1e-3", {"adc_units": "1e-3"}, ["1e-6"]),
]


@pytest.mark.parametrize("name, given, words", FILE_CASES, ids=[case[0] for case in FILE_CASES])
def test_bad_file_is_one_error_line(study, tmp_path, capsys, name, given, words):
    given = {key: (study["bad"] / value if key in ("adc", "seg", "t1", "t2", "label_names", "criteria") else value)
             for key, value in given.items()}
    message = refused(analyze_args(study, tmp_path / "out", **given), capsys, study["folder"], study["bad"])
    for word in words:
        assert word in message, message
    assert not (tmp_path / "out").exists()


def test_bad_options_are_named(study, tmp_path, capsys):
    out = tmp_path / "out"
    assert "--band" in refused(analyze_args(study, out, band="nan"), capsys, study["folder"])
    assert "--cutoff" in refused(analyze_args(study, out, cutoff="inf"), capsys, study["folder"])
    assert "--min-voxels" in refused(analyze_args(study, out, min_voxels="0"), capsys, study["folder"])
    assert "--seed" in refused(["phantom", "--out", out, "--seed=-1"], capsys)
    assert "--seed" in refused(["demo", "--out", out, "--seed", "99999999999"], capsys)
    message = refused(["adc", "--dwi", *study["dwi"], "--bvalues", "-50,0,400,800", "--out", out / "a.nrrd"], capsys,
                      study["folder"])
    assert "-50" in message and "expected one argument" not in message
    message = refused(["adc", "--dwi", *study["dwi"], "--bvalues", "0,50,400,800", "--bmin", "nan",
                       "--out", out / "a.nrrd"], capsys, study["folder"])
    assert "--bmin" in message
    assert not out.exists()


def test_bvalues_off_by_1000_and_bad_dwi_are_refused(study, tmp_path, capsys):
    out = tmp_path / "a.nrrd"
    dwi = study["dwi"]
    assert "s/mm^2" in refused(["adc", "--dwi", *dwi, "--bvalues", "0,0.05,0.4,0.8", "--out", out], capsys, study["folder"])
    assert "s/mm^2" in refused(["adc", "--dwi", *dwi, "--bvalues", "0,50000,400000,800000", "--out", out], capsys,
                               study["folder"])
    same = [dwi[0]] * 4
    assert "more than once" in refused(["adc", "--dwi", *same, "--bvalues", "0,50,400,800", "--out", out], capsys,
                                       study["folder"])
    nan = dwi[:3] + [study["bad"] / "dwi_all_nan.nrrd"]
    assert "NaN" in refused(["adc", "--dwi", *nan, "--bvalues", "0,50,400,800", "--out", out], capsys, study["folder"])
    for name in ("dwi4d_latin1.nii.gz", "dwi4d_commas.nii.gz"):
        message = refused(["adc", "--dwi", study["bad"] / name, "--out", out], capsys, study["bad"])
        assert ".bval" in message
    assert not out.exists()


def test_an_output_that_is_an_input_is_refused(study, tmp_path, capsys):
    dwi = study["dwi"]
    message = refused(["adc", "--dwi", *dwi, "--bvalues", "0,50,400,800", "--out", dwi[1]], capsys, study["folder"])
    assert "--dwi" in message
    message = refused(analyze_args(study, study["folder"]), capsys, study["folder"])
    assert "contains the input" in message


# --- outputs whole or not at all, inputs never written -----------------------------------------


@pytest.fixture(scope="module")
def result_folder(study, tmp_path_factory):
    """A finished analysis whose T1, T2 and FS files are all named t1.nrrd (three folders)."""
    root = tmp_path_factory.mktemp("runs")
    inputs = {}
    for key, folder in (("t1", "a"), ("t2", "b"), ("fs", "c")):
        (root / folder).mkdir()
        inputs[key] = root / folder / "t1.nrrd"
        inputs[key].write_bytes(study["files"][key].read_bytes())
    out = root / "out"
    assert cli.main([str(a) for a in analyze_args(study, out, **inputs)]) == 0
    return root, out, inputs


def test_volumes_sharing_a_file_name_keep_their_own_file_in_the_scene(result_folder):
    """The scene points at each input where it is: three t1.nrrd stay three volumes."""
    root, out, inputs = result_folder
    scene = (out / "VertebralMarrow.mrml").read_text()
    referenced = {(out / name).resolve() for name in re.findall(r'fileName="([^"]*)"', scene)}
    for key, path in inputs.items():
        assert path.resolve() in referenced, key
    written = [p.name.lower() for p in (out / "scene-data").iterdir()]
    assert len(written) == len(set(written))


def test_analysis_of_files_inside_a_previous_result_is_refused_and_changes_nothing(result_folder, capsys):
    root, out, _ = result_folder
    segmentation = next((out / "scene-data").glob("*.seg.nrrd"))
    message = refused(["analyze", "--seg", segmentation, "--adc", out / "overlay.nrrd", "--out", out], capsys, out)
    assert "--out" in message


def test_interrupted_run_leaves_the_previous_result_whole(study, result_folder, monkeypatch, capsys):
    root, out, inputs = result_folder
    before = checksums(out)
    from VertebralMarrowLib.outputs import figures

    def interrupted(*args, **kwargs):  # Ctrl-C after results.csv and the overlay are written
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "write_pictures", interrupted)
    capsys.readouterr()
    assert cli.main([str(a) for a in analyze_args(study, out, **inputs)]) == 130
    assert checksums(out) == before
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "c", "out"]  # no stage, no lock left


def test_second_run_into_a_locked_folder_is_refused(study, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live run holds it
    assert "another run" in refused(analyze_args(study, out), capsys, study["folder"])
    assert not out.exists()


def test_rerun_takes_a_dead_lock_and_leaves_no_stale_file(study, result_folder, capsys):
    root, out, inputs = result_folder
    (out / "snapshot_99_old_lesion.png").write_bytes(b"stale")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / ".out.lock").write_text(f"{dead.stdout.strip()} {socket.gethostname()}\n")  # its run was killed
    (root / ".out.writing-leftover").mkdir()
    assert cli.main([str(a) for a in analyze_args(study, out, **inputs)]) == 0
    assert not (out / "snapshot_99_old_lesion.png").exists()
    assert (out / "results.json").is_file() and (out / "VertebralMarrow.mrml").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "c", "out"]


def test_a_folder_of_other_files_is_not_replaced(study, tmp_path, capsys):
    other = tmp_path / "documents"
    other.mkdir()
    (other / "letter.txt").write_text("mine")
    assert "not a VertebralMarrow result" in refused(analyze_args(study, other), capsys, other)


def test_export_works_on_a_private_copy(study, tmp_path):
    """The Slicer module's export: the user's nodes (modification times, segment colours,
    storage file names) and the input files stay as they were."""
    from VertebralMarrowLib.analysis import analyze
    from VertebralMarrowLib.inputs.study import StudyFiles, load_study
    from VertebralMarrowLib.mrml import new_scene, segment_ids
    from VertebralMarrowLib.outputs.folder import write_output_folder
    from VertebralMarrowLib.slicer_panel import panel

    files = study["files"]
    app = new_scene()
    nodes = load_study(app, StudyFiles(seg=files["seg"], adc=files["adc"], t1=files["t1"]))
    result = analyze(app.scene, nodes, app=app)
    user_nodes = [nodes.segmentation, nodes.adc, nodes.t1]
    segmentation = nodes.segmentation.GetSegmentation()

    def state():
        return ([node.GetMTime() for node in user_nodes],
                [node.GetStorageNode().GetFileName() for node in user_nodes],
                [tuple(segmentation.GetSegment(sid).GetColor()) for sid in segment_ids(nodes.segmentation)],
                app.scene.GetNumberOfNodes())

    before, files_before = state(), checksums(study["folder"])
    copy_app, copy_study, copy_result = panel.export_copy(nodes, result)
    write_output_folder(copy_app, copy_study, copy_result, tmp_path / "report")
    assert (tmp_path / "report" / "report.html").is_file()
    assert state() == before
    assert checksums(study["folder"]) == files_before


# --- the Python API -----------------------------------------------------------------------------


def test_python_api_takes_one_string_as_one_item_and_names_bad_fields(study):
    from VertebralMarrowLib.inputs.study import StudyFiles

    files = StudyFiles(seg="rois.seg.nrrd", dwi="a.nrrd", bvalues="0,800")
    assert files.dwi == (Path("a.nrrd"),) and files.bvalues == (0.0, 800.0)
    assert Options(reference_segments="L3 normal").resolved().reference_segments == ("L3 normal",)
    for bad, field in ((dict(adc_cutoff="abc"), "adc_cutoff"), (dict(min_voxels=2.5), "min_voxels"),
                       (dict(indeterminate_band=float("nan")), "indeterminate_band"), (dict(bmin=[1]), "bmin"),
                       (dict(adc_units=3), "adc_units"), (dict(reference_segments=[1, 2]), "reference_segments")):
        with pytest.raises(InputError) as raised:
            Options(**bad).resolved()
        assert raised.value.field == field, (bad, raised.value)
    with pytest.raises(InputError, match="roles"):
        StudyFiles(seg="s.seg.nrrd", roles={"L2 lesion": "lesoin"})
    with pytest.raises(InputError, match="StudyFiles.adc"):
        StudyFiles(seg="s.seg.nrrd", adc=42)


def test_analyze_names_wrong_node_types(study):
    from VertebralMarrowLib.analysis import StudyNodes, analyze
    from VertebralMarrowLib.mrml import load_segmentation, load_volume, new_scene

    app = new_scene()
    segmentation = load_segmentation(app.scene, app, study["files"]["seg"])
    adc = load_volume(app.scene, study["files"]["adc"], "ADC map")
    cases = [
        (StudyNodes(segmentation="rois.seg.nrrd", adc=adc), "segmentation"),
        (StudyNodes(segmentation=segmentation, adc=str(study["files"]["adc"])), "StudyNodes.adc"),
        (StudyNodes(segmentation=segmentation, adc=segmentation), "StudyNodes.adc"),
        (StudyNodes(segmentation=segmentation, adc=adc, roles={"L2 lesion": "tumour"}), "roles"),
    ]
    for nodes, field in cases:
        with pytest.raises(InputError, match=field):
            analyze(app.scene, nodes, app=app)
    with pytest.raises(InputError, match="Options"):
        analyze(app.scene, StudyNodes(segmentation=segmentation, adc=adc), options={"adc_cutoff": 1.0}, app=app)


# --- one subprocess smoke per entry point ---------------------------------------------------------


@pytest.mark.parametrize("command", [[str(BIN / "vertebral-marrow")], [sys.executable, "-m", "VertebralMarrowLib"]],
                         ids=["entry point", "python -m"])
def test_entry_points_refuse_a_truncated_file_in_one_line(study, tmp_path, command):
    env = dict(os.environ, PYTHONPATH=str(LIB))
    args = analyze_args(study, tmp_path / "out", adc=study["bad"] / "truncated.nii.gz")
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr


# --- property-based: the numeric core -----------------------------------------------------------

FINITE = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(hnp.arrays(np.float64, st.tuples(st.integers(2, 5), st.integers(1, 6)), elements=FINITE),
       st.lists(st.floats(0, 10000), min_size=5, max_size=5), st.sampled_from(["iwls", "ols"]))
def test_fit_adc_gives_finite_values_or_nan(signals, bvalues, method):
    bvalues = bvalues[: signals.shape[0]]
    try:
        select_bvalues(bvalues, None, None)
        adc = fit_adc(signals, bvalues, method)
    except InputError:
        return
    assert adc.shape == (signals.shape[1],)
    assert not np.any(np.isinf(adc))


@PROPERTY
@given(hnp.arrays(np.float64, st.integers(1, 50), elements=FINITE), st.booleans(),
       st.sampled_from(["auto", "mm2/s", "1e-3", "1e-6"]))
def test_unit_decision_is_a_known_unit_or_input_error(values, integers, requested):
    try:
        decision = decide_adc_units(values, integers, requested)
    except InputError:
        return
    assert decision.scale_to_1e3 in (1000.0, 1.0, 0.001)


@PROPERTY
@given(hnp.arrays(np.float64, 40, elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)),
       hnp.arrays(np.int64, 40, elements=st.integers(0, 5)), st.floats(0.01, 5.0))
def test_roi_statistics_are_finite_for_finite_values(values, labels, cutoff):
    stats = roi_statistics(values, labels, cutoff)
    assert set(stats) == set(int(v) for v in np.unique(labels[labels > 0]))
    for entry in stats.values():
        for key in ("mean", "median", "sd", "p10", "p90", "fraction_at_or_below_cutoff"):
            assert np.isfinite(entry[key]), (key, entry)
        tolerance = 1e-12 * max(abs(entry["p10"]), abs(entry["p90"]))  # rounding of the interpolation
        assert entry["p10"] <= entry["median"] + tolerance and entry["median"] <= entry["p90"] + tolerance


@PROPERTY
@given(hnp.arrays(np.float64, 30, elements=FINITE), st.floats(0.01, 4.99), st.floats(0.0, 0.5))
def test_every_finite_adc_gets_a_known_class(values, cutoff, band):
    codes = classify_adc(values, cutoff, min(band, cutoff / 2))
    assert set(np.unique(codes)) <= {c.code for c in CLASSES} - {0}


def test_roi_over_nan_voxels_is_a_row_with_its_reason_not_the_end_of_the_study(study, tmp_path, capsys):
    """Issue 10: one unmeasurable ROI keeps its row (n/a, with its reason); the others are read."""
    out = tmp_path / "out"
    status = cli.main([str(a) for a in analyze_args(study, out, adc=study["bad"] / "adc_nan_in_t12.nrrd")])
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err, err
    assert "T12 lesion" in err and "without a value" in err
    document = json.loads((out / "results.json").read_text())
    rows = {row["segment"]: row for row in document["rows"]}
    assert rows["T12 lesion"]["adc_class"] == "n/a" and rows["T12 lesion"]["adc_mean"] is None
    assert any("without a value" in reason for reason in document["segments"]["T12 lesion"]["tier"]["reasons"])
    assert rows["L2 lesion"]["adc_class"] == "malignant"
