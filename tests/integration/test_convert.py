import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import REPO, tree_digest
from iterseg.convert.annotations import DuplicateRule
from iterseg.convert.assemble import HoldoutSpec, MissingRoiPolicy, assemble_dataset
from iterseg.convert.snapshot import convert_snapshot, read_cases
from iterseg.errors import ConversionError, SnapshotError
from iterseg.rawdata.demo import (
    SegmentLabel,
    annotated,
    make_phantom,
    phantom_arrays,
    write_ct_series,
    write_seg,
)
from iterseg.skipped import BadCasePolicy, read_skipped

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
    record = assemble_dataset([tmp_path / "c1", tmp_path / "c2"], raw, ROI, "CT")
    cases = record.records
    ids = {c.case_id for c in first} | {c.case_id for c in second}
    assert {c["case_id"] for c in cases} == ids
    assert len(ids) == 12  # three patients of snapshot 1 were refined in snapshot 2
    winner = {c["case_id"]: c["snapshot"] for c in cases}
    refined = {c.case_id for c in second} & {c.case_id for c in first}
    assert refined and all(winner[cid] == "2026-03-02" for cid in refined)
    for cid in refined:
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c2" / "cases" / f"{cid}.nii.gz")))
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{cid}.nii.gz")))
        assert np.array_equal(got, expected)
    assert len(list((raw / "imagesTr").glob("*_0000.nii.gz"))) == 12  # P011 (liver only) kept: ignore
    assert [c["patient_id"] for c in cases if c["missing_rois"]] == ["P011"]


def test_frozen_test_set_and_missing_roi_policies(demo_rawdata: Path, tmp_path: Path) -> None:
    convert_snapshot(demo_rawdata / "2026-01-15__demo", tmp_path / "c1", ROI)
    convert_snapshot(demo_rawdata / "2026-03-02__demo", tmp_path / "c2", ROI, reuse_from=[tmp_path / "c1"])
    dirs = [tmp_path / "c1", tmp_path / "c2"]
    first = assemble_dataset(
        dirs[:1], tmp_path / "raw" / "Dataset950_a", ROI, "CT", test_spec=HoldoutSpec(0.3)
    )
    held_out = set(first.test_set["patients"])
    assert len(held_out) == 3 and "fraction 0.3 of 7 patients" in first.test_set["rule"]
    again = assemble_dataset(
        dirs[:1], tmp_path / "raw" / "Dataset950_b", ROI, "CT", test_spec=HoldoutSpec(0.3)
    )
    assert again.test_set["patients"] == first.test_set["patients"]  # reproducible from the seed
    second = assemble_dataset(
        dirs,
        tmp_path / "raw" / "Dataset951_a",
        ROI,
        "CT",
        test_spec=HoldoutSpec(0.9),
        frozen_test_set=first.test_set,
        previous=first,
    )
    assert second.test_set == first.test_set  # frozen: the later spec is not consulted
    tests = {r["patient_id"] for r in second.records if r["split"] == "test"}
    assert tests == held_out
    raw = tmp_path / "raw" / "Dataset951_a"
    trained = {p.name.split("_")[0] for p in (raw / "imagesTr").iterdir()}
    assert not trained & held_out and {p.name.split("_")[0] for p in (raw / "imagesTs").iterdir()} == held_out
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["labels"]["ignore"] == 3 and dataset_json["numTraining"] == 12 - len(held_out)
    dropped = assemble_dataset(
        dirs,
        tmp_path / "raw" / "Dataset951_b",
        ROI,
        "CT",
        MissingRoiPolicy.DROP,
        frozen_test_set=first.test_set,
    )
    assert [r["patient_id"] for r in dropped.records if r["split"] == "dropped"] == ["P011"]
    assert "ignore" not in dropped.labels and dropped.summary["dropped"] == 1
    with pytest.raises(ConversionError, match=r"(?s)P011 .*tumour.*missing_roi"):
        assemble_dataset(
            dirs,
            tmp_path / "raw" / "Dataset951_c",
            ROI,
            "CT",
            MissingRoiPolicy.ERROR,
            frozen_test_set=first.test_set,
        )


