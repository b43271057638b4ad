"""NIfTI snapshots in nnU-Net's / the Decathlon's layout: labels by name, geometry, reuse, the check."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, tree_digest
from iterseg.convert import decathlon
from iterseg.convert.decathlon import UNLABELLED_FILE, convert_nifti_snapshot, is_nifti_snapshot
from iterseg.convert.snapshot import case_id, convert_snapshot, earlier_index, read_cases
from iterseg.errors import ConversionError
from iterseg.skipped import BadCasePolicy, read_skipped

pytestmark = pytest.mark.unit

FIRST, SECOND = "2026-01-15", "2026-03-02"
SHAPE = (8, 16, 16)  # slices, rows, columns
SPACING, ORIGIN = (0.8, 0.8, 2.5), (-10.0, 5.0, 3.0)
V2_LABELS = {"background": 0, "Tumor": 1, "Liver": 2}  # another order and spelling than roi_demo.yaml


@pytest.fixture
def roi(tmp_path: Path) -> Path:
    path = tmp_path / "roi.yaml"
    shutil.copy(REPO / "config/roi_demo.yaml", path)  # liver: 1, tumour: 2
    return path


def phantom(seed: int, tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A CT (int16) and a label map with Liver 2 and Tumor 1 (the V2_LABELS values)."""
    rng = np.random.default_rng(seed)
    ct = rng.integers(-100, 200, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 3 + seed % 3 : 12, 4:13] = 2
    if tumour:
        label[3:5, 6:9, 6:9] = 1
    return ct, label


def write(array: np.ndarray, path: Path, origin: tuple[float, ...] = ORIGIN) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def snapshot(
    root: Path,
    date: str = FIRST,
    cases: tuple[str, ...] = ("P001", "P002"),
    form: str = "v2",
    labels: dict[str, Any] | None = None,
    channels: tuple[str, ...] = ("CT",),
) -> Path:
    """A Decathlon-layout snapshot: v2 (``<case>_0000``, name -> value) or v1 (``<case>``, value -> name)."""
    folder = root / "demo" / f"{date}__demo"
    spec: dict[str, Any] = {"name": "demo", "file_ending": ".nii.gz", "numTraining": len(cases)}
    if form == "v2":
        spec |= {"channel_names": dict(enumerate(channels)), "labels": labels or V2_LABELS}
    else:
        v1_labels = {"0": "background", "1": "tumour", "2": "liver"}
        spec |= {"modality": dict(enumerate(channels)), "labels": labels or v1_labels}
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(spec))
    for n, name in enumerate(cases):
        ct, label = phantom(n)
        for k in range(len(channels)):
            stem = f"{name}_{k:04d}" if form == "v2" else name
            write(ct + 10 * k, folder / "imagesTr" / f"{stem}.nii.gz")
        write(label, folder / "labelsTr" / f"{name}.nii.gz")
    return folder


