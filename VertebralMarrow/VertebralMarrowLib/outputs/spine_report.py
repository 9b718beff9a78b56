"""What `spine` writes: spine.csv (the interface's columns), spine.json (the same rows plus
discs, lesions placed at their level, the reference, criteria and warnings), spine.png (ADC per
level against the normal-marrow band; vertebrae coloured by tier on a sagittal view) and
spine.html, a page a radiologist reads."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import List

import numpy as np

from ..core.classes import BY_KEY
from ..mrml import ijk_to_ras_of, segment_ids, segment_name, write_node
from ..spine_analysis import SPINE_COLUMNS, SpineResult
from .cells import cell, json_value, write_csv

SPINE_SCENE = "spine.mrml"
SPINE_DATA = "spine-data"
PLANE_STEP_MM = 1.0
PLANE_MARGIN_MM = 25.0


def spine_document(result: SpineResult) -> dict:
    def clean(row: dict) -> dict:
        return {key: json_value(value) for key, value in row.items() if key not in ("roi", "label")}

    return {
        "disclaimer": result.disclaimer,
        "version": result.version,
        "columns": list(SPINE_COLUMNS),
        "rows": [clean(row) for row in result.rows],
        "discs": [clean(row) for row in result.discs],
        "lesions": result.lesions,
        "reference": {key: json_value(value) for key, value in result.reference.items()},
        "adc": {"source": result.adc_source, "units": result.adc_units},
        "criteria": result.criteria,
        "references": {key: result.options.criteria["references"][key]
                       for key in ("koutoulidis2017", "messiou2011", "genant1993", "kaur2020")},
        "warnings": result.warnings,
    }


def write_spine_outputs(result: SpineResult, out_dir) -> List[Path]:
    """spine.csv, spine.json, spine.png and spine.html in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "spine.csv", SPINE_COLUMNS, result.rows)
    document = spine_document(result)
    (out / "spine.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    written = [out / "spine.csv", out / "spine.json"]
    picture = write_spine_picture(result, out / "spine.png")
    if picture is not None:
        written.append(picture)
    written.append(write_spine_page(document, out / "spine.html", picture))
    return written


def sagittal_plane(result: SpineResult):
    """ADC and vertebra-ROI index sampled (nearest voxel) on the sagittal plane through the
    marrow ROIs' mean R; rows run superior to inferior, columns anterior to posterior."""
    grid = ijk_to_ras_of(result.adc_node)
    k, j, i = np.nonzero(result.marrow_on_adc)
    if k.size == 0:
        return None
    points = (grid[:3, :3] @ np.vstack([i, j, k]).astype(float)).T + grid[:3, 3]
    r = points[:, 0].mean()
    a_values = np.arange(points[:, 1].max() + PLANE_MARGIN_MM, points[:, 1].min() - PLANE_MARGIN_MM, -PLANE_STEP_MM)
    s_values = np.arange(points[:, 2].max() + PLANE_MARGIN_MM, points[:, 2].min() - PLANE_MARGIN_MM, -PLANE_STEP_MM)
    a, s = np.meshgrid(a_values, s_values)
    ras = np.vstack([np.full(a.size, r), a.ravel(), s.ravel(), np.ones(a.size)])
    ijk = np.rint(np.linalg.inv(grid) @ ras)[:3].astype(np.int64)
    shape = result.adc_map.shape
    valid = (ijk[0] >= 0) & (ijk[0] < shape[2]) & (ijk[1] >= 0) & (ijk[1] < shape[1]) & (ijk[2] >= 0) & (ijk[2] < shape[0])
    adc = np.full(a.size, np.nan)
    roi = np.zeros(a.size, np.int32)
    adc[valid] = result.adc_map[ijk[2, valid], ijk[1, valid], ijk[0, valid]]
    roi[valid] = result.marrow_on_adc[ijk[2, valid], ijk[1, valid], ijk[0, valid]]
    return adc.reshape(a.shape), roi.reshape(a.shape), (a_values[0], a_values[-1], s_values[-1], s_values[0])


def write_spine_picture(result: SpineResult, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # Slicer lacks matplotlib: the table and the page still say everything
        result.warnings.append("matplotlib is not available: spine.png not drawn")
        return None
    marrow_max = result.criteria["marrow_max"]
    figure, (chart, view) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [3, 2]})
    rows = [row for row in result.rows if row["adc_mean"] is not None]
    positions = np.arange(len(rows))
    top = max([row["adc_p90"] for row in rows] + [marrow_max * 1.5, 1.0]) * 1.1
    chart.axhspan(0, marrow_max, color=BY_KEY["marrow"].hex, alpha=0.15,
                  label=f"normal-marrow range (<= {marrow_max:g}, Koutoulidis 2017)")
    if result.reference["adc_mean"] is not None:
        chart.axhline(result.reference["adc_mean"], color="0.3", linestyle="--", linewidth=1,
                      label=f"this spine's reference ({result.reference['how']}): {result.reference['adc_mean']:.3f}")
    for x, row in zip(positions, rows):
        colour = BY_KEY[row["tier"]].hex if row["tier"] in BY_KEY else "0.5"
        chart.plot([x, x], [row["adc_p10"], row["adc_p90"]], color=colour, linewidth=2)
        chart.scatter([x], [row["adc_mean"]], color=colour, s=60, zorder=3, edgecolor="black")
        if row["flags"]:
            chart.annotate(row["flags"].replace(";", "\n"), (x, row["adc_p90"]), textcoords="offset points",
                           xytext=(0, 4), ha="center", fontsize=7)
    chart.set_xticks(positions, [row["level"] for row in rows])
    chart.set_ylim(0, top)
    chart.set_ylabel("marrow ADC, 10^-3 mm^2/s (mean; bar p10-p90)")
    chart.set_title("ADC per vertebra")
    chart.legend(loc="upper right", fontsize=8)
    plane = sagittal_plane(result)
    if plane is not None:
        adc, roi, extent = plane
        view.imshow(np.nan_to_num(adc), cmap="gray", vmin=0, vmax=2.0, extent=extent, aspect="equal")
        colours = np.zeros(roi.shape + (4,))
        for n, row in enumerate(result.rows, 1):
            tier = BY_KEY.get(row["tier"])
            if tier is not None:
                colours[roi == n] = tier.rgba[:3] + (0.6,)
            where = np.nonzero(roi == n)
            if where[0].size:
                a_mm = extent[0] + (extent[1] - extent[0]) * where[1].mean() / max(roi.shape[1] - 1, 1)
                s_mm = extent[3] + (extent[2] - extent[3]) * where[0].mean() / max(roi.shape[0] - 1, 1)
                view.text(a_mm, s_mm, row["level"], color="white", fontsize=8, ha="center", va="center")
        view.imshow(colours, extent=extent, aspect="equal")
        view.set_xlabel("A  <-  mm  ->  P")
        view.set_ylabel("S (mm)")
    view.set_title("Sagittal: marrow ROIs by tier")
    figure.suptitle("Whole spine: marrow ADC per level. " + result.disclaimer, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_spine_page(document: dict, path: Path, picture) -> Path:
    e = html.escape
    header = "".join(f"<th>{e(name)}</th>" for name in document["columns"])
    body = "".join(
        "<tr>" + "".join(f"<td>{e(cell(row.get(name)))}</td>" for name in document["columns"]) + "</tr>"
        for row in document["rows"])
    lesions = "".join(f"<li>{e(item['segment'])}: {e(str(item['level']))} ({e(item['how'])})</li>" for item in document["lesions"])
    criteria = document["criteria"]
    sources = "".join(f"<li>{e(key)}: {e(str(entry.get('value')))} ({e(entry.get('where') or entry.get('rule', ''))})</li>"
                      for key, entry in criteria["sources"].items())
    warnings = "".join(f"<li>{e(w)}</li>" for w in document["warnings"])
    text = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>VertebralMarrow: whole spine</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:3px 6px}}</style>
