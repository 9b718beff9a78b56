"""Ranked differential diagnosis of one vertebral marrow lesion, with the reasons for each rank.

Research and decision support only: the ranking supports, and never replaces, the
radiologist's judgement. It orders the entities of the clinical reference by how well the
*measured* findings fit each; it does not know the history, the morphology, the enhancement or
the rest of the skeleton. What it shows is a word per entity (favoured, possible, less likely),
never a percentage: the published cohorts behind it overlap too much to carry one.

Method (numeric, no MRML; every number comes from the criteria dict, `criteria.load_criteria()`):

1. Signs a radiologist applies first, each with its reason, before any weighing:
   - fat: T1 clearly above normal marrow, a Dixon fat fraction above Schmeel's cut-off or a
     chemical-shift signal drop (or the analysis's own `fat_sign`) makes the lesion
     fat-containing: haemangioma and focal fat come first whatever the ADC. When T1 is low, the
     fat says "benign marrow with preserved fat" and the benign entities come first instead.
   - density: CT at or above overriding_signs.bone_island_min_hu (885 HU, Ulano 2016) puts the
     bone island first.
   - heterogeneity: a heterogeneous ROI is weighed on its restricted component's ADC
     (`adc_restricted`), not on a mean pulled up by necrosis, fluid or a neighbouring disc.
   - no DWI signal over most of a lesion (sclerosis?) leaves its ADC unused: see CT.
2. Weight of each entity: the best of its patterns (haemangioma typical / atypical, myeloma
   focal / diffuse, ...), each the product of
   - its ADC Gaussian, pooled over several studies (mean of the study means; SD widened for
     the spread between studies, at least differential.adc_between_study_sd_min), and
   - its T1 / T2 / FS-T2 sign fit (differential.sign_fit / sign_contradict per sequence);
   then CT (Ulano 2016 Gaussians for blastic metastasis and bone island, the normal-marrow
   Gaussian flat below its mean for the rest), spread (levels, disc), the extra criteria when
   measured (Carroll 1997's T1 against disc or muscle, read as a graded ratio; chemical-shift
   ratio; Dixon fat fraction) and the exclusion penalty of red-marrow reconversion.
3. Words: the entities within differential.favoured_ratio of the top weight are favoured,
   within possible_ratio possible, the rest less likely. Red-marrow reconversion, a diagnosis of
   exclusion, also lists what the measurements have and have not excluded and what would
   settle it. A lesion in the normal-marrow ADC tier with T1 above disc reads "ADC within the
   normal-marrow range, no diffusion evidence of infiltration; favours reconverted marrow;
   myeloma not excluded".

Every factor can be overridden with `options={name: value}` (names as in the criteria's
"differential" section, plus "ct_sclerotic_min_hu", "bone_island_min_hu" and "disable": a list
of extra-criterion names to ignore).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from .. import DISCLAIMER
from ..core.criteria import ENTITY_KEYS
from ..errors import InputError

__all__ = [
    "LesionFindings",
    "Candidate",
    "Differential",
    "rank_differential",
    "summarize",
    "likelihood_word",
    "pooled_adc",
    "fat_sign",
    "DISCLAIMER",
]

SIGNS = ("low", "iso", "high")
TIERS = ("marrow", "malignant", "indeterminate", "benign")
WORDS = ("favoured", "possible", "less likely")
# (criteria key, LesionFindings attribute, words shown to the reader)
SEQUENCES = (("t1", "t1_signal", "T1"), ("t2", "t2_signal", "T2"), ("fs", "fs_signal", "FS-T2"))
DISPLAY = {key: display for key, _, display in SEQUENCES}
FACTOR_NAMES = (
    "sign_fit",
    "sign_contradict",
    "fit_z",
    "exclusion_penalty",
    "spread_fit",
    "spread_contradict",
    "adc_between_study_sd_min",
    "favoured_ratio",
    "possible_ratio",
    "no_dwi_signal_min_fraction",
)
OTHER_OPTIONS = ("ct_sclerotic_min_hu", "bone_island_min_hu", "disable")
SQRT_2PI_LOG = 0.5 * math.log(2.0 * math.pi)
# What settles red marrow against a low-burden infiltrate (clinical-reference.md, last section).
TO_SETTLE = (
    "serum and urine protein electrophoresis",
    "serum free light chains",
    "full blood count",
    "chemical-shift or Dixon imaging (red marrow keeps some fat: signal drop, fat fraction above the Dixon cut-off)",
    "follow-up MRI",
)


@dataclass
class LesionFindings:
    """What the analysis measured for one lesion ROI; None = not measured / not given."""

    adc_mean: Optional[float]  # 10^-3 mm^2/s
    t1_signal: Optional[str]  # 'low' | 'iso' | 'high' relative to normal-marrow reference
    t2_signal: Optional[str]
    fs_signal: Optional[str]
    ct_mean_hu: Optional[float] = None
    t1_vs_disc: Optional[str] = None  # lesion T1 vs disc ROI (Carroll 1997)
    t1_vs_muscle: Optional[str] = None  # lesion T1 vs skeletal muscle ROI (Carroll 1997)
    chemical_shift_ratio: Optional[float] = None  # opposed-phase / in-phase signal
    fat_fraction_percent: Optional[float] = None  # Dixon PDFF
    levels_involved: Optional[int] = None  # user-given: number of vertebral levels
    disc_involved: Optional[bool] = None  # user-given
    adc_tier: Optional[str] = None  # marrow | malignant | indeterminate | benign (the analysis's tier)
    adc_restricted: Optional[float] = None  # 10^-3 mm^2/s, the restricted component of a heterogeneous ROI
    heterogeneous: Optional[bool] = None  # restricted and free components both present
    fat_sign: Optional[str] = None  # the analysis's reason the lesion contains fat, or None
    t1_disc_ratio: Optional[float] = None  # lesion T1 / disc T1
    t1_muscle_ratio: Optional[float] = None  # lesion T1 / muscle T1
    no_dwi_signal_fraction: Optional[float] = None  # 0-1, voxels without DWI signal
    bvalues: Optional[list] = None  # s/mm^2 the ADC came from; None = unknown (scanner map)


@dataclass
class Candidate:
    entity: str  # one of criteria.ENTITY_KEYS
    label: str
    score: float  # relative weight, for ordering only (never shown): the candidates' scores sum to 1
    likelihood: str = ""  # favoured | possible | less likely
    fits: list = field(default_factory=list)  # reasons that support it
    contradicts: list = field(default_factory=list)  # reasons against it
    excluded: list = field(default_factory=list)  # diagnosis of exclusion: what the measurements excluded
    not_excluded: list = field(default_factory=list)  # ... and what they did not
    to_settle: list = field(default_factory=list)  # ... and what would settle it

    def as_dict(self) -> dict:
        """What results.json stores and the outputs show: no score, the word instead."""
        out = {
            "entity": self.entity,
            "label": self.label,
            "likelihood": self.likelihood,
            "fits": list(self.fits),
            "contradicts": list(self.contradicts),
        }
        if self.excluded or self.not_excluded or self.to_settle:
            out.update(excluded=list(self.excluded), not_excluded=list(self.not_excluded), to_settle=list(self.to_settle))
        return out


class Differential(list):
    """The candidates, most likely first, with the sentence a radiologist reads first
    (`headline`) and the overriding signs that were applied (`signs`, in order)."""

    def __init__(self, candidates=(), headline: str = "", signs=()):
        super().__init__(candidates)
        self.headline = headline
        self.signs = list(signs)


# ---------------------------------------------------------------------------------------------
# small helpers


def _cite(source_key: Optional[str]) -> str:
    """'kaur2020' -> 'Kaur 2020' (the full reference is in criteria['references'])."""
    if not source_key:
        return ""
    match = re.fullmatch(r"([a-z]+)(\d{4})", str(source_key))
    if match:
        return f"{match.group(1).capitalize()} {match.group(2)}"
    return str(source_key)


def _join(words: list) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _sign(value, name: str) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "n/a", "na", "none"):
        return None
    if text not in SIGNS:
        raise InputError(f"{name} '{value}' unknown; use low, iso or high")
    return text


def _number(value, name: str, positive: bool = False) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"{name} '{value}' is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} '{value}' is not a number") from None
    if not math.isfinite(number):
        raise InputError(f"{name} is {value}: not a usable number")
    if positive and number <= 0:
        raise InputError(f"{name} {number} must be positive")
    return number


def _log_normal(x: float, mean: float, sd: float) -> float:
    """log of the normal density (with its constant, so a flat density compares fairly)."""
    z = (x - mean) / sd
    return -0.5 * z * z - math.log(sd) - SQRT_2PI_LOG


def is_number(value) -> bool:
    """A finite int or float (not a bool): what the outputs print as a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _study_mean_sd(study: dict):
    """(mean, SD or None) of one study: a median with IQR counts as mean with SD = IQR / 1.349."""
    if "median" in study:
        low, high = study["iqr"]
        return float(study["median"]), (float(high) - float(low)) / 1.349
    sd = study.get("sd")
    return float(study["mean"]), (None if sd is None else float(sd))