def test_unchanged_pairs_are_reused_and_only_the_new_one_converted(
    demo_rawdata: Path, tmp_path: Path
) -> None:
    first = convert_snapshot(demo_rawdata / "2026-01-15__demo", tmp_path / "c1", ROI)
    snap = tmp_path / "raw" / "2026-05-01__demo"
    shutil.copytree(demo_rawdata / "2026-01-15__demo", snap)
    phantom = make_phantom("P020", 20)
    ct = write_ct_series(phantom, snap / "P020" / "CT")
    _, masks = phantom_arrays(annotated(phantom, 1.0))
    write_seg(phantom, ct, snap / "P020" / "SEG" / "seg.dcm", masks, "v1")
    cases = convert_snapshot(snap, tmp_path / "c2", ROI, reuse_from=[tmp_path / "c1"])
    assert [c.patient_id for c in cases if c.conversion == "converted"] == ["P020"]
    assert {c.reused_from for c in cases if c.conversion == "reused"} == {"2026-01-15"}
    for old in first:
        assert (tmp_path / "c2" / old.label).samefile(tmp_path / "c1" / old.label)
    report = json.loads((tmp_path / "c2" / "check.json").read_text())
    assert report["cases"] == 1 and report["reused_cases"] == 7 and len(report["rois"]) == 16
    # the ROI YAML is part of the key: a changed YAML converts everything again
    roi2 = tmp_path / "roi.yaml"
    roi2.write_text(ROI.read_text() + "\n# edited\n")
    again = convert_snapshot(snap, tmp_path / "c3", roi2, reuse_from=[tmp_path / "c1"])
    assert all(c.conversion == "converted" for c in again)


def test_refined_annotation_alone_reuses_the_earlier_image_series(demo_rawdata: Path, tmp_path: Path) -> None:
    """A later snapshot may bring only a refined SEG; its image series is found in an earlier one."""
    convert_snapshot(demo_rawdata / "2026-01-15__demo", tmp_path / "c1", ROI)
    snap = tmp_path / "raw" / "2026-05-01__demo"
    shutil.copytree(demo_rawdata / "2026-03-02__demo" / "P001" / "SEG", snap / "P001" / "SEG")
    (case,) = convert_snapshot(snap, tmp_path / "c2", ROI, reuse_from=[tmp_path / "c1"])
    assert case.patient_id == "P001" and case.conversion == "converted"
    assert all("2026-01-15__demo" in f for f in case.image_files)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c2" / case.label)))
    _, masks = phantom_arrays(annotated(make_phantom("P001", 1), 1.0))
    assert np.array_equal(label == 2, masks[SegmentLabel.TUMOUR])  # the refined (full-size) tumour


def _copy_snapshot(demo_rawdata: Path, tmp_path: Path, patients: list[str]) -> Path:
    snap = tmp_path / "raw" / "2026-05-01__demo"
    for pid in patients:
        shutil.copytree(demo_rawdata / "2026-01-15__demo" / pid, snap / pid)
    return snap


def test_a_case_matching_no_label_is_skipped_or_stops_the_snapshot(
    demo_rawdata: Path, tmp_path: Path
) -> None:
    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001", "P002"])
    rt_path = next((snap / "P002" / "RTSTRUCT").glob("*.dcm"))
    rt = pydicom.dcmread(rt_path)
    for roi in rt.StructureSetROISequence:
        roi.ROIName = "Kidney_" + roi.ROIName.replace("Liver", "L")
    rt.save_as(rt_path)
    cases = convert_snapshot(snap, tmp_path / "out", ROI)
    assert [c.patient_id for c in cases] == ["P001"]
    (skipped,) = read_skipped(tmp_path / "out" / "skipped.json")
    assert (skipped.patient_id, skipped.file) == ("P002", str(rt_path))
    assert "matches a label of" in skipped.message and "rename the ROI" in skipped.message
    with pytest.raises(ConversionError) as info:
        convert_snapshot(snap, tmp_path / "out", ROI, on_bad_case=BadCasePolicy.FAIL)
    message = str(info.value)
    assert "P002" in message and "1 case(s)" in message and "rawdata was not changed" in message
    assert read_skipped(tmp_path / "out" / "skipped.json") == []


