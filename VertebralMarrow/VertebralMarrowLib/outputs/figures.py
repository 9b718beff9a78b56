"""The pictures of one analysis for the report: per lesion a snapshot (rendering.py, no
plotting library) and an ADC histogram as inline SVG text; once per study the overview of all
lesions (its title and lesion list drawn by matplotlib) and the summary plot, inline SVG text.

matplotlib is imported inside the functions that need it (Agg canvas, never pyplot) so that
importing this module is fast and never changes pyplot's backend inside Slicer.
"""

from __future__ import annotations

import html
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.classes import BY_CODE, BY_KEY, classify_adc
from .rendering import (
    CLASS_OF_ROW, FIELD_OF_VIEW_MM, MARGIN_PX, OTHER_ROI_COLOR, REFERENCE_COLOR,
    Picture, Progress, RoiVoxels, SliceRenderer, View, _anatomy_volume, _backgrounds, _row_class_text, _display_window,
    _file_names, _image_words, _num, _rgb, _roles, _shorten, _with_outlines, roi_outlines, scale_bar_mm, snapshot_size,
    one_vtk_thread, view_boxes, write_views_png,
)

DPI = 100
LIST_LINE_MIN = 0.05  # of the overview's list panel (320 px): 16 px a line, legible at 9.5 pt


def write_pictures(scene, study, result, overlay_node, out_dir, progress: Progress = None) -> List[Picture]:
    """An overview of all lesions; per lesion one snapshot (axial and sagittal through its
    centre, on T2 or STIR above and on the ADC map below) and its ADC histogram (inline SVG);
    the summary plot (inline SVG). Per lesion no plotting library: milliseconds each, flat in
    the count."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda fraction, text: None)
    rows = {row["segment"]: row for row in result.rows}
    lesions = [d for d in result.segments if d["role"] == "lesion"]
    voxels = RoiVoxels(result)
    names = _file_names([d["name"] for d in lesions])
    plotting = _matplotlib_available()
    pictures: List[Picture] = []

    report(0.0, "snapshots")
    outline_grid = _anatomy_volume(study)[1]
    outline_grid = outline_grid if outline_grid is not None else result.adc_node
    exported = result.rois_on_grids.get(outline_grid.GetID()) if outline_grid is not result.adc_node else result.rois_on_adc
    all_ids = [d["id"] for d in result.segments]
    backgrounds = _backgrounds(study, result)
    images = [label for label, _, _ in backgrounds]
    centres = {d["id"]: voxels.centre_ras(d["id"]) for d in lesions}
    # One renderer per background and orientation, each background in its display window for
    # the whole loop: no slice logic switches volume or plane. The PNGs are painted and
    # compressed by a worker thread (zlib lets go of the GIL) while the next lesion is drawn.
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=1) as writer:
        stack.enter_context(one_vtk_thread())
        outlines = stack.enter_context(roi_outlines(scene, study.segmentation, all_ids, outline_grid, exported))
        renderers = []
        for label, node, window in backgrounds:
            stack.enter_context(_display_window(node, window))
            for orientation in ("Axial", "Sagittal"):
                renderer = stack.enter_context(SliceRenderer(scene, overlay_node))
                renderer.set_outlines(outlines)
                renderers.append((label, node, orientation, renderer))
        if lesions:
            pictures.append(_overview(renderers[0], centres, result, out / "overview.png", plotting))
        writing = None
        for index, detail in enumerate(lesions):
            report(0.05 + 0.75 * index / max(len(lesions), 1), f"snapshot of {detail['name']}")
            views = [renderer.render(node, orientation, centres[detail["id"]], detail["id"], label)
                     for label, node, orientation, renderer in renderers]
            if writing is not None:
                writing.result()  # one lesion's pixels in flight at most; a write error is raised here
            path = out / f"snapshot_{names[detail['name']]}.png"
            writing = writer.submit(write_views_png, views, path, result)
            pictures.append(_lesion_snapshot(views, images, rows[detail["name"]], result, path))
        if writing is not None:
            writing.result()

    report(0.8, "ADC histograms")
    reference_adc = _reference_adc(result)
    for detail in lesions:
        values = voxels.adc_values(detail["id"])
        if values.size:  # a ROI without ADC voxel centres (no DWI signal, a small focus) has no histogram
            pictures.append(histogram_picture(values, rows[detail["name"]], result, reference_adc))
    report(0.95, "summary plot")
    pictures.append(summary_picture(result))
    report(1.0, "pictures written")
    return pictures


def _lesion_snapshot(views: List[View], images: List[str], row: dict, result, path: Path) -> Picture:
    """The lesion's views (written to `path` by rendering.write_views_png); what they show is the caption."""
    name = row["segment"]
    class_text = _row_class_text(row, result)
    adc_text = f"mean ADC {_num(row['adc_mean'])} ± {_num(row['adc_sd'])} ×10⁻³ mm²/s"
    shown = " and ".join(_image_words(image) for image in images)
    order = ", ".join(f"{image} {orientation}" for image in images for orientation in ("axial", "sagittal"))
    letters = views[0].edge_letters
    caption = (f"{name}: {class_text}; {adc_text}, {row['n_voxels_adc']} ADC voxels. Axial and sagittal through the "
               f"lesion centre on {shown} ({order}; axial: patient {letters[0]} at the left, {letters[2]} at the top; "
               f"sagittal: {views[1].edge_letters[0]} at the left). Overlay at 50 % opacity: blue normal-marrow range, "
               f"red malignant-range, yellow indeterminate, green benign-range; white outline the lesion, blue dashed the normal-marrow reference; "
               f"bar {scale_bar_mm(views[0]):g} mm.")
    return Picture(path=path, caption=caption, kind="snapshot", segment=name)


