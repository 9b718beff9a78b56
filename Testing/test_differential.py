"""Ranked differential (VertebralMarrowLib.core.differential): real outcomes on inputs taken from
the clinical reference (shared/clinical-reference.md): its pattern table (T1 / T2 / FS-T2
signs) and its ADC table (Kaur 2020; Wang 2021 for myeloma; normal marrow for reconversion),
not from the module's output.
"""

from __future__ import annotations

import math

import pytest

from VertebralMarrowLib.core import differential as dd
from VertebralMarrowLib.core.criteria import ENTITY_KEYS, load_criteria
from VertebralMarrowLib.core.differential import LesionFindings, rank_differential, summarize
from VertebralMarrowLib.errors import InputError

MALIGNANT = {"metastasis_lytic", "metastasis_blastic", "myeloma_leukemia"}
INFECTION = {"pyogenic_spondylitis", "tuberculous_spondylitis"}


@pytest.fixture(scope="module")
def criteria():
    return load_criteria()


def F(adc=None, t1=None, t2=None, fs=None, **kw):
    return LesionFindings(adc_mean=adc, t1_signal=t1, t2_signal=t2, fs_signal=fs, **kw)


def keys(candidates):
    return [c.entity for c in candidates]


def score(candidates, entity):
    return next(c.score for c in candidates if c.entity == entity)


def rank_of(candidates, entity):
    return keys(candidates).index(entity)


def check_well_formed(candidates):
    assert sorted(keys(candidates)) == sorted(ENTITY_KEYS)
    assert math.isclose(sum(c.score for c in candidates), 1.0, rel_tol=0, abs_tol=1e-9)
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    for c in candidates:
        assert 0.0 <= c.score <= 1.0
        assert isinstance(c.fits, list) and isinstance(c.contradicts, list)
        assert all(isinstance(r, str) and r for r in c.fits + c.contradicts)
        assert c.label


# --- each entity, from the reference's pattern table + ADC table -------------------------------

# (case name, findings, expected entity, must be within the first `within` ranks)
REFERENCE_CASES = [
    # haemangioma: T1 high or iso, T2 high, FS-T2 high; ADC 1.82 +/- 0.17
    ("haemangioma T1 high", F(1.82, "high", "high", "high"), "hemangioma", 1),
    ("haemangioma T1 iso", F(1.82, "iso", "high", "high"), "hemangioma", 1),
    # benign compression fracture: T1 low, T2 high, STIR high; ADC 1.94 +/- 0.18
    ("fracture", F(1.94, "low", "high", "high"), "benign_compression_fracture", 1),
    # lytic metastasis: same pattern; ADC 0.69 +/- 0.18
    ("lytic metastasis", F(0.69, "low", "high", "high"), "metastasis_lytic", 1),
    # blastic metastasis: T1, T2, FS-T2 low; CT sclerotic (Ulano 2016: 654 +/- 176 HU)
    ("blastic metastasis", F(0.69, "low", "low", "low", ct_mean_hu=654), "metastasis_blastic", 1),
    ("blastic metastasis, no ADC", F(None, "low", "low", "low", ct_mean_hu=654), "metastasis_blastic", 1),
    # pyogenic: T1 low, T2 high, STIR high; ADC 1.47 +/- 0.22; cannot be told from TB here
    ("pyogenic", F(1.47, "low", "high", "high"), "pyogenic_spondylitis", 2),
    # tuberculous: as pyogenic; ADC 1.42 +/- 0.31
    ("tuberculous", F(1.42, "low", "high", "high"), "tuberculous_spondylitis", 2),
    # myeloma: T1 low, T2 variable; ADC 0.6157 (Wang 2021 median)
    ("myeloma T2 iso", F(0.6157, "low", "iso"), "myeloma_leukemia", 1),
    ("myeloma T2 iso FS iso", F(0.6157, "low", "iso", "iso"), "myeloma_leukemia", 1),
    ("myeloma T2 low, CT normal", F(0.6157, "low", "low", ct_mean_hu=120), "myeloma_leukemia", 1),
    # reconversion: T1 low, T2 low, FS-T2 low; DWI iso (ADC as normal marrow 0.39); CT normal
    ("reconversion", F(0.39, "low", "low", "low", ct_mean_hu=120), "red_marrow_reconversion", 1),
]


