"""Ranked differential (VertebralMarrowLib.core.differential), read as a musculoskeletal
radiologist would. Every case is built from the literature's numbers (clinical-reference.md,
last section: Koutoulidis 2017, Winfield 2018, Cao 2020, Palle 2010, Panyaping 2018, Ulano 2016,
Carroll 1997, Kaur 2020), not from the module's output; expectations are what an expert reads.
"""

from __future__ import annotations

import math
import re

import pytest

from VertebralMarrowLib.core.criteria import ENTITY_KEYS, load_criteria
from VertebralMarrowLib.core.differential import (
    WORDS, LesionFindings, fat_sign, likelihood_word, pooled_adc, rank_differential, summarize,
)
from VertebralMarrowLib.errors import InputError

MALIGNANT = {"metastasis_lytic", "metastasis_blastic", "myeloma_leukemia"}
INFECTION = {"pyogenic_spondylitis", "tuberculous_spondylitis"}
SEED_SENTENCE = ("ADC within the normal-marrow range, no diffusion evidence of infiltration; "
                 "favours reconverted marrow; myeloma not excluded")


@pytest.fixture(scope="module")
def criteria():
    return load_criteria()


def F(adc=None, t1=None, t2=None, fs=None, **kw):
    return LesionFindings(adc_mean=adc, t1_signal=t1, t2_signal=t2, fs_signal=fs, **kw)


def keys(candidates):
    return [c.entity for c in candidates]


def word(candidates, entity):
    return next(c.likelihood for c in candidates if c.entity == entity)


def favoured(candidates):
    return {c.entity for c in candidates if c.likelihood == "favoured"}


def check_well_formed(candidates):
    assert sorted(keys(candidates)) == sorted(ENTITY_KEYS)
    assert math.isclose(sum(c.score for c in candidates), 1.0, abs_tol=1e-9)
    for c in candidates:
        assert c.likelihood in WORDS, c
        assert all(isinstance(r, str) and r for r in c.fits + c.contradicts)
        shown = c.as_dict()
        assert "score" not in shown, "the weight orders the list; it is never shown"
    assert candidates[0].likelihood == "favoured"
    # No displayed confidence: the words and the summary carry no percentage at all.
    assert "%" not in summarize(candidates)
    assert not any(re.search(r"\d", c.likelihood) for c in candidates)


# --- the ADC model: several studies, widened for the spread between them ------------------------


def test_pooled_adc_is_the_mean_of_studies_widened_by_their_spread(criteria):
    floor = criteria["differential"]["adc_between_study_sd_min"]["value"]
    # Koutoulidis 2017 focal myeloma alone: 1.046 +/- 0.232, widened by at least the floor.
    mean, sd = pooled_adc({"studies": [{"mean": 1.046, "sd": 0.232}]}, floor)
    assert mean == pytest.approx(1.046)
    assert sd == pytest.approx(math.hypot(0.232, floor))
    # Haemangioma: Kaur 1.82 +/- 0.17, Winfield median 1.085 (IQR 0.927-1.295): the two cohorts
    # disagree, so the pooled SD must cover both means, far wider than either cohort's.
    studies = [{"mean": 1.82, "sd": 0.17}, {"median": 1.085, "iqr": [0.927, 1.295]}]
    mean, sd = pooled_adc(studies and {"studies": studies}, floor)
    iqr_sd = (1.295 - 0.927) / 1.349
    between = ((1.82 - 1.4525) ** 2 + (1.085 - 1.4525) ** 2) / 1
    assert mean == pytest.approx((1.82 + 1.085) / 2)
    assert sd == pytest.approx(math.sqrt((0.17 ** 2 + iqr_sd ** 2) / 2 + between))
    assert abs(1.82 - mean) < 2 * sd and abs(1.085 - mean) < 2 * sd


def test_every_adc_number_has_its_source_and_verified_flag(criteria):
    references = criteria["references"]
    several = {"hemangioma", "benign_compression_fracture", "metastasis_lytic", "pyogenic_spondylitis",
               "tuberculous_spondylitis", "myeloma_leukemia", "focal_fat"}
    for key in ENTITY_KEYS:
        entity = criteria["entities"][key]
        sources = set()
        for pattern in entity["patterns"]:
            adc = pattern["adc"]
            for study in adc.get("studies", []):
                assert study["source"] in references, (key, study)
                assert isinstance(study["verified"], bool) and study["where"], (key, study)
                sources.add(study["source"])
            if "studies" not in adc:
                assert adc["where"], key
        if key in several:
            assert len(sources) >= 2, f"{key}: ADC from one study only"
    studies = {s["source"]: s for e in criteria["entities"].values() for p in e["patterns"]
               for s in p["adc"].get("studies", [])}
    # the numbers checked against the abstracts in this work
    for source in ("koutoulidis2017", "winfield2018", "cao2020", "palle2010", "panyaping2018", "colombo2021"):
        assert studies[source]["verified"] is True, source
    assert criteria["overriding_signs"]["bone_island_min_hu"]["value"] == 885  # Ulano 2016 abstract


