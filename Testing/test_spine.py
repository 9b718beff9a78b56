"""The whole spine: label schemes read as their published class maps say, per-vertebra marrow
values against an independent SimpleITK/scipy computation and the phantom's ground truth,
erosion in mm, height loss, and the `spine` command's errors."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from VertebralMarrowLib.cli import main
from VertebralMarrowLib.core.vertebra_schemes import SCHEMES, Structure, parse_structure, scheme_structures
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.mrml import new_scene
from VertebralMarrowLib.phantom import make_phantom
from VertebralMarrowLib.phantom_spine import expected_marrow_adc, write_spine_labels
from VertebralMarrowLib.spine_analysis import body_heights_mm, erode_labels_mm, read_spine_labels

MARROW_MAX = 0.55  # Koutoulidis 2017 abstract: 0.548, the tier top criteria.json rounds it to
EROSION_MM = 3.0


# --- schemes: numbers as the tools publish them ------------------------------------------------


@pytest.mark.parametrize("scheme, value, name", [
    # TotalSegmentator map_to_binary.py, class_map["total"]
    ("totalsegmentator_total", 25, "sacrum"), ("totalsegmentator_total", 26, "vertebrae_S1"),
    ("totalsegmentator_total", 27, "vertebrae_L5"), ("totalsegmentator_total", 31, "vertebrae_L1"),
    ("totalsegmentator_total", 32, "vertebrae_T12"), ("totalsegmentator_total", 43, "vertebrae_T1"),
    ("totalsegmentator_total", 44, "vertebrae_C7"), ("totalsegmentator_total", 50, "vertebrae_C1"),
    ("totalsegmentator_total", 79, "spinal_cord"),
    # class_map["vertebrae_mr"]
    ("totalsegmentator_vertebrae_mr", 1, "sacrum"), ("totalsegmentator_vertebrae_mr", 2, "vertebrae_L5"),
    ("totalsegmentator_vertebrae_mr", 7, "vertebrae_T12"), ("totalsegmentator_vertebrae_mr", 25, "vertebrae_C1"),
    # class_map["total_mr"]
    ("totalsegmentator_total_mr", 19, "vertebrae"), ("totalsegmentator_total_mr", 20, "intervertebral_discs"),
    # TotalSpineSeg README, List of Classes
    ("totalspineseg", 1, "spinal_cord"), ("totalspineseg", 2, "spinal_canal"), ("totalspineseg", 11, "vertebrae_C1"),
    ("totalspineseg", 17, "vertebrae_C7"), ("totalspineseg", 21, "vertebrae_T1"), ("totalspineseg", 32, "vertebrae_T12"),
    ("totalspineseg", 41, "vertebrae_L1"), ("totalspineseg", 45, "vertebrae_L5"), ("totalspineseg", 50, "sacrum"),
    ("totalspineseg", 63, "disc_C2_C3"), ("totalspineseg", 67, "disc_C6_C7"), ("totalspineseg", 71, "disc_C7_T1"),
    ("totalspineseg", 82, "disc_T11_T12"), ("totalspineseg", 91, "disc_T12_L1"), ("totalspineseg", 95, "disc_L4_L5"),
    ("totalspineseg", 100, "disc_L5_S"),
])
def test_scheme_numbers_are_the_published_ones(scheme, value, name):
    assert SCHEMES[scheme][value] == name


def test_scheme_sizes_match_the_published_maps():
    assert len([v for v in SCHEMES["totalspineseg"]]) == 50  # README table: 50 rows
    assert sorted(SCHEMES["totalsegmentator_vertebrae_mr"]) == list(range(1, 26))


@pytest.mark.parametrize("name, kind, level", [
    ("vertebrae_L5", "vertebra", "L5"), ("L5 vertebra", "vertebra", "L5"), ("T12", "vertebra", "T12"),
    ("sacrum", "vertebra", "S1"), ("disc_L4_L5", "disc", "L4-L5"), ("L4/L5 disc", "disc", "L4-L5"),
    ("disc_L5_S", "disc", "L5-S1"), ("spinal_canal", "canal", ""), ("Spinal cord", "cord", ""),
])
def test_names_say_their_level(name, kind, level):
    assert parse_structure(name) == Structure(kind, level, parse_structure(name).order)


@pytest.mark.parametrize("name", ["L2 lesion", "T12 island", "L3 normal", "vertebrae", "liver", "label_7"])
def test_lesions_and_organs_are_no_vertebra(name):
    assert parse_structure(name) is None


def test_total_mr_is_recognised_and_sent_to_vertebrae_mr():
    with pytest.raises(InputError, match="vertebrae_mr"):
        scheme_structures("totalsegmentator_total_mr", [18, 19, 20])


# --- erosion and heights against scipy / the boxes built ---------------------------------------


def test_erosion_in_mm_matches_scipy_exact_distance():
    rng = np.random.default_rng(1)
    labels = np.zeros((14, 30, 26), np.int32)
    labels[2:12, 4:20, 3:22] = 1
    labels[3:13, 18:28, 5:20] = 2
    labels[rng.random(labels.shape) < 0.02] = 0
    spacing = (3.5, 0.9, 1.3)  # k, j, i
    eroded = erode_labels_mm(labels, spacing, 2.5)
    for value in (1, 2):
        inside = np.pad(labels == value, 1)
        distance = ndimage.distance_transform_edt(inside, sampling=spacing)[1:-1, 1:-1, 1:-1]
        np.testing.assert_array_equal(eroded == value, (labels == value) & (distance > 2.5))


def test_height_loss_is_measured_against_the_neighbours():
    labels = np.zeros((120, 20, 20), np.int32)  # k runs inferior, 1 mm voxels
    heights = {"L1": 20, "L2": 20, "L3": 13, "L4": 20, "L5": 20}
    structures, top = {}, 2
    for value, (level, height) in enumerate(heights.items(), 1):
        labels[top:top + height, 3:17, 3:17] = value
        structures[value] = parse_structure(level)
        top += height + 6
    ijk_to_ras = np.diag([1.0, 1.0, -1.0, 1.0])  # k -> -S
    measured = body_heights_mm(labels, ijk_to_ras, structures)
    assert measured[3] == pytest.approx(13.0, rel=0.02)
    assert measured[3] / np.mean([measured[2], measured[4]]) == pytest.approx(13 / 20, rel=0.03)


# --- the phantom: both schemes, independent computation, ground truth ----------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    study = tmp_path_factory.mktemp("spine_study")
    truth = make_phantom(study, seed=5)
    labels = write_spine_labels(study)
    return study, truth, labels


def _spine(phantom, tmp_path, key, *extra):
    study, _, labels = phantom
    out = tmp_path / key
    code = main(["-q", "spine", "--labels", str(labels[key]), "--adc", str(study / "adc_scanner.nrrd"),
                 "--t1", str(study / "t1.nrrd"), "--seg", str(study / "rois.seg.nrrd"), "--out", str(out), *extra])
    assert code == 0
    with (out / "spine.csv").open() as handle:
        rows = {row["level"]: row for row in csv.DictReader(handle)}
    return out, rows


@pytest.mark.parametrize("key, scheme", [("totalsegmentator", "totalsegmentator_total"), ("totalspineseg", "totalspineseg")])
def test_scheme_recognised_from_numbers_and_positions(phantom, key, scheme):
    app = new_scene()
    labels = read_spine_labels(app.scene, app, phantom[2][key])
    assert labels.scheme == scheme
    assert sorted(s.level for s in labels.structures.values() if s.kind == "vertebra") == sorted(["T12", "L1", "L2", "L3", "L4", "L5"])


def test_wrong_scheme_forced_is_refused(phantom):
    app = new_scene()
    with pytest.raises(InputError, match="no known vertebra scheme"):
        read_spine_labels(app.scene, app, phantom[2]["totalspineseg"], scheme="totalsegmentator")


def _independent_marrow(study, labels_path, value, adc_image, adc):
    """Body (labels in front of the canal, RAS y > -17 mm in the phantom), nearest-neighbour
    onto the ADC grid with SimpleITK, eroded with scipy's exact distance, mean ADC."""
    image = sitk.ReadImage(str(labels_path))
    array = sitk.GetArrayFromImage(image)
    k, j, i = np.indices(array.shape)
    lps = np.stack([image.TransformContinuousIndexToPhysicalPoint((float(a), float(b), float(c)))
                    for a, b, c in zip(i[array == value], j[array == value], k[array == value])])
    body = np.zeros(array.shape, np.uint8)
    keep = -lps[:, 1] > -17.0  # RAS y = -LPS y
    body[k[array == value][keep], j[array == value][keep], i[array == value][keep]] = 1
    body_image = sitk.GetImageFromArray(body)
    body_image.CopyInformation(image)
    on_adc = sitk.GetArrayFromImage(sitk.Resample(body_image, adc_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    spacing = tuple(reversed(adc_image.GetSpacing()))
    distance = ndimage.distance_transform_edt(np.pad(on_adc > 0, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    marrow = (on_adc > 0) & (distance > EROSION_MM) & np.isfinite(adc)
    return int(marrow.sum()), float(adc[marrow].mean())


@pytest.mark.parametrize("key, numbers", [
    ("totalsegmentator", {"T12": 32, "L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27}),
    ("totalspineseg", {"T12": 32, "L1": 41, "L2": 42, "L3": 43, "L4": 44, "L5": 45}),
])
def test_per_vertebra_values_match_an_independent_computation_and_the_truth(phantom, tmp_path, key, numbers):
    study, truth, labels = phantom
    out, rows = _spine(phantom, tmp_path, key)
    adc_image = sitk.ReadImage(str(study / "adc_scanner.nrrd"))
    adc = sitk.GetArrayFromImage(adc_image).astype(float) / 1000.0  # 10^-6 -> 10^-3 mm^2/s
    adc[adc == 0] = np.nan
    from VertebralMarrowLib.core.criteria import load_criteria
    from VertebralMarrowLib.phantom import draw_lesion_adcs

    lesion_adc = draw_lesion_adcs(load_criteria(), np.random.default_rng(truth["seed"]))
    expected = expected_marrow_adc(lesion_adc, truth["segments"]["L3 normal"]["adc_mean"], EROSION_MM)
    for level, value in numbers.items():
        count, mean = _independent_marrow(study, labels[key], value, adc_image, adc)
        row = rows[level]
        assert int(row["n_voxels_adc"]) == pytest.approx(count, rel=0.03), level
        assert float(row["adc_mean"]) == pytest.approx(mean, rel=0.04), level  # NN resampling paths differ at edges
        assert float(row["adc_mean"]) == pytest.approx(expected[level], rel=0.08), level
        flags = row["flags"].split(";")
        if expected[level] > MARROW_MAX * 1.15:
            assert "above_marrow_range" in flags, level
        if expected[level] < MARROW_MAX * 0.9:
            assert "above_marrow_range" not in flags and row["tier"] == "marrow", level
        assert "height_loss" not in flags and float(row["height_ratio"]) == pytest.approx(1.0, abs=0.06), level
        assert float(row["t1_ratio"]) > 0


def test_spine_outputs_and_lesions_at_their_level(phantom, tmp_path):
    out, rows = _spine(phantom, tmp_path, "totalspineseg")
    with (out / "spine.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header == ("level, n_voxels_adc, adc_mean, adc_median, adc_p10, adc_p90, tier, t1_ratio, fs_ratio, "
                      "height_ratio, flags").split(", ")
    document = json.loads((out / "spine.json").read_text())
    placed = {item["segment"]: item["level"] for item in document["lesions"]}
    for name, segment in phantom[1]["segments"].items():
        if segment["role"] == "lesion":
            assert placed[name] == name.split()[0], name  # the phantom names each lesion by its level
    assert (out / "spine.png").stat().st_size > 10000
    assert "never replaces" in (out / "spine.html").read_text()


def test_spine_bad_input_is_one_error_line(phantom, tmp_path, capsys):
    study, _, labels = phantom
    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(empty))
    assert main(["-q", "spine", "--labels", str(empty), "--adc", str(study / "adc_scanner.nrrd"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
    code = main(["-q", "spine", "--labels", str(labels["totalspineseg"]), "--adc", str(study / "adc_scanner.nrrd"),
                 "--reference-levels", "C4", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "C4" in err[0]


def test_a_failed_spine_run_leaves_the_previous_result_whole(phantom, tmp_path, capsys):
    """The spine folder is written whole or not at all: a run that fails part-way (here on
    a reference level the labels lack, found only once the analysis runs) leaves the previous
    result as it was and no half-written stage beside it."""
    out, _ = _spine(phantom, tmp_path, "totalspineseg")
    capsys.readouterr()
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    study, _, labels = phantom
    code = main(["-q", "spine", "--labels", str(labels["totalspineseg"]), "--adc", str(study / "adc_scanner.nrrd"),
                 "--reference-levels", "C4", "--out", str(out)])
    assert code == 2 and capsys.readouterr().err.startswith("error: ")
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


# --- other ways the labels come in ---------------------------------------------------------------

NAMED = {"T12": 1, "L1": 2, "L2": 3, "L3": 4, "L4": 5, "L5": 6, "canal": 7, "cord": 8}
SEGMENT_NAMES = {1: "T12 vertebra", 2: "L1 vertebra", 3: "L2 vertebra", 4: "L3 vertebra", 5: "L4 vertebra",
                 6: "L5 vertebra", 7: "spinal canal", 8: "spinal cord"}


def _named_labels(tmp_path):
    from VertebralMarrowLib.mrml import segmentation_from_labelmap, volume_from_array, write_node
    from VertebralMarrowLib.phantom import exam_grids, voxel_centres_ras
    from VertebralMarrowLib.phantom_spine import vertebra_labels

    grid = exam_grids()["t2"]
    array = vertebra_labels(voxel_centres_ras(grid), NAMED).reshape(grid.shape_kji)
    app = new_scene()
    node = volume_from_array(app.scene, array, grid.ijk_to_ras, "named", labelmap=True)
    write_node(app.scene, node, tmp_path / "named.nii.gz")
    segmentation = segmentation_from_labelmap(app.scene, app, node, SEGMENT_NAMES, "named")
    write_node(app.scene, segmentation, tmp_path / "named.seg.nrrd")
    (tmp_path / "named.ctbl").write_text("".join(f"{v} {n.replace(' ', '_')} 128 128 128 255\n" for v, n in SEGMENT_NAMES.items()))
    return array


def test_seg_nrrd_and_label_names_read_as_the_scheme_file_does(phantom, tmp_path):
    study = phantom[0]
    _named_labels(tmp_path)
    _, reference = _spine(phantom, tmp_path, "totalspineseg")
    runs = {"seg": ["--labels", str(tmp_path / "named.seg.nrrd")],
            "names": ["--labels", str(tmp_path / "named.nii.gz"), "--label-names", str(tmp_path / "named.ctbl"), "--scheme", "names"]}
    for key, arguments in runs.items():
        out = tmp_path / key
        assert main(["-q", "spine", *arguments, "--adc", str(study / "adc_scanner.nrrd"), "--out", str(out)]) == 0
        with (out / "spine.csv").open() as handle:
            rows = {row["level"]: row for row in csv.DictReader(handle)}
        assert set(rows) == set(reference)
        for level, row in rows.items():
            # The same voxels on the same grid: the same ROI, whatever the names came in.
            assert int(row["n_voxels_adc"]) == pytest.approx(int(reference[level]["n_voxels_adc"]), rel=0.01), (key, level)
            assert float(row["adc_mean"]) == pytest.approx(float(reference[level]["adc_mean"]), rel=0.01), (key, level)


def test_vertebrae_mr_and_total_with_organs_are_recognised(tmp_path):
    from VertebralMarrowLib.phantom import exam_grids, voxel_centres_ras
    from VertebralMarrowLib.phantom_spine import vertebra_labels

    grid = exam_grids()["fs"]
    ras = voxel_centres_ras(grid)
    # vertebrae_mr: T12 = 7 ... L5 = 2 (class_map["vertebrae_mr"]); it has no cord label.
    mr = vertebra_labels(ras, {"T12": 7, "L1": 6, "L2": 5, "L3": 4, "L4": 3, "L5": 2, "cord": 0}).reshape(grid.shape_kji)
    # total: the spine's labels beside organs (5 liver, 90 a muscle) as a whole `total` run writes them.
    total = vertebra_labels(ras, {"T12": 32, "L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27, "cord": 79}).reshape(grid.shape_kji)
    total[:3, :3, :3], total[-3:, -3:, -3:] = 5, 90
    from VertebralMarrowLib.mrml import volume_from_array, write_node

    for array, expected in ((mr, "totalsegmentator_vertebrae_mr"), (total, "totalsegmentator_total")):
        app = new_scene()
        path = tmp_path / f"{expected}.nii.gz"
        write_node(app.scene, volume_from_array(app.scene, array, grid.ijk_to_ras, expected, labelmap=True), path)
        labels = read_spine_labels(app.scene, app, path)
        assert labels.scheme == expected
        assert sorted(s.level for s in labels.structures.values() if s.kind == "vertebra") == sorted(["T12", "L1", "L2", "L3", "L4", "L5"])


def test_spine_scene_reloads_with_the_marrow_rois_coloured_by_tier(phantom, tmp_path):
    from VertebralMarrowLib.core.classes import BY_KEY

    out, rows = _spine(phantom, tmp_path, "totalspineseg")
    app = new_scene()
    app.scene.SetURL(str(out / "spine.mrml"))
    assert app.scene.Import()
    segmentations = [app.scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
                     for n in range(app.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    marrow = next(node for node in segmentations if node.GetName() == "Vertebral marrow ROIs")
    segments = marrow.GetSegmentation()
    by_name = {segments.GetNthSegment(n).GetName(): segments.GetNthSegment(n) for n in range(segments.GetNumberOfSegments())}
    for level, row in rows.items():
        assert by_name[level].GetColor() == pytest.approx(BY_KEY[row["tier"]].rgba[:3], abs=1e-3), level
    assert "L2-L3 disc" in by_name


def test_spine_fits_the_adc_from_dwi_like_the_scanner_map(phantom, tmp_path):
    study = phantom[0]
    _, scanner = _spine(phantom, tmp_path, "totalspineseg")
    out = tmp_path / "dwi"
    dwi = [str(study / f"dwi_b{b:04d}.nrrd") for b in (0, 50, 400, 800)]
    assert main(["-q", "spine", "--labels", str(phantom[2]["totalspineseg"]), "--dwi", *dwi, "--bvalues", "0,50,400,800",
                 "--out", str(out)]) == 0
    with (out / "spine.csv").open() as handle:
        fitted = {row["level"]: row for row in csv.DictReader(handle)}
    for level, row in scanner.items():
        # The same voxels; the scanner map is an OLS fit, the default fit is IWLS: close, not equal.
        # The fit leaves out voxels without DWI signal; the scanner map keeps them.
        assert int(fitted[level]["n_voxels_adc"]) == pytest.approx(int(row["n_voxels_adc"]), rel=0.06), level
        assert float(fitted[level]["adc_mean"]) == pytest.approx(float(row["adc_mean"]), rel=0.1), level


def test_spine_from_a_dicom_study_reads_the_same_vertebrae(phantom, tmp_path):
    from VertebralMarrowLib.phantom_dicom import write_phantom_dicom

    study, truth, labels = phantom
    write_phantom_dicom(study, tmp_path / "dicom", 5, truth["files"])
    _, scanner = _spine(phantom, tmp_path, "totalspineseg")
    out = tmp_path / "from-dicom"
    assert main(["-q", "spine", "--labels", str(labels["totalspineseg"]), "--dicom", str(tmp_path / "dicom"),
                 "--out", str(out)]) == 0
    with (out / "spine.csv").open() as handle:
        rows = {row["level"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(scanner)
    for level, row in scanner.items():
        assert float(rows[level]["adc_mean"]) == pytest.approx(float(row["adc_mean"]), rel=0.1), level
        assert rows[level]["t1_ratio"] != "" and rows[level]["fs_ratio"] != "", level


def test_labelmap_node_named_by_its_color_table(tmp_path):
    """A labelmap node whose color table names the levels is read by those names (its numbers
    fit no scheme); with a color table naming no vertebra it is read by numbers and positions."""
    from VertebralMarrowLib.mrml import volume_from_array
    from VertebralMarrowLib.phantom import exam_grids, voxel_centres_ras
    from VertebralMarrowLib.phantom_spine import vertebra_labels
    from VertebralMarrowLib.spine_analysis import spine_labels_from_node

    grid = exam_grids()["t2"]
    numbers = {level: 200 + value for level, value in NAMED.items()}
    array = vertebra_labels(voxel_centres_ras(grid), numbers).reshape(grid.shape_kji)
    app = new_scene()
    node = volume_from_array(app.scene, array, grid.ijk_to_ras, "labels", labelmap=True)
    colors = app.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "vertebra names")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(210)
    for value, name in SEGMENT_NAMES.items():
        colors.SetColor(200 + value, name, 0.5, 0.5, 0.5, 1.0)
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    labels = spine_labels_from_node(app.scene, app, node)
    assert labels.scheme == "names"
    assert {value: s.level for value, s in labels.structures.items() if s.kind == "vertebra"} == \
        {200 + NAMED[level]: level for level in ("T12", "L1", "L2", "L3", "L4", "L5")}
    for value in SEGMENT_NAMES:
        colors.SetColorName(200 + value, f"tissue {value}")
    with pytest.raises(InputError, match="no known vertebra scheme.*color table"):
        spine_labels_from_node(app.scene, app, node)


def _node_classes(scene) -> dict:
    classes: dict = {}
    for n in range(scene.GetNumberOfNodes()):
        kind = scene.GetNthNode(n).GetClassName()
        classes[kind] = classes.get(kind, 0) + 1
    return classes


def _cancel_after(calls: int):
    """A `cancelled` callback that turns true at its `calls`-th question (1 = the first)."""
    asked = [0]

    def cancelled() -> bool:
        asked[0] += 1
        return asked[0] >= calls

    return cancelled, asked


@pytest.mark.parametrize("reader", ["spine", "lesions"])
def test_cancelled_at_any_step_leaves_the_scene_as_it_was(phantom, reader):
    """The whole-spine reading and the lesion analysis, fitting the ADC from DWI, cancelled at
    each of their steps in turn: analysis.Cancelled, and not one node more in the scene (not
    the marrow ROIs, not the fitted map, not a display or storage node)."""
    from VertebralMarrowLib.analysis import Cancelled, StudyNodes, analyze
    from VertebralMarrowLib.mrml import load_segmentation, load_volume
    from VertebralMarrowLib.spine_analysis import analyze_spine

    study, _, labels_files = phantom
    app = new_scene()
    dwi = [load_volume(app.scene, study / f"dwi_b{b:04d}.nrrd", "DWI") for b in (0, 50, 400, 800)]
    t1 = load_volume(app.scene, study / "t1.nrrd", "T1")
    if reader == "spine":
        labels = read_spine_labels(app.scene, app, labels_files["totalspineseg"])

        def run(cancelled):
            return analyze_spine(app.scene, labels, dwi=dwi, bvalues=[0, 50, 400, 800], t1=t1, app=app, cancelled=cancelled)
    else:
        rois = load_segmentation(app.scene, app, study / "rois.seg.nrrd")
        nodes = StudyNodes(segmentation=rois, dwi=dwi, bvalues=[0, 50, 400, 800], t1=t1)

        def run(cancelled):
            return analyze(app.scene, nodes, app=app, cancelled=cancelled)

    before = _node_classes(app.scene)
    never, asked = _cancel_after(10 ** 6)
    run(never)  # how many times the reading asks: its steps, the fit's progress included
    steps = asked[0]
    assert steps >= 4
    made = {kind: n - before.get(kind, 0) for kind, n in _node_classes(app.scene).items() if n != before.get(kind, 0)}
    assert made, "a whole run adds its nodes (ROIs or the fitted map): the check below means something"
    state = _node_classes(app.scene)  # each cancelled run must leave the scene as it is now
    for calls in sorted({1, 2, steps // 2, steps - 1, steps}):
        cancelled, _ = _cancel_after(calls)
        with pytest.raises(Cancelled):
            run(cancelled)
        assert _node_classes(app.scene) == state, f"cancelled at question {calls} of {steps}"
