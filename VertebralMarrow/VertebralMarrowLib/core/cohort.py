"""Cohort statistics: how well an ADC cut-off separates malignant from benign lesions.

Plain numpy and scipy on arrays of lesion mean ADC (10^-3 mm^2/s) and truth. Malignant is the
positive class and a lesion is called malignant when `adc <= cutoff` (Kaur 2020: malignant
lesions have the lower ADC). Intervals are two-sided 95 %:
- proportions (sensitivity, specificity, PPV, NPV, fraction called malignant per entity):
  Wilson score interval by default, Clopper-Pearson ("exact") on request, both from
  scipy.stats.binomtest;
- AUC and the Youden cut-off: percentile bootstrap from scipy.stats.bootstrap, resampling the
  malignant and the benign lesions separately (stratified, so every resample has both groups),
  with a fixed seed so that a rerun gives the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

CONFIDENCE = 0.95
CI_METHODS = ("wilson", "exact")
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20201

# Medians outside this range (10^-3 mm^2/s) mean the column is in another unit. Lesion ADCs
# lie between about 0.3 and 3; 10^-6 mm^2/s puts them in the hundreds, mm^2/s near 0.001.
ADC_MEDIAN_MAX_1E3 = 10.0
ADC_MEDIAN_MIN_1E3 = 0.01


def cohort_statistics(adc_values, is_malignant, cutoff: float) -> dict:
    """Confusion counts at `cutoff`, AUC, Youden cut-off and ROC for ADC (10^-3 mm^2/s).

    A lesion is called malignant (positive) when adc <= cutoff. The AUC is the probability
    that a random malignant lesion has a lower ADC than a random benign one, ties counting
    one half (the Mann-Whitney U of the benign lesions over all pairs). `roc` lists
    [fpr, tpr, threshold] for the rule adc <= threshold over every observed ADC, preceded by
    [0, 0, None] (nothing called). PPV is None when no lesion is called malignant, NPV when
    none is called benign.
    """
    adc = np.asarray(adc_values, dtype=float).ravel()
    malignant = np.asarray(is_malignant, dtype=bool).ravel()
    cutoff = check_cutoff(cutoff)
    check_arrays(adc, malignant)
    adc_mal, adc_ben = np.sort(adc[malignant]), np.sort(adc[~malignant])
    n_mal, n_ben = adc_mal.size, adc_ben.size

    tp, fp = _count_at_or_below(adc_mal, cutoff), _count_at_or_below(adc_ben, cutoff)
    fn, tn = n_mal - tp, n_ben - fp
    thresholds = np.unique(adc)
    tp_all = np.searchsorted(adc_mal, thresholds, side="right")
    fp_all = np.searchsorted(adc_ben, thresholds, side="right")
    best = _youden_index(tp_all, fp_all, n_mal, n_ben)
    roc = [[0.0, 0.0, None]] + [
        [float(f) / n_ben, float(t) / n_mal, float(x)] for t, f, x in zip(tp_all, fp_all, thresholds)
    ]
    return {
        "cutoff": cutoff,
        "n_malignant": int(n_mal),
        "n_benign": int(n_ben),
        "tp": tp,
        "fn": int(fn),
        "fp": fp,
        "tn": int(tn),
        "sensitivity": tp / n_mal,
        "specificity": tn / n_ben,
        "ppv": tp / (tp + fp) if tp + fp else None,
        "npv": tn / (tn + fn) if tn + fn else None,
        "auc": auc_lower_is_positive(adc_mal, adc_ben),
        "youden_cutoff": float(thresholds[best]),
        "youden_sensitivity": int(tp_all[best]) / n_mal,
        "youden_specificity": (n_ben - int(fp_all[best])) / n_ben,
        "roc": roc,
    }


def confidence_intervals(stats: dict, adc_values, is_malignant, method: str = "wilson",
                         n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """`*_ci` pairs [low, high] for the statistics of `cohort_statistics` (95 %).

    Proportions from their counts (method wilson or exact); AUC and Youden cut-off by a
    stratified percentile bootstrap. A proportion with an empty denominator has ci None, and
    so have AUC and Youden cut-off when a group has fewer than two lesions to resample.
    """
    adc = np.asarray(adc_values, dtype=float).ravel()
    malignant = np.asarray(is_malignant, dtype=bool).ravel()
    tp, fn, fp, tn = stats["tp"], stats["fn"], stats["fp"], stats["tn"]
    if min(int(malignant.sum()), int((~malignant).sum())) >= 2:
        auc_ci, youden_ci = bootstrap_intervals(adc[malignant], adc[~malignant], n_resamples, seed)
    else:
        auc_ci = youden_ci = None
    return {
        "sensitivity_ci": proportion_ci(tp, tp + fn, method),
        "specificity_ci": proportion_ci(tn, tn + fp, method),
        "ppv_ci": proportion_ci(tp, tp + fp, method),
        "npv_ci": proportion_ci(tn, tn + fn, method),
        "auc_ci": auc_ci,
        "youden_cutoff_ci": youden_ci,
        "ci_level": CONFIDENCE,
        "ci_method": {
            "proportions": "Wilson score" if method == "wilson" else "Clopper-Pearson exact",
            "auc, youden_cutoff": f"percentile bootstrap, {n_resamples} resamples stratified by truth, seed {seed}",
        },
    }


def proportion_ci(successes: int, total: int, method: str = "wilson"):
    """[low, high] 95 % interval of successes/total (Wilson score or Clopper-Pearson exact)."""
    if method not in CI_METHODS:
        raise InputError(f"confidence interval method '{method}' unknown; use wilson or exact")
    if total == 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(int(successes), int(total)).proportion_ci(confidence_level=CONFIDENCE, method=method)
    return [float(interval.low), float(interval.high)]


def bootstrap_intervals(adc_malignant, adc_benign, n_resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple:
    """([auc_low, auc_high], [youden_low, youden_high]): percentile bootstrap, each group resampled."""
    from scipy.stats import bootstrap

    samples = (np.asarray(adc_malignant, dtype=float), np.asarray(adc_benign, dtype=float))
    common = {"n_resamples": n_resamples, "method": "percentile", "confidence_level": CONFIDENCE}
    auc = bootstrap(samples, _auc_statistic, vectorized=True, **common, **_generator(bootstrap, seed))
    youden = bootstrap(samples, _youden_statistic, vectorized=False, **common, **_generator(bootstrap, seed + 1))
    return ([float(auc.confidence_interval.low), float(auc.confidence_interval.high)],
            [float(youden.confidence_interval.low), float(youden.confidence_interval.high)])


def _generator(function, seed: int) -> dict:
    """The seeded generator as `rng` (scipy >= 1.15) or `random_state` (older, as Slicer may bundle)."""
    import inspect

    name = "rng" if "rng" in inspect.signature(function).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def auc_lower_is_positive(adc_malignant, adc_benign) -> float:
    """P(ADC of a random malignant < ADC of a random benign) + 1/2 P(equal)."""
    return float(_auc_statistic(np.asarray(adc_malignant, dtype=float), np.asarray(adc_benign, dtype=float)))


def _auc_statistic(adc_mal, adc_ben, axis=-1):
    from scipy.stats import mannwhitneyu

    # U of the benign lesions counts the pairs where the benign ADC is above the malignant one.
    u_benign = mannwhitneyu(adc_ben, adc_mal, axis=axis, method="asymptotic").statistic
    return u_benign / (adc_mal.shape[axis] * adc_ben.shape[axis])


def _youden_statistic(adc_mal, adc_ben):
    adc_mal, adc_ben = np.sort(adc_mal), np.sort(adc_ben)
    thresholds = np.unique(np.r_[adc_mal, adc_ben])
    tp = np.searchsorted(adc_mal, thresholds, side="right")
    fp = np.searchsorted(adc_ben, thresholds, side="right")
    return thresholds[_youden_index(tp, fp, adc_mal.size, adc_ben.size)]


def _youden_index(tp: np.ndarray, fp: np.ndarray, n_mal: int, n_ben: int) -> int:
    """Index of the threshold maximising sensitivity + specificity - 1; the lowest on ties.

    Compared in integers (J * n_mal * n_ben = tp * n_ben - fp * n_mal) so ties are exact.
    """
    scaled_j = tp.astype(np.int64) * n_ben - fp.astype(np.int64) * n_mal
    return int(np.argmax(scaled_j))


def _count_at_or_below(sorted_adc: np.ndarray, cutoff: float) -> int:
    return int(np.searchsorted(sorted_adc, cutoff, side="right"))


def check_cutoff(cutoff) -> float:
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        raise InputError(f"ADC cut-off {cutoff!r} is not a number; give it in 10^-3 mm^2/s (e.g. 1.21)") from None
    if not (math.isfinite(value) and 0.0 < value < 5.0):
        raise InputError(f"ADC cut-off {cutoff} is outside 0-5 x 10^-3 mm^2/s; give it in 10^-3 mm^2/s (e.g. 1.21)")
    return value


def check_arrays(adc: np.ndarray, malignant: np.ndarray) -> None:
    if adc.size != malignant.size:
        raise InputError(f"{adc.size} ADC values but {malignant.size} truth values; give one truth per lesion")
    if not np.all(np.isfinite(adc)) or np.any(adc < 0):
        raise InputError("ADC values must be finite and >= 0 (10^-3 mm^2/s); remove or fix the bad rows")
    n_mal, n_ben = int(malignant.sum()), int((~malignant).sum())
    if n_mal == 0 or n_ben == 0:
        missing = "malignant" if n_mal == 0 else "benign"
        raise InputError(
            f"the cohort has no {missing} lesions ({n_mal} malignant, {n_ben} benign), so sensitivity, "
            "specificity and AUC are undefined; include both malignant and benign lesions"
        )
    median = float(np.median(adc))
    if median > ADC_MEDIAN_MAX_1E3:
        raise InputError(
            f"median ADC {median:g} looks like 10^-6 mm^2/s (scanner units); divide the adc column by 1000 "
            "to give 10^-3 mm^2/s"
        )
    if median < ADC_MEDIAN_MIN_1E3:
        raise InputError(
            f"median ADC {median:g} looks like mm^2/s; multiply the adc column by 1000 to give 10^-3 mm^2/s"
        )


# --- per-entity summary ----------------------------------------------------------------


def entity_summary(rows: list, cutoff: float, method: str = "wilson") -> list:
    """Per entity: n, ADC mean/sd/median/min/max (10^-3 mm^2/s), fraction called malignant
    with its 95 % interval.

    `rows` are dicts with adc, truth and entity. Rows without an entity are grouped by truth
    ("unspecified (benign)"). Entities are ordered by median ADC, lowest first. SD is the
    sample SD (n - 1), None for one lesion.
    """
    groups = {}
    for row in rows:
        groups.setdefault(group_name(row), []).append(row)
    summary = [_summarise_group(name, members, cutoff, method) for name, members in groups.items()]
    summary.sort(key=lambda item: (item["adc_median"], item["entity"]))
    return summary


def group_name(row: dict) -> str:
    return row["entity"] or f"unspecified ({row['truth']})"


def _summarise_group(name: str, members: list, cutoff: float, method: str) -> dict:
    adc = np.array([row["adc"] for row in members], dtype=float)
    truths = {row["truth"] for row in members}
    called = int(np.sum(adc <= cutoff))
    return {
        "entity": name,
        "truth": truths.pop() if len(truths) == 1 else "mixed",
        "n": int(adc.size),
        "adc_mean": float(adc.mean()),
        "adc_sd": float(adc.std(ddof=1)) if adc.size > 1 else None,
        "adc_median": float(np.median(adc)),
        "adc_min": float(adc.min()),
        "adc_max": float(adc.max()),
        "fraction_called_malignant": called / adc.size,
        "fraction_called_malignant_ci": proportion_ci(called, int(adc.size), method),
    }