def pooled_adc(spec: dict, between_sd_min: float):
    """(mean, SD) of an ADC spec in 10^-3 mm^2/s. With 'studies': the mean of the study means,
    and SD = sqrt(mean of the study variances + max(between-study variance of the means,
    between_sd_min^2)): wide enough for the spread between cohorts, not one cohort's SD.
    Without studies: the spec's own mean and SD (a range derived from several sources)."""
    studies = spec.get("studies")
    if not studies:
        return float(spec["mean"]), float(spec["sd"])
    pairs = [_study_mean_sd(study) for study in studies]
    means = [mean for mean, _ in pairs]
    variances = [sd * sd for _, sd in pairs if sd is not None]
    if not variances:
        raise InputError("an ADC spec's studies give no SD at all")
    mean = sum(means) / len(means)
    between = sum((m - mean) ** 2 for m in means) / (len(means) - 1) if len(means) > 1 else 0.0
    return mean, math.sqrt(sum(variances) / len(variances) + max(between, between_sd_min ** 2))


def _adc_sources(spec: dict) -> str:
    """The studies behind an ADC spec, or for a derived range the sources it was derived from."""
    if not spec.get("studies") and spec.get("based_on"):
        return "derived from " + ", ".join(_cite(key) for key in spec["based_on"])
    names = []
    for study in spec.get("studies") or [spec]:
        name = _cite(study.get("source"))
        if name and name != "project" and name not in names:
            names.append(name)
    return ", ".join(names) if names else "project"


