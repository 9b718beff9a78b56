"""Whole runs from files: analyse a study into an output folder, fit an ADC map alone, and
the demo (synthetic study, then the analysis). Used by the CLI and by researchers' scripts.

`fit_adc_file` runs on numpy and SimpleITK alone (no vtk, no MRML): MRML is imported by the
runs that need it, inside them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import numpy as np

from .core.criteria import Options
from .errors import InputError

if TYPE_CHECKING:
    from .analysis import AnalysisResult
    from .inputs.study import StudyFiles

Progress = Optional[Callable[[float, str], None]]


def _scaled(progress: Progress, start: float, stop: float) -> Progress:
    if progress is None:
        return None
    return lambda fraction, text: progress(start + (stop - start) * fraction, text)


def _input_paths(files: StudyFiles, options: Optional[Options]) -> List[Tuple[str, Path]]:
    from .core.sequences import SEQUENCES

    inputs = [("--seg", files.seg), ("--label-names", files.label_names), ("--adc", files.adc),
              ("--dwi-dicom", files.dwi_dicom)] + [("--dwi", path) for path in files.dwi]
    inputs += [(sequence.flag, getattr(files, sequence.key)) for sequence in SEQUENCES]
    if options is not None and options.criteria_path is not None:
        inputs.append(("--criteria", Path(options.criteria_path)))
    return [(flag, Path(path)) for flag, path in inputs if path is not None]


def _check_files(files) -> None:
    from .inputs.study import StudyFiles

    if not isinstance(files, StudyFiles):
        raise InputError(f"files must be StudyFiles, got {type(files).__name__}")


def run_analysis(files: StudyFiles, options: Optional[Options], out_dir, progress: Progress = None,
                 single_file_report: bool = False) -> AnalysisResult:
    """Load the study, analyse it and write every output into `out_dir`, whole or not at all
    (`single_file_report`: report.html with its pictures inside). The output folder may
    neither be nor contain an input (it is replaced whole)."""
    from .inputs.validate import check_output_not_input
    from .outputs.folder import staged_folder

    _check_files(files)
    check_output_not_input([("--out", Path(out_dir))], _input_paths(files, options))
    with staged_folder(out_dir) as stage:
        return _analyze_into(files, options, stage, progress, single_file_report)


def _analyze_into(files: StudyFiles, options: Optional[Options], folder: Path, progress: Progress,
                  single_file_report: bool = False) -> AnalysisResult:
    from .analysis import analyze
    from .inputs.study import load_study
    from .mrml import new_scene
    from .outputs.folder import write_outputs_into

    app = new_scene()
    study = load_study(app, files)
    result = analyze(app.scene, study, options, app=app, progress=_scaled(progress, 0.0, 0.5))
    write_outputs_into(app, study, result, folder, progress=_scaled(progress, 0.5, 1.0),
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
    from .inputs.study import StudyFiles
    from .inputs.validate import check_output_not_input
    from .outputs.folder import staged_folder

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
        _check_files(study)
        check_output_not_input([("--out", Path(out_dir))], [("--dicom", Path(folder)), *_input_paths(study, options)])
        # The DICOM objects and the series record go into the same staged folder as the rest,
        # so an interrupted run leaves the previous result or nothing.
        with staged_folder(out_dir) as stage:
            result = _analyze_into(study, options, stage, progress, single_file_report)
            source = chosen["dwi"] if "dwi" in chosen else chosen["adc"]
            written = _export_dicom(result, source.series.files, stage / "dicom", notes, fitted="dwi" in chosen)
            record = {"folder": str(folder), "series": {role: choice.describe() for role, choice in chosen.items()},
                      "notes": notes, "dicom_outputs": written}
            _add_to_results_json(stage, "dicom", record)
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
    """The synthetic study into out_dir/study, then the analysis of it into out_dir (both
    written whole or not at all)."""
    from .inputs.study import StudyFiles
    from .outputs.folder import staged_folder
    from .phantom import make_phantom

    with staged_folder(out_dir) as stage:
        study_dir = stage / "study"
        truth = make_phantom(study_dir, seed, _scaled(progress, 0.0, 0.3))
        names = truth["files"]
        files = StudyFiles(
            seg=study_dir / names["seg"], adc=study_dir / names["adc"],
            t1=study_dir / names["t1"], t2=study_dir / names["t2"], fs=study_dir / names["fs"], ct=study_dir / names["ct"],
        )
        result = _analyze_into(files, Options(), stage, _scaled(progress, 0.3, 0.8))
        # The study also as DICOM series, and the results as DICOM SEG, SR and parametric map on
        # the scanner ADC map's series (the grid the demo measures on).
        from .phantom_dicom import write_phantom_dicom

        if progress:
            progress(0.8, "DICOM series and DICOM results")
        series = write_phantom_dicom(study_dir, study_dir / "dicom", seed, names)
        notes: list = []
        written = _export_dicom(result, sorted(series["adc"].iterdir()), stage / "dicom", notes, fitted=False)
        _add_to_results_json(stage, "dicom", {"folder": str(Path(out_dir) / "study" / "dicom"),
                                              "dicom_outputs": written, "notes": notes})
        result.warnings.extend(notes)
        _demo_spine_and_followup(stage, study_dir, seed, files, _scaled(progress, 0.85, 1.0))
        return result


def _demo_spine_and_followup(out: Path, study_dir: Path, seed: int, files: StudyFiles, progress: Progress) -> None:
    """The demo's whole spine (TotalSpineSeg labels) and a follow-up time point compared with it."""
    from .inputs.study import StudyFiles
    from .outputs.followup_report import run_followup
    from .phantom_spine import make_followup, write_spine_labels
    from .spine_analysis import run_spine

    labels = write_spine_labels(study_dir)["totalspineseg"]
    run_spine(labels, out, adc=files.adc, t1=files.t1, fs=files.fs, lesions=files.seg, progress=_scaled(progress, 0.0, 0.3))
    later = out / "followup-timepoint"
    truth = make_followup(later / "study", seed, with_labels=False)  # same anatomy: the baseline's labels
    names = truth["files"]
    _analyze_into(StudyFiles(seg=later / "study" / names["seg"], adc=later / "study" / names["adc"]), Options(), later,
                  _scaled(progress, 0.3, 0.8))
    run_spine(labels, later, adc=later / "study" / names["adc"],
              lesions=later / "study" / names["seg"], progress=_scaled(progress, 0.8, 0.9))
    run_followup(out, later, out / "followup")


