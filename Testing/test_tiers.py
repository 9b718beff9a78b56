"""ADC tiers, the signs read before them, the reference check and small ROIs (issue 10).

Expectations come from the papers' numbers (Koutoulidis 2017: 0.548; Kaur 2020: 1.21; Ulano
2016: 885 HU; Schmeel 2018: 6.40 %) and from numpy over arrays built here, never from the code
under test. The MRML tests build their studies in memory on axis-aligned grids.
"""

import numpy as np
import pytest

from VertebralMarrowLib.analysis import StudyNodes, analyze
from VertebralMarrowLib.core.classes import BY_KEY, classify_adc
from VertebralMarrowLib.core.criteria import Options
from VertebralMarrowLib.core.stats import roi_statistics, weighted_statistics
from VertebralMarrowLib.core.tiers import paint_lesion, read_lesion
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.mrml import new_scene, segmentation_from_labelmap, volume_from_array

DEFAULTS = Options().resolved()
MARROW, MALIGNANT, INDETERMINATE, BENIGN = 4, 3, 2, 1


# --- the tiers, on values and voxel arrays alike -------------------------------------------


def test_default_tiers_are_the_papers_numbers():
    assert DEFAULTS.marrow_max == pytest.approx(0.55)  # Koutoulidis 2017: 0.548, rounded
    assert DEFAULTS.adc_cutoff == pytest.approx(1.21)  # Kaur 2020
    assert DEFAULTS.indeterminate_band == pytest.approx(0.2)  # 1.01-1.41
    assert DEFAULTS.bone_island_min_hu == pytest.approx(885)  # Ulano 2016
    assert DEFAULTS.fat_fraction_min_percent == pytest.approx(6.40)  # Schmeel 2018
    alternatives = DEFAULTS.criteria["adc_tiers"]["marrow_max"]["alternatives"]
    assert [a["value"] for a in alternatives] == [0.655]  # Messiou 2011


@pytest.mark.parametrize("adc, code", [
    (0.36, MARROW), (0.55, MARROW), (0.5501, MALIGNANT), (0.69, MALIGNANT), (1.0099, MALIGNANT),
    (1.046, INDETERMINATE), (1.21, INDETERMINATE), (1.41, INDETERMINATE), (1.4101, BENIGN), (1.94, BENIGN),
])
def test_tier_of_a_value_and_of_a_voxel_array_agree(adc, code):
    rule = (1.21, 0.2, 0.55)
    assert classify_adc(adc, *rule) == code
    array = np.full((2, 3), adc)
    assert (classify_adc(array, *rule) == code).all()


def test_messiou_option_widens_the_normal_marrow_range():
    assert classify_adc(0.6, 1.21, 0.2, 0.55) == MALIGNANT
    assert classify_adc(0.6, 1.21, 0.2, 0.655) == MARROW
    assert classify_adc(0.4, 1.21, 0.2, None) == MALIGNANT  # tier off: the plain cut-off


def test_marrow_bound_must_sit_below_the_band():
    with pytest.raises(InputError, match="normal-marrow"):
        Options(marrow_max=1.05).resolved()
    with pytest.raises(InputError, match="b-values"):
        Options(adc_bvalues=[800]).resolved()


# --- the reading of one lesion ---------------------------------------------------------------


def stats_of(values):
    values = np.asarray(values, float)
    return roi_statistics(values, np.ones(values.shape, np.uint8), DEFAULTS.adc_cutoff)[1]


def test_a_lesion_in_the_normal_marrow_range_is_never_malignant_nor_painted_red():
    rng = np.random.default_rng(1)
    values = rng.normal(0.48, 0.06, 200)  # some voxels above 0.55, the mean below
    assert (values > 0.55).any() and values.mean() <= 0.55
    reading = read_lesion(stats_of(values), DEFAULTS, t1_ratio=0.55, t1_signal="low", t2_signal="low")
    assert reading.adc_class == "marrow" and reading.deciding_sign == "adc"
    assert "no diffusion evidence of infiltration" in reading.text
    codes = paint_lesion(values, reading, 1.21, 0.2, 0.55)
    assert (codes == MARROW).all()