class _Params:
    """The differential's factors: criteria defaults, overridden by options."""

    def __init__(self, criteria: dict, options: Optional[dict]):
        options = dict(options or {})
        unknown = [key for key in options if key not in FACTOR_NAMES + OTHER_OPTIONS]
        if unknown:
            raise InputError(
                f"unknown differential option(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(FACTOR_NAMES + OTHER_OPTIONS)}"
            )
        section = criteria.get("differential")
        if not isinstance(section, dict):
            raise InputError("criteria lack the 'differential' section")
        self.values = {}
        for name in FACTOR_NAMES:
            value = options.get(name)
            if isinstance(value, dict):
                value = value.get("value")
            if value is None:
                try:
                    value = section[name]["value"]
                except (KeyError, TypeError):
                    raise InputError(f"criteria 'differential' lacks {name}") from None
            value = _number(value, f"differential factor {name}")
            if value <= 0:
                raise InputError(f"differential factor {name} must be positive, not {value}")
            self.values[name] = value
        if not self.values["possible_ratio"] <= self.values["favoured_ratio"] <= 1.0:
            raise InputError("differential words need 0 < possible_ratio <= favoured_ratio <= 1")
        sclerotic = options.get("ct_sclerotic_min_hu")
        if sclerotic is None:
            sclerotic = criteria["ct"]["sclerotic_min_hu"]
        self.ct_sclerotic_min_hu = _number(sclerotic, "ct_sclerotic_min_hu")
        island = options.get("bone_island_min_hu")
        if island is None:
            island = criteria["overriding_signs"]["bone_island_min_hu"]["value"]
        self.bone_island_min_hu = _number(island, "bone_island_min_hu")
        self.disable = set(options.get("disable") or ())
        self.section = section
        self.bmax_range = [float(b) for b in section["published_bmax_range"]["value"]]

    def __getitem__(self, name: str) -> float:
        return self.values[name]


class _Tally:
    """Weight (as a log) and reasons of one entity."""

    def __init__(self, key: str, entity: dict):
        self.key = key
        self.entity = entity
        self.short = entity.get("short") or entity.get("label") or key
        self.log = 0.0
        self.fits = []
        self.contradicts = []

    def add(self, factor_log: float, reason: Optional[str], fits: bool) -> None:
        self.log += factor_log
        if reason:
            (self.fits if fits else self.contradicts).append(reason)


class _Reading:
    """The findings checked once: what every step below reads."""

    def __init__(self, findings: LesionFindings, params: _Params, criteria: dict):
        self.adc_mean = _number(findings.adc_mean, "ADC mean", positive=True)
        self.adc_restricted = _number(findings.adc_restricted, "restricted-component ADC", positive=True)
        tier = findings.adc_tier
        if tier is not None and tier not in TIERS:
            raise InputError(f"ADC tier '{tier}' unknown; use {', '.join(TIERS)}")
        self.tier = tier
        if self.tier is None and self.adc_mean is not None:
            marrow_max = ((criteria.get("adc_tiers") or {}).get("marrow_max") or {}).get("value")
            if marrow_max is not None and self.adc_mean <= float(marrow_max):
                self.tier = "marrow"
        self.heterogeneous = bool(findings.heterogeneous)
        fraction = _number(findings.no_dwi_signal_fraction, "fraction without DWI signal")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise InputError(f"fraction without DWI signal {fraction} must lie in 0-1")
        self.no_dwi = fraction is not None and fraction >= params["no_dwi_signal_min_fraction"]
        self.no_dwi_fraction = fraction
        # the ADC the entities are weighed on
        self.adc = self.adc_mean
        if self.heterogeneous and self.adc_restricted is not None:
            self.adc = self.adc_restricted
        if self.no_dwi:
            self.adc = None
        self.signs = {}
        for key, attribute, _ in SEQUENCES:
            sign = _sign(getattr(findings, attribute), attribute)
            if sign is not None:
                self.signs[key] = sign
        self.hu = _number(findings.ct_mean_hu, "CT mean attenuation (HU)")
        self.disc_ratio = _number(findings.t1_disc_ratio, "T1 lesion/disc ratio", positive=True)
        self.muscle_ratio = _number(findings.t1_muscle_ratio, "T1 lesion/muscle ratio", positive=True)
        self.t1_vs_disc = _sign(findings.t1_vs_disc, "t1_vs_disc")
        disc_spec = (criteria.get("extra_criteria") or {}).get("t1_vs_disc") or {}
        self.disc_hyper_ratio = float((disc_spec.get("graded") or {}).get("hyper_ratio", 1.0))
        if self.disc_ratio is not None:
            self.t1_above_disc = self.disc_ratio >= self.disc_hyper_ratio
        elif self.t1_vs_disc is not None:
            self.t1_above_disc = self.t1_vs_disc == "high"
        else:
            self.t1_above_disc = None
        self.fat = fat_sign(findings, criteria)
        bvalues = [_number(b, "b-value") for b in (findings.bvalues or ())]
        self.bmax = max(bvalues) if bvalues else None


def fat_sign(findings: LesionFindings, criteria: dict) -> Optional[str]:
    """Why the lesion contains fat, or None: the analysis's own `fat_sign` when given, else
    T1 clearly above normal marrow (t1_signal 'high'), a Dixon fat fraction at or above
    overriding_signs.fat_fraction_min_percent (Schmeel 2018) or a chemical-shift signal drop
    below overriding_signs.chemical_shift_drop_below (Zajick 2005, unverified)."""
    if findings.fat_sign:
        return str(findings.fat_sign)
    signs = criteria["overriding_signs"]
    if _sign(findings.t1_signal, "t1_signal") == "high":
        return "T1 above normal marrow"
    fraction = _number(findings.fat_fraction_percent, "fat fraction (%)")
    dixon = float(signs["fat_fraction_min_percent"]["value"])
    if fraction is not None and fraction >= dixon:
        return f"Dixon fat fraction {fraction:.1f} at or above {dixon:.2f} ({_cite('schmeel2018')})"
    ratio = _number(findings.chemical_shift_ratio, "chemical-shift ratio")
    drop = float(signs["chemical_shift_drop_below"]["value"])
    if ratio is not None and 0 <= ratio < drop:
        return f"chemical-shift signal drop (opposed/in-phase {ratio:.2f} below {drop:.2f}, {_cite('zajick2005')}, unverified)"
    return None