# --- cases an expert reads, from the literature --------------------------------------------------


def test_typical_haemangioma_is_fat_containing_and_first_whatever_its_adc(criteria):
    # Winfield 2018: typical haemangioma median 1.085; here 0.97, T1, T2 and FS all high.
    ranked = rank_differential(F(0.97, "high", "high", "high"), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "hemangioma"
    assert ranked.headline.startswith("Fat-containing lesion")
    assert ranked[0].fits[0].startswith("fat-containing lesion")
    assert not (favoured(ranked) & (MALIGNANT | INFECTION))
    # even in the malignant ADC range the fat decides
    low = rank_differential(F(0.60, "high", "high", "high"), criteria)
    assert low[0].entity == "hemangioma" and not (favoured(low) & MALIGNANT)


def test_atypical_haemangioma_is_favoured_and_metastasis_is_not(criteria):
    # Cao 2020: atypical haemangioma 1.14 +/- 0.28 vs metastases 0.70 +/- 0.12; T1 low, T2/STIR high.
    ranked = rank_differential(F(1.14, "low", "high", "high"), criteria)
    check_well_formed(ranked)
    assert word(ranked, "hemangioma") == "favoured"
    assert word(ranked, "metastasis_lytic") != "favoured"


def test_bone_island_at_1200_hu_is_first_and_blastic_metastasis_is_not_favoured(criteria):
    # Ulano 2016: enostoses 1190 +/- 239 HU; cut-off 885 HU. Little DWI signal in sclerotic bone.
    ranked = rank_differential(F(0.40, "low", "low", "low", ct_mean_hu=1200, no_dwi_signal_fraction=0.8), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "bone_island"
    assert word(ranked, "metastasis_blastic") != "favoured"
    assert "bone island" in ranked.headline and "No DWI signal" in ranked.headline
    assert not any(r.startswith("ADC ") for c in ranked for r in c.fits + c.contradicts), "ADC unused without DWI signal"
    # without the DWI fraction the same reading
    assert rank_differential(F(None, "low", "low", "low", ct_mean_hu=1200), criteria)[0].entity == "bone_island"


def test_blastic_metastasis_at_650_hu_low_t1_t2(criteria):
    # Ulano 2016: untreated osteoblastic metastases 654 +/- 176 HU.
    ranked = rank_differential(F(0.70, "low", "low", "low", ct_mean_hu=650), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "metastasis_blastic"
    assert word(ranked, "bone_island") != "favoured"


def test_diffuse_myeloma(criteria):
    # Koutoulidis 2017: diffuse pattern 0.770 +/- 0.135; T1 not above disc (Carroll 1997: infiltrative).
    ranked = rank_differential(F(0.77, "low", "iso", "iso", t1_disc_ratio=0.85), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "myeloma_leukemia"
    assert word(ranked, "red_marrow_reconversion") == "less likely"


@pytest.mark.parametrize("adc, disc, within", [(1.05, None, 2), (1.26, 0.9, 3), (1.26, None, 4)])
def test_focal_myeloma_bright_on_stir_stays_a_top_candidate(criteria, adc, disc, within):
    # Koutoulidis 2017: focal pattern 1.046 +/- 0.232; STIR high, T1 low. Not "benign, spondylitis first".
    ranked = rank_differential(F(adc, "low", "high", "high", t1_disc_ratio=disc), criteria)
    check_well_formed(ranked)
    assert "myeloma_leukemia" in keys(ranked)[:within]
    assert word(ranked, "myeloma_leukemia") == "favoured"
    if disc is not None:
        assert keys(ranked)[0] not in INFECTION


def test_focal_fat(criteria):
    # fat: T1 high, T2 high, suppressed on FS; ADC of fatty marrow (Colombo 2021: 0.422 +/- 0.067).
    ranked = rank_differential(F(0.35, "high", "high", "low"), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "focal_fat"
    assert ranked.headline.startswith("Fat-containing lesion")


def test_seed_case_reads_reconverted_marrow_with_myeloma_not_excluded(criteria):
    # SOL low on T1 and T2, FS iso, DWI iso (ADC in the normal-marrow range), T1 above disc, CT normal.
    findings = F(0.45, "low", "low", "iso", ct_mean_hu=150, t1_disc_ratio=1.3, adc_tier="marrow")
    ranked = rank_differential(findings, criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "red_marrow_reconversion"
    assert SEED_SENTENCE in ranked.headline and SEED_SENTENCE in summarize(ranked)
    for test in ("protein electrophoresis", "free light chains", "blood count", "Dixon", "follow-up"):
        assert test in ranked.headline, test
    reconversion = ranked[0]
    assert any("myeloma" in item for item in reconversion.not_excluded)
    assert any("sclerotic" in item for item in reconversion.excluded)  # CT 150 HU
    assert any("normal-marrow range" in item for item in reconversion.excluded)
    assert reconversion.to_settle and reconversion.as_dict()["not_excluded"]
    assert word(ranked, "myeloma_leukemia") == "possible", "a normal ADC never rules myeloma out"
    assert not (favoured(ranked) & MALIGNANT)


def test_seed_case_without_a_disc_roi_says_infiltration_is_not_told_apart(criteria):
    ranked = rank_differential(F(0.45, "low", "low", "iso", ct_mean_hu=150, adc_tier="marrow"), criteria)
    assert "not told apart" in ranked.headline and SEED_SENTENCE not in ranked.headline
    reconversion = next(c for c in ranked if c.entity == "red_marrow_reconversion")
    assert any("disc not measured" in item for item in reconversion.not_excluded)


def test_roi_reaching_the_disc_is_read_on_its_restricted_component(criteria):
    # A metastasis (0.69, Herneth/Kaur) whose ROI takes in disc fluid: mean pulled up to 1.35.
    pulled = F(1.35, "low", "high", "high", heterogeneous=True, adc_restricted=0.75)
    ranked = rank_differential(pulled, criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "metastasis_lytic"
    assert not (favoured(ranked) & INFECTION)
    assert "restricted component's ADC 0.75" in ranked.headline
    # the rule matters: on its mean alone the same ROI would read as spondylitis
    assert keys(rank_differential(F(1.35, "low", "high", "high"), criteria))[0] in INFECTION


def test_necrotic_metastasis_ranks_metastasis_not_fracture(criteria):
    ranked = rank_differential(F(1.40, "low", "high", "high", heterogeneous=True, adc_restricted=0.72), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "metastasis_lytic"
    assert word(ranked, "benign_compression_fracture") == "less likely"


@pytest.mark.parametrize("adc, expected", [
    (0.69, {"metastasis_lytic"}),  # Kaur, Herneth, Cao
    (1.94, {"benign_compression_fracture"}),  # Kaur benign collapse
    (1.42, INFECTION),  # Kaur TB 1.42, Palle 1.4, Panyaping 1.30
])
def test_same_oedema_pattern_is_separated_by_adc(criteria, adc, expected):
    ranked = rank_differential(F(adc, "low", "high", "high"), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity in expected


def test_fat_sign_in_a_t1_low_lesion_favours_benign_marrow(criteria):
    # Dixon fat fraction 20 % (above Schmeel's 6.40) in a T1-low lesion: fat preserved, not infiltrated.
    ranked = rank_differential(F(0.8, "low", "high", "high", fat_fraction_percent=20.0), criteria)
    assert "Fat preserved" in ranked.headline
    assert not (favoured(ranked) & MALIGNANT)
    assert fat_sign(F(0.8, "iso", fat_fraction_percent=20.0), criteria).startswith("Dixon fat fraction")
    assert fat_sign(F(0.8, "iso", chemical_shift_ratio=0.5), criteria).startswith("chemical-shift signal drop")
    assert fat_sign(F(0.8, "iso", chemical_shift_ratio=0.95, fat_fraction_percent=2.0), criteria) is None
    assert fat_sign(F(0.8, "low", fat_sign="opposed-phase drop"), criteria) == "opposed-phase drop"


def test_carroll_disc_ratio_is_graded_not_a_bin(criteria):
    def share(ratio):
        ranked = rank_differential(F(0.5, "low", "low", "iso", t1_disc_ratio=ratio), criteria)
        scores = {c.entity: c.score for c in ranked}
        return scores["red_marrow_reconversion"] / scores["myeloma_leukemia"]

    ratios = [0.8 + 0.025 * n for n in range(29)]  # 0.8 to 1.5 in steps of 0.025
    shares = [share(r) for r in ratios]
    assert shares == sorted(shares), "brighter than disc means more red marrow (Carroll 1997)"
    assert shares[-1] / shares[0] > 100, "Carroll's 12/12 vs 0/40 is strong evidence"
    for a, b in zip(shares, shares[1:]):  # a 2.5 % step in ratio never jumps as a hard bin would
        assert b / a < 2.0


def test_t1_against_disc_and_muscle_counts_once(criteria):
    both = rank_differential(F(0.5, "low", t1_disc_ratio=1.3, t1_muscle_ratio=0.9), criteria)
    disc = rank_differential(F(0.5, "low", t1_disc_ratio=1.3), criteria)
    assert [(c.entity, round(c.score, 12)) for c in both] == [(c.entity, round(c.score, 12)) for c in disc]


# --- the reader's side: words, not percentages -------------------------------------------------------


def test_likelihood_word_reads_dicts_and_candidates(criteria):
    ranked = rank_differential(F(0.69, "low", "high", "high"), criteria)
    assert likelihood_word(ranked[0]) == likelihood_word(ranked[0].as_dict()) == "favoured"
    assert likelihood_word({"score": 0.97}) == "n/a", "an old percentage is never shown"


def test_words_follow_the_options(criteria):
    findings = F(0.69, "low", "high", "high")
    strict = rank_differential(findings, criteria, {"favoured_ratio": 0.99, "possible_ratio": 0.98})
    assert sum(c.likelihood == "favoured" for c in strict) == 1
    with pytest.raises(InputError):
        rank_differential(findings, criteria, {"favoured_ratio": 0.1, "possible_ratio": 0.5})


def test_levels_and_disc_split_pyogenic_and_tb(criteria):
    base = dict(adc=1.40, t1="low", t2="high", fs="high")
    assert rank_differential(F(**base, levels_involved=2, disc_involved=True), criteria)[0].entity == "pyogenic_spondylitis"
    assert rank_differential(F(**base, levels_involved=4, disc_involved=False), criteria)[0].entity == "tuberculous_spondylitis"


@pytest.mark.parametrize("findings", [
    F(-0.5), F(float("nan")), F(0.7, "bright"), F(0.7, ct_mean_hu=float("inf")), F(0.7, levels_involved=0),
    F(0.7, adc_tier="red"), F(0.7, no_dwi_signal_fraction=1.5), F(0.7, t1_disc_ratio=-1.0), F(0.7, adc_restricted=0.0),
])
def test_bad_input_is_an_error(criteria, findings):
    with pytest.raises(InputError):
        rank_differential(findings, criteria)


@pytest.mark.parametrize("options", [{"sign_fitt": 1.0}, {"sign_contradict": 0.0}, {"exclusion_penalty": -1}])
def test_bad_options(criteria, options):
    with pytest.raises(InputError):
        rank_differential(F(0.5), criteria, options)


def test_numbers_come_from_criteria_and_the_file_is_untouched(criteria):
    edited = load_criteria()
    for pattern in edited["entities"]["benign_compression_fracture"]["patterns"]:
        pattern["adc"] = {"studies": [{"mean": 0.69, "sd": 0.1, "source": "project"}]}
    assert rank_differential(F(0.69, "low", "high", "high"), edited)[0].entity == "benign_compression_fracture"
    before = load_criteria()
    rank_differential(F(0.45, "low", "low", "iso"), before, {"exclusion_penalty": 0.1})
    assert before == load_criteria()


def test_nothing_measured_favours_nothing_in_particular(criteria):
    ranked = rank_differential(F(), criteria)
    check_well_formed(ranked)
    assert ranked[-1].entity == "red_marrow_reconversion"  # only the exclusion penalty acts
    assert "Ranking of the measured findings only, not a diagnosis." in ranked.headline


def test_bone_island_threshold_and_bvalues_can_be_given(criteria):
    sclerotic = F(None, "low", "low", "low", ct_mean_hu=950)
    assert rank_differential(sclerotic, criteria)[0].entity == "bone_island"  # 950 >= Ulano's 885
    assert "at or above 885 HU" in rank_differential(sclerotic, criteria).headline
    assert "at or above" not in rank_differential(sclerotic, criteria, {"bone_island_min_hu": 1000}).headline
    # an ADC from b up to 2000 is far from the b 800-1000 the published values were measured at
    flagged = rank_differential(F(0.69, "low", "high", "high", bvalues=[0, 2000]), criteria)
    assert "b up to 2000" in flagged.headline
    assert "b up to" not in rank_differential(F(0.69, "low", "high", "high", bvalues=[0, 50, 800]), criteria).headline


def test_seed_sentence_only_when_reconversion_is_favoured(criteria):
    # normal-marrow ADC and T1 above disc, but a sclerotic CT (650 HU, Ulano's blastic mean)
    ranked = rank_differential(F(0.45, "low", "low", "low", ct_mean_hu=650, t1_disc_ratio=1.3, adc_tier="marrow"), criteria)
    assert ranked[0].entity != "red_marrow_reconversion"
    assert SEED_SENTENCE not in ranked.headline and "myeloma not excluded" in ranked.headline
