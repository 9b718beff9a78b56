"""`vertebral-marrow`: the command line, a thin layer over the library.

Exit status 0 on success, 2 on bad input with one line `error: ...`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import DISCLAIMER, __version__
from .core.sequences import SEQUENCES
from .errors import InputError

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line and exit status 2."""

    def error(self, message):
        raise InputError(f"{message} (see {self.prog} --help)")


def _seed(text: str) -> int:
    """A random seed: numpy takes whole numbers from 0 to 2^32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to {2 ** 32 - 1}")
    return value


# A value that starts with '-' ("--bvalues -50,0,400") looks like an option to argparse, which
# then says "expected one argument"; attaching it with '=' lets the option's own check speak.
_NUMBER_LIKE = re.compile(r"^-[0-9.,\s]")


def _attach_negative_values(argv: List[str]) -> List[str]:
    out: List[str] = []
    for text in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NUMBER_LIKE.match(text):
            out[-1] = f"{out[-1]}={text}"
        else:
            out.append(text)
    return out


_COUNTED = re.compile(r"([\d,]+) of ([\d,]+) (\w+)")  # a step that counts: "ADC fit: 1,024 of 9,000 voxels"


def _count(counted) -> int:
    return int(counted.group(1).replace(",", ""))


def _progress(verbose: bool, stream=None):
    """One line on a terminal, redrawn in place: a bar, the rate, the time left and the step.
    The rate is in the step's own units when it counts them ("2.1 M voxels/s"), else in percent
    of the run per second. Nothing when the output is not a terminal (logs, pipes) or with --quiet."""
    stream = stream or sys.stderr
    if not verbose or not stream.isatty():
        return None
    start = time.monotonic()
    drawn, previous = [0.0], [None]
    step: dict = {}  # the counting step under way: (total, unit), and a (time, count) to measure from

    def rate_text(fraction: float, counted, now: float) -> str:
        if counted is None:
            return f"{100 * fraction / max(now - start, 1e-9):5.1f} %/s"
        since, base = step["since"]
        if now <= since or _count(counted) <= base:  # one report so far: measured from the start
            since, base = start, 0
        per_second = (_count(counted) - base) / (now - since) if now > since else 0.0
        scaled = next((f"{per_second / size:.1f} {prefix}" for size, prefix in ((1e6, "M"), (1e3, "k"))
                       if per_second >= size), f"{per_second:.0f}")
        return f"{scaled} {counted.group(3)}/s"

    def report(fraction: float, text: str) -> None:
        now = time.monotonic()
        counted = _COUNTED.search(text)
        key = counted.group(2, 3) if counted else None
        if step.get("key") != key:  # a new step
            if counted is None:
                step.update(key=None)
            elif previous[0] is None:  # the run's first report: measured from here on
                step.update(key=key, since=(now, _count(counted)))
            else:  # begun, at 0, when the step before it last reported
                step.update(key=key, since=(previous[0], 0))
        previous[0] = now
        if fraction < 1.0 and now - drawn[0] < 0.1:
            return
        drawn[0] = now
        elapsed = now - start
        rate = fraction / elapsed if elapsed > 0 else 0.0
        left = f"{(1.0 - fraction) / rate:4.0f} s left" if 0 < fraction < 1 and rate > 0 else f"{elapsed:4.1f} s"
        bar = "#" * int(24 * fraction) + "-" * (24 - int(24 * fraction))
        stream.write(f"\r[{bar}] {fraction:4.0%} {rate_text(fraction, counted, now)} {left}  {text[:40]:40s}")
        if fraction >= 1.0:
            stream.write("\n")
        stream.flush()

    return report


def _common(parser) -> None:
    """-q and -v, accepted before or after the subcommand."""
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress messages")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also VTK's and ITK's own log messages")


def _add_setting(parser, name: str) -> None:
    """A command-line option made from its entry in the settings table (core.criteria.SETTINGS)."""
    from .core.criteria import SETTING

    setting = SETTING[name]
    if setting.criteria_key is not None:
        default = f"default {setting.default_value():g}"
        source = setting.source().split(".")[0]
        default += f", {source}" if source and "project default" not in source.lower() else ""
    else:
        default = f"default {setting.default}" if setting.default is not None else "default: all"
    unit = f", {setting.unit}" if setting.unit and setting.unit != "ratio" else ""
    parser.add_argument(setting.flag, dest=name, type=setting.kind, choices=setting.choices or None,
                        metavar=None if setting.choices else "N",
                        help=f"{setting.help}{unit} ({default})".replace("%", "%%"))


def _add_dwi_arguments(parser, with_adc: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    if with_adc:
        group.add_argument("--adc", type=Path, help="scanner ADC map (NRRD, NIfTI, MHA)")
        group.add_argument("--dicom", type=Path, help="a DICOM study folder: its series are recognised (T1, T2, STIR/FS, "
                           "DWI, scanner ADC map, CT); override a choice with --t1-series etc.")
    group.add_argument("--dwi", type=Path, nargs="+", help="DWI: several 3-D files (with --bvalues) or one 4-D file")
    group.add_argument("--dwi-dicom", type=Path, help="folder of a diffusion DICOM series (b-values from the headers)")
    parser.add_argument("--bvalues", help="b-values in s/mm^2, one per DWI file, e.g. 0,50,400,800")
    for name in ("fit_method", "bmin", "bmax"):
        _add_setting(parser, name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vertebral-marrow", description="Quantitative MRI of vertebral bone marrow. " + DISCLAIMER)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common(parser)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    analyze = commands.add_parser("analyze", help="ADC, relative signal, classes and differential per ROI")
    analyze.add_argument("--seg", type=Path, required=True, help="segmentation (.seg.nrrd) or labelmap (.nrrd, .nii[.gz])")
    analyze.add_argument("--label-names", type=Path, help="Slicer color table naming a labelmap's labels")
    _add_dwi_arguments(analyze, with_adc=True)
    for sequence in SEQUENCES:
        analyze.add_argument(sequence.flag, dest=sequence.key, type=Path, help=sequence.what.replace("%", "%%"))
    for role, what in (("t1", "T1"), ("t2", "T2"), ("fs", "STIR/FS"), ("dwi", "DWI"), ("adc", "scanner ADC map"), ("ct", "CT")):
        analyze.add_argument(f"--{role}-series", metavar="UID|NUMBER|none",
                             help=f"with --dicom: the {what} series to use (series number or UID), or none")
    analyze.add_argument("--reference", nargs="+", default=(), metavar="NAME", help="segment(s) of normal marrow")
    analyze.add_argument("--levels", action="append", default=[], metavar="SEGMENT=N",
                         help="vertebral levels a lesion involves (separates pyogenic from tuberculous spondylitis)")
    analyze.add_argument("--disc", action="append", default=[], metavar="SEGMENT=destroyed|spared",
                         help="state of the adjacent disc (destroyed: pyogenic; spared: tuberculous)")
    for name in ("adc_cutoff", "indeterminate_band", "marrow_max", "adc_units", "signal_low_below", "signal_high_above",
                 "min_voxels", "ct_sclerotic_min_hu", "bone_island_min_hu", "fat_t1_ratio_min", "fat_fraction_min_percent",
                 "chemical_shift_drop_below"):
        _add_setting(analyze, name)
    analyze.add_argument("--adc-bvalues", metavar="B,B",
                         help="the b-values a scanner ADC map (--adc) was made from, e.g. 0,800 (recorded with the "
                              "results; the cut-offs were derived at b about 0-1000)")
    analyze.add_argument("--criteria", type=Path,
                         help="a criteria file of your own (a copy of VertebralMarrowLib/core/criteria.json with your numbers)")
    analyze.add_argument("--single-file-report", action="store_true",
                         help="report.html with its pictures inside (one file to mail or archive)")
    analyze.add_argument("--out", type=Path, required=True, help="output folder")

    adc = commands.add_parser("adc", help="fit the ADC map alone (float32, 10^-3 mm^2/s, on the DWI grid)")
    _add_dwi_arguments(adc, with_adc=False)
    adc.add_argument("--out", type=Path, required=True, help="output file, e.g. adc.nrrd")
    adc.add_argument("--compress", action="store_true", help="compress the map (gzip); default: uncompressed, faster")

    phantom = commands.add_parser("phantom", help="write the synthetic spine study")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--seed", type=_seed, default=0, help="random seed, 0 to 2^32 - 1")
    phantom.add_argument("--dicom", action="store_true", help="also write the study as DICOM series in OUT/dicom")

    demo = commands.add_parser("demo", help="the synthetic study, then the whole analysis on it")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--seed", type=_seed, default=0, help="random seed, 0 to 2^32 - 1")

    spine = commands.add_parser("spine", help="marrow of every labelled vertebra (TotalSegmentator, TotalSpineSeg, named labels)")
    spine.add_argument("--labels", type=Path, required=True, help="vertebra labelmap (.nii.gz, .nrrd) or .seg.nrrd")
    spine.add_argument("--scheme", default="auto", choices=("auto", "totalsegmentator", "totalspineseg", "names"),
                       help="label scheme (default: recognised from names, or from label numbers and positions)")
    spine.add_argument("--label-names", type=Path, help="Slicer color table naming the labels (--scheme names)")
    _add_dwi_arguments(spine, with_adc=True)
    spine.add_argument("--t1", type=Path, help="T1-weighted volume")
    spine.add_argument("--fs", type=Path, help="fat-suppressed T2 or STIR volume")
    spine.add_argument("--seg", type=Path, help="drawn lesion ROIs (.seg.nrrd or labelmap), placed at their level")
    spine.add_argument("--reference-levels", nargs="+", default=(), metavar="LEVEL",
                       help="normal-marrow levels (default: the median of all labelled vertebrae)")
    spine.add_argument("--erosion-mm", type=float, help="marrow ROI clearance from cortex and end plates, mm (default 3)")
    spine.add_argument("--marrow-max", type=float, help="top of the normal-marrow ADC range, 10^-3 mm^2/s (default 0.548, Koutoulidis 2017)")
    for name in ("adc_cutoff", "indeterminate_band", "adc_units", "min_voxels"):
        _add_setting(spine, name)
    spine.add_argument("--criteria", type=Path, help="a criteria file of your own")
    spine.add_argument("--out", type=Path, required=True, help="output folder")

    followup = commands.add_parser("followup", help="response between two result folders (MET-RADS-P categories from ADC)")
    followup.add_argument("baseline", type=Path, help="result folder of the baseline (analyze/demo/spine)")
    followup.add_argument("followup", type=Path, help="result folder of the follow-up")
    followup.add_argument("--criteria", type=Path, help="a criteria file of your own")
    followup.add_argument("--out", type=Path, required=True, help="output folder")

    cohort = commands.add_parser("cohort", help="sensitivity, specificity, ROC over many lesions")
    cohort.add_argument("csv", type=Path, help="CSV with columns adc (10^-3 mm^2/s) and truth (malignant|benign), "
                        "or the lesions.csv of batch")
    cohort.add_argument("--out", type=Path, required=True)
    _add_setting(cohort, "adc_cutoff")
    cohort.add_argument("--ci-method", choices=("wilson", "exact"), default="wilson",
                        help="95%% interval of sensitivity, specificity, PPV, NPV: Wilson score (default) or Clopper-Pearson")

    batch = commands.add_parser("batch", help="many studies on Dask (needs: pip install 'vertebral-marrow[batch]')")
    batch.add_argument("manifest", type=Path, help="CSV, one row per study: id, then dicom or seg with the volumes, "
                       "optional truth (a CSV of segment, truth, entity)")
    batch.add_argument("--out", type=Path, required=True, help="output folder: one folder per study, lesions.csv, failures.csv")
    batch.add_argument("--jobs", type=int, help="worker processes of the local cluster (default: one per CPU)")
    batch.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (tcp://host:8786) instead of a local cluster")
    for command in commands.choices.values():
        _common(command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:  # run as the program, not called from a Python session
        _one_blas_thread()
    try:
        args = build_parser().parse_args(_attach_negative_values(list(sys.argv[1:] if argv is None else argv)))
        if not getattr(args, "verbose", False):
            _quiet_native_logs(args.command)
        return _run(args)
    except InputError as exc:
        print(f"error: {_with_flag(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder or file that cannot be written
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _one_blas_thread() -> None:
    """OpenBLAS starts a thread per core when numpy is imported, and that thread spins for a
    while after start-up and after each call: about 0.1 s of a core, taken from the ADC fit's
    own threads. The command line does no linear algebra that threads would help, so, unless the
    user set it, OpenBLAS gets one thread (before numpy is imported: it reads this only then)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _quiet_native_logs(command: str) -> None:
    """VTK's and ITK's own messages ("removing old version of file", coloured ERR| lines) are
    noise on a command line: the library's errors report every failure the analysis can
    meet. -v keeps them. `adc` runs without vtk, so only SimpleITK is quietened there, if used."""
    if command == "adc":  # SimpleITK is imported only if a file needs it: quietened then
        from .inputs.dwi_files import quiet_simpleitk

        quiet_simpleitk()
        return
    import SimpleITK

    import vtk

    SimpleITK.ProcessObject.GlobalWarningDisplayOff()
    vtk.vtkObject.GlobalWarningDisplayOff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)