def test_two_annotations_of_one_series_are_refused_unless_a_rule_decides(
    demo_rawdata: Path, tmp_path: Path
) -> None:
    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001", "P003"])
    seg_path = next((snap / "P003" / "SEG").glob("*.dcm"))
    original = pydicom.dcmread(seg_path)
    original.SeriesDate, original.SeriesTime = "20260301", "090000"
    original.save_as(seg_path)
    twin = pydicom.dcmread(seg_path)
    twin.SeriesInstanceUID = pydicom.uid.generate_uid()
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    twin.SeriesDate = "20260302"
    twin.save_as(snap / "P003" / "SEG" / "second.dcm")
    with pytest.raises(ConversionError, match="2 annotations of image series") as info:
        convert_snapshot(snap, tmp_path / "out", ROI, on_bad_case=BadCasePolicy.FAIL)
    assert str(seg_path) in str(info.value) and "second.dcm" in str(info.value)
    assert "newest_series_date" in str(info.value)
    cases = convert_snapshot(snap, tmp_path / "out", ROI)
    assert [c.patient_id for c in cases] == ["P001"]  # P003 skipped, listed with both files
    (skipped,) = read_skipped(tmp_path / "out" / "skipped.json")
    assert skipped.patient_id == "P003" and "second.dcm" in skipped.message
    cases = convert_snapshot(snap, tmp_path / "out", ROI, duplicates=DuplicateRule.NEWEST_SERIES_DATE)
    (p003,) = [c for c in cases if c.patient_id == "P003"]
    assert p003.annotation_series_uid == twin.SeriesInstanceUID and "newest SeriesDate" in p003.selection
    excluded = json.loads((tmp_path / "out" / "excluded.json").read_text())
    assert [Path(e["files"][0]).name for e in excluded] == [seg_path.name]
    twin.SeriesDate, twin.SeriesTime = original.SeriesDate, original.SeriesTime
    twin.save_as(snap / "P003" / "SEG" / "second.dcm")
    with pytest.raises(ConversionError, match="do not order them"):
        convert_snapshot(
            snap,
            tmp_path / "out",
            ROI,
            duplicates=DuplicateRule.NEWEST_SERIES_DATE,
            on_bad_case=BadCasePolicy.FAIL,
        )


def test_annotation_of_a_missing_series_is_refused(demo_rawdata: Path, tmp_path: Path) -> None:
    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001"])
    shutil.rmtree(snap / "P001" / "CT")
    with pytest.raises(ConversionError, match="no case could be converted") as info:
        convert_snapshot(snap, tmp_path / "out", ROI)
    assert "which is neither in snapshot 2026-05-01__demo nor in an earlier" in str(info.value)


def test_snapshot_content_may_arrive_as_archives(demo_rawdata: Path, tmp_path: Path) -> None:
    import tarfile

    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001"])
    with tarfile.open(snap / "P003.tar.gz", "w:gz") as tar:
        tar.add(demo_rawdata / "2026-01-15__demo" / "P003", arcname="P003")
    before = tree_digest(snap)
    cases = convert_snapshot(snap, tmp_path / "work" / "converted", ROI)
    assert sorted(c.patient_id for c in cases) == ["P001", "P003"]
    assert tree_digest(snap) == before  # unpacked into procdata, not next to the archive
    (p003,) = [c for c in cases if c.patient_id == "P003"]
    assert all("/work/unpacked/P003.tar.gz/" in f for f in p003.image_files)


@pytest.mark.parametrize("attack", ["absolute", "dotdot", "symlink-out", "symlink-in", "hardlink", "too-big"])
def test_hostile_archive_is_refused_and_nothing_is_written_outside(tmp_path: Path, attack: str) -> None:
    import io
    import tarfile

    from iterseg.rawdata.archives import extract_archive

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        payload = b"x" * 1000
        info = tarfile.TarInfo("ok/file.dcm")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        if attack == "absolute":
            bad = tarfile.TarInfo(str(tmp_path / "escaped.txt"))
        elif attack == "dotdot":
            bad = tarfile.TarInfo("../../escaped.txt")
        elif attack == "symlink-out":
            bad = tarfile.TarInfo("link")
            bad.type = tarfile.SYMTYPE
            bad.linkname = "../../../etc/passwd"
        elif attack in ("symlink-in", "hardlink"):  # harmless targets: refused all the same
            bad = tarfile.TarInfo("ok/alias.dcm")
            bad.type = tarfile.SYMTYPE if attack == "symlink-in" else tarfile.LNKTYPE
            bad.linkname = "file.dcm" if attack == "symlink-in" else "ok/file.dcm"
        links = ("symlink-out", "symlink-in", "hardlink")
        if attack != "too-big":
            bad.size = 0 if attack in links else len(payload)
            tar.addfile(bad, None if attack in links else io.BytesIO(payload))
    dest = tmp_path / "work" / "unpacked"
    dest.mkdir(parents=True)
    with pytest.raises(SnapshotError, match=r"evil\.tar") as info:
        extract_archive(archive, dest, max_bytes=100 if attack == "too-big" else 10**6)
    assert ("GiB" in str(info.value)) == (attack == "too-big")
    assert ("link" in str(info.value)) == (attack in links)
    assert list(dest.iterdir()) == []  # nothing half-unpacked
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_truncated_archive_is_named_and_the_rest_converts(demo_rawdata: Path, tmp_path: Path) -> None:
    import tarfile

    snap = _copy_snapshot(demo_rawdata, tmp_path, ["P001"])
    archive = snap / "P003.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(demo_rawdata / "2026-01-15__demo" / "P003", arcname="P003")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # an interrupted copy
    cases = convert_snapshot(snap, tmp_path / "work" / "converted", ROI)
    assert [c.patient_id for c in cases] == ["P001"]
    (skipped,) = read_skipped(tmp_path / "work" / "converted" / "skipped.json")
    assert skipped.file == str(archive)
    assert "truncated or corrupt archive" in skipped.message and "copy it again" in skipped.message