def _overview(background, centres: Dict[str, np.ndarray], result, path: Path, plotting: bool) -> Picture:
    """Every lesion at a glance: a coronal view through the middle of the lesions, wide enough
    to hold all their centres, each lesion named beside it, and the list of lesions by class.
    `background`: (label, volume, orientation, a renderer of it)."""
    label, node, _, renderer = background
    points = np.array(list(centres.values()))
    middle = (points.min(axis=0) + points.max(axis=0)) / 2.0
    field = max(FIELD_OF_VIEW_MM, float(np.max(points.max(axis=0) - points.min(axis=0))) + 60.0)
    view = renderer.render(node, "Coronal", middle, "", label, field)
    under = _image_words(label)
    if plotting:
        title = "All lesions: their ADC tiers on the image"
        subtitle = f"Coronal through the middle of the lesions on {under}; right: each lesion's mean ADC and class"
        _draw_snapshot([view], title, subtitle, "", result, path, panel=_lesion_list)
    else:
        write_views_png([view], path, result)
    caption = (f"Overview on {under}: coronal through the middle of the lesions; overlay colours are the ADC tiers "
               f"(cut-off {_num(result.options.adc_cutoff)}), each lesion painted as it is read (signs first, then its "
               f"ADC); beside it each lesion's mean ADC and class.")
    return Picture(path=path, caption=caption, kind="snapshot", segment="")