# ---------------------------------------------------------------------------------------------
# the evidence, one kind at a time


def _pattern_name(observed: dict, section: dict) -> str:
    for entry in section.get("pattern_names", ()):
        when = entry.get("when", {})
        if when and all(observed.get(seq) == sign for seq, sign in when.items()):
            return entry.get("name", "")
    return ""


def _patterns(reading: _Reading, tallies, params) -> None:
    """Each entity's best pattern: its ADC Gaussian (pooled over studies) times its sign fit."""
    log_fit, log_contra = math.log(params["sign_fit"]), math.log(params["sign_contradict"])
    floor = params["adc_between_study_sd_min"]
    observed = reading.signs
    words = {key: f"{DISPLAY[key]} {sign}" for key, sign in observed.items()}
    chosen = {}
    for tally in tallies:
        best = None
        for pattern in tally.entity.get("patterns") or [tally.entity]:
            log, adc_reason = 0.0, None
            spec = pattern.get("adc") or {}
            if reading.adc is not None:
                if spec.get("informative", True) is False:
                    log += -math.log(3.0)  # flat over 0-3 x 10^-3 mm^2/s: ADC neither for nor against
                    adc_reason = (f"ADC {reading.adc:.2f} not informative for {tally.short} (little or no DWI signal "
                                  "in sclerotic bone)", True)
                else:
                    mean, sd = pooled_adc(spec, floor)
                    log += _log_normal(reading.adc, mean, sd)
                    name = f"{tally.short}, {pattern['name']}" if len(tally.entity.get("patterns") or ()) > 1 else tally.short
                    ref = f"({mean:.2f} ± {sd:.2f}: {_adc_sources(spec)})"
                    if abs(reading.adc - mean) <= params["fit_z"] * sd:
                        adc_reason = (f"ADC {reading.adc:.2f} fits {name} {ref}", True)
                    else:
                        adc_reason = (f"ADC {reading.adc:.2f} argues against {name} {ref}", False)
            good = [key for key in observed if observed[key] in pattern.get(key, ())]
            log += len(good) * log_fit + (len(observed) - len(good)) * log_contra
            if best is None or log > best[0]:
                best = (log, pattern, adc_reason, good)
        chosen[tally.key] = best
    full = [tally.short for tally in tallies if observed and len(chosen[tally.key][3]) == len(observed)]
    pattern_words = ", ".join(words[key] for key in observed)
    name = _pattern_name(observed, params.section)
    for tally in tallies:
        log, pattern, adc_reason, good = chosen[tally.key]
        tally.add(log, None, True)
        if adc_reason:
            tally.add(0.0, adc_reason[0], adc_reason[1])
        if not observed:
            continue
        many = len(tally.entity.get("patterns") or ()) > 1
        who = f"{tally.short} ({pattern['name']})" if many else tally.short
        if len(good) == len(observed):
            if len(full) > 1:
                tally.add(0.0, f"{pattern_words}: {name + ' ' if name else 'pattern '}shared by {_join(full)}", True)
            else:
                tally.add(0.0, f"{pattern_words}: {name + ', ' if name else ''}fits {who} only", True)
            continue
        if good:
            verb = "fit" if len(good) > 1 else "fits"
            tally.add(0.0, f"{_join([words[k] for k in good])} {verb} {who}", True)
        for key in observed:
            if key not in good:
                expected = "/".join(pattern.get(key, ())) or "?"
                tally.add(0.0, f"{words[key]} argues against {who} (expects {DISPLAY[key]} {expected})", False)


def _no_dwi(reading: _Reading, tallies, params) -> None:
    if not reading.no_dwi:
        return
    log_fit, log_contra = math.log(params["sign_fit"]), math.log(params["sign_contradict"])
    said = f"no DWI signal in {reading.no_dwi_fraction:.2f} of the ROI's voxels (sclerosis?)"
    for tally in tallies:
        if tally.entity.get("no_dwi_signal"):
            tally.add(log_fit, f"{said} fits {tally.short}", True)
        else:
            tally.add(log_contra, f"{said} argues against {tally.short}: see CT", False)


