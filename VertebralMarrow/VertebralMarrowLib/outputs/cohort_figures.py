"""Cohort figures: the ROC curve and lesion ADC by entity (matplotlib, optional).

matplotlib is imported inside the functions that draw, on an Agg canvas that touches no
global pyplot state; `matplotlib_available` lets the caller skip the figures and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.cohort import group_name
from ..core.criteria import load_criteria
from ..errors import InputError


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_roc(stats: dict, path: Path) -> None:
    """ROC curve with the cut-off and Youden points marked, the AUC (and the 95 % intervals
    when `stats` has the `*_ci` pairs) in the legend."""
    roc = np.array([[fpr, tpr] for fpr, tpr, _ in stats["roc"]], dtype=float)
    fig, ax = _new_figure(6, 6)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    ax.plot(roc[:, 0], roc[:, 1], color="tab:blue", linewidth=2.2, label=f"ADC ROC, AUC = {stats['auc']:.3f}{_ci_text(stats, 'auc')}")
    ax.plot(
        1 - stats["specificity"], stats["sensitivity"], "o", markersize=11, color="tab:red",
        markeredgecolor="black", zorder=5,
        label=(f"cut-off {stats['cutoff']:g}: sens {stats['sensitivity']:.1%} ({stats['tp']}/{stats['n_malignant']}), "
               f"spec {stats['specificity']:.1%} ({stats['tn']}/{stats['n_benign']})"),
    )
    ax.plot(
        1 - stats["youden_specificity"], stats["youden_sensitivity"], "D", markersize=9, color="tab:orange",
        markeredgecolor="black", zorder=6,
        label=(f"Youden {stats['youden_cutoff']:g}{_ci_text(stats, 'youden_cutoff', '{:.2f}')}: sens {stats['youden_sensitivity']:.1%}, "
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


def _ci_text(stats: dict, key: str, style: str = "{:.3f}") -> str:
    interval = stats.get(f"{key}_ci")
    if not interval:
        return ""
    return f" (95% CI {style.format(interval[0])}-{style.format(interval[1])})"


def plot_entities(rows: list, summary: list, cutoff: float, path: Path) -> None:
    """ADC per entity: a box per entity, every lesion a dot coloured by its truth, the cut-off
    line and the called-malignant side shaded. Entities run from lowest median ADC at the top."""
    labels = _entity_labels()
    groups = [[row for row in rows if group_name(row) == item["entity"]] for item in summary]
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