@pytest.mark.parametrize("signs, words", [
    ({"t1_ratio": 1.4}, "T1 1.40"),
    ({"fat_fraction_percent": 30.0}, "fat fraction 30.0 %"),
    ({"chemical_shift_ratio": 0.5}, "opposed/in-phase 0.50"),
])
def test_fat_makes_a_lesion_benign_whatever_its_adc(signs, words):
    values = np.full(50, 0.97)  # the typical haemangioma: in the malignant range by ADC alone
    reading = read_lesion(stats_of(values), DEFAULTS, **signs)
    assert reading.adc_class == "benign" and reading.adc_tier == "malignant"
    assert reading.deciding_sign == "fat" and words in reading.fat_sign
    assert reading.text.startswith("fat-containing: benign whatever its ADC")
    assert not np.isin(paint_lesion(values, reading, 1.21, 0.2, 0.55), [MALIGNANT, INDETERMINATE]).any()


def test_fat_below_the_cut_offs_is_no_sign():
    reading = read_lesion(stats_of(np.full(50, 0.69)), DEFAULTS, t1_ratio=1.1, fat_fraction_percent=5.0,
                          chemical_shift_ratio=0.95)
    assert reading.fat_sign is None and reading.adc_class == "malignant"


def test_ct_at_885_favours_a_bone_island_below_it_a_blastic_metastasis():
    island = read_lesion(stats_of(np.full(20, 0.7)), DEFAULTS, ct_mean_hu=1190.0, t1_signal="low", t2_signal="low")
    assert (island.adc_class, island.deciding_sign) == ("benign", "density") and "bone island" in island.text
    assert (paint_lesion(np.full(20, 0.7), island, 1.21, 0.2, 0.55) == BENIGN).all()
    blastic = read_lesion(stats_of(np.full(20, 0.7)), DEFAULTS, ct_mean_hu=654.0, t1_signal="low", t2_signal="low")
    assert (blastic.adc_class, blastic.deciding_sign) == ("malignant", "density") and "blastic" in blastic.text
    # sclerosis lowers the ADC: a blastic lesion in the normal-marrow range is never called normal
    low = read_lesion(stats_of(np.full(20, 0.4)), DEFAULTS, ct_mean_hu=654.0, t1_signal="low", t2_signal="low")
    assert low.adc_class == "indeterminate"


def test_a_dense_lesion_without_dwi_signal_says_so_rather_than_a_number():
    reading = read_lesion({"n": 0, "n_nonfinite": 30}, DEFAULTS, ct_mean_hu=500.0, no_dwi_signal_fraction=1.0)
    assert reading.adc_class == "n/a" and reading.text == "no DWI signal (sclerosis?), see CT"
    # without a CT: a lesion mostly without signal says so too; a few missing voxels do not
    assert read_lesion({"n": 0, "n_nonfinite": 30}, DEFAULTS, no_dwi_signal_fraction=0.9).text.startswith("no DWI signal")
    assert read_lesion({"n": 0, "n_nonfinite": 3}, DEFAULTS, no_dwi_signal_fraction=0.1).text == "no ADC value in the ROI"


def test_heterogeneous_roi_is_never_benign_on_its_mean():
    rim, core = np.full(40, 0.72), np.full(60, 2.2)  # the necrotic metastasis
    values = np.concatenate([rim, core])
    assert values.mean() > 1.41  # benign on its mean alone
    reading = read_lesion(stats_of(values), DEFAULTS)
    assert reading.heterogeneous and reading.adc_class == "indeterminate" and reading.adc_tier == "indeterminate"
    assert reading.deciding_sign == "heterogeneity" and reading.text.startswith("heterogeneous: restricted component ADC 0.72")
    assert reading.adc_restricted == pytest.approx(rim.mean())
    # a homogeneous benign lesion stays benign; a homogeneous malignant one has no restricted component
    assert read_lesion(stats_of(np.full(50, 1.9)), DEFAULTS).adc_class == "benign"
    assert read_lesion(stats_of(np.full(50, 0.7)), DEFAULTS).adc_restricted is None


