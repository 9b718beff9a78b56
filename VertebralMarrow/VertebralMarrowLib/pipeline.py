"""Whole runs from files: analyse a study into an output folder, fit an ADC map alone, and
the demo (synthetic study, then the analysis). Used by the CLI and by researchers' scripts."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .analysis import AnalysisResult, analyze, fit_dwi_nodes
from .core.criteria import Options, checked_number
from .errors import InputError
from .outputs.folder import staged_folder, write_outputs_into
from .mrml import ijk_to_ras_of, new_scene, volume_from_array, write_node
from .core.sequences import SEQUENCES
from .inputs.study import StudyFiles, load_dwi, load_dwi_dicom, load_study
from .inputs.validate import check_output_not_input

Progress = Optional[Callable[[float, str], None]]
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def _scaled(progress: Progress, start: float, stop: float) -> Progress:
    if progress is None:
        return None
    return lambda fraction, text: progress(start + (stop - start) * fraction, text)


def _input_paths(files: StudyFiles, options: Optional[Options]) -> List[Tuple[str, Path]]:
    inputs = [("--seg", files.seg), ("--label-names", files.label_names), ("--adc", files.adc),
              ("--dwi-dicom", files.dwi_dicom)] + [("--dwi", path) for path in files.dwi]
    inputs += [(sequence.flag, getattr(files, sequence.key)) for sequence in SEQUENCES]
    if options is not None and options.criteria_path is not None:
        inputs.append(("--criteria", Path(options.criteria_path)))
    return [(flag, Path(path)) for flag, path in inputs if path is not None]


def run_analysis(files: StudyFiles, options: Optional[Options], out_dir, progress: Progress = None,
                 single_file_report: bool = False) -> AnalysisResult:
    """Load the study, analyse it and write every output into `out_dir`, whole or not at all
    (`single_file_report`: report.html with its pictures inside). The output folder may
    neither be nor contain an input (it is replaced whole)."""
    if not isinstance(files, StudyFiles):
        raise InputError(f"files must be StudyFiles, got {type(files).__name__}")
    check_output_not_input([("--out", Path(out_dir))], _input_paths(files, options))
    with staged_folder(out_dir) as stage:
        return _analyze_into(files, options, stage, progress, single_file_report)


def _analyze_into(files: StudyFiles, options: Optional[Options], folder: Path, progress: Progress,
                  single_file_report: bool = False) -> AnalysisResult:
    app = new_scene()
    study = load_study(app, files)
    result = analyze(app.scene, study, options, app=app, progress=_scaled(progress, 0.0, 0.5))
    write_outputs_into(app, study, result, folder, progress=_scaled(progress, 0.5, 1.0),
                       single_file_report=single_file_report)
    return result


def run_demo(out_dir, seed: int = 0, progress: Progress = None) -> AnalysisResult:
    """The synthetic study into out_dir/study, then the analysis of it into out_dir (both
    written whole or not at all)."""
    from .phantom import make_phantom

    with staged_folder(out_dir) as stage:
        study_dir = stage / "study"
        truth = make_phantom(study_dir, seed, _scaled(progress, 0.0, 0.3))
        names = truth["files"]
        files = StudyFiles(
            seg=study_dir / names["seg"], adc=study_dir / names["adc"],
            t1=study_dir / names["t1"], t2=study_dir / names["t2"], fs=study_dir / names["fs"], ct=study_dir / names["ct"],
        )
        return _analyze_into(files, Options(), stage, _scaled(progress, 0.3, 1.0))


def fit_adc_file(files: StudyFiles, method: str, bmin: Optional[float], bmax: Optional[float], out_path,
                 progress: Progress = None) -> List[float]:
    """Fit DWI into an ADC map file (float32, 10^-3 mm^2/s, DWI grid); return the b-values used."""
    if method not in ("iwls", "ols"):
        raise InputError(f"fit method '{method}' unknown; use iwls or ols")
    if not str(out_path).lower().endswith(VOLUME_SUFFIXES):
        raise InputError(f"--out {out_path}: write the ADC map as one of {', '.join(VOLUME_SUFFIXES)}")
    if not isinstance(files, StudyFiles):
        raise InputError(f"files must be StudyFiles, got {type(files).__name__}")
    for name, value in (("--bmin", bmin), ("--bmax", bmax)):
        if value is not None:
            checked_number(value, name, 0.0)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise InputError(f"--out {out_path} is a folder; give the ADC map's file name, e.g. adc.nrrd")
    check_output_not_input([("--out", out_path)], _input_paths(files, None))
    app = new_scene()
    if files.dwi:
        nodes, bvalues = load_dwi(app.scene, files.dwi, files.bvalues)
    else:
        nodes, bvalues = load_dwi_dicom(app.scene, files.dwi_dicom)
    adc, used = fit_dwi_nodes(nodes, bvalues, method, bmin, bmax, progress)
    node = volume_from_array(app.scene, adc, ijk_to_ras_of(nodes[0]), out_path.stem)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target under a temporary name (same suffix, so the same writer) and
    # moved into place: an interrupted run leaves the previous map or none, never half of one.
    suffix = next(s for s in VOLUME_SUFFIXES if out_path.name.lower().endswith(s))
    temporary = out_path.parent / f".{out_path.name}.writing-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        write_node(app.scene, node, temporary)
        os.replace(temporary, out_path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return used
