"""The real loop on the demo data, driven through snakemake the way a user runs it."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from conftest import REPO, tree_digest
from iterseg.dicom.series import find_image_series
from seg_checks import frame_positions_on_source_slices, referenced_series, seg_label_map

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

FIRST, SECOND, THIRD = "2026-01-15", "2026-03-02", "2026-04-01"
PRE = "data/procdata/demo/{date}__demo/nnUNet_preprocessed/{name}"
TEST_PATIENTS = {"P003", "P004"}  # config/demo.yaml


def procdata(project: Path, date: str) -> Path:
    return project / f"data/procdata/demo/{date}__demo"


def ct_as_nifti(folder: Path, nifti: Path) -> Path:
    """The CT series in ``folder`` written as the NIfTI file ``nifti``: a case that comes without DICOM."""
    (ct,) = find_image_series(folder, "CT")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in ct.files])
    sitk.WriteImage(reader.Execute(), str(nifti))
    return nifti


GATE_STRICT = "config/gate_strict.yaml"  # a gate no iteration passes: demands a gain of 1.0


def snakemake(
    project: Path,
    *args: str,
    gate: str | None = None,
    timeout: int = 1500,
    config: str = "config/demo.yaml",
) -> subprocess.CompletedProcess[str]:
    """Run snakemake from the test's environment in ``project``, as a user would from the repo.

    ``gate``: a config file replacing the demo's own promotion gate (the production default);
    ``config``: the project's config file to run with.
    """
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
            "--configfile",  # resolved against the caller's directory, not --directory
            str(project / config),
            *([str(project / gate)] if gate else []),
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
    (project / GATE_STRICT).write_text("promotion:\n  max_dice_drop: -1.0\n")
    subprocess.run(
        [str(Path(sys.executable).parent / "iterseg"), "-q", "demo-data", str(project / "data/rawdata/demo")],
        check=True,
    )
    before = tree_digest(project / "data/rawdata")
    # Under the demo's own gate (the production 0.02); the third iteration is gated out.
    run = snakemake(project)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    after = tree_digest(project / "data/rawdata")
    return {"project": project, "before": before, "after": after, "run": run}


def test_latest_points_at_the_second_iteration(demo_run: dict) -> None:
    results = demo_run["project"] / "data/results/demo"
    assert os.readlink(results / "latest") == SECOND
    assert (results / "latest" / "iteration.json").is_file()
    summary = json.loads((results / "latest" / "iteration.json").read_text())
    assert summary["dataset_name"] == "Dataset902_demo_20260302" and summary["promoted"] is True
    plan = json.loads((procdata(demo_run["project"], SECOND) / "planned.json").read_text())
    assert plan["plans_source"] == "Dataset901_demo_20260115"


def test_the_demo_model_learns_both_labels_and_improves(demo_run: dict) -> None:
    """The loop pays on the demo: the liver and the tumour found, the second iteration better."""
    results = demo_run["project"] / "data/results/demo"

    def test_dice(date: str) -> dict[str, float]:
        summary = json.loads((results / date / "test_metrics.json").read_text())["summary"]
        return {label: summary[label]["dice_mean"] for label in ("liver", "tumour")}

    first, second = test_dice(FIRST), test_dice(SECOND)
    assert second["liver"] >= 0.85 and second["tumour"] >= 0.6, (first, second)
    # The tumour, the label the refinements are about, must gain (by 0.12-0.17 in the 7 runs
    # measured for issue 16) and so must the mean. The liver is near its ceiling from the first
    # iteration on (0.95-0.98) and does not gain on average (-0.016 to +0.015 in those runs):
    # it may lose no more than the gate allows the mean.
    allowed = yaml.safe_load((demo_run["project"] / "config/demo.yaml").read_text())["promotion"]
    assert allowed["max_dice_drop"] == 0.02
    assert second["tumour"] >= first["tumour"], (first, second)
    assert second["liver"] >= first["liver"] - allowed["max_dice_drop"], (first, second)
    assert sum(second.values()) > sum(first.values()), (first, second)
    promotion = json.loads((results / SECOND / "manifest.json").read_text())["promotion"]
    assert promotion["promoted"] is True and "(allowed drop 0.02)" in promotion["reason"], promotion


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
    record = json.loads((procdata(demo_run["project"], SECOND) / "assembled.json").read_text())
    cases = record["records"]
    assert len(cases) == 12 and len(record["cases"]) == 10  # 2 patients held out
    by_patient = {c["patient_id"]: c for c in cases}
    assert by_patient["P001"]["snapshot"] == SECOND and by_patient["P003"]["snapshot"] == FIRST
    # the refined SEG of P001 supersedes the first snapshot's annotation of the same image series
    (old,) = by_patient["P001"]["superseded"]
    assert old["snapshot"] == FIRST and old["same_content"] is False
    assert old["annotation_series_uid"] != by_patient["P001"]["annotation_series_uid"]
    assert {p for p, c in by_patient.items() if c["change"] == "refined"} == {"P001", "P002", "P004"}
    assert record["summary"]["new"] == 5 and record["summary"]["refined"] == 3
    assert by_patient["P103"]["change"] == "new"  # the refined prediction of an inbox case


def test_plans_override_and_schedules_reach_nnunet(demo_run: dict) -> None:
    project = demo_run["project"]
    plans = json.loads(
        (project / PRE.format(date=FIRST, name="Dataset901_demo_20260115") / "nnUNetPlans.json").read_text()
    )
    conf = plans["configurations"]["3d_fullres"]
    arch = conf["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 4 and arch["features_per_stage"] == [16, 32, 64, 128]
    assert len(arch["strides"]) == 4 and conf["batch_size"] == 2
    assert conf["patch_size"] == [32, 48, 48]  # smaller than the 32x64x64 image: sliding windows at inference
    record = json.loads((procdata(project, FIRST) / "planned.json").read_text())
    assert record["overrides"]["n_stages"] == 4 and 0 < record["parameters"] < 2_000_000
    # nnU-Net trained with those plans: the checkpoint carries them
    import torch

    fold = json.loads((procdata(project, FIRST) / "trained/fold_0.json").read_text())
    saved = torch.load(fold["checkpoint"], map_location="cpu", weights_only=False)
    assert saved["init_args"]["plans"]["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "features_per_stage"
    ] == [16, 32, 64, 128]
    assert "fold 0: 12 epochs" in (project / f"data/results/demo/{FIRST}/logs/train_fold_0.log").read_text()
    second = (project / f"data/results/demo/{SECOND}/logs/train_fold_0.log").read_text()
    assert "fold 0: 8 epochs, initial lr 0.002" in second
    # nnU-Net's own training logs: the first iteration's 12 epochs at the trainer's lr 3e-3,
    # the fine-tuning's 8 at lr 0.002
    folder = "nnUNetTrainerIterSegDemo__nnUNetPlans__3d_fullres/fold_0"
    for date, name, epochs, lr in (
        (FIRST, "Dataset901_demo_20260115", 12, "0.003"),
        (SECOND, "Dataset902_demo_20260302", 8, "0.002"),
    ):
        (nnunet_log,) = (procdata(project, date) / "nnUNet_results" / name / folder).glob(
            "training_log_*.txt"
        )
        text = nnunet_log.read_text()
        epochs_run = re.findall(r"Epoch (\d+)\s*$", text, flags=re.MULTILINE)
        assert epochs_run == [str(e) for e in range(epochs)], epochs_run
        assert re.findall(r"Current learning rate: ([\d.]+)", text)[0] == lr
    # fine-tuning keeps the segmentation head too (nnU-Net alone re-initialises it)
    assert "kept the previous iteration's segmentation head (6 tensors)" in second


def test_test_patients_never_reach_training(demo_run: dict) -> None:
    project = demo_run["project"]
    for date, name in ((FIRST, "Dataset901_demo_20260115"), (SECOND, "Dataset902_demo_20260302")):
        record = json.loads((procdata(project, date) / "assembled.json").read_text())
        assert set(record["test_set"]["patients"]) == TEST_PATIENTS
        test_ids = [r["case_id"] for r in record["records"] if r["split"] == "test"]
        assert (
            len(test_ids) == 2
            and {r["patient_id"] for r in record["records"] if r["split"] == "test"} == TEST_PATIENTS
        )
        pre = project / PRE.format(date=date, name=name)
        splits = json.loads((pre / "splits_final.json").read_text())
        in_splits = {c for split in splits for c in split["train"] + split["val"]}
        assert in_splits and not in_splits & set(test_ids)
        preprocessed = [p.name for p in (pre / "nnUNetPlans_3d_fullres").iterdir()]
        assert preprocessed and not [p for p in preprocessed if p.split(".")[0] in test_ids]
        raw = procdata(project, date) / "nnUNet_raw" / name
        assert sorted(p.name for p in (raw / "labelsTs").iterdir()) == sorted(f"{c}.nii.gz" for c in test_ids)
        metrics = json.loads((project / f"data/results/demo/{date}/test_metrics.json").read_text())
        assert sorted(metrics["cases"]) == sorted(test_ids)
        for case in metrics["cases"].values():
            assert set(case["metrics"]) == {"liver", "tumour"}
            assert 0.0 <= case["metrics"]["liver"]["dice"] <= 1.0
    # P004's refined annotation (second snapshot) became its test label
    second = json.loads((procdata(project, SECOND) / "assembled.json").read_text())
    (p004,) = [r for r in second["records"] if r["patient_id"] == "P004"]
    assert p004["split"] == "test" and p004["snapshot"] == SECOND


def test_partially_labelled_case_trains_with_the_ignore_label(demo_run: dict) -> None:
    project = demo_run["project"]
    name = "Dataset902_demo_20260302"
    record = json.loads((procdata(project, SECOND) / "assembled.json").read_text())
    (p011,) = [r for r in record["records"] if r["patient_id"] == "P011"]
    assert p011["missing_rois"] == ["tumour"] and p011["split"] == "train"
    assert record["labels"] == {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}
    assert record["summary"]["partial_cases"] == 1 and record["summary"]["missing_rois"] == {"tumour": 1}
    converted = sitk.GetArrayFromImage(
        sitk.ReadImage(str(procdata(project, SECOND) / "converted" / p011["label"]))
    )
    trained = sitk.GetArrayFromImage(sitk.ReadImage(str(project / p011["raw_label"])))
    assert set(np.unique(converted)) == {0, 1}  # conversion stays faithful to the annotation
    assert set(np.unique(trained)) == {1, 3}  # liver kept, the rest unknown
    assert np.array_equal(trained == 1, converted == 1) and p011["ignored_voxels"] == int(
        (converted == 0).sum()
    )
    model = (
        procdata(project, SECOND) / f"nnUNet_results/{name}/nnUNetTrainerIterSegDemo__nnUNetPlans__3d_fullres"
    )
    assert json.loads((model / "dataset.json").read_text())["labels"]["ignore"] == 3
    assert (model / "fold_0/checkpoint_final.pth").is_file()
    assert (
        "lack ROIs {'tumour': 1}"
        in (project / f"data/results/demo/{SECOND}/logs/convert_assemble.log").read_text()
    )


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
            "evaluate_effort.log",
            "evaluate_test.log",
            "plan_preprocess.log",
            "predict_inbox.log",
            "report_qc.log",
            "report_worklist.log",
            "results_promote.log",
            "train_fold_0.log",
        ]
    assert [p.name for p in (demo_run["project"] / "data/results/demo/logs").iterdir()] == [
        "report_dataset.log"
    ]


def test_manifest_records_what_the_model_learned_from(demo_run: dict) -> None:
    from iterseg.config import config_hash

    project = demo_run["project"]
    manifest = json.loads((project / f"data/results/demo/{SECOND}/manifest.json").read_text())
    assert manifest["iteration"] == SECOND and manifest["parent"]["iteration"] == FIRST
    first_ckpt = json.loads((procdata(project, FIRST) / "trained/fold_0.json").read_text())["checkpoint"]
    assert manifest["parent"]["checkpoints"] == {"0": first_ckpt}
    assert manifest["config_sha256"] == config_hash(manifest["config"])
    assert manifest["config"]["datasets"]["demo"]["test_set"]["patients"] == ["P003", "P004"]
    roi = project / "config/roi_demo.yaml"
    assert manifest["roi_yaml"]["sha256"] == hashlib.sha256(roi.read_bytes()).hexdigest()
    plans_file = Path(manifest["plans"]["file"])
    assert manifest["plans"]["sha256"] == hashlib.sha256((project / plans_file).read_bytes()).hexdigest()
    assert set(manifest["versions"]) >= {"nnunetv2", "med-imagetools", "torch", "highdicom", "iterseg"}
    assert [f["status"] for f in manifest["folds"]] == ["finished"]
    assert manifest["test_metrics"]["summary"]["liver"]["cases"] == 2
    assert manifest["promotion"]["promoted"] is True
    cases = {c["patient_id"]: c for c in manifest["cases"]}
    assert len(cases) == 12 and {p for p, c in cases.items() if c["split"] == "test"} == TEST_PATIENTS
    p001 = cases["P001"]
    ct = pydicom.dcmread(project / p001["image"]["files"][0], stop_before_pixels=True)
    assert (
        p001["image"]["series_uid"] == ct.SeriesInstanceUID
        and p001["image"]["study_uid"] == ct.StudyInstanceUID
    )
    assert ct.SOPInstanceUID in p001["image"]["sop_uids"] and len(p001["image"]["sop_uids"]) == 32
    seg = pydicom.dcmread(project / p001["annotation"]["files"][0], stop_before_pixels=True)
    assert p001["annotation"]["sop_uids"] == [seg.SOPInstanceUID] and p001["annotation"]["snapshot"] == SECOND
    assert len(p001["annotation"]["content_sha256"]) == 64 and p001["superseded"][0]["snapshot"] == FIRST
    assert "newest annotation" in p001["why"]


def test_rerun_with_nothing_new_schedules_no_job(demo_run: dict) -> None:
    dry = snakemake(demo_run["project"], "-n")
    assert dry.returncode == 0, dry.stderr
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_annotation_effort_compares_the_refined_prediction_with_its_seed(demo_run: dict) -> None:
    project = demo_run["project"]
    results = project / "data/results/demo"
    first = json.loads((results / FIRST / "annotation_effort.json").read_text())
    assert first == {"cases": [], "summary": {**first["summary"], "cases": 0}}  # nothing predicted before
    effort = json.loads((results / SECOND / "annotation_effort.json").read_text())
    (case,) = effort["cases"]  # P103: predicted by the first iteration, refined in the second snapshot
    assert case["patient_id"] == "P103" and case["seeded_by"]["iteration"] == FIRST
    record = json.loads((procdata(project, SECOND) / "assembled.json").read_text())
    refined_path = next(r["converted_label"] for r in record["records"] if r["patient_id"] == "P103")
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(project / refined_path)))  # relative to the project
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(results / FIRST / "labels/P103.nii.gz")))
    assert predicted.shape == refined.shape
    by_label = {e["label"]: e for e in case["labels"]}
    for name, value in (("liver", 1), ("tumour", 2)):
        a, b = predicted == value, refined == value
        expected = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert by_label[name]["dice"] == pytest.approx(expected)
        assert by_label[name]["slices_edited"] == int(np.any(a != b, axis=(1, 2)).sum())
    assert case["slices_edited"] == int(np.any(predicted != refined, axis=(1, 2)).sum())
    assert case["unedited"] is False  # the tiny demo model is far from the drawn truth
    manifest = json.loads((results / SECOND / "manifest.json").read_text())
    assert manifest["annotation_effort"]["summary"] == effort["summary"]
    rows = list(csv.DictReader((results / SECOND / "annotation_effort.csv").open()))
    assert [(r["case_id"], r["label"], r["seeded_by"]) for r in rows] == [
        (case["case_id"], "liver", FIRST),
        (case["case_id"], "tumour", FIRST),
    ]


def _png(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_qc_pictures_of_every_prediction_and_test_case(demo_run: dict) -> None:
    for iteration in (FIRST, SECOND):
        qc = demo_run["project"] / f"data/results/demo/{iteration}/qc"
        names = sorted(p.name for p in qc.glob("*.png"))
        assert names == [
            "inbox_P101.png", "inbox_P102.png", "inbox_P103.png", "test_P003.png", "test_P004.png",
        ]  # fmt: skip
        for name in names:
            width, height = _png(qc / name)
            assert width == 900 and height >= 380
    from PIL import Image

    with Image.open(demo_run["project"] / f"data/results/demo/{SECOND}/qc/test_P003.png") as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    green = np.count_nonzero(np.all(np.abs(pixels - (0, 200, 0)) < 40, axis=1))
    magenta = np.count_nonzero(np.all(np.abs(pixels - (255, 0, 255)) < 40, axis=1))
    assert green > 50 and magenta > 50  # reference and prediction both outlined


def test_worklist_ranks_every_inbox_prediction(demo_run: dict) -> None:
    project = demo_run["project"]
    rows = list(csv.DictReader((project / f"data/results/demo/{SECOND}/worklist.csv").open()))
    assert sorted(r["case_id"] for r in rows) == ["P101", "P102", "P103"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    assert {r["signal"] for r in rows} == {"entropy"}  # one fold in the demo: no fold disagreement
    plain = [float(r["disagreement"]) for r in rows if not r["volume_outliers"]]
    assert plain == sorted(plain, reverse=True)
    predictions = {
        p["case_id"]: p
        for p in json.loads((project / f"data/results/demo/{SECOND}/predictions.json").read_text())
    }
    for row in rows:
        assert float(row["volume_ml_liver"]) == predictions[row["case_id"]]["volume_ml"]["liver"] > 0
        assert float(row["disagreement"]) == predictions[row["case_id"]]["mean_entropy"]


def test_dataset_report_has_curves_tables_and_every_folds_training(demo_run: dict) -> None:
    report = demo_run["project"] / "data/results/demo/report"
    for name in ("learning_curves.png", "annotation_effort.png"):
        _png(report / name)
    for iteration in (FIRST, SECOND):
        _png(report / "training" / f"{iteration}_fold_0.png")
        _png(report / "training" / f"{iteration}_fold_0_nnunet_progress.png")
    rows = list(csv.DictReader((report / "iterations.csv").open()))
    assert [r["iteration"] for r in rows] == [FIRST, SECOND]
    for row in rows:
        manifest = json.loads((report.parent / row["iteration"] / "manifest.json").read_text())
        assert int(row["training_cases"]) == manifest["summary"]["train"]
        mean = manifest["test_metrics"]["summary"]["mean"]["dice_mean"]
        assert float(row["test_dice_mean"]) == pytest.approx(mean)
        assert row["promoted"] == str(manifest["promotion"]["promoted"])
    effort = list(csv.DictReader((report / "annotation_effort.csv").open()))
    assert [(r["iteration"], r["refined_predictions"]) for r in effort] == [(FIRST, "0"), (SECOND, "1")]
    assert "<table" in (report / "iterations.html").read_text()


def test_snakemake_report_contains_every_figure(demo_run: dict, tmp_path: Path) -> None:
    import base64

    project = demo_run["project"]
    out = tmp_path / "report.html"
    run = snakemake(project, "--report", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = out.read_text()
    results = project / "data/results/demo"
    figures = [
        *(results / FIRST / "qc").glob("*.png"),
        *(results / SECOND / "qc").glob("*.png"),
        *(results / "report").rglob("*.png"),
        results / "report/iterations.html",
        results / "report/annotation_effort.html",
        results / SECOND / "worklist.csv",
        results / SECOND / "annotation_effort.csv",
    ]
    assert len(figures) == 10 + 6 + 4
    for figure in figures:
        # embedded, not linked (the report is self-contained): each file's own bytes are in it
        content = base64.b64encode(figure.read_bytes()[:1500]).decode()
        assert figure.name in html and content[100:400] in html, figure


def test_more_folds_than_gpus_all_train_never_two_on_one_gpu(demo_run: dict, tmp_path: Path) -> None:
    """The workstation path: three folds started together share two GPU slots (real training).

    The GPUs are the one thing mocked: the folds train on the CPU, but claim and pin their
    GPU exactly as on a workstation (``--gpus`` is what the rules pass with device cuda).
    """
    work = tmp_path / "work"
    first = procdata(demo_run["project"], FIRST)
    shutil.copytree(first / "nnUNet_preprocessed", work / "nnUNet_preprocessed")
    shutil.copy(first / "planned.json", work / "planned.json")
    iterseg = str(Path(sys.executable).parent / "iterseg")
    folds = ["0", "1", "2"]
    common = (
        f"train --work {work} --plan-record {work / 'planned.json'} --trainer nnUNetTrainerIterSegDemo"
        f" --device cpu --threads 1 --epochs 1 --gpus 0 1 --gpu-lock-dir {tmp_path / 'locks'}"
    ).split()
    jobs = [
        subprocess.Popen(
            [iterseg, *common, "--fold", fold, "--output", str(tmp_path / f"fold_{fold}.json")],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"fold_{fold}.log").open("w"),
        )
        for fold in folds
    ]
    assert [job.wait(timeout=900) for job in jobs] == [0, 0, 0]
    spans: dict[str, list[tuple[str, str]]] = {}
    waited = 0
    for fold in folds:
        assert Path(json.loads((tmp_path / f"fold_{fold}.json").read_text())["checkpoint"]).is_file()
        log = (tmp_path / f"fold_{fold}.log").read_text()
        claimed = re.search(r"^(\S+) INFO +iterseg.cluster.gpus: claimed GPU (\d) ", log, re.M)
        done = re.search(r"^(\S+) INFO +iterseg.nnunet.train: fold \d: final checkpoint", log, re.M)
        assert claimed and done, log[-2000:]
        spans.setdefault(claimed.group(2), []).append((claimed.group(1), done.group(1)))
        waited += "are busy; waiting" in log
    assert sorted(len(v) for v in spans.values()) == [1, 2] and waited == 1, spans
    earlier, later = sorted(next(v for v in spans.values() if len(v) == 2))
    assert later[0] >= earlier[1]  # the third fold started on that GPU only after the first ended


def test_preprocessed_data_needs_no_unpacking(demo_run: dict) -> None:
    """nnU-Net's advice to let one fold unpack the data before the others start is moot from 2.6 on.

    Preprocessed cases are blosc2 (``.b2nd``), read in place; the unpack step is a no-op.
    Should a future nnU-Net go back to unpacking, this test says so.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2

    folder = next(
        (procdata(demo_run["project"], FIRST) / "nnUNet_preprocessed").glob("*/nnUNetPlans_3d_fullres")
    )
    assert infer_dataset_class(str(folder)) is nnUNetDatasetBlosc2
    before = sorted(p.name for p in folder.iterdir())
    nnUNetDatasetBlosc2.unpack_dataset(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == before and any(n.endswith(".b2nd") for n in before)


@pytest.fixture(scope="module")
def third_run(demo_run: dict) -> dict:
    """A third snapshot: the second one again plus one new patient, under a gate it cannot pass."""
    from iterseg.rawdata.demo import annotated, make_phantom, phantom_arrays, write_ct_series, write_seg

    project = demo_run["project"]
    raw = project / "data/rawdata/demo"
    third = raw / f"{THIRD}__demo"
    shutil.copytree(raw / f"{SECOND}__demo", third)
    phantom = make_phantom("P012", 12)
    ct = write_ct_series(phantom, third / "P012" / "CT")
    _, masks = phantom_arrays(annotated(phantom, 1.0))
    write_seg(phantom, ct, third / "P012" / "SEG" / "seg.dcm", masks, "v1")
    # a case that arrives as NIfTI only (no DICOM): predicted, without a SEG
    (raw / "inbox" / "P104N").mkdir()
    ct_as_nifti(raw / "inbox" / "P101", raw / "inbox" / "P104N" / "ct.nii.gz")
    latest_manifest = json.loads((project / "data/results/demo/latest/manifest.json").read_text())
    run = snakemake(project, gate=GATE_STRICT)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    return {"project": project, "run": run, "latest_manifest_before": latest_manifest}


def test_only_the_new_series_is_converted(third_run: dict) -> None:
    project = third_run["project"]
    cases = json.loads((procdata(project, THIRD) / "converted/cases.json").read_text())
    converted = [c["patient_id"] for c in cases if c["conversion"] == "converted"]
    assert converted == ["P012"]
    assert len(cases) == 9 and {c["reused_from"] for c in cases if c["conversion"] == "reused"} == {SECOND}
    log = (project / f"data/results/demo/{THIRD}/logs/convert_snapshot.log").read_text()
    assert "9 case(s): 1 converted, 8 reused unchanged" in log
    assert "converting 1 CT pair(s), 8 reused" in log  # only the new pair is converted
    manifest = json.loads((project / f"data/results/demo/{THIRD}/manifest.json").read_text())
    assert manifest["summary"]["converted"] == 1 and manifest["summary"]["reused"] == 8
    assert manifest["summary"]["new"] == 1 and manifest["summary"]["refined"] == 0
    # a reused NIfTI is the earlier file itself
    p008 = next(c for c in cases if c["patient_id"] == "P008")
    earlier = procdata(project, SECOND) / "converted" / p008["label"]
    assert os.path.samefile(procdata(project, THIRD) / "converted" / p008["label"], earlier)


def test_nifti_inbox_case_gets_a_nifti_prediction_only(third_run: dict) -> None:
    results = third_run["project"] / f"data/results/demo/{THIRD}"
    predictions = {p["case_id"]: p for p in json.loads((results / "predictions.json").read_text())}
    assert set(predictions) == {"P101", "P102", "P103", "P104N"}
    assert predictions["P104N"]["seg"] is None and not (results / "seg" / "P104N.dcm").exists()
    label = sitk.ReadImage(str(results / predictions["P104N"]["label"]))
    source = sitk.ReadImage(str(third_run["project"] / "data/rawdata/demo/inbox/P104N/ct.nii.gz"))
    assert label.GetSize() == source.GetSize() and label.GetOrigin() == source.GetOrigin()
    # the same image as DICOM (P101) and as NIfTI gets the same prediction
    p101 = sitk.GetArrayFromImage(sitk.ReadImage(str(results / predictions["P101"]["label"])))
    assert np.array_equal(sitk.GetArrayFromImage(label), p101) and p101.any()


def test_gated_out_iteration_leaves_latest_and_says_why(third_run: dict) -> None:
    project = third_run["project"]
    results = project / "data/results/demo"
    assert os.readlink(results / "latest") == SECOND
    manifest = json.loads((results / THIRD / "manifest.json").read_text())
    assert manifest["promotion"]["promoted"] is False and "below" in manifest["promotion"]["reason"]
    assert "latest stays on 2026-03-02" in manifest["promotion"]["reason"]
    assert (results / THIRD / "seg").is_dir() and manifest["folds"][0]["status"] == "finished"
    # the config edit re-ran the earlier iterations' last step; their decisions stand
    second = json.loads((results / SECOND / "manifest.json").read_text())
    before = third_run["latest_manifest_before"]["promotion"]
    assert second["promotion"]["promoted"] is True and second["promotion"]["reason"] == before["reason"]
    history = [json.loads(line) for line in (results / "latest_history.jsonl").read_text().splitlines()]
    assert [h["action"] for h in history] == ["promote", "promote", "gated"]


def test_failed_iteration_leaves_latest_on_the_last_good_one(third_run: dict) -> None:
    """A new snapshot whose annotation cannot be converted fails loudly; `latest` stays put."""
    project = third_run["project"]
    raw = project / "data/rawdata/demo"
    broken = raw / "2026-04-20__demo" / "P008"
    shutil.copytree(raw / "2026-03-02__demo" / "P008", broken)
    rt_path = next((broken / "RTSTRUCT").glob("*.dcm"))
    rt = pydicom.dcmread(rt_path)
    for roi in rt.StructureSetROISequence:
        roi.ROIName = "Spleen"
    rt.save_as(rt_path)
    try:
        run = snakemake(project, gate=GATE_STRICT)
        assert run.returncode != 0
        log = (project / "data/results/demo/2026-04-20/logs/convert_snapshot.log").read_text()
        assert "P008" in log and "no case could be converted" in log
        # the one-line cause reaches the terminal, not only the rule log
        assert "no case could be converted" in run.stderr and "matches a label of" in run.stderr
        assert os.readlink(project / "data/results/demo/latest") == SECOND
    finally:
        shutil.rmtree(broken.parent)


def test_conversion_check_passed_for_every_case(demo_run: dict) -> None:
    for folder, n_cases in (("2026-01-15__demo", 7), ("2026-03-02__demo", 8)):
        report = json.loads(
            (demo_run["project"] / "data/procdata/demo" / folder / "converted/check.json").read_text()
        )
        assert report["cases"] == n_cases and report["rois_compared"] == 2 * n_cases
        assert report["mismatches"] == 0 and all(r["ok"] for r in report["rois"])
        seg_rois = [r for r in report["rois"] if r["annotation"] == "SEG"]
        assert seg_rois and all(r["differing_voxels"] == 0 for r in seg_rois)


def test_status_and_rollback_through_the_cli(third_run: dict) -> None:
    project = third_run["project"]
    iterseg = str(Path(sys.executable).parent / "iterseg")
    status = subprocess.run(
        [iterseg, "status", "demo"], cwd=project, capture_output=True, text=True, check=True
    )
    rows = status.stdout.splitlines()
    assert rows[0].split()[:6] == ["date", "train", "test", "new", "refined", "converted"]
    assert "Dice liver" in rows[0] and "Dice tumour" in rows[0]
    assert rows[1].split()[:6] == [FIRST, "5", "2", "7", "0", "7/7"]
    assert rows[2].split()[:6] == [SECOND, "10", "2", "5", "3", "8/8"] and "<- latest; yes" in rows[2]
    assert rows[3].split()[:6] == [THIRD, "11", "2", "1", "0", "1/9"] and "no: test mean Dice" in rows[3]
    # from the worklist of latest (the gated-out third iteration's SEGs are not the ones handed out)
    assert rows[4].startswith(f"refine next (data/results/demo/{SECOND}/worklist.csv): ")
    assert sorted(re.findall(r"(P10\w+) \(entropy", rows[4])) == ["P101", "P102", "P103"]
    subprocess.run([iterseg, "rollback", "demo", "--reason", "test"], cwd=project, check=True)
    assert os.readlink(project / "data/results/demo/latest") == FIRST
    # snakemake does not undo a rollback: nothing to do, latest stays
    dry = snakemake(project, "-n", gate=GATE_STRICT)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    subprocess.run([iterseg, "rollback", "demo", SECOND], cwd=project, check=True)
    assert os.readlink(project / "data/results/demo/latest") == SECOND
    history = (project / "data/results/demo/latest_history.jsonl").read_text().splitlines()
    assert [json.loads(h)["action"] for h in history][-2:] == ["rollback", "rollback"]


def test_our_unedited_prediction_dropped_back_is_excluded(third_run: dict) -> None:
    """A researcher drops an inbox case with our SEG, unedited, into a new snapshot."""
    project = third_run["project"]
    raw = project / "data/rawdata/demo"
    third = raw / "2026-05-10__demo"
    shutil.copytree(raw / "inbox" / "P101", third / "P101")
    (third / "P101" / "SEG").mkdir()
    shutil.copy(
        project / "data/results/demo/latest/seg/P101.dcm", third / "P101" / "SEG" / "from_iterseg.dcm"
    )
    shutil.copytree(raw / "2026-03-02__demo" / "P008", third / "P008")
    try:
        run = snakemake(project, "--until", "convert_snapshot", gate=GATE_STRICT)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        converted = project / "data/procdata/demo/2026-05-10__demo/converted"
        cases = json.loads((converted / "cases.json").read_text())
        assert [(c["patient_id"], c["conversion"]) for c in cases] == [("P008", "reused")]
        excluded = json.loads((converted / "excluded.json").read_text())
        assert [e["patient_id"] for e in excluded] == ["P101"]
        assert "unrefined iterseg prediction" in excluded[0]["reason"]
        log = (project / "data/results/demo/2026-05-10/logs/convert_snapshot.log").read_text()
        assert "unrefined iterseg prediction" in log
    finally:
        shutil.rmtree(third)
        shutil.rmtree(project / "data/procdata/demo/2026-05-10__demo", ignore_errors=True)
        shutil.rmtree(project / "data/results/demo/2026-05-10", ignore_errors=True)


def test_two_annotations_of_one_series_stop_the_snapshot_naming_both(third_run: dict) -> None:
    project = third_run["project"]
    raw = project / "data/rawdata/demo"
    snap = raw / "2026-06-01__demo"
    shutil.copytree(raw / "2026-03-02__demo" / "P011", snap / "P011")
    first_seg = next((snap / "P011" / "SEG").glob("*.dcm"))
    twin = pydicom.dcmread(first_seg)
    twin.SeriesInstanceUID = pydicom.uid.generate_uid()
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    twin.save_as(snap / "P011" / "SEG" / "second_reader.dcm")
    try:
        run = snakemake(project, "--until", "convert_snapshot", gate=GATE_STRICT)
        assert run.returncode != 0
        log = (project / "data/results/demo/2026-06-01/logs/convert_snapshot.log").read_text()
        assert "2 annotations of image series" in log and str(first_seg.name) in log
        assert "second_reader.dcm" in log and "second_reader.dcm" in run.stderr
        assert "duplicate_annotations" in log  # the rule that would decide instead
        assert os.readlink(project / "data/results/demo/latest") == SECOND
    finally:
        shutil.rmtree(snap)
        shutil.rmtree(project / "data/procdata/demo/2026-06-01__demo", ignore_errors=True)
        shutil.rmtree(project / "data/results/demo/2026-06-01", ignore_errors=True)


def _predict_command(project: Path, date: str, inbox: Path, log: Path, record: Path, *more: str) -> list[str]:
    """``iterseg predict`` of iteration ``date`` as the predict_inbox rule runs it."""
    work = procdata(project, date)
    return [
        str(Path(sys.executable).parent / "iterseg"), "--log", str(log), "predict",
        "--work", str(work), "--plan-record", str(work / "planned.json"),
        "--trainer", "nnUNetTrainerIterSegDemo", "--folds", "0", "--device", "cpu",
        "--inbox", str(inbox), "--modality", "CT", "--out", str(project / f"data/results/demo/{date}"),
        "--description", f"iterseg demo {date}", "--roi-yaml", str(project / "config/roi_demo.yaml"),
        "--output", str(record), *more,
    ]  # fmt: skip


def _published(results: Path) -> dict[str, str]:
    digest = {"predictions.json": hashlib.sha256((results / "predictions.json").read_bytes()).hexdigest()}
    for sub in ("labels", "seg"):
        digest.update({f"{sub}/{k}": v for k, v in tree_digest(results / sub).items()})
    return digest


def test_a_killed_prediction_leaves_latest_complete(third_run: dict, tmp_path: Path) -> None:
    """kill -9 while `iterseg predict` re-predicts the iteration `latest` points at."""
    import signal
    import time

    project = third_run["project"]
    latest = project / "data/results/demo/latest"
    date = os.readlink(latest)
    before = _published(latest)
    assert len(json.loads((latest / "predictions.json").read_text())) >= 3
    staging = procdata(project, date) / "predictions.partial"
    job = subprocess.Popen(
        _predict_command(
            project,
            date,
            project / "data/rawdata/demo/inbox",
            tmp_path / "predict.log",
            tmp_path / "record.json",
        ),
        cwd=project,
        start_new_session=True,  # its own process group: the kill takes any worker too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while not list((staging / "labels").glob("*.nii.gz")):  # midway: the first case is done
            assert job.poll() is None, (tmp_path / "predict.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
        assert _published(latest) == before  # the previous complete set, file for file
        assert not [p for p in (project / "data/results/demo").rglob("*partial*")]
        assert staging.is_dir() and not (tmp_path / "record.json").exists()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="module")
def bad_inbox_run(third_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The gated-out third iteration predicts an inbox of one good case and three bad ones."""
    project = third_run["project"]
    tmp = tmp_path_factory.mktemp("bad_inbox")
    inbox = tmp / "inbox"
    shutil.copytree(project / "data/rawdata/demo/inbox/P101", inbox / "P101")
    shutil.copytree(project / "data/rawdata/demo/inbox/P101", inbox / "A-truncated")
    truncated = sorted((inbox / "A-truncated").rglob("*.dcm"))[10]
    truncated.write_bytes(truncated.read_bytes()[:-3000])  # a copy cut short
    (inbox / "B-not-dicom").mkdir()
    (inbox / "B-not-dicom" / "IM0001").write_text("a viewer's export log, not DICOM")
    (inbox / "C-not-nifti").mkdir()
    (inbox / "C-not-nifti" / "ct.nii.gz").write_bytes(b"<html>session expired</html>")
    bad = {
        "A-truncated": truncated,
        "B-not-dicom": inbox / "B-not-dicom",
        "C-not-nifti": inbox / "C-not-nifti/ct.nii.gz",
    }
    command = _predict_command(
        project, THIRD, inbox, tmp / "skip.log", tmp / "skip.json", "--on-bad-case", "skip"
    )
    run = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, check=False)
    return {"project": project, "tmp": tmp, "inbox": inbox, "bad": bad, "run": run}


def test_prediction_skips_each_bad_inbox_case_and_predicts_the_rest(bad_inbox_run: dict) -> None:
    run, bad, tmp = bad_inbox_run["run"], bad_inbox_run["bad"], bad_inbox_run["tmp"]
    log = (tmp / "skip.log").read_text()
    assert run.returncode == 0, run.stderr + log[-3000:]
    assert "Traceback" not in run.stderr + log
    results = bad_inbox_run["project"] / f"data/results/demo/{THIRD}"
    predictions = json.loads((results / "predictions.json").read_text())
    assert [p["case_id"] for p in predictions] == ["P101"]
    assert (results / predictions[0]["label"]).is_file() and (results / predictions[0]["seg"]).is_file()
    assert sorted(p.name for p in (results / "seg").iterdir()) == ["P101.dcm"]
    skipped = {s["case"]: s for s in json.loads((results / "skipped_predictions.json").read_text())}
    assert {case: s["file"] for case, s in skipped.items()} == {case: str(p) for case, p in bad.items()}
    assert skipped["A-truncated"]["message"].startswith(f"{bad['A-truncated']}: not a usable DICOM file (")
    assert skipped["B-not-dicom"]["message"].startswith(
        f"{bad['B-not-dicom']}: no CT DICOM series and no NIfTI"
    )
    assert skipped["C-not-nifti"]["message"].startswith(
        f"{bad['C-not-nifti']}: inbox case C-not-nifti is not"
    )
    for case in skipped.values():
        assert (
            case["stage"] == "predict" and "move" in case["message"] and "out of the inbox" in case["message"]
        )
        assert f"predict skipped {case['case']}: {case['message']}" in log  # a warning in the rule log
    record = json.loads((tmp / "skip.json").read_text())
    assert record["cases"] == ["P101"] and sorted(record["skipped_cases"]) == sorted(bad)


def test_prediction_with_on_bad_case_fail_names_every_bad_case(bad_inbox_run: dict) -> None:
    project, tmp, bad = bad_inbox_run["project"], bad_inbox_run["tmp"], bad_inbox_run["bad"]
    results = project / f"data/results/demo/{THIRD}"
    before = _published(results)
    command = _predict_command(
        project, THIRD, bad_inbox_run["inbox"], tmp / "fail.log", tmp / "fail.json", "--on-bad-case", "fail"
    )
    run = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith("iterseg: ") and "3 of 4 inbox case(s) cannot be predicted" in lines[0]
    assert [line.strip().split(": ")[0] for line in lines[1:4]] == [str(p) for p in bad.values()]
    assert "Traceback" not in run.stderr and lines[-1].endswith(f"(log: {tmp / 'fail.log'})")
    assert _published(results) == before and not (tmp / "fail.json").exists()


def test_skipped_cases_surface_in_manifest_status_report_and_run_end(bad_inbox_run: dict) -> None:
    from iterseg.skipped import SkippedCase, read_skipped, write_skipped

    project = bad_inbox_run["project"]
    converted = procdata(project, THIRD) / "converted/skipped.json"
    kept = converted.read_bytes() if converted.is_file() else None
    bad_ct = SkippedCase(
        "convert", f"{THIRD}__demo", "P013_0a1b2c3d", "P013", "P013/CT/x.dcm", "P013: a test line"
    )
    write_skipped(converted, [*read_skipped(converted), bad_ct])
    try:
        run = snakemake(project, "--forcerun", f"data/results/demo/{THIRD}/iteration.json", gate=GATE_STRICT)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out = run.stdout + run.stderr
        assert f"demo {THIRD}: convert skipped P013_0a1b2c3d: P013: a test line" in out
        for case, path in bad_inbox_run["bad"].items():
            assert f"demo {THIRD}: predict skipped {case}: {path}: " in out
        manifest = json.loads((project / f"data/results/demo/{THIRD}/manifest.json").read_text())
        assert [(s["stage"], s["case"]) for s in manifest["skipped"]] == [
            ("convert", "P013_0a1b2c3d"), *[("predict", c) for c in bad_inbox_run["bad"]],
        ]  # fmt: skip
        assert manifest["promotion"]["promoted"] is False  # decided once: not re-gated
        status = subprocess.run(
            [str(Path(sys.executable).parent / "iterseg"), "status", "demo"],
            cwd=project, capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows = status.stdout.splitlines()
        column = rows[0].split().index("skipped")
        assert [r.split()[column] for r in rows[1:4]] == ["0", "0", "4"]
        assert rows[4] == "skipped cases (left out; each line names the file at fault and the fix):"
        assert rows[5] == f"  {THIRD} convert P013_0a1b2c3d: P013: a test line"
        assert [r.split()[2].rstrip(":") for r in rows[6:9]] == list(bad_inbox_run["bad"])
        assert rows[9].startswith("refine next")
        report = list(csv.DictReader((project / "data/results/demo/report/iterations.csv").open()))
        assert [r["skipped"] for r in report] == ["0", "0", "4"]
        assert "P013_0a1b2c3d" in (project / "data/results/demo/report/iterations.html").read_text()
    finally:
        if kept is None:
            converted.unlink()
        else:
            converted.write_bytes(kept)


def test_ohif_readers_show_every_predicted_seg_as_highdicom_reads_it(demo_run: dict) -> None:
    """OHIF's own SEG readers (tests/ohif_readers.py) put every demo prediction on its CT voxel for voxel."""
    from iterseg.nnunet.predict import PREDICTIONS_FILE
    from iterseg.records import Predictions, read_record
    from ohif_readers import OhifRead, assert_matches_ohif, ohif_missing, run_ohif

    why = ohif_missing()
    if why:
        pytest.fail(f"the OHIF readers are part of the test set-up: {why}")
    project = demo_run["project"]
    inbox = project / "data/rawdata/demo/inbox"
    pairs: list[tuple[Path, Path]] = []
    for iteration in (FIRST, SECOND):
        out = project / "data/results/demo" / iteration
        predictions = read_record(out / PREDICTIONS_FILE, Predictions).predictions
        assert predictions and all(p.seg for p in predictions), predictions  # the demo inbox is DICOM
        for prediction in predictions:
            (series,) = find_image_series(inbox / prediction.case_id, "CT")
            assert series.series_uid == prediction.series_uid
            (folder,) = {f.parent for f in series.files}
            pairs.append((out / str(prediction.seg), folder))
    for (seg_path, folder), result in zip(pairs, run_ohif(pairs), strict=True):  # one Node process
        assert isinstance(result, OhifRead), f"OHIF's readers refused {seg_path}: {result}"
        assert result.masks, f"{seg_path}: OHIF shows nothing"
        assert_matches_ohif(seg_path, folder, ohif=result)


def test_the_promoted_model_shared_as_an_archive_predicts_as_the_workflow_did(
    demo_run: dict, tmp_path: Path
) -> None:
    """export-model in the project, install-model into a fresh folder, predict --model: the same labels."""
    from iterseg.records import ModelCard, Predictions, read_record

    project, iterseg = demo_run["project"], str(Path(sys.executable).parent / "iterseg")
    latest = project / "data/results/demo/latest"
    date = os.readlink(latest)
    export = subprocess.run([iterseg, "export-model", "demo"], cwd=project, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr[-3000:]
    archive = project / export.stdout.strip()
    assert archive == project / f"data/results/demo/{date}/model_demo_{date}.zip" and archive.is_file()
    models = tmp_path / "models"  # away from the project: the installed model needs none of it
    install = subprocess.run(
        [iterseg, "install-model", str(archive), "--into", str(models)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = models / "demo" / date
    assert (
        Path(install.stdout.strip()) == installed and f"iterseg predict --model {installed}" in install.stderr
    )
    card = read_record(installed / "model_card.json", ModelCard)
    manifest = json.loads((latest / "manifest.json").read_text())
    assert (card.iteration, card.dataset_name, card.folds) == (date, manifest["dataset_name"], ("0",))
    assert (
        card.test_metrics["liver"]["dice_mean"] == manifest["test_metrics"]["summary"]["liver"]["dice_mean"]
    )
    inbox, out = project / "data/rawdata/demo/inbox", tmp_path / "predicted"
    log, record = tmp_path / "predict.log", tmp_path / "predicted.json"
    predict = subprocess.run(
        [iterseg, "--log", str(log), "predict", "--model", str(installed), "--device", "cpu",
         "--inbox", str(inbox), "--out", str(out), "--output", str(record)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert predict.returncode == 0, log.read_text()[-3000:]
    workflows = sorted((latest / "labels").glob("*.nii.gz"))
    assert len(workflows) == 3, workflows  # P101-P103: same weights, same device, the same labels
    for label in workflows:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / label.name)))
        assert np.array_equal(ours, sitk.GetArrayFromImage(sitk.ReadImage(str(label)))), label.name
    for prediction in read_record(out / "predictions.json", Predictions).predictions:
        series = find_image_series(inbox / prediction.case_id, "CT")
        assert (prediction.seg is not None) == bool(series), prediction  # a SEG per DICOM case
        if series:
            seg_path = out / str(prediction.seg)
            assert referenced_series(seg_path) == series[0].series_uid
            saved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / prediction.label)))
            assert np.array_equal(seg_label_map(seg_path, series[0].datasets), saved)
            ds, theirs = (
                pydicom.dcmread(p, stop_before_pixels=True) for p in (seg_path, latest / prediction.seg)
            )
            assert ds.SeriesDescription == theirs.SeriesDescription == f"iterseg demo {date}"


# --- iterseg.api.analyze / iterseg analyze with the promoted model ------------------------------------


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: what a read-only use must leave as it was."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _analyzed_tar(project: Path, to: Path) -> bytes:
    """A tar of inbox cases P101 and P102 (DICOM) and P101's series as NIfTI (``P101N.nii.gz``)."""
    import io
    import tarfile

    inbox = project / "data/rawdata/demo/inbox"
    ct_as_nifti(inbox / "P101", to / "P101N.nii.gz")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(inbox / "P101", arcname="P101")
        tar.add(inbox / "P102", arcname="P102")
        tar.add(to / "P101N.nii.gz", arcname="P101N.nii.gz")
    (to / "P101N.nii.gz").unlink()
    return buffer.getvalue()


def test_analyze_gives_a_seg_per_dicom_and_a_nifti_per_nifti_case(
    demo_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call, bytes in and out: the SEGs read back voxel-exact, nothing written outside its temp folder."""
    import importlib
    import tempfile

    from iterseg.api import analyze

    project = demo_run["project"]
    latest = project / "data/results/demo/latest"
    archive = _analyzed_tar(project, tmp_path)
    model = procdata(project, os.readlink(latest))
    model_before, project_before = _listing(model), _listing(project)
    # torch makes its compile cache <tmp>/torchinductor_<user> once per process, when nnU-Net's
    # predictor first imports torch._dynamo: torch's folder, there before any analysis in a process
    importlib.import_module("torch._dynamo")
    # a temporary folder of its own: /tmp is shared with whatever else runs meanwhile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    made: list[Path] = []

    class Recorded(tempfile.TemporaryDirectory):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            made.append(Path(self.name))

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Recorded)
    result = analyze([archive], model=latest, device="cpu")
    assert _listing(model) == model_before and _listing(project) == project_before
    assert [p.parent for p in made] == [tmp_path / "tmp"] and not made[0].exists()
    assert os.listdir(tempfile.gettempdir()) == []  # its temporary folder removed, nothing else left
    assert (result["status"], result["errors"]) == ("done", {})
    assert sorted(result["dicom_seg_bytes"]) == ["P101.dcm", "P102.dcm"]
    assert sorted(result["nifti_seg_bytes"]) == ["P101N.nii.gz"]
    (tmp_path / "P101N.nii.gz").write_bytes(result["nifti_seg_bytes"]["P101N.nii.gz"])
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "P101N.nii.gz")))
    assert nifti.any()
    for case in ("P101", "P102"):
        seg_path = tmp_path / f"{case}.dcm"
        seg_path.write_bytes(result["dicom_seg_bytes"][f"{case}.dcm"])
        (series,) = find_image_series(project / "data/rawdata/demo/inbox" / case, "CT")
        assert referenced_series(seg_path) == series.series_uid
        labels = seg_label_map(seg_path, series.datasets)  # highdicom reads the SEG back
        workflows = sitk.GetArrayFromImage(sitk.ReadImage(str(latest / "labels" / f"{case}.nii.gz")))
        assert np.array_equal(labels, workflows), case  # the workflow's prediction of that case
        if case == "P101":
            assert np.array_equal(labels, nifti)  # the same image as NIfTI: the same labels, voxel for voxel
        assert pydicom.dcmread(seg_path).SeriesDescription == f"iterseg demo {os.readlink(latest)}"


def test_analyze_cli_writes_the_good_cases_and_lists_a_hostile_tar(demo_run: dict, tmp_path: Path) -> None:
    import io
    import tarfile

    project = demo_run["project"]
    good, hostile, out = tmp_path / "cases.tar", tmp_path / "hostile.tar", tmp_path / "out"
    good.write_bytes(_analyzed_tar(project, tmp_path))
    with tarfile.open(hostile, "w") as tar:
        evil = tarfile.TarInfo("../evil.dcm")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    run = subprocess.run(
        [str(Path(sys.executable).parent / "iterseg"), "analyze", str(good), str(hostile),
         "--model", str(project / "data/results/demo/latest"), "--out", str(out), "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == str(out / "analysis.json")
    record = json.loads((out / "analysis.json").read_text())
    assert record["status"] == "done" and record["inputs"] == [str(good), str(hostile)]
    assert record["files"] == ["seg/P101.dcm", "seg/P102.dcm", "labels/P101N.nii.gz"]
    assert list(record["errors"]) == ["input 2"]
    assert record["errors"]["input 2"] == (
        "input 2: member path(s) with '..' ['../evil.dcm']; repack with paths inside the archive."
    )  # a snapshot's archive is refused with these words
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["analysis.json", "labels/P101N.nii.gz", "seg/P101.dcm", "seg/P102.dcm"]
    assert not list(tmp_path.rglob("evil.dcm")) and not (tmp_path.parent / "evil.dcm").exists()


def test_analyze_with_the_installed_model_predicts_as_the_iteration(demo_run: dict, tmp_path: Path) -> None:
    """The model shared by export-model / install-model analyzes a NIfTI case as its iteration did."""
    import io
    import tarfile

    from iterseg.api import analyze

    project, iterseg = demo_run["project"], str(Path(sys.executable).parent / "iterseg")
    latest = project / "data/results/demo/latest"
    archive = tmp_path / "model.zip"
    export = subprocess.run(
        [iterseg, "export-model", "demo", "--out", str(archive)], cwd=project, capture_output=True, text=True
    )
    assert export.returncode == 0, export.stderr[-3000:]
    install = [iterseg, "install-model", str(archive), "--into", str(tmp_path / "models")]
    installed = subprocess.run(install, capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    model = Path(installed.stdout.strip())
    ct_as_nifti(project / "data/rawdata/demo/inbox/P101", tmp_path / "ct.nii.gz")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "ct.nii.gz", arcname="P9/ct.nii.gz")
    before = _listing(model)
    result = analyze([buffer.getvalue()], model=model, device="cpu")
    assert _listing(model) == before
    assert (result["status"], result["errors"], result["dicom_seg_bytes"]) == ("done", {}, {})
    (tmp_path / "label.nii.gz").write_bytes(result["nifti_seg_bytes"]["ct.nii.gz"])
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "label.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(latest / "labels/P101.nii.gz")))
    assert np.array_equal(ours, theirs) and ours.any()
