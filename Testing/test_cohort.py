"""Tests for `vertebral-marrow cohort`: statistics against published and brute-force numbers.

Expected values come from outside the code under test: the Kaur 2020 cut-off table (clinical
reference), pairwise counts over every malignant/benign pair, and a scan of every threshold.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import sys
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from VertebralMarrowLib import DISCLAIMER
from VertebralMarrowLib.cohort import run_cohort
from VertebralMarrowLib.core.cohort import cohort_statistics, confidence_intervals
from VertebralMarrowLib.inputs.cohort_table import read_cohort_csv
from VertebralMarrowLib.errors import InputError

COHORT_PY = Path(__file__).resolve().parents[1] / "VertebralMarrow" / "VertebralMarrowLib" / "cohort.py"


def write_csv(path: Path, rows, header=("id", "adc", "truth", "entity")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def kaur_rows():
    """Kaur 2020 cut-off table: <= 1.21: 35 malignant, 5 benign; > 1.21: 0 malignant, 60 benign.

    Both groups include lesions exactly at 1.21 to pin down the 'at or below' rule.
    """
    malignant = [round(x, 3) for x in np.linspace(0.45, 1.21, 35)]
    benign_low = [1.0, 1.1, 1.15, 1.2, 1.21]
    benign_high = [round(x, 3) for x in np.linspace(1.22, 2.3, 60)]
    rows = [(f"m{i}", adc, "malignant", "metastasis_lytic") for i, adc in enumerate(malignant)]
    rows += [(f"b{i}", adc, "benign", "tuberculous_spondylitis") for i, adc in enumerate(benign_low)]
    rows += [(f"h{i}", adc, "benign", "hemangioma") for i, adc in enumerate(benign_high)]
    return rows


# --- brute-force references ------------------------------------------------------------


def pairwise_auc(adc, malignant):
    """Over every (malignant, benign) pair: 1 if malignant ADC lower, 1/2 if equal."""
    mal = adc[malignant][:, None]
    ben = adc[~malignant][None, :]
    wins = (mal < ben).sum() + 0.5 * (mal == ben).sum()
    return wins / (mal.size * ben.size)


def scan_youden(adc, malignant):
    """Lowest observed ADC t maximising sens + spec - 1 for 'adc <= t', in exact fractions."""
    n_mal, n_ben = int(malignant.sum()), int((~malignant).sum())
    best_j, best_t = None, None
    for t in sorted(set(adc.tolist())):
        called = adc <= t
        j = Fraction(int((called & malignant).sum()), n_mal) - Fraction(int((called & ~malignant).sum()), n_ben)
        if best_j is None or j > best_j:
            best_j, best_t = j, t
    return best_t, best_j


def random_cohort(seed, n_mal, n_ben, decimals=1):
    """Overlapping groups rounded to `decimals` so that many ADC values tie."""
    rng = np.random.default_rng(seed)
    adc = np.round(np.r_[rng.normal(0.9, 0.35, n_mal), rng.normal(1.4, 0.4, n_ben)].clip(0.05), decimals)
    malignant = np.r_[np.ones(n_mal, bool), np.zeros(n_ben, bool)]
    order = rng.permutation(adc.size)
    return adc[order], malignant[order]


# --- statistics ------------------------------------------------------------------------


def test_kaur_table_counts_sensitivity_specificity(tmp_path):
    csv_path = write_csv(tmp_path / "kaur.csv", kaur_rows())
    result = run_cohort(csv_path, tmp_path / "out")  # cut-off from the criteria file: 1.21
    assert result["cutoff"] == pytest.approx(1.21)
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (35, 0, 5, 60)
    assert (result["n_malignant"], result["n_benign"]) == (35, 65)
    assert result["sensitivity"] == pytest.approx(35 / 35)
    assert result["specificity"] == pytest.approx(60 / 65)
    assert round(100 * result["specificity"], 1) == 92.3  # as the paper reports it
    assert "Kaur" in result["cutoff_citation"] and "Pol J Radiol 2020" in result["cutoff_citation"]
    assert result["cutoff_origin"] == "criteria file default"


def test_user_cutoff_overrides_default(tmp_path):
    csv_path = write_csv(tmp_path / "kaur.csv", kaur_rows())
    result = run_cohort(csv_path, tmp_path / "out", cutoff=1.0)
    adc = np.array([row[1] for row in kaur_rows()])
    malignant = np.array([row[2] == "malignant" for row in kaur_rows()])
    assert result["cutoff"] == 1.0 and result["cutoff_origin"] == "user"
    assert result["tp"] == int(((adc <= 1.0) & malignant).sum())
    assert result["fp"] == 1  # only the benign lesion at exactly 1.0
    assert "Kaur" in result["cutoff_citation"]


@pytest.mark.parametrize("seed,n_mal,n_ben,decimals", [(1, 30, 50, 1), (2, 7, 3, 0), (3, 200, 150, 2), (4, 1, 1, 1)])
def test_auc_matches_pairwise_count_with_ties(seed, n_mal, n_ben, decimals):
    adc, malignant = random_cohort(seed, n_mal, n_ben, decimals)
    if decimals < 2 and adc.size > 10:
        assert np.unique(adc).size < adc.size  # the case really has ties
    stats = cohort_statistics(adc, malignant, 1.21)
    assert stats["auc"] == pytest.approx(pairwise_auc(adc, malignant), abs=1e-12)


def test_roc_area_equals_auc_and_ends_at_corners():
    adc, malignant = random_cohort(5, 40, 60, 1)
    stats = cohort_statistics(adc, malignant, 1.21)
    roc = np.array([[fpr, tpr] for fpr, tpr, _ in stats["roc"]])
    assert roc[0].tolist() == [0.0, 0.0] and roc[-1].tolist() == [1.0, 1.0]
    assert np.all(np.diff(roc, axis=0) >= 0)
    area = float(np.sum(np.diff(roc[:, 0]) * (roc[1:, 1] + roc[:-1, 1]) / 2))
    assert area == pytest.approx(stats["auc"], abs=1e-12)


@pytest.mark.parametrize("seed,decimals", [(11, 1), (12, 2), (13, 0), (14, 3)])
def test_youden_cutoff_matches_threshold_scan(seed, decimals):
    adc, malignant = random_cohort(seed, 45, 55, decimals)
    stats = cohort_statistics(adc, malignant, 1.21)
    best_t, best_j = scan_youden(adc, malignant)
    assert stats["youden_cutoff"] == best_t
    j = stats["youden_sensitivity"] + stats["youden_specificity"] - 1
    assert j == pytest.approx(float(best_j), abs=1e-12)


def test_youden_on_kaur_table_separates_perfectly():
    rows = kaur_rows()
    adc = np.array([row[1] for row in rows])
    malignant = np.array([row[2] == "malignant" for row in rows])
    stats = cohort_statistics(adc, malignant, 1.21)
    # Every malignant lesion is at or below 1.21 but so are 5 benign ones (1.0 .. 1.21):
    best_t, best_j = scan_youden(adc, malignant)
    assert stats["youden_cutoff"] == best_t
    assert stats["youden_sensitivity"] - (1 - stats["youden_specificity"]) == pytest.approx(float(best_j))


def test_perfect_separation_gives_auc_one_and_reverse_gives_zero():
    malignant = np.array([True] * 5 + [False] * 6)
    adc = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0])
    stats = cohort_statistics(adc, malignant, 1.21)
    assert stats["auc"] == 1.0
    assert stats["youden_cutoff"] == 0.9
    assert stats["youden_sensitivity"] == 1.0 and stats["youden_specificity"] == 1.0
    assert cohort_statistics(adc, ~malignant, 1.21)["auc"] == 0.0
    assert cohort_statistics(np.full(11, 1.0), malignant, 1.21)["auc"] == 0.5


# --- confidence intervals --------------------------------------------------------------


def wilson(k, n, z=NormalDist().inv_cdf(0.975)):
    """Wilson score interval written out from its formula (Wilson 1927; Newcombe 1998, method 3)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_kaur_table_intervals_match_independent_values(tmp_path):
    result = run_cohort(write_csv(tmp_path / "kaur.csv", kaur_rows()), tmp_path / "out")
    # Sensitivity 35/35: the Wilson lower bound reduces to n / (n + z^2) = 35 / 38.8415 = 0.9011.
    assert result["sensitivity_ci"][0] == pytest.approx(35 / (35 + 1.959964 ** 2), abs=1e-6)
    assert result["sensitivity_ci"][0] == pytest.approx(0.9011, abs=1e-4)
    assert result["sensitivity_ci"][1] == pytest.approx(1.0)
    # Specificity 60/65 = 92.3 %: Wilson 0.8322-0.9667 (by hand: centre 0.8995, half-width 0.0672).
    assert result["specificity_ci"] == pytest.approx(list(wilson(60, 65)), abs=1e-9)
    assert result["specificity_ci"] == pytest.approx([0.8322, 0.9667], abs=1e-4)
    assert result["ppv"] == pytest.approx(35 / 40) and result["npv"] == 1.0
    assert result["ppv_ci"] == pytest.approx(list(wilson(35, 40)), abs=1e-9)
    assert result["npv_ci"] == pytest.approx(list(wilson(60, 60)), abs=1e-9)
    assert result["ci_level"] == 0.95 and "Wilson" in result["ci_method"]["proportions"]
    low, high = result["auc_ci"]
    assert low <= result["auc"] <= high <= 1.0
    low, high = result["youden_cutoff_ci"]
    assert low <= result["youden_cutoff"] <= high


