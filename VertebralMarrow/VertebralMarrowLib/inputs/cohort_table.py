"""Reading a cohort table: one row per lesion with its mean ADC and its truth.

Two layouts are read:
- the documented cohort CSV: `adc` (10^-3 mm^2/s), `truth` (malignant | benign), optional
  `id` and `entity`; every row must be complete;
- `lesions.csv` written by `vertebral-marrow batch`: `study, segment, ..., adc_mean, ...`,
  plus `truth` and `entity` when the manifest gave them. Lesions without a truth or without a
  measured ADC are left out and counted in the notes, since a batch may hold both.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..errors import InputError

TRUTH_VALUES = ("malignant", "benign")


def read_cohort_table(path) -> tuple:
    """(lesions, notes): lesions as dicts adc (float, 10^-3 mm^2/s), truth, id, entity (or '');
    notes say which rows of a batch table were left out and why.

    Column names are matched case-insensitively; truth is accepted in any case. A row of the
    documented CSV without an id gets its file line number; a batch row is `study/segment`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort file {path} not found; give the path of a CSV with columns adc, truth "
                         "or the lesions.csv of vertebral-marrow batch")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = _column_map(reader.fieldnames or [])
            if "adc" not in columns and "adc_mean" in columns and "study" in columns:
                rows, notes = _batch_rows(reader, columns, path)
            else:
                _require(columns, ("adc", "truth"), reader.fieldnames or [], path)
                rows, notes = _cohort_rows(reader, columns, path), []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cohort file {path} is not a readable CSV ({exc}); save it as comma-separated UTF-8") from None
    if not rows:
        why = f" ({'; '.join(notes)})" if notes else ""
        raise InputError(f"cohort file {path} has no lesion rows with an ADC and a truth{why}; add one row per lesion")
    return rows, notes


def read_cohort_csv(path) -> list:
    """The lesions of `read_cohort_table` without its notes."""
    return read_cohort_table(path)[0]


def _column_map(fieldnames: list) -> dict:
    """Lower-case column name -> the name as written in the file."""
    columns = {}
    for name in fieldnames:
        if name is not None:
            columns.setdefault(name.strip().lower(), name)
    return columns


def _require(columns: dict, names: tuple, fieldnames: list, path: Path) -> None:
    missing = [name for name in names if name not in columns]
    if missing:
        found = ", ".join(repr(name) for name in fieldnames if name) or "none"
        raise InputError(
            f"cohort file {path} lacks column(s) {', '.join(missing)} (found: {found}); "
            "the header needs adc (10^-3 mm^2/s) and truth (malignant|benign), optionally id and entity, "
            "or give the lesions.csv of vertebral-marrow batch with a truth column"
        )


def _cell(record: dict, columns: dict, name: str) -> str:
    key = columns.get(name)
    value = record.get(key) if key is not None else None
    return (value or "").strip() if isinstance(value, str) else ""


def _is_blank(record: dict) -> bool:
    return all(not (value or "").strip() for value in record.values() if isinstance(value, str))


def _cohort_rows(reader, columns: dict, path: Path) -> list:
    rows = []
    for record in reader:
        if _is_blank(record):
            continue
        where = f"cohort file {path} line {reader.line_num} (lesion row {len(rows) + 1})"
        rows.append({
            "adc": _parse_adc(_cell(record, columns, "adc"), where),
            "truth": _parse_truth(_cell(record, columns, "truth"), where),
            "id": _cell(record, columns, "id") or f"line{reader.line_num}",
            "entity": _cell(record, columns, "entity"),
        })
    return rows


def _batch_rows(reader, columns: dict, path: Path) -> tuple:
    """Lesion rows of batch's lesions.csv that have a truth and a measured ADC."""
    if "truth" not in columns:
        raise InputError(f"cohort file {path} is a batch lesion table without a truth column; give the manifest "
                         "a truth column (a CSV of segment, truth per study) and run batch again")
    rows, no_truth, no_adc = [], [], []
    for record in reader:
        if _is_blank(record) or _cell(record, columns, "role") not in ("", "lesion"):
            continue
        name = f"{_cell(record, columns, 'study')}/{_cell(record, columns, 'segment')}"
        where = f"cohort file {path} line {reader.line_num} ({name})"
        if not _cell(record, columns, "truth"):
            no_truth.append(name)
            continue
        text = _cell(record, columns, "adc_mean")
        if text.lower() in ("", "n/a", "nan"):
            no_adc.append(name)
            continue
        rows.append({
            "adc": _parse_adc(text, where),
            "truth": _parse_truth(_cell(record, columns, "truth"), where),
            "id": name,
            "entity": _cell(record, columns, "entity"),
        })
    notes = []
    if no_truth:
        notes.append(f"{len(no_truth)} lesion(s) without a truth left out: {', '.join(no_truth[:10])}"
                     + (" ..." if len(no_truth) > 10 else ""))
    if no_adc:
        notes.append(f"{len(no_adc)} lesion(s) without a measured ADC left out: {', '.join(no_adc[:10])}"
                     + (" ..." if len(no_adc) > 10 else ""))
    return rows, notes


def _parse_adc(text: str, where: str) -> float:
    try:
        adc = float(text)
    except ValueError:
        adc = math.nan
    if not math.isfinite(adc):
        raise InputError(f"{where}: adc {text!r} is not a number; give the lesion's mean ADC in 10^-3 mm^2/s")
    if adc < 0:
        raise InputError(f"{where}: adc {text} is negative; an ADC is >= 0, check the value or its sign")
    return adc


def _parse_truth(text: str, where: str) -> str:
    truth = text.lower()
    if truth not in TRUTH_VALUES:
        raise InputError(f"{where}: truth {text!r} is not accepted; write malignant or benign (any case)")
    return truth
