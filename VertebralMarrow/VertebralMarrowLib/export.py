"""The output folder of `analyze` and `demo`: results, overlay, pictures, report and a scene
that opens in Slicer."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

from .analysis import AnalysisResult, StudyNodes
from .mrml import write_node
from .outputs import class_color_node, overlay_node, results_table_node, write_csv, write_json, result_document

SCENE_FILE = "VertebralMarrow.mrml"
SCENE_DATA = "scene-data"


def write_output_folder(app, study: StudyNodes, result: AnalysisResult, out_dir,
                        progress: Optional[Callable[[float, str], None]] = None) -> List[Path]:
    """Write every output of the interface into `out_dir`; return the files written."""
    from .pictures import plot_nodes, write_pictures
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = app.scene

    def step(fraction, text):
        if progress:
            progress(fraction, text)

    step(0.0, "results table")
    written = [write_csv(result, out / "results.csv"), write_json(result, out / "results.json")]
    table = results_table_node(scene, result)
    colors = class_color_node(scene)
    overlay = overlay_node(scene, result, colors)
    write_node(scene, overlay, out / "overlay.nrrd")
    write_node(scene, colors, out / "overlay_colors.ctbl")
    written += [out / "overlay.nrrd", out / "overlay_colors.ctbl"]

    step(0.2, "snapshots and plots")
    pictures = write_pictures(scene, study, result, overlay, out, progress=lambda f, t: step(0.2 + 0.6 * f, t))
    written += [picture.path for picture in pictures]

    step(0.8, "report")
    written.append(write_report(out / "report.html", result_document(result), pictures))

    step(0.9, "scene")
    charts = plot_nodes(scene, result, study.segmentation)
    chart_tables = [chart.GetNthPlotSeriesNode(i).GetTableNode()
                    for chart in charts for i in range(chart.GetNumberOfPlotSeriesNodes())]
    written.append(save_scene(scene, study, result, out, table, overlay, colors, *chart_tables))
    step(1.0, "outputs written")
    return written


def save_scene(scene, study: StudyNodes, result: AnalysisResult, out: Path, *extra_nodes) -> Path:
    """Save a Slicer scene: the .mrml in `out`, each node's data under scene-data/."""
    data = out / SCENE_DATA
    data.mkdir(exist_ok=True)
    volumes = [study.adc, study.t1, study.t2, study.fs, study.ct, study.in_phase, study.opposed_phase,
               study.fat_fraction, *study.dwi, result.adc_node if study.adc is None else None]
    nodes = [node for node in volumes if node is not None] + [study.segmentation] + [n for n in extra_nodes if n is not None]
    seen = set()
    for node in nodes:
        if node.GetID() in seen:
            continue
        seen.add(node.GetID())
        storage = node.GetStorageNode()
        written_here = storage is not None and Path(storage.GetFileName() or "").parent == out
        if not written_here:  # inputs are copied in so that the folder stands on its own
            write_node(scene, node, data / _file_name(node))
        storage = node.GetStorageNode()
        storage.SetFileName(str(Path(storage.GetFileName()).relative_to(out)))
    scene.SetRootDirectory(str(out))
    scene.SetURL(str(out / SCENE_FILE))
    scene.Commit()
    return out / SCENE_FILE


def _file_name(node) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node.GetName())
    if node.IsA("vtkMRMLSegmentationNode"):
        return safe + ".seg.nrrd"
    if node.IsA("vtkMRMLColorTableNode"):
        return safe + ".ctbl"
    if node.IsA("vtkMRMLTableNode"):
        return safe + ".tsv"
    if node.IsA("vtkMRMLPlotSeriesNode") or node.IsA("vtkMRMLPlotChartNode"):
        return safe + ".txt"
    return safe + ".nrrd"
