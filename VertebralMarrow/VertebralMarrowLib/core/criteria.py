"""The clinical criteria: one data file (criteria.json) with a citation for every number.

`load_criteria()` returns a fresh dict each call, so callers can override values without
touching the file or each other; `Options` carries the user's overrides of the few numbers
the analysis takes directly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ..errors import InputError

CRITERIA_PATH = Path(__file__).with_name("criteria.json")

ENTITY_KEYS = (
    "hemangioma",
    "benign_compression_fracture",
    "metastasis_lytic",
    "metastasis_blastic",
    "pyogenic_spondylitis",
    "tuberculous_spondylitis",
    "myeloma_leukemia",
    "red_marrow_reconversion",
    "bone_island",
    "focal_fat",
)


def load_criteria(path: Optional[Path] = None) -> dict:
    """The criteria as a new dict, the caller's to change (each file is read and checked once
    per process)."""
    return copy.deepcopy(_checked_criteria(str(Path(path) if path else CRITERIA_PATH)))


@lru_cache(maxsize=None)
def _checked_criteria(source: str) -> dict:
    """The criteria of a file, read and checked: shared, so never to be changed."""
    try:
        criteria = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read criteria file {source}: {exc}") from None
    check_criteria(criteria, f"criteria file {source}")
    return criteria


SIGNS = ("low", "iso", "high")


def check_criteria(criteria, where: str) -> None:
    """Every field the analysis reads is there, of its type and in its range; the message
    names the field by its path (e.g. entities.hemangioma.adc.sd)."""
    if not isinstance(criteria, dict):
        raise InputError(f"{where} must hold a JSON object ({{...}}, as criteria.json does), not a {type(criteria).__name__}")

    def get(path: str, kind=dict):
        value = criteria
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise InputError(f"{where} lacks the field '{path}'")
            value = value[part]
        if kind is not None and not isinstance(value, kind):
            raise InputError(f"{where}: field '{path}' must be a {kind.__name__}, got {value!r}")
        return value

    def number(path: str, low=None, high=None, low_open=False, integer=False):
        value = get(path, None)
        checked_number(value, f"{where}: field '{path}'", low, high, low_open, integer)

    get("references")
    number("adc_cutoff.value", 0.0, None, low_open=True)
    number("indeterminate_band.value", 0.0)
    number("signal_ratio.low_below", 0.0, low_open=True)
    number("signal_ratio.high_above", 0.0, low_open=True)
    number("min_voxels.value", 1, integer=True)
    number("ct.sclerotic_min_hu")
    # the tiers and the signs read first (core/tiers.py)
    number("adc_tiers.marrow_max.value", 0.0)
    number("overriding_signs.bone_island_min_hu.value")
    number("overriding_signs.fat_t1_ratio_min.value", 0.0, low_open=True)
    number("overriding_signs.fat_fraction_min_percent.value", 0.0, 100.0)
    number("overriding_signs.chemical_shift_drop_below.value", 0.0, low_open=True)
    number("overriding_signs.no_dwi_signal.b0_below_reference_fraction", 0.0, 1.0)
    number("small_roi.supersample", 1, integer=True)
    for path in ("normal_marrow.adc", "normal_marrow.ct_hu"):
        number(path + ".mean")
        number(path + ".sd", 0.0, low_open=True)
    entities = get("entities")
    missing = [key for key in ENTITY_KEYS if key not in entities]
    if missing:
        raise InputError(f"{where} lacks entities: {', '.join(missing)}")
    for key, entity in entities.items():
        base = f"entities.{key}"
        get(base)
        number(base + ".adc.mean", 0.0, low_open=True)
        number(base + ".adc.sd", 0.0, low_open=True)
        for sequence in ("t1", "t2", "fs"):
            signs = entity.get(sequence, [])
            if not isinstance(signs, list) or any(sign not in SIGNS for sign in signs):
                raise InputError(f"{where}: field '{base}.{sequence}' must be a list of {', '.join(SIGNS)}, got {signs!r}")
        if entity.get("ct_hu") is not None:
            number(base + ".ct_hu.mean")
            number(base + ".ct_hu.sd", 0.0, low_open=True)
    get("differential")  # its factors are checked by name where the differential reads them
    extras = criteria.get("extra_criteria", {})
    if not isinstance(extras, dict):
        raise InputError(f"{where}: field 'extra_criteria' must be an object, got {extras!r}")
    for name, spec in extras.items():
        if not isinstance(spec, dict):
            continue  # "_about" and other notes
        base = f"extra_criteria.{name}"
        for field_name in ("sensitivity", "specificity"):
            if field_name in spec:
                number(f"{base}.{field_name}", 0.0, 1.0)
        for field_name in ("malignant_above", "malignant_below"):
            if field_name in spec:
                number(f"{base}.{field_name}")
        if "smoothing" in spec:
            number(f"{base}.smoothing", 0.0)
        for cls, counts in (spec.get("counts") or {}).items():
            for outcome in (counts if isinstance(counts, dict) else {}):
                number(f"{base}.counts.{cls}.{outcome}", 0.0)


def checked_number(value, name: str, low=None, high=None, low_open=False, integer=False):
    """`value` as a finite float (or int) within [low, high] (low excluded when low_open);
    otherwise an InputError naming `name` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number{_range_text(low, high, low_open)}, got {value!r}")
    if integer and value != int(value):
        raise InputError(f"{name} must be a whole number{_range_text(low, high, low_open)}, got {value!r}")
    if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
        raise InputError(f"{name} must be{_range_text(low, high, low_open)}, got {value!r}")
    return int(value) if integer else float(value)


