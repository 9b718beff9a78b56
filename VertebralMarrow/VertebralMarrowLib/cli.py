"""`vertebral-marrow`: the command line, a thin layer over the library.

Exit status 0 on success, 2 on bad input with one line `error: ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import DISCLAIMER, __version__
from .errors import InputError

UNITS = ("auto", "mm2/s", "1e-3", "1e-6")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line and exit status 2."""

    def error(self, message):
        raise InputError(f"{message} (see {self.prog} --help)")


def _progress(verbose: bool):
    if not verbose:
        return None
    start = time.monotonic()

    def report(fraction: float, text: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {fraction:4.0%} {text}", file=sys.stderr, flush=True)

    return report


def _add_dwi_arguments(parser, with_adc: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    if with_adc:
        group.add_argument("--adc", type=Path, help="scanner ADC map (NRRD, NIfTI, MHA)")
    group.add_argument("--dwi", type=Path, nargs="+", help="DWI: several 3-D files (with --bvalues) or one 4-D file")
    group.add_argument("--dwi-dicom", type=Path, help="folder of a diffusion DICOM series (b-values from the headers)")
    parser.add_argument("--bvalues", help="b-values in s/mm^2, one per DWI file, e.g. 0,50,400,800")
    parser.add_argument("--method", choices=("iwls", "ols"), default="iwls",
                        help="ADC fit: iteratively reweighted (default) or ordinary log-linear least squares")
    parser.add_argument("--bmin", type=float, help="leave out b-values below this (perfusion-weighted), s/mm^2")
    parser.add_argument("--bmax", type=float, help="leave out b-values above this (noise floor), s/mm^2")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vertebral-marrow", description="Quantitative MRI of vertebral bone marrow. " + DISCLAIMER)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    analyze = commands.add_parser("analyze", help="ADC, relative signal, classes and differential per ROI")
    analyze.add_argument("--seg", type=Path, required=True, help="segmentation (.seg.nrrd) or labelmap (.nrrd, .nii[.gz])")
    analyze.add_argument("--label-names", type=Path, help="Slicer color table naming a labelmap's labels")
    _add_dwi_arguments(analyze, with_adc=True)
    for name, what in (("t1", "T1-weighted"), ("t2", "T2-weighted"), ("fs", "fat-suppressed T2 or STIR"), ("ct", "CT (HU)"),
                       ("in-phase", "in-phase (chemical shift)"), ("opposed-phase", "opposed-phase (chemical shift)"),
                       ("fat-fraction", "Dixon fat-fraction map (0-1 or %%)")):
        analyze.add_argument(f"--{name}", type=Path, help=f"{what} volume")
    analyze.add_argument("--reference", nargs="+", default=(), metavar="NAME", help="segment(s) of normal marrow")
    analyze.add_argument("--levels", action="append", default=[], metavar="SEGMENT=N",
                         help="vertebral levels a lesion involves (separates pyogenic from tuberculous spondylitis)")
    analyze.add_argument("--disc", action="append", default=[], metavar="SEGMENT=destroyed|spared",
                         help="state of the adjacent disc (destroyed: pyogenic; spared: tuberculous)")
    analyze.add_argument("--cutoff", type=float, help="ADC cut-off, 10^-3 mm^2/s (default 1.21, Kaur 2020)")
    analyze.add_argument("--band", type=float, help="indeterminate band around the cut-off, 10^-3 mm^2/s (default 0.2; 0: off)")
    analyze.add_argument("--marrow-max", type=float,
                         help="top of the normal-marrow ADC range, 10^-3 mm^2/s (default 0.55, Koutoulidis 2017; "
                              "0.655 is Messiou 2011's; 0 turns the tier off)")
    analyze.add_argument("--bone-island-hu", type=float, help="CT at or above this favours a bone island (default 885 HU, Ulano 2016)")
    analyze.add_argument("--fat-t1-ratio", type=float,
                         help="lesion T1 / normal marrow at or above this is fat-containing (default 1.2, project)")
    analyze.add_argument("--fat-fraction-min", type=float,
                         help="Dixon fat fraction (%%) at or above this is fat-containing (default 6.4, Schmeel 2018)")
    analyze.add_argument("--chemical-shift-drop", type=float,
                         help="opposed/in-phase ratio below this is a fat signal drop (default 0.80, Zajick 2005)")
    analyze.add_argument("--adc-bvalues", help="b-values a scanner ADC map (--adc) was made from, e.g. 0,800 (recorded)")
    analyze.add_argument("--adc-units", choices=UNITS, default="auto", help="units of --adc (default: decided from the values)")
    analyze.add_argument("--low-below", type=float, help="signal ratio below which a ROI is 'low' (default 0.8)")
    analyze.add_argument("--high-above", type=float, help="signal ratio above which a ROI is 'high' (default 1.2)")
    analyze.add_argument("--min-voxels", type=int, help="warn when a ROI covers fewer voxels (default 10)")
    analyze.add_argument("--ct-sclerotic-hu", type=float,
                         help="mean CT attenuation from which a lesion is sclerotic, HU (default 302, Ulano 2016)")
    analyze.add_argument("--criteria", type=Path,
                         help="a criteria file of your own (a copy of VertebralMarrowLib/core/criteria.json with your numbers)")
    analyze.add_argument("--out", type=Path, required=True, help="output folder")

    adc = commands.add_parser("adc", help="fit the ADC map alone (float32, 10^-3 mm^2/s, on the DWI grid)")
    _add_dwi_arguments(adc, with_adc=False)
    adc.add_argument("--out", type=Path, required=True, help="output file, e.g. adc.nrrd")

    phantom = commands.add_parser("phantom", help="write the synthetic spine study")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo", help="the synthetic study, then the whole analysis on it")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--seed", type=int, default=0)

    cohort = commands.add_parser("cohort", help="sensitivity, specificity, ROC over many lesions")
    cohort.add_argument("csv", type=Path, help="CSV with columns adc (10^-3 mm^2/s) and truth (malignant|benign)")
    cohort.add_argument("--out", type=Path, required=True)
    cohort.add_argument("--cutoff", type=float, help="ADC cut-off, 10^-3 mm^2/s (default 1.21, Kaur 2020)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # VTK's informational messages ("removing old version of file") are noise on a command
    # line; the library's own errors report every failure the analysis can meet.
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder or file that cannot be written
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    progress = _progress(not args.quiet)
    if args.command == "phantom":
        from .phantom import make_phantom

        make_phantom(args.out, args.seed, progress)
        print(f"synthetic study written to {args.out}")
        return 0
    if args.command == "cohort":
        from .cohort import run_cohort

        summary = run_cohort(args.csv, args.out, args.cutoff, progress)
        print(f"cohort of {summary['n_malignant'] + summary['n_benign']} lesions: sensitivity {summary['sensitivity']:.3f}, "
              f"specificity {summary['specificity']:.3f}, AUC {summary['auc']:.3f}; written to {args.out}")
        return 0
    if args.command == "adc":
        return _fit_only(args, progress)
    if args.command == "demo":
        from .pipeline import run_demo

        result = run_demo(args.out, args.seed, progress)
    else:
        result = _analyze(args, progress)
    _print_summary(result, args.out)
    return 0


def _study_files(args):
    from .inputs.study import StudyFiles, parse_bvalues, parse_spread

    return StudyFiles(
        seg=getattr(args, "seg", None), label_names=getattr(args, "label_names", None),
        adc=getattr(args, "adc", None), dwi=args.dwi or (), dwi_dicom=args.dwi_dicom,
        bvalues=parse_bvalues(args.bvalues) if args.bvalues else (),
        t1=getattr(args, "t1", None), t2=getattr(args, "t2", None), fs=getattr(args, "fs", None),
        ct=getattr(args, "ct", None), in_phase=getattr(args, "in_phase", None),
        opposed_phase=getattr(args, "opposed_phase", None), fat_fraction=getattr(args, "fat_fraction", None),
        spread=parse_spread(getattr(args, "levels", ()), getattr(args, "disc", ())),
    )


def _analyze(args, progress):
    from .core.criteria import Options
    from .inputs.study import parse_bvalues
    from .pipeline import run_analysis

    options = Options(
        adc_cutoff=args.cutoff, indeterminate_band=args.band, signal_low_below=args.low_below,
        signal_high_above=args.high_above, min_voxels=args.min_voxels, ct_sclerotic_min_hu=args.ct_sclerotic_hu,
        criteria_path=args.criteria, adc_units=args.adc_units,
        fit_method=args.method, bmin=args.bmin, bmax=args.bmax, reference_segments=tuple(args.reference),
        marrow_max=args.marrow_max, bone_island_min_hu=args.bone_island_hu, fat_t1_ratio_min=args.fat_t1_ratio,
        fat_fraction_min_percent=args.fat_fraction_min, chemical_shift_drop_below=args.chemical_shift_drop,
        adc_bvalues=parse_bvalues(args.adc_bvalues) if args.adc_bvalues else None,
    )
    return run_analysis(_study_files(args), options, args.out, progress)


def _fit_only(args, progress) -> int:
    from .pipeline import fit_adc_file

    bvalues = fit_adc_file(_study_files(args), args.method, args.bmin, args.bmax, args.out, progress)
    print(f"ADC map (float32, 10^-3 mm^2/s) from b = {', '.join(f'{b:g}' for b in bvalues)} s/mm^2 written to {args.out}")
    return 0


def _print_summary(result, out: Path) -> None:
    print(f"ADC: {result.adc_source}; units {result.adc_units}")
    print(f"{'segment':24s} {'role':9s} {'ADC mean':>8s}  {'class':13s} differential (most likely first)")
    for row in result.rows:
        adc = f"{row['adc_mean']:.3f}" if row["adc_mean"] is not None else "n/a"
        top = ", ".join(row["differential"].split(";")[:2]) if row["differential"] else ""
        print(f"{row['segment'][:24]:24s} {row['role']:9s} {adc:>8s}  {row['adc_class']:13s} {top}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"outputs in {out}: results.csv, results.json, overlay.nrrd, report.html, VertebralMarrow.mrml")
    print(DISCLAIMER)


if __name__ == "__main__":
    sys.exit(main())