def test_exact_intervals_are_clopper_pearson(tmp_path):
    from scipy.stats import beta

    result = run_cohort(write_csv(tmp_path / "kaur.csv", kaur_rows()), tmp_path / "out", ci_method="exact")
    # All 35 positive: the exact lower bound solves p^35 = 0.025.
    assert result["sensitivity_ci"] == pytest.approx([0.025 ** (1 / 35), 1.0], abs=1e-9)
    # 60 of 65: the Clopper-Pearson bounds are quantiles of the beta distribution.
    assert result["specificity_ci"] == pytest.approx([beta.ppf(0.025, 60, 6), beta.ppf(0.975, 61, 5)], abs=1e-9)
    assert "Clopper-Pearson" in result["ci_method"]["proportions"]


def test_auc_interval_width_agrees_with_hanley_mcneil():
    """The bootstrap interval of a large cohort is about +-1.96 standard errors of Hanley and
    McNeil 1982 (their closed-form SE of the Mann-Whitney AUC)."""
    adc, malignant = random_cohort(21, 150, 200, 3)
    stats = cohort_statistics(adc, malignant, 1.21)
    intervals = confidence_intervals(stats, adc, malignant)
    auc, n1, n2 = stats["auc"], int(malignant.sum()), int((~malignant).sum())
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n2 - 1) * (q2 - auc * auc)) / (n1 * n2))
    low, high = intervals["auc_ci"]
    assert low < auc < high
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert intervals == confidence_intervals(stats, adc, malignant)  # seeded: a rerun gives the same