def _ct(reading: _Reading, tallies, params, criteria) -> None:
    hu = reading.hu
    if hu is None:
        return
    normal = criteria["normal_marrow"]["ct_hu"]
    n_mean, n_sd = float(normal["mean"]), float(normal["sd"])
    sclerotic = params.ct_sclerotic_min_hu
    fit_z = params["fit_z"]
    if hu >= sclerotic:
        described = f"CT {hu:.0f} HU sclerotic (≥ {sclerotic:.0f})"
    elif abs(hu - n_mean) <= fit_z * n_sd:
        described = f"CT {hu:.0f} HU near normal marrow ({n_mean:.0f} ± {n_sd:.0f})"
    elif hu < n_mean:
        described = f"CT {hu:.0f} HU below normal marrow, not sclerotic"
    else:
        described = f"CT {hu:.0f} HU above normal marrow, below sclerotic (≥ {sclerotic:.0f})"
    for tally in tallies:
        spec = tally.entity.get("ct_hu")
        if isinstance(spec, dict) and spec.get("mean") is not None:
            mean, sd = float(spec["mean"]), float(spec["sd"])
            cite = _cite(spec.get("source"))
            ref = f"({mean:.0f} ± {sd:.0f} HU{', ' + cite if cite else ''})"
            if abs(hu - mean) <= fit_z * sd:
                tally.add(_log_normal(hu, mean, sd), f"{described}: fits {tally.short} {ref}", True)
            else:
                tally.add(_log_normal(hu, mean, sd), f"{described} argues against {tally.short} {ref}", False)
        else:
            # normal-marrow Gaussian, flat below its mean: only attenuation above normal counts
            z = max(0.0, (hu - n_mean) / n_sd)
            log = _log_normal(n_mean + z * n_sd, n_mean, n_sd)
            if z <= fit_z:
                tally.add(log, f"{described}: fits {tally.short} (not sclerotic)", True)
            else:
                tally.add(
                    log,
                    f"{described} argues against {tally.short} "
                    f"(expects normal-marrow attenuation {n_mean:.0f} ± {n_sd:.0f} HU)",
                    False,
                )


def _spread(findings, tallies, params) -> None:
    levels = findings.levels_involved
    if levels is not None:
        levels = _number(levels, "levels involved")
        if levels < 1 or levels != int(levels):
            raise InputError(f"levels involved must be a whole number >= 1, not {findings.levels_involved}")
        levels = int(levels)
    disc = findings.disc_involved
    if disc is not None:
        if isinstance(disc, str) or disc not in (True, False):
            raise InputError(f"disc involved must be true or false, not {disc!r}")
        disc = bool(disc)
    log_fit, log_contra = math.log(params["spread_fit"]), math.log(params["spread_contradict"])
    for tally in tallies:
        spread = tally.entity.get("spread")
        if not isinstance(spread, dict):
            continue
        if levels is not None and ("levels_max" in spread or "levels_min" in spread):
            if "levels_max" in spread:
                ok = levels <= int(spread["levels_max"])
                expects = f"≤ {int(spread['levels_max'])} vertebrae"
            else:
                ok = levels >= int(spread["levels_min"])
                expects = f"≥ {int(spread['levels_min'])} levels"
            said = f"{levels} level{'s' if levels != 1 else ''} involved"
            if ok:
                tally.add(log_fit, f"{said} fits {tally.short} ({expects})", True)
            else:
                tally.add(log_contra, f"{said} argues against {tally.short} (expects {expects})", False)
        if disc is not None and "disc_involved" in spread:
            expected = bool(spread["disc_involved"])
            said = "disc involved" if disc else "disc spared"
            expects = "disc destroyed" if expected else "disc relatively spared"
            if disc == expected:
                tally.add(log_fit, f"{said} fits {tally.short} ({expects})", True)
            else:
                tally.add(log_contra, f"{said} argues against {tally.short} (expects {expects})", False)


def _pairs(findings, tallies, params) -> None:
    by_key = {tally.key: tally for tally in tallies}
    for pair in params.section.get("pairs", ()):
        keys = [key for key in pair.get("entities", ()) if key in by_key]
        if len(keys) != 2:
            continue
        if any(getattr(findings, name, None) is not None for name in pair.get("separated_by", ())):
            continue
        note = pair.get("note", "not separable from {other} by these inputs")
        for key, other in ((keys[0], keys[1]), (keys[1], keys[0])):
            by_key[key].add(0.0, note.format(other=by_key[other].short), False)


def _exclusion(tallies, params) -> None:
    penalty = params["exclusion_penalty"]
    for tally in tallies:
        if tally.entity.get("exclusion_diagnosis"):
            tally.add(
                math.log(penalty),
                "diagnosis of exclusion: weighed down until every other marrow lesion is ruled out",
                False,
            )


def _extras(findings, tallies, params, criteria) -> None:
    extras = criteria.get("extra_criteria") or {}

    def given(spec: dict, name: str) -> bool:
        inputs = (spec.get("ratio_input"), spec.get("input", name))
        return any(key and getattr(findings, key, None) is not None for key in inputs)

    for name, spec in extras.items():
        if name.startswith("_") or not isinstance(spec, dict) or name in params.disable or not given(spec, name):
            continue
        # Two readings of one sign (T1 against disc and against muscle) are not independent
        # evidence: the preferred one stands alone when both are measured.
        preferred = spec.get("superseded_by")
        if preferred and preferred not in params.disable and given(extras[preferred], preferred):
            continue
        cite = _cite(spec.get("source"))
        if not spec.get("verified", False):
            cite = f"{cite}, unverified" if cite else "unverified"
        attribute = spec.get("input", name)
        label = spec.get("label", attribute)
        ratio = getattr(findings, spec["ratio_input"], None) if spec.get("ratio_input") else None
        if "counts" in spec and ratio is not None:
            _extra_graded(_number(ratio, spec["ratio_input"], positive=True), label, cite, spec, tallies)
        elif "counts" in spec:
            _extra_categorical(getattr(findings, attribute), attribute, label, cite, spec, tallies)
        else:
            _extra_threshold(getattr(findings, attribute), attribute, label, cite, spec, tallies)


