"""The loop through snakemake with a NIfTI (nnU-Net / Decathlon layout) first snapshot and a DICOM second one.

The first snapshot is the demo's first one, exported as a Decathlon folder: each CT as
``imagesTr/<patient>_0000.nii.gz``, its drawn phantom as ``labelsTr/<patient>.nii.gz`` with
dataset.json labels in another order and spelling than config/roi_demo.yaml. The second snapshot
and the inbox are the demo's DICOM ones. Short schedules (2 epochs, then 1): what is tested is
what reaches training, not what the model learns.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from conftest import REPO, tree_digest
from iterseg.dicom.codes import SegmentLabel
from iterseg.dicom.series import find_image_series
from iterseg.rawdata.demo import annotated, demo_plan, make_phantom, phantom_arrays, write_demo_dataset
from seg_checks import referenced_series
from test_demo_loop import FIRST, SECOND, TEST_PATIENTS, THIRD, ct_as_nifti, procdata, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

NAMES = ("Dataset901_demo_20260115", "Dataset902_demo_20260302")
DATASET_JSON = {
    "name": "demo",
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "Tumor": 1, "Liver": 2},  # roi_demo.yaml: liver 1, tumour 2
    "numTraining": 7,
    "file_ending": ".nii.gz",
}


def decathlon_snapshot(dicom: Path, folder: Path) -> None:
    """The demo's first DICOM snapshot as a Decathlon folder: the CT series and the drawn phantoms."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case in demo_plan()[dicom.name]:
        image = ct_as_nifti(dicom / case.patient_id, folder / "imagesTr" / f"{case.patient_id}_0000.nii.gz")
        ct = sitk.ReadImage(str(image))
        _, masks = phantom_arrays(annotated(make_phantom(case.patient_id, case.seed), case.tumour_scale))
        label = np.zeros(masks[SegmentLabel.LIVER].shape, np.uint8)
        label[masks[SegmentLabel.LIVER]] = 2
        label[masks[SegmentLabel.TUMOUR]] = 1
        hu = sitk.GetArrayFromImage(ct)
        assert hu[label == 1].mean() < 0 < 80 < hu[label == 2].mean()  # the mask lies on its CT
        written = sitk.GetImageFromArray(label)
        written.CopyInformation(ct)
        sitk.WriteImage(written, str(folder / "labelsTr" / f"{case.patient_id}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=2))


@pytest.fixture(scope="module")
def nifti_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "config", project / "config")
    config = yaml.safe_load((project / "config/demo.yaml").read_text())
    config["nnunet"]["first_iteration"]["epochs"] = 2
    config["nnunet"]["fine_tuning"]["epochs"] = 1
    (project / "config/demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    demo = tmp_path_factory.mktemp("dicom") / "demo"
    write_demo_dataset(demo)
    raw = project / "data/rawdata/demo"
    decathlon_snapshot(demo / f"{FIRST}__demo", raw / f"{FIRST}__demo")
    for folder in (f"{SECOND}__demo", "inbox"):
        shutil.copytree(demo / folder, raw / folder)
    before = tree_digest(raw)
    started = time.monotonic()
    run = snakemake(project)
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    return {"project": project, "before": before, "after": tree_digest(raw), "seconds": seconds}


def assembled(project: Path, date: str) -> dict[str, Any]:
    return json.loads((procdata(project, date) / "assembled.json").read_text())


def test_both_iterations_finish(nifti_run: dict[str, Any]) -> None:
    project = nifti_run["project"]
    for date, name in zip((FIRST, SECOND), NAMES, strict=True):
        summary = json.loads((project / f"data/results/demo/{date}/iteration.json").read_text())
        assert summary["dataset_name"] == name
        fold = json.loads((procdata(project, date) / "trained/fold_0.json").read_text())
        assert Path(fold["checkpoint"]).is_file()
    log = (project / f"data/results/demo/{FIRST}/logs/convert_snapshot.log").read_text()
    assert "converting 7 NIfTI case(s), 0 reused" in log and "7 case(s): 7 converted" in log
    check = json.loads((procdata(project, FIRST) / "converted/check.json").read_text())
    assert check["cases"] == 7 and check["rois_compared"] == 14 and check["mismatches"] == 0


def test_the_second_iteration_trains_on_cases_of_both_snapshots(nifti_run: dict[str, Any]) -> None:
    project = nifti_run["project"]
    record = assembled(project, SECOND)
    train = [r for r in record["records"] if r["split"] == "train"]
    by_snapshot = {d: sorted(r["patient_id"] for r in train if r["snapshot"] == d) for d in (FIRST, SECOND)}
    # the refined DICOM annotations of P001 and P002 replace their NIfTI cases: the same voxels
    assert by_snapshot[FIRST] == ["P005", "P006", "P007"]
    assert by_snapshot[SECOND] == ["P001", "P002", "P008", "P009", "P010", "P011", "P103"]
    assert {r["annotation_kind"] for r in train if r["snapshot"] == FIRST} == {"NIFTI"}
    first_ids = {r["patient_id"]: r["case_id"] for r in assembled(project, FIRST)["records"]}
    for patient in ("P001", "P002"):
        (refined,) = [r for r in train if r["patient_id"] == patient]
        (twin,) = [s for s in refined["superseded"] if "same_image_as" in s]
        assert (twin["same_image_as"], twin["annotation_kind"]) == (first_ids[patient], "NIFTI")
        assert refined["change"] == "refined"
    assert record["cases"] == sorted(r["case_id"] for r in train)
    manifest = json.loads((project / f"data/results/demo/{SECOND}/manifest.json").read_text())
    kinds = {(c["annotation"]["kind"], c["split"]) for c in manifest["cases"]}
    assert ("NIFTI", "train") in kinds and ("SEG", "train") in kinds
    (p005,) = [c for c in manifest["cases"] if c["patient_id"] == "P005"]
    assert p005["image"]["files"] == [f"data/rawdata/demo/{FIRST}__demo/imagesTr/P005_0000.nii.gz"]


def test_the_test_set_of_the_first_iteration_stays_out_of_training(nifti_run: dict[str, Any]) -> None:
    project = nifti_run["project"]
    for date, name in zip((FIRST, SECOND), NAMES, strict=True):
        record = assembled(project, date)
        assert record["test_set"]["patients"] == sorted(TEST_PATIENTS)
        assert record["test_set"]["chosen_at"] == NAMES[0]
        test_ids = {r["case_id"] for r in record["records"] if r["split"] == "test"}
        assert {r["patient_id"] for r in record["records"] if r["split"] == "test"} == TEST_PATIENTS
        assert not {r["patient_id"] for r in record["records"] if r["split"] == "train"} & TEST_PATIENTS
        pre = procdata(project, date) / "nnUNet_preprocessed" / name
        splits = json.loads((pre / "splits_final.json").read_text())
        in_splits = {c for split in splits for c in split["train"] + split["val"]}
        assert in_splits == set(record["cases"]) and not in_splits & test_ids
    second = {r["patient_id"]: r for r in assembled(project, SECOND)["records"] if r["split"] == "test"}
    first = {r["patient_id"]: r for r in assembled(project, FIRST)["records"] if r["split"] == "test"}
    assert first["P003"]["case_id"] == second["P003"]["case_id"]  # the NIfTI P003 throughout
    # P004's refined DICOM annotation replaces its NIfTI case in the test set
    assert second["P004"]["annotation_kind"] == "SEG" and first["P004"]["annotation_kind"] == "NIFTI"
    assert [s["same_image_as"] for s in second["P004"]["superseded"]] == [first["P004"]["case_id"]]


def test_raw_dataset_labels_follow_the_roi_yaml(nifti_run: dict[str, Any]) -> None:
    project = nifti_run["project"]
    for date, name, labels in (
        (FIRST, NAMES[0], {"background": 0, "liver": 1, "tumour": 2}),
        (SECOND, NAMES[1], {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}),  # P011: liver only
    ):
        raw = procdata(project, date) / "nnUNet_raw" / name
        assert json.loads((raw / "dataset.json").read_text())["labels"] == labels
        record = assembled(project, date)
        for case in (r for r in record["records"] if r["annotation_kind"] == "NIFTI"):
            source = sitk.GetArrayFromImage(sitk.ReadImage(str(project / case["annotation_files"][0])))
            placed = sitk.GetArrayFromImage(sitk.ReadImage(str(project / case["raw_label"])))
            assert np.array_equal(placed == 1, source == 2) and np.array_equal(placed == 2, source == 1)
            assert set(np.unique(placed)) == {0, 1, 2}, case["patient_id"]


def test_the_dicom_seg_of_every_inbox_case_is_still_written(nifti_run: dict[str, Any]) -> None:
    project = nifti_run["project"]
    inbox = project / "data/rawdata/demo/inbox"
    for date in (FIRST, SECOND):
        seg = project / f"data/results/demo/{date}/seg"
        assert sorted(p.stem for p in seg.glob("*.dcm")) == ["P101", "P102", "P103"]
        for path in seg.glob("*.dcm"):
            (series,) = find_image_series(inbox / path.stem, "CT")
            assert referenced_series(path) == series.series_uid


def test_rawdata_is_byte_identical(nifti_run: dict[str, Any]) -> None:
    assert nifti_run["after"] == nifti_run["before"]


def test_a_copy_of_the_nifti_snapshot_is_reused_not_converted(nifti_run: dict[str, Any]) -> None:
    """Its conversion alone, by its output: every case linked from the first snapshot's."""
    project = nifti_run["project"]
    raw = project / "data/rawdata/demo"
    shutil.copytree(raw / f"{FIRST}__demo", raw / f"{THIRD}__demo")
    target = f"data/procdata/demo/{THIRD}__demo/converted/cases.json"
    try:
        run = snakemake(project, "--cores", "2", target)  # after --configfile, which takes several
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        cases = json.loads((project / target).read_text())
        assert [c["conversion"] for c in cases] == ["reused"] * 7
        assert {c["reused_from"] for c in cases} == {FIRST}
        first = {
            c["case_id"]: c
            for c in json.loads((procdata(project, FIRST) / "converted/cases.json").read_text())
        }
        assert sorted(first) == [c["case_id"] for c in cases]
        for case in cases:
            for key in ("image", "label"):
                linked = procdata(project, THIRD) / "converted" / case[key]
                assert linked.samefile(procdata(project, FIRST) / "converted" / first[case["case_id"]][key])
        log = (project / f"data/results/demo/{THIRD}/logs/convert_snapshot.log").read_text()
        assert "7 case(s): 0 converted, 7 reused unchanged" in log
    finally:
        shutil.rmtree(raw / f"{THIRD}__demo")


def test_one_qc_picture_per_test_case(nifti_run: dict[str, Any]) -> None:
    project = nifti_run["project"]
    for date in (FIRST, SECOND):
        pictures = sorted(p.name for p in (project / f"data/results/demo/{date}/qc").glob("test_*.png"))
        assert pictures == ["test_P003.png", "test_P004.png"]
