"""Cohort statistics for researchers: how well an ADC cut-off separates malignant from benign.

Input is a CSV with one row per lesion: `adc` (mean lesion ADC, 10^-3 mm^2/s), `truth`
(malignant | benign), optional `id` and `entity`. Malignant is the positive class, and a
lesion is called malignant when `adc <= cutoff` (Kaur 2020: malignant lesions have the lower
ADC). Everything here is plain numpy on arrays; matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import DISCLAIMER
from .core.criteria import citation, load_criteria
from .errors import InputError

TRUTH_VALUES = ("malignant", "benign")

# Medians outside this range (10^-3 mm^2/s) mean the column is in another unit. Lesion ADCs
# lie between about 0.3 and 3; 10^-6 mm^2/s puts them in the hundreds, mm^2/s near 0.001.
ADC_MEDIAN_MAX_1E3 = 10.0
ADC_MEDIAN_MIN_1E3 = 0.01

ProgressCallback = Callable[[float, str], None]


# --- reading ---------------------------------------------------------------------------


def read_cohort_csv(path) -> list:
    """The CSV's lesions as dicts: adc (float, 10^-3 mm^2/s), truth, id (str), entity (str or '').

    Column names are matched case-insensitively; truth is accepted in any case. A row without
    an id gets its file line number as id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort file {path} not found; give the path of a CSV with columns adc, truth")
    try:
        rows = _read_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cohort file {path} is not a readable CSV ({exc}); save it as comma-separated UTF-8") from None
    if not rows:
        raise InputError(f"cohort file {path} has a header but no lesion rows; add one row per lesion")
    return rows


def _read_rows(path: Path) -> list:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = _column_map(reader.fieldnames or [], path)
        rows = []
        for record in reader:
            if _is_blank(record):
                continue
            where = f"cohort file {path} line {reader.line_num} (lesion row {len(rows) + 1})"
            rows.append(_parse_row(record, columns, where, reader.line_num))
    return rows


def _column_map(fieldnames: list, path: Path) -> dict:
    """Lower-case column name -> the name as written in the file; checks adc and truth exist."""
    columns = {}
    for name in fieldnames:
        if name is not None:
            columns.setdefault(name.strip().lower(), name)
    missing = [name for name in ("adc", "truth") if name not in columns]
    if missing:
        found = ", ".join(repr(name) for name in fieldnames if name) or "none"
        raise InputError(
            f"cohort file {path} lacks column(s) {', '.join(missing)} (found: {found}); "
            "the header needs adc (10^-3 mm^2/s) and truth (malignant|benign), optionally id and entity"
        )
    return columns


def _is_blank(record: dict) -> bool:
    return all(not (value or "").strip() for value in record.values() if isinstance(value, str))


def _parse_row(record: dict, columns: dict, where: str, line: int) -> dict:
    def cell(name: str) -> str:
        key = columns.get(name)
        value = record.get(key) if key is not None else None
        return (value or "").strip()

    return {
        "adc": _parse_adc(cell("adc"), where),
        "truth": _parse_truth(cell("truth"), where),
        "id": cell("id") or f"line{line}",
        "entity": cell("entity"),
    }


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


# --- statistics ------------------------------------------------------------------------


def cohort_statistics(adc_values, is_malignant, cutoff: float) -> dict:
    """Confusion counts at `cutoff`, AUC, Youden cut-off and ROC for ADC (10^-3 mm^2/s).

    A lesion is called malignant (positive) when adc <= cutoff. The AUC is the probability
    that a random malignant lesion has a lower ADC than a random benign one, ties counting
    one half (Mann-Whitney U from mid-ranks). `roc` lists [fpr, tpr, threshold] for the rule
    adc <= threshold over every observed ADC, preceded by [0, 0, None] (nothing called).
    """
    adc = np.asarray(adc_values, dtype=float).ravel()
    malignant = np.asarray(is_malignant, dtype=bool).ravel()
    cutoff = _check_cutoff(cutoff)
    _check_arrays(adc, malignant)
    adc_mal, adc_ben = np.sort(adc[malignant]), np.sort(adc[~malignant])
    n_mal, n_ben = adc_mal.size, adc_ben.size

    tp, fp = _count_at_or_below(adc_mal, cutoff), _count_at_or_below(adc_ben, cutoff)
    thresholds = np.unique(adc)
    tp_all = np.searchsorted(adc_mal, thresholds, side="right")
    fp_all = np.searchsorted(adc_ben, thresholds, side="right")
    best = _youden_index(tp_all, fp_all, n_mal, n_ben)
    roc = [[0.0, 0.0, None]] + [
        [float(f) / n_ben, float(t) / n_mal, float(x)] for t, f, x in zip(tp_all, fp_all, thresholds)
    ]
    return {
        "cutoff": cutoff,
        "n_malignant": int(n_mal),
        "n_benign": int(n_ben),
        "tp": tp,
        "fn": int(n_mal - tp),
        "fp": fp,
        "tn": int(n_ben - fp),
        "sensitivity": tp / n_mal,
        "specificity": (n_ben - fp) / n_ben,
        "auc": auc_lower_is_positive(adc, malignant),
        "youden_cutoff": float(thresholds[best]),
        "youden_sensitivity": int(tp_all[best]) / n_mal,
        "youden_specificity": (n_ben - int(fp_all[best])) / n_ben,
        "roc": roc,
    }


