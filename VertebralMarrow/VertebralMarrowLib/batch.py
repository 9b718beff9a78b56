"""`vertebral-marrow batch`: many studies on Dask distributed, one output folder per study.

The analysis of one study stays the plain function pipeline.run_analysis; this module only
reads the manifest, hands one study per task to a Dask cluster (a LocalCluster of worker
processes by default, or an existing scheduler to go past one machine), shows progress on
stderr, and gathers `lesions.csv` (every lesion row, a leading `study` column, plus `truth`
and `entity` when the manifest gives them; `cohort` reads it) and `failures.csv`
(`study, error`). A failing study never stops the others.

dask and distributed are an optional extra (`pip install .[batch]`); Slicer does not bundle
them, and nothing else in the package needs them.
"""

from __future__ import annotations

import csv
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from . import DISCLAIMER
from .errors import InputError

PATH_COLUMNS = ("dicom", "seg", "label_names", "adc", "t1", "t2", "fs", "ct", "truth")
OTHER_COLUMNS = ("id", "dwi", "bvalues", "reference", "cutoff", "adc_units")
LESION_PREFIX = ("study",)
TRUTH_COLUMNS = ("truth", "entity")


@dataclass
class ManifestRow:
    """One study of the manifest: its id, the cells as given (paths made absolute), its line."""
    id: str
    cells: dict
    line: int
    truth: Optional[Path] = None