def _class_rates(spec: dict):
    """P(outcome | class) from a paper's counts (smoothed), the pooled rates and the entity classes."""
    counts = spec["counts"]
    smoothing = float(spec.get("smoothing", 0.0))
    kinds = sorted(set(spec["outcomes"].values()))

    def rates(numbers: dict) -> dict:
        total = sum(float(numbers.get(kind, 0)) for kind in kinds)
        return {kind: (float(numbers.get(kind, 0)) + smoothing) / (total + smoothing * len(kinds)) for kind in kinds}

    pooled = rates({kind: sum(float(c.get(kind, 0)) for c in counts.values()) for kind in kinds})
    entity_class = {key: cls for cls, members in spec.get("classes", {}).items() for key in members}
    return {cls: rates(numbers) for cls, numbers in counts.items()}, pooled, entity_class


def _extra_graded(ratio: float, label: str, cite: str, spec: dict, tallies) -> None:
    """Carroll's counts read with a measured ratio: hyperintense with a weight that rises
    smoothly through graded.hyper_ratio, iso/hypointense with the rest (not a hard bin)."""
    graded = spec.get("graded") or {}
    centre, width = float(graded.get("hyper_ratio", 1.0)), float(graded.get("width", 0.05))
    hyper = 1.0 / (1.0 + math.exp(-(ratio - centre) / width))
    by_class, pooled, entity_class = _class_rates(spec)
    words = spec.get("class_words", {})

    def blend(rates: dict) -> float:
        return hyper * rates["high"] + (1.0 - hyper) * rates["iso_or_low"]

    shown = label.replace("{sign} ", "").replace("{sign}", "")
    said = f"{shown} ratio {ratio:.2f} ({'above' if hyper >= 0.5 else 'not above'}, graded about {centre:.2f})"
    base = blend(pooled)
    for tally in tallies:
        cls = entity_class.get(tally.key)
        if cls is None or cls not in by_class:
            tally.add(math.log(base), None, True)
            continue
        p = blend(by_class[cls])
        counts = spec["counts"][cls]
        why = (f"{words.get(cls, cls)}: {counts.get('high', 0):g} hyperintense, "
               f"{counts.get('iso_or_low', 0):g} iso/hypointense ({cite})")
        if p >= base:
            tally.add(math.log(p), f"{said} fits {tally.short}: {why}", True)
        else:
            tally.add(math.log(p), f"{said} argues against {tally.short}: {why}", False)


def _extra_categorical(raw, attribute, label, cite, spec, tallies) -> None:
    sign = _sign(raw, attribute)
    if sign is None:
        return
    outcomes = spec["outcomes"]
    if sign not in outcomes:
        raise InputError(f"{attribute} '{raw}' is not one of {', '.join(outcomes)}")
    outcome = outcomes[sign]
    by_class, pooled, entity_class = _class_rates(spec)
    counts = spec["counts"]
    in_outcome = sum(float(c.get(outcome, 0)) for c in counts.values())
    words = spec.get("class_words", {})
    word = "iso/low" if outcome == "iso_or_low" else sign
    said = label.format(sign=word) if "{sign}" in label else f"{label}: {word}"
    for tally in tallies:
        cls = entity_class.get(tally.key)
        if cls is None or cls not in by_class:
            tally.add(math.log(pooled[outcome]), None, True)
            continue
        p = by_class[cls][outcome]
        why = f"{words.get(cls, cls)} in {counts[cls].get(outcome, 0):g}/{in_outcome:g} ({cite})"
        if p >= pooled[outcome]:
            tally.add(math.log(p), f"{said} fits {tally.short}: {why}", True)
        else:
            tally.add(math.log(p), f"{said} argues against {tally.short}: {why}", False)


def _extra_threshold(raw, attribute, label, cite, spec, tallies) -> None:
    value = _number(raw, attribute)
    if attribute == "chemical_shift_ratio" and value < 0:
        raise InputError(f"chemical-shift ratio {value} must not be negative")
    sensitivity, specificity = float(spec["sensitivity"]), float(spec["specificity"])
    unit = spec.get("unit", "")
    fmt = "{:.1f} %" if unit == "%" else "{:.2f}"
    cut_fmt = "{:.2f} %" if unit == "%" else "{:.2f}"
    if "malignant_above" in spec:
        cut = float(spec["malignant_above"])
        positive = value > cut
        rule = f"> {cut_fmt.format(cut)}" if positive else f"≤ {cut_fmt.format(cut)}"
    else:
        cut = float(spec["malignant_below"])
        positive = value < cut
        rule = f"< {cut_fmt.format(cut)}" if positive else f"≥ {cut_fmt.format(cut)}"
    suggests = "malignant" if positive else "benign"
    said = f"{label} {fmt.format(value)}"
    why = f"{rule} suggests {suggests} ({cite})"
    for tally in tallies:
        malignant = bool(tally.entity.get("malignant"))
        if malignant:
            p = sensitivity if positive else 1.0 - sensitivity
        else:
            p = (1.0 - specificity) if positive else specificity
        p = max(p, 1e-12)  # a 100 % accuracy must not zero an entity for good
        verb = "fits" if malignant == positive else "argues against"
        tally.add(math.log(p), f"{said} {verb} {tally.short}: {why}", malignant == positive)


# ---------------------------------------------------------------------------------------------
# the signs that come first, the words and the reading