def auc_lower_is_positive(adc: np.ndarray, malignant: np.ndarray) -> float:
    """P(ADC of a random malignant < ADC of a random benign) + 1/2 P(equal), via mid-ranks."""
    ranks = _mid_ranks(adc)
    n_mal, n_ben = int(malignant.sum()), int((~malignant).sum())
    # U of the benign lesions: pairs where the benign ADC is above the malignant one (+1/2 ties).
    u_benign = ranks[~malignant].sum() - n_ben * (n_ben + 1) / 2.0
    return float(u_benign / (n_mal * n_ben))


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (O(n log n))."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    group_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=float)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _youden_index(tp: np.ndarray, fp: np.ndarray, n_mal: int, n_ben: int) -> int:
    """Index of the threshold maximising sensitivity + specificity - 1; the lowest on ties.

    Compared in integers (J * n_mal * n_ben = tp * n_ben - fp * n_mal) so ties are exact.
    """
    scaled_j = tp.astype(np.int64) * n_ben - fp.astype(np.int64) * n_mal
    return int(np.argmax(scaled_j))


def _count_at_or_below(sorted_adc: np.ndarray, cutoff: float) -> int:
    return int(np.searchsorted(sorted_adc, cutoff, side="right"))


def _check_cutoff(cutoff) -> float:
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        raise InputError(f"ADC cut-off {cutoff!r} is not a number; give it in 10^-3 mm^2/s (e.g. 1.21)") from None
    if not (math.isfinite(value) and 0.0 < value < 5.0):
        raise InputError(f"ADC cut-off {cutoff} is outside 0-5 x 10^-3 mm^2/s; give it in 10^-3 mm^2/s (e.g. 1.21)")
    return value


def _check_arrays(adc: np.ndarray, malignant: np.ndarray) -> None:
    if adc.size != malignant.size:
        raise InputError(f"{adc.size} ADC values but {malignant.size} truth values; give one truth per lesion")
    if not np.all(np.isfinite(adc)) or np.any(adc < 0):
        raise InputError("ADC values must be finite and >= 0 (10^-3 mm^2/s); remove or fix the bad rows")
    n_mal, n_ben = int(malignant.sum()), int((~malignant).sum())
    if n_mal == 0 or n_ben == 0:
        missing = "malignant" if n_mal == 0 else "benign"
        raise InputError(
            f"the cohort has no {missing} lesions ({n_mal} malignant, {n_ben} benign), so sensitivity, "
            "specificity and AUC are undefined; include both malignant and benign lesions"
        )
    median = float(np.median(adc))
    if median > ADC_MEDIAN_MAX_1E3:
        raise InputError(
            f"median ADC {median:g} looks like 10^-6 mm^2/s (scanner units); divide the adc column by 1000 "
            "to give 10^-3 mm^2/s"
        )
    if median < ADC_MEDIAN_MIN_1E3:
        raise InputError(
            f"median ADC {median:g} looks like mm^2/s; multiply the adc column by 1000 to give 10^-3 mm^2/s"
        )


# --- per-entity summary ----------------------------------------------------------------


def entity_summary(rows: list, cutoff: float) -> list:
    """Per entity: n, ADC mean/sd/median/min/max (10^-3 mm^2/s), fraction called malignant.

    Rows without an entity are grouped by truth ("unspecified (benign)"). Entities are
    ordered by median ADC, lowest first. SD is the sample SD (n - 1), None for one lesion.
    """
    groups = {}
    for row in rows:
        groups.setdefault(_group_name(row), []).append(row)
    summary = [_summarise_group(name, members, cutoff) for name, members in groups.items()]
    summary.sort(key=lambda item: (item["adc_median"], item["entity"]))
    return summary