def _draw_snapshot(views: List[View], title: str, subtitle: str, adc_class: str, result, path: Path,
                   panel: Optional[Callable] = None) -> None:
    """Views pasted pixel for pixel, a title with the class swatch above, the legend below;
    `panel` draws into a box the size of one more view (the overview's lesion list)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pixels = views[0].rgb.shape[0]
    count = len(views) + (1 if panel else 0)
    width, height = snapshot_size(count, pixels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    names = {d["id"]: d["name"] for d in result.segments}
    roles = _roles(result)
    boxes = view_boxes(count, pixels)
    for view, (left, top, right, bottom) in zip(views, boxes):
        axes = figure.add_axes([left / width, 1.0 - bottom / height, (right - left) / width, (bottom - top) / height])
        _draw_view(axes, view, names, roles, label_lesions=panel is not None)
    if panel is not None:
        left, top, right, bottom = boxes[-1]
        panel(figure.add_axes([left / width, 1.0 - bottom / height, (right - left) / width, (bottom - top) / height]), result)
    x = MARGIN_PX / width
    if adc_class in CLASS_OF_ROW:  # a swatch of the lesion's class colour before its title
        figure.add_artist(_swatch(figure, x, 1.0 - 31 / height, 18 / width, 18 / height, _rgb(CLASS_OF_ROW[adc_class])))
        x += 26 / width
    figure.text(x, 1.0 - 22 / height, _plain(title), fontsize=15, fontweight="bold", va="center", color="#111111")
    figure.text(MARGIN_PX / width, 1.0 - 48 / height, _plain(subtitle), fontsize=10, va="center", color="#333333")
    _draw_legend(figure, width, height, result)
    _save(figure, path)


def _draw_view(axes, view: View, names: Dict[str, str], roles: Dict[str, str], label_lesions: bool) -> None:
    pixels = view.rgb.shape[0]
    axes.imshow(_with_outlines(view, roles), interpolation="none", extent=(-0.5, pixels - 0.5, pixels - 0.5, -0.5))
    axes.set_xlim(-0.5, pixels - 0.5)
    axes.set_ylim(pixels - 0.5, -0.5)
    axes.set_axis_off()
    if label_lesions:
        _name_lesions(axes, view, names, roles)
    text = dict(color="white", fontsize=11, fontweight="bold", ha="center", va="center")
    left, right, top, bottom = view.edge_letters
    axes.text(12, pixels / 2, left, **text)
    axes.text(pixels - 12, pixels / 2, right, **text)
    axes.text(pixels / 2, 12, top, **text)
    axes.text(pixels / 2, pixels - 12, bottom, **text)
    axes.text(8, 8, f"{view.image} {view.orientation.lower()}".strip(), color="#ffd27f", fontsize=10.5,
              fontweight="bold", ha="left", va="top")
    _scale_bar(axes, view, pixels)


def _name_lesions(axes, view: View, names: Dict[str, str], roles: Dict[str, str]) -> None:
    """Each lesion's name beside it, on the outer side of the view so names stay off the spine."""
    pixels = view.rgb.shape[0]
    for code, sid in view.roi_ids.items():
        rows, columns = np.nonzero(view.rois == code)
        if roles.get(sid) != "lesion" or rows.size == 0:
            continue
        right_side = columns.mean() >= pixels / 2
        x = columns.max() + 8 if right_side else columns.min() - 8
        axes.text(x, rows.mean(), _plain(names.get(sid, sid)), color="white", fontsize=8.5, va="center",
                  ha="left" if right_side else "right", fontweight="bold",
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.6, linewidth=0))


def _lesion_list(axes, result) -> None:
    """The overview's right panel: every lesion with its class swatch, mean ADC and class."""
    from matplotlib.patches import Rectangle

    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    lesions = result.lesion_rows
    axes.text(0.02, 0.985, "Lesion · mean ADC (×10⁻³ mm²/s) · class", fontsize=10, fontweight="bold", va="top")
    step = max(min(0.075, 0.78 / max(len(lesions), 1)), LIST_LINE_MIN)  # room below for the note
    lines = int(0.78 / step + 1e-9)
    if len(lesions) > lines:  # lines no closer than can be read: the rest are in the results table
        axes.text(0.09, 0.92 - (lines - 1) * step, f"… and {len(lesions) - lines + 1} more: see the results table",
                  fontsize=9.5, va="center", color="#444444")
        lesions = lesions[:lines - 1]
    for n, row in enumerate(lesions):
        y = 0.92 - n * step
        value = CLASS_OF_ROW.get(row["adc_class"])
        if value is not None:
            axes.add_patch(Rectangle((0.02, y - 0.018), 0.045, 0.036, facecolor=_rgb(value), edgecolor="#333333", linewidth=0.5))
        axes.text(0.09, y, _plain(_shorten(row["segment"], 22)), fontsize=9.5, va="center")
        axes.text(0.53, y, _num(row["adc_mean"]), fontsize=9.5, va="center", ha="right", fontweight="bold")
        axes.text(0.57, y, BY_KEY[row["adc_class"]].label if row["adc_class"] in BY_KEY else row["adc_class"], fontsize=9, va="center")
    axes.text(0.02, 0.92 - min(len(result.lesion_rows), lines) * step - 0.02,
              _plain(f"Class: the fat, density and heterogeneity signs first,\n"
                     f"then the mean ADC's tier (cut-off {_num(result.options.adc_cutoff)}, Kaur 2020)."),
              fontsize=8.5, color="#444444", va="top")