def _first_signs(reading: _Reading, tallies, params):
    """The overriding signs in a radiologist's order: (sign sentences, entities put first,
    the best word left to every other entity)."""
    signs, promoted, cap = [], set(), None
    by_key = {tally.key: tally for tally in tallies}
    if reading.fat and reading.signs.get("t1") != "low":
        promoted = {tally.key for tally in tallies if tally.entity.get("fat_containing")}
        names = _join([by_key[key].short for key in ENTITY_KEYS if key in promoted])
        signs.append(f"Fat-containing lesion ({reading.fat}): benign whatever its ADC; favours {names}.")
        cap = "less likely"
        for tally in tallies:
            if tally.key in promoted:
                tally.fits.insert(0, f"fat-containing lesion ({reading.fat}) fits {tally.short}")
            else:
                tally.contradicts.insert(0, f"fat-containing lesion ({reading.fat}): {tally.short} contains no fat")
    elif reading.fat:
        promoted = {tally.key for tally in tallies if not tally.entity.get("malignant")}
        signs.append(f"Fat preserved in a T1-low lesion ({reading.fat}): benign marrow (oedema, red marrow) "
                     "favoured over infiltration, which replaces the fat.")
        cap = "possible"
        for tally in tallies:
            if tally.key not in promoted:
                tally.contradicts.insert(0, f"fat preserved ({reading.fat}) argues against {tally.short} (infiltration replaces fat)")
    elif reading.hu is not None and reading.hu >= params.bone_island_min_hu:
        promoted = {"bone_island"}
        signs.append(f"CT {reading.hu:.0f} HU at or above {params.bone_island_min_hu:.0f} HU: favours a bone island "
                     f"({_cite('ulano2016')}); a blastic metastasis is less likely but CT thresholds are less "
                     f"reliable for other sclerotic lesions ({_cite('azar2021')}).")
        cap = "possible"
        by_key["bone_island"].fits.insert(0, f"CT {reading.hu:.0f} HU ≥ {params.bone_island_min_hu:.0f} HU ({_cite('ulano2016')})")
    elif (reading.hu is not None and reading.hu >= params.ct_sclerotic_min_hu
          and reading.signs.get("t1") == "low" and reading.signs.get("t2") == "low"):
        signs.append(f"Sclerotic lesion, CT {reading.hu:.0f} HU below {params.bone_island_min_hu:.0f} HU with T1 and T2 low: "
                     f"favours a blastic metastasis over a bone island ({_cite('ulano2016')}).")
    low, high = params.bmax_range
    if reading.bmax is not None and reading.adc is not None and not low <= reading.bmax <= high:
        signs.append(f"ADC from b up to {reading.bmax:g} s/mm²: the published entity values were measured at "
                     f"maximum b {low:g}-{high:g}; read the words with care.")
    if reading.no_dwi:
        signs.append(f"No DWI signal in {reading.no_dwi_fraction:.2f} of the voxels (sclerosis?): ADC not used, see CT.")
    if reading.heterogeneous and reading.adc_restricted is not None and not reading.no_dwi:
        mean = f", not the mean {reading.adc_mean:.2f}" if reading.adc_mean is not None else ""
        signs.append(f"Heterogeneous ROI (restricted and free components: necrosis, fluid or disc): weighed on the "
                     f"restricted component's ADC {reading.adc_restricted:.2f}{mean}; never benign on its mean.")
    elif reading.heterogeneous and not reading.no_dwi:
        signs.append("Heterogeneous ROI without a restricted-component ADC: its mean may be pulled up by necrosis, "
                     "fluid or disc; read with care.")
    return signs, promoted, cap


def _word(ratio: float, params) -> str:
    if ratio >= params["favoured_ratio"]:
        return WORDS[0]
    return WORDS[1] if ratio >= params["possible_ratio"] else WORDS[2]


def _capped(word: str, cap: Optional[str]) -> str:
    if cap is None:
        return word
    return WORDS[max(WORDS.index(word), WORDS.index(cap))]


def _exclusions(reading: _Reading, params) -> tuple:
    """For a diagnosis of exclusion: what the measurements argue against, what they leave open."""
    excluded, open_ = [], [
        "myeloma or another low-burden diffuse infiltrate: a normal ADC does not exclude it "
        f"({_cite('koutoulidis2017')}: myeloma with a normal MR pattern 0.36 ± 0.11)"
    ]
    if reading.adc_mean is None:
        open_.append("infiltration: no ADC measured")
    elif reading.tier == "marrow":
        excluded.append(f"a diffusion-restricting cellular lesion (metastasis, focal myeloma): ADC {reading.adc_mean:.2f} "
                        "within the normal-marrow range")
    elif reading.tier is None:
        open_.append(f"infiltration: ADC {reading.adc_mean:.2f}, tier not known")
    else:
        open_.append(f"infiltration: ADC {reading.adc_mean:.2f} is in the {reading.tier} tier, above the normal-marrow range")
    if reading.fat is None and reading.signs.get("t1") in ("low", "iso"):
        excluded.append("a fat-containing lesion (haemangioma, focal fat): T1 not above normal marrow")
    if reading.hu is None:
        open_.append("a sclerotic lesion (bone island, blastic metastasis): no CT given")
    elif reading.hu < params.ct_sclerotic_min_hu:
        excluded.append(f"a sclerotic lesion (bone island, blastic metastasis): CT {reading.hu:.0f} HU not sclerotic")
    else:
        open_.append(f"a sclerotic lesion: CT {reading.hu:.0f} HU is sclerotic")
    carroll = _cite("carroll1997")
    if reading.t1_above_disc:
        excluded.append(f"infiltration by the disc standard: T1 above disc, as in 12/12 red-marrow foci and 0/40 "
                        f"infiltrative ones ({carroll})")
    elif reading.t1_above_disc is False:
        open_.append(f"infiltration: T1 not above disc, as in 40/41 infiltrative foci ({carroll})")
    else:
        open_.append(f"infiltration: T1 against disc not measured (draw a disc ROI; {carroll})")
    return excluded, open_


