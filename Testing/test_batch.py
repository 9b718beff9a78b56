"""`vertebral-marrow batch` on Dask: the phantom at two seeds plus a broken study.

The cluster runs in-process (a LocalCluster with two thread workers, processes=False) to keep
the test fast; the CLI's default is worker processes. Expectations come from the phantom's own
ground_truth.json (truth, entity) and from each study's results.csv written by the analysis
of that study alone; the cohort numbers are recounted here with numpy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="batch needs the optional extra: pip install '.[batch]'")

from conftest import run_cli_in_process  # noqa: E402
from VertebralMarrowLib.batch import read_manifest, run_batch  # noqa: E402
from VertebralMarrowLib.cohort import run_cohort  # noqa: E402
from VertebralMarrowLib.errors import InputError  # noqa: E402
from VertebralMarrowLib.phantom_dicom import write_phantom_dicom  # noqa: E402

SEEDS = (3, 4)


def read_rows(path: Path) -> list:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort_folder(tmp_path_factory, phantom_study):
    """Phantoms at two seeds with truth CSVs from their ground truth, and a manifest that adds a
    study whose ADC file is missing (truth paths relative to the manifest, volumes absolute)."""
    folder = tmp_path_factory.mktemp("batch")
    lines = ["id,seg,adc,truth,reference"]
    truths = {}
    for seed in SEEDS:
        study, truth = phantom_study(seed)
        lesions = {name: item for name, item in truth["segments"].items() if item["role"] == "lesion"}
        with (folder / f"truth{seed}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(("segment", "truth", "entity"))
            for name, item in lesions.items():
                writer.writerow((name, "malignant" if item["malignant"] else "benign", item["entity"]))
        truths[f"seed{seed}"] = lesions
        lines.append(f"seed{seed},{study / truth['files']['seg']},{study / truth['files']['adc']},truth{seed}.csv,L3 normal")
    lines.append(f"broken,{study / truth['files']['seg']},no_such_adc.nrrd,,")
    # The first phantom once more, as a DICOM study (dicom column; the DWI is fitted).
    write_phantom_dicom(study, folder / "dicom_study", SEEDS[-1], truth["files"])
    lines[0] += ",dicom"
    lines = [line + "," for line in lines]
    lines.append(f"dicom{SEEDS[-1]},{study / truth['files']['seg']},,truth{SEEDS[-1]}.csv,L3 normal,dicom_study")
    truths[f"dicom{SEEDS[-1]}"] = truths[f"seed{SEEDS[-1]}"]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, truths


@pytest.fixture(scope="module")
def batch_run(cohort_folder):
    from dask.distributed import LocalCluster

    folder, truths = cohort_folder
    out = folder / "out"
    # An existing scheduler, as a cluster past one machine would be given with --scheduler.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run_batch(folder / "manifest.csv", out, scheduler=cluster.scheduler_address, show_progress=False)
    return out, summary, truths


def test_failure_is_reported_and_does_not_stop_the_others(batch_run):
    out, summary, _ = batch_run
    failures = read_rows(out / "failures.csv")
    assert [row["study"] for row in failures] == ["broken"]
    assert "no_such_adc.nrrd" in failures[0]["error"] and "\n" not in failures[0]["error"]
    assert (summary["studies"], summary["succeeded"], summary["failed"]) == (4, 3, 1)
    for study in [f"seed{seed}" for seed in SEEDS] + [f"dicom{SEEDS[-1]}"]:
        assert (out / study / "results.csv").is_file()
        assert (out / study / "report.html").is_file()
    assert (out / f"dicom{SEEDS[-1]}" / "dicom" / "sr.dcm").is_file()
    assert json.loads((out / "batch.json").read_text())["failures"][0]["study"] == "broken"


def test_lesion_table_has_every_lesion_with_study_truth_and_entity(batch_run):
    out, summary, truths = batch_run
    rows = read_rows(out / "lesions.csv")
    header = list(rows[0])
    assert header[:3] == ["study", "segment", "role"] and header[-2:] == ["truth", "entity"]
    assert {row["study"] for row in rows} == set(truths)
    for study, lesions in truths.items():
        own = {row["segment"]: row for row in read_rows(out / study / "results.csv") if row["role"] == "lesion"}
        mine = {row["segment"]: row for row in rows if row["study"] == study}
        assert set(mine) == set(own) == set(lesions)
        for segment, row in mine.items():
            assert {key: row[key] for key in own[segment]} == own[segment]  # the study's own results, unchanged
            assert row["truth"] == ("malignant" if lesions[segment]["malignant"] else "benign")
            assert row["entity"] == lesions[segment]["entity"]
            if lesions[segment]["adc_mean"] is not None:  # not the bone island (no DWI signal) nor the 5-mm focus
                assert float(row["adc_mean"]) == pytest.approx(lesions[segment]["adc_mean"], abs=0.12)
    assert summary["lesions"] == len(rows)


def test_cohort_reads_the_batch_table(batch_run, tmp_path):
    out, _, _ = batch_run
    rows = [row for row in read_rows(out / "lesions.csv") if row["adc_mean"]]  # a lesion without ADC is left out
    adc = np.array([float(row["adc_mean"]) for row in rows])
    malignant = np.array([row["truth"] == "malignant" for row in rows])
    result = run_cohort(out / "lesions.csv", tmp_path / "cohort")
    tp, fp = int((adc[malignant] <= 1.21).sum()), int((adc[~malignant] <= 1.21).sum())
    assert result["n_lesions"] == len(rows)
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (
        tp, int(malignant.sum()) - tp, fp, int((~malignant).sum()) - fp)
    assert result["sensitivity_ci"][0] <= result["sensitivity"] <= result["sensitivity_ci"][1]


def test_local_cluster_by_default_and_all_failed_is_still_written(tmp_path):
    (tmp_path / "m.csv").write_text("id,seg,adc\nonly,missing.seg.nrrd,missing.nrrd\n", encoding="utf-8")
    summary = run_batch(tmp_path / "m.csv", tmp_path / "out", jobs=1, show_progress=False, processes=False)
    assert summary["succeeded"] == 0 and summary["cluster"].startswith("LocalCluster")
    assert read_rows(tmp_path / "out" / "failures.csv")[0]["study"] == "only"
    assert (tmp_path / "out" / "lesions.csv").read_text().startswith("study,segment,role,")


BAD_MANIFESTS = {
    "no id column": ("seg,adc\na.seg.nrrd,a.nrrd\n", "no id column"),
    "no input column": ("id,t1\ns1,t1.nrrd\n", "neither a dicom nor a seg"),
    "duplicate id": ("id,seg\ns1,a.seg.nrrd\ns1,b.seg.nrrd\n", "also on line 2"),
    "id with a slash": ("id,seg\n../x,a.seg.nrrd\n", "plain folder name"),
    "no studies": ("id,seg\n", "no studies"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_refused_up_front(tmp_path, case):
    text, words = BAD_MANIFESTS[case]
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=words):
        read_manifest(tmp_path / "m.csv")


def test_manifest_paths_are_relative_to_its_folder_and_unknown_columns_reported(tmp_path):
    (tmp_path / "m.csv").write_text("id,seg,dwi,bvalues,age\ns1,a.seg.nrrd,b0.nrrd;b800.nrrd,\"0,800\",63\n",
                                    encoding="utf-8")
    rows, ignored = read_manifest(tmp_path / "m.csv")
    assert ignored == ["age"]
    assert rows[0].cells["seg"] == str(tmp_path / "a.seg.nrrd")
    assert rows[0].cells["dwi"] == f"{tmp_path / 'b0.nrrd'};{tmp_path / 'b800.nrrd'}"


def test_cli_runs_worker_processes_by_default(tmp_path):
    """The CLI's LocalCluster runs studies in worker processes; a study that fails there is
    reported and, with no study analysed, the exit status is 2."""
    (tmp_path / "m.csv").write_text("id,seg,adc\nonly,missing.seg.nrrd,missing.nrrd\n", encoding="utf-8")
    done = run_cli_in_process(["-q", "batch", tmp_path / "m.csv", "--out", tmp_path / "o", "--jobs", "1"])
    assert done.returncode == 2
    assert "failed: only:" in done.stderr and "error: no study could be analysed" in done.stderr
    summary = json.loads((tmp_path / "o" / "batch.json").read_text())
    assert summary["cluster"] == "LocalCluster (processes)"
    assert read_rows(tmp_path / "o" / "failures.csv")[0]["study"] == "only"


def test_cli_bad_scheduler_is_one_error_line(tmp_path):
    (tmp_path / "m.csv").write_text("id,seg,adc\ns1,a.seg.nrrd,a.nrrd\n", encoding="utf-8")
    done = run_cli_in_process(["-q", "batch", tmp_path / "m.csv", "--out", tmp_path / "o",
                               "--scheduler", "tcp://127.0.0.1:9"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "scheduler" in lines[0], done.stderr