def _with_flag(exc: InputError) -> str:
    """The message, naming the setting by its command-line flag."""
    from .core.criteria import SETTING

    field = getattr(exc, "field", None) or ""
    flag = SETTING[field].flag if field in SETTING else {"reference_segments": "--reference"}.get(field)
    return f"{exc} ({flag})" if flag else str(exc)


def _run(args) -> int:
    progress = _progress(not getattr(args, "quiet", False))
    if args.command == "phantom":
        from .phantom import make_phantom

        truth = make_phantom(args.out, args.seed, progress)
        print(f"synthetic study written to {args.out}")
        if args.dicom:
            from .phantom_dicom import write_phantom_dicom

            write_phantom_dicom(args.out, args.out / "dicom", args.seed, truth["files"])
            print(f"its DICOM series written to {args.out / 'dicom'}")
        return 0
    if args.command == "cohort":
        from .cohort import run_cohort

        summary = run_cohort(args.csv, args.out, args.adc_cutoff, progress, args.ci_method)
        print(f"cohort of {summary['n_malignant'] + summary['n_benign']} lesions: "
              + ", ".join(f"{key} {summary[key]:.3f}{_interval(summary.get(key + '_ci'))}"
                          for key in ("sensitivity", "specificity", "auc"))
              + f"; written to {args.out}")
        for note in summary["notes"]:
            print(f"note: {note}")
        return 0
    if args.command == "adc":
        return _fit_only(args, progress)
    if args.command == "batch":
        return _batch(args)
    if args.command == "spine":
        return _spine(args, progress)
    if args.command == "followup":
        from .outputs.folder import staged_folder
        from .outputs.followup_report import run_followup

        with staged_folder(args.out) as stage:  # whole or not at all, as every result folder
            rows = run_followup(args.baseline, args.followup, stage, args.criteria)
        for row in rows:
            print(f"{row['kind']:8s} {row['segment'][:24]:24s} {row['status']:8s} {row['response'] or '':5s} {row['rule'] or ''}")
        print(f"outputs in {args.out}: followup.csv, followup.json, followup.png, followup.html")
        print(DISCLAIMER)
        return 0
    if args.command == "demo":
        from .pipeline import run_demo

        result = run_demo(args.out, args.seed, progress)
    else:
        result = _analyze(args, progress)
    _print_summary(result, args.out)
    return 0