def fit_adc_file(files: StudyFiles, method: str, bmin: Optional[float], bmax: Optional[float], out_path,
                 progress: Progress = None, compress: bool = False) -> List[float]:
    """Fit DWI into an ADC map file (float32, 10^-3 mm^2/s, DWI grid, the unit in the file);
    return the b-values (shells) used. A map without one finite voxel is an error, not written."""
    from .core.adc import _check_method, fit_adc_volume, group_shells, select_bvalues
    from .outputs.map_file import MAP_SUFFIXES, MapStream, check_map_path, streams, write_map

    from .core.criteria import checked_number
    from .inputs.validate import check_bvalues, check_dwi_paths, check_image, check_output_not_input, check_signal

    _check_method(method)
    check_map_path(out_path)
    _check_files(files)
    for name, value in (("--bmin", bmin), ("--bmax", bmax)):
        if value is not None:
            checked_number(value, name, 0.0)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise InputError(f"--out {out_path} is a folder; give the ADC map's file name, e.g. adc.nrrd")
    check_output_not_input([("--out", out_path)], _input_paths(files, None))
    if files.dwi:
        from .inputs.dwi_files import read_dwi_files

        paths, given = check_dwi_paths(files.dwi, files.bvalues)
        for path in paths:
            check_image(path, "DWI", "dwi", complete=False)  # header, sizes, spacing; the read checks the rest
        dwi = read_dwi_files(paths, given)
        volumes, bvalues, ijk_to_ras = dwi.volumes, dwi.bvalues, dwi.ijk_to_ras
        where = f"DWI {paths[0]}" if len(paths) == 1 else "DWI"
    else:
        from .inputs.dicom_dwi import read_dwi_dicom

        series = read_dwi_dicom(files.dwi_dicom)
        volumes, bvalues, ijk_to_ras = series.volumes, series.bvalues, series.ijk_to_ras
        where = f"DWI DICOM {files.dwi_dicom}"
    bvalues = check_bvalues(bvalues, f"b-values of {where}")
    kept = select_bvalues(bvalues, bmin, bmax)
    used = [bvalues[i] for i in kept]
    selected = [volumes[i] for i in kept]

    def check_fitted(any_finite: bool) -> None:
        if not any_finite:
            raise InputError(f"the ADC fit gave no finite voxel (b = {', '.join(f'{b:g}' for b in used)} s/mm^2): "
                             "every voxel lacks positive signal at two b-values; is this DWI?")
        for i in kept:  # a b-value image without signal must not be reported as used
            check_signal(volumes[i], f"{where} (b = {bvalues[i]:g})")

    # Written beside the target under a temporary name (same suffix, so the same writer) and
    # moved into place: an interrupted run leaves the previous map or none, never half of one.
    # The previous map goes first: renamed over an existing file, ext4 writes the new one to
    # disk at once (its replace-via-rename safeguard), which cost up to 0.4 s here. Header and
    # data files (.nhdr, .mhd) are written in place. A raw NRRD is written while it is fitted
    # (MapStream): no whole map in memory.
    suffix = next(s for s in MAP_SUFFIXES if out_path.name.lower().endswith(s))
    in_place = suffix in (".nhdr", ".mhd")
    target = out_path if in_place else out_path.parent / f".{out_path.name}.writing-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        if streams(out_path, compress):
            out_path.parent.mkdir(parents=True, exist_ok=True)
            with MapStream(target, selected[0].shape, ijk_to_ras, shown_as=out_path) as stream:
                fit_adc_volume(selected, used, method, progress, sink=stream.write)
            check_fitted(stream.any_finite)
        else:
            adc = fit_adc_volume(selected, used, method, progress)
            check_fitted(_any_finite(adc))
            write_map(target, adc, ijk_to_ras, compress=compress)
        if not in_place:
            out_path.unlink(missing_ok=True)
            os.replace(target, out_path)
    finally:
        if not in_place:
            target.unlink(missing_ok=True)
    return group_shells(used)[0]


def _any_finite(array, chunk: int = 1 << 20) -> bool:
    flat = array.reshape(-1)
    return any(np.isfinite(flat[start:start + chunk]).any() for start in range(0, flat.size, chunk))
