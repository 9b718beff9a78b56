"""The numeric core on arrays: the ADC fit, b-value selection, the trace, ADC units, per-ROI
statistics and the classification rules.

Expected values come from physics (S = S0 exp(-b ADC), Rician noise), closed-form numpy
formulas computed here, or the cited cut-off rule (Kaur 2020: mean ADC <= 1.21 is
malignant-range); never from running the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from VertebralMarrowLib.core.adc import decide_adc_units, fit_adc, fit_adc_volume, select_bvalues, trace_weighted
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.core.classes import class_key, classify_adc
from VertebralMarrowLib.core.stats import classify_signal, roi_statistics

B = np.array([0.0, 50.0, 400.0, 800.0])


def signals(adc_1e3, b=B, s0=1000.0):
    """Noiseless mono-exponential signal, shape (n_b, n_voxels)."""
    adc = np.atleast_1d(np.asarray(adc_1e3, float))
    s0 = np.broadcast_to(np.asarray(s0, float), adc.shape)
    return s0[None, :] * np.exp(-np.asarray(b, float)[:, None] * adc[None, :] / 1000.0)


def rician(clean, sigma, rng):
    return np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))


# --- the fit ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ols", "iwls"])
def test_noiseless_signal_gives_the_adc_exactly(method):
    truth = np.array([0.1, 0.4, 0.7, 1.21, 2.0, 3.0, 3.5])
    s0 = np.array([80.0, 150.0, 1000.0, 300.0, 5000.0, 900.0, 12.0])
    fitted = fit_adc(signals(truth, s0=s0), B, method)
    np.testing.assert_allclose(fitted, truth, rtol=1e-10)


@pytest.mark.parametrize("method", ["ols", "iwls"])
def test_noiseless_fit_with_two_and_with_many_bvalues(method):
    for b in ([0.0, 1000.0], [50.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1000.0, 1500.0]):
        truth = np.linspace(0.2, 2.5, 11)
        np.testing.assert_allclose(fit_adc(signals(truth, b=b), b, method), truth, rtol=1e-10)


@pytest.mark.parametrize("method", ["ols", "iwls"])
@pytest.mark.parametrize("adc", [0.4, 0.7, 1.2, 2.0])
def test_roi_mean_within_3_percent_at_realistic_snr(method, adc):
    """b 0/50/400/800, Rician noise, SNR 40 at b = 0: the ROI mean is within 3 % of the truth."""
    rng = np.random.default_rng(int(adc * 1000))
    s0 = 1000.0
    noisy = rician(signals(np.full(4000, adc), s0=s0), s0 / 40.0, rng)
    fitted = fit_adc(noisy, B, method)
    assert np.isfinite(fitted).all()
    assert fitted.mean() == pytest.approx(adc, rel=0.03)


def test_iwls_has_lower_variance_than_ols_at_high_b_and_low_snr():
    """Log-samples near the noise floor carry var(log S) ~ sigma^2 / S^2; weighting them by S^2
    (IWLS) must beat giving them equal weight (OLS). b up to 1500, ADC 1.5, SNR 15 at b = 0:
    the last sample is at SNR ~1.6."""
    rng = np.random.default_rng(2024)
    b = np.array([0.0, 100.0, 500.0, 1000.0, 1500.0])
    truth, s0 = 1.5, 300.0
    noisy = rician(signals(np.full(20000, truth), b=b, s0=s0), s0 / 15.0, rng)
    ols = fit_adc(noisy, b, "ols")
    iwls = fit_adc(noisy, b, "iwls")
    sd_ols, sd_iwls = np.nanstd(ols), np.nanstd(iwls)
    # analytic variance of the slope for both weightings (delta method), as a cross-check
    # that the gap is the expected one, not luck
    weights_ols = np.ones_like(b)
    weights_iwls = np.exp(-2 * b * truth / 1000.0)

    def slope_sd(w):
        # var(log S_b) = sigma^2 / S_b^2; weighted LS slope variance sum(w^2 v (b - bw)^2) / (sum w (b - bw)^2)^2
        v = (1 / 15.0) ** 2 * np.exp(2 * b * truth / 1000.0)
        bw = (w * b).sum() / w.sum()
        return np.sqrt((w * w * v * (b - bw) ** 2).sum()) / (w * (b - bw) ** 2).sum() * 1000.0

    assert slope_sd(weights_iwls) < 0.8 * slope_sd(weights_ols)
    assert sd_iwls < 0.8 * sd_ols
    assert sd_iwls == pytest.approx(slope_sd(weights_iwls), rel=0.25)


def test_iwls_weights_follow_the_fitted_signal_and_noise_keeps_equal_weights():
    """IWLS is the weighted line with weights exp(-2 b ADC_ols) (the OLS fit's signal squared),
    computed here with numpy's polyfit (its w multiplies the residual, so sqrt of the weight).
    A voxel whose signal rises with b (negative ADC: noise) keeps equal weights: its OLS fit."""
    rng = np.random.default_rng(11)
    b = np.array([0.0, 50.0, 400.0, 800.0])
    data = rician(signals(np.full(200, 1.1), b=b, s0=400.0), 40.0, rng)
    data[:, :3] = [[100.0, 90.0, 120.0], [110.0, 95.0, 150.0], [150.0, 120.0, 160.0], [180.0, 130.0, 200.0]]
    iwls, ols = fit_adc(data, b, "iwls"), fit_adc(data, b, "ols")
    x, y = b / 1000.0, np.log(data)
    for voxel in range(data.shape[1]):
        slope_ols = np.polyfit(x, y[:, voxel], 1)[0]
        assert ols[voxel] == pytest.approx(-slope_ols, rel=1e-9, abs=1e-12)
        weights = np.exp(2.0 * min(slope_ols, 0.0) * x)
        expected = -np.polyfit(x, y[:, voxel], 1, w=np.sqrt(weights))[0]
        assert iwls[voxel] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert (ols[:3] < 0).all()
    np.testing.assert_allclose(iwls[:3], ols[:3], rtol=1e-12)


@pytest.mark.parametrize("method", ["ols", "iwls"])
def test_unusable_samples_get_zero_weight(method):
    truth = np.array([0.5, 0.9, 1.6, 2.2, 0.7])
    data = signals(truth)
    data[3, 0] = 0.0            # clamped to zero at b = 800
    data[1, 1] = np.nan         # NaN at b = 50
    data[0, 2] = -5.0           # negative at b = 0
    data[2, 3] = np.inf         # inf at b = 400
    fitted = fit_adc(data, B, method)
    np.testing.assert_allclose(fitted, truth, rtol=1e-10)


@pytest.mark.parametrize("method", ["ols", "iwls"])
def test_fewer_than_two_usable_bvalues_is_nan(method):
    data = signals(np.array([0.8, 0.8, 0.8, 0.8]))
    data[1:, 0] = 0.0                 # only b = 0 left
    data[:, 1] = np.nan               # nothing
    data[[0, 1, 3], 2] = [0.0, np.nan, -1.0]  # only b = 400 left
    fitted = fit_adc(data, B, method)
    assert np.isnan(fitted[:3]).all()
    assert fitted[3] == pytest.approx(0.8, rel=1e-10)


def test_repeated_bvalue_counts_once_toward_the_two_distinct():
    b = [0.0, 0.0, 800.0]
    data = signals(np.array([1.0, 1.0]), b=b)
    data[2, 0] = 0.0  # only two samples, both at b = 0: no slope
    fitted = fit_adc(data, b, "ols")
    assert np.isnan(fitted[0])
    assert fitted[1] == pytest.approx(1.0, rel=1e-10)


def test_unknown_method_is_an_input_error():
    with pytest.raises(InputError, match="method"):
        fit_adc(signals([1.0]), B, "nlls")


@pytest.mark.parametrize("method", ["ols", "iwls"])
def test_volume_chunking_does_not_change_the_result(method):
    rng = np.random.default_rng(5)
    shape = (7, 13, 11)
    adc = rng.uniform(0.3, 2.5, shape)
    volumes = [rician(1000.0 * np.exp(-b * adc / 1000.0), 25.0, rng).astype(np.float32) for b in B]
    results = [fit_adc_volume(volumes, B, method, chunk_voxels=n) for n in (1, 143, 300, 1000, 10**7)]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    assert results[0].dtype == np.float32 and results[0].shape == shape
    # and the float32 engine is the float64 fit of the same estimator: within 1e-4 (issue 11's
    # bound, 10^-3 mm^2/s), NaN on exactly the same voxels
    flat = np.stack([v.astype(np.float64).ravel() for v in volumes])
    reference = fit_adc(flat, B, method)
    np.testing.assert_array_equal(np.isnan(results[0].ravel()), np.isnan(reference))
    np.testing.assert_allclose(results[0].ravel(), reference, atol=1e-4, rtol=0)


def test_volume_progress_reaches_one_and_shapes_are_checked():
    volumes = [np.ones((4, 3, 2), np.float32) * s for s in (100.0, 50.0)]
    reports = []
    fit_adc_volume(volumes, [0.0, 500.0], progress=lambda f, t: reports.append(f), chunk_voxels=6)
    assert reports[-1] == 1.0 and len(reports) == 4
    with pytest.raises(InputError, match="b-value"):
        fit_adc_volume(volumes, [0.0, 500.0, 800.0])
    with pytest.raises(InputError, match="grid"):
        fit_adc_volume([volumes[0], np.ones((4, 3, 3))], [0.0, 500.0])


# --- b-values -----------------------------------------------------------------------------


def test_select_bvalues_keeps_the_range():
    b = [0, 50, 400, 800, 1000]
    assert select_bvalues(b, None, None) == [0, 1, 2, 3, 4]
    assert select_bvalues(b, 50, None) == [1, 2, 3, 4]
    assert select_bvalues(b, None, 800) == [0, 1, 2, 3]
    assert select_bvalues(b, 40, 900) == [1, 2, 3]
    assert select_bvalues([0, 0, 500, 500], 0, 500) == [0, 1, 2, 3]


@pytest.mark.parametrize("b, bmin, bmax", [
    ([800], None, None),
    ([], None, None),
    ([0, 50, 400, 800], 500, None),
    ([0, 50, 400, 800], None, 0),
    ([0, 50, 400, 800], 100, 300),
    ([400, 400, 400], None, None),
    ([0, -50, 800], None, None),
    ([0, np.nan, 800], None, None),
])
def test_select_bvalues_refuses_fewer_than_two(b, bmin, bmax):
    with pytest.raises(InputError):
        select_bvalues(b, bmin, bmax)


def test_trace_weighted_is_the_geometric_mean_per_bvalue():
    rng = np.random.default_rng(1)
    images = [rng.uniform(1.0, 500.0, (3, 4, 5)) for _ in range(7)]
    b = [0, 800, 800, 800, 400, 0, 50]
    combined, distinct = trace_weighted(images, b)
    assert distinct == [0.0, 50.0, 400.0, 800.0]
    expected = {
        0.0: np.sqrt(images[0] * images[5]),
        50.0: images[6],
        400.0: images[4],
        800.0: np.cbrt(images[1] * images[2] * images[3]),
    }
    for value, image in zip(distinct, combined):
        np.testing.assert_allclose(image, expected[value], rtol=1e-12)


def test_trace_of_three_directions_fits_the_mean_diffusivity():
    """Anisotropic diffusion along x, y, z: the geometric mean of the three directional images
    decays with the mean diffusivity, (Dxx + Dyy + Dzz) / 3 (physics of the trace)."""
    d = np.array([0.4, 1.0, 1.9])
    images, b = [np.full((2, 2, 2), 500.0)], [0.0]
    for value in (400.0, 800.0):
        for dd in d:
            images.append(np.full((2, 2, 2), 500.0 * np.exp(-value * dd / 1000.0)))
            b.append(value)
    combined, distinct = trace_weighted(images, b)
    adc = fit_adc_volume(combined, distinct)
    np.testing.assert_allclose(adc, d.mean(), rtol=1e-6)


@pytest.mark.parametrize("method", ["ols", "iwls"])
def test_zero_in_one_direction_does_not_poison_the_trace(method):
    """Isotropic ADC 1.0: b = 400 and 800 along three directions, one b = 800 direction clamped
    to 0. Without that sample the voxel still fits exactly from b = 0 and 400 (and the two good
    b = 800 directions); with it counted as a real signal the ADC explodes."""
    b = [0.0, 400.0, 400.0, 400.0, 800.0, 800.0, 800.0]
    clean = [1000.0 * np.exp(-value * 1.0 / 1000.0) for value in b]
    clean[-1] = 0.0
    images = [np.full((1, 1, 1), value) for value in clean]
    combined, distinct = trace_weighted(images, b)
    adc = fit_adc_volume(combined, distinct, method)
    assert adc.ravel()[0] == pytest.approx(1.0, rel=1e-5)


# --- units ----------------------------------------------------------------------------------


def test_integer_map_in_micro_units_is_1e6():
    rng = np.random.default_rng(3)
    values = np.round(rng.uniform(700, 2000, 5000)).astype(np.int16)
    values[:1000] = 0  # background
    decision = decide_adc_units(values, stored_as_integers=True)
    assert decision.unit == "1e-6" and decision.scale_to_1e3 == 0.001
    assert "10^-6" in decision.how and "integers" in decision.how


def test_float_map_in_mm2s():
    values = np.random.default_rng(4).uniform(0.0003, 0.002, 1000).astype(np.float32)
    values[0] = 0.0007
    decision = decide_adc_units(values, stored_as_integers=False)
    assert decision.unit == "mm2/s" and decision.scale_to_1e3 == 1000.0
    assert decide_adc_units(np.full(10, 0.0007), False).unit == "mm2/s"


def test_float_map_in_1e3():
    assert decide_adc_units(np.full(10, 0.7), False).unit == "1e-3"
    decision = decide_adc_units(np.random.default_rng(5).uniform(0.3, 2.5, 1000), False)
    assert decision.unit == "1e-3" and decision.scale_to_1e3 == 1.0


@pytest.mark.parametrize("unit, scale", [("mm2/s", 1000.0), ("1e-3", 1.0), ("1e-6", 0.001)])
def test_explicit_unit_is_respected(unit, scale):
    # tissue values (0.7-2.0 x 10^-3 mm^2/s) stored in the unit given; a unit the values
    # contradict is refused (test_robustness.py)
    values = np.random.default_rng(6).uniform(0.7, 2.0, 100) / scale
    decision = decide_adc_units(values, unit == "1e-6", requested=unit)
    assert decision.unit == unit and decision.scale_to_1e3 == scale
    assert "given by the user" in decision.how


@pytest.mark.parametrize("values", [
    np.full(20, np.nan),
    -np.random.default_rng(7).uniform(100, 900, 50),
    np.zeros(30),
    np.concatenate([-np.ones(30), np.ones(10)]),
])
def test_maps_no_unit_can_make_sense_of_are_errors(values):
    with pytest.raises(InputError):
        decide_adc_units(values, False)
    with pytest.raises(InputError):
        decide_adc_units(values, False, requested="1e-3")  # an override does not rescue them


def test_unknown_unit_is_an_error():
    with pytest.raises(InputError, match="unknown"):
        decide_adc_units(np.full(10, 700.0), True, requested="um2/ms")


# --- statistics ------------------------------------------------------------------------------


def test_roi_statistics_match_numpy_for_many_labels():
    rng = np.random.default_rng(8)
    shape = (20, 30, 40)
    values = rng.gamma(4.0, 0.3, shape)
    values[rng.random(shape) < 0.05] = np.nan
    labels = rng.integers(0, 300, shape)  # 299 ROIs of uneven size, label 0 is background
    labels[labels == 17] = 0              # a missing label
    nan_only = (labels == 23)
    values[nan_only] = np.nan             # a ROI with no finite voxel
    single = np.argwhere(labels == 0)[0]
    labels[tuple(single)] = 301           # a one-voxel ROI
    values[tuple(single)] = 0.9
    cutoff = 1.21
    stats = roi_statistics(values, labels, cutoff)
    for label in range(1, 302):
        mask = labels == label
        if not mask.any():
            assert label not in stats
            continue
        v = values[mask]
        finite = v[np.isfinite(v)]
        entry = stats[label]
        assert entry["n_nonfinite"] == int((~np.isfinite(v)).sum())
        assert entry["n"] == finite.size
        if finite.size == 0:
            continue
        assert entry["mean"] == pytest.approx(finite.mean(), rel=1e-12)
        assert entry["median"] == pytest.approx(np.median(finite), rel=1e-12)
        assert entry["sd"] == pytest.approx(finite.std(ddof=1) if finite.size > 1 else 0.0, rel=1e-9, abs=1e-15)
        assert entry["p10"] == pytest.approx(np.percentile(finite, 10), rel=1e-12)
        assert entry["p90"] == pytest.approx(np.percentile(finite, 90), rel=1e-12)
        assert entry["fraction_at_or_below_cutoff"] == pytest.approx((finite <= cutoff).mean(), rel=1e-12)
    assert stats[23]["n"] == 0
    assert stats[301]["n"] == 1 and stats[301]["sd"] == 0.0 and stats[301]["median"] == 0.9


def test_roi_statistics_fraction_counts_values_exactly_at_the_cutoff():
    values = np.array([1.0, 1.21, 1.21, 1.5, 2.0])
    labels = np.ones(5, int)
    assert roi_statistics(values, labels, 1.21)[1]["fraction_at_or_below_cutoff"] == pytest.approx(0.6)


def test_roi_statistics_is_independent_of_label_order_and_dtype():
    rng = np.random.default_rng(9)
    values = rng.normal(1.0, 0.2, 1000).astype(np.float32)
    labels = rng.integers(0, 6, 1000).astype(np.uint8)
    a = roi_statistics(values, labels, 1.0)
    permutation = rng.permutation(1000)
    b = roi_statistics(values[permutation], labels[permutation].astype(np.int32), 1.0)
    assert a.keys() == b.keys()
    for label in a:
        for key in a[label]:
            assert a[label][key] == pytest.approx(b[label][key], rel=1e-12)


# --- classification rules ---------------------------------------------------------------


def test_classify_adc_cutoff_is_malignant_at_or_below():
    # Kaur 2020: mean ADC <= 1.21 x 10^-3 mm^2/s is malignant-range
    assert class_key(1.21, 1.21, 0.0) == "malignant"
    assert class_key(1.2099, 1.21, 0.0) == "malignant"
    assert class_key(1.2101, 1.21, 0.0) == "benign"
    assert class_key(0.69, 1.21, 0.0) == "malignant"
    assert class_key(1.94, 1.21, 0.0) == "benign"


def test_classify_adc_band():
    """Within cut-off +/- band (inclusive) is indeterminate; 1.25 and 0.25 are exact in binary,
    so the band's edges are tested exactly."""
    assert class_key(1.25, 1.25, 0.25) == "indeterminate"
    assert class_key(1.0, 1.25, 0.25) == "indeterminate"
    assert class_key(1.5, 1.25, 0.25) == "indeterminate"
    assert class_key(0.9999, 1.25, 0.25) == "malignant"
    assert class_key(1.5001, 1.25, 0.25) == "benign"
    assert class_key(1.16, 1.21, 0.1) == "indeterminate"
    assert class_key(1.05, 1.21, 0.1) == "malignant"
    assert class_key(1.40, 1.21, 0.1) == "benign"


def test_classify_signal_boundaries():
    assert classify_signal(0.79, 0.8, 1.2) == "low"
    assert classify_signal(0.8, 0.8, 1.2) == "iso"
    assert classify_signal(1.0, 0.8, 1.2) == "iso"
    assert classify_signal(1.2, 0.8, 1.2) == "iso"
    assert classify_signal(1.21, 0.8, 1.2) == "high"
    assert classify_signal(None, 0.8, 1.2) == "n/a"
    assert classify_signal(float("nan"), 0.8, 1.2) == "n/a"


def test_classify_voxels_follows_the_same_rule():
    adc = np.array([0.5, 1.25, 1.2501, 2.0, np.nan, 1.0, 1.5, 1.5001, 0.9999])
    np.testing.assert_array_equal(classify_adc(adc, 1.25, 0.0), [3, 3, 1, 1, 0, 3, 1, 1, 3])
    np.testing.assert_array_equal(classify_adc(adc, 1.25, 0.25), [3, 2, 2, 1, 0, 2, 2, 1, 3])
    np.testing.assert_array_equal(classify_adc(np.array([1.21, 1.2101]), 1.21, 0.0), [3, 1])
    # voxel and ROI rules agree voxel by voxel
    names = {3: "malignant", 2: "indeterminate", 1: "benign"}
    rng = np.random.default_rng(10)
    values = np.concatenate([rng.uniform(0.2, 2.5, 500), [1.0, 1.25, 1.5]])
    for band in (0.0, 0.25):
        for value, cls in zip(values, classify_adc(values, 1.25, band)):
            assert names[int(cls)] == class_key(float(value), 1.25, band)


def test_a_scanner_map_at_the_cutoff_is_at_it_not_above():
    """A scanner's 1210 (10^-6 mm^2/s) is Kaur's 1.21 exactly: malignant-range at the cut-off
    (<=), whether the map is classified as float32 voxels or as one float64 mean."""
    from VertebralMarrowLib.core.adc import to_1e3

    voxels = to_1e3(np.array([1210, 1211, 550, 551], np.int16), 1e-3)
    assert voxels.dtype == np.float32
    np.testing.assert_array_equal(classify_adc(voxels, 1.21, 0.0, marrow_max=0.55), [3, 1, 4, 3])
    assert class_key(float(np.float64(1210) / 1000), 1.21, 0.0) == "malignant"
    np.testing.assert_array_equal(classify_adc(np.float32([1.01, 1.41, 1.0099, 1.4101]), 1.21, 0.2), [2, 2, 3, 1])


def test_the_core_imports_with_vtk_and_slicer_unimportable():
    """core/ is numpy only: every module of it imports in a Python where vtk, slicer and Qt
    cannot be imported (as in a worker without them, or a test of the numbers alone)."""
    import pkgutil
    import subprocess
    import sys

    import VertebralMarrowLib.core as core

    names = [f"VertebralMarrowLib.core.{info.name}" for info in pkgutil.iter_modules(core.__path__)]
    assert {"VertebralMarrowLib.core.adc", "VertebralMarrowLib.core.classes", "VertebralMarrowLib.core.stats"} <= set(names)
    code = ("import sys, importlib\n"
            "for blocked in ('vtk', 'slicer', 'qt', 'PySide6', 'SimpleITK', 'matplotlib'):\n"
            "    sys.modules[blocked] = None\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