def test_youden_interval_covers_the_gap_between_separated_groups():
    malignant = np.array([True] * 20 + [False] * 20)
    adc = np.r_[np.linspace(0.5, 0.9, 20), np.linspace(1.5, 2.0, 20)]
    stats = cohort_statistics(adc, malignant, 1.21)
    intervals = confidence_intervals(stats, adc, malignant)
    # Every resample separates perfectly; the Youden cut-off is then the resample's highest
    # malignant ADC, which lies among the malignant values near the top.
    low, high = intervals["youden_cutoff_ci"]
    assert 0.7 < low <= high == pytest.approx(0.9)
    assert intervals["auc_ci"] == [1.0, 1.0]


def test_entity_fraction_interval(tmp_path):
    rows = [(f"m{i}", 0.8, "malignant", "metastasis_lytic") for i in range(4)] + [
        ("m4", 1.5, "malignant", "metastasis_lytic"), ("b0", 1.9, "benign", "hemangioma")]
    out = tmp_path / "out"
    result = run_cohort(write_csv(tmp_path / "c.csv", rows), out)
    metastasis = next(item for item in result["entities"] if item["entity"] == "metastasis_lytic")
    assert metastasis["fraction_called_malignant_ci"] == pytest.approx(list(wilson(4, 5)), abs=1e-9)
    with (out / "cohort_entities.csv").open(newline="") as handle:
        table = {row["entity"]: row for row in csv.DictReader(handle)}
    assert float(table["metastasis_lytic"]["fraction_called_malignant_ci_low"]) == pytest.approx(wilson(4, 5)[0], abs=1e-4)
    # One benign lesion cannot be resampled: no bootstrap interval, and cohort.json says why.
    assert result["auc_ci"] is None and result["youden_cutoff_ci"] is None
    assert any("bootstrap" in note and "benign" in note for note in result["notes"])


# --- batch's lesion table -------------------------------------------------------------


