"""The real loop on the demo data, driven through snakemake the way a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import REPO, tree_digest
from iterseg.dicom_series import find_image_series
from seg_checks import frame_positions_on_source_slices, referenced_series, seg_label_map

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

FIRST, SECOND = "2026-01-15", "2026-03-02"


def snakemake(project: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    """Run snakemake from the test's environment in ``project``, as a user would from the repo."""
    exe = Path(sys.executable).parent / "snakemake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    # A user's stray nnU-Net variables must not leak into the workflow: poison one.
    env["nnUNet_raw"] = str(project / "not-here")
    return subprocess.run(
        [
            str(exe),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(project),
            "--configfile",
            "config/demo.yaml",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "config", project / "config")
    subprocess.run(
        [str(Path(sys.executable).parent / "iterseg"), "-q", "demo-data", str(project / "data/rawdata/demo")],
        check=True,
    )
    before = tree_digest(project / "data/rawdata")
    run = snakemake(project)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    after = tree_digest(project / "data/rawdata")
    return {"project": project, "before": before, "after": after, "run": run}


def test_latest_points_at_the_second_iteration(demo_run: dict) -> None:
    results = demo_run["project"] / "data/results/demo"
    assert os.readlink(results / "latest") == SECOND
    assert (results / "latest" / "iteration.json").is_file()
    summary = json.loads((results / "latest" / "iteration.json").read_text())
    assert summary["dataset_name"] == "Dataset902_demo_20260302"
    assert summary["plans_source"] == "Dataset901_demo_20260115"


def test_second_iteration_fine_tunes_with_transferred_plans(demo_run: dict) -> None:
    project = demo_run["project"]
    log = (project / f"data/results/demo/{SECOND}/logs/train_fold_0.log").read_text()
    first_ckpt = project / (
        "data/procdata/demo/2026-01-15__demo/nnUNet_results/Dataset901_demo_20260115/"
        "nnUNetTrainerIterSegDemo__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    )
    assert "with plans transferred from Dataset901_demo_20260115" in log
    assert f"Loading pretrained weights from file  {first_ckpt.resolve()}" in log  # nnU-Net's own line
    first_log = (project / f"data/results/demo/{FIRST}/logs/train_fold_0.log").read_text()
    assert "training from scratch" in first_log and "Loading pretrained weights" not in first_log
    plans1 = json.loads(
        (
            project / "data/procdata/demo/2026-01-15__demo/nnUNet_preprocessed/"
            "Dataset901_demo_20260115/nnUNetPlans.json"
        ).read_text()
    )
    plans2 = json.loads(
        (
            project / "data/procdata/demo/2026-03-02__demo/nnUNet_preprocessed/"
            "Dataset902_demo_20260302/nnUNetPlans.json"
        ).read_text()
    )
    assert plans2["dataset_name"] == "Dataset902_demo_20260302"
    assert plans2["configurations"]["3d_fullres"] == plans1["configurations"]["3d_fullres"]


def test_second_iteration_trains_on_all_snapshots_newest_annotation_winning(demo_run: dict) -> None:
    cases = json.loads(
        (
            demo_run["project"] / "data/procdata/demo/2026-03-02__demo/nnUNet_raw/"
            "Dataset902_demo_20260302/cases.json"
        ).read_text()
    )
    assert len(cases) == 11
    by_patient = {c["patient_id"]: c["snapshot"] for c in cases}
    assert by_patient["P001"] == SECOND and by_patient["P003"] == FIRST and by_patient["P011"] == SECOND


@pytest.mark.parametrize("iteration", [FIRST, SECOND])
def test_one_exact_seg_per_inbox_case(demo_run: dict, iteration: str) -> None:
    project = demo_run["project"]
    out = project / "data/results/demo" / iteration
    inbox = project / "data/rawdata/demo/inbox"
    cases = sorted(p.name for p in inbox.iterdir())
    assert sorted(p.stem for p in (out / "seg").glob("*.dcm")) == cases
    for case in cases:
        (series,) = find_image_series(inbox / case, "CT")
        seg_path = out / "seg" / f"{case}.dcm"
        assert referenced_series(seg_path) == series.series_uid
        assert frame_positions_on_source_slices(seg_path, series.datasets)
        saved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / f"{case}.nii.gz")))
        assert saved.any(), f"{case}: the demo model predicted nothing"
        assert np.array_equal(seg_label_map(seg_path, series.datasets), saved)
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
        assert seg.PatientID == series.patient_id


def test_rawdata_is_byte_identical(demo_run: dict) -> None:
    assert demo_run["after"] == demo_run["before"]
    assert not list((demo_run["project"] / "data/rawdata").rglob(".imgtools"))