def _headline(reading: _Reading, signs: list, candidates: list, promoted: set) -> str:
    parts = list(signs)
    if reading.tier == "marrow" and not promoted:
        start = "ADC within the normal-marrow range, no diffusion evidence of infiltration; "
        reconversion = next(c for c in candidates if c.entity == "red_marrow_reconversion")
        if reading.t1_above_disc and reconversion.likelihood != WORDS[0]:
            parts.append(start + f"T1 above disc favours red marrow ({_cite('carroll1997')}), but the other findings "
                         f"favour {candidates[0].label}; myeloma not excluded.")
        elif reading.t1_above_disc:
            parts.append(start + "favours reconverted marrow; myeloma not excluded. What would settle it: "
                         + ", ".join(TO_SETTLE) + ".")
        elif reading.t1_above_disc is False:
            parts.append(start + f"T1 not above disc, so infiltration (myeloma) is not excluded ({_cite('carroll1997')}).")
        else:
            parts.append(start + "T1 against disc not measured: reconverted marrow and a low-burden infiltrate "
                         "(myeloma) are not told apart.")
    groups = {word: [c.label for c in candidates if c.likelihood == word] for word in WORDS}
    words = []
    if groups[WORDS[0]]:
        words.append("Favoured: " + ", ".join(groups[WORDS[0]]) + ".")
    if groups[WORDS[1]]:
        words.append("Possible: " + ", ".join(groups[WORDS[1]]) + ".")
    if groups[WORDS[2]]:
        words.append(f"Less likely: the other {len(groups[WORDS[2]])}.")
    parts.append(" ".join(words))
    parts.append("Ranking of the measured findings only, not a diagnosis.")
    return " ".join(part for part in parts if part)


# ---------------------------------------------------------------------------------------------
# the API


def rank_differential(findings: LesionFindings, criteria: dict, options: Optional[dict] = None) -> Differential:
    """All entities as Candidates, most likely first, each with its word and reasons.

    `criteria` is a dict as returned by criteria.load_criteria(); `options` overrides the
    factors of its "differential" section by name (see the module docstring). Entities put
    first by an overriding sign (fat, density) lead; the rest follow by weight; ties keep the
    criteria's entity order.
    """
    params = _Params(criteria, options)
    entities = criteria["entities"]
    tallies = [_Tally(key, entities[key]) for key in ENTITY_KEYS]
    reading = _Reading(findings, params, criteria)

    signs, promoted, cap = _first_signs(reading, tallies, params)
    _patterns(reading, tallies, params)
    _no_dwi(reading, tallies, params)
    _ct(reading, tallies, params, criteria)
    _spread(findings, tallies, params)
    _extras(findings, tallies, params, criteria)
    _pairs(findings, tallies, params)
    _exclusion(tallies, params)

    top = max(tally.log for tally in tallies)
    weights = [math.exp(tally.log - top) for tally in tallies]
    total = sum(weights)
    lead = max((t.log for t in tallies if t.key in promoted), default=top)
    candidates = []
    for tally, weight in zip(tallies, weights):
        if tally.key in promoted:
            word = _word(math.exp(tally.log - lead), params)
        else:
            word = _capped(_word(math.exp(tally.log - top), params), cap if promoted else None)
        candidate = Candidate(entity=tally.key, label=tally.entity.get("label", tally.key), score=weight / total,
                              likelihood=word, fits=tally.fits, contradicts=tally.contradicts)
        if tally.entity.get("exclusion_diagnosis"):
            candidate.excluded, candidate.not_excluded = _exclusions(reading, params)
            candidate.to_settle = list(TO_SETTLE)
        if tally.key == "myeloma_leukemia" and reading.tier == "marrow" and not promoted:
            # a normal ADC is what myeloma with a normal MR pattern shows: never ruled out on it
            candidate.likelihood = WORDS[1] if word == WORDS[2] else word
            candidate.fits.append(f"a normal-marrow ADC does not exclude myeloma ({_cite('koutoulidis2017')}: "
                                  "normal MR pattern 0.36 ± 0.11)")
        candidates.append(candidate)
    order = {key: index for index, key in enumerate(ENTITY_KEYS)}
    candidates.sort(key=lambda c: (c.entity not in promoted, -c.score, order[c.entity]))
    return Differential(candidates, _headline(reading, signs, candidates, promoted), signs)


def likelihood_word(candidate) -> str:
    """The word shown for a candidate (a Candidate or its dict): favoured, possible or less likely."""
    word = candidate.get("likelihood") if isinstance(candidate, dict) else getattr(candidate, "likelihood", None)
    return word if word in WORDS else "n/a"


def summarize(candidates, top: int = 3) -> str:
    """One line: the overriding signs, the tier's reading and the entities in words."""
    headline = getattr(candidates, "headline", "")
    if headline:
        return headline
    shown = list(candidates)[: max(1, int(top))]
    if not shown:
        return "No differential: no candidates. Ranking only, not a diagnosis."
    parts = "; ".join(f"{c.label} ({likelihood_word(c)})" for c in shown)
    return f"Differential: {parts}. Ranking of the measured findings only, not a diagnosis."
