"""Multi-sequence MR cases: channels found by description, resampled, recorded; ambiguity refused.

Built on the two-sequence MR demo (AX FLAIR on the CT demo's grid, T1 AX on a coarser grid of the
same frame of reference), edited the way real exports go wrong: a sequence missing, a sequence
exported twice, a sequence in another frame of reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import REPO, tree_digest
from iterseg.convert.assemble import HoldoutSpec, assemble_dataset
from iterseg.convert.channels import parse_channels
from iterseg.convert.snapshot import convert_snapshot
from iterseg.rawdata.demo_mr import write_demo_mr_dataset
from iterseg.rawdata.inbox import scan_inbox
from iterseg.records import SkippedCases, read_record
from iterseg.skipped import SKIPPED_FILE

ROI = REPO / "config/roi_demo.yaml"
CHANNELS = parse_channels({"FLAIR": ["flair"], "T1": ["^t1"]})
UID = "1.2.826.0.1.3680043.10.1451.999."


@pytest.fixture(scope="module")
def mr_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mr") / "demo-mr"
    write_demo_mr_dataset(root)
    return root


def _snapshot(mr_data: Path) -> Path:
    (snapshot,) = [p for p in mr_data.iterdir() if "__" in p.name]
    return snapshot


def _rewrite(folder: Path, **values: str) -> None:
    """Set header values in every file of ``folder`` (new SOP UIDs: a re-export, not a copy)."""
    for k, path in enumerate(sorted(p for p in folder.iterdir() if p.is_file())):
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = (
            f"{UID}{abs(hash((str(folder), k))) % 10**12}"
        )
        ds.save_as(path)


@pytest.fixture(scope="module")
def converted(mr_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("work")
    snapshot = _snapshot(mr_data)
    before = tree_digest(snapshot)
    cases = convert_snapshot(snapshot, work / "converted", ROI, "MR", jobs=2, channels=CHANNELS)
    return {"work": work, "snapshot": snapshot, "cases": cases, "before": before}


def test_every_case_gets_both_channels_on_the_flair_grid_recorded(converted: dict) -> None:
    out = converted["work"] / "converted"
    assert len(converted["cases"]) == 7
    for case in converted["cases"]:
        assert case.image_description == "AX FLAIR"
        (t1,) = case.extra_channels
        assert (t1["channel"], t1["index"], t1["description"]) == ("T1", 1, "T1 AX")
        assert t1["resampled"] and t1["interpolation"] == "linear" and t1["coverage"] > 0.99
        assert t1["spacing"] != [round(s, 6) for s in sitk.ReadImage(str(out / case.image)).GetSpacing()]
        assert t1["frame_of_reference"] == case.frame_of_reference
        flair, moved = sitk.ReadImage(str(out / case.image)), sitk.ReadImage(str(out / t1["image"]))
        assert moved.GetSize() == flair.GetSize()
        assert np.allclose(moved.GetOrigin(), flair.GetOrigin()) and moved.GetSpacing() == flair.GetSpacing()
        # aligned: the T1's bright liver and dark tumour fall on the FLAIR annotation's labels
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case.label)))
        t1_values, flair_values = sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(flair)
        assert t1_values[label == 1].mean() > t1_values[label == 2].mean() + 100
        assert flair_values[label == 2].mean() > flair_values[label == 1].mean() + 100


def test_reconversion_reuses_every_channel_and_a_changed_t1_converts_again(
    converted: dict, tmp_path: Path
) -> None:
    first = converted["work"] / "converted"
    again = convert_snapshot(
        converted["snapshot"], tmp_path / "converted", ROI, "MR", channels=CHANNELS, reuse_from=[first]
    )
    assert {c.conversion for c in again} == {"reused"}
    for case in again:
        assert (tmp_path / "converted" / case.extra_channels[0]["image"]).stat().st_ino == (
            first / case.extra_channels[0]["image"]
        ).stat().st_ino
    # without channels, the same files are another dataset: nothing is reused
    single = convert_snapshot(converted["snapshot"], tmp_path / "single", ROI, "MR", reuse_from=[first])
    assert {c.conversion for c in single} == {"converted"} and not single[0].extra_channels
    assert tree_digest(converted["snapshot"]) == converted["before"]


def test_a_missing_double_or_unregistered_sequence_is_refused_naming_the_series(
    mr_data: Path, tmp_path: Path
) -> None:
    snapshot = tmp_path / _snapshot(mr_data).name
    shutil.copytree(_snapshot(mr_data), snapshot)
    shutil.rmtree(snapshot / "P001/T1")
    shutil.copytree(snapshot / "P002/T1", snapshot / "P002/T1 again")
    _rewrite(snapshot / "P002/T1 again", SeriesInstanceUID=f"{UID}2", SeriesDescription="T1 AX repeat")
    _rewrite(snapshot / "P003/T1", FrameOfReferenceUID=f"{UID}3")
    cases = convert_snapshot(snapshot, tmp_path / "converted", ROI, "MR", channels=CHANNELS)
    assert sorted(c.patient_id for c in cases) == ["P004", "P005", "P006", "P007"]
    skipped = {
        s.patient_id: s.message
        for s in read_record(tmp_path / "converted" / SKIPPED_FILE, SkippedCases).cases
    }
    assert set(skipped) == {"P001", "P002", "P003"}
    assert "no series for channel T1" in skipped["P001"] and "'AX FLAIR'" in skipped["P001"]
    assert "2 series match channel T1" in skipped["P002"] and "'T1 AX repeat'" in skipped["P002"]
    assert f"frame of reference {UID}3" in skipped["P003"] and "register" in skipped["P003"]
    assert not list((tmp_path / "converted/cases").glob("P00[123]*"))


def test_the_raw_dataset_names_the_channels_in_config_order(converted: dict, tmp_path: Path) -> None:
    raw = tmp_path / "Dataset902_demo-mr"
    record = assemble_dataset(
        [converted["work"] / "converted"],
        raw,
        ROI,
        "MR",
        test_spec=HoldoutSpec(patients=("P007",)),
        channel_names=("FLAIR", "T1"),
    )
    assert json.loads((raw / "dataset.json").read_text())["channel_names"] == {"0": "FLAIR", "1": "T1"}
    for cid in record.cases:
        assert sorted(p.name for p in (raw / "imagesTr").glob(f"{cid}_*")) == [
            f"{cid}_0000.nii.gz",
            f"{cid}_0001.nii.gz",
        ]
    (test,) = record.test_cases
    assert (raw / "imagesTs" / f"{test}_0001.nii.gz").is_file()


def test_inbox_cases_take_the_same_channels_and_a_folder_without_one_is_named(
    mr_data: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    shutil.copytree(mr_data / "inbox", inbox)
    scan = scan_inbox(inbox, "MR", CHANNELS)
    assert [c.case_id for c in scan.cases] == ["P101", "P102"]
    for case in scan.cases:
        assert case.series is not None and case.series.datasets[0].SeriesDescription == "AX FLAIR"
        assert [s.datasets[0].SeriesDescription for s in case.channels] == ["T1 AX"]
    shutil.rmtree(inbox / "P102/T1")
    scan = scan_inbox(inbox, "MR", CHANNELS)
    assert [c.case_id for c in scan.cases] == ["P101"]
    (bad,) = scan.unusable
    assert bad.case == "P102" and "no series for channel T1" in bad.message
    # a NIfTI file names no sequence: a multi-sequence model cannot take it
    (inbox / "N1").mkdir()
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(inbox / "N1/flair.nii.gz"))
    unusable = {u.case: u.message for u in scan_inbox(inbox, "MR", CHANNELS).unusable}
    assert "2 channels (FLAIR, T1)" in unusable["N1"] and "DICOM series" in unusable["N1"]


def test_a_channel_missing_a_slice_is_refused_like_the_reference(mr_data: Path, tmp_path: Path) -> None:
    """The other channels get the reference's grid checks: a gap is never interpolated over."""
    snapshot = tmp_path / _snapshot(mr_data).name
    shutil.copytree(_snapshot(mr_data), snapshot)
    slices = sorted(
        (snapshot / "P005/T1").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2])
    )
    slices[len(slices) // 2].unlink()
    cases = convert_snapshot(snapshot, tmp_path / "converted", ROI, "MR", channels=CHANNELS)
    assert "P005" not in {c.patient_id for c in cases} and len(cases) == 6
    (skipped,) = read_record(tmp_path / "converted" / SKIPPED_FILE, SkippedCases).cases
    assert skipped.patient_id == "P005" and "P005/T1" in skipped.message and "slice" in skipped.message


def test_an_inbox_folder_with_two_studies_gives_two_cases(mr_data: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    shutil.copytree(mr_data / "inbox/P101", inbox / "P101")
    shutil.copytree(mr_data / "inbox/P102", inbox / "P101/later")  # another study (of P102) in P101's folder
    scan = scan_inbox(inbox, "MR", CHANNELS)
    assert not scan.unusable and len(scan.cases) == 2
    assert all(c.case_id.startswith("P101_") and len(c.channels) == 1 for c in scan.cases)
    studies = {c.series.datasets[0].StudyInstanceUID for c in scan.cases if c.series is not None}
    assert len(studies) == 2 and len({c.case_id for c in scan.cases}) == 2


def _localizer(flair: Path, out: Path) -> None:
    """A 3-plane localizer, as MR scanners put before the sequences: one series, three orientations."""
    out.mkdir()
    planes = ([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1])
    for k, (path, plane) in enumerate(zip(sorted(flair.iterdir())[:3], planes, strict=True)):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = f"{UID}77", 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID}77.{k}"
        ds.SeriesDescription, ds.ProtocolName = "localizer", "AAHead_Scout"
        ds.ImageOrientationPatient = plane
        ds.save_as(out / f"IM{k}")


def test_a_three_plane_localizer_beside_the_sequences_is_left_out(mr_data: Path, tmp_path: Path) -> None:
    inbox, snapshot = tmp_path / "inbox", tmp_path / _snapshot(mr_data).name
    shutil.copytree(mr_data / "inbox", inbox)
    shutil.copytree(_snapshot(mr_data), snapshot)
    _localizer(inbox / "P101/FLAIR", inbox / "P101/LOC")
    _localizer(snapshot / "P001/FLAIR", snapshot / "P001/LOC")
    scan = scan_inbox(inbox, "MR", CHANNELS)
    assert [c.case_id for c in scan.cases] == ["P101", "P102"] and not scan.unusable
    assert [s.datasets[0].SeriesDescription for s in scan.cases[0].channels] == ["T1 AX"]
    cases = convert_snapshot(snapshot, tmp_path / "converted", ROI, "MR", channels=CHANNELS)
    assert "P001" in {c.patient_id for c in cases} and len(cases) == 7
    # a channel that would take it: the case is refused, naming why its slices cannot be ordered
    scout = parse_channels({"FLAIR": ["flair"], "T1": ["^t1|scout"]})
    shutil.rmtree(inbox / "P101/T1")
    (bad,) = [u for u in scan_inbox(inbox, "MR", scout).unusable if u.case == "P101"]
    assert f"series {UID}77" in bad.message and "ImageOrientationPatient differs" in bad.message