</head><body>
<h1>Whole spine: marrow per vertebra</h1>
<p><b>{e(document['disclaimer'])}</b></p>
<p>Labels: {e(criteria['scheme'])}; {e('; '.join(criteria['body']))}. Marrow ROIs eroded by {criteria['erosion_mm']:g} mm
on each volume's own grid. ADC: {e(document['adc']['source'])} ({e(document['adc']['units'])}).
Reference: {e(str(document['reference']['how']))}.</p>
{f'<img src="{e(Path(picture).name)}" alt="ADC per level and sagittal view">' if picture else ''}
<table><tr>{header}</tr>{body}</table>
<p>Flags: above_marrow_range (mean ADC above the normal-marrow range: diffuse infiltration to exclude),
outlier (against this patient's own spine), height_loss (body height below its neighbours').</p>
{f'<h2>Lesion ROIs by level</h2><ul>{lesions}</ul>' if lesions else ''}
<h2>Criteria</h2><ul>{sources}</ul>
{f'<h2>Warnings</h2><ul>{warnings}</ul>' if warnings else ''}
</body></html>
"""
    path.write_text(text, encoding="utf-8")
    return path


def write_spine_scene(scene, result: SpineResult, out_dir, volumes=()) -> Path:
    """spine.mrml: the ADC map, the given volumes and the marrow ROIs named by level and
    coloured by tier (discs grey), their data under spine-data/."""
    import slicer

    out = Path(out_dir)
    data = out / SPINE_DATA
    data.mkdir(parents=True, exist_ok=True)
    tiers = {row["level"]: row["tier"] for row in result.rows}
    segmentation = result.segmentation.GetSegmentation()
    for sid in segment_ids(result.segmentation):
        tier = BY_KEY.get(tiers.get(segment_name(result.segmentation, sid), ""))
        segmentation.GetSegment(sid).SetColor(*(tier.rgba[:3] if tier is not None else (0.6, 0.6, 0.6)))
    for node in [result.adc_node, *volumes, result.segmentation]:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node.GetName())
        name = safe + (".seg.nrrd" if node.IsA("vtkMRMLSegmentationNode") else ".nrrd")
        write_node(scene, node, data / name)
        node.GetStorageNode().SetFileName(str(Path(SPINE_DATA) / name))
    for view in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        composite.SetSingletonTag(view)
        composite.SetBackgroundVolumeID((volumes[0] if volumes else result.adc_node).GetID())
        scene.AddNode(composite)
    scene.SetRootDirectory(str(out))
    scene.SetURL(str(out / SPINE_SCENE))
    scene.Commit()
    return out / SPINE_SCENE