def _group_name(row: dict) -> str:
    return row["entity"] or f"unspecified ({row['truth']})"


def _summarise_group(name: str, members: list, cutoff: float) -> dict:
    adc = np.array([row["adc"] for row in members], dtype=float)
    truths = {row["truth"] for row in members}
    return {
        "entity": name,
        "truth": truths.pop() if len(truths) == 1 else "mixed",
        "n": int(adc.size),
        "adc_mean": float(adc.mean()),
        "adc_sd": float(adc.std(ddof=1)) if adc.size > 1 else None,
        "adc_median": float(np.median(adc)),
        "adc_min": float(adc.min()),
        "adc_max": float(adc.max()),
        "fraction_called_malignant": float(np.mean(adc <= cutoff)),
    }


ENTITY_COLUMNS = (
    "entity", "truth", "n", "adc_mean", "adc_sd", "adc_median", "adc_min", "adc_max",
    "fraction_called_malignant",
)


def write_entity_csv(summary: list, path: Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ENTITY_COLUMNS)
        for item in summary:
            writer.writerow([_csv_cell(item[column]) for column in ENTITY_COLUMNS])


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return value


# --- the command -----------------------------------------------------------------------


def run_cohort(csv_path, out_dir, cutoff=None, progress: Optional[ProgressCallback] = None) -> dict:
    """Read the cohort CSV, write cohort.json, cohort_roc.png, cohort_entities.csv/.png in out_dir.

    cutoff (10^-3 mm^2/s) None takes the criteria file's default (Kaur 2020: 1.21).
    Returns what cohort.json holds.
    """
    report = progress or (lambda fraction, text: None)
    report(0.0, "reading cohort")
    rows = read_cohort_csv(csv_path)
    cutoff_used, cutoff_info = _resolve_cutoff(cutoff)
    adc = np.array([row["adc"] for row in rows], dtype=float)
    malignant = np.array([row["truth"] == "malignant" for row in rows], dtype=bool)

    report(0.2, "computing statistics")
    stats = cohort_statistics(adc, malignant, cutoff_used)
    summary = entity_summary(rows, cutoff_used)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ["cohort.json", "cohort_entities.csv"]
    plots_note = ""
    try:
        import matplotlib  # noqa: F401  (Slicer does not bundle it)
    except ImportError:
        plots_note = ("plots not drawn: matplotlib is not installed (pip install matplotlib, or "
                      "slicer.util.pip_install('matplotlib') in Slicer); the numbers are complete")
    if not plots_note:
        report(0.4, "drawing ROC curve")
        plot_roc(stats, out / "cohort_roc.png")
        report(0.7, "drawing per-entity ADC")
        plot_entities(rows, summary, cutoff_used, out / "cohort_entities.png")
        files += ["cohort_roc.png", "cohort_entities.png"]
    write_entity_csv(summary, out / "cohort_entities.csv")

    result = dict(stats)
    result.update(cutoff_info)
    result.update({
        "adc_unit": "1e-3 mm2/s",
        "rule": "adc <= cutoff: called malignant (positive); adc > cutoff: called benign",
        "input": str(csv_path),
        "n_lesions": int(adc.size),
        "entities": summary,
        "files": files,
        "disclaimer": DISCLAIMER,
    })
    if plots_note:
        result["note"] = plots_note
    (out / "cohort.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    report(1.0, "done")
    return result


def _resolve_cutoff(cutoff) -> tuple:
    """The cut-off to use (10^-3 mm^2/s) and what cohort.json says about where it came from."""
    criteria = load_criteria()
    entry = criteria["adc_cutoff"]
    default_citation = f"{citation(criteria, entry['source'])} {entry.get('where', '')}".strip()
    if cutoff is None:
        return _check_cutoff(entry["value"]), {
            "cutoff_origin": "criteria file default",
            "cutoff_citation": default_citation,
        }
    return _check_cutoff(cutoff), {
        "cutoff_origin": "user",
        "cutoff_citation": f"user-supplied; the criteria default {entry['value']} is from {default_citation}",
    }


# --- plots -----------------------------------------------------------------------------


def plot_roc(stats: dict, path: Path) -> None:
    """ROC curve with the cut-off and Youden points marked and the AUC in the legend."""
    roc = np.array([[fpr, tpr] for fpr, tpr, _ in stats["roc"]], dtype=float)
    fig, ax = _new_figure(6, 6)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    ax.plot(roc[:, 0], roc[:, 1], color="tab:blue", linewidth=2.2, label=f"ADC ROC, AUC = {stats['auc']:.3f}")
    ax.plot(
        1 - stats["specificity"], stats["sensitivity"], "o", markersize=11, color="tab:red",
        markeredgecolor="black", zorder=5,
        label=(f"cut-off {stats['cutoff']:g}: sens {stats['sensitivity']:.1%} ({stats['tp']}/{stats['n_malignant']}), "
               f"spec {stats['specificity']:.1%} ({stats['tn']}/{stats['n_benign']})"),
    )
    ax.plot(
        1 - stats["youden_specificity"], stats["youden_sensitivity"], "D", markersize=9, color="tab:orange",
        markeredgecolor="black", zorder=6,
        label=(f"Youden {stats['youden_cutoff']:g}: sens {stats['youden_sensitivity']:.1%}, "
               f"spec {stats['youden_specificity']:.1%}"),
    )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.grid(True, color="0.9")
    ax.set_xlabel("1 - specificity (benign lesions called malignant)")
    ax.set_ylabel("sensitivity (malignant lesions called malignant)")
    ax.set_title(
        f"Malignant vs benign by ADC <= threshold\n"
        f"{stats['n_malignant']} malignant, {stats['n_benign']} benign lesions", fontsize=11,
    )
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.95)
    _save(fig, path)