def _batch(args) -> int:
    from .batch import run_batch

    summary = run_batch(args.manifest, args.out, args.jobs, args.scheduler,
                        show_progress=not getattr(args, "quiet", False))
    if summary["ignored_columns"]:
        print(f"note: manifest columns ignored: {', '.join(summary['ignored_columns'])}", file=sys.stderr)
    for failure in summary["failures"]:
        print(f"failed: {failure['study']}: {failure['error']}", file=sys.stderr)
    for study, warnings in summary["warnings"].items():
        for warning in warnings:
            print(f"warning: {study}: {warning}", file=sys.stderr)
    print(f"{summary['succeeded']} of {summary['studies']} studies analysed, {summary['lesions']} lesions in "
          f"{args.out / 'lesions.csv'}; failures in {args.out / 'failures.csv'}")
    print(DISCLAIMER)
    if summary["succeeded"] == 0:
        print("error: no study could be analysed; see failures.csv", file=sys.stderr)
        return 2
    return 0


def _interval(pair) -> str:
    return f" (95% CI {pair[0]:.3f}-{pair[1]:.3f})" if pair else ""


def _study_files(args):
    from .inputs.study import StudyFiles, parse_bvalues, parse_spread

    return StudyFiles(
        seg=getattr(args, "seg", None), label_names=getattr(args, "label_names", None),
        adc=getattr(args, "adc", None), dwi=args.dwi or (), dwi_dicom=args.dwi_dicom,
        bvalues=parse_bvalues(args.bvalues) if args.bvalues else (),
        **{sequence.key: getattr(args, sequence.key, None) for sequence in SEQUENCES},
        spread=parse_spread(getattr(args, "levels", ()), getattr(args, "disc", ())),
    )