@pytest.mark.parametrize("name,findings,entity,within", REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES])
def test_reference_pattern_ranks_its_entity(criteria, name, findings, entity, within):
    ranked = rank_differential(findings, criteria)
    check_well_formed(ranked)
    assert entity in keys(ranked)[:within], f"{name}: {[(c.entity, round(c.score, 3)) for c in ranked]}"


def test_every_entity_is_covered_by_a_reference_case():
    assert {case[2] for case in REFERENCE_CASES} == set(ENTITY_KEYS)


def test_infection_pair_is_near_equal_without_levels_or_disc(criteria):
    for adc in (1.42, 1.45, 1.47):
        ranked = rank_differential(F(adc, "low", "high", "high"), criteria)
        assert set(keys(ranked)[:2]) == INFECTION
        pyo, tb = score(ranked, "pyogenic_spondylitis"), score(ranked, "tuberculous_spondylitis")
        assert 0.5 < pyo / tb < 2.0
        for entity in INFECTION:
            cand = next(c for c in ranked if c.entity == entity)
            assert any("not separable" in r and "disc" in r for r in cand.contradicts)


# --- the hard pairs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "adc,expected",
    [(1.94, {"benign_compression_fracture"}), (0.69, {"metastasis_lytic"}), (1.45, INFECTION)],
)
def test_same_pattern_is_separated_by_adc(criteria, adc, expected):
    ranked = rank_differential(F(adc, "low", "high", "high"), criteria)
    assert ranked[0].entity in expected
    # the shared pattern is said in words, and ADC is what decides
    top = ranked[0]
    assert any("shared by" in r and "fracture" in r and "lytic metastasis" in r for r in top.fits)
    assert any(r.startswith(f"ADC {adc:.2f} fits") for r in top.fits)


def test_adc_reason_wording(criteria):
    ranked = rank_differential(F(0.71, "low", "high", "high"), criteria)
    lytic = next(c for c in ranked if c.entity == "metastasis_lytic")
    fracture = next(c for c in ranked if c.entity == "benign_compression_fracture")
    assert any("ADC 0.71 fits lytic metastasis (0.69 ± 0.18" in r for r in lytic.fits)
    assert any("ADC 0.71 argues against fracture (1.94 ± 0.18" in r for r in fracture.contradicts)
    assert any("T2 high" in r or "FS-T2 high" in r for r in fracture.fits)


def test_blastic_vs_reconversion_by_ct(criteria):
    sclerotic = rank_differential(F(0.55, "low", "low", "low", ct_mean_hu=650), criteria)
    assert sclerotic[0].entity == "metastasis_blastic"
    assert any("sclerotic" in r for r in sclerotic[0].fits)
    for adc in (0.40, 0.50, 0.60):
        normal = rank_differential(F(adc, "low", "low", "low", ct_mean_hu=120), criteria)
        assert normal[0].entity in {"red_marrow_reconversion", "myeloma_leukemia"}, adc
        assert "metastasis_blastic" not in keys(normal)[:2]
        blastic = next(c for c in normal if c.entity == "metastasis_blastic")
        assert any("argues against blastic metastasis" in r for r in blastic.contradicts)


def test_ct_at_sclerotic_threshold_favours_blastic(criteria):
    threshold = criteria["ct"]["sclerotic_min_hu"]
    ranked = rank_differential(F(ct_mean_hu=threshold), criteria)
    assert ranked[0].entity == "metastasis_blastic"
    normal = rank_differential(F(ct_mean_hu=criteria["normal_marrow"]["ct_hu"]["mean"]), criteria)
    assert rank_of(normal, "metastasis_blastic") >= 6  # only reconversion (penalised) may be below


def test_lytic_low_attenuation_is_not_penalised(criteria):
    with_ct = rank_differential(F(0.69, "low", "high", "high", ct_mean_hu=30), criteria)
    without = rank_differential(F(0.69, "low", "high", "high"), criteria)
    assert with_ct[0].entity == "metastasis_lytic"
    assert score(with_ct, "metastasis_lytic") >= score(without, "metastasis_lytic") - 1e-9


