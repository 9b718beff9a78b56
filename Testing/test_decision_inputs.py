"""The decision-support inputs beyond ADC and T1/T2/FS reach the differential through the
analysis: levels and disc state (CLI options or segment tags), the chemical-shift ratio from
in/opposed-phase volumes, and the Dixon fat fraction."""

import dataclasses

import numpy as np
import pytest

from VertebralMarrowLib.analysis import analyze
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.mrml import (
    array_of, get_segment_spread, ijk_to_ras_of, new_scene, segment_ids, segment_name, set_segment_spread,
    volume_from_array,
)
from VertebralMarrowLib.phantom import LESIONS, Anatomy, Grid, voxel_centres_ras
from VertebralMarrowLib.inputs.study import StudyFiles, load_study, parse_spread


@pytest.fixture(scope="module")
def study_dir(phantom_study):
    return phantom_study(5)[0]


def load(study_dir):
    app = new_scene()
    files = StudyFiles(seg=study_dir / "rois.seg.nrrd", adc=study_dir / "adc_scanner.nrrd",
                       t1=study_dir / "t1.nrrd", t2=study_dir / "t2.nrrd", fs=study_dir / "stir.nrrd")
    return app, load_study(app, files)


def ranking(result, name):
    return next(row for row in result.rows if row["segment"] == name)["differential"].split(";")


def lesion_mask(node, segment, margin_mm=3.0):
    """Voxels of `node`'s grid inside the phantom lesion `segment` grown by `margin_mm`, so the
    mask holds every voxel of the ROI drawn inside the lesion, whatever the grid."""
    lesion = next(lesion for lesion in LESIONS if lesion.segment == segment)
    lesion = dataclasses.replace(lesion, radius_mm=lesion.radius_mm + margin_mm)
    grid = Grid("", array_of(node).shape, ijk_to_ras_of(node))
    return Anatomy.in_lesion(lesion, voxel_centres_ras(grid)).reshape(grid.shape_kji)


def test_levels_and_disc_split_pyogenic_from_tuberculous(study_dir):
    app, study = load(study_dir)
    study.spread = parse_spread(["L4 lesion=2", "L5 lesion=4"], ["L4 lesion=destroyed", "L5 lesion=spared"])
    result = analyze(app.scene, study, app=app)
    pyogenic, tuberculous = ranking(result, "L4 lesion"), ranking(result, "L5 lesion")
    assert pyogenic.index("pyogenic_spondylitis") < pyogenic.index("tuberculous_spondylitis")
    assert tuberculous.index("tuberculous_spondylitis") < tuberculous.index("pyogenic_spondylitis")
    reasons = next(d for d in result.segments if d["name"] == "L5 lesion")["findings"]
    assert reasons["levels_involved"] == 4 and reasons["disc_involved"] is False


@pytest.mark.parametrize("levels, destroyed, first", [(4, False, "tuberculous_spondylitis"), (1, True, "pyogenic_spondylitis")])
def test_spread_stored_on_the_segment_is_used_and_survives_saving(study_dir, tmp_path, levels, destroyed, first):
    from VertebralMarrowLib.mrml import load_segmentation, write_node

    app, study = load(study_dir)
    ids = {segment_name(study.segmentation, sid): sid for sid in segment_ids(study.segmentation)}
    set_segment_spread(study.segmentation, ids["L4 lesion"], levels, destroyed)
    write_node(app.scene, study.segmentation, tmp_path / "tagged.seg.nrrd")
    reloaded = load_segmentation(app.scene, app, tmp_path / "tagged.seg.nrrd")
    assert get_segment_spread(reloaded, ids["L4 lesion"]) == (levels, destroyed)
    study.segmentation = reloaded
    ranked = ranking(analyze(app.scene, study, app=app), "L4 lesion")
    second = ({"tuberculous_spondylitis", "pyogenic_spondylitis"} - {first}).pop()
    assert ranked.index(first) < ranked.index(second)


def test_unknown_segment_in_spread_is_an_error_naming_the_segments(study_dir):
    app, study = load(study_dir)
    study.spread = {"L9 lesion": (2, True)}
    with pytest.raises(InputError, match="no segment named 'L9 lesion'.*L4 lesion"):
        analyze(app.scene, study, app=app)


@pytest.mark.parametrize("bad", [["L4 lesion=0"], ["L4 lesion"], ["=3"]])
def test_bad_levels_text_is_refused(bad):
    with pytest.raises(InputError, match="--levels"):
        parse_spread(bad, [])


def test_chemical_shift_ratio_and_fat_fraction_reach_the_findings(study_dir):
    app, study = load(study_dir)
    t1 = array_of(study.t1).astype(np.float32)
    grid = ijk_to_ras_of(study.t1)
    metastasis = lesion_mask(study.t1, "L2 lesion")
    # Opposed/in-phase: fat cancels in normal marrow (ratio 0.5) but not in the metastasis
    # (0.95, above Zajick's 0.80); fat fraction 40 % in marrow, 2 % in the metastasis.
    opposed = np.where(metastasis, 0.95, 0.5).astype(np.float32) * t1
    fat = np.where(metastasis, 0.02, 0.40).astype(np.float32)
    study.in_phase = volume_from_array(app.scene, t1, grid, "in-phase")
    study.opposed_phase = volume_from_array(app.scene, opposed, grid, "opposed-phase")
    study.fat_fraction = volume_from_array(app.scene, fat, grid, "fat fraction")
    result = analyze(app.scene, study, app=app)
    findings = {d["name"]: d.get("findings", {}) for d in result.segments}
    assert findings["L2 lesion"]["chemical_shift_ratio"] == pytest.approx(0.95, rel=0.02)
    assert findings["L2 lesion"]["fat_fraction_percent"] == pytest.approx(2.0, rel=0.05)
    assert findings["T12 lesion"]["chemical_shift_ratio"] == pytest.approx(0.5, rel=0.02)
    plain_app, plain_study = load(study_dir)
    plain = analyze(plain_app.scene, plain_study, app=plain_app)
    ranked, plain_ranked = ranking(result, "L2 lesion"), ranking(plain, "L2 lesion")
    assert ranked.index("metastasis_lytic") <= plain_ranked.index("metastasis_lytic"), "both criteria point to malignancy"
    words = {c["entity"]: c["likelihood"] for c in next(d for d in result.segments if d["name"] == "L2 lesion")["differential"]}
    assert words["metastasis_lytic"] == "favoured"
    benign = ("hemangioma", "benign_compression_fracture", "pyogenic_spondylitis", "tuberculous_spondylitis")
    assert all(ranked.index("metastasis_lytic") < ranked.index(key) for key in benign)