def test_an_earlier_snapshot_losing_a_file_is_named(demo_rawdata: Path, tmp_path: Path) -> None:
    first = tmp_path / "raw" / "2026-01-15__demo"
    shutil.copytree(demo_rawdata / "2026-01-15__demo", first)
    convert_snapshot(first, tmp_path / "c1", ROI)
    later = tmp_path / "raw" / "2026-05-01__demo"
    shutil.copytree(first / "P001" / "SEG", later / "P001" / "SEG")  # annotates P001's CT of snapshot 1
    lost = sorted((first / "P001" / "CT").iterdir())[3]
    lost.unlink()
    with pytest.raises(ConversionError, match="recorded in an earlier conversion but missing now") as info:
        convert_snapshot(later, tmp_path / "c2", ROI, reuse_from=[tmp_path / "c1"])
    assert str(lost) in str(info.value) and "restore the file" in str(info.value)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_full_disk_is_one_line_naming_the_folder_and_no_case_is_blamed(
    demo_rawdata: Path, tmp_path: Path, jobs: int
) -> None:
    """A real full file system: a 1 MiB tmpfs mounted in a private mount namespace (``unshare``)."""
    import subprocess
    import sys

    snapshot = demo_rawdata / "2026-01-15__demo"
    disk = tmp_path / "disk"
    disk.mkdir()
    log = tmp_path / "convert.log"
    iterseg = Path(sys.executable).parent / "iterseg"
    command = (
        f"mount -t tmpfs -o size=1m tmpfs {disk} && {iterseg} --log {log} convert --snapshot {snapshot} "
        f"--out {disk}/converted --roi-yaml {ROI} --jobs {jobs}"
    )
    before = tree_digest(demo_rawdata)
    run = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    assert tree_digest(demo_rawdata) == before
    assert run.returncode == 2, (run.stdout, run.stderr, log.read_text())
    assert "no space left on the device" in run.stderr and str(disk / "converted") in run.stderr, run.stderr
    assert "rawdata was not changed" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout + log.read_text()
    assert "skipped" not in log.read_text()  # the machine's problem, not a bad case


@pytest.mark.parametrize("kind", ["CT", "RTSTRUCT", "SEG"])
def test_the_demos_own_dicom_passes_dciodvfy(demo_rawdata: Path, kind: str) -> None:
    """The phantoms are written as a scanner and a planning system write them; dcmqi's SEGs are dcmqi's."""
    import subprocess
    import sys

    folder = (
        demo_rawdata / "2026-01-15__demo" / {"CT": "P002", "RTSTRUCT": "P002", "SEG": "P003"}[kind] / kind
    )
    file = sorted(folder.iterdir())[len(list(folder.iterdir())) // 2]
    run = subprocess.run(
        [str(Path(sys.executable).parent / "dciodvfy"), str(file)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = run.stdout + run.stderr
    assert {"CT": "CTImage", "RTSTRUCT": "RTStructureSet", "SEG": "Segmentation"}[kind] in output
    assert [line for line in output.splitlines() if line.startswith(("Error", "Warning"))] == [], output