def test_one_log_per_rule_and_iteration(demo_run: dict) -> None:
    for iteration in (FIRST, SECOND):
        logs = sorted(
            p.name for p in (demo_run["project"] / "data/results/demo" / iteration / "logs").iterdir()
        )
        assert logs == [
            "convert_assemble.log",
            "convert_snapshot.log",
            "plan_preprocess.log",
            "predict_inbox.log",
            "results_promote.log",
            "train_fold_0.log",
        ]


def test_rerun_with_nothing_new_schedules_no_job(demo_run: dict) -> None:
    dry = snakemake(demo_run["project"], "-n")
    assert dry.returncode == 0, dry.stderr
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_failed_iteration_leaves_latest_on_the_last_good_one(demo_run: dict) -> None:
    """A new snapshot whose annotation cannot be converted fails loudly; `latest` stays put."""
    project = demo_run["project"]
    raw = project / "data/rawdata/demo"
    broken = raw / "2026-04-20__demo" / "P008"
    shutil.copytree(raw / "2026-03-02__demo" / "P008", broken)
    rt_path = next((broken / "RTSTRUCT").glob("*.dcm"))
    rt = pydicom.dcmread(rt_path)
    for roi in rt.StructureSetROISequence:
        roi.ROIName = "Spleen"
    rt.save_as(rt_path)
    try:
        run = snakemake(project)
        assert run.returncode != 0
        log = (project / "data/results/demo/2026-04-20/logs/convert_snapshot.log").read_text()
        assert "P008" in log and "could not be converted" in log
        assert os.readlink(project / "data/results/demo/latest") == SECOND
    finally:
        shutil.rmtree(broken.parent)


def test_conversion_check_passed_for_every_case(demo_run: dict) -> None:
    for folder, n_cases in (("2026-01-15__demo", 7), ("2026-03-02__demo", 7)):
        report = json.loads(
            (demo_run["project"] / "data/procdata/demo" / folder / "converted/check.json").read_text()
        )
        assert report["cases"] == n_cases and report["rois_compared"] == 2 * n_cases
        assert report["mismatches"] == 0 and all(r["ok"] for r in report["rois"])
        seg_rois = [r for r in report["rois"] if r["annotation"] == "SEG"]
        assert seg_rois and all(r["differing_voxels"] == 0 for r in seg_rois)


def test_status_and_rollback_through_the_cli(demo_run: dict) -> None:
    project = demo_run["project"]
    iterseg = str(Path(sys.executable).parent / "iterseg")
    status = subprocess.run(
        [iterseg, "status", "demo"], cwd=project, capture_output=True, text=True, check=True
    )
    rows = status.stdout.splitlines()
    assert rows[1].split()[:3] == [FIRST, "Dataset901_demo_20260115", "7"]
    assert rows[2].split()[:3] == [SECOND, "Dataset902_demo_20260302", "11"] and rows[2].endswith("<- latest")
    subprocess.run([iterseg, "rollback", "demo", "--reason", "test"], cwd=project, check=True)
    assert os.readlink(project / "data/results/demo/latest") == FIRST
    # snakemake does not undo a rollback: nothing to do, latest stays
    dry = snakemake(project, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    subprocess.run([iterseg, "rollback", "demo", SECOND], cwd=project, check=True)
    assert os.readlink(project / "data/results/demo/latest") == SECOND
    history = (project / "data/results/demo/latest_history.jsonl").read_text().splitlines()
    assert [json.loads(h)["action"] for h in history][-2:] == ["rollback", "rollback"]


def test_our_unedited_prediction_dropped_back_is_excluded(demo_run: dict) -> None:
    """A researcher drops an inbox case with our SEG, unedited, into a new snapshot."""
    project = demo_run["project"]
    raw = project / "data/rawdata/demo"
    third = raw / "2026-05-10__demo"
    shutil.copytree(raw / "inbox" / "P101", third / "P101")
    (third / "P101" / "SEG").mkdir()
    shutil.copy(
        project / "data/results/demo/latest/seg/P101.dcm", third / "P101" / "SEG" / "from_iterseg.dcm"
    )
    shutil.copytree(raw / "2026-03-02__demo" / "P008", third / "P008")
    try:
        run = snakemake(project, "--until", "convert_snapshot")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        converted = project / "data/procdata/demo/2026-05-10__demo/converted"
        assert [c["patient_id"] for c in json.loads((converted / "cases.json").read_text())] == ["P008"]
        excluded = json.loads((converted / "excluded.json").read_text())
        assert [e["patient_id"] for e in excluded] == ["P101"]
        assert "unrefined iterseg prediction" in excluded[0]["reason"]
        log = (project / "data/results/demo/2026-05-10/logs/convert_snapshot.log").read_text()
        assert "unrefined iterseg prediction" in log
    finally:
        shutil.rmtree(third)
        shutil.rmtree(project / "data/procdata/demo/2026-05-10__demo", ignore_errors=True)
        shutil.rmtree(project / "data/results/demo/2026-05-10", ignore_errors=True)