def convert(snap: Path, roi: Path, out: Path, **kwargs: Any) -> list[Any]:
    before = tree_digest(snap)
    try:
        return convert_nifti_snapshot(snap, out, roi, **kwargs)
    finally:
        assert tree_digest(snap) == before  # nothing written under the snapshot, whatever happened


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_v2_labels_are_mapped_by_name_onto_the_roi_yaml_values(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    out = tmp_path / "converted"
    assert is_nifti_snapshot(snap) and not is_nifti_snapshot(tmp_path)
    cases = convert(snap, roi, out)
    assert [c.patient_id for c in cases] == ["P001", "P002"]
    for n, case in enumerate(cases):
        assert case.case_id == case_id(case.patient_id, f"nifti:{case.patient_id}")
        assert (case.annotation_kind, case.image_series_uid) == ("NIFTI", f"nifti:{case.patient_id}")
        assert case.image_files == [str(snap / f"imagesTr/{case.patient_id}_0000.nii.gz")]
        assert case.annotation_files == [str(snap / f"labelsTr/{case.patient_id}.nii.gz")]
        assert case.labels_present == ["liver", "tumour"] and case.missing_rois == case.empty_labels == []
        assert case.conversion == "converted" and case.extra_channels == [] and len(case.key) == 64
        ct, source = phantom(n)
        written = array(out / case.label)
        assert written.dtype == np.uint8
        assert np.array_equal(written == 1, source == 2) and np.array_equal(written == 2, source == 1)
        assert np.array_equal(array(out / case.image), ct)
        image = sitk.ReadImage(str(out / case.image))
        assert np.allclose(image.GetSpacing(), SPACING) and np.allclose(image.GetOrigin(), ORIGIN)
    assert read_cases(out) == cases
    for name in ("check.json", "excluded.json", "skipped.json", "snapshot_files.json", UNLABELLED_FILE):
        assert (out / name).is_file(), name
    assert json.loads((out / UNLABELLED_FILE).read_text()) == [] and read_skipped(out / "skipped.json") == []


def test_the_decathlon_v1_form_reads_the_same(tmp_path: Path, roi: Path) -> None:
    v1 = convert(snapshot(tmp_path / "a", form="v1"), roi, tmp_path / "v1")
    v2 = convert(snapshot(tmp_path / "b"), roi, tmp_path / "v2")
    assert [c.case_id for c in v1] == [c.case_id for c in v2]
    assert v1[0].image_files[0].endswith("imagesTr/P001.nii.gz")
    for a, b in zip(v1, v2, strict=True):
        assert np.array_equal(array(tmp_path / "v1" / a.label), array(tmp_path / "v2" / b.label))
        assert a.annotation_hash == b.annotation_hash and a.key == b.key  # same content, same mapping


def test_a_4d_decathlon_image_is_refused_with_the_fix(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw", form="v1")
    four = sitk.JoinSeries([sitk.ReadImage(str(snap / "imagesTr/P001.nii.gz"))] * 2)
    sitk.WriteImage(four, str(snap / "imagesTr/P001.nii.gz"))
    with pytest.raises(ConversionError, match="a 4D image") as info:
        convert(snap, roi, tmp_path / "out")
    assert str(snap / "imagesTr/P001.nii.gz") in str(info.value)
    assert "nnUNetv2_convert_MSD_dataset" in str(info.value)


def test_a_label_off_its_images_grid_is_refused_naming_both_files(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    label = snap / "labelsTr/P002.nii.gz"
    write(array(label), label, origin=(ORIGIN[0] + 1.0, *ORIGIN[1:]))  # 1 mm off
    out = tmp_path / "out"
    cases = convert(snap, roi, out)
    assert [c.patient_id for c in cases] == ["P001"]  # the other case is still converted
    (skipped,) = read_skipped(out / "skipped.json")
    assert skipped.case == case_id("P002", "nifti:P002") and skipped.file == str(label)
    assert str(label) in skipped.message and str(snap / "imagesTr/P002_0000.nii.gz") in skipped.message
    assert "origin (-9, 5, 3) vs (-10, 5, 3)" in skipped.message
    assert "resample the label onto the image" in skipped.message
    assert not list((out / "cases").glob(f"{skipped.case}*"))
    with pytest.raises(ConversionError, match="1 case\\(s\\) could not be converted"):
        convert(snap, roi, out, on_bad_case=BadCasePolicy.FAIL)


def test_within_header_rounding_the_label_takes_the_images_header(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw", cases=("P001",))
    label = snap / "labelsTr/P001.nii.gz"
    write(array(label), label, origin=(ORIGIN[0] + 2e-4, *ORIGIN[1:]))
    (case,) = convert(snap, roi, tmp_path / "out")
    written = sitk.ReadImage(str(tmp_path / "out" / case.label))
    assert written.GetOrigin() == sitk.ReadImage(str(tmp_path / "out" / case.image)).GetOrigin()


def test_a_voxel_value_dataset_json_does_not_declare_is_a_problem(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    label = snap / "labelsTr/P001.nii.gz"
    values = array(label)
    values[0, 0, :2] = (3, 7)
    write(values, label)
    out = tmp_path / "out"
    assert [c.patient_id for c in convert(snap, roi, out)] == ["P002"]
    (skipped,) = read_skipped(out / "skipped.json")
    assert skipped.message.startswith(f"{label}: voxel value(s) 3, 7 not declared in {snap / 'dataset.json'}")


def test_a_label_map_must_hold_whole_numbers(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    label = snap / "labelsTr/P001.nii.gz"
    floats = array(label).astype(np.float32)
    write(floats, label)  # whole numbers as float: read as such
    floats[0, 0, 0] = 0.5
    write(floats, snap / "labelsTr/P002.nii.gz")
    out = tmp_path / "out"
    assert [c.patient_id for c in convert(snap, roi, out)] == ["P001"]
    (skipped,) = read_skipped(out / "skipped.json")
    assert "labelsTr/P002.nii.gz: holds non-integer values (0.5, ...)" in skipped.message


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"background": 0, "spleen": 1}, "label 'spleen' (value 1) matches no label of"),
        ({"background": 0, "liver tumour": 1}, "label 'liver tumour' (value 1) matches no label"),
        ({"background": 0, "whole": [1, 2]}, "label 'whole' is a region"),
        ({"background": 0, "liver": 1, "Liver": 1}, "share value 1"),
    ],
)
def test_a_dataset_json_label_the_roi_yaml_cannot_place_stops_the_conversion(
    tmp_path: Path, roi: Path, labels: dict[str, Any], expected: str
) -> None:
    snap = snapshot(tmp_path / "raw", labels=labels)
    with pytest.raises(ConversionError, match=re.escape(expected)) as info:
        convert(snap, roi, tmp_path / "out")
    assert str(snap / "dataset.json") in str(info.value)
    if "matches" in expected:
        assert str(roi) in str(info.value) and "rename it in dataset.json" in str(info.value)
        assert "add its name to a label's regexes in the ROI YAML" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_label_matching_two_roi_labels_names_both(tmp_path: Path) -> None:
    roi = tmp_path / "roi.yaml"
    roi.write_text("liver: ['liver.*']\ntumour: ['.*tumou?r']\n")
    snap = snapshot(tmp_path / "raw", labels={"background": 0, "liver_tumour": 1, "liver": 2})
    with pytest.raises(
        ConversionError, match=r"'liver_tumour' \(value 1\) matches 2 labels \(liver, tumour\)"
    ):
        convert(snap, roi, tmp_path / "out")


def test_an_roi_dataset_json_lacks_is_missing_in_every_case_and_an_empty_one_is_empty(
    tmp_path: Path, roi: Path
) -> None:
    snap = snapshot(tmp_path / "raw", labels={"background": 0, "Liver": 2})
    label = snap / "labelsTr/P002.nii.gz"
    write(np.where(array(label) == 2, 2, 0).astype(np.uint8), label)  # value 1 is undeclared now
    p001 = snap / "labelsTr/P001.nii.gz"
    write(np.zeros(SHAPE, np.uint8), p001)
    out = tmp_path / "out"
    cases = {c.patient_id: c for c in convert(snap, roi, out)}
    assert {p: c.missing_rois for p, c in cases.items()} == {"P001": ["tumour"], "P002": ["tumour"]}
    assert cases["P001"].labels_present == [] and cases["P001"].empty_labels == ["liver"]
    assert cases["P002"].labels_present == ["liver"] and cases["P002"].empty_labels == []


def test_missing_label_image_or_channel_files_are_problems_naming_the_file(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw", cases=("P001", "P002", "P003", "P004"), channels=("T1", "T2"))
    (snap / "labelsTr/P002.nii.gz").unlink()
    for k in (0, 1):
        (snap / f"imagesTr/P003_{k:04d}.nii.gz").unlink()
    (snap / "imagesTr/P004_0001.nii.gz").unlink()
    (snap / "imagesTr/._P001_0000.nii.gz").write_bytes(b"a macOS resource fork")  # ignored
    out = tmp_path / "out"
    cases = convert(snap, roi, out, channel_names=("T1", "T2"))
    assert [c.patient_id for c in cases] == ["P001"]
    messages = {s.patient_id: s.message for s in read_skipped(out / "skipped.json")}
    assert messages["P002"].startswith(f"{snap / 'imagesTr/P002_0000.nii.gz'}: no label file ")
    assert messages["P003"].startswith(f"{snap / 'labelsTr/P003.nii.gz'}: a label without its image")
    assert messages["P004"].startswith(f"{snap / 'imagesTr/P004_0001.nii.gz'}: missing, channel 1")


def test_more_channels_follow_the_configured_order(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw", cases=("P001",), channels=("T1", "T2"))
    out = tmp_path / "out"
    (case,) = convert(snap, roi, out, modality="MR", channel_names=("T1", "T2"))
    (extra,) = case.extra_channels
    assert extra["channel"] == "T2" and extra["index"] == 1 and extra["resampled"] is False
    assert extra["image"] == f"cases/{case.case_id}_0001.nii.gz"
    assert extra["files"] == [str(snap / "imagesTr/P001_0001.nii.gz")]
    assert np.array_equal(array(out / extra["image"]), phantom(0)[0] + 10)
    _, images = earlier_index([out])  # what a later DICOM snapshot's conversion reads of this one
    assert images[extra["series_uid"]].files == (snap / "imagesTr/P001_0001.nii.gz",)
    with pytest.raises(ConversionError, match=r"channels \['T1', 'T2'\] differ from the dataset's channels"):
        convert(snap, roi, tmp_path / "b", channel_names=("T2", "T1"))
    with pytest.raises(
        ConversionError, match=r"2 channels \['T1', 'T2'\], but the dataset is configured for one"
    ):
        convert(snap, roi, tmp_path / "c")


def test_a_channel_off_the_first_channels_grid_is_refused(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw", cases=("P001", "P002"), channels=("T1", "T2"))
    second = snap / "imagesTr/P001_0001.nii.gz"
    write(array(second)[:, :, :15].copy(), second)
    out = tmp_path / "out"
    assert [c.patient_id for c in convert(snap, roi, out, channel_names=("T1", "T2"))] == ["P002"]
    (skipped,) = read_skipped(out / "skipped.json")
    assert skipped.message.startswith(f"{second}: not on the grid of the case's first channel ")
    assert "size (15, 16, 8) vs (16, 16, 8)" in skipped.message


def test_images_ts_without_labels_are_listed_not_converted(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    write(phantom(5)[0], snap / "imagesTs/P101_0000.nii.gz")
    out = tmp_path / "out"
    assert [c.patient_id for c in convert(snap, roi, out)] == ["P001", "P002"]
    assert json.loads((out / UNLABELLED_FILE).read_text()) == [
        {"case": "P101", "files": [str(snap / "imagesTs/P101_0000.nii.gz")]}
    ]


def test_images_ts_with_labels_ts_are_ordinary_cases(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    ct, label = phantom(5)
    write(ct, snap / "imagesTs/P101_0000.nii.gz")
    write(label, snap / "labelsTs/P101.nii.gz")
    write(ct, snap / "imagesTs/P001_0000.nii.gz")  # in imagesTr too
    write(label, snap / "labelsTs/P001.nii.gz")
    out = tmp_path / "out"
    cases = convert(snap, roi, out)
    assert [c.patient_id for c in cases] == ["P001", "P002", "P101"]
    assert cases[0].annotation_files == [str(snap / "labelsTr/P001.nii.gz")]
    assert cases[2].annotation_files == [str(snap / "labelsTs/P101.nii.gz")]
    (skipped,) = read_skipped(out / "skipped.json")
    assert "imagesTs/P001_0000.nii.gz: case P001 is in imagesTr/ too" in skipped.message
    assert skipped.case == ""  # not the converted imagesTr/ case's id
    assert json.loads((out / UNLABELLED_FILE).read_text()) == []


def test_an_unchanged_case_of_a_later_snapshot_is_linked_not_converted(tmp_path: Path, roi: Path) -> None:
    raw = tmp_path / "raw"
    first = snapshot(raw)
    second = raw / "demo" / f"{SECOND}__demo"
    shutil.copytree(first, second)
    refined = second / "labelsTr/P002.nii.gz"
    write(np.where(array(refined) == 1, 0, array(refined)).astype(np.uint8), refined)  # tumour erased
    one, two = tmp_path / "one", tmp_path / "two"
    convert(first, roi, one)
    cases = {c.patient_id: c for c in convert(second, roi, two, reuse_from=[one])}
    earlier = {c.patient_id: c for c in read_cases(one)}
    assert cases["P001"].conversion == "reused" and cases["P001"].reused_from == FIRST
    assert cases["P001"].snapshot == SECOND and cases["P001"].case_id == earlier["P001"].case_id
    assert cases["P001"].image_files == [str(second / "imagesTr/P001_0000.nii.gz")]
    for name in (cases["P001"].image, cases["P001"].label):
        assert os.path.samefile(one / name, two / name)  # hard-linked
    # the refined label of the same case name: the same case id, converted again
    assert cases["P002"].conversion == "converted" and cases["P002"].case_id == earlier["P002"].case_id
    assert cases["P002"].labels_present == ["liver"] and cases["P002"].empty_labels == ["tumour"]
    check = json.loads((two / "check.json").read_text())
    assert check["reused_cases"] == 1 and check["cases"] == 1
    reused_rows = [r for r in check["rois"] if r["case_id"] == cases["P001"].case_id]
    assert [r["reused_from"] for r in reused_rows] == [FIRST, FIRST]


def test_a_changed_dataset_json_mapping_converts_again(tmp_path: Path, roi: Path) -> None:
    raw = tmp_path / "raw"
    first = snapshot(raw, cases=("P001",))
    second = raw / "demo" / f"{SECOND}__demo"
    shutil.copytree(first, second)
    (second / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}})
    )
    convert(first, roi, tmp_path / "one")
    (case,) = convert(second, roi, tmp_path / "two", reuse_from=[tmp_path / "one"])
    assert case.conversion == "converted"
    written = array(tmp_path / "two" / case.label)
    assert np.array_equal(written, phantom(0)[1])  # now the file's values are the YAML's already


def test_check_json_has_a_row_per_case_and_roi(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    out = tmp_path / "out"
    cases = convert(snap, roi, out)
    check = json.loads((out / "check.json").read_text())
    assert (check["snapshot"], check["cases"], check["mismatches"]) == (snap.name, 2, 0)
    assert check["rois_compared"] == 4 and check["voxels_compared"] == 2 * int(np.prod(SHAPE))
    rows = {(r["patient_id"], r["label"]): r for r in check["rois"]}
    for n, case in enumerate(cases):
        source = phantom(n)[1]
        for name, value in (("liver", 2), ("tumour", 1)):
            row = rows[(case.patient_id, name)]
            assert row["case_id"] == case.case_id and row["annotation"] == "NIFTI" and row["ok"] is True
            assert row["expected_voxels"] == row["converted_voxels"] == int((source == value).sum()) > 0
            assert row["differing_voxels"] == row["slices_missing"] == row["slices_extra"] == 0


def test_a_written_label_map_that_differs_from_its_source_is_dropped(
    tmp_path: Path, roi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = snapshot(tmp_path / "raw")
    relabel = decathlon._relabelled

    def faulty(source: np.ndarray, path: Path, layout: Any) -> np.ndarray:
        values = relabel(source, path, layout)
        if path.name == "P002.nii.gz":
            values[values == 2] = 0  # a writer that loses the tumour
        return values

    monkeypatch.setattr(decathlon, "_relabelled", faulty)
    out = tmp_path / "out"
    assert [c.patient_id for c in convert(snap, roi, out)] == ["P001"]
    check = json.loads((out / "check.json").read_text())
    (bad,) = [r for r in check["rois"] if not r["ok"]]
    assert (bad["patient_id"], bad["label"], bad["converted_voxels"]) == ("P002", "tumour", 0)
    assert bad["differing_voxels"] == bad["expected_voxels"] > 0 and bad["slices_missing"] == 2
    (skipped,) = read_skipped(out / "skipped.json")
    assert "the conversion changed its annotation" in skipped.message
    assert sorted(p.name for p in (out / "cases").iterdir()) == sorted(
        [f"{read_cases(out)[0].case_id}_0000.nii.gz", f"{read_cases(out)[0].case_id}.nii.gz"]
    )


def test_convert_snapshot_hands_a_nifti_snapshot_over(tmp_path: Path, roi: Path) -> None:
    snap = snapshot(tmp_path / "raw")
    cases = convert_snapshot(snap, tmp_path / "out", roi, modality="CT")
    assert [c.annotation_kind for c in cases] == ["NIFTI", "NIFTI"]