def test_reads_batch_lesion_table_and_leaves_out_rows_without_truth_or_adc(tmp_path):
    path = tmp_path / "lesions.csv"
    path.write_text(
        "study,segment,role,adc_mean,adc_class,truth,entity\n"
        "s1,L2 lesion,lesion,0.70,malignant,malignant,metastasis_lytic\n"
        "s1,L4 lesion,lesion,1.90,benign,benign,hemangioma\n"
        "s2,L2 lesion,lesion,0.80,malignant,Malignant,\n"
        "s2,L3 lesion,lesion,,n/a,benign,\n"
        "s3,L1 lesion,lesion,1.70,benign,,\n"
        "s3,T12 lesion,lesion,1.60,benign,benign,\n",
        encoding="utf-8")
    out = tmp_path / "out"
    result = run_cohort(path, out)
    assert result["n_lesions"] == 4 and (result["n_malignant"], result["n_benign"]) == (2, 2)
    assert (result["tp"], result["tn"]) == (2, 2)
    assert any("without a truth" in note and "s3/L1 lesion" in note for note in result["notes"])
    assert any("without a measured ADC" in note and "s2/L3 lesion" in note for note in result["notes"])
    assert {item["entity"] for item in result["entities"]} == {
        "metastasis_lytic", "hemangioma", "unspecified (malignant)", "unspecified (benign)"}


def test_batch_table_without_truth_column_is_refused(tmp_path):
    path = tmp_path / "lesions.csv"
    path.write_text("study,segment,role,adc_mean\ns1,L2,lesion,0.7\n", encoding="utf-8")
    with pytest.raises(InputError, match="truth column"):
        run_cohort(path, tmp_path / "out")