def test_weighted_statistics_equal_numpy_on_repeated_voxels():
    values = np.array([0.5, 0.9, 1.6, np.nan])
    weights = np.array([1.0, 2.0, 1.0, 0.5])
    stats = weighted_statistics(values, weights, 1.21)
    repeated = np.array([0.5, 0.9, 0.9, 1.6])
    assert stats["mean"] == pytest.approx(repeated.mean())
    assert stats["n"] == 3 and stats["n_nonfinite"] == 1 and stats["n_effective"] == pytest.approx(4.0)
    assert stats["fraction_at_or_below_cutoff"] == pytest.approx(0.75)
    assert stats["restricted_mean"] == pytest.approx((0.5 + 0.9 * 2) / 3)
    assert 0.5 <= stats["p10"] <= stats["median"] <= stats["p90"] <= 1.6


# --- MRML: small ROIs, unmeasurable ROIs, the reference check ------------------------------


def axis_grid(spacing, origin):
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def centres(matrix, shape_kji):
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape_kji], indexing="ij")
    ras = matrix @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    return [axis.reshape(shape_kji) for axis in ras[:3]]


def ball(grid, shape, centre, radius):
    x, y, z = centres(grid, shape)
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2


# ADC: 2 x 2 x 5 mm (the phantom's DWI voxel), slices along z at z = 0, 5, 10, ...
ADC_SHAPE, ADC_GRID = (8, 20, 20), axis_grid((2.0, 2.0, 5.0), (0.0, 0.0, 0.0))
SEG_SHAPE, SEG_GRID = (70, 80, 80), axis_grid((0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
FOCUS = ((20.0, 20.0, 12.5), 2.4)  # halfway between the slices z = 10 and 15: no voxel centre inside


def small_study(adc_values, extra=None, reference_t1=None):
    """An ADC map and a segmentation with a lesion, the 5-mm focus and a normal reference."""
    app = new_scene()
    labels = np.zeros(SEG_SHAPE, np.uint8)
    labels[ball(SEG_GRID, SEG_SHAPE, (10.0, 10.0, 15.0), 5.0)] = 1
    labels[ball(SEG_GRID, SEG_SHAPE, *FOCUS)] = 2
    labels[ball(SEG_GRID, SEG_SHAPE, (28.0, 28.0, 20.0), 5.0)] = 3
    names = {1: "lesion", 2: "focus", 3: "L3 normal"}
    if extra is not None:
        labels[extra[0]] = 4
        names[4] = extra[1]
    labelmap = volume_from_array(app.scene, labels, SEG_GRID, "rois", labelmap=True)
    segmentation = segmentation_from_labelmap(app.scene, app, labelmap, names, "rois")
    adc = volume_from_array(app.scene, adc_values.astype(np.float32), ADC_GRID, "adc")
    study = StudyNodes(segmentation=segmentation, adc=adc)
    if reference_t1 is not None:
        study.t1 = volume_from_array(app.scene, reference_t1.astype(np.float32), SEG_GRID, "t1")
    return app, study, labels


def test_a_focus_covering_no_voxel_centre_is_measured_on_the_voxels_it_covers_and_flagged():
    assert not ball(ADC_GRID, ADC_SHAPE, *FOCUS).any()  # the fixture does what it says
    adc = np.full(ADC_SHAPE, 0.4)
    adc[2] = 0.8   # the slice at z = 10 mm
    adc[3] = 1.6   # the slice at z = 15 mm
    app, study, _ = small_study(adc)
    result = analyze(app.scene, study, app=app)
    rows = {row["segment"]: row for row in result.rows}
    focus = rows["focus"]
    assert focus["n_voxels_adc"] == 0
    # the focus is symmetric about z = 12.5: half its volume in each slice, so the weighted mean
    # is the mean of the two slices' values
    assert focus["adc_mean"] == pytest.approx((0.8 + 1.6) / 2, abs=0.05)
    detail = next(d for d in result.segments if d["name"] == "focus")
    flag = detail["partial_volume"]
    assert flag["voxel_centres"] == 0 and flag["voxels_touched"] >= 2
    # covered volume: the ball (4/3 pi r^3) in voxels of 2 x 2 x 5 mm, to the fine grid's accuracy
    assert flag["covered_voxels"] == pytest.approx(4 / 3 * np.pi * 2.4 ** 3 / 20.0, rel=0.25)
    assert any("focus" in w and "partly covers" in w for w in result.warnings)
    assert "partial volume" in detail["tier"]["text"]
    assert focus["adc_class"] == "indeterminate"  # 1.2: the band; the overlay paints the touched voxels
    touched = result.overlay[2:4] > 0
    assert touched.any() and not result.overlay[:2].any()


def test_one_unmeasurable_roi_is_a_row_with_its_reason_not_the_end_of_the_study():
    adc = np.full(ADC_SHAPE, 0.7)
    outside = np.zeros(SEG_SHAPE, bool)
    outside[60:, 70:, 70:] = True   # z >= 30 mm... inside the seg grid
    adc_small = adc[:5]             # the map ends at z = 20 mm (+2.5): that ROI lies beyond it
    app, study, _ = small_study(adc_small, extra=(outside, "far lesion"))
    result = analyze(app.scene, study, app=app)
    rows = {row["segment"]: row for row in result.rows}
    assert rows["far lesion"]["adc_class"] == "n/a" and rows["far lesion"]["adc_mean"] is None
    detail = next(d for d in result.segments if d["name"] == "far lesion")
    assert "outside" in detail["unmeasured"] and "outside" in detail["tier"]["text"]
    assert rows["lesion"]["adc_class"] == "malignant"  # the others are read as usual


def test_an_infiltrated_reference_is_questioned_and_ratios_read_against_disc():
    adc = np.full(ADC_SHAPE, 0.77)  # Koutoulidis 2017: diffuse myeloma 0.770 +/- 0.135
    disc = np.zeros(SEG_SHAPE, bool)
    disc[5:15, 60:75, 5:20] = True
    t1 = np.full(SEG_SHAPE, 300.0)  # marrow as bright as the disc: not above it
    app, study, _ = small_study(adc, extra=(disc, "L2/L3 disc"), reference_t1=t1)
    result = analyze(app.scene, study, app=app)
    warning = next(w for w in result.warnings if "reference ROI 'L3 normal'" in w)
    assert "0.77" in warning and "not above the disc" in warning and "diffuse infiltration" in warning
    detail = next(d for d in result.segments if d["name"] == "L3 normal")
    assert detail["reference_check"]["adc_above_marrow_range"] is True
    assert detail["reference_check"]["t1_vs_disc"] == "iso"
    lesion = next(d for d in result.segments if d["name"] == "lesion")
    assert lesion["ratios_vs"]["disc"]["t1"] == pytest.approx(1.0)
    assert lesion["findings"]["t1_disc_ratio"] == pytest.approx(1.0)


def test_a_normal_reference_draws_no_warning():
    adc = np.full(ADC_SHAPE, 0.40)
    app, study, _ = small_study(adc)
    result = analyze(app.scene, study, app=app)
    assert not any("may itself be infiltrated" in w for w in result.warnings)
    rows = {row["segment"]: row for row in result.rows}
    assert rows["lesion"]["adc_class"] == "marrow"
    inner = ball(ADC_GRID, ADC_SHAPE, (10.0, 10.0, 15.0), 4.0)  # voxel centres well inside the lesion ROI
    assert inner.sum() >= 5 and (result.overlay[inner] == BY_KEY["marrow"].code).all()
    # the 5-mm focus reads marrow ADC only through partial volume: indeterminate, never normal
    assert rows["focus"]["adc_class"] == "indeterminate"
    assert set(np.unique(result.overlay[result.overlay > 0])) == {2, 4}


def test_a_partly_covered_focus_is_never_called_normal_marrow():
    """Fatty marrow around a small focus pulls its measured ADC toward 0.36-0.42: a reading in
    the normal-marrow range from partly covered voxels is at least indeterminate."""
    values = np.array([0.40, 0.45, 0.52, 0.60])
    reading = read_lesion(stats_of(values), DEFAULTS, partial_volume="small ROI: measured on 4 partly covered voxels")
    assert reading.adc_tier == "indeterminate" and reading.adc_class == "indeterminate"  # the differential sees it too
    assert "partial volume" in reading.text and "does not exclude infiltration" in reading.text
    assert any("never called normal-marrow" in r for r in reading.reasons)
    assert (paint_lesion(values, reading, 1.21, 0.2, 0.55) == INDETERMINATE).all()
    # a malignant-range reading stays malignant; its voxels show the row's colour
    malignant = read_lesion(stats_of(np.full(4, 0.8)), DEFAULTS, partial_volume="small ROI")
    assert malignant.adc_class == "malignant" and (paint_lesion(np.full(4, 0.8), malignant, 1.21, 0.2, 0.55) == MALIGNANT).all()