def plot_entities(rows: list, summary: list, cutoff: float, path: Path) -> None:
    """ADC per entity: a box per entity, every lesion a dot coloured by its truth, the cut-off
    line and the called-malignant side shaded. Entities run from lowest median ADC at the top."""
    labels = _entity_labels()
    groups = [[row for row in rows if _group_name(row) == item["entity"]] for item in summary]
    values = [np.array([row["adc"] for row in group]) for group in groups]
    fig, ax = _new_figure(8, max(3.4, 0.55 * len(summary) + 2.0))
    positions = np.arange(len(summary))
    x_max = max(float(max(v.max() for v in values)), cutoff) * 1.08
    ax.axvspan(0, cutoff, color="tab:red", alpha=0.07, zorder=0)
    ax.boxplot(values, positions=positions, widths=0.55, showfliers=False, **_horizontal(),
               medianprops={"color": "black", "linewidth": 1.5}, boxprops={"color": "0.35"},
               whiskerprops={"color": "0.35"}, capprops={"color": "0.35"})
    jitter = np.random.default_rng(0)
    for position, group, adc in zip(positions, groups, values):
        y = position + jitter.uniform(-0.18, 0.18, adc.size)
        colours = [_truth_colour(row["truth"]) for row in group]
        ax.scatter(adc, y, s=22, c=colours, alpha=0.8, edgecolors="white", linewidths=0.5, zorder=3)
    ax.axvline(cutoff, color="tab:red", linestyle="--", linewidth=1.8, zorder=4)
    ax.set_yticks(positions)
    ax.set_yticklabels([f"{labels.get(item['entity'], item['entity'])} (n={item['n']})" for item in summary])
    ax.invert_yaxis()
    ax.set_xlim(0, x_max)
    ax.set_xlabel("lesion mean ADC (10^-3 mm^2/s)")
    ax.grid(True, axis="x", color="0.9")
    _entity_legend(ax, cutoff)
    _save(fig, path)


def _horizontal() -> dict:
    """Horizontal boxes: `orientation` from matplotlib 3.10 on, `vert` before (Slicer may bundle older)."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _truth_colour(truth: str) -> str:
    return {"malignant": "tab:red", "benign": "tab:blue"}.get(truth, "tab:purple")


def _entity_legend(ax, cutoff: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], marker="o", linestyle="", color=_truth_colour("malignant"), label="malignant lesion"),
        Line2D([], [], marker="o", linestyle="", color=_truth_colour("benign"), label="benign lesion"),
        Line2D([], [], color="tab:red", linestyle="--", linewidth=1.8, label=f"cut-off {cutoff:g}"),
        Patch(facecolor="tab:red", alpha=0.15, label="called malignant (ADC <= cut-off)"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, fontsize=8.5,
              frameon=False, borderaxespad=0.0)


def _entity_labels() -> dict:
    """Entity key -> readable label from the criteria file (e.g. hemangioma -> Haemangioma)."""
    try:
        return {key: value["label"] for key, value in load_criteria()["entities"].items()}
    except (InputError, KeyError):
        return {}


def _new_figure(width_in: float, height_in: float):
    """An Agg figure that touches no global pyplot state (safe inside Slicer's own Python)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(str(path))