def _scale_bar(axes, view: View, pixels: int) -> None:
    length_mm = 20.0 if view.mm_per_pixel * pixels < 200 else 50.0
    length = length_mm / view.mm_per_pixel
    x1, y = pixels - 16, pixels - 30
    axes.plot([x1 - length, x1], [y, y], color="white", linewidth=2.5, solid_capstyle="butt")
    axes.text(x1 - length / 2, y - 5, f"{length_mm:g} mm", color="white", fontsize=8.5, ha="center", va="bottom")


def _draw_legend(figure, width: int, height: int, result) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    options = result.options
    marrow_max = options.marrow_max_or_none
    cutoff, band = options.adc_cutoff, options.indeterminate_band
    handles = []
    if marrow_max:
        handles.append(Patch(facecolor=_rgb(4), label=f"marrow ≤ {_num(marrow_max)}"))
    handles.append(Patch(facecolor=_rgb(3), label=f"malignant ≤ {_num(cutoff - band)}"))
    if band > 0:
        handles.append(Patch(facecolor=_rgb(2), label=f"indet. {_num(cutoff - band)}–{_num(cutoff + band)}"))
    handles.append(Patch(facecolor=_rgb(1), label=f"benign > {_num(cutoff + band)}"))
    handles += [
        Line2D([], [], color="#222222", linewidth=1.6, label="lesion"),
        Line2D([], [], color=REFERENCE_COLOR, linewidth=1.6, linestyle="--", label="reference"),
    ]
    figure.legend(handles=handles, loc="lower left", bbox_to_anchor=(MARGIN_PX / width, 6 / height),
                  ncol=len(handles), frameon=False, fontsize=8, handlelength=1.0, handletextpad=0.4, columnspacing=0.7)
    figure.text(1.0 - MARGIN_PX / width, 38 / height, "ADC in ×10⁻³ mm²/s; overlay at 50 % opacity",
                fontsize=8, color="#555555", ha="right", va="bottom")


def _save(figure, path: Path) -> None:
    # zlib level 3: half the encoding time of the default 6 for files about 15 % larger
    figure.savefig(path, dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 3})


def _swatch(figure, x: float, y: float, w: float, h: float, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, transform=figure.transFigure, facecolor=color, edgecolor="#333333", linewidth=0.6)


# --- plots --------------------------------------------------------------------------------


HISTOGRAM_BIN = 0.05  # 10^-3 mm^2/s


def histogram_bins(values: np.ndarray, cutoff: float, width: float = HISTOGRAM_BIN) -> Tuple[np.ndarray, np.ndarray]:
    """Bin centres and counts of ADC values; bin edges fall on the cut-off so that each bar
    lies wholly on one side of it."""
    if values.size == 0:
        return np.zeros(0), np.zeros(0, int)
    low = cutoff - width * np.ceil((cutoff - min(float(values.min()), 0.0)) / width)
    high = cutoff + width * np.ceil((max(float(values.max()), cutoff) - cutoff) / width + 1e-9)
    edges = np.arange(low, high + width / 2, width)
    counts, edges = np.histogram(values, edges)
    return (edges[:-1] + edges[1:]) / 2.0, counts


def histogram_picture(values: np.ndarray, row: dict, result, reference_adc: Optional[Tuple[str, float]]) -> Picture:
    """The ADC of a lesion's voxels as an inline SVG for the report: bars in the colour of the
    ADC tier of their centre, the cut-off, the lesion's mean and the normal marrow."""
    cutoff, band = result.options.adc_cutoff, result.options.indeterminate_band
    fraction = row.get("fraction_at_or_below_cutoff")
    share = f"; {fraction:.0%} of voxels at or below the cut-off" if fraction is not None else ""
    caption = (f"{row['segment']}: ADC histogram of {values.size} voxels with the cut-off {_num(cutoff)}"
               + (f" and the normal-marrow mean {_num(reference_adc[1])}" if reference_adc else "") + share + ".")
    svg = histogram_svg(values, cutoff, band, row["adc_mean"], reference_adc, result.options.marrow_max_or_none)
    return Picture(path=None, caption=caption, kind="histogram", segment=row["segment"], svg=svg)


