"""The clinical criteria: one data file (criteria.json) with a citation for every number.

`load_criteria()` returns a fresh dict each call, so callers can override values without
touching the file or each other; `Options` carries the user's overrides of the few numbers
the analysis takes directly.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

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
)


@lru_cache(maxsize=None)
def _criteria_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_criteria(path: Optional[Path] = None) -> dict:
    """The criteria as a new dict (the file is read once per process)."""
    source = Path(path) if path else CRITERIA_PATH
    try:
        criteria = json.loads(_criteria_text(str(source)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read criteria file {source}: {exc}") from None
    check_criteria(criteria, f"criteria file {source}")
    return copy.deepcopy(criteria)


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
    differential = get("differential")
    for name, entry in differential.items():
        if isinstance(entry, dict) and "value" in entry:
            number(f"differential.{name}.value", 0.0, low_open=True)
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


@dataclass
class Options:
    """The user's choices for one analysis. None means: take the criteria file's default.

    ADC values are in 10^-3 mm^2/s throughout.
    """

    adc_cutoff: Optional[float] = None
    indeterminate_band: Optional[float] = None
    signal_low_below: Optional[float] = None
    signal_high_above: Optional[float] = None
    min_voxels: Optional[int] = None
    ct_sclerotic_min_hu: Optional[float] = None
    adc_units: str = "auto"
    fit_method: str = "iwls"
    bmin: Optional[float] = None
    bmax: Optional[float] = None
    reference_segments: Sequence[str] = field(default_factory=tuple)
    criteria_path: Optional[Path] = None

    def resolved(self) -> "ResolvedOptions":
        """Overrides applied to the criteria file's defaults, checked for sense. A wrong type
        or value is an InputError naming the option (and its command-line flag)."""
        criteria = load_criteria(self.criteria_path)

        def pick(name: str, default, integer=False):
            value = getattr(self, name)
            return checked_number(default if value is None else value, _option_name(name), integer=integer)

        def optional(name: str):
            value = getattr(self, name)
            return None if value is None else checked_number(value, _option_name(name), 0.0)

        for name in ("adc_units", "fit_method"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"{_option_name(name)} must be text, got {getattr(self, name)!r}")
        references = self.reference_segments
        if isinstance(references, str):  # one name, not a list of its letters
            references = (references,)
        if references is None or not all(isinstance(name, str) for name in references):
            raise InputError(f"{_option_name('reference_segments')} must be segment names, got {self.reference_segments!r}")
        resolved = ResolvedOptions(
            criteria=criteria,
            adc_cutoff=pick("adc_cutoff", criteria["adc_cutoff"]["value"]),
            indeterminate_band=pick("indeterminate_band", criteria["indeterminate_band"]["value"]),
            signal_low_below=pick("signal_low_below", criteria["signal_ratio"]["low_below"]),
            signal_high_above=pick("signal_high_above", criteria["signal_ratio"]["high_above"]),
            min_voxels=pick("min_voxels", criteria["min_voxels"]["value"], integer=True),
            ct_sclerotic_min_hu=pick("ct_sclerotic_min_hu", criteria["ct"]["sclerotic_min_hu"]),
            adc_units=self.adc_units,
            fit_method=self.fit_method,
            bmin=optional("bmin"),
            bmax=optional("bmax"),
            reference_segments=tuple(references),
        )
        resolved.check()
        return resolved


OPTION_FLAGS = {
    "adc_cutoff": "--cutoff", "indeterminate_band": "--band", "signal_low_below": "--low-below",
    "signal_high_above": "--high-above", "min_voxels": "--min-voxels", "ct_sclerotic_min_hu": "--ct-sclerotic-hu",
    "adc_units": "--adc-units", "fit_method": "--method", "bmin": "--bmin", "bmax": "--bmax",
    "reference_segments": "--reference",
}


def _option_name(name: str) -> str:
    return f"Options.{name} ({OPTION_FLAGS[name]})" if name in OPTION_FLAGS else f"Options.{name}"


@dataclass
class ResolvedOptions:
    criteria: dict
    adc_cutoff: float
    indeterminate_band: float
    signal_low_below: float
    signal_high_above: float
    min_voxels: int
    ct_sclerotic_min_hu: float
    adc_units: str
    fit_method: str
    bmin: Optional[float]
    bmax: Optional[float]
    reference_segments: tuple

    def check(self) -> None:
        if not 0.0 < self.adc_cutoff < 5.0:
            raise InputError(
                f"ADC cut-off {_option_name('adc_cutoff')} = {self.adc_cutoff:g} is outside 0-5 x 10^-3 mm^2/s; "
                f"give it in 10^-3 mm^2/s (e.g. 1.21)"
            )
        if self.indeterminate_band < 0 or self.indeterminate_band >= self.adc_cutoff:
            raise InputError(f"{_option_name('indeterminate_band')} {self.indeterminate_band:g} must be >= 0 "
                             f"and below the cut-off {self.adc_cutoff:g}")
        if not 0 < self.signal_low_below <= 1.0 <= self.signal_high_above:
            raise InputError(
                f"signal thresholds must satisfy 0 < {_option_name('signal_low_below')} ({self.signal_low_below:g}) "
                f"<= 1 <= {_option_name('signal_high_above')} ({self.signal_high_above:g})"
            )
        if self.min_voxels < 1:
            raise InputError(f"{_option_name('min_voxels')} must be at least 1, not {self.min_voxels}")
        if self.adc_units not in ("auto", "mm2/s", "1e-3", "1e-6"):
            raise InputError(f"{_option_name('adc_units')} '{self.adc_units}' unknown; use auto, mm2/s, 1e-3 or 1e-6")
        if self.fit_method not in ("iwls", "ols"):
            raise InputError(f"{_option_name('fit_method')} '{self.fit_method}' unknown; use iwls or ols")
        if self.bmin is not None and self.bmax is not None and self.bmin >= self.bmax:
            raise InputError(f"--bmin {self.bmin:g} must be below --bmax {self.bmax:g}")
