import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import REPO, tree_digest
from iterseg.convert import assemble_dataset, convert_snapshot, read_cases
from iterseg.demo import annotated, make_phantom, phantom_arrays
from iterseg.errors import ConversionError, SnapshotError

pytestmark = pytest.mark.integration
ROI = REPO / "config" / "roi_demo.yaml"


def test_mixed_snapshot_converts_every_case_without_touching_rawdata(
    demo_rawdata: Path, tmp_path: Path
) -> None:
    snapshot = demo_rawdata / "2026-01-15__demo"
    before = tree_digest(demo_rawdata)
    cases = convert_snapshot(snapshot, tmp_path / "converted", ROI)
    assert tree_digest(demo_rawdata) == before
    assert not list(demo_rawdata.parent.rglob(".imgtools"))
    assert sorted(c.patient_id for c in cases) == [f"P{n:03d}" for n in range(1, 8)]
    assert {c.annotation_kind for c in cases} == {"SEG", "RTSTRUCT"}
    assert read_cases(tmp_path / "converted") == cases
    # SEG-annotated cases reach nnU-Net voxel for voxel (the demo SEGs lie on the CT grid)
    for case in (c for c in cases if c.annotation_kind == "SEG"):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "converted" / case.label)))
        scale = 0.8 if case.patient_id in {"P001", "P002", "P004"} else 1.0
        _, masks = phantom_arrays(annotated(make_phantom(case.patient_id, int(case.patient_id[1:])), scale))
        expected = np.zeros(label.shape, np.uint8)
        for value, mask in enumerate(masks.values(), start=1):
            expected[mask] = value
        assert np.array_equal(label, expected), case.patient_id


def test_newest_annotation_wins_when_assembling(demo_rawdata: Path, tmp_path: Path) -> None:
    first = convert_snapshot(demo_rawdata / "2026-01-15__demo", tmp_path / "c1", ROI)
    second = convert_snapshot(demo_rawdata / "2026-03-02__demo", tmp_path / "c2", ROI)
    raw = tmp_path / "nnUNet_raw" / "Dataset950_demo_x"
    cases = assemble_dataset([tmp_path / "c1", tmp_path / "c2"], raw, ROI, "CT")
    ids = {c.case_id for c in first} | {c.case_id for c in second}
    assert {c.case_id for c in cases} == ids
    assert len(ids) == 11  # three patients of snapshot 1 were refined in snapshot 2
    winner = {c.case_id: c.snapshot for c in cases}
    refined = {c.case_id for c in second} & {c.case_id for c in first}
    assert refined and all(winner[cid] == "2026-03-02" for cid in refined)
    for cid in refined:
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c2" / "cases" / f"{cid}.nii.gz")))
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{cid}.nii.gz")))
        assert np.array_equal(got, expected)
    assert len(list((raw / "imagesTr").glob("*_0000.nii.gz"))) == 11


def _copy_snapshot(demo_rawdata: Path, tmp_path: Path, patients: list[str]) -> Path:
    snap = tmp_path / "raw" / "2026-05-01__demo"
    for pid in patients:
        shutil.copytree(demo_rawdata / "2026-01-15__demo" / pid, snap / pid)
    return snap


def test_case_failing_in_med_imagetools_is_a_loud_error(demo_rawdata: Path, tmp_path: Path) -> None:
    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001", "P002"])
    rt_path = next((snap / "P002" / "RTSTRUCT").glob("*.dcm"))
    rt = pydicom.dcmread(rt_path)
    for roi in rt.StructureSetROISequence:
        roi.ROIName = "Kidney_" + roi.ROIName.replace("Liver", "L")
    rt.save_as(rt_path)
    with pytest.raises(ConversionError) as info:
        convert_snapshot(snap, tmp_path / "out", ROI)
    message = str(info.value)
    assert "P002" in message and "1 case(s)" in message and "rawdata was not changed" in message


def test_two_annotations_of_one_series_are_refused(demo_rawdata: Path, tmp_path: Path) -> None:
    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001"])
    seg_path = next((snap / "P001" / "SEG").glob("*.dcm"))
    twin = pydicom.dcmread(seg_path)
    twin.SeriesInstanceUID = pydicom.uid.generate_uid()
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    twin.save_as(snap / "P001" / "SEG" / "second.dcm")
    with pytest.raises(SnapshotError, match="has 2 annotations"):
        convert_snapshot(snap, tmp_path / "out", ROI)


def test_annotation_of_a_missing_series_is_refused(demo_rawdata: Path, tmp_path: Path) -> None:
    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001"])
    shutil.rmtree(snap / "P001" / "CT")
    with pytest.raises(SnapshotError, match="which is not a CT series"):
        convert_snapshot(snap, tmp_path / "out", ROI)