def test_seed_case_myeloma_and_reconversion_top_two(criteria):
    # T1 low, T2 low islands, FS-T2 low; DWI iso to slightly high (ADC ~0.55); CT nothing special
    ranked = rank_differential(F(0.55, "low", "low", "low", ct_mean_hu=120), criteria)
    check_well_formed(ranked)
    assert set(keys(ranked)[:2]) == {"myeloma_leukemia", "red_marrow_reconversion"}
    recon = next(c for c in ranked if c.entity == "red_marrow_reconversion")
    assert any("exclusion" in r for r in recon.contradicts)
    line = summarize(ranked)
    assert "Multiple myeloma" in line and "reconversion" in line


# --- missing inputs ------------------------------------------------------------------------------


def test_adc_only(criteria):
    ranked = rank_differential(F(1.94), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "benign_compression_fracture"
    ranked = rank_differential(F(0.69), criteria)
    assert ranked[0].entity in MALIGNANT


def test_signals_only(criteria):
    ranked = rank_differential(F(None, "high", "high", "high"), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity == "hemangioma"
    ranked = rank_differential(F(None, "low", None, "high"), criteria)
    check_well_formed(ranked)
    assert ranked[0].entity not in {"hemangioma", "red_marrow_reconversion", "metastasis_blastic"}
    assert any("oedema pattern" in r for r in ranked[0].fits)
    assert not any("ADC" in r for c in ranked for r in c.fits + c.contradicts)


def test_nothing_measured(criteria):
    ranked = rank_differential(F(), criteria)
    check_well_formed(ranked)
    assert ranked[-1].entity == "red_marrow_reconversion"  # only the exclusion penalty acts
    assert len({round(c.score, 12) for c in ranked[:-1]}) == 1


def test_na_strings_mean_not_measured(criteria):
    a = rank_differential(F(0.69, "low", "n/a", None), criteria)
    b = rank_differential(F(0.69, "low"), criteria)
    assert [(c.entity, c.score) for c in a] == [(c.entity, c.score) for c in b]


@pytest.mark.parametrize(
    "findings",
    [F(-0.5), F(float("nan")), F(0.7, "bright"), F(0.7, ct_mean_hu=float("inf")), F(0.7, levels_involved=0)],
)
def test_bad_input_is_an_error(criteria, findings):
    with pytest.raises(InputError):
        rank_differential(findings, criteria)


# --- levels / disc split the infection pair -----------------------------------------------------


def test_levels_and_disc_split_pyogenic_and_tb(criteria):
    base = dict(adc=1.45, t1="low", t2="high", fs="high")
    pyo = rank_differential(F(**base, levels_involved=2, disc_involved=True), criteria)
    assert pyo[0].entity == "pyogenic_spondylitis"
    assert any("disc involved fits pyogenic" in r for r in pyo[0].fits)
    tb = rank_differential(F(**base, levels_involved=4, disc_involved=False), criteria)
    assert tb[0].entity == "tuberculous_spondylitis"
    assert not any("not separable" in r for c in tb for r in c.contradicts)
    # each input alone moves the pair the expected way
    plain = rank_differential(F(**base), criteria)
    ratio = score(plain, "tuberculous_spondylitis") / score(plain, "pyogenic_spondylitis")
    for extra in ({"levels_involved": 5}, {"disc_involved": False}):
        moved = rank_differential(F(**base, **extra), criteria)
        assert score(moved, "tuberculous_spondylitis") / score(moved, "pyogenic_spondylitis") > ratio
    for extra in ({"levels_involved": 1}, {"disc_involved": True}):
        moved = rank_differential(F(**base, **extra), criteria)
        assert score(moved, "tuberculous_spondylitis") / score(moved, "pyogenic_spondylitis") < ratio


# --- extra criteria: only when given, in the expected direction ----------------------------------

SEED = dict(adc=0.55, t1="low", t2="low", fs="low", ct_mean_hu=120)
OEDEMA_AMBIGUOUS = dict(adc=1.05, t1="low", t2="high", fs="high")  # between malignant and benign ranges


def malignant_share(ranked):
    return sum(c.score for c in ranked if c.entity in MALIGNANT)


def test_extras_absent_change_nothing(criteria):
    a = rank_differential(F(**SEED), criteria)
    b = rank_differential(
        F(**SEED, t1_vs_disc=None, t1_vs_muscle=None, chemical_shift_ratio=None, fat_fraction_percent=None),
        criteria,
    )
    assert [(c.entity, c.score, c.fits, c.contradicts) for c in a] == [
        (c.entity, c.score, c.fits, c.contradicts) for c in b
    ]


def test_carroll_disc(criteria):
    base = rank_differential(F(**SEED), criteria)
    assert base[0].entity == "myeloma_leukemia"
    red = rank_differential(F(**SEED, t1_vs_disc="high"), criteria)  # hyperintense to disc: red marrow
    assert red[0].entity == "red_marrow_reconversion"
    assert score(red, "red_marrow_reconversion") > score(base, "red_marrow_reconversion")
    assert any("Carroll 1997" in r for r in red[0].fits)
    infiltrative = rank_differential(F(**SEED, t1_vs_disc="iso"), criteria)
    assert score(infiltrative, "red_marrow_reconversion") < score(base, "red_marrow_reconversion")
    assert score(infiltrative, "myeloma_leukemia") > score(base, "myeloma_leukemia")


def test_carroll_muscle(criteria):
    recon_case = dict(adc=0.39, t1="low", t2="low", fs="low", ct_mean_hu=120)
    base = rank_differential(F(**recon_case), criteria)
    assert base[0].entity == "red_marrow_reconversion"
    low = rank_differential(F(**recon_case, t1_vs_muscle="low"), criteria)  # iso/hypo to muscle: infiltrative
    assert low[0].entity == "myeloma_leukemia"
    high = rank_differential(F(**recon_case, t1_vs_muscle="high"), criteria)
    assert score(high, "red_marrow_reconversion") > score(base, "red_marrow_reconversion")


def test_chemical_shift_ratio(criteria):
    base = rank_differential(F(**OEDEMA_AMBIGUOUS), criteria)
    assert base[0].entity not in MALIGNANT
    high = rank_differential(F(**OEDEMA_AMBIGUOUS, chemical_shift_ratio=0.95), criteria)
    assert high[0].entity in MALIGNANT
    assert malignant_share(high) > malignant_share(base)
    assert any("unverified" in r for r in high[0].fits)
    low = rank_differential(F(**OEDEMA_AMBIGUOUS, chemical_shift_ratio=0.50), criteria)
    assert malignant_share(low) < malignant_share(base)
    assert low[0].entity not in MALIGNANT


def test_fat_fraction(criteria):
    base = rank_differential(F(**OEDEMA_AMBIGUOUS), criteria)
    fatless = rank_differential(F(**OEDEMA_AMBIGUOUS, fat_fraction_percent=3.0), criteria)
    assert fatless[0].entity in MALIGNANT
    assert malignant_share(fatless) > malignant_share(base)
    assert any("PDFF 3.0 %" in r and "Schmeel 2018" in r for r in fatless[0].fits)
    fatty = rank_differential(F(**OEDEMA_AMBIGUOUS, fat_fraction_percent=30.0), criteria)
    assert malignant_share(fatty) < malignant_share(base)


def test_disable_an_extra(criteria):
    base = rank_differential(F(**OEDEMA_AMBIGUOUS), criteria)
    off = rank_differential(
        F(**OEDEMA_AMBIGUOUS, chemical_shift_ratio=0.95), criteria, {"disable": ["chemical_shift_ratio"]}
    )
    assert [(c.entity, c.score) for c in off] == [(c.entity, c.score) for c in base]


def test_extra_criteria_record_verification(criteria):
    extras = criteria["extra_criteria"]
    for name in ("t1_vs_muscle", "t1_vs_disc", "chemical_shift_ratio", "fat_fraction_percent"):
        assert isinstance(extras[name]["verified"], bool)
        assert extras[name]["where"]
        assert extras[name]["source"] in criteria["references"]
    assert extras["chemical_shift_ratio"]["verified"] is False


# --- options and criteria drive the numbers ---------------------------------------------------------


def test_options_override_factors(criteria):
    base = rank_differential(F(**SEED), criteria)
    no_penalty = rank_differential(F(**SEED), criteria, {"exclusion_penalty": 1.0})
    assert score(no_penalty, "red_marrow_reconversion") > score(base, "red_marrow_reconversion")
    harsh = rank_differential(F(**SEED), criteria, {"exclusion_penalty": 0.01})
    assert "red_marrow_reconversion" not in keys(harsh)[:2]
    recon = next(c for c in harsh if c.entity == "red_marrow_reconversion")
    assert any("× 0.01" in r for r in recon.contradicts)
    # signs ignored: the fracture pattern then ranks exactly as ADC alone
    neutral = rank_differential(F(1.30, "low", "high", "high"), criteria, {"sign_contradict": 1.0})
    adc_only = rank_differential(F(1.30), criteria, {"sign_contradict": 1.0})
    assert keys(neutral) == keys(adc_only)
    for c in neutral:
        assert math.isclose(c.score, score(adc_only, c.entity), rel_tol=1e-9)


@pytest.mark.parametrize("options", [{"sign_fitt": 1.0}, {"sign_contradict": 0.0}, {"exclusion_penalty": -1}])
def test_bad_options(criteria, options):
    with pytest.raises(InputError):
        rank_differential(F(**SEED), criteria, options)


def test_numbers_come_from_criteria(criteria):
    edited = load_criteria()
    edited["entities"]["benign_compression_fracture"]["adc"]["mean"] = 0.69
    ranked = rank_differential(F(0.69, "low", "high", "high"), edited)
    assert ranked[0].entity == "benign_compression_fracture"
    edited = load_criteria()
    edited["differential"]["exclusion_penalty"]["value"] = 1.0
    assert score(rank_differential(F(**SEED), edited), "red_marrow_reconversion") > score(
        rank_differential(F(**SEED), criteria), "red_marrow_reconversion"
    )


def test_criteria_file_untouched_by_ranking(criteria):
    before = load_criteria()
    rank_differential(F(**SEED), before, {"exclusion_penalty": 0.1})
    assert before == load_criteria()


# --- output for the reader ------------------------------------------------------------------------


def test_summarize_one_line_ranking_only(criteria):
    ranked = rank_differential(F(0.69, "low", "high", "high"), criteria)
    line = summarize(ranked, top=2)
    assert "\n" not in line
    assert ranked[0].label in line and ranked[1].label in line and ranked[2].label not in line
    assert line.endswith("not a diagnosis.")
    assert "%" in line


def test_differential_keys_and_disclaimer(criteria):
    ranked = rank_differential(F(0.69, "low", "high", "high"), criteria)
    assert dd.differential_keys(ranked).split(";") == keys(ranked)
    assert "never replaces" in dd.__doc__
    assert dd.DISCLAIMER


def test_summary_never_claims_certainty(criteria):
    ranked = rank_differential(F(0.69, "low", "low", "low", ct_mean_hu=650), criteria)
    line = summarize(ranked)
    assert ranked[0].entity == "metastasis_blastic"
    assert "100 %" not in line and " 0 %" not in line
    assert ">99 %" in line and "<1 %" in line


def test_t1_against_disc_and_muscle_counts_once(criteria):
    """The same T1 sign read against two internal standards is one piece of evidence: with a
    disc ROI the muscle reading adds nothing; alone, the muscle reading still counts."""
    base = dict(adc=0.55, t1="low", t2="low", fs="low", ct_mean_hu=120.0)
    disc_only = dd.rank_differential(F(**base, t1_vs_disc="high"), criteria)
    both = dd.rank_differential(F(**base, t1_vs_disc="high", t1_vs_muscle="high"), criteria)
    assert [(c.entity, round(c.score, 12)) for c in both] == [(c.entity, round(c.score, 12)) for c in disc_only]
    assert not any("vs muscle" in reason for c in both for reason in c.fits + c.contradicts)
    plain = dd.rank_differential(F(**base), criteria)
    muscle_only = dd.rank_differential(F(**base, t1_vs_muscle="high"), criteria)
    assert score(muscle_only, "red_marrow_reconversion") > score(plain, "red_marrow_reconversion")