def read_manifest(path) -> tuple:
    """(rows, ignored columns). Checks the manifest's shape; files are checked per study.

    Relative paths are relative to the manifest's folder; empty cells mean "not given".
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} not found; give a CSV with one row per study (columns id, dicom or seg, ...)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fieldnames = [name.strip().lower() for name in (reader.fieldnames or []) if name]
            records = [(reader.line_num, record) for record in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"manifest {path} is not a readable CSV ({exc}); save it as comma-separated UTF-8") from None
    if "id" not in fieldnames:
        raise InputError(f"manifest {path} has no id column (found: {', '.join(fieldnames) or 'none'}); "
                         "give each study an id, the name of its output folder")
    if "dicom" not in fieldnames and "seg" not in fieldnames:
        raise InputError(f"manifest {path} has neither a dicom nor a seg column; give each study a DICOM folder "
                         "or a segmentation with its volumes")
    ignored = [name for name in fieldnames if name not in PATH_COLUMNS + OTHER_COLUMNS]
    base = path.resolve().parent
    rows, seen = [], {}
    for line, record in records:
        cells = {(key or "").strip().lower(): (value or "").strip() for key, value in record.items()
                 if isinstance(value, str)}
        if not any(cells.values()):
            continue
        study = cells.get("id", "")
        if not study:
            raise InputError(f"manifest {path} line {line} has no id; every study needs one (its output folder's name)")
        if study in seen:
            raise InputError(f"manifest {path} line {line}: id '{study}' is also on line {seen[study]}; ids must be unique")
        if any(char in study for char in "/\\") or study in (".", ".."):
            raise InputError(f"manifest {path} line {line}: id '{study}' must be a plain folder name (no / or \\)")
        seen[study] = line
        for key in PATH_COLUMNS:
            if cells.get(key):
                cells[key] = str(_absolute(cells[key], base))
        if cells.get("dwi"):
            cells["dwi"] = ";".join(str(_absolute(part.strip(), base)) for part in cells["dwi"].split(";") if part.strip())
        rows.append(ManifestRow(study, cells, line, Path(cells["truth"]) if cells.get("truth") else None))
    if not rows:
        raise InputError(f"manifest {path} has a header but no studies; add one row per study")
    return rows, ignored


def _absolute(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def study_options(row: ManifestRow):
    """The Options of one manifest row (reference, cutoff, adc_units), as `analyze` builds them."""
    from .core.criteria import Options

    cells = row.cells
    cutoff = None
    if cells.get("cutoff"):
        try:
            cutoff = float(cells["cutoff"])
        except ValueError:
            raise InputError(f"cutoff '{cells['cutoff']}' is not a number (10^-3 mm^2/s)") from None
    return Options(
        adc_cutoff=cutoff, adc_units=cells.get("adc_units") or "auto",
        reference_segments=tuple(part.strip() for part in cells.get("reference", "").split(";") if part.strip()),
    )


def study_files(row: ManifestRow):
    """The StudyFiles of a manifest row that names its files (not a DICOM folder)."""
    from .inputs.study import StudyFiles, parse_bvalues

    cells = row.cells
    given = lambda key: Path(cells[key]) if cells.get(key) else None  # noqa: E731
    return StudyFiles(
        seg=given("seg"), label_names=given("label_names"), adc=given("adc"),
        dwi=tuple(Path(part) for part in cells.get("dwi", "").split(";") if part),
        bvalues=parse_bvalues(cells["bvalues"]) if cells.get("bvalues") else (),
        t1=given("t1"), t2=given("t2"), fs=given("fs"), ct=given("ct"),
    )


def analyse_row(row: ManifestRow, out_dir: Path):
    """Run the analysis of one manifest row into out_dir: a DICOM folder or the files."""
    from .pipeline import run_analysis, run_dicom_analysis

    cells = row.cells
    if not cells.get("seg"):
        raise InputError("no seg: give the study's segmentation (seg column)")
    options = study_options(row)
    if cells.get("dicom"):
        label_names = Path(cells["label_names"]) if cells.get("label_names") else None
        return run_dicom_analysis(Path(cells["dicom"]), Path(cells["seg"]), options, out_dir, label_names=label_names)[0]
    return run_analysis(study_files(row), options, out_dir)


def read_truth(path: Path) -> dict:
    """segment -> (truth, entity) from a study's truth CSV (columns segment, truth, optional entity)."""
    if not path.is_file():
        raise InputError(f"truth file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        if "segment" not in columns or "truth" not in columns:
            raise InputError(f"truth file {path} needs columns segment and truth (found: {', '.join(columns) or 'none'})")
        truth = {}
        for record in reader:
            segment = (record.get(columns["segment"]) or "").strip()
            value = (record.get(columns["truth"]) or "").strip().lower()
            if not segment:
                continue
            if value not in ("malignant", "benign"):
                raise InputError(f"truth file {path} line {reader.line_num}: truth '{value}' is not malignant or benign")
            entity = (record.get(columns["entity"]) or "").strip() if "entity" in columns else ""
            truth[segment] = (value, entity)
    return truth


def run_study(row: ManifestRow, out_dir: Path) -> dict:
    """Analyse one study into out_dir/<id>: {study, rows (lesion rows), warnings, error}.

    Runs on a Dask worker; every failure is caught and returned as one line so that the
    other studies go on.
    """
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()  # as the CLI does: VTK's notices are noise on a worker's stderr
    try:
        truth = read_truth(row.truth) if row.truth else None
        result = analyse_row(row, Path(out_dir) / row.id)
    except InputError as exc:
        return {"study": row.id, "rows": [], "warnings": [], "error": str(exc)}
    except Exception as exc:  # a bug or a file no reader understood: still only this study fails
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return {"study": row.id, "rows": [], "warnings": [],
                "error": f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"}
    lesions = [dict(row_) for row_ in result.rows if row_["role"] == "lesion"]
    warnings = []
    if truth is not None:
        for lesion in lesions:
            lesion["truth"], lesion["entity"] = truth.get(lesion["segment"], ("", ""))
        unknown = sorted(set(truth) - {lesion["segment"] for lesion in lesions})
        if unknown:
            warnings.append(f"truth for segment(s) that are not lesions of the study: {', '.join(unknown)}")
    return {"study": row.id, "rows": lesions, "warnings": warnings, "error": ""}


def run_batch(manifest, out_dir, jobs: Optional[int] = None, scheduler: Optional[str] = None,
              show_progress: bool = True, processes: bool = True) -> dict:
    """Run every study of the manifest on Dask; write lesions.csv, failures.csv, batch.json.

    jobs: worker processes of the LocalCluster (default: the CPU count); scheduler: the
    address of a running Dask scheduler (tcp://host:8786) instead of a LocalCluster; processes
    False runs the LocalCluster's workers as threads (for tests). Returns batch.json's content.
    """
    rows, ignored = read_manifest(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs {jobs}: give at least one worker")
    client, cluster = _client(jobs, scheduler, processes)
    try:
        results = _gather(client, rows, out, show_progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    by_id = {result["study"]: result for result in results}
    ordered = [by_id[row.id] for row in rows]
    has_truth = any(row.truth for row in rows)
    _write_lesions(ordered, out / "lesions.csv", has_truth)
    failures = [(result["study"], result["error"]) for result in ordered if result["error"]]
    with (out / "failures.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("study", "error"))
        writer.writerows(failures)
    summary = {
        "manifest": str(manifest),
        "studies": len(rows),
        "succeeded": len(rows) - len(failures),
        "failed": len(failures),
        "lesions": sum(len(result["rows"]) for result in ordered),
        "failures": [{"study": study, "error": error} for study, error in failures],
        "warnings": {result["study"]: result["warnings"] for result in ordered if result["warnings"]},
        "ignored_columns": ignored,
        "cluster": scheduler or f"LocalCluster ({'processes' if processes else 'threads'})",
        "files": ["lesions.csv", "failures.csv", "batch.json"] + [row.id + "/" for row in rows],
        "disclaimer": DISCLAIMER,
    }
    (out / "batch.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _client(jobs: Optional[int], scheduler: Optional[str], processes: bool) -> tuple:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("batch needs dask and distributed, which are not installed; "
                         "pip install 'vertebral-marrow[batch]' (or: pip install 'dask[distributed]')") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"no Dask scheduler answers at {scheduler} ({exc}); start one (dask scheduler) "
                             "or leave out --scheduler for a local cluster") from None
    cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=processes, dashboard_address=None)
    return Client(cluster), cluster


def _gather(client, rows: List[ManifestRow], out: Path, show_progress: bool) -> list:
    """Submit one task per study; collect results as they finish, drawing a bar on stderr."""
    from dask.distributed import as_completed

    futures = {client.submit(run_study, row, out, key=f"study-{index}-{row.id}", pure=False): row
               for index, row in enumerate(rows)}
    results, failed = [], 0
    bar = _ProgressBar(len(rows), show_progress)
    for future in as_completed(futures):
        row = futures[future]
        if future.status == "finished":
            result = future.result()
        else:  # the worker itself died (memory, a crash in a library): only this study fails
            exception = future.exception()
            result = {"study": row.id, "rows": [], "warnings": [],
                      "error": f"worker failed: {type(exception).__name__}: {exception}"}
        failed += bool(result["error"])
        results.append(result)
        bar.update(len(results), failed, row.id)
    bar.close()
    return results


class _ProgressBar:
    """`[#####.....] 5/10 studies, 1 failed (last: id)` redrawn in place on stderr."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.update(0, 0, "")

    def update(self, done: int, failed: int, last: str) -> None:
        if not self.enabled:
            return
        filled = round(self.WIDTH * done / self.total)
        text = f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} studies, {failed} failed"
        if last:
            text += f" (last: {last[:30]})"
        sys.stderr.write(text.ljust(90))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _write_lesions(results: list, path: Path, has_truth: bool) -> None:
    from .outputs.cells import cell as table_cell
    from .outputs.table import COLUMN_NAMES

    columns = LESION_PREFIX + COLUMN_NAMES + (TRUTH_COLUMNS if has_truth else ())
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for result in results:
            for row in result["rows"]:
                cells = dict(row, study=result["study"])
                writer.writerow([table_cell(cells.get(column)) for column in columns])