def histogram_svg(values: np.ndarray, cutoff: float, band: float, mean: Optional[float],
                  reference_adc: Optional[Tuple[str, float]], marrow_max: Optional[float] = None,
                  width: int = 560, height: int = 250) -> str:
    """SVG text of an ADC histogram (x: ADC in 10^-3 mm^2/s from 0; y: voxels). Each bar
    carries its range and count in a <title> (a tooltip, and what tests read)."""
    left, right, top, bottom = 48, 12, 34, 38
    centres, counts = histogram_bins(values, cutoff)
    top_adc = max(float(values.max()) if values.size else 0.0, cutoff, reference_adc[1] if reference_adc else 0.0)
    x_max = max(2.6, top_adc + 0.2)
    y_max = max(int(counts.max()) if counts.size else 1, 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(adc):
        return left + plot_w * adc / x_max

    def y(count):
        return top + plot_h * (1.0 - count / y_max)

    parts = [f'<svg class="histogram" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" font-family="sans-serif" font-size="11">']
    bar = plot_w * HISTOGRAM_BIN / x_max
    codes = classify_adc(centres, cutoff, band, marrow_max) if centres.size else []
    for centre, count, code in zip(centres, counts, codes):
        if count == 0:
            continue
        parts.append(f'<rect x="{x(centre) - bar / 2:.1f}" y="{y(count):.1f}" width="{bar:.1f}" height="{y(0) - y(count):.1f}" '
                     f'fill="{BY_CODE[int(code)].hex}" stroke="white" stroke-width="0.5"><title>ADC {centre - HISTOGRAM_BIN / 2:.2f}'
                     f'–{centre + HISTOGRAM_BIN / 2:.2f}: {int(count)} voxels</title></rect>')
    parts.append(f'<line x1="{left}" y1="{y(0)}" x2="{width - right}" y2="{y(0)}" stroke="#444"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(0)}" stroke="#444"/>')
    for tick in np.arange(0.0, x_max + 1e-9, 0.5):
        parts.append(f'<text x="{x(tick):.1f}" y="{y(0) + 14:.1f}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{y_max}</text>'
                 f'<text x="{left - 6}" y="{y(0):.1f}" text-anchor="end">0</text>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">ADC (×10⁻³ mm²/s)</text>'
                 f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" transform="rotate(-90 12 {top + plot_h / 2:.1f})">voxels</text>')
    markers = [(cutoff, "#222222", "6 4", f"cut-off {_num(cutoff)} (Kaur 2020)")]
    if mean is not None:
        markers.append((mean, "#222222", "", f"lesion mean {_num(mean)}"))
    if reference_adc is not None:
        markers.append((reference_adc[1], REFERENCE_COLOR, "2 3", f"normal marrow {_num(reference_adc[1])}"))
    for n, (value, colour, dash, label) in enumerate(markers):
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{x(value):.1f}" y1="{top}" x2="{x(value):.1f}" y2="{y(0):.1f}" stroke="{colour}" stroke-width="1.6"{dashes}/>'
                     f'<line x1="{left + 170 * n}" y1="12" x2="{left + 170 * n + 18}" y2="12" stroke="{colour}" stroke-width="1.6"{dashes}/>'
                     f'<text x="{left + 170 * n + 22}" y="16">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def summary_picture(result) -> Picture:
    """Every ROI's mean ADC (± SD) against the published entity ranges and the cut-off, as
    inline SVG text: one row per ROI, so it costs microseconds per ROI and stays sharp."""
    cutoff = result.options.adc_cutoff
    caption = (f"Mean ADC (± SD) of every ROI against the published entity ranges (criteria and citations below) "
               f"and the cut-off {_num(cutoff)}; lesions coloured by class.")
    return Picture(path=None, caption=caption, kind="summary", svg=summary_svg(result))


def summary_svg(result, width: int = 800, row_px: int = 20) -> str:
    """SVG text of the summary (x: mean ADC in 10^-3 mm^2/s from 0). Each ROI's point carries
    its name, mean and SD in a <title> (a tooltip, and what tests read)."""
    cutoff, band = result.options.adc_cutoff, result.options.indeterminate_band
    entities = sorted(result.options.criteria["entities"].values(), key=lambda e: e["adc"]["mean"])
    rows = [row for row in result.rows if row["adc_mean"] is not None]
    left, right_margin, top, gap = 270, 70, 58, 34  # 270 px: about 42 characters of label
    x_max = max([cutoff + 0.5] + [e["adc"]["mean"] + e["adc"]["sd"] for e in entities]
                + [r["adc_mean"] + (r["adc_sd"] or 0.0) for r in rows]) + 0.3
    plot_w = width - left - right_margin

    def x(adc):
        return left + plot_w * max(adc, 0.0) / x_max

    def entity_y(n):
        return top + row_px * (n + 0.5)

    def roi_y(n):
        return top + row_px * len(entities) + gap + row_px * (n + 0.5)

    axis_y = roi_y(len(rows) - 0.5) + 6
    legend = _summary_legend_items(cutoff, band, result.options.marrow_max_or_none)
    height = int(axis_y + 44 + 18 * -(-len(legend) // 4) + 8)
    parts = [f'<svg class="summary" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'font-family="sans-serif" font-size="11">',
             '<text x="8" y="18" font-size="14" font-weight="bold">Mean ADC of every ROI against the published '
             'entity ranges</text>']
    heading = '<text x="8" y="{:.1f}" font-weight="bold" fill="#444">{}</text>'
    parts.append(heading.format(top - 8, "Published entity ranges (mean ± SD)"))
    for n, entity in enumerate(entities):
        mean, sd, y = entity["adc"]["mean"], entity["adc"]["sd"], entity_y(n)
        parts.append(f'<g><title>{html.escape(entity["label"])}: ADC {mean:.2f} ± {sd:.2f}</title>'
                     f'<rect x="{x(mean - sd):.1f}" y="{y - 7:.1f}" width="{x(mean + sd) - x(mean - sd):.1f}" height="14" '
                     f'fill="{_entity_tint(entity)}"/><line x1="{x(mean):.1f}" y1="{y - 7:.1f}" x2="{x(mean):.1f}" '
                     f'y2="{y + 7:.1f}" stroke="#444" stroke-width="1.4"/>'
                     f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{html.escape(_shorten(entity["label"], 42))}</text></g>')
    split = top + row_px * len(entities) + gap / 2
    parts.append(f'<line x1="8" y1="{split:.1f}" x2="{width - 8}" y2="{split:.1f}" stroke="#bbb"/>')
    parts.append(heading.format(split + 14, "ROIs of this study (mean ± SD)"))
    for n, row in enumerate(rows):
        mean, sd, y = row["adc_mean"], row["adc_sd"] or 0.0, roi_y(n)
        colour = _roi_hex(row)
        name = str(row["segment"])
        parts.append(f'<g class="roi"><title>{html.escape(name)}: mean ADC {_num(mean)} ± {_num(sd)} ×10⁻³ mm²/s, '
                     f'{html.escape(_row_class_text(row, result))}</title>'
                     f'<line x1="{x(mean - sd):.1f}" y1="{y:.1f}" x2="{x(mean + sd):.1f}" y2="{y:.1f}" stroke="{colour}" '
                     f'stroke-width="1.6"/>'
                     + "".join(f'<line x1="{x(end):.1f}" y1="{y - 4:.1f}" x2="{x(end):.1f}" y2="{y + 4:.1f}" '
                               f'stroke="{colour}" stroke-width="1.6"/>' for end in (mean - sd, mean + sd))
                     + f'<circle cx="{x(mean):.1f}" cy="{y:.1f}" r="4.5" fill="{colour}" stroke="#222"/>'
                     f'<text x="{x(mean + sd) + 6:.1f}" y="{y + 4:.1f}" fill="#333" font-size="10" stroke="white" '
                     f'stroke-width="3" paint-order="stroke">{_num(mean)}</text>'
                     f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{html.escape(_shorten(name, 42))}</text></g>')
    parts.append(f'<line x1="{left}" y1="{axis_y:.1f}" x2="{left + plot_w}" y2="{axis_y:.1f}" stroke="#444"/>')
    for tick in np.arange(0.0, x_max + 1e-9, 0.5):
        parts.append(f'<line x1="{x(tick):.1f}" y1="{axis_y:.1f}" x2="{x(tick):.1f}" y2="{axis_y + 4:.1f}" stroke="#444"/>'
                     f'<text x="{x(tick):.1f}" y="{axis_y + 16:.1f}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{axis_y + 32:.1f}" text-anchor="middle">'
                 f'mean ADC (×10⁻³ mm²/s)</text>')
    parts.append(f'<line x1="{x(cutoff):.1f}" y1="{top - 4}" x2="{x(cutoff):.1f}" y2="{axis_y:.1f}" stroke="#222" '
                 f'stroke-width="1.4" stroke-dasharray="6 4"/>'
                 f'<text x="{x(cutoff) + 4:.1f}" y="{top - 8}" fill="#222">cut-off {_num(cutoff)}</text>')
    for n, (kind, colour, label) in enumerate(legend):
        lx, ly = 8 + 198 * (n % 4), axis_y + 52 + 18 * (n // 4)
        swatch = {"dash": f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{colour}" '
                          f'stroke-width="1.4" stroke-dasharray="6 4"/>',
                  "box": f'<rect x="{lx}" y="{ly - 10}" width="18" height="12" fill="{colour}"/>',
                  "point": f'<circle cx="{lx + 9}" cy="{ly - 4}" r="4.5" fill="{colour}" stroke="#222"/>'}[kind]
        parts.append(swatch + f'<text x="{lx + 24}" y="{ly}" font-size="10.5">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _entity_tint(entity: dict) -> str:
    return "#f4b6b6" if entity.get("malignant") else "#b9e4c4"


def _summary_legend_items(cutoff: float, band: float, marrow_max: Optional[float] = None) -> list:
    """(swatch kind, colour, label) of the summary's legend."""
    items = [
        ("dash", "#222222", f"cut-off {_num(cutoff)} (Kaur 2020)"),
        ("box", _entity_tint({"malignant": True}), "malignant entity"),
        ("box", _entity_tint({"malignant": False}), "benign entity"),
        ("point", BY_KEY["malignant"].hex, "lesion, malignant-range"),
        ("point", BY_KEY["benign"].hex, "lesion, benign-range"),
        ("point", REFERENCE_COLOR, "normal-marrow reference"),
        ("point", OTHER_ROI_COLOR, "other ROI (disc, muscle)"),
    ]
    if band > 0:
        items.insert(5, ("point", BY_KEY["indeterminate"].hex, "lesion, indeterminate"))
    if marrow_max:
        items.insert(3, ("point", BY_KEY["marrow"].hex, "lesion, normal-marrow range"))
    return items


def _roi_hex(row: dict) -> str:
    if row["role"] == "lesion":
        return BY_KEY[row["adc_class"]].hex if row["adc_class"] in CLASS_OF_ROW else OTHER_ROI_COLOR
    return REFERENCE_COLOR if row["role"] == "reference" else OTHER_ROI_COLOR


def _reference_adc(result) -> Optional[Tuple[str, float]]:
    """(names, voxel-weighted mean ADC) of the normal-marrow reference ROIs."""
    references = [row for row in result.rows if row["role"] == "reference" and row["adc_mean"] is not None]
    count = sum(row["n_voxels_adc"] for row in references)
    if not count:
        return None
    mean = sum(row["adc_mean"] * row["n_voxels_adc"] for row in references) / count
    return ", ".join(row["segment"] for row in references), mean


def _plain(text: str) -> str:
    """Text for matplotlib as typed: '$' would otherwise start mathtext (segment names are free text)."""
    return str(text).replace("$", r"\$")


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # a bare Slicer: snapshots without text, no plots (chart nodes still work)
        return False
    return True
