"""Inbox case ids are unique: sanitised folder names that collide get a stable hash of the original."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from iterseg.errors import PredictionError
from iterseg.rawdata.inbox import discover_inbox, scan_inbox
from real_dicom import planned_slices, write_series

pytestmark = pytest.mark.unit


def _ct(folder: Path, patient: str, tag: str = "img", series_number: int | None = None) -> str:
    """Write a 3-slice CT series (copies of pydicom's real GE slice); return its SeriesInstanceUID."""
    slices = planned_slices(patient, 3, tag=tag)
    if series_number is not None:
        for ds in slices:
            ds.SeriesNumber = series_number
    write_series(slices, folder, name=lambda ds: f"{tag}-{int(ds.InstanceNumber)}.dcm")
    return str(slices[0].SeriesInstanceUID)


def _nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(path))


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def test_folders_that_sanitise_alike_get_distinct_stable_ids(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _ct(inbox / "P 9", "P9a")
    _ct(inbox / "P-9", "P9b")
    _ct(inbox / "P101", "P101")
    cases = {c.folder.name: c for c in discover_inbox(inbox, "CT")}
    # the folder already named like an id keeps it; the other gets a hash of its own name
    assert cases["P-9"].case_id == "P-9" and cases["P101"].case_id == "P101"
    assert cases["P 9"].case_id == f"P-9_{_hash('P 9')}"
    assert cases["P 9"].series is not None and cases["P 9"].series.patient_id == "P9a"
    assert [c.case_id for c in discover_inbox(inbox, "CT")] == [c.case_id for c in cases.values()]


def test_several_series_in_one_folder(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _ct(inbox / "numbered", "A", tag="one", series_number=1)
    _ct(inbox / "numbered", "A", tag="two", series_number=2)
    uid_a = _ct(inbox / "same-number", "B", tag="one", series_number=3)
    uid_b = _ct(inbox / "same-number", "B", tag="two", series_number=3)
    ids = {c.case_id: c for c in discover_inbox(inbox, "CT")}
    assert {"numbered_S1", "numbered_S2"} <= set(ids)
    # two series numbered alike: each id hashes the folder name with its own series
    same = {
        f"same-number_S3_{_hash('same-number/' + uid_a)}",
        f"same-number_S3_{_hash('same-number/' + uid_b)}",
    }
    assert same <= set(ids) and len(ids) == 4
    assert {ids[i].series.series_uid for i in same if ids[i].series} == {uid_a, uid_b}


def test_several_nifti_files_in_one_folder(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _nifti(inbox / "one" / "ct.nii.gz")
    _nifti(inbox / "two" / "ct.nii.gz")
    _nifti(inbox / "two" / "mr.nii")
    _nifti(inbox / "clash" / "a b.nii.gz")
    _nifti(inbox / "clash" / "a-b.nii.gz")
    (inbox / "one" / "._ct.nii.gz").write_bytes(b"macOS resource fork")  # hidden: not a case
    ids = sorted(c.case_id for c in discover_inbox(inbox, "CT"))
    assert ids == sorted(
        [
            "one",
            "two_ct",
            "two_mr",
            "clash_a-b",  # the file already named like an id keeps it
            f"clash_a-b_{_hash('clash/a b.nii.gz')}",
        ]
    )


def test_a_clash_left_after_hashing_is_refused_naming_both(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    _ct(inbox / "P 9", "P9a")
    _ct(inbox / f"P-9_{_hash('P 9')}", "P9c")  # a folder named like the other's hashed id
    with pytest.raises(PredictionError) as info:
        discover_inbox(inbox, "CT")
    message = str(info.value)
    assert str(inbox / "P 9") in message and str(inbox / f"P-9_{_hash('P 9')}") in message
    assert "rename one of those folders" in message


def test_folders_with_nothing_to_predict_are_named_with_the_fix(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "notes").mkdir(parents=True)
    (inbox / "notes" / "a.txt").write_text("not DICOM")
    (inbox / "notes" / "b.txt").write_text("nor this")
    (inbox / "empty").mkdir()
    _ct(inbox / "P101", "P101")
    scan = scan_inbox(inbox, "CT")
    assert [c.case_id for c in scan.cases] == ["P101"] and scan.folders == 3
    by_folder = {s.case: s for s in scan.unusable}
    assert by_folder["notes"].message == (
        f"{inbox / 'notes'}: no CT DICOM series and no NIfTI image in it (2 file(s), none a CT DICOM "
        "image). Put the case's CT series (or one .nii.gz) there, or move the folder out of the inbox."
    )
    assert "(it is empty)" in by_folder["empty"].message
    assert {s.stage for s in scan.unusable} == {"predict"} and by_folder["notes"].file == str(inbox / "notes")
