"""A two-sequence MR dataset through snakemake: both channels trained on, predicted, SEG on the FLAIR."""

from __future__ import annotations

import json
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
from test_demo_loop import snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

DATASET, DATE = "demo-mr", "2026-01-15"
EPOCHS = 4  # enough for a liver; the loop's plumbing is what this test is about


@pytest.fixture(scope="module")
def mr_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    project = tmp_path_factory.mktemp("mr-project")
    shutil.copytree(REPO / "config", project / "config")
    config = yaml.safe_load((project / "config/demo_mr.yaml").read_text())
    config["nnunet"]["first_iteration"]["epochs"] = EPOCHS
    (project / "config/demo_mr.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    iterseg = Path(sys.executable).parent / "iterseg"
    rawdata = project / "data/rawdata" / DATASET
    subprocess.run([str(iterseg), "-q", "demo-data", str(rawdata), "--mr"], check=True)
    before = tree_digest(project / "data/rawdata")
    run = snakemake(project, config="config/demo_mr.yaml")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    return {"project": project, "rawdata": rawdata, "before": before}


def _work(project: Path) -> Path:
    return project / f"data/procdata/{DATASET}/{DATE}__{DATASET}"


def test_nnunet_trains_on_both_channels_in_config_order(mr_run: dict) -> None:
    (raw,) = (_work(mr_run["project"]) / "nnUNet_raw").iterdir()
    assert json.loads((raw / "dataset.json").read_text())["channel_names"] == {"0": "FLAIR", "1": "T1"}
    training = sorted(p.name for p in (raw / "imagesTr").iterdir())
    assert len(training) == 12 and sum(name.endswith("_0001.nii.gz") for name in training) == 6
    plans = json.loads(
        next((_work(mr_run["project"]) / "nnUNet_preprocessed").glob("*/nnUNetPlans.json")).read_text()
    )
    assert plans["foreground_intensity_properties_per_channel"].keys() == {"0", "1"}


def test_the_manifest_records_which_series_became_which_channel(mr_run: dict) -> None:
    manifest = json.loads((mr_run["project"] / f"data/results/{DATASET}/latest/manifest.json").read_text())
    assert len(manifest["cases"]) == 7
    for case in manifest["cases"]:
        assert case["image"]["description"] == "AX FLAIR"
        (t1,) = case["channels"]
        assert (t1["channel"], t1["index"], t1["description"], t1["resampled"]) == ("T1", 1, "T1 AX", True)
        assert (
            t1["spacing"] == [3.5, 3.5, 5.0]
            and t1["frame_of_reference"] == case["image"]["frame_of_reference"]
        )
        assert len(t1["sop_uids"]) == len(t1["files"]) == 24 and len(t1["content_sha256"]) == 64


def test_inbox_segs_refer_to_the_flair_and_match_the_prediction(mr_run: dict) -> None:
    out = mr_run["project"] / f"data/results/{DATASET}/latest"
    inbox = mr_run["rawdata"] / "inbox"
    for case in ("P101", "P102"):
        (flair,) = [
            s for s in find_image_series(inbox / case, "MR") if s.datasets[0].SeriesDescription == "AX FLAIR"
        ]
        seg_path = out / "seg" / f"{case}.dcm"
        assert referenced_series(seg_path) == flair.series_uid
        assert frame_positions_on_source_slices(seg_path, flair.datasets)
        saved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / f"{case}.nii.gz")))
        assert (saved == 1).sum() > 1000, f"{case}: no liver predicted"
        assert np.array_equal(seg_label_map(seg_path, flair.datasets), saved)
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]


def test_the_test_case_is_scored_and_rawdata_is_untouched(mr_run: dict) -> None:
    metrics = json.loads((mr_run["project"] / f"data/results/{DATASET}/latest/test_metrics.json").read_text())
    (case,) = metrics["cases"].values()
    assert case["patient_id"] == "P007" and case["metrics"]["liver"]["dice"] > 0.7
    assert tree_digest(mr_run["project"] / "data/rawdata") == mr_run["before"]


def test_the_exported_model_assigns_the_channels_on_another_machine(mr_run: dict, tmp_path: Path) -> None:
    """export-model, install-model elsewhere, predict --model: the card carries the channels."""
    from iterseg.records import ModelCard, read_record

    project, iterseg = mr_run["project"], str(Path(sys.executable).parent / "iterseg")
    export = subprocess.run([iterseg, "export-model", DATASET], cwd=project, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr[-3000:]
    install = subprocess.run(
        [iterseg, "install-model", str(project / export.stdout.strip()), "--into", str(tmp_path / "models")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = Path(install.stdout.strip())
    assert read_record(installed / "model_card.json", ModelCard).channels == {
        "FLAIR": ["flair"],
        "T1": ["^t1"],
    }
    out, log, inbox = tmp_path / "predicted", tmp_path / "predict.log", mr_run["rawdata"] / "inbox"
    predict = subprocess.run(
        [iterseg, "--log", str(log), "predict", "--model", str(installed), "--device", "cpu",
         "--inbox", str(inbox), "--out", str(out), "--output", str(tmp_path / "p.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert predict.returncode == 0, log.read_text()[-3000:]
    latest = project / f"data/results/{DATASET}/latest"
    for case in ("P101", "P102"):
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels" / f"{case}.nii.gz")))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(latest / "labels" / f"{case}.nii.gz")))
        assert np.array_equal(ours, theirs), case
        assert referenced_series(out / "seg" / f"{case}.dcm") == referenced_series(
            latest / "seg" / f"{case}.dcm"
        )


def test_analyze_assigns_the_channels_of_each_tarred_case(mr_run: dict, tmp_path: Path) -> None:
    """The analyzer with the MR model: a SEG per two-sequence case; a NIfTI file is named, not guessed."""
    import io
    import tarfile

    from iterseg.api import analyze

    inbox, latest = mr_run["rawdata"] / "inbox", mr_run["project"] / f"data/results/{DATASET}/latest"
    sitk.WriteImage(sitk.ReadImage(str(latest / "labels/P101.nii.gz")), str(tmp_path / "N1.nii.gz"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for case in ("P101", "P102"):
            tar.add(inbox / case, arcname=case)
        tar.add(tmp_path / "N1.nii.gz", arcname="N1.nii.gz")
    result = analyze([buffer.getvalue()], model=latest, device="cpu")
    assert result["status"] == "done" and sorted(result["dicom_seg_bytes"]) == ["P101.dcm", "P102.dcm"]
    assert not result["nifti_seg_bytes"] and "DICOM series" in json.dumps(result["errors"])
    for case in ("P101", "P102"):
        seg_path = tmp_path / f"{case}.dcm"
        seg_path.write_bytes(result["dicom_seg_bytes"][f"{case}.dcm"])
        assert referenced_series(seg_path) == referenced_series(latest / "seg" / f"{case}.dcm")
        (flair,) = [
            s for s in find_image_series(inbox / case, "MR") if s.datasets[0].SeriesDescription == "AX FLAIR"
        ]
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(latest / "labels" / f"{case}.nii.gz")))
        assert np.array_equal(seg_label_map(seg_path, flair.datasets), theirs), case