def _range_text(low, high, low_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'above' if low_open else 'at least'} {low:g}"
    if low is None:
        return f" at most {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}]"


def citation(criteria: dict, source_key: str) -> str:
    """The full reference for a source key such as 'kaur2020'."""
    return criteria["references"].get(source_key, source_key)


@dataclass(frozen=True)
class Setting:
    """One user setting: the one place that says its name on each front door, its unit, its
    range and where its default comes from. The CLI's flags and help, the panel's parameter
    defaults and tooltips, and every message about it are made from this table."""

    name: str                       # the Options field
    label: str                      # in words, for messages and the panel
    flag: str                       # on the command line
    parameter: str                  # on the Slicer panel's parameter node
    unit: str
    help: str
    kind: type = float
    criteria_key: Optional[Tuple[str, ...]] = None   # where criteria.json holds the default (a path)
    default: object = None                           # the default when criteria.json has none
    choices: Tuple[str, ...] = ()
    low: Optional[float] = None                      # allowed range, both ends included
    high: Optional[float] = None

    def default_value(self, criteria: Optional[dict] = None):
        if self.criteria_key is None:
            return self.default
        return self.kind(self._entry(criteria)[self.criteria_key[-1]])

    def source(self, criteria: Optional[dict] = None) -> str:
        """The citation of the default, or '' for settings that are not clinical numbers."""
        if self.criteria_key is None:
            return ""
        criteria = criteria or _checked_criteria(str(CRITERIA_PATH))
        return citation(criteria, self._entry(criteria).get("source", ""))

    def _entry(self, criteria: Optional[dict]) -> dict:
        """The criteria.json entry holding the default (the path without its last key), read
        from the shared criteria: nothing here changes them."""
        entry = criteria or _checked_criteria(str(CRITERIA_PATH))
        for key in self.criteria_key[:-1]:
            entry = entry[key]
        return entry


