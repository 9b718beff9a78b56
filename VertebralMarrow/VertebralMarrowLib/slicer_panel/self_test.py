"""The small study the module's self-test (and the test suite) analyses, with its answers."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..analysis import StudyNodes
from ..mrml import HeadlessApp, segmentation_from_labelmap, volume_from_array


SELF_TEST_ADC = {"L2 lesion": 0.80, "L4 lesion": 1.80, "L3 normal": 0.40}  # 10^-3 mm^2/s
SELF_TEST_BVALUES = (0.0, 50.0, 400.0, 800.0)


def self_test_study(scene, app: Optional[HeadlessApp], dwi: bool = False) -> Tuple[StudyNodes, dict]:
    """A small study built in code, and what its analysis must give.

    ADC (or noise-free DWI, S = 1000 exp(-b ADC)) on a 24^3 grid of 2 mm voxels; T1, T2 and
    FS-T2 on a 1 mm grid shifted by half a voxel; three 6^3-voxel ROIs: 'L2 lesion' (ADC
    0.80, T1 low, T2 and FS high: malignant-range), 'L4 lesion' (ADC 1.80, T1, T2 and FS
    high: benign-range, haemangioma first) and 'L3 normal' (the reference, by its name).
    """
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = -0.5
    boxes = {"L2 lesion": (slice(2, 8), slice(2, 8), slice(2, 8)),
             "L4 lesion": (slice(2, 8), slice(14, 20), slice(2, 8)),
             "L3 normal": (slice(14, 20), slice(2, 8), slice(2, 8))}
    labels = np.zeros((24, 24, 24), np.uint8)
    adc = np.full((24, 24, 24), 1.2, np.float32)
    for value, (name, box) in enumerate(boxes.items(), 1):
        labels[box] = value
        adc[box] = SELF_TEST_ADC[name]
    ratios = {"L2 lesion": (0.4, 1.4, 3.0), "L4 lesion": (1.35, 1.6, 3.0), "L3 normal": (1.0, 1.0, 1.0)}
    normal = {"t1": 400.0, "t2": 300.0, "fs": 60.0}
    signal = {}
    for column, key in enumerate(("t1", "t2", "fs")):
        image = np.full((48, 48, 48), normal[key], np.float32)
        for name, box in boxes.items():
            image[tuple(slice(2 * s.start, 2 * s.stop) for s in box)] = normal[key] * ratios[name][column]
        signal[key] = volume_from_array(scene, image, fine, f"self-test {key.upper()}")

    labelmap = volume_from_array(scene, labels, coarse, "self-test ROIs", labelmap=True)
    segmentation = segmentation_from_labelmap(scene, app, labelmap, dict(enumerate(boxes, 1)), "self-test ROIs")
    display = labelmap.GetDisplayNode()
    if display is not None and display.GetColorNode() is not None and not display.GetColorNode().GetSingletonTag():
        scene.RemoveNode(display.GetColorNode())
    scene.RemoveNode(labelmap)

    study = StudyNodes(segmentation=segmentation, t1=signal["t1"], t2=signal["t2"], fs=signal["fs"])
    if dwi:
        study.dwi = [volume_from_array(scene, (1000.0 * np.exp(-b * adc / 1000.0)).astype(np.float32), coarse,
                                       f"self-test DWI b={b:g}") for b in SELF_TEST_BVALUES]
        study.bvalues = list(SELF_TEST_BVALUES)
    else:
        study.adc = volume_from_array(scene, adc, coarse, "self-test ADC")
    expected = {
        "rows": {"L2 lesion": ("lesion", "malignant"), "L4 lesion": ("lesion", "benign"), "L3 normal": ("reference", "reference")},
        "adc_mean": dict(SELF_TEST_ADC),
        "first_entity": {"L4 lesion": "hemangioma"},
        "n_voxels_adc": 216,
        "overlay_counts": {0: 24 ** 3 - 2 * 216, 1: 216, 3: 216},
        "signals": {"L2 lesion": ("low", "high", "high"), "L4 lesion": ("high", "high", "high")},
    }
    return study, expected
