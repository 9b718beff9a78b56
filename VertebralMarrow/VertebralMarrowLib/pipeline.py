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
    return run_analysis(files, Options(), out, _scaled(progress, 0.3, 1.0))


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
