"""The one table of the image inputs measured beside the ADC: each one's key (the field of
StudyFiles and StudyNodes), its label, its command-line flag and its panel parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class Sequence:
    key: str         # StudyFiles / StudyNodes field, results.json's inputs
    label: str       # what a reader sees
    flag: str        # on the command line
    parameter: str   # on the Slicer panel's parameter node
    what: str        # a few words for help texts


SEQUENCES: Tuple[Sequence, ...] = (
    Sequence("t1", "T1", "--t1", "t1Volume", "T1-weighted volume"),
    Sequence("t2", "T2", "--t2", "t2Volume", "T2-weighted volume"),
    Sequence("fs", "FS-T2/STIR", "--fs", "fsVolume", "fat-suppressed T2 or STIR volume"),
    Sequence("ct", "CT", "--ct", "ctVolume", "CT volume (HU)"),
    Sequence("in_phase", "in-phase", "--in-phase", "inPhaseVolume", "in-phase (chemical shift) volume"),
    Sequence("opposed_phase", "opposed-phase", "--opposed-phase", "opposedPhaseVolume",
             "opposed-phase (chemical shift) volume"),
    Sequence("fat_fraction", "fat fraction", "--fat-fraction", "fatFractionVolume", "Dixon fat-fraction map (0-1 or %)"),
)
SEQUENCE: Dict[str, Sequence] = {sequence.key: sequence for sequence in SEQUENCES}
# The signal sequences read against normal marrow (ratios and low/iso/high).
SIGNAL_KEYS = ("t1", "t2", "fs")
