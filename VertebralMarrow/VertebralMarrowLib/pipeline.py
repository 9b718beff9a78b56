"""Whole runs from files: analyse a study into an output folder, fit an ADC map alone, and
the demo (synthetic study, then the analysis). Used by the CLI and by researchers' scripts.

`fit_adc_file` runs on numpy and SimpleITK alone (no vtk, no MRML): MRML is imported by the
runs that need it, inside them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

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


def run_analysis(files: StudyFiles, options: Optional[Options], out_dir, progress: Progress = None,
                 single_file_report: bool = False) -> AnalysisResult:
    """Load the study, analyse it and write every output into `out_dir` (`single_file_report`:
    report.html with its pictures inside)."""
    from .analysis import analyze
    from .inputs.study import load_study
    from .mrml import new_scene
    from .outputs.folder import write_output_folder

    app = new_scene()
    study = load_study(app, files)
    result = analyze(app.scene, study, options, app=app, progress=_scaled(progress, 0.0, 0.5))
    write_output_folder(app, study, result, out_dir, progress=_scaled(progress, 0.5, 1.0),
                        single_file_report=single_file_report)
    return result


def run_demo(out_dir, seed: int = 0, progress: Progress = None) -> AnalysisResult:
    """The synthetic study into out_dir/study, then the analysis of it into out_dir."""
    from .inputs.study import StudyFiles
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
                 progress: Progress = None, compress: bool = False) -> List[float]:
    """Fit DWI into an ADC map file (float32, 10^-3 mm^2/s, DWI grid, the unit in the file);
    return the b-values (shells) used. A map without one finite voxel is an error, not written."""
    from .core.adc import _check_method, fit_adc_volume, group_shells, select_bvalues
    from .outputs.map_file import check_map_path, write_map

    _check_method(method)
    check_map_path(out_path)
    if files.dwi:
        from .inputs.dwi_files import read_dwi_files

        dwi = read_dwi_files(files.dwi, files.bvalues)
        volumes, bvalues, ijk_to_ras = dwi.volumes, dwi.bvalues, dwi.ijk_to_ras
    else:
        from .inputs.dicom_dwi import read_dwi_dicom

        series = read_dwi_dicom(files.dwi_dicom)
        volumes, bvalues, ijk_to_ras = series.volumes, series.bvalues, series.ijk_to_ras
    kept = select_bvalues(bvalues, bmin, bmax)
    used = [bvalues[i] for i in kept]
    adc = fit_adc_volume([volumes[i] for i in kept], used, method, progress)
    if not _any_finite(adc):
        raise InputError(f"the ADC fit gave no finite voxel (b = {', '.join(f'{b:g}' for b in used)} s/mm^2): "
                         "every voxel lacks positive signal at two b-values; is this DWI?")
    write_map(out_path, adc, ijk_to_ras, compress=compress)
    return group_shells(used)[0]


def _any_finite(array, chunk: int = 1 << 20) -> bool:
    flat = array.reshape(-1)
    return any(np.isfinite(flat[start:start + chunk]).any() for start in range(0, flat.size, chunk))
