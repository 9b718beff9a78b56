"""The output folder of `analyze` and `demo`: results, overlay, pictures, report and a scene
that opens in Slicer."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import slicer

from ..analysis import AnalysisResult, StudyNodes
from ..core.sequences import SEQUENCES
from ..errors import InputError
from ..mrml import write_node
from .nodes import ADC_MAP_NAME, adc_color_node, adc_map_node, class_color_node, color_segments_by_class, overlay_node
from .table import result_document, results_table_node, write_csv, write_json

SCENE_FILE = "VertebralMarrow.mrml"
SCENE_DATA = "scene-data"
PLOTS_MISSING = ("plots and chart pictures not drawn, snapshots without their text: matplotlib is not installed "
                 "(pip install matplotlib; in Slicer: slicer.util.pip_install('matplotlib')); the numbers are complete")


def write_output_folder(app, study: StudyNodes, result: AnalysisResult, out_dir,
                        progress: Optional[Callable[[float, str], None]] = None,
                        single_file_report: bool = False) -> List[Path]:
    """Write every output of the interface into `out_dir`, whole or not at all (see
    `staged_folder`); return the files written. `single_file_report` embeds the pictures in
    report.html."""
    out = Path(out_dir)
    with staged_folder(out) as stage:
        written = write_outputs_into(app, study, result, stage, progress, single_file_report)
    return [out / path.relative_to(stage) for path in written]


@contextmanager
def staged_folder(out_dir) -> Iterator[Path]:
    """A new, empty folder beside `out_dir` to write one run into. When the block ends
    without an exception it takes the place of `out_dir` (the previous result, if any, is
    removed only then); otherwise it is deleted and `out_dir` stays as it was. A lock file
    beside `out_dir` refuses a second run into the same folder while one is writing, and
    leftovers of a run that was killed are cleared."""
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_result_folder(out):
        raise InputError(f"--out {out_dir} holds files that are not a VertebralMarrow result; "
                         f"give a new or empty folder (a previous result folder is replaced whole)")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _acquire_lock(out)
    try:
        for prefix in (f".{out.name}.writing-", f".{out.name}.old-"):
            for leftover in out.parent.glob(glob.escape(prefix) + "*"):
                if leftover.is_dir() and "." not in leftover.name[len(prefix):]:
                    shutil.rmtree(leftover, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
        try:
            yield stage
            _replace(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    finally:
        lock.unlink(missing_ok=True)


def _is_result_folder(folder: Path) -> bool:
    """A folder a run of analyze, demo, spine or followup wrote (and may write again)."""
    return any((folder / name).is_file() for name in ("results.json", SCENE_FILE, "spine.json", "followup.json"))


def _acquire_lock(out: Path) -> Path:
    lock = out.parent / f".{out.name}.lock"
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_owner_alive(lock):
                raise InputError(f"another run is writing into {out} (lock {lock}); wait for it to finish, "
                                 f"or delete the lock file if no run is going") from None
            lock.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock
    raise InputError(f"cannot take the lock {lock} for {out}; delete it if no run is going")


def _lock_owner_alive(lock: Path) -> bool:
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return True  # being written this instant, or unreadable: assume a run holds it
    if host and host != socket.gethostname():
        return True  # another machine's run on a shared disk: cannot tell, so respect it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(stage: Path, out: Path) -> None:
    """Move the finished stage to `out`; the previous result goes only once the new one is
    in place (an interruption in between puts the old one back)."""
    if not out.exists():
        os.rename(stage, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_outputs_into(app, study: StudyNodes, result: AnalysisResult, out: Path,
                       progress: Optional[Callable[[float, str], None]] = None,
                       single_file_report: bool = False) -> List[Path]:
    """Write every output of the interface into the folder `out` (a stage: see staged_folder)."""
    from .charts import plot_nodes
    from .figures import _matplotlib_available, write_pictures
    from .report import write_report

    if not _matplotlib_available():
        # Slicer does not bundle matplotlib: results.json and the report say what is missing.
        result = dataclasses.replace(result, warnings=[*result.warnings, PLOTS_MISSING])
    out = Path(out)
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
    written += [picture.path for picture in pictures if picture.path is not None]

    step(0.8, "report")
    written.append(write_report(out / "report.html", result_document(result), pictures, single_file=single_file_report))

    step(0.9, "scene")
    adc_colors = adc_color_node(scene)
    # A fitted map is the analysis's own node: shown through the colour map and written once
    fitted = result.adc_node if study.adc is None else None
    adc_map = adc_map_node(scene, result, adc_colors, node=fitted)
    adc_map.SetName(ADC_MAP_NAME)
    color_segments_by_class(study.segmentation, result)  # the scene's copy; the input file is untouched
    charts = plot_nodes(scene, result)
    chart_tables = [chart.GetNthPlotSeriesNode(i).GetTableNode()
                    for chart in charts for i in range(chart.GetNumberOfPlotSeriesNodes())]
    written.append(save_scene(scene, study, result, out, table, overlay, colors, adc_map, adc_colors, *chart_tables))
    step(1.0, "outputs written")
    return written


def save_scene(scene, study: StudyNodes, result: AnalysisResult, out: Path, *extra_nodes) -> Path:
    """Save a Slicer scene: the .mrml in `out`. Input volumes read from files are referenced
    where they are (absolute paths, relative inside `out` as the demo's study; never rewritten); the rest is written once under
    scene-data/, volumes uncompressed (gzip costs more time than it saves space here)."""
    data = out / SCENE_DATA
    data.mkdir(exist_ok=True)
    volumes = [study.adc, *(getattr(study, s.key) for s in SEQUENCES), *study.dwi,
               result.adc_node if study.adc is None else None]
    inputs = {node.GetID() for node in volumes[:-1] if node is not None}
    nodes = [node for node in volumes if node is not None] + [study.segmentation] + [n for n in extra_nodes if n is not None]
    seen, file_names = set(), set()
    for node in nodes:
        if node.GetID() in seen:
            continue
        seen.add(node.GetID())
        storage = node.GetStorageNode()
        source = Path(storage.GetFileName() or "") if storage is not None else None
        if node.GetID() in inputs and source is not None and source.is_file():
            source = source.resolve()
            if out.resolve() in source.parents:  # the demo's study, inside the folder: relative, as it moves
                storage.SetFileName(str(source.relative_to(out.resolve())))
            else:
                storage.SetFileName(str(source))  # the input file itself
            continue
        if source is None or source.parent != out:
            if node.IsA("vtkMRMLVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
                _uncompressed(scene, node)
            write_node(scene, node, data / _unique(_file_name(node), file_names))
        storage = node.GetStorageNode()
        storage.SetFileName(str(Path(storage.GetFileName()).relative_to(out)))
    _show_in_slice_views(scene, study, result, extra_nodes)
    scene.SetRootDirectory(str(out))
    scene.SetURL(str(out / SCENE_FILE))
    scene.Commit()
    return out / SCENE_FILE


def _show_in_slice_views(scene, study: StudyNodes, result: AnalysisResult, nodes) -> None:
    """Slice composite nodes for Slicer's three views, so the scene opens with the overlay on
    the anatomy (T2, else STIR, T1 or ADC) and the continuous ADC map ready as foreground."""
    overlay = next((n for n in nodes if n is not None and n.IsA("vtkMRMLLabelMapVolumeNode")), None)
    adc_map = next((n for n in nodes if n is not None and n.GetName() == ADC_MAP_NAME), None)
    background = next(n for n in (study.t2, study.fs, study.t1, result.adc_node) if n is not None)
    for view in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(view)
        composite.SetSingletonTag(view)
        composite.SetBackgroundVolumeID(background.GetID())
        if adc_map is not None:
            composite.SetForegroundVolumeID(adc_map.GetID())
            composite.SetForegroundOpacity(0.0)  # the class overlay first; slide in the ADC map
        if overlay is not None:
            composite.SetLabelVolumeID(overlay.GetID())
            composite.SetLabelOpacity(0.5)
        scene.AddNode(composite)


def _unique(name: str, taken: set) -> str:
    """`name`, or name_2, name_3, ... when inputs from different folders share a file name
    (three t1.nrrd must not overwrite one another in scene-data)."""
    stem, dot, suffix = name.partition(".")
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{stem}_{number}{dot}{suffix}"
    taken.add(candidate.lower())
    return candidate


def _uncompressed(scene, node) -> None:
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetUseCompression(0)


def _file_name(node) -> str:
    """A readable file name from the node's name: units in brackets left out ('VertebralMarrow
    ADC (10^-3 mm^2/s)' -> 'VertebralMarrow_ADC'), any other run of odd characters one '_'."""
    words = re.sub(r"\([^)]*\)", " ", node.GetName())
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", words).strip("_.") or "node"
    if node.IsA("vtkMRMLSegmentationNode"):
        return safe + ".seg.nrrd"
    if node.IsA("vtkMRMLColorTableNode"):
        return safe + ".ctbl"
    if node.IsA("vtkMRMLTableNode"):
        return safe + ".tsv"
    if node.IsA("vtkMRMLPlotSeriesNode") or node.IsA("vtkMRMLPlotChartNode"):
        return safe + ".txt"
    return safe + ".nrrd"