SETTINGS: Tuple[Setting, ...] = (
    Setting("adc_cutoff", "ADC cut-off", "--cutoff", "cutoff", "10^-3 mm^2/s",
            "a lesion whose mean ADC is at or below it is malignant-range", criteria_key=("adc_cutoff", "value"),
            low=0.1, high=4.0),
    Setting("indeterminate_band", "indeterminate band", "--band", "indeterminateBand", "10^-3 mm^2/s",
            "lesions within cut-off +/- band are indeterminate (0: off)", criteria_key=("indeterminate_band", "value"),
            low=0.0, high=1.0),
    Setting("signal_low_below", "low-signal ratio", "--low-below", "signalLowBelow", "ratio",
            "a lesion / normal-marrow signal ratio below it is 'low'", criteria_key=("signal_ratio", "low_below"),
            low=0.1, high=1.0),
    Setting("signal_high_above", "high-signal ratio", "--high-above", "signalHighAbove", "ratio",
            "a lesion / normal-marrow signal ratio above it is 'high'", criteria_key=("signal_ratio", "high_above"),
            low=1.0, high=5.0),
    Setting("min_voxels", "minimum voxel count", "--min-voxels", "minVoxels", "voxels",
            "a ROI covering fewer voxels of a volume's grid is flagged", kind=int, criteria_key=("min_voxels", "value"),
            low=1, high=10000),
    Setting("ct_sclerotic_min_hu", "CT sclerotic threshold", "--ct-sclerotic-hu", "ctScleroticHu", "HU",
            "a lesion whose mean CT attenuation is at or above it is sclerotic", criteria_key=("ct", "sclerotic_min_hu"),
            low=0.0, high=3000.0),
    Setting("marrow_max", "normal-marrow range top", "--marrow-max", "marrowMax", "10^-3 mm^2/s",
            "a lesion whose mean ADC is at or below it is in the normal-marrow range, never malignant "
            "(Koutoulidis 2017: 0.548; Messiou 2011: 0.655; 0: off)", criteria_key=("adc_tiers", "marrow_max", "value"),
            low=0.0, high=3.0),
    Setting("bone_island_min_hu", "bone-island attenuation", "--bone-island-hu", "boneIslandHu", "HU",
            "a lesion whose mean CT attenuation is at or above it favours a bone island (Ulano 2016)",
            criteria_key=("overriding_signs", "bone_island_min_hu", "value"), low=0.0, high=3000.0),
    Setting("fat_t1_ratio_min", "fat T1 ratio", "--fat-t1-ratio", "fatT1Ratio", "ratio",
            "a lesion / normal-marrow T1 ratio at or above it is fat-containing, benign whatever its ADC",
            criteria_key=("overriding_signs", "fat_t1_ratio_min", "value"), low=1.0, high=5.0),
    Setting("fat_fraction_min_percent", "fat-fraction threshold", "--fat-fraction-min", "fatFractionMin", "%",
            "a Dixon fat fraction at or above it is fat-containing (Schmeel 2018: below 6.40 suggests malignant)",
            criteria_key=("overriding_signs", "fat_fraction_min_percent", "value"), low=0.0, high=100.0),
    Setting("chemical_shift_drop_below", "chemical-shift drop", "--chemical-shift-drop", "chemicalShiftDrop", "ratio",
            "an opposed/in-phase ratio below it is a fat signal drop (Zajick 2005, unverified)",
            criteria_key=("overriding_signs", "chemical_shift_drop_below", "value"), low=0.1, high=1.5),
    Setting("adc_units", "ADC units", "--adc-units", "adcUnits", "",
            "units of the scanner ADC map (auto: decided from the values, and said)", kind=str, default="auto",
            choices=("auto", "mm2/s", "1e-3", "1e-6")),
    Setting("fit_method", "ADC fit", "--method", "fitMethod", "",
            "iwls: weighted log-linear least squares, reweighted; ols: ordinary log-linear", kind=str, default="iwls",
            choices=("iwls", "ols")),
    Setting("bmin", "lowest b-value", "--bmin", "bmin", "s/mm^2",
            "b-values below it are left out of the fit (perfusion-weighted)", low=0.0, high=10000.0),
    Setting("bmax", "highest b-value", "--bmax", "bmax", "s/mm^2",
            "b-values above it are left out of the fit (noise floor)", low=0.0, high=10000.0),
)
SETTING: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