def test_without_matplotlib_numbers_are_written_and_figures_said_skipped(tmp_path):
    import subprocess

    csv_path = write_csv(tmp_path / "kaur.csv", kaur_rows())
    out = tmp_path / "out"
    code = (f"import sys; sys.modules['matplotlib'] = None; sys.path.insert(0, {str(COHORT_PY.parents[1])!r}); "
            f"from VertebralMarrowLib.cohort import run_cohort; run_cohort({str(csv_path)!r}, {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    stored = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert (stored["tp"], stored["fp"], stored["tn"]) == (35, 5, 60)
    assert stored["files"] == ["cohort.json", "cohort_entities.csv"]
    assert not (out / "cohort_roc.png").exists()
    assert any("figures skipped" in note and "matplotlib" in note for note in stored["notes"])


# --- files -----------------------------------------------------------------------------


def assert_real_image(path: Path, min_width=300, min_height=250):
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    height, width, _ = pixels.shape
    assert width >= min_width and height >= min_height
    not_white = np.any(pixels < 240, axis=2).mean()
    assert 0.02 < not_white < 0.9  # drawn on, but not a filled block
    colours = np.unique(pixels.reshape(-1, 3).astype(int) // 16, axis=0)
    assert len(colours) > 20
    return pixels


def test_outputs_written_and_json_has_interface_keys(tmp_path):
    csv_path = write_csv(tmp_path / "kaur.csv", kaur_rows())
    out = tmp_path / "out"
    progress = []
    result = run_cohort(csv_path, out, progress=lambda fraction, text: progress.append((fraction, text)))
    for name in ("cohort.json", "cohort_roc.png", "cohort_entities.csv", "cohort_entities.png"):
        assert (out / name).is_file(), name

    stored = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert stored == json.loads(json.dumps(result))
    for key in ("tp", "fn", "fp", "tn", "sensitivity", "specificity", "auc", "youden_cutoff", "cutoff",
                "youden_sensitivity", "youden_specificity", "n_malignant", "n_benign", "roc",
                "cutoff_citation", "disclaimer"):
        assert key in stored, key
    assert stored["disclaimer"] == DISCLAIMER
    assert all(len(point) == 3 for point in stored["roc"])

    fractions = [fraction for fraction, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    roc = assert_real_image(out / "cohort_roc.png")
    entities = assert_real_image(out / "cohort_entities.png")
    red = lambda p: ((p[..., 0] > 180) & (p[..., 1] < 90) & (p[..., 2] < 90)).sum()  # noqa: E731
    assert red(roc) > 50  # the cut-off marker
    assert red(entities) > 50  # the cut-off line and malignant lesions


def test_entity_summary_csv(tmp_path):
    rows = [
        ("a", 0.6, "malignant", "metastasis_lytic"),
        ("b", 0.8, "malignant", "metastasis_lytic"),
        ("c", 1.3, "malignant", "metastasis_lytic"),
        ("d", 1.8, "benign", "hemangioma"),
        ("e", 2.0, "benign", "hemangioma"),
        ("f", 1.1, "benign", ""),
    ]
    out = tmp_path / "out"
    run_cohort(write_csv(tmp_path / "c.csv", rows), out, cutoff=1.21)
    with (out / "cohort_entities.csv").open(newline="") as handle:
        table = {row["entity"]: row for row in csv.DictReader(handle)}
    assert set(table) == {"metastasis_lytic", "hemangioma", "unspecified (benign)"}
    metastasis = table["metastasis_lytic"]
    assert int(metastasis["n"]) == 3
    assert float(metastasis["adc_mean"]) == pytest.approx(0.9, abs=1e-4)
    assert float(metastasis["adc_sd"]) == pytest.approx(np.std([0.6, 0.8, 1.3], ddof=1), abs=1e-4)
    assert float(metastasis["adc_median"]) == pytest.approx(0.8)
    assert (float(metastasis["adc_min"]), float(metastasis["adc_max"])) == (0.6, 1.3)
    assert float(metastasis["fraction_called_malignant"]) == pytest.approx(2 / 3, abs=1e-4)
    assert float(table["hemangioma"]["fraction_called_malignant"]) == 0.0
    assert table["unspecified (benign)"]["adc_sd"] == ""  # one lesion: no SD
    assert float(table["unspecified (benign)"]["fraction_called_malignant"]) == 1.0


def test_reader_is_lenient_about_case_and_column_order(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("Truth,ADC\nMalignant,0.7\nBENIGN,1.9\n\nbenign, 1.5 \n", encoding="utf-8")
    rows = read_cohort_csv(path)
    assert [(row["adc"], row["truth"], row["entity"]) for row in rows] == [
        (0.7, "malignant", ""), (1.9, "benign", ""), (1.5, "benign", ""),
    ]
    assert all(row["id"] for row in rows)


# --- bad input -------------------------------------------------------------------------


BAD_INPUTS = {
    "missing adc column": ("id,value,truth\na,0.7,malignant\n", ["adc", "found", "value"]),
    "missing truth column": ("id,adc,diagnosis\na,0.7,malignant\n", ["truth", "found", "diagnosis"]),
    "non-numeric adc": ("adc,truth\n0.7,malignant\nabc,benign\n", ["line 3", "abc", "not a number"]),
    "empty adc": ("adc,truth\n0.7,malignant\n,benign\n", ["line 3", "not a number"]),
    "negative adc": ("adc,truth\n0.7,malignant\n1.5,benign\n-0.4,benign\n", ["line 4", "-0.4", "negative"]),
    "bad truth": ("adc,truth\n0.7,malignant\n1.5,1\n", ["line 3", "'1'", "malignant or benign"]),
    "no benign": ("adc,truth\n0.7,malignant\n0.8,malignant\n", ["no benign", "AUC"]),
    "no malignant": ("adc,truth\n1.7,benign\n1.8,benign\n", ["no malignant", "AUC"]),
    "1e-6 units": ("adc,truth\n690,malignant\n1820,benign\n1940,benign\n", ["10^-6", "divide", "1000"]),
    "mm2/s units": ("adc,truth\n0.00069,malignant\n0.00182,benign\n0.00194,benign\n", ["mm^2/s", "multiply", "1000"]),
    "header only": ("adc,truth\n", ["no lesion rows"]),
    "empty file": ("", ["adc", "truth", "found: none"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_input_error_naming_the_problem(tmp_path, case):
    text, words = BAD_INPUTS[case]
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        run_cohort(path, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        run_cohort(tmp_path / "nowhere.csv", tmp_path / "out")


@pytest.mark.parametrize("cutoff", [0, -1, 1210, float("nan"), "abc"])
def test_bad_cutoff_raises_input_error(tmp_path, cutoff):
    csv_path = write_csv(tmp_path / "kaur.csv", kaur_rows())
    with pytest.raises(InputError, match="cut-off"):
        run_cohort(csv_path, tmp_path / "out", cutoff=cutoff)


def test_module_imports_without_matplotlib():
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(COHORT_PY.parents[1])!r}); "
            "import VertebralMarrowLib.cohort, VertebralMarrowLib.outputs.cohort_figures; "
            "print('matplotlib' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


def test_module_is_python39_syntax():
    ast.parse(COHORT_PY.read_text(encoding="utf-8"), feature_version=(3, 9))
