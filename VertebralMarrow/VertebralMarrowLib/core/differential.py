"""Ranked differential diagnosis of one vertebral marrow lesion, with the reasons for each rank.

Research and decision support only: the ranking supports, and never replaces, the
radiologist's judgement. It orders the eight entities of the clinical reference by how well
the *measured* findings fit each; it does not know the history, the morphology, the
enhancement or the rest of the skeleton, and a score is a relative likelihood among these
eight entities, not a probability of disease.

Method (numeric, no MRML; every number comes from the criteria dict, `criteria.load_criteria()`):

score(entity) is proportional to the product of

1. ADC: the Gaussian density N(mean, SD) of the entity's ADC (criteria entities.*.adc:
   Kaur 2020 ADC table; myeloma from Wang 2021, SD = IQR / 1.349; reconversion = normal marrow).
2. Signal pattern: each observed T1 / T2 / FS-T2 (STIR) sign ('low' | 'iso' | 'high',
   relative to normal marrow) multiplies by differential.sign_fit when it is among the
   entity's expected signs (entities.*.t1/t2/fs) and by differential.sign_contradict when it
   is not. A sequence not measured contributes nothing.
3. CT (when ct_mean_hu is given): an entity with its own ct_hu (osteoblastic metastasis,
   Ulano 2016: 654 +/- 176 HU) gets that Gaussian; every other entity gets the normal-marrow
   Gaussian (normal_marrow.ct_hu, Jang 2019), flat below its mean so that lytic or fatty
   lesions are not penalised for low attenuation. A near-normal CT therefore counts against
   osteoblastic metastasis and a sclerotic CT (>= ct.sclerotic_min_hu) for it.
4. Diagnosis of exclusion: red-marrow reconversion (entities with exclusion_diagnosis) is
   multiplied by differential.exclusion_penalty (clinical reference: made only once every
   other marrow lesion is ruled out), and its reasons say so. It can still rank first when
   its pattern (T1, T2, FS low; ADC near normal marrow; normal CT) fits and the others do not.
5. Spread (user-given levels_involved / disc_involved): entities with a 'spread' pattern
   (pyogenic: <= 2 vertebrae, disc destroyed; tuberculous: >= 3 levels, disc relatively
   spared) multiply by differential.spread_fit or spread_contradict. Without these inputs
   pyogenic and tuberculous spondylitis stay a near-equal pair, and their reasons say so.
6. Extra criteria (criteria extra_criteria), each only when its input is given:
   T1 internal standard vs muscle and vs disc (Carroll 1997: likelihoods from the abstract's
   counts, infiltrative vs red marrow), chemical-shift ratio > 0.80 suggests malignant
   (Zajick 2005; cut-off and accuracy NOT verified against the paper), Dixon PDFF < 6.40 %
   suggests malignant (Schmeel 2018, AUC 0.97). Each multiplies every entity by
   P(observation | entity's class).

Scores are normalised to sum to 1 over the eight entities (uniform prior: no prevalence is
assumed). Every factor can be overridden with `options={name: value}` (names as in the
criteria's "differential" section, plus "ct_sclerotic_min_hu" and "disable": a list of
extra-criterion names to ignore).
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
    "rank_differential",
    "summarize",
    "differential_keys",
    "DISCLAIMER",
]

SIGNS = ("low", "iso", "high")
# (criteria key, LesionFindings attribute, words shown to the reader)
SEQUENCES = (("t1", "t1_signal", "T1"), ("t2", "t2_signal", "T2"), ("fs", "fs_signal", "FS-T2"))
FACTOR_NAMES = (
    "sign_fit",
    "sign_contradict",
    "fit_z",
    "exclusion_penalty",
    "spread_fit",
    "spread_contradict",
)
OTHER_OPTIONS = ("ct_sclerotic_min_hu", "disable")


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
    # Filled by analysis.py from the tier reading (core/tiers.py); None when not measured.
    adc_tier: Optional[str] = None  # marrow | malignant | indeterminate | benign
    adc_restricted: Optional[float] = None  # 10^-3 mm^2/s, restricted component of a heterogeneous ROI
    heterogeneous: Optional[bool] = None
    fat_sign: Optional[str] = None  # the reason a lesion is fat-containing
    t1_disc_ratio: Optional[float] = None  # lesion T1 / disc T1
    t1_muscle_ratio: Optional[float] = None  # lesion T1 / muscle T1
    no_dwi_signal_fraction: Optional[float] = None  # 0-1
    bvalues: Optional[list] = None  # s/mm^2 the ADC came from; None: unknown


@dataclass
class Candidate:
    entity: str  # one of criteria.ENTITY_KEYS
    label: str
    score: float  # relative likelihood; the candidates' scores sum to 1
    fits: list = field(default_factory=list)  # reasons that support it
    contradicts: list = field(default_factory=list)  # reasons against it

    def as_dict(self) -> dict:
        return {
            "entity": self.entity,
            "label": self.label,
            "score": self.score,
            "fits": list(self.fits),
            "contradicts": list(self.contradicts),
        }


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
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} '{value}' is not a number") from None
    if not math.isfinite(number):
        raise InputError(f"{name} is {value}: not a usable number")
    if positive and number <= 0:
        raise InputError(f"{name} {number} must be positive")
    return number


def _log_gauss(x: float, mean: float, sd: float) -> float:
    """log of the normal density without its constant (the same for every entity)."""
    z = (x - mean) / sd
    return -0.5 * z * z - math.log(sd)


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
        sclerotic = options.get("ct_sclerotic_min_hu")
        if sclerotic is None:
            sclerotic = criteria["ct"]["sclerotic_min_hu"]
        self.ct_sclerotic_min_hu = _number(sclerotic, "ct_sclerotic_min_hu")
        self.disable = set(options.get("disable") or ())
        self.section = section

    def __getitem__(self, name: str) -> float:
        return self.values[name]


class _Tally:
    """Log-score and reasons of one entity."""

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


# ---------------------------------------------------------------------------------------------
# the evidence, one kind at a time


def _adc(findings, tallies, params, criteria) -> None:
    adc = _number(findings.adc_mean, "ADC mean", positive=True)
    if adc is None:
        return
    fit_z = params["fit_z"]
    for tally in tallies:
        spec = tally.entity["adc"]
        mean, sd = float(spec["mean"]), float(spec["sd"])
        z = (adc - mean) / sd
        cite = _cite(spec.get("source"))
        ref = f"({mean:.2f} ± {sd:.2f}{', ' + cite if cite else ''})"
        if abs(z) <= fit_z:
            reason, fits = f"ADC {adc:.2f} fits {tally.short} {ref}", True
        else:
            reason, fits = f"ADC {adc:.2f} argues against {tally.short} {ref}", False
        tally.add(_log_gauss(adc, mean, sd), reason, fits)


def _pattern_name(observed: dict, section: dict) -> str:
    for entry in section.get("pattern_names", ()):
        when = entry.get("when", {})
        if when and all(observed.get(seq) == sign for seq, sign in when.items()):
            return entry.get("name", "")
    return ""


def _signals(findings, tallies, params) -> None:
    observed = {}  # criteria key -> sign
    words = {}
    for key, attribute, display in SEQUENCES:
        sign = _sign(getattr(findings, attribute), attribute)
        if sign is not None:
            observed[key] = sign
            words[key] = f"{display} {sign}"
    if not observed:
        return
    log_fit, log_contra = math.log(params["sign_fit"]), math.log(params["sign_contradict"])
    pattern = ", ".join(words[key] for key in observed)
    name = _pattern_name(observed, params.section)

    def fitting(tally):
        return [key for key in observed if observed[key] in tally.entity.get(key, ())]

    full = [tally.short for tally in tallies if len(fitting(tally)) == len(observed)]
    for tally in tallies:
        good = fitting(tally)
        if len(good) == len(observed):
            if len(full) > 1:
                reason = f"{pattern}: {name + ' ' if name else 'pattern '}shared by {_join(full)}"
            else:
                reason = f"{pattern}: {name + ', ' if name else ''}fits {tally.short} only"
            tally.add(len(good) * log_fit, reason, True)
            continue
        if good:
            verb = "fit" if len(good) > 1 else "fits"
            tally.add(len(good) * log_fit, f"{_join([words[k] for k in good])} {verb} {tally.short}", True)
        for key in observed:
            if key in good:
                continue
            display = dict((k, d) for k, _, d in SEQUENCES)[key]
            expected = "/".join(tally.entity.get(key, ())) or "?"
            tally.add(
                log_contra,
                f"{words[key]} argues against {tally.short} (expects {display} {expected})",
                False,
            )


def _ct(findings, tallies, params, criteria) -> None:
    hu = _number(findings.ct_mean_hu, "CT mean attenuation (HU)")
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
            z = (hu - mean) / sd
            cite = _cite(spec.get("source"))
            ref = f"({mean:.0f} ± {sd:.0f} HU{', ' + cite if cite else ''})"
            if abs(z) <= fit_z:
                tally.add(_log_gauss(hu, mean, sd), f"{described}: fits {tally.short} {ref}", True)
            else:
                tally.add(_log_gauss(hu, mean, sd), f"{described} argues against {tally.short} {ref}", False)
        else:
            # normal-marrow Gaussian, flat below its mean: only attenuation above normal counts
            z = max(0.0, (hu - n_mean) / n_sd)
            log = -0.5 * z * z - math.log(n_sd)
            if z <= fit_z:
                tally.add(log, f"{described}: fits {tally.short} (not sclerotic)", True)
            else:
                tally.add(
                    log,
                    f"{described} argues against {tally.short} "
                    f"(expects normal-marrow attenuation {n_mean:.0f} ± {n_sd:.0f} HU)",
                    False,
                )


def _spread(findings, tallies, params, criteria) -> None:
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
                f"diagnosis of exclusion: score × {penalty:g} until every other marrow lesion is ruled out",
                False,
            )


def _extras(findings, tallies, params, criteria) -> None:
    extras = criteria.get("extra_criteria") or {}
    for name, spec in extras.items():
        if name.startswith("_") or not isinstance(spec, dict) or name in params.disable:
            continue
        attribute = spec.get("input", name)
        raw = getattr(findings, attribute, None)
        if raw is None:
            continue
        # Two readings of one sign (T1 against disc and against muscle) are not independent
        # evidence: the preferred one stands alone when both are measured.
        preferred = spec.get("superseded_by")
        if preferred and preferred not in params.disable and getattr(findings, extras[preferred].get("input", preferred), None) is not None:
            continue
        cite = _cite(spec.get("source"))
        if not spec.get("verified", False):
            cite = f"{cite}, unverified" if cite else "unverified"
        label = spec.get("label", attribute)
        if "counts" in spec:
            _extra_categorical(raw, attribute, label, cite, spec, tallies)
        else:
            _extra_threshold(raw, attribute, label, cite, spec, tallies)


def _extra_categorical(raw, attribute, label, cite, spec, tallies) -> None:
    sign = _sign(raw, attribute)
    if sign is None:
        return
    outcomes = spec["outcomes"]
    if sign not in outcomes:
        raise InputError(f"{attribute} '{raw}' is not one of {', '.join(outcomes)}")
    outcome = outcomes[sign]
    counts = spec["counts"]
    smoothing = float(spec.get("smoothing", 0.0))
    kinds = sorted({value for value in outcomes.values()})
    words = spec.get("class_words", {})

    def rate(numbers: dict) -> float:
        total = sum(float(numbers.get(kind, 0)) for kind in kinds)
        return (float(numbers.get(outcome, 0)) + smoothing) / (total + smoothing * len(kinds))

    pooled_counts = {kind: sum(float(c.get(kind, 0)) for c in counts.values()) for kind in kinds}
    pooled = rate(pooled_counts)
    in_outcome = pooled_counts[outcome]
    entity_class = {}
    for cls, members in spec.get("classes", {}).items():
        for key in members:
            entity_class[key] = cls
    word = "iso/low" if outcome == "iso_or_low" else sign
    said = label.format(sign=word) if "{sign}" in label else f"{label}: {word}"
    for tally in tallies:
        cls = entity_class.get(tally.key)
        if cls is None or cls not in counts:
            tally.add(math.log(pooled), None, True)
            continue
        p = rate(counts[cls])
        k = counts[cls].get(outcome, 0)
        why = f"{words.get(cls, cls)} in {k:g}/{in_outcome:g} ({cite})"
        if p >= pooled:
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
# the API


def rank_differential(findings: LesionFindings, criteria: dict, options: Optional[dict] = None) -> list:
    """All eight entities as Candidates, most likely first, scores summing to 1.

    `criteria` is a dict as returned by criteria.load_criteria(); `options` overrides the
    factors of its "differential" section by name (see the module docstring).
    Ties keep the criteria's entity order.
    """
    params = _Params(criteria, options)
    entities = criteria["entities"]
    tallies = [_Tally(key, entities[key]) for key in ENTITY_KEYS]

    _adc(findings, tallies, params, criteria)
    _signals(findings, tallies, params)
    _ct(findings, tallies, params, criteria)
    _spread(findings, tallies, params, criteria)
    _extras(findings, tallies, params, criteria)
    _pairs(findings, tallies, params)
    _exclusion(tallies, params)

    top = max(tally.log for tally in tallies)
    weights = [math.exp(tally.log - top) for tally in tallies]
    total = sum(weights)
    candidates = [
        Candidate(
            entity=tally.key,
            label=tally.entity.get("label", tally.key),
            score=weight / total,
            fits=tally.fits,
            contradicts=tally.contradicts,
        )
        for tally, weight in zip(tallies, weights)
    ]
    order = {key: index for index, key in enumerate(ENTITY_KEYS)}
    candidates.sort(key=lambda c: (-c.score, order[c.entity]))
    return candidates


def likelihood_text(score) -> str:
    """Rounded share; never prints 0 % or 100 % (a ranking claims no certainty)."""
    if not is_number(score):
        return "n/a"
    percent = 100.0 * score
    if percent < 0.5:
        return "<1 %"
    if percent > 99.5:
        return ">99 %"
    return f"{percent:.0f} %"


def is_number(value) -> bool:
    """A finite int or float (not a bool): what the outputs print as a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(candidates, top: int = 3) -> str:
    """One line: the first `top` entities with their relative likelihood, and what it is not."""
    shown = list(candidates)[: max(1, int(top))]
    if not shown:
        return "No differential: no candidates. Ranking only, not a diagnosis."
    parts = "; ".join(f"{c.label} {likelihood_text(c.score)}" for c in shown)
    return f"Differential (relative likelihood): {parts}. Ranking of the measured findings only, not a diagnosis."


def differential_keys(candidates) -> str:
    """The results.csv 'differential' column: entity keys, most likely first, ';'-separated."""
    return ";".join(c.entity for c in candidates)
