"""Vertebra label schemes: which label value (or segment name) is which vertebra, disc or canal
(numpy only). None of these tools is a dependency; their outputs are read, never run.

The label numbers are facts from each tool's published class map, copied here by hand (never
fetched at run time):

- TotalSegmentator task `total` (CT, v2): totalsegmentator/map_to_binary.py, class_map["total"]
  (github.com/wasserth/TotalSegmentator, read at commit 0e65a44): 25 sacrum, 26 vertebrae_S1,
  27 vertebrae_L5 ... 50 vertebrae_C1, 79 spinal_cord. Its `total_v3` map reuses 26 for
  vertebrae_L6: a labelmap without names is read as v2; give names to read v3.
- TotalSegmentator task `vertebrae_mr`: same file, class_map["vertebrae_mr"]: 1 sacrum,
  2 vertebrae_L5 ... 25 vertebrae_C1.
- TotalSegmentator task `total_mr`: same file, class_map["total_mr"]: 18 sacrum, 19 vertebrae
  (all levels in one label), 20 intervertebral_discs (all in one), 21 spinal_cord. It has no
  levels: recognised so that the user is told to run `vertebrae_mr`.
- TotalSpineSeg: README "List of Classes" and resources/labels_maps/tss_map.json
  (github.com/neuropoly/totalspineseg, read at commit ddab04b): 1 spinal_cord, 2 spinal_canal,
  11-17 C1-C7, 21-32 T1-T12, 41-45 L1-L5, 50 sacrum, 63-67 discs C2-C3..C6-C7, 71-82 C7-T1..
  T11-T12, 91-95 T12-L1..L4-L5, 100 L5-S.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

CERVICAL = [f"C{n}" for n in range(1, 8)]
THORACIC = [f"T{n}" for n in range(1, 13)]
LUMBAR = [f"L{n}" for n in range(1, 6)]


def _total_ct() -> Dict[int, str]:
    names = {25: "sacrum", 26: "vertebrae_S1", 79: "spinal_cord"}
    for offset, level in enumerate(reversed(CERVICAL + THORACIC + LUMBAR)):  # 27 L5 ... 50 C1
        names[27 + offset] = f"vertebrae_{level}"
    return names


def _vertebrae_mr() -> Dict[int, str]:
    names = {1: "sacrum"}
    for offset, level in enumerate(reversed(CERVICAL + THORACIC + LUMBAR)):  # 2 L5 ... 25 C1
        names[2 + offset] = f"vertebrae_{level}"
    return names


def _totalspineseg() -> Dict[int, str]:
    names = {1: "spinal_cord", 2: "spinal_canal", 50: "sacrum", 100: "disc_L5_S"}
    for first, levels in ((11, CERVICAL), (21, THORACIC), (41, LUMBAR)):
        for offset, level in enumerate(levels):
            names[first + offset] = f"vertebrae_{level}"
    spine = CERVICAL + THORACIC + LUMBAR
    for first, upper in ((63, "C2"), (71, "C7"), (91, "T12")):
        start = spine.index(upper)
        stop = {"C2": "C7", "C7": "T12", "T12": "L5"}[upper]
        for offset, level in enumerate(spine[start:spine.index(stop)]):
            names[first + offset] = f"disc_{level}_{spine[start + offset + 1]}"
    return names


SCHEMES: Dict[str, Dict[int, str]] = {
    "totalsegmentator_total": _total_ct(),
    "totalsegmentator_vertebrae_mr": _vertebrae_mr(),
    "totalsegmentator_total_mr": {18: "sacrum", 19: "vertebrae", 20: "intervertebral_discs", 21: "spinal_cord"},
    "totalspineseg": _totalspineseg(),
}
# The highest label of each task's whole class map (same sources): labels up to it that are not
# spine structures are the task's organs and muscles, ignored here; a label above it rules the
# scheme out.
LABEL_MAX = {"totalsegmentator_total": 117, "totalsegmentator_vertebrae_mr": 25,
             "totalsegmentator_total_mr": 50, "totalspineseg": 100}
# --scheme choices: the family, whose members are told apart by their labels.
FAMILIES = {
    "totalsegmentator": ("totalsegmentator_total", "totalsegmentator_vertebrae_mr", "totalsegmentator_total_mr"),
    "totalspineseg": ("totalspineseg",),
}


@dataclass(frozen=True)
class Structure:
    kind: str            # vertebra | disc | canal | cord
    level: str           # vertebra: "L1"; disc: "L1-L2"; canal/cord: ""
    order: float         # position along the spine, C1 = 1 downwards (a disc sits between)


def level_index(level: str) -> int:
    """C1 = 1 ... C7 = 7, T1 = 8 ... T12 = 19, L1 = 20 ... L6 = 25, S1 = 26 (cranio-caudal)."""
    letter, number = level[0].upper(), int(level[1:])
    return {"C": 0, "T": 7, "L": 19, "S": 25}[letter] + number


_LEVEL = re.compile(r"(?:^|(?<=[\s_\-/(]))([CTLS])(\d{1,2})(?=$|[\s_\-/).,])", re.IGNORECASE)
_SACRAL_TAIL = re.compile(r"[\s_\-/]S(?=$|[\s_\-/).,])")
_STRUCTURE_WORDS = re.compile(r"vertebrae|vertebral|vertebra|body|intervertebral|discs|disc|disks|disk", re.IGNORECASE)


def parse_structure(name: str) -> Optional[Structure]:
    """What a segment or label name says: a vertebra ('vertebrae_L5', 'L5 vertebra', 'L5'), a disc
    ('disc_L4_L5', 'L4/L5 disc', 'L5-S'), the sacrum (level S1), the canal or the cord; None for
    anything else (lesions, organs, the merged 'vertebrae' of total_mr)."""
    text = name.strip()
    lower = text.lower()
    if "canal" in lower:
        return Structure("canal", "", 0.0)
    if "cord" in lower:
        return Structure("cord", "", 0.0)
    levels = [f"{letter.upper()}{int(number)}" for letter, number in _LEVEL.findall(text)]
    if _SACRAL_TAIL.search(text) and levels:
        levels.append("S1")
    levels = [level for level in levels if _valid(level)]
    # Anything more than the level and the structure's own words ('L2 lesion') is not a vertebra.
    rest = _STRUCTURE_WORDS.sub(" ", _SACRAL_TAIL.sub(" ", _LEVEL.sub(" ", text)))
    if levels and re.search(r"[a-z]", rest, re.IGNORECASE):
        return None
    if len(levels) >= 2 or (levels and ("disc" in lower or "intervertebral" in lower)):
        if len(levels) < 2:
            return None
        upper, lower_level = sorted(levels[:2], key=level_index)
        return Structure("disc", f"{upper}-{lower_level}", (level_index(upper) + level_index(lower_level)) / 2.0)
    if levels:
        return Structure("vertebra", levels[0], float(level_index(levels[0])))
    if lower.startswith("sacrum") or lower == "sacral":
        return Structure("vertebra", "S1", float(level_index("S1")))
    return None


def _valid(level: str) -> bool:
    letter, number = level[0], int(level[1:])
    return 1 <= number <= {"C": 7, "T": 12, "L": 6, "S": 1}[letter]


def structures_from_names(names: Dict[int, str]) -> Dict[int, Structure]:
    """Label value -> structure for every name that says one; a sacrum is dropped when an S1
    label exists beside it (TotalSegmentator labels both)."""
    found = {value: parse_structure(name) for value, name in names.items()}
    found = {value: s for value, s in found.items() if s is not None}
    explicit_s1 = [v for v, s in found.items() if s.kind == "vertebra" and s.level == "S1" and "sacrum" not in names[v].lower()]
    if explicit_s1:
        found = {v: s for v, s in found.items() if not ("sacrum" in names[v].lower() and s.kind == "vertebra")}
    return found


def detect_scheme(values: Sequence[int], centroids_s_mm: Dict[int, float], candidates: Sequence[str],
                  naming: str = "give --scheme names with --label-names") -> str:
    """The scheme among `candidates` that names the most vertebrae among the labels present,
    whose labels all lie within its class map, and whose level order runs with the labels'
    superior-inferior positions (`centroids_s_mm`: label value -> mean S coordinate). Raises
    InputError when none fits, ending with `naming` (how to name the labels instead)."""
    present = sorted(int(v) for v in values if v > 0)
    verdicts: List[Tuple[int, float, str]] = []
    reasons = []
    for scheme in candidates:
        names = SCHEMES[scheme]
        beyond = [v for v in present if v > LABEL_MAX[scheme]]
        if beyond:
            reasons.append(f"{scheme}: labels {', '.join(str(v) for v in beyond)} are beyond its class map")
            continue
        if scheme == "totalsegmentator_total_mr":
            if 19 in present:  # its one 'vertebrae' label: recognised, so that the user is told what to run
                verdicts.append((1, 1.0, scheme))
            continue
        structures = structures_from_names({v: names[v] for v in present if v in names})
        vertebrae = [v for v, s in structures.items() if s.kind == "vertebra"]
        if not vertebrae:
            reasons.append(f"{scheme}: no label is a vertebra in its class map")
            continue
        ranked = [(s.order, centroids_s_mm[v]) for v, s in structures.items() if s.kind in ("vertebra", "disc") and v in centroids_s_mm]
        agreement = _order_agreement(ranked)
        if agreement < 0.8:
            reasons.append(f"{scheme}: its level order disagrees with the labels' positions (agreement {agreement:.2f})")
            continue
        verdicts.append((len(vertebrae), agreement, scheme))
    if not verdicts:
        raise InputError("the labels fit no known vertebra scheme (" + "; ".join(reasons) +
                         f"); {naming}")
    verdicts.sort(reverse=True)
    return verdicts[0][2]


def _order_agreement(ranked: Sequence[Tuple[float, float]]) -> float:
    """Fraction of pairs whose cranio-caudal order matches their S coordinate (higher order =
    lower S); 1.0 with fewer than two structures (nothing contradicts)."""
    pairs = agree = 0
    for a in range(len(ranked)):
        for b in range(a + 1, len(ranked)):
            (order_a, s_a), (order_b, s_b) = ranked[a], ranked[b]
            if order_a == order_b or s_a == s_b:
                continue
            pairs += 1
            agree += (order_a < order_b) == (s_a > s_b)
    return agree / pairs if pairs else 1.0


def scheme_structures(scheme: str, values: Sequence[int]) -> Dict[int, Structure]:
    """Label value -> structure of a named scheme, for the values present."""
    if scheme == "totalsegmentator_total_mr":
        raise InputError("TotalSegmentator's total_mr task labels all vertebrae as one; run its task "
                         "vertebrae_mr for one label per vertebra")
    names = SCHEMES[scheme]
    return structures_from_names({int(v): names[int(v)] for v in values if int(v) in names})


def label_centroids_s(labels: np.ndarray, ijk_to_ras: np.ndarray) -> Dict[int, float]:
    """Mean S (superior) coordinate in mm of each label > 0 of a (k, j, i) array."""
    k, j, i = np.nonzero(labels)
    values = labels[k, j, i].astype(np.int64)
    s = ijk_to_ras[2, 0] * i + ijk_to_ras[2, 1] * j + ijk_to_ras[2, 2] * k + ijk_to_ras[2, 3]
    sums = np.bincount(values, weights=s)
    counts = np.bincount(values)
    return {int(v): float(sums[v] / counts[v]) for v in np.nonzero(counts)[0] if v > 0}