@dataclass
class Options:
    """The user's choices for one analysis; None means the default (SETTINGS says where it
    comes from). ADC values are in 10^-3 mm^2/s throughout. `resolved()` gives a copy with
    every default filled in, checked, and the criteria it was read from."""

    adc_cutoff: Optional[float] = None
    indeterminate_band: Optional[float] = None
    signal_low_below: Optional[float] = None
    signal_high_above: Optional[float] = None
    min_voxels: Optional[int] = None
    ct_sclerotic_min_hu: Optional[float] = None
    marrow_max: Optional[float] = None          # normal-marrow range top; 0 turns the tier off
    bone_island_min_hu: Optional[float] = None
    fat_t1_ratio_min: Optional[float] = None
    fat_fraction_min_percent: Optional[float] = None
    chemical_shift_drop_below: Optional[float] = None
    adc_bvalues: Optional[Sequence[float]] = None  # b-values a scanner ADC map was made from (recorded)
    adc_units: Optional[str] = None
    fit_method: Optional[str] = None
    bmin: Optional[float] = None
    bmax: Optional[float] = None
    reference_segments: Sequence[str] = field(default_factory=tuple)
    criteria_path: Optional[Path] = None
    criteria: dict = field(default_factory=dict, repr=False)  # filled by resolved()

    def resolved(self) -> "Options":
        criteria = load_criteria(self.criteria_path)
        values = {}
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            value = setting.default_value(criteria) if value is None else value  # a criteria file's too
            values[setting.name] = None if value is None else _checked(setting, value)
        if isinstance(self.reference_segments, str):  # one name, never its letters
            references = (self.reference_segments,)
        else:
            try:
                references = tuple(self.reference_segments)
            except TypeError:
                references = (None,)
        if not all(isinstance(name, str) for name in references):
            raise InputError(f"reference segments must be segment names, got {self.reference_segments!r}",
                             field="reference_segments")
        bvalues = None if self.adc_bvalues is None else tuple(float(b) for b in self.adc_bvalues)
        resolved = dataclasses.replace(self, **values, reference_segments=references, criteria=criteria,
                                       adc_bvalues=bvalues)
        resolved.check()
        return resolved

    @property
    def marrow_max_or_none(self) -> Optional[float]:
        """The normal-marrow range top as classes.classify_adc takes it (None: the tier is off)."""
        return self.marrow_max if self.marrow_max else None

    def check(self) -> None:
        """Relations between settings (each one's own range is checked as it is read)."""
        if self.indeterminate_band >= self.adc_cutoff:
            raise InputError(f"indeterminate band {self.indeterminate_band} must be below the ADC cut-off "
                             f"{self.adc_cutoff}", field="indeterminate_band")
        if self.signal_low_below > self.signal_high_above:
            raise InputError(f"low-signal ratio {self.signal_low_below} is above the high-signal ratio "
                             f"{self.signal_high_above}", field="signal_low_below")
        if self.marrow_max >= self.adc_cutoff - self.indeterminate_band:
            raise InputError(f"normal-marrow range top {self.marrow_max} must lie below the indeterminate band "
                             f"({self.adc_cutoff - self.indeterminate_band:g}); 0 turns it off", field="marrow_max")
        if self.bone_island_min_hu <= self.ct_sclerotic_min_hu:
            raise InputError(f"bone-island attenuation {self.bone_island_min_hu:g} HU must be above the sclerotic "
                             f"threshold {self.ct_sclerotic_min_hu:g} HU", field="bone_island_min_hu")
        if self.adc_bvalues is not None and (len(self.adc_bvalues) < 2 or min(self.adc_bvalues) < 0):
            raise InputError(f"ADC map b-values {list(self.adc_bvalues)}: give at least two b-values >= 0, e.g. 0,800",
                             field="adc_bvalues")
        if self.bmin is not None and self.bmax is not None and self.bmin >= self.bmax:
            raise InputError(f"lowest b-value {self.bmin} must be below the highest b-value {self.bmax}", field="bmin")


def _checked(setting: Setting, value):
    """`value` as the setting's type, within its range or choices; InputError naming it otherwise."""
    if setting.kind is str:
        if not isinstance(value, str) or (setting.choices and value not in setting.choices):
            raise InputError(f"{setting.label} '{value}' unknown; use {', '.join(setting.choices)}", field=setting.name)
        return value
    try:
        number = setting.kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{setting.label} {value!r} is not a number", field=setting.name) from None
    if isinstance(value, bool) or not math.isfinite(number) or (setting.kind is int and number != float(value)):
        raise InputError(f"{setting.label} {value!r} is not a finite {setting.kind.__name__}", field=setting.name)
    if (setting.low is not None and number < setting.low) or (setting.high is not None and number > setting.high):
        unit = f" {setting.unit}" if setting.unit else ""
        raise InputError(f"{setting.label} {number:g} is outside {setting.low:g}-{setting.high:g}{unit}", field=setting.name)
    return number
