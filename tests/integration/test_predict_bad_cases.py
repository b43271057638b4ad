"""One bad inbox case never blocks the rest: real DICOM, SimpleITK and highdicom, a stand-in network.

The network is the one thing replaced (a threshold), so these run in seconds; the demo-loop
test runs the same paths with a trained nnU-Net model.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from iterseg.cli import main
from iterseg.errors import PredictionError
from iterseg.nnunet import predict
from iterseg.nnunet.ensemble import FoldPrediction
from iterseg.skipped import SKIPPED_PREDICTIONS_FILE, BadCasePolicy, read_skipped
from real_dicom import planned_slices, write_series

pytestmark = pytest.mark.integration


def threshold(volume: np.ndarray, properties: dict[str, Any]) -> FoldPrediction:
    """A one-fold model's prediction (``ensemble.predict_folds``), as a threshold at the volume's median."""
    seg = (volume[0] > np.median(volume[0])).astype(np.uint8)
    return FoldPrediction(seg, np.stack([1.0 - seg, seg]).astype(np.float32), ())


@pytest.fixture()
def no_nnunet(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(*args: Any) -> Any:
        return predict._Model(threshold, {"background": 0, "liver": 1}, "t", "t v1", None)

    monkeypatch.setattr(predict, "_load_model", load)


def _ct(folder: Path, patient: str) -> list[Path]:
    return write_series(planned_slices(patient, 4, tag=folder.name), folder).files


def _bad_inbox(inbox: Path) -> dict[str, Path]:
    """Four bad cases sorted before three good ones (DICOM ``P 9`` and ``P-9``, NIfTI ``N1``)."""
    truncated = _ct(inbox / "A-truncated", "PA")[2]
    truncated.write_bytes(truncated.read_bytes()[:-5000])  # the header reads, the pixels end early
    (inbox / "B-not-dicom").mkdir()
    (inbox / "B-not-dicom" / "IM0001").write_text("a scanner's log, not DICOM")
    (inbox / "C-not-nifti").mkdir()
    (inbox / "C-not-nifti" / "ct.nii.gz").write_text("not a NIfTI")
    undecodable = _ct(inbox / "D-undecodable", "PD")[1]
    ds = pydicom.dcmread(undecodable)
    ds.BitsAllocated = 0  # a header that parses, pixels GDCM cannot decode
    ds.save_as(undecodable, enforce_file_format=True)
    _ct(inbox / "P 9", "P9a")
    _ct(inbox / "P-9", "P9b")
    (inbox / "N1").mkdir()
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    sitk.WriteImage(image, str(inbox / "N1/ct.nii.gz"))
    return {
        "A-truncated": truncated,
        "B-not-dicom": inbox / "B-not-dicom",
        "C-not-nifti": inbox / "C-not-nifti/ct.nii.gz",
        "D-undecodable": undecodable,
    }


def _predict(tmp_path: Path, inbox: Path, policy: BadCasePolicy) -> predict.InboxPrediction:
    return predict.predict_inbox(
        tmp_path / "work", tmp_path / "planned.json", "T", ("0",), "cpu", inbox, "CT",
        tmp_path / "results", "t", on_bad_case=policy,
    )  # fmt: skip


def _argv(tmp_path: Path, *more: str) -> list[str]:
    return [
        "predict", "--work", str(tmp_path / "work"), "--plan-record", "planned.json", "--trainer", "T",
        "--folds", "0", "--device", "cpu", "--inbox", str(tmp_path / "inbox"),
        "--out", str(tmp_path / "results"), "--description", "t",
        "--output", str(tmp_path / "work/predicted.json"), *more,
    ]  # fmt: skip


def test_skip_leaves_out_each_bad_case_naming_file_and_fix(no_nnunet: None, tmp_path: Path) -> None:
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    bad = _bad_inbox(inbox)
    run = _predict(tmp_path, inbox, BadCasePolicy.SKIP)
    hashed = f"P-9_{hashlib.sha1(b'P 9').hexdigest()[:8]}"
    assert [p.case_id for p in run.predictions] == ["N1", hashed, "P-9"]
    published = json.loads((results / "predictions.json").read_text())
    assert [p["case_id"] for p in published] == ["N1", hashed, "P-9"]
    for entry in published:  # paths relative to the results folder, every file there
        assert (results / entry["label"]).is_file()
        assert entry["seg"] is None if entry["case_id"] == "N1" else (results / entry["seg"]).is_file()
    assert pydicom.dcmread(results / "seg/P-9.dcm", stop_before_pixels=True).PatientID == "P9b"
    assert pydicom.dcmread(results / f"seg/{hashed}.dcm", stop_before_pixels=True).PatientID == "P9a"
    skipped = {s.case: s for s in read_skipped(results / SKIPPED_PREDICTIONS_FILE)}
    assert list(skipped) == [s.case for s in run.skipped] == list(bad)
    assert {case: s.file for case, s in skipped.items()} == {case: str(path) for case, path in bad.items()}
    assert skipped["A-truncated"].message == (
        f"{bad['A-truncated']}: not a usable DICOM file (its PixelData declares 32768 bytes but the file "
        "ends after 27906: it was cut short). Re-export the complete series from the PACS or scanner into "
        "that folder, or move the folder out of the inbox."
    )
    assert skipped["B-not-dicom"].message == (
        f"{bad['B-not-dicom']}: no CT DICOM series and no NIfTI image in it (1 file(s), none a CT DICOM "
        "image). Put the case's CT series (or one .nii.gz) there, or move the folder out of the inbox."
    )
    assert skipped["C-not-nifti"].message == (
        f"{bad['C-not-nifti']}: inbox case C-not-nifti is not a readable NIfTI image (Unable to determine "
        f'ImageIO reader for "{bad["C-not-nifti"]}"). Replace it with the complete image, or move it out of '
        "the inbox."
    )
    assert skipped["D-undecodable"].message == (
        f"{bad['D-undecodable']}: slice 2 of 4 of inbox case D-undecodable cannot be read (Cannot read "
        "requested file). Re-export the complete series from the PACS or scanner into "
        f"{inbox / 'D-undecodable'}, or move that folder out of the inbox."
    )
    assert skipped["D-undecodable"].patient_id == "PD"
    assert all(s.stage == "predict" and s.where == str(inbox) for s in skipped.values())
    assert sorted(p.name for p in results.iterdir()) == [
        "labels", "predictions.json", "seg", SKIPPED_PREDICTIONS_FILE,
    ]  # fmt: skip
    assert not (tmp_path / "work" / predict.STAGING_NAME).exists()


def test_fail_publishes_nothing_and_names_every_bad_case(
    no_nnunet: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    bad = _bad_inbox(inbox)
    (results / "labels").mkdir(parents=True)
    (results / "predictions.json").write_text("[]")  # the previous run's: kept
    with pytest.raises(PredictionError) as info:
        _predict(tmp_path, inbox, BadCasePolicy.FAIL)
    lines = str(info.value).splitlines()
    assert lines[0] == (
        f"{inbox}: 4 of 7 inbox case(s) cannot be predicted, so nothing was published (on_bad_case: fail):"
    )
    assert [line.strip().split(": ")[0] for line in lines[1:5]] == [str(p) for p in bad.values()]
    assert lines[5] == (
        "Fix or remove them, or set on_bad_case: skip to predict the others and list these in "
        "skipped_predictions.json."
    )
    assert sorted(p.name for p in results.iterdir()) == ["labels", "predictions.json"]
    assert (results / "predictions.json").read_text() == "[]"
    assert not (tmp_path / "work" / predict.STAGING_NAME).exists()
    # through the command line: exit 2, every bad case on stderr, no traceback
    capfd.readouterr()
    assert main(_argv(tmp_path, "--on-bad-case", "fail")) == 2
    err = capfd.readouterr().err
    assert all(str(path) in err for path in bad.values()) and "Traceback" not in err
    assert not (tmp_path / "work/predicted.json").exists()


def test_the_cli_records_what_it_published(no_nnunet: None, tmp_path: Path) -> None:
    bad = _bad_inbox(tmp_path / "inbox")
    assert main(_argv(tmp_path)) == 0
    record = json.loads((tmp_path / "work/predicted.json").read_text())
    assert record["predictions"] == str(tmp_path / "results/predictions.json")
    assert record["skipped"] == str(tmp_path / "results" / SKIPPED_PREDICTIONS_FILE)
    assert record["skipped_cases"] == list(bad) and len(record["cases"]) == 3
    assert record["on_bad_case"] == "skip"


def test_an_inbox_of_bad_cases_only_is_an_error(no_nnunet: None, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "B-not-dicom").mkdir(parents=True)
    (inbox / "B-not-dicom" / "x").write_text("x")
    with pytest.raises(
        PredictionError, match=r"none of its 1 case\(s\) could be predicted, so nothing was published"
    ):
        _predict(tmp_path, inbox, BadCasePolicy.SKIP)
    assert not (tmp_path / "results" / "predictions.json").exists()


def test_an_empty_inbox_publishes_empty_lists(no_nnunet: None, tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    run = _predict(tmp_path, tmp_path / "inbox", BadCasePolicy.FAIL)
    assert run.predictions == () and run.skipped == ()
    assert json.loads((tmp_path / "results/predictions.json").read_text()) == []
    assert read_skipped(tmp_path / "results" / SKIPPED_PREDICTIONS_FILE) == []


def test_out_of_space_is_not_a_bad_case(
    no_nnunet: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ct(tmp_path / "inbox" / "P1", "P1")

    def full(*_: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predict, "read_volume", full)
    with pytest.raises(OSError) as info:
        _predict(tmp_path, tmp_path / "inbox", BadCasePolicy.SKIP)
    assert info.value.errno == errno.ENOSPC


def test_leftovers_of_an_interrupted_run_are_removed_not_published(no_nnunet: None, tmp_path: Path) -> None:
    _ct(tmp_path / "inbox" / "P1", "P1")
    stale = tmp_path / "work" / predict.STAGING_NAME / "labels"
    stale.mkdir(parents=True)
    (stale / "GONE.nii.gz").write_bytes(b"half")
    old_layout = tmp_path / "results" / ".predictions.partial"  # where earlier versions staged
    old_layout.mkdir(parents=True)
    _predict(tmp_path, tmp_path / "inbox", BadCasePolicy.SKIP)
    assert sorted(p.name for p in (tmp_path / "results/labels").iterdir()) == ["P1.nii.gz"]
    assert not old_layout.exists() and not stale.parent.exists()