def _analyze(args, progress):
    from .core.criteria import Options
    from .pipeline import run_analysis

    from .core.criteria import SETTINGS

    from .inputs.study import parse_bvalues

    options = Options(criteria_path=args.criteria, reference_segments=tuple(args.reference),
                      adc_bvalues=parse_bvalues(args.adc_bvalues) if args.adc_bvalues else None,
                      **{setting.name: getattr(args, setting.name) for setting in SETTINGS})
    if args.dicom:
        return _analyze_dicom(args, options, progress)
    return run_analysis(_study_files(args), options, args.out, progress, single_file_report=args.single_file_report)


def _spine(args, progress) -> int:
    from .outputs.folder import staged_folder

    with staged_folder(args.out) as stage:  # whole or not at all, as every result folder
        result = _run_spine_into(args, stage, progress)
    print(f"labels: {result.scheme}; ADC: {result.adc_source}; units {result.adc_units}")
    for row in result.rows:
        adc = f"{row['adc_mean']:.3f}" if row["adc_mean"] is not None else "n/a"
        print(f"{row['level']:4s} {adc:>6s} {row['tier']:13s} {row['flags']}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"outputs in {args.out}: spine.csv, spine.json, spine.png, spine.html")
    print(DISCLAIMER)
    return 0


def _run_spine_into(args, out, progress):
    from .core.criteria import Options
    from .inputs.study import parse_bvalues
    from .spine_analysis import SpineOptions, run_spine

    return run_spine(
        args.labels, out, adc=args.adc, dwi=args.dwi or (), bvalues=parse_bvalues(args.bvalues) if args.bvalues else (),
        dwi_dicom=args.dwi_dicom, dicom=args.dicom, t1=args.t1, fs=args.fs, lesions=args.seg, label_names=args.label_names,
        options=Options(criteria_path=args.criteria, **{name: getattr(args, name) for name in (
            "adc_cutoff", "indeterminate_band", "adc_units", "min_voxels", "fit_method", "bmin", "bmax")}),
        spine_options=SpineOptions(scheme=args.scheme, erosion_mm=args.erosion_mm, marrow_max=args.marrow_max,
                                   reference_levels=tuple(args.reference_levels)),
        progress=progress)


def _analyze_dicom(args, options, progress):
    from .pipeline import run_dicom_analysis

    given = [f"--{name.replace('_', '-')}" for name in ("t1", "t2", "fs", "ct", "bvalues") if getattr(args, name)]
    if given:
        raise InputError(f"{', '.join(given)} with --dicom: choose the series with --t1-series, --t2-series, "
                         "--fs-series, --ct-series instead")
    overrides = {role: getattr(args, f"{role}_series") for role in ("t1", "t2", "fs", "dwi", "adc", "ct")}
    extra = {"in_phase": args.in_phase, "opposed_phase": args.opposed_phase, "fat_fraction": args.fat_fraction}
    result, record = run_dicom_analysis(args.dicom, args.seg, options, args.out, overrides, args.label_names,
                                        progress, files=extra, single_file_report=args.single_file_report)
    for role, series in record["series"].items():
        print(f"{role}: series {series['series_number']} '{series['series_description']}' ({series['why']})")
    for note in record["notes"]:
        print(f"note: {note}")
    return result


def _fit_only(args, progress) -> int:
    from .pipeline import fit_adc_file

    bvalues = fit_adc_file(_study_files(args), args.fit_method or "iwls", args.bmin, args.bmax, args.out, progress,
                           args.compress)
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
        print(f"warning: {warning}", file=sys.stderr)
    print(f"outputs in {out}: results.csv, results.json, overlay.nrrd, report.html, VertebralMarrow.mrml")
    print(DISCLAIMER)

