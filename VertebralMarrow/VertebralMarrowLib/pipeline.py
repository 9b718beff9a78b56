"""Whole runs from files: analyse a study into an output folder, fit an ADC map alone, and
the demo (synthetic study, then the analysis). Used by the CLI and by researchers' scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

from .analysis import AnalysisResult, analyze, fit_dwi_nodes
from .core.criteria import Options
from .errors import InputError
from .outputs.folder import write_output_folder
from .mrml import ijk_to_ras_of, new_scene, volume_from_array, write_node
from .inputs.study import StudyFiles, load_dwi, load_dwi_dicom, load_study

Progress = Optional[Callable[[float, str], None]]
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def _scaled(progress: Progress, start: float, stop: float) -> Progress:
    if progress is None:
        return None
    return lambda fraction, text: progress(start + (stop - start) * fraction, text)


def run_analysis(files: StudyFiles, options: Optional[Options], out_dir, progress: Progress = None,
                 single_file_report: bool = False) -> AnalysisResult:
    """Load the study, analyse it and write every output into `out_dir` (`single_file_report`:
    report.html with its pictures inside)."""
    app = new_scene()
    study = load_study(app, files)
    result = analyze(app.scene, study, options, app=app, progress=_scaled(progress, 0.0, 0.5))
    write_output_folder(app, study, result, out_dir, progress=_scaled(progress, 0.5, 1.0),
                        single_file_report=single_file_report)
    return result


def run_dicom_analysis(folder, seg, options: Optional[Options], out_dir, overrides: Optional[dict] = None,
                       label_names=None, progress: Progress = None, files: Optional[dict] = None,
                       single_file_report: bool = False) -> tuple:
    """A DICOM study in: recognise its series (overrides: role -> series UID, number or 'none'),
    analyse them with `seg` like run_analysis, and record in results.json which series were
    used for what and why. `files` (key -> path, e.g. {'t1': ...}) replaces a recognised series.
    Returns (AnalysisResult, the record of the series: {folder, series: {role: ...}, notes})."""
    import dataclasses
    import tempfile

    from .inputs.dicom_study import choose_series, scan_dicom_folder, stage_study

    chosen, notes = choose_series(scan_dicom_folder(folder), overrides)
    with tempfile.TemporaryDirectory(prefix="vertebral-marrow-dicom-") as staging:
        paths, adc_units = stage_study(chosen, staging)
        paths.update({key: Path(value) for key, value in (files or {}).items() if value})
        study = StudyFiles(seg=Path(seg), label_names=label_names, **paths)
        options = options or Options()
        if adc_units and "adc" in paths and options.adc_units in (None, "auto"):
            # The analysis then reports the units as given; say where they came from.
            options = dataclasses.replace(options, adc_units=adc_units)
            notes.append(f"ADC map units {adc_units} taken from its DICOM real-world value mapping")
        result = run_analysis(study, options, out_dir, progress, single_file_report)
    source = chosen["dwi"] if "dwi" in chosen else chosen["adc"]
    written = _export_dicom(result, source.series.files, Path(out_dir) / "dicom", notes, fitted="dwi" in chosen)
    record = {"folder": str(folder), "series": {role: choice.describe() for role, choice in chosen.items()},
              "notes": notes, "dicom_outputs": written}
    _add_to_results_json(out_dir, "dicom", record)
    return result, record


def _add_to_results_json(out_dir, key: str, value) -> None:
    import json

    results_json = Path(out_dir) / "results.json"
    document = json.loads(results_json.read_text(encoding="utf-8"))
    document[key] = value
    results_json.write_text(json.dumps(document, indent=2), encoding="utf-8")


def _export_dicom(result: AnalysisResult, reference_files: list, out_dir: Path, notes: list, fitted: bool) -> dict:
    """SEG, SR and parametric map on the ADC's source series; {name: file relative to the output
    folder}. A study whose grid the export cannot follow keeps its analysis, and notes say why."""
    from .outputs.dicom_export import write_dicom_outputs

    try:
        written = write_dicom_outputs(result, reference_files, out_dir,
                                      bvalues=result.bvalues_used if fitted else None,
                                      method=result.options.fit_method if fitted else None)
    except (InputError, ValueError) as exc:
        notes.append(f"DICOM SEG/SR/parametric map not written: {exc}")
        return {}
    return {name: str(path.relative_to(out_dir.parent)) for name, path in written.items()}


def run_demo(out_dir, seed: int = 0, progress: Progress = None) -> AnalysisResult:
    """The synthetic study into out_dir/study, then the analysis of it into out_dir."""
    from .phantom import make_phantom

    out = Path(out_dir)
    study_dir = out / "study"
    truth = make_phantom(study_dir, seed, _scaled(progress, 0.0, 0.3))
    names = truth["files"]
    files = StudyFiles(
        seg=study_dir / names["seg"], adc=study_dir / names["adc"],
        t1=study_dir / names["t1"], t2=study_dir / names["t2"], fs=study_dir / names["fs"], ct=study_dir / names["ct"],
    )
    result = run_analysis(files, Options(), out, _scaled(progress, 0.3, 0.9))
    # The study also as DICOM series, and the results as DICOM SEG, SR and parametric map on
    # the scanner ADC map's series (the grid the demo measures on).
    from .phantom_dicom import write_phantom_dicom

    if progress:
        progress(0.9, "DICOM series and DICOM results")
    series = write_phantom_dicom(study_dir, study_dir / "dicom", seed, names)
    notes: list = []
    written = _export_dicom(result, sorted(series["adc"].iterdir()), out / "dicom", notes, fitted=False)
    _add_to_results_json(out, "dicom", {"folder": str(study_dir / "dicom"), "dicom_outputs": written, "notes": notes})
    result.warnings.extend(notes)
    return result


def fit_adc_file(files: StudyFiles, method: str, bmin: Optional[float], bmax: Optional[float], out_path,
                 progress: Progress = None) -> List[float]:
    """Fit DWI into an ADC map file (float32, 10^-3 mm^2/s, DWI grid); return the b-values used."""
    if method not in ("iwls", "ols"):
        raise InputError(f"fit method '{method}' unknown; use iwls or ols")
    if not str(out_path).lower().endswith(VOLUME_SUFFIXES):
        raise InputError(f"--out {out_path}: write the ADC map as one of {', '.join(VOLUME_SUFFIXES)}")
    app = new_scene()
    if files.dwi:
        nodes, bvalues = load_dwi(app.scene, files.dwi, files.bvalues)
    else:
        nodes, bvalues = load_dwi_dicom(app.scene, files.dwi_dicom)
    adc, used = fit_dwi_nodes(nodes, bvalues, method, bmin, bmax, progress)
    node = volume_from_array(app.scene, adc, ijk_to_ras_of(nodes[0]), Path(out_path).stem)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_node(app.scene, node, out_path)
    return used
